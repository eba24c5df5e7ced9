//! Hosts: what each worker announced, what its VMs use, and whether it is
//! alive (from heartbeats, kept in memory because liveness is only meaningful now).

use super::{Projections, Txn, key};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_bus::Bus;
use vmplane_domain::event::Envelope;
use vmplane_domain::host::{self, Host, HostEvent, Resources};
use vmplane_domain::{HostId, subjects};

/// A host is online while its last heartbeat is at most this old.
pub const ONLINE_WITHIN: Duration = Duration::from_secs(20);

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &HostEvent) {
    let Ok(id) = env.aggregate.parse::<HostId>() else { return };
    let k = key(&[&"host", &id]);
    let host = match (txn.get::<Host>(&k), ev) {
        (Some(mut h), _) => {
            host::evolve(&mut h.info, ev);
            h
        }
        (None, HostEvent::Registered { info }) => Host { id, info: info.clone(), registered_at: env.time },
        (None, _) => return,
    };
    txn.put(k, &host);
}

/// Last heartbeat (unix seconds) per host.
#[derive(Clone, Default)]
pub struct Heartbeats(Arc<RwLock<HashMap<HostId, i64>>>);

impl Heartbeats {
    /// When the host last beat.
    pub fn last(&self, host: HostId) -> Option<OffsetDateTime> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(&host).and_then(|t| OffsetDateTime::from_unix_timestamp(*t).ok())
    }

    /// Whether the host beat recently.
    pub fn is_online(&self, host: HostId) -> bool {
        self.last(host).is_some_and(|t| OffsetDateTime::now_utc() - t <= ONLINE_WITHIN)
    }

    /// Follow the heartbeat bucket forever, re-attaching after outages.
    pub async fn follow(&self, bus: Bus) {
        loop {
            let watch = async {
                let kv = bus.bucket(subjects::HEARTBEAT_BUCKET).await?;
                kv.watch_with_history(">").await.map_err(|e| vmplane_bus::BusError::Unavailable(e.to_string()))
            };
            match watch.await {
                Ok(mut entries) => {
                    while let Some(Ok(entry)) = entries.next().await {
                        let (Ok(host), Some(at)) = (entry.key.parse::<HostId>(), std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse().ok())) else {
                            continue;
                        };
                        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(host, at);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch heartbeats"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Projections {
    /// Every registered host.
    pub fn hosts(&self) -> sled::Result<Vec<Host>> {
        self.scan(b"host/").collect()
    }

    /// Resources taken by the VMs placed on a host.
    pub fn host_usage(&self, host: HostId) -> sled::Result<Resources> {
        Ok(self.get(&key(&[&"hostuse", &host]))?.unwrap_or_default())
    }
}
