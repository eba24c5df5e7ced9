//! Commands that wait too long for an unavailable host fail with
//! `host_unavailable` instead of running late.
//!
//! A command for a VM of a host that is offline stays in that host's
//! consumer, and runs when the host's worker returns. Once it has waited
//! `host_unavailable_after` since it was accepted, its operation ends as
//! failed: any other worker records that while the host stays offline (it
//! watches the heartbeats, reads what the host's consumer has not
//! acknowledged, and fails the overdue commands through the VM's own events,
//! so a VM command the host already began is left to it), and the host's
//! own worker does the same for what it finds overdue when it returns.
//! Either way, the command's later delivery finds its operation finished.
//!
//! A create is left to the host: its VM's first event is the worker's, so
//! failing it from elsewhere could race the returning worker creating it.

use crate::executor::Executor;
use std::collections::HashSet;
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_bus::BusError;
use vmplane_domain::vm::VmCommand;
use vmplane_domain::{Command, CommandEnvelope, HostId, OpId, subjects};

/// The failure's code, as operations and the API show it.
pub const CODE: &str = "host_unavailable";

/// Whether `cmd` has waited longer than `limit` since it was accepted.
pub fn overdue(cmd: &CommandEnvelope, limit: Duration, now: OffsetDateTime) -> bool {
    now - cmd.issued_at > limit
}

/// Why the operation failed, for its message.
pub fn message(limit: Duration) -> String {
    format!("the VM's host was unavailable for longer than {} after this command was accepted", humantime::format_duration(limit))
}

/// Watch for offline hosts other than `own` forever, failing their overdue VM commands.
pub async fn watch(exec: Executor, own: HostId, offline_after: Duration, unavailable_after: Duration) -> anyhow::Result<()> {
    let every = (offline_after / 3).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    // Operations this worker ended already: their commands stay queued until the host returns.
    let mut ended = HashSet::new();
    loop {
        tick.tick().await;
        // A pass that hangs on a slow NATS must not stop the watch: the next one starts over.
        match tokio::time::timeout(SWEEP_LIMIT, sweep(&exec, own, offline_after, unavailable_after, &mut ended)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "offline host sweep failed; next tick retries"),
            Err(_) => tracing::warn!("offline host sweep took longer than {SWEEP_LIMIT:?}; next tick retries"),
        }
    }
}

/// The longest one pass over the hosts may take.
const SWEEP_LIMIT: Duration = Duration::from_secs(30);

/// One pass over the hosts: every host with a command consumer (each
/// worker's durable one, named after its host) whose last heartbeat is older
/// than `offline_after`, or gone (the heartbeat bucket forgets a key a
/// minute after its last write), is offline.
///
/// Hosts come from the consumers and beats from single reads rather than a
/// listing of the heartbeat bucket: a key listing is a short-lived consumer
/// that can wait forever while other workers keep writing their beats.
async fn sweep(exec: &Executor, own: HostId, offline_after: Duration, unavailable_after: Duration, ended: &mut HashSet<OpId>) -> Result<(), BusError> {
    let kv = exec.bus.bucket(subjects::HEARTBEAT_BUCKET).await?;
    let now = OffsetDateTime::now_utc();
    let mut offline = Vec::new();
    for name in exec.bus.command_consumers().await? {
        let Some(host) = name.strip_prefix(crate::HOST_CONSUMER_PREFIX).and_then(|h| h.parse::<HostId>().ok()) else { continue };
        if host == own {
            continue;
        }
        let beat = kv.get(host.to_string()).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
        let at = beat.and_then(|b| std::str::from_utf8(&b).ok()?.parse::<i64>().ok()).and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
        if at.is_none_or(|at| now - at > offline_after) {
            offline.push(host);
        }
    }
    for host in offline {
        fail_overdue(exec, host, unavailable_after, ended).await?;
    }
    Ok(())
}

/// Fail the overdue VM commands (creates aside) the host's consumer holds.
async fn fail_overdue(exec: &Executor, host: HostId, limit: Duration, ended: &mut HashSet<OpId>) -> Result<(), BusError> {
    let floor = exec.bus.command_ack_floor(&crate::host_consumer(host)).await?;
    let now = OffsetDateTime::now_utc();
    for cmd in exec.bus.commands_after(&subjects::host_commands(host), floor).await? {
        let Command::Vm { vm, command } = &cmd.command else { continue };
        if matches!(command, VmCommand::Create { .. }) || !overdue(&cmd, limit, now) || ended.contains(&cmd.op) {
            continue;
        }
        tracing::info!(%host, %vm, op = %cmd.op, "command overdue on an offline host; failing its operation");
        exec.fail_queued(cmd.org, *vm, cmd.op, CODE, &message(limit)).await?;
        ended.insert(cmd.op);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmplane_domain::{OpId, OrgId, ProjectId, VmId};

    #[test]
    fn a_command_is_overdue_once_it_waited_past_the_limit() {
        let at = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let cmd = CommandEnvelope {
            op: OpId::new(),
            org: OrgId::DEFAULT,
            project: ProjectId::DEFAULT,
            actor: "admin".into(),
            issued_at: at,
            command: Command::Vm { vm: VmId::new(), command: VmCommand::Stop },
        };
        let limit = Duration::from_secs(600);
        assert!(!overdue(&cmd, limit, at + Duration::from_secs(600)));
        assert!(overdue(&cmd, limit, at + Duration::from_secs(601)));
        assert_eq!(message(limit), "the VM's host was unavailable for longer than 10m after this command was accepted");
    }
}
