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

use crate::driver::Driver;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmplane_bus::Bus;
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
    let (bus, busy) = (bus.clone(), busy.clone());
    tokio::spawn(async move {
        relay(&bus, stream, input, &req.session).await;
        busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.vm);
        tracing::info!(vm = %req.vm, session = %req.session, "terminal session closed");
        // Only now: a client told of the end may open the next session.
        let _ = bus.client.publish(subjects::terminal_output(&req.session), Bytes::new()).await;
    });
    OpenReply::default()
}

async fn relay(bus: &Bus, stream: tokio::net::UnixStream, mut input: async_nats::Subscriber, session: &str) {
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
            msg = tokio::time::timeout(KEEPALIVE * 3, input.next()) => match msg {
                Ok(Some(m)) if m.headers.as_ref().is_some_and(|h| h.get(subjects::TERMINAL_CLOSE_HEADER).is_some()) => break,
                Ok(Some(m)) if m.payload.is_empty() => {}
                Ok(Some(m)) => {
                    if wr.write_all(&m.payload).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
}
