//! A VM's serial terminal, both directions, through core NATS to the worker
//! of the VM's host (see the worker's `terminal` module), so any gateway
//! serves any VM: [`find`] the console, [`Console::open`] a session, then
//! relay bytes through its [`Terminal`] halves.

use super::sessions::{Guard, Kind, revoked};
use super::{Actor, App, AppError, AppResult, Principal, vms};
use bytes::Bytes;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use vmplane_domain::subjects::WindowSize;
use vmplane_domain::vm::{Vm, VmStatus};
use vmplane_domain::{OpId, VmId, subjects};

/// How often the worker is told the session is still wanted.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// How long the VM's host has to answer an open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The open request to the worker.
#[derive(Serialize)]
struct OpenRequest<'a> {
    vm: VmId,
    session: &'a str,
}

/// The worker's answer to an open.
#[derive(Deserialize)]
struct OpenReply {
    error: Option<String>,
}

/// The console of a running VM the caller may see.
#[derive(Debug)]
pub struct Console {
    vm: Vm,
    actor: Actor,
}

/// The console of VM `id`: the caller's, and running.
pub fn find(app: &App, who: &Principal, id: VmId) -> AppResult<Console> {
    let vm = vms::get(app, who, id)?;
    if vm.status != VmStatus::Running {
        return Err(AppError::Conflict("invalid_state", format!("the terminal needs a running vm; this one is {}", vm.status.as_str())));
    }
    Ok(Console { vm, actor: who.actor })
}

impl Console {
    /// Open a session on the console's host. It counts as one of the
    /// caller's sessions until both halves are dropped.
    pub async fn open(self, app: &App) -> AppResult<Terminal> {
        let place = app.sessions.acquire(self.actor, Kind::Terminal)?;
        app.bus.ensure_connected()?;
        let session = OpId::new().to_string().replace("op_", "term_");
        let req = serde_json::to_vec(&OpenRequest { vm: self.vm.id, session: &session }).expect("request encodes");
        // Subscribe to output before asking, so no early byte is lost.
        let output = app.bus.client.subscribe(subjects::terminal_output(&session)).await.map_err(|e| AppError::Unavailable(e.to_string()))?;
        let reply = tokio::time::timeout(OPEN_TIMEOUT, app.bus.client.request(subjects::terminal_open(self.vm.host), req.into()))
            .await
            .map_err(|_| AppError::Unavailable("the VM's host did not answer".into()))?
            .map_err(|e| AppError::Unavailable(format!("the VM's host is unreachable: {e}")))?;
        let reply: OpenReply = serde_json::from_slice(&reply.payload).map_err(|e| AppError::Internal(e.to_string()))?;
        if let Some(error) = reply.error {
            return Err(AppError::Conflict("terminal_unavailable", error));
        }
        let input = TerminalInput { client: app.bus.client.clone(), subject: subjects::terminal_input(&session) };
        let output = TerminalOutput {
            output,
            keepalive: tokio::time::interval(KEEPALIVE),
            revoked: revoked(app.clone(), self.actor).boxed(),
            ended: false,
            input: input.clone(),
            _place: place,
        };
        Ok(Terminal { input, output })
    }
}

/// An open terminal session: keystrokes go in, console output comes out.
pub struct Terminal {
    pub input: TerminalInput,
    pub output: TerminalOutput,
}

/// Keystrokes to the console.
#[derive(Clone)]
pub struct TerminalInput {
    client: async_nats::Client,
    subject: String,
}

impl TerminalInput {
    /// Send bytes to the console, best effort (a lost keystroke is retyped).
    pub async fn send(&self, bytes: Bytes) {
        let _ = self.client.publish(self.subject.clone(), bytes).await;
    }

    /// Give the console the client's window size (best effort, like keystrokes).
    pub async fn resize(&self, size: WindowSize) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::TERMINAL_SIZE_HEADER, size.to_string().as_str());
        let _ = self.client.publish_with_headers(self.subject.clone(), headers, Bytes::new()).await;
    }

    /// Tell the worker the client hung up, so the console is free for the
    /// next session now rather than when the keepalives stop.
    pub async fn close(&self) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::TERMINAL_CLOSE_HEADER, "1");
        let _ = self.client.publish_with_headers(self.subject.clone(), headers, Bytes::new()).await;
    }
}

/// Console output.
pub struct TerminalOutput {
    output: async_nats::Subscriber,
    keepalive: tokio::time::Interval,
    revoked: BoxFuture<'static, ()>,
    ended: bool,
    /// Keepalives go this way (an empty message).
    input: TerminalInput,
    _place: Guard,
}

impl TerminalOutput {
    /// The next console output; `None` once the session is over (the worker
    /// closed it, NATS went away, or the caller's key was revoked). Keeps
    /// the session alive at the worker while waited on; cancel-safe.
    pub async fn next(&mut self) -> Option<Bytes> {
        while !self.ended {
            tokio::select! {
                () = &mut self.revoked => self.ended = true,
                out = self.output.next() => match out {
                    Some(m) if !m.payload.is_empty() => return Some(m.payload),
                    _ => self.ended = true,
                },
                _ = self.keepalive.tick() => self.input.send(Bytes::new()).await,
            }
        }
        None
    }

    /// After [`TerminalInput::close`]: wait (at most [`OPEN_TIMEOUT`]) until
    /// the worker has ended the session, which it does once the console is
    /// free again.
    pub async fn ended(mut self) {
        let _ = tokio::time::timeout(OPEN_TIMEOUT, async { while self.next().await.is_some() {} }).await;
    }
}
