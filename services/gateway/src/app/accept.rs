//! Accepting a command: append it to JetStream, record its operation as
//! pending, and wait (briefly) until the worker's first event for it has been
//! projected, so that a read right after the answer sees the change.
//!
//! A publish whose outcome is unknown (NATS did not acknowledge in time) is
//! sent again with the same message id, the operation id, which JetStream
//! deduplicates: retrying never appends a command twice, answering
//! "unavailable" instead could lose one the client believes refused.

use super::{App, AppResult, OpStatus, Operation, Principal};
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_bus::BusError;
use vmplane_domain::{Command, CommandEnvelope, OpId, ProjectId};

/// How long a publish is retried before the request fails as unavailable
/// (the Idempotency-Key record keeps the operation id for the client's retry).
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(12);

/// What a command is and where it goes.
pub(super) struct Submission {
    /// The operation id: fixed by the request's [`super::Allocation`].
    pub op: OpId,
    pub subject: String,
    pub kind: &'static str,
    pub target_id: String,
    pub project: ProjectId,
    pub command: Command,
}

impl Submission {
    /// A command of an org's control-plane resource (SSH keys, webhooks):
    /// it goes to the org's tenancy subject, where any worker decides it.
    pub fn to_org(alloc: super::Allocation, org: vmplane_domain::OrgId, project: ProjectId, kind: &'static str, target_id: String, command: Command) -> Self {
        Self { op: alloc.op(), subject: vmplane_domain::subjects::tenancy_command(org), kind, target_id, project, command }
    }
}

/// Append the command and return its operation as last projected.
pub(super) async fn submit(app: &App, who: &Principal, sub: Submission) -> AppResult<Operation> {
    let op = sub.op;
    if let Some(done) = accepted_before(app, op)? {
        return Ok(done);
    }
    let now = OffsetDateTime::now_utc();
    // The operation belongs to the org its events will name (a tenancy
    // command's target org), so a projection rebuilt from the stream agrees.
    let org = match &sub.command {
        Command::Tenancy { command } => command.org(),
        Command::SshKey { command } => command.org(),
        Command::Webhook { command } => command.org(),
        _ => who.org,
    };
    let env = CommandEnvelope { op, org: who.org, project: sub.project, actor: who.actor.to_string(), issued_at: now, command: sub.command };
    let pending = Operation {
        id: op,
        status: OpStatus::Pending,
        kind: Some(sub.kind.to_owned()),
        target_id: sub.target_id,
        org_id: org,
        error: None,
        created_at: now,
        updated_at: now,
    };
    // Record the operation before publishing: the worker's first event can be
    // projected before the publish returns, and must find this record (events
    // do not say the operation's kind) instead of creating one without it.
    app.proj.accept_operation(&pending)?;
    if let Err(e) = publish(app, sub.subject, &env).await {
        app.proj.withdraw_operation(&pending)?;
        return Err(e.into());
    }
    metrics::counter!("vmplane_gateway_commands_total", "kind" => sub.kind).increment(1);
    let seen = wait_for(app, op, app.cfg.accept_wait, |o| o.status != OpStatus::Pending).await?;
    Ok(seen.unwrap_or(pending))
}

/// The operation, if an earlier attempt with the same id (a retry under one
/// Idempotency-Key) was accepted and the worker has taken it up: then the
/// request answers with it instead of deciding and appending again.
pub(super) fn accepted_before(app: &App, op: OpId) -> AppResult<Option<Operation>> {
    Ok(app.proj.operation(op)?.filter(|o| o.status != OpStatus::Pending))
}

/// Publish; once an attempt may have reached NATS without a confirmation,
/// publish again with the same id until confirmed, up to [`PUBLISH_RETRY_FOR`].
/// Without a connection nothing was sent, and the request fails at once.
async fn publish(app: &App, subject: String, env: &CommandEnvelope) -> Result<u64, BusError> {
    let deadline = tokio::time::Instant::now() + PUBLISH_RETRY_FOR;
    let mut maybe_sent = false;
    loop {
        maybe_sent |= app.bus.is_connected();
        match app.bus.publish_command(subject.clone(), env).await {
            Err(e) if e.is_transient() && maybe_sent && tokio::time::Instant::now() < deadline => {
                tracing::warn!(op = %env.op, error = %e, "command publish unconfirmed; sending it again with the same id");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

/// Wait up to `max` for the operation to satisfy `done`; returns its latest view.
pub(super) async fn wait_for(app: &App, op: OpId, max: Duration, done: impl Fn(&Operation) -> bool) -> AppResult<Option<Operation>> {
    let mut changes = app.proj.watch_operation(op);
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let current = app.proj.operation(op)?;
        if current.as_ref().is_some_and(&done) || tokio::time::Instant::now() >= deadline {
            return Ok(current);
        }
        if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            return Ok(current);
        }
    }
}
