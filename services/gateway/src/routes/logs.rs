//! `GET /v1/vms/{id}/logs`: the guest's serial console, read from the log
//! stream (so any gateway serves any host's VMs): the last `tail` lines, and
//! with `follow=true` those lines and then new ones as Server-Sent Events.

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{PathId, Query};
use crate::routes::vms::visible_vm;
use crate::sessions::{Kind, revoked};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::convert::Infallible;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::{VmId, subjects};

/// Default and largest `tail`.
pub const DEFAULT_TAIL: usize = 100;
/// See [`DEFAULT_TAIL`].
pub const MAX_TAIL: usize = 10_000;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(vm_logs))
}

/// Log parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// How many of the last lines (default 100, at most 10000).
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
#[utoipa::path(get, path = "/v1/vms/{id}/logs", tag = "vms", params(("id" = String, Path, description = "VM id"), LogsQuery),
    responses((status = 200, body = LogLines, description = "JSON without `follow`; with `follow=true`, `text/event-stream` of `log` events (`data` = one line, `id` = stream sequence)"),
        (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn vm_logs(State(state): State<AppState>, who: Principal, PathId(id): PathId<VmId>, Query(q): Query<LogsQuery>) -> ApiResult<Response> {
    let vm = visible_vm(&state, &who, id)?;
    let tail = q.tail.unwrap_or(DEFAULT_TAIL);
    if tail > MAX_TAIL {
        return Err(ApiError::BadRequest("invalid_query", format!("tail must be at most {MAX_TAIL}")));
    }
    let follow = q.follow.unwrap_or(false);
    let session = follow.then(|| state.sessions.acquire(who.actor, Kind::LogFollow)).transpose()?;
    state.bus.ensure_connected()?;
    let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("log stream: {e}"));
    let stream = state.bus.js.get_stream(subjects::LOG_STREAM).await.map_err(|e| unavailable(&e))?;
    let subject = subjects::vm_logs(vm.org, vm.id);
    let last = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(unavailable(&e)),
    };
    let consumer = stream
        .create_consumer(OrderedConfig { filter_subject: subject, deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .map_err(|e| unavailable(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    let mut recent: VecDeque<(u64, String)> = VecDeque::with_capacity(tail.min(1024));
    if last > 0 {
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| unavailable(&e))?;
            let seq = msg.info().map_err(|e| unavailable(&e))?.stream_sequence;
            recent.push_back((seq, String::from_utf8_lossy(&msg.payload).into_owned()));
            if recent.len() > tail {
                recent.pop_front();
            }
            if seq >= last {
                break;
            }
        }
    }
    if !follow {
        return Ok(axum::Json(LogLines { vm_id: vm.id, lines: recent.into_iter().map(|(_, l)| l).collect() }).into_response());
    }
    let backlog = futures::stream::iter(recent.into_iter().map(|(seq, line)| Ok::<_, Infallible>(line_event(seq, line))));
    let live = messages.take_while(|m| futures::future::ready(m.is_ok())).filter_map(|m| async move {
        let msg = m.ok()?;
        let seq = msg.info().ok()?.stream_sequence;
        Some(Ok(line_event(seq, String::from_utf8_lossy(&msg.payload).into_owned())))
    });
    // The session's place is held while the stream lives; a revoked key's stream ends.
    let stream = backlog.chain(live).take_until(revoked(state, who.actor)).map(move |e| {
        let _held = &session;
        e
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn line_event(seq: u64, line: String) -> SseEvent {
    SseEvent::default().id(seq.to_string()).event("log").data(line)
}
