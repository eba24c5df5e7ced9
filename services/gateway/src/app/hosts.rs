//! Hosts: their capacity, use and liveness.
//!
//! The admin sees what every org uses and what is left. An API key sees its
//! own org's use only, and not what is left, from which the others' use
//! would follow.

use super::{Actor, App, AppResult, Principal};
use time::OffsetDateTime;
use vmplane_domain::host::{Host, Resources};

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
    /// What is left for new VMs (admin only).
    pub available: Option<Resources>,
}

/// Every registered host.
pub fn list(app: &App, who: &Principal) -> AppResult<Vec<HostUsage>> {
    let mut out = Vec::new();
    for host in app.proj.hosts()? {
        let (used, available) = match who.actor {
            Actor::Admin => {
                let used = app.proj.host_usage(host.id)?;
                let available = Resources {
                    vcpus: u64::from(host.info.cpus),
                    memory_mib: host.info.memory_mib.saturating_sub(used.memory_mib),
                    disk_gb: host.info.disk_gb.saturating_sub(used.disk_gb),
                };
                (used, Some(available))
            }
            Actor::Key(_) => (app.proj.org_usage_on_host(who.org, host.id)?, None),
        };
        out.push(HostUsage { online: app.proj.heartbeats.is_online(host.id), last_heartbeat: app.proj.heartbeats.last(host.id), used, available, host });
    }
    Ok(out)
}
