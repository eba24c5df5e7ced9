//! Accepting a command: append it to JetStream, record its operation as
//! pending, and wait (briefly) until the worker's first event for it has been
//! projected, so that a read right after the 202 sees the change.

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::projection::operations::{OpStatus, Operation};
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_domain::{Command, CommandEnvelope, OpId, ProjectId};

/// What a command is and where it goes.
pub struct Submission {
    pub subject: String,
    pub kind: &'static str,
    pub target_id: String,
    pub project: ProjectId,
    pub command: Command,
}

/// Append the command and return its operation as last projected.
pub async fn submit(state: &AppState, who: &Principal, sub: Submission) -> ApiResult<Operation> {
    let op = OpId::new();
    let now = OffsetDateTime::now_utc();
    // The operation belongs to the org its events will name (a tenancy
    // command's target org), so a projection rebuilt from the stream agrees.
    let org = match &sub.command {
        Command::Tenancy { command } => command.org(),
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
    state.proj.accept_operation(&pending)?;
    if let Err(e) = state.bus.publish_command(sub.subject, &env).await {
        state.proj.withdraw_operation(&pending)?;
        return Err(e.into());
    }
    metrics::counter!("vmplane_gateway_commands_total", "kind" => sub.kind).increment(1);
    let seen = wait_for(state, op, state.cfg.accept_wait, |o| o.status != OpStatus::Pending).await?;
    Ok(seen.unwrap_or(pending))
}

/// Wait up to `max` for the operation to satisfy `done`; returns its latest view.
pub async fn wait_for(state: &AppState, op: OpId, max: Duration, done: impl Fn(&Operation) -> bool) -> ApiResult<Option<Operation>> {
    let mut applied = state.proj.subscribe();
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let current = state.proj.operation(op)?;
        if current.as_ref().is_some_and(&done) || tokio::time::Instant::now() >= deadline {
            return Ok(current);
        }
        if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
            return Ok(current);
        }
    }
}
