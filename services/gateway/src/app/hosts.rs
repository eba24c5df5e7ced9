//! Hosts: what each offers (capacity, what is left of it, prices, location,
//! uptime) and what the caller uses there.
//!
//! What a host has left (free vCPUs, memory, disk, GPUs by model and host
//! ports) is shown to every caller: it is what a tenant chooses a host and
//! its ports by (the marketplace's host nodes). What each org uses is not:
//! the admin sees every org's use of a host, an API key its own org's only.

use super::accept::{Submission, accepted_before, submit};
use super::placement::projected_taken;
use super::{Actor, Allocation, App, AppError, AppResult, Operation, Principal};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use vmplane_domain::host::{self, CordonCommand, Host, HostStatus, PortRange, Resources};
use vmplane_domain::{Command, HostId, OrgId, ProjectId};

/// A host as the caller may see it.
#[derive(Debug, Clone)]
pub struct HostUsage {
    pub host: Host,
    /// Whether heartbeats arrive.
    pub online: bool,
    pub last_heartbeat: Option<OffsetDateTime>,
    /// What the host's VMs and volumes take: all of them for the admin, the
    /// caller's org's for an API key.
    pub used: Resources,
    /// What is left for new VMs: vCPUs not given to VMs (vmplane may still
    /// share vCPUs between VMs), memory and disk not taken, as projected (an
    /// accepted create counts from its first event on; placement also counts
    /// the claims of other gateways that are not projected yet).
    pub available: Resources,
    /// GPUs not given to VMs, by model.
    pub free_gpus: BTreeMap<String, u32>,
    /// Host ports of the host's port range that no VM forwards from, as
    /// ranges in increasing order.
    pub free_ports: Vec<PortRange>,
    /// The share of time the host was up (heartbeats arriving), in percent,
    /// over the last 30 days since it registered, as far as this gateway saw.
    pub uptime_percent: Option<f64>,
}

/// Every registered host.
pub fn list(app: &App, who: &Principal) -> AppResult<Vec<HostUsage>> {
    app.proj.hosts()?.into_iter().map(|host| usage(app, who, host)).collect()
}

/// One host.
pub fn get(app: &App, who: &Principal, id: HostId) -> AppResult<HostUsage> {
    let host = app.proj.hosts()?.into_iter().find(|h| h.id == id).ok_or_else(|| AppError::NotFound(format!("host {id}")))?;
    usage(app, who, host)
}

/// Cordon a host (nothing new is placed there) or uncordon it (admin). Any
/// worker carries it out, so an offline host can be cordoned too.
pub async fn cordon(app: &App, who: &Principal, alloc: Allocation, id: HostId, command: CordonCommand) -> AppResult<Operation> {
    who.require_admin()?;
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        return Ok(operation);
    }
    get(app, who, id)?;
    let submission = Submission::to_org(alloc, OrgId::DEFAULT, ProjectId::DEFAULT, command.kind(), id.to_string(), Command::Cordon { host: id, command });
    submit(app, who, submission).await
}

/// The status of the host a VM runs on; a host this gateway has not seen
/// register yet counts as offline.
pub fn status(app: &App, id: HostId) -> AppResult<HostStatus> {
    Ok(match app.proj.host(id)? {
        Some(h) => HostStatus::of(app.proj.heartbeats.is_online(id), h.cordoned),
        None => HostStatus::Offline,
    })
}

fn usage(app: &App, who: &Principal, host: Host) -> AppResult<HostUsage> {
    let taken = projected_taken(app, host.id)?;
    let used = match who.actor {
        Actor::Admin => app.proj.host_usage(host.id)?,
        Actor::Key(_) => app.proj.org_usage_on_host(who.org, host.id)?,
    };
    let available = Resources {
        vcpus: u64::from(host.info.cpus).saturating_sub(taken.used.vcpus),
        memory_mib: host.info.memory_mib.saturating_sub(taken.used.memory_mib),
        disk_gb: host.info.disk_gb.saturating_sub(taken.used.disk_gb),
    };
    let range = host.info.port_range.unwrap_or(PortRange::UNPRIVILEGED);
    let free_ports = free_ranges(range, &taken.ports);
    let now = OffsetDateTime::now_utc();
    let since = host.registered_at.max(now - time::Duration::days(30));
    Ok(HostUsage {
        online: app.proj.heartbeats.is_online(host.id),
        last_heartbeat: app.proj.heartbeats.last(host.id),
        uptime_percent: app.proj.heartbeats.uptime_percent(host.id, since, now),
        free_gpus: host::free_gpus(&host.info.gpus, &taken.gpus),
        used,
        available,
        free_ports,
        host,
    })
}

/// The ports of `range` not in `taken`, as ranges.
fn free_ranges(range: PortRange, taken: &std::collections::BTreeSet<u16>) -> Vec<PortRange> {
    let mut out = Vec::new();
    let mut start = Some(range.first);
    for p in taken.range(range.first..=range.last).copied() {
        if let Some(s) = start.filter(|s| *s < p) {
            out.push(PortRange { first: s, last: p - 1 });
        }
        start = p.checked_add(1).filter(|n| *n <= range.last);
    }
    if let Some(s) = start {
        out.push(PortRange { first: s, last: range.last });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_the_gaps() {
        let r = |first, last| PortRange { first, last };
        let set = |ports: &[u16]| ports.iter().copied().collect();
        assert_eq!(free_ranges(r(20000, 20008), &set(&[])), vec![r(20000, 20008)]);
        assert_eq!(free_ranges(r(20000, 20008), &set(&[19999, 20000, 20003, 20004, 20008, 30000])), vec![r(20001, 20002), r(20005, 20007)]);
        assert_eq!(free_ranges(r(20000, 20001), &set(&[20000, 20001])), vec![]);
        assert_eq!(free_ranges(r(65534, 65535), &set(&[65535])), vec![r(65534, 65534)]);
        assert_eq!(free_ranges(r(65535, 65535), &set(&[])), vec![r(65535, 65535)]);
    }
}
