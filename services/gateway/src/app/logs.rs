//! A VM's serial console lines, read from the log stream (so any gateway
//! serves any host's VMs): the last lines, and following them live.

use super::sessions::{Kind, revoked};
use super::{App, AppError, AppResult, Principal, vms};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::VecDeque;
use vmplane_domain::vm::Vm;
use vmplane_domain::{VmId, subjects};

/// The most lines read back; callers refuse more in their own terms (asking
/// for more reads this many).
pub const MAX_TAIL: usize = 10_000;

/// One console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its sequence in the log stream: increasing, usable to resume.
    pub seq: u64,
    pub text: String,
}

/// The last `tail` lines of a VM's console, oldest first.
pub async fn tail(app: &App, who: &Principal, id: VmId, tail: usize) -> AppResult<Vec<LogLine>> {
    let vm = vms::get(app, who, id)?;
    let (recent, _) = read_back(app, &vm, tail).await?;
    Ok(recent.into())
}

/// The last `tail` lines of a VM's console, then new ones as they come,
/// until the caller's key is revoked; counts as one of the caller's sessions
/// while the stream lives.
pub async fn follow(app: &App, who: &Principal, id: VmId, tail: usize) -> AppResult<BoxStream<'static, LogLine>> {
    let vm = vms::get(app, who, id)?;
    let session = app.sessions.acquire(who.actor, Kind::LogFollow)?;
    let (recent, messages) = read_back(app, &vm, tail).await?;
    let live = messages.take_while(|m| futures::future::ready(m.is_ok())).filter_map(|m| async move {
        let msg = m.ok()?;
        let seq = msg.info().ok()?.stream_sequence;
        Some(LogLine { seq, text: String::from_utf8_lossy(&msg.payload).into_owned() })
    });
    // The session's place is held while the stream lives.
    let lines = futures::stream::iter(recent).chain(live).take_until(revoked(app.clone(), who.actor)).map(move |line| {
        let _held = &session;
        line
    });
    Ok(lines.boxed())
}

/// The last `tail` lines, and the consumer positioned right after them.
async fn read_back(app: &App, vm: &Vm, tail: usize) -> AppResult<(VecDeque<LogLine>, Ordered)> {
    let tail = tail.min(MAX_TAIL);
    app.bus.ensure_connected()?;
    let unavailable = |e: &dyn std::fmt::Display| AppError::Unavailable(format!("log stream: {e}"));
    let stream = app.bus.js.get_stream(subjects::LOG_STREAM).await.map_err(|e| unavailable(&e))?;
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
    let mut recent = VecDeque::with_capacity(tail.min(1024));
    if last > 0 {
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| unavailable(&e))?;
            let seq = msg.info().map_err(|e| unavailable(&e))?.stream_sequence;
            recent.push_back(LogLine { seq, text: String::from_utf8_lossy(&msg.payload).into_owned() });
            if recent.len() > tail {
                recent.pop_front();
            }
            if seq >= last {
                break;
            }
        }
    }
    Ok((recent, messages))
}
