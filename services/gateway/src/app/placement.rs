//! Choosing a host for a new VM or volume: among the online hosts that can
//! take it, the one with the most room left by the given measure.
//!
//! Projections lag accepted commands (a VM counts there once the worker's
//! first event arrives), so placement alone would let parallel creates
//! overcommit a host. Accepting therefore records a claim in the host's
//! ledger, one key-value entry per host shared by every gateway and written
//! with compare-and-set: what a host has taken is its projected use plus
//! the claims its projection does not show yet. Two gateways placing at
//! once cannot both take the last room; the loser sees the other's claim and
//! places again. Within one gateway placements take turns, so parallel
//! requests queue instead of spinning on conflicts.
//!
//! A ledger holds only the claims no projection may lack: a writer drops
//! those its own projection shows and raises the ledger's `through` to the
//! event sequence it has applied; a gateway reads a ledger only once its own
//! projection has applied that far, so a dropped claim is always counted
//! there. The ledger thus stays as small as the creates in flight. Each
//! gateway keeps the ledgers it read or wrote: a placement writes one with
//! the revision it knows, and reads it again only when that write finds
//! another gateway's change (or the copy is older than [`FRESH_FOR`]).

use super::{App, AppError, AppResult};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use vmplane_domain::host::{Host, Resources};
use vmplane_domain::placement::{self, Candidate, Choice, Need, Strategy, Taken, Unfit};
use vmplane_domain::spec::GpuSpec;
use vmplane_domain::{HostId, VmId, VolumeId, subjects};

/// A claim is dropped from the ledger after this long whatever happened to it
/// (its command was refused or never carried out).
const CLAIM_TTL_SECS: i64 = 600;
/// Attempts when other gateways keep changing the same ledger.
const ATTEMPTS: usize = 16;
/// A kept ledger is read again after this long: it only steers the choice
/// between hosts (a write always checks the revision), so it may lag a little.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long a placement waits for this gateway's projection to reach a ledger's `through`.
const CATCH_UP_FOR: Duration = Duration::from_secs(5);

/// What a new resource takes from its host, recorded when it is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Claim {
    pub resources: Resources,
    /// Requested host ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Requested bridge address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<Ipv4Addr>,
    /// Requested MAC, lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Requested GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    /// Unix seconds of acceptance.
    #[serde(default)]
    pub at: i64,
}

/// One host's ledger: claims by resource id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ledger {
    claims: BTreeMap<String, Claim>,
    /// The event sequence through which the claims dropped from this ledger
    /// are projected: a gateway whose projection has applied this far counts them.
    #[serde(default)]
    through: u64,
}

impl Ledger {
    /// Forget claims that expired or that this gateway's projection shows,
    /// and say how far that projection has applied.
    fn prune(&mut self, app: &App, host: HostId, now: i64) -> sled::Result<()> {
        let applied = app.proj.applied();
        let mut keep = BTreeMap::new();
        for (id, claim) in std::mem::take(&mut self.claims) {
            if now.saturating_sub(claim.at) < CLAIM_TTL_SECS && !projected(app, host, &id)? {
                keep.insert(id, claim);
            }
        }
        self.claims = keep;
        self.through = self.through.max(applied);
        Ok(())
    }
}

/// The ledgers this gateway last read or wrote, by host.
#[derive(Default)]
pub(super) struct Ledgers(HashMap<HostId, Kept>);

/// A ledger as this gateway last saw it.
struct Kept {
    ledger: Ledger,
    /// Its revision then; `None` when the bucket had no entry.
    revision: Option<u64>,
    read_at: Instant,
}

impl From<&Need> for Claim {
    fn from(need: &Need) -> Self {
        Self { resources: need.resources, ports: need.ports.clone(), guest_ip: need.guest_ip, guest_mac: need.guest_mac.clone(), gpu: need.gpu.clone(), at: 0 }
    }
}

/// Whether this gateway's projection already shows the resource on `host`
/// (and counts it there: a VM moving in counts only once it has moved).
fn projected(app: &App, host: HostId, id: &str) -> sled::Result<bool> {
    if let Ok(vm) = id.parse::<VmId>() {
        return Ok(app.proj.vm_host(vm)? == Some(host));
    }
    if let Ok(vol) = id.parse::<VolumeId>() {
        return app.proj.has_volume(vol);
    }
    Ok(false)
}

/// The ledger's claims this gateway's projection does not show yet.
fn unprojected<'a>(app: &App, host: HostId, ledger: &'a Ledger, except: &str) -> sled::Result<Vec<(&'a String, &'a Claim)>> {
    let mut out = Vec::new();
    for (id, c) in &ledger.claims {
        if id != except && !projected(app, host, id)? {
            out.push((id, c));
        }
    }
    Ok(out)
}

/// What a host has taken; its ports, addresses and GPUs only when `addresses`
/// (they take a scan of the VMs). The projection moves on meanwhile: the
/// claims it does not show are picked before and after reading it, again
/// until both agree, so every claim is counted exactly once. Claims only
/// ever become projected, so the set picked before holds every claim the
/// projection lacked: if it keeps moving, some are counted twice, none missed.
fn taken(app: &App, host: HostId, ledger: &Ledger, except: &str, addresses: bool) -> AppResult<Taken> {
    const TRIES: usize = 8;
    let mut before = unprojected(app, host, ledger, except)?;
    let mut tries = 1;
    loop {
        let mut t = Taken { used: app.proj.host_usage(host)?, ..Taken::default() };
        if addresses {
            let a = app.proj.host_addresses(host)?;
            (t.ports, t.ips, t.macs, t.gpus) = (a.ports, a.ips, a.macs, a.gpus);
        }
        let after = unprojected(app, host, ledger, except)?;
        if after == before || tries == TRIES {
            for (_, c) in before {
                t.used += c.resources;
                t.ports.extend(&c.ports);
                t.ips.extend(c.guest_ip);
                t.macs.extend(c.guest_mac.clone());
                t.gpus.extend(c.gpu.clone());
            }
            return Ok(t);
        }
        before = after;
        tries += 1;
    }
}

/// Read a host's ledger from the bucket.
async fn load(store: &kv::Store, host: HostId) -> AppResult<Kept> {
    let entry = store.entry(host.to_string()).await.map_err(|e| AppError::Unavailable(format!("placement ledger: {e}")))?;
    let (ledger, revision) = match entry {
        Some(e) if e.operation == kv::Operation::Put => (serde_json::from_slice(&e.value).unwrap_or_default(), Some(e.revision)),
        Some(e) => (Ledger::default(), Some(e.revision)),
        None => (Ledger::default(), None),
    };
    Ok(Kept { ledger, revision, read_at: Instant::now() })
}

/// Wait until this gateway's projection has applied event `seq`.
async fn catch_up(app: &App, seq: u64) -> AppResult<()> {
    let mut applied = app.proj.subscribe();
    let caught = tokio::time::timeout(CATCH_UP_FOR, applied.wait_for(|a| *a >= seq)).await;
    match caught {
        Ok(Ok(_)) => Ok(()),
        _ => Err(AppError::Unavailable(format!("this gateway's projection has not reached event {seq} that placement needs; retry"))),
    }
}

/// What a host has taken as this gateway's projection shows it, ports,
/// addresses and GPUs included: what it has left to offer. A create shows
/// there once its first event is projected, which accepting it waits for.
pub(super) fn projected_taken(app: &App, host: HostId) -> AppResult<Taken> {
    taken(app, host, &Ledger::default(), "", true)
}

/// Pick a host for resource `id` by `strategy` among those that can take
/// `need`, and record its claim in that host's ledger. A retry for the same
/// `id` replaces its own claim rather than adding a second.
pub(super) async fn place(app: &App, id: &str, need: &Need, strategy: Strategy) -> AppResult<HostId> {
    app.bus.ensure_connected()?;
    let store = app.bus.bucket(subjects::PLACEMENT_BUCKET).await?;
    let claim = Claim::from(need);
    let mut ledgers = app.placing.lock().await;
    for _ in 0..ATTEMPTS {
        let hosts = app.proj.hosts_shared()?;
        let mut seen = Vec::with_capacity(hosts.len());
        for host in hosts.iter() {
            let online = app.proj.heartbeats.is_online(host.id);
            // The ledger only matters where the host could take the resource at all.
            let taken = if online && !host.cordoned {
                if ledgers.0.get(&host.id).is_none_or(|k| k.read_at.elapsed() > FRESH_FOR) {
                    let kept = load(&store, host.id).await?;
                    ledgers.0.insert(host.id, kept);
                }
                let kept = &ledgers.0[&host.id];
                if kept.ledger.through > app.proj.applied() {
                    catch_up(app, kept.ledger.through).await?;
                }
                taken(app, host.id, &kept.ledger, id, need.wants_addresses())?
            } else {
                Taken::default()
            };
            seen.push((online, taken));
        }
        let candidates = hosts.iter().zip(&seen).map(|(host, (online, taken))| Candidate { host, online: *online, taken });
        let chosen = answer(placement::choose(need, strategy, candidates), &hosts)?;
        // Only a host that is online and not cordoned is chosen, and only such a host's ledger is kept.
        let Some(kept) = ledgers.0.get_mut(&chosen) else {
            return Err(AppError::Internal(format!("placement chose host {chosen} without reading its ledger")));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut ledger = kept.ledger.clone();
        ledger.prune(app, chosen, now)?;
        ledger.claims.insert(id.to_owned(), Claim { at: now, ..claim.clone() });
        let value: bytes::Bytes = serde_json::to_vec(&ledger).expect("ledger encodes").into();
        let written = match kept.revision {
            Some(rev) => store.update(chosen.to_string(), value, rev).await.map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())),
            None => store.create(chosen.to_string(), value).await.map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
        };
        match written {
            Ok(revision) => {
                *kept = Kept { ledger, revision: Some(revision), read_at: kept.read_at };
                return Ok(chosen);
            }
            // Another gateway placed on this host meanwhile: read it again and look again.
            Err((true, _)) => {
                ledgers.0.remove(&chosen);
            }
            Err((false, e)) => {
                ledgers.0.remove(&chosen);
                return Err(AppError::Unavailable(format!("placement ledger: {e}")));
            }
        }
    }
    Err(AppError::Unavailable("placement is contended; retry".into()))
}

/// Pick a host for something that claims nothing ahead (an image import,
/// whose size is only known once imported) by the same filters and strategy.
pub(super) fn choose(app: &App, need: &Need, strategy: Strategy) -> AppResult<HostId> {
    let hosts = app.proj.hosts_shared()?;
    let taken = hosts.iter().map(|h| Ok(Taken { used: app.proj.host_usage(h.id)?, ..Taken::default() })).collect::<sled::Result<Vec<_>>>()?;
    let candidates = hosts.iter().zip(&taken).map(|(host, taken)| Candidate { host, online: app.proj.heartbeats.is_online(host.id), taken });
    answer(placement::choose(need, strategy, candidates), &hosts)
}

/// The host chosen, or why there is none.
fn answer(choice: Choice, hosts: &[Host]) -> AppResult<HostId> {
    match choice {
        Choice::Host(h) => Ok(h),
        Choice::Refused(unfit, h) => Err(refusal(unfit, hosts.iter().find(|x| x.id == h))),
        Choice::NoneOnline => Err(AppError::Unavailable("no worker host is online".into())),
    }
}

/// The answer to a create nothing can take: the closest host's reason.
fn refusal(unfit: Unfit, host: Option<&Host>) -> AppError {
    let name = host.map_or_else(String::new, |h| format!("{} ({})", h.info.name, h.id));
    match unfit {
        Unfit::NoImage(image) => AppError::Invalid("unknown_image", format!("no online host has the image `{image}`; see GET /v1/images")),
        Unfit::NoBridge => AppError::Invalid("unsupported", "no online host has a bridge for bridge networking (worker --bridge)".into()),
        Unfit::PortOutOfRange(p) => {
            AppError::Invalid("port_out_of_range", format!("host port {p} is outside the port range the hosts forward from (see port_range in GET /v1/hosts)"))
        }
        Unfit::AddressOutsideNetwork(ip) => AppError::Invalid(
            "validation_failed",
            format!("guest_ip {ip} is not a guest address of the hosts' bridge network (see bridge_cidr in GET /v1/hosts)"),
        ),
        Unfit::AddressTaken(what) => AppError::Conflict("address_conflict", format!("{what} is already another vm's on the bridge")),
        Unfit::PortTaken(p) => AppError::Conflict("port_conflict", format!("host port {p} is already forwarded to another vm")),
        Unfit::OtherRegion(code) => AppError::Invalid("region_not_served", format!("no online host serves region `{code}`")),
        Unfit::Label(key) => {
            AppError::Conflict("no_matching_host", format!("no online host has the label `{key}` with the value asked for (see labels in GET /v1/hosts)"))
        }
        Unfit::VolumesElsewhere => AppError::Unavailable("the host holding the volumes this vm attaches is not online".into()),
        Unfit::Offline => AppError::Conflict("host_offline", format!("host {name} is not online")),
        Unfit::Cordoned => AppError::Conflict("host_cordoned", "every online host that could take this is cordoned".into()),
        Unfit::NoGpu(count, model) => AppError::Conflict(
            "insufficient_gpus",
            match model {
                Some(m) => format!("no online host has {count} free GPUs of model `{m}`"),
                None => format!("no online host has {count} free GPUs of one model"),
            },
        ),
        Unfit::Short { resource, need, free } => AppError::Conflict(
            "insufficient_capacity",
            format!(
                "no online host has room for this: the closest, {name}, is short of {} (needs {}, has {})",
                resource.name(),
                resource.describe(need),
                resource.describe(free)
            ),
        ),
    }
}
