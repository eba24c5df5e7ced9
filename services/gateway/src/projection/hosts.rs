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

/// A host is online while its last heartbeat is at most this old, unless
/// the gateway is told otherwise (`--host-offline-after`).
pub const OFFLINE_AFTER: Duration = Duration::from_secs(15);

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &HostEvent) {
    let Ok(id) = env.aggregate.parse::<HostId>() else { return };
    let k = key(&[&"host", &id]);
    let host = match (txn.get::<Host>(&k), ev) {
        (Some(mut h), _) => {
            host::evolve_host(&mut h, ev);
            h
        }
        (None, HostEvent::Registered { info }) => Host { id, info: info.clone(), registered_at: env.time, cordoned: false },
        (None, _) => return,
    };
    txn.put(k, host);
}

/// Last heartbeat (unix seconds) and uptime per host, as seen since this
/// gateway started watching.
#[derive(Clone)]
pub struct Heartbeats(Arc<RwLock<Beats>>);

struct Beats {
    last: HashMap<HostId, i64>,
    uptime: HashMap<HostId, host::Uptime>,
    /// When this gateway began watching: it knows nothing of the time before.
    since: OffsetDateTime,
    /// How long after its last heartbeat a host counts as offline.
    offline_after: Duration,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Beats { last: HashMap::new(), uptime: HashMap::new(), since: OffsetDateTime::now_utc(), offline_after: OFFLINE_AFTER })))
    }
}

/// How long uptime is remembered.
const UPTIME_WINDOW: time::Duration = time::Duration::days(30);

impl Heartbeats {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Beats> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a host offline once its last heartbeat is older than `after`.
    pub fn set_offline_after(&self, after: Duration) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).offline_after = after;
    }

    /// When the host last beat.
    pub fn last(&self, host: HostId) -> Option<OffsetDateTime> {
        self.read().last.get(&host).and_then(|t| OffsetDateTime::from_unix_timestamp(*t).ok())
    }

    /// Whether the host beat recently.
    pub fn is_online(&self, host: HostId) -> bool {
        let within = self.read().offline_after;
        self.last(host).is_some_and(|t| OffsetDateTime::now_utc() - t <= within)
    }

    /// The percentage of `[from, to)` the host was up (each beat counts it up
    /// for the offline lease), over the part of it this gateway watched;
    /// `None` when that part is empty.
    pub fn uptime_percent(&self, host: HostId, from: OffsetDateTime, to: OffsetDateTime) -> Option<f64> {
        let beats = self.read();
        let from = from.max(beats.since);
        match beats.uptime.get(&host) {
            Some(u) => u.percent(from, to),
            None => host::Uptime::default().percent(from, to),
        }
    }

    /// Record a beat of `host` at unix second `at`.
    fn beat(&self, host: HostId, at: i64) {
        let Ok(t) = OffsetDateTime::from_unix_timestamp(at) else { return };
        let mut beats = self.0.write().unwrap_or_else(|p| p.into_inner());
        beats.last.insert(host, at);
        let up_for = time::Duration::try_from(beats.offline_after).unwrap_or(time::Duration::ZERO);
        let uptime = beats.uptime.entry(host).or_default();
        uptime.beat(t, up_for);
        uptime.forget_before(OffsetDateTime::now_utc() - UPTIME_WINDOW);
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
                        self.beat(host, at);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch heartbeats"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The registered hosts, decoded once per change rather than once per read:
/// placement reads every host for every create, and decoding their records
/// was a visible share of a create's cost (more so with more hosts).
#[derive(Default)]
pub(crate) struct HostsCache {
    /// A generation raised on every change, and the hosts if read since.
    inner: std::sync::Mutex<(u64, Option<Arc<Vec<Host>>>)>,
}

impl HostsCache {
    /// Forget the hosts; called after a batch that changed one is committed.
    pub(super) fn invalidate(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *inner = (inner.0.wrapping_add(1), None);
    }

    /// The cached hosts, or `load`ed ones, kept unless a change was
    /// committed while they were read (then they may predate it).
    fn get(&self, load: impl FnOnce() -> sled::Result<Vec<Host>>) -> sled::Result<Arc<Vec<Host>>> {
        let generation = {
            let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(hosts) = &inner.1 {
                return Ok(hosts.clone());
            }
            inner.0
        };
        let hosts = Arc::new(load()?);
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.0 == generation {
            inner.1 = Some(hosts.clone());
        }
        Ok(hosts)
    }
}

impl Projections {
    /// Every registered host.
    pub fn hosts(&self) -> sled::Result<Vec<Host>> {
        Ok(self.hosts_shared()?.as_ref().clone())
    }

    /// Every registered host, shared: what placement reads for each create.
    pub fn hosts_shared(&self) -> sled::Result<Arc<Vec<Host>>> {
        self.hosts_cache.get(|| self.scan(b"host/").collect())
    }

    /// One registered host.
    pub fn host(&self, id: HostId) -> sled::Result<Option<Host>> {
        self.get(&key(&[&"host", &id]))
    }

    /// Resources taken by the VMs placed on a host.
    pub fn host_usage(&self, host: HostId) -> sled::Result<Resources> {
        Ok(self.get(&key(&[&"hostuse", &host]))?.unwrap_or_default())
    }
}
