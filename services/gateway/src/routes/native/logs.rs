//! `GET /v1/vms/{id}/logs`: the guest's serial console: the last `tail`
//! lines, and with `follow=true` those lines and then new ones as
//! Server-Sent Events.

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{PathId, Query};
use crate::AppState;
use crate::app::Principal;
use crate::app::logs::{self, LogLine, MAX_TAIL};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::VmId;

/// `tail` when not given.
pub const DEFAULT_TAIL: usize = 100;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(vm_logs))
}

/// Log parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// How many of the last lines (default 100, at most 10000).
    #[param(minimum = 0, maximum = 10000)] // MAX_TAIL; a test keeps them equal
    pub tail: Option<usize>,
    /// Keep the connection open and stream new lines as Server-Sent Events.
    pub follow: Option<bool>,
}

/// The last console lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogLines {
    pub vm_id: VmId,
    pub lines: Vec<String>,
}

/// The guest's serial console.
#[utoipa::path(get, path = "/v1/vms/{id}/logs", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id"), LogsQuery),
    responses((status = 200, description = "JSON without `follow`; with `follow=true`, `text/event-stream` of `log` events (`data` = one line, `id` = stream sequence)",
            content((LogLines = "application/json"), (super::events::LogMessage = "text/event-stream"))),
        (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn vm_logs(State(state): State<AppState>, who: Principal, PathId(id): PathId<VmId>, Query(q): Query<LogsQuery>) -> ApiResult<Response> {
    let tail = q.tail.unwrap_or(DEFAULT_TAIL);
    if tail > MAX_TAIL {
        return Err(ApiError::BadRequest("invalid_query", format!("tail must be at most {MAX_TAIL}")));
    }
    if !q.follow.unwrap_or(false) {
        let lines = logs::tail(&state.app, &who, id, tail).await?;
        return Ok(axum::Json(LogLines { vm_id: id, lines: lines.into_iter().map(|l| l.text).collect() }).into_response());
    }
    let lines = logs::follow(&state.app, &who, id, tail).await?;
    Ok(Sse::new(lines.map(|line| Ok::<_, Infallible>(line_event(line)))).keep_alive(KeepAlive::default()).into_response())
}

fn line_event(line: LogLine) -> SseEvent {
    SseEvent::default().id(line.seq.to_string()).event("log").data(line.text)
}
