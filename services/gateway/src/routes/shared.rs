//! What every dialect's HTTP layer does the same way, whatever its shapes:
//! the bearer security scheme its OpenAPI document declares, and relaying a
//! terminal session over a WebSocket. Not a dialect: dialects import this,
//! never each other.

use crate::app::terminal::Terminal;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Declares `Authorization: Bearer <API key secret or admin token>` as the
/// security scheme `bearer` (`modifiers(&BearerAuth)`).
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut OpenApi) {
        add_bearer_scheme(doc, "bearer");
    }
}

/// Declare the bearer scheme under `name` (a dialect whose original
/// document names it otherwise keeps that name).
pub fn add_bearer_scheme(doc: &mut OpenApi, name: &str) {
    let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("A vmplane API key secret or the admin token.")).build();
    doc.components.get_or_insert_with(Default::default).add_security_scheme(name, SecurityScheme::Http(scheme));
}

/// Largest WebSocket message (and frame) a terminal client may send:
/// keystrokes and pastes, not bulk data; a larger one closes the session.
pub const MAX_TERMINAL_MESSAGE_BYTES: usize = 64 << 10;

/// Finish a terminal upgrade: relay `term` over the socket.
pub fn terminal_upgrade(ws: WebSocketUpgrade, term: Terminal) -> Response {
    ws.max_message_size(MAX_TERMINAL_MESSAGE_BYTES).max_frame_size(MAX_TERMINAL_MESSAGE_BYTES).on_upgrade(move |socket| relay(socket, term))
}

/// Relay until either side ends: binary or text frames in are keystrokes,
/// console output goes out as binary frames. Then the session is ended at
/// the worker (the console is free for the next one when the socket
/// closes) and its place is freed with `term`.
async fn relay(socket: WebSocket, term: Terminal) {
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
    input.close().await;
    output.ended().await;
    let _ = ws_tx.send(Message::Close(None)).await;
}
