//! `GET /v1/operations/{id}`, with an optional long poll.

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{PathId, Query};
use crate::AppState;
use crate::app::operations::{self, MAX_WAIT};
use crate::app::{Operation, Principal};
use axum::extract::State;
use serde::Deserialize;
use std::time::Duration;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::OpId;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_operation))
}

/// The answer to a command that settles quickly (control-plane resources):
/// `done` (200 or 201) once the worker's event is projected, 202 if that
/// takes longer than the accept wait.
pub(super) fn settled(operation: &Operation, done: axum::http::StatusCode) -> axum::http::StatusCode {
    if operation.status == crate::app::OpStatus::Succeeded { done } else { axum::http::StatusCode::ACCEPTED }
}

/// Long-poll parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Wait up to this many seconds (at most 60) for the operation to finish.
    #[param(minimum = 0, maximum = 60)] // MAX_WAIT; a test keeps them equal
    pub wait: Option<u64>,
}

/// One operation: `pending`, `running`, `succeeded` or `failed` (with `error`).
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations", params(("id" = vmplane_domain::OpId, Path, description = "Operation id"), WaitQuery),
    responses((status = 200, body = Operation), (status = "4XX", body = ErrorBody)))]
async fn get_operation(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId<OpId>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<axum::Json<Operation>> {
    let wait = Duration::from_secs(q.wait.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::BadRequest("invalid_query", format!("wait must be at most {} seconds", MAX_WAIT.as_secs())));
    }
    Ok(axum::Json(operations::get(&state.app, &who, id, wait).await?))
}
