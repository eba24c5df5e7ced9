//! Serial terminals: the worker end of `GET /v1/vms/{id}/terminal`.
//!
//! A gateway asks (core NATS request on `vmplane.term.open.<host>`) for a
//! session; the worker connects to the VM's console socket and relays bytes:
//! guest output to `vmplane.term.<session>.out`, keystrokes from
//! `vmplane.term.<session>.in`. The gateway sends an empty message at least
//! every [`KEEPALIVE`]; a session silent for three of those is closed, so a
//! vanished gateway does not hold the console. A client that hangs up ends
//! its session at once (an empty message with [`subjects::TERMINAL_CLOSE_HEADER`]).
//! An empty output message says the session ended and the console is free.
//! A message with [`subjects::TERMINAL_SIZE_HEADER`] gives the client's
//! window size, which the driver passes to the guest; sizes that arrive
//! faster than the guest takes them are coalesced to the newest.

use crate::driver::Driver;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use vmplane_bus::Bus;
use vmplane_domain::subjects::WindowSize;
use vmplane_domain::{HostId, VmId, subjects};

/// How often the gateway must show it is still there.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// A request to open a session.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpenRequest {
    pub vm: VmId,
    /// Random, chosen by the gateway; names the session's subjects.
    pub session: String,
}

/// The answer: `error` is set when no session was opened.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OpenReply {
    pub error: Option<String>,
}

/// Serve terminal requests for this host forever.
pub async fn serve(bus: Bus, host: HostId, driver: Arc<dyn Driver>) -> anyhow::Result<()> {
    let busy: Arc<Mutex<HashSet<VmId>>> = Arc::default();
    loop {
        let mut requests = match bus.client.subscribe(subjects::terminal_open(host)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe for terminals; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply.clone() else { continue };
            let answer = match serde_json::from_slice::<OpenRequest>(&msg.payload) {
                Ok(req) => open(&bus, &driver, &busy, req).await,
                Err(e) => OpenReply { error: Some(format!("bad request: {e}")) },
            };
            let _ = bus.client.publish(reply, serde_json::to_vec(&answer).unwrap_or_default().into()).await;
        }
    }
}

async fn open(bus: &Bus, driver: &Arc<dyn Driver>, busy: &Arc<Mutex<HashSet<VmId>>>, req: OpenRequest) -> OpenReply {
    let Some(path) = driver.console_socket(req.vm) else {
        return OpenReply { error: Some("this VM has no serial console on this host (is it running?)".into()) };
    };
    if !busy.lock().unwrap_or_else(|p| p.into_inner()).insert(req.vm) {
        return OpenReply { error: Some("a terminal session is already open on this VM".into()) };
    }
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.vm);
            return OpenReply { error: Some(format!("console unavailable: {e}")) };
        }
    };
    let input = match bus.client.subscribe(subjects::terminal_input(&req.session)).await {
        Ok(s) => s,
        Err(e) => {
            busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.vm);
            return OpenReply { error: Some(format!("cannot relay input: {e}")) };
        }
    };
    let (bus, busy, driver) = (bus.clone(), busy.clone(), driver.clone());
    tokio::spawn(async move {
        relay(&bus, stream, input, &req.session, resizer(driver, req.vm)).await;
        busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.vm);
        tracing::info!(vm = %req.vm, session = %req.session, "terminal session closed");
        // Only now: a client told of the end may open the next session.
        let _ = bus.client.publish(subjects::terminal_output(&req.session), Bytes::new()).await;
    });
    OpenReply::default()
}

/// What a session's input message asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Bytes(Bytes),
    Keepalive,
    Resize(WindowSize),
    Close,
}

impl Input {
    fn of(msg: &async_nats::Message) -> Self {
        let header = |name| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
        if header(subjects::TERMINAL_CLOSE_HEADER).is_some() {
            return Self::Close;
        }
        if let Some(size) = header(subjects::TERMINAL_SIZE_HEADER) {
            // The gateway checked it; one that does not parse is dropped.
            return size.parse().map_or(Self::Keepalive, Self::Resize);
        }
        if msg.payload.is_empty() { Self::Keepalive } else { Self::Bytes(msg.payload.clone()) }
    }
}

/// A task that gives the VM's console the newest size sent into the
/// returned channel, one at a time; it ends when the sender is dropped.
fn resizer(driver: Arc<dyn Driver>, vm: VmId) -> watch::Sender<Option<WindowSize>> {
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(size) = *rx.borrow_and_update() else { continue };
            if let Err(e) = driver.resize_console(vm, size).await {
                tracing::debug!(%vm, %size, error = %e, "the console did not take the window size");
            }
        }
    });
    tx
}

async fn relay(bus: &Bus, stream: tokio::net::UnixStream, mut input: async_nats::Subscriber, session: &str, size: watch::Sender<Option<WindowSize>>) {
    let (mut rd, mut wr) = stream.into_split();
    let out = subjects::terminal_output(session);
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if bus.client.publish(out.clone(), Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            },
            msg = tokio::time::timeout(KEEPALIVE * 3, input.next()) => match msg.ok().flatten().as_ref().map(Input::of) {
                Some(Input::Bytes(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(Input::Keepalive) => {}
                Some(Input::Resize(s)) => {
                    size.send_replace(Some(s));
                }
                Some(Input::Close) | None => break,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: &[(&str, &str)], payload: &'static [u8]) -> async_nats::Message {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        async_nats::Message {
            subject: "vmplane.term.t.in".into(),
            reply: None,
            payload: Bytes::from_static(payload),
            headers: (!headers.is_empty()).then_some(map),
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn input_messages_say_what_they_ask() {
        assert_eq!(Input::of(&msg(&[], b"ls\r")), Input::Bytes(Bytes::from_static(b"ls\r")));
        assert_eq!(Input::of(&msg(&[], b"")), Input::Keepalive);
        assert_eq!(Input::of(&msg(&[(subjects::TERMINAL_SIZE_HEADER, "120x40")], b"")), Input::Resize(WindowSize { cols: 120, rows: 40 }));
        assert_eq!(Input::of(&msg(&[(subjects::TERMINAL_SIZE_HEADER, "0x40")], b"")), Input::Keepalive, "a bad size is dropped");
        assert_eq!(Input::of(&msg(&[(subjects::TERMINAL_CLOSE_HEADER, "1")], b"")), Input::Close);
    }
}
