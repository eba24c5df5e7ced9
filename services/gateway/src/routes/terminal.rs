//! `GET /v1/vms/{id}/terminal`: a WebSocket bridged to the guest's serial
//! console, both directions, through core NATS to the worker of the VM's host
//! (see the worker's `terminal` module), so any gateway serves any VM.

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::PathId;
use crate::routes::vms::visible_vm;
use crate::sessions::{Kind, revoked};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::vm::VmStatus;
use vmplane_domain::{VmId, subjects};

/// How often the gateway tells the worker the session is still wanted.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Largest WebSocket message (and frame) a client may send: keystrokes and
/// pastes, not bulk data; a larger one closes the session.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(terminal))
}

#[derive(Serialize)]
struct OpenRequest<'a> {
    vm: VmId,
    session: &'a str,
}

#[derive(Deserialize)]
struct OpenReply {
    error: Option<String>,
}

/// Open the serial terminal: upgrade to a WebSocket; binary or text frames
/// are keystrokes, binary frames from the server are console output.
#[utoipa::path(get, path = "/v1/vms/{id}/terminal", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 101, description = "WebSocket to the serial console"), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn terminal(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId<VmId>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let vm = visible_vm(&state, &who, id)?;
    if vm.status != VmStatus::Running {
        return Err(ApiError::Conflict("invalid_state", format!("the terminal needs a running vm; this one is {}", vm.status.as_str())));
    }
    // In the API's error format, not axum's plain-text rejection.
    let ws = ws.map_err(|r| ApiError::BadRequest("websocket_required", format!("this route is a WebSocket; {}", r.body_text())))?;
    let session_place = state.sessions.acquire(who.actor, Kind::Terminal)?;
    state.bus.ensure_connected()?;
    let session = format!("{}", vmplane_domain::OpId::new()).replace("op_", "term_");
    let req = serde_json::to_vec(&OpenRequest { vm: vm.id, session: &session }).expect("request encodes");
    // Subscribe to output before asking, so no early byte is lost.
    let output = state.bus.client.subscribe(subjects::terminal_output(&session)).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let reply = tokio::time::timeout(Duration::from_secs(5), state.bus.client.request(subjects::terminal_open(vm.host), req.into()))
        .await
        .map_err(|_| ApiError::Unavailable("the VM's host did not answer".into()))?
        .map_err(|e| ApiError::Unavailable(format!("the VM's host is unreachable: {e}")))?;
    let reply: OpenReply = serde_json::from_slice(&reply.payload).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(error) = reply.error {
        return Err(ApiError::Conflict("terminal_unavailable", error));
    }
    let client = state.bus.client.clone();
    let revoked = revoked(state, who.actor);
    Ok(ws.max_message_size(MAX_MESSAGE_BYTES).max_frame_size(MAX_MESSAGE_BYTES).on_upgrade(move |socket| async move {
        bridge(socket, client, output, session, revoked).await;
        drop(session_place);
    }))
}

async fn bridge(socket: WebSocket, client: async_nats::Client, mut output: async_nats::Subscriber, session: String, revoked: impl Future<Output = ()>) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let input = subjects::terminal_input(&session);
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let mut revoked = std::pin::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut revoked => break,
            out = output.next() => match out {
                Some(m) if !m.payload.is_empty() => {
                    if ws_tx.send(Message::Binary(m.payload)).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            frame = ws_rx.next() => match frame {
                Some(Ok(Message::Binary(b))) => { let _ = client.publish(input.clone(), b).await; }
                Some(Ok(Message::Text(t))) => { let _ = client.publish(input.clone(), bytes::Bytes::from(t.as_str().to_owned())).await; }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => break,
            },
            _ = keepalive.tick() => { let _ = client.publish(input.clone(), bytes::Bytes::new()).await; }
        }
    }
    let _ = ws_tx.send(Message::Close(None)).await;
}
