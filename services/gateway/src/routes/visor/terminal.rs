//! `vm.terminal`: a WebSocket bridged to the VM's serial console, both
//! directions (the use case is `app::terminal`).

use super::error::{ErrorEnvelope, VisorError, VisorResult};
use super::extract::{Caller, Input};
use super::vms::VmInput;
use crate::AppState;
use crate::app::terminal::{self, Terminal};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};

/// Largest WebSocket message (and frame) a client may send: keystrokes and
/// pastes; a larger one closes the session.
const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// Open a web terminal session: a WebSocket to the serial console of a
/// running VM. Text or binary frames are keystrokes; binary frames from the
/// server are console output.
#[utoipa::path(get, path = "/api/vm.terminal", tag = "vm",
    params(("vmId" = String, Query), ("organizationId" = Option<String>, Query, description = "The org to act in (an addition)")),
    responses((status = 101, description = "WebSocket to the serial console"), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    Input(input): Input<VmInput>,
) -> VisorResult<Response> {
    let (id, who) = input.scoped(&state, caller)?;
    let console = terminal::find(&state.app, &who, id)?;
    let ws = ws.map_err(|r| VisorError::bad_request(format!("vm.terminal is a WebSocket; {}", r.body_text())))?;
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
