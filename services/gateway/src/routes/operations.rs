//! `GET /v1/operations/{id}`, with an optional long poll.

use crate::AppState;
use crate::auth::Principal;
use crate::commands::wait_for;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{PathId, Query};
use crate::projection::operations::Operation;
use axum::extract::State;
use serde::Deserialize;
use std::time::Duration;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::OpId;

/// Longest accepted `wait`.
pub const MAX_WAIT_SECS: u64 = 60;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_operation))
}

/// Long-poll parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Wait up to this many seconds (at most 60) for the operation to finish.
    pub wait: Option<u64>,
}

/// One operation: `pending`, `running`, `succeeded` or `failed` (with `error`).
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations", params(("id" = String, Path, description = "Operation id"), WaitQuery),
    responses((status = 200, body = Operation), (status = "4XX", body = ErrorBody)))]
async fn get_operation(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId<OpId>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<axum::Json<Operation>> {
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::BadRequest("invalid_query", format!("wait must be at most {MAX_WAIT_SECS} seconds")));
    }
    let not_found = || ApiError::NotFound(format!("operation {id}"));
    state.proj.operation(id)?.filter(|o| who.sees_all_orgs() || o.org_id == who.org).ok_or_else(not_found)?;
    let op = wait_for(&state, id, Duration::from_secs(wait), |o| o.status.is_terminal()).await?;
    op.map(axum::Json).ok_or_else(not_found)
}
