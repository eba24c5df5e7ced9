//! `vmplane vm console`: this terminal, in raw mode (`crossterm`), relayed
//! over the terminal WebSocket (`tokio-tungstenite`, `GET
//! /v1/vms/{id}/terminal`, subprotocol `vmplane.terminal.v2`): keystrokes
//! go out as binary frames, console output comes back as binary frames, and
//! the window size goes out as a `resize` control message (a text frame)
//! when the session starts and whenever the window changes, so the guest's
//! console has this window's size. `Ctrl-]` leaves.

use crate::client::Api;
use crate::error::{Error, Result};
use clap::Args;
use futures::{SinkExt, StreamExt};
use std::io::IsTerminal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The byte that leaves the console: `Ctrl-]` (GS), as telnet and virsh use.
pub const ESCAPE: u8 = 0x1d;

/// `vm console`.
#[derive(Args)]
pub struct ConsoleArgs {
    /// VM id or name (it must be running).
    pub vm: String,
}

/// The terminal subprotocol spoken: bytes in binary frames, control
/// messages in text frames.
pub const SUBPROTOCOL: &str = "vmplane.terminal.v2";

/// Keystrokes read at once: what goes out before an escape, and whether there was one.
pub fn split_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|b| *b == ESCAPE) {
        Some(at) => (&input[..at], true),
        None => (input, false),
    }
}

/// The control message giving a window of `cols` x `rows`.
pub fn resize_message(cols: u16, rows: u16) -> String {
    serde_json::json!({"type": "resize", "cols": cols, "rows": rows}).to_string()
}

/// The WebSocket URL of an HTTP URL (`http` to `ws`, `https` to `wss`).
pub fn ws_url(http: &str) -> Result<String> {
    if let Some(rest) = http.strip_prefix("https://") {
        Ok(format!("wss://{rest}"))
    } else if let Some(rest) = http.strip_prefix("http://") {
        Ok(format!("ws://{rest}"))
    } else {
        Err(Error::Invalid(format!("not an http(s) URL: {http}")))
    }
}

/// This terminal in raw mode for as long as the guard lives (when it is a terminal).
struct RawMode(bool);

impl RawMode {
    fn enable() -> Result<Self> {
        if !std::io::stdin().is_terminal() {
            return Ok(Self(false));
        }
        crossterm::terminal::enable_raw_mode().map_err(Error::io("putting the terminal in raw mode"))?;
        Ok(Self(true))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.0 {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

/// The WebSocket request for VM `id`'s terminal, with the token and scope headers.
pub fn request(api: &Api, id: &str) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let url = ws_url(&api.url(&format!("/v1/vms/{id}/terminal")))?;
    let mut req = url.into_client_request().map_err(|e| Error::Invalid(format!("terminal URL: {e}")))?;
    for (name, value) in api.headers() {
        let value = HeaderValue::from_str(&value).map_err(|_| Error::Invalid(format!("{name} holds characters a header cannot")))?;
        req.headers_mut().insert(name, value);
    }
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    Ok(req)
}

/// Connect to VM `id`'s terminal: the socket, or the API's refusal.
pub async fn connect(api: &Api, id: &str) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match tokio_tungstenite::connect_async(request(api, id)?).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(Error::from_answer(resp.status().as_u16(), resp.body().as_deref().unwrap_or_default())),
        Err(WsError::Io(e)) => Err(Error::Unreachable { url: api.base().to_owned(), detail: e.to_string() }),
        Err(e) => Err(Error::Terminal(e.to_string())),
    }
}

/// Relay this terminal to VM `id`'s console until `Ctrl-]`, the end of
/// standard input, or the server closing the session.
pub async fn run(api: &Api, id: &str, a: &ConsoleArgs) -> Result<()> {
    let ws = connect(api, id).await?;
    let (mut tx, mut rx) = ws.split();
    // Raw before the banner: what is typed once it shows goes to the guest as typed.
    let raw = RawMode::enable()?;
    eprint!("Connected to the console of {} ({id}). Leave with Ctrl-].\r\n", a.vm);
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).map_err(Error::io("watching the window size"))?;
    send_size(&mut tx).await?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let outcome: Result<&str> = loop {
        tokio::select! {
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    // Nothing more to type: ask the server to close, and print what comes until it does.
                    stdin_open = false;
                    let _ = tx.send(Message::Close(None)).await;
                }
                Ok(n) => {
                    let (keys, escape) = split_escape(&buf[..n]);
                    if !keys.is_empty() && tx.send(Message::Binary(keys.to_vec().into())).await.is_err() {
                        break Ok("the session ended");
                    }
                    if escape {
                        let _ = tx.send(Message::Close(None)).await;
                        break Ok("left");
                    }
                }
            },
            frame = rx.next() => match frame {
                Some(Ok(Message::Binary(b))) => {
                    if stdout.write_all(&b).await.and(stdout.flush().await).is_err() {
                        break Ok("standard output closed");
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if stdout.write_all(t.as_bytes()).await.and(stdout.flush().await).is_err() {
                        break Ok("standard output closed");
                    }
                }
                Some(Ok(Message::Close(_))) | None => break Ok("the session ended"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(Error::Terminal(e.to_string())),
            },
            Some(()) = winch.recv() => {
                if let Err(e) = send_size(&mut tx).await {
                    break Err(e);
                }
            }
        }
    };
    drop(raw);
    let how = outcome?;
    eprintln!("\r\n[vmplane: {how}: console of {}]", a.vm);
    Ok(())
}

/// Send this window's size, when there is a window (a terminal whose size
/// is known and not zero).
async fn send_size<S>(tx: &mut S) -> Result<()>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    if let Ok((cols @ 1.., rows @ 1..)) = crossterm::terminal::size() {
        tx.send(Message::text(resize_message(cols.min(1000), rows.min(1000)))).await.map_err(|e| Error::Terminal(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_ends_what_is_sent() {
        assert_eq!(split_escape(b"ls -l\r"), (&b"ls -l\r"[..], false));
        assert_eq!(split_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_escape(b"\x1d"), (&b""[..], true));
        assert_eq!(split_escape(b""), (&b""[..], false));
        // Other control keys are the guest's.
        assert_eq!(split_escape(b"\x03\x04\x1b[A"), (&b"\x03\x04\x1b[A"[..], false));
    }

    #[test]
    fn the_size_message_and_urls() {
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&resize_message(120, 40)).unwrap(),
            serde_json::json!({"type": "resize", "cols": 120, "rows": 40})
        );
        assert_eq!(ws_url("http://127.0.0.1:8080/v1/vms/x/terminal").unwrap(), "ws://127.0.0.1:8080/v1/vms/x/terminal");
        assert_eq!(ws_url("https://gw.example/p/v1").unwrap(), "wss://gw.example/p/v1");
        assert!(ws_url("ftp://x").is_err());
    }

    #[test]
    fn the_request_carries_the_token_in_a_header_not_the_url() {
        let api = Api::new("http://127.0.0.1:1", Some("s3cret".into())).unwrap().scoped(Some("org_1".into()), None);
        let req = request(&api, "vm_1").unwrap();
        assert_eq!(req.uri().to_string(), "ws://127.0.0.1:1/v1/vms/vm_1/terminal");
        assert_eq!(req.headers()["authorization"], "Bearer s3cret");
        assert_eq!(req.headers()["x-vmplane-org"], "org_1");
        assert_eq!(req.headers()["sec-websocket-protocol"], "vmplane.terminal.v2");
    }
}
