//! `GET /instances/{id}/logs`: the guest's serial console as Server-Sent
//! Events, as hypeman streams it: each line is one `data:` field holding the
//! line as a JSON string. The last `tail` lines (default 100) are sent; with
//! `follow=true` new lines follow until the client leaves, otherwise the
//! stream ends after them.

use super::error::{ErrorBody, HypemanError, HypemanResult};
use super::extract::{Caller, Path, Query};
use super::instances::resolve;
use crate::AppState;
use crate::app::logs::{self, LogLine, MAX_TAIL};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

/// `tail` when not given.
pub const DEFAULT_TAIL: usize = 100;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(instance_logs))
}

/// Log parameters. Others (newer hypeman's `source`) are ignored.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LogsQuery {
    /// Number of lines to return from the end (default 100, at most 10000).
    #[param(maximum = 10000)]
    pub tail: Option<usize>,
    /// Continue streaming new lines after the initial output (default false).
    pub follow: Option<bool>,
}

/// Stream instance logs (SSE).
///
/// Streams the instance's console log as Server-Sent Events: the last N
/// lines (`tail`), then, with `follow=true`, new lines as they come.
#[utoipa::path(get, path = "/instances/{id}/logs", tag = "instances", operation_id = "getInstanceLogs",
    params(("id" = String, Path, description = "Instance ID, name or ID prefix"), LogsQuery),
    responses((status = 200, content_type = "text/event-stream", body = String, description = "Log stream (SSE): `data: <line as a JSON string>`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn instance_logs(State(state): State<AppState>, Caller(who): Caller, Path(key): Path<String>, Query(q): Query<LogsQuery>) -> HypemanResult<Response> {
    let tail = q.tail.unwrap_or(DEFAULT_TAIL);
    if tail > MAX_TAIL {
        return Err(HypemanError::BadRequest("bad_request", format!("tail must be at most {MAX_TAIL}")));
    }
    let app = &state.app;
    let id = resolve(app, &who, &key)?.id;
    if q.follow.unwrap_or(false) {
        let lines = logs::follow(app, &who, id, tail).await?;
        return Ok(Sse::new(lines.map(event)).keep_alive(KeepAlive::default()).into_response());
    }
    let lines = logs::tail(app, &who, id, tail).await?;
    Ok(Sse::new(futures::stream::iter(lines).map(event)).into_response())
}

/// One line as hypeman sends it: `data: "<the line, JSON-encoded>"`.
fn event(line: LogLine) -> Result<Event, Infallible> {
    Ok(Event::default().data(serde_json::Value::String(line.text).to_string()))
}
