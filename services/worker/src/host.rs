//! The worker's host: a stable id kept in the data dir, announced as an
//! event when it first appears or changes, and kept alive by heartbeats in a
//! key-value bucket (heartbeats are liveness, not history, so they are not
//! events), each with a renewal of the host's lease ([`crate::claim`]).

use crate::aggregate::HostAggregate;
use crate::claim::{ClaimError, Lease};
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_bus::{Bus, BusError};
use vmplane_domain::host::{HostEvent, HostInfo};
use vmplane_domain::{HostId, OrgId, ProjectId, subjects};

/// Read the host id from `data_dir/host_id`, creating it on first start.
pub fn host_id(data_dir: &Path) -> std::io::Result<HostId> {
    let path = data_dir.join("host_id");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let id = HostId::new();
            std::fs::write(&path, id.to_string())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Announce the host unless what it announced so far (registrations and
/// imports, folded) already says the same.
pub async fn register(bus: &Bus, id: HostId, info: HostInfo) -> Result<(), BusError> {
    loop {
        let mut agg = HostAggregate::load(bus, OrgId::DEFAULT, id).await?;
        if agg.state.as_ref() == Some(&info) {
            return Ok(());
        }
        match agg.append(bus, ProjectId::DEFAULT, None, HostEvent::Registered { info: info.clone() }).await {
            Ok(()) => return Ok(()),
            Err(BusError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Heartbeat and renew the host's lease forever; survives NATS outages by
/// retrying on the next tick. Returns (an error) only when another worker
/// took the lease: this one must stop.
pub async fn heartbeat(bus: Bus, host: HostId, every: Duration, mut lease: Lease) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match lease.renew(&bus).await {
            Err(e @ ClaimError::LeaseLost { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                continue;
            }
            Ok(()) => {}
        }
        let beat = async {
            let kv = bus.bucket(subjects::HEARTBEAT_BUCKET).await?;
            let at = OffsetDateTime::now_utc().unix_timestamp().to_string();
            kv.put(host.to_string(), at.into()).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
            Ok::<_, BusError>(())
        };
        if let Err(e) = beat.await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}
