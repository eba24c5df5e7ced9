//! `GET /v1/vms/{id}/terminal`: a WebSocket bridged to the guest's serial
//! console, both directions (see `app::terminal`).

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::PathId;
use crate::AppState;
use crate::app::Principal;
use crate::app::terminal::{self, Terminal};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::VmId;

/// Largest WebSocket message (and frame) a client may send: keystrokes and
/// pastes, not bulk data; a larger one closes the session.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(terminal))
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
    let console = terminal::find(&state.app, &who, id)?;
    // In the API's error format, not axum's plain-text rejection.
    let ws = ws.map_err(|r| ApiError::BadRequest("websocket_required", format!("this route is a WebSocket; {}", r.body_text())))?;
    let term = console.open(&state.app).await?;
    Ok(ws.max_message_size(MAX_MESSAGE_BYTES).max_frame_size(MAX_MESSAGE_BYTES).on_upgrade(move |socket| bridge(socket, term)))
}

/// Relay until either side ends; the session's place is freed with `term`.
async fn bridge(socket: WebSocket, term: Terminal) {
    let Terminal { input, mut output } = term;
    let (mut ws_tx, mut ws_rx) = socket.split();
    loop {
        tokio::select! {
            out = output.next() => match out {
                Some(bytes) => {
                    if ws_tx.send(Message::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            frame = ws_rx.next() => match frame {
                Some(Ok(Message::Binary(b))) => input.send(b).await,
                Some(Ok(Message::Text(t))) => input.send(bytes::Bytes::from(t.as_str().to_owned())).await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => break,
            },
        }
    }
    let _ = ws_tx.send(Message::Close(None)).await;
}
