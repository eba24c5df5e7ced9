//! Hosts: machines that run a worker and its hypervisor driver.

use crate::catalog::{self, Catalog, Location, LookupError};
use crate::ids::HostId;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// What a worker announces about its machine when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub name: String,
    /// The hypervisor driver: `sim`, `qemu`, ...
    pub driver: String,
    /// Driver detail a user should see, e.g. the accelerator and why it was chosen.
    #[serde(default)]
    pub driver_detail: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// Images this host can boot.
    #[serde(default)]
    pub images: Vec<ImageInfo>,
    /// The CIDR of the bridge VMs in bridge mode join, when the operator configured one.
    #[serde(default)]
    pub bridge_cidr: Option<String>,
    /// The host ports the operator lets VMs forward from (worker `--port-range`);
    /// a requested host port outside it is refused. Absent from older workers.
    #[serde(default)]
    pub port_range: Option<PortRange>,
    /// The catalog region the host serves (`--region`); hosts announced
    /// before regions existed serve the default one.
    #[serde(default = "default_region")]
    pub region: String,
    /// The catalog location the host stands in (`--location`).
    #[serde(default)]
    pub location_id: Option<String>,
    /// That location's catalog entry, as the worker found it. (Boxed, as is
    /// `pricing`, to keep host events, which carry this struct, small.)
    #[serde(default)]
    pub location: Option<Box<Location>>,
    /// What the operator calls the host's virtualization engine (`--engine`).
    #[serde(default)]
    pub engine: Option<String>,
    /// The operator's labels (`--label k=v`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// GPUs VMs may be given, by model (`--gpu MODEL:COUNT`).
    #[serde(default)]
    pub gpus: BTreeMap<String, u32>,
    /// What the operator charges for this host's resources.
    #[serde(default)]
    pub pricing: Box<Pricing>,
}

impl Default for HostInfo {
    /// An empty host in the default region: for struct literals (`..HostInfo::default()`).
    fn default() -> Self {
        Self {
            name: String::new(),
            driver: String::new(),
            driver_detail: None,
            cpus: 0,
            memory_mib: 0,
            disk_gb: 0,
            images: Vec::new(),
            bridge_cidr: None,
            port_range: None,
            region: default_region(),
            location_id: None,
            location: None,
            engine: None,
            labels: BTreeMap::new(),
            gpus: BTreeMap::new(),
            pricing: Box::default(),
        }
    }
}

fn default_region() -> String {
    catalog::DEFAULT_REGION.to_owned()
}

/// Prices per hour, in the operator's currency, exact decimals (`"0.0015"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pricing {
    /// Per vCPU.
    #[serde(default)]
    #[schema(value_type = String)]
    pub per_vcpu_hr: Decimal,
    /// Per GB of memory.
    #[serde(default)]
    #[schema(value_type = String)]
    pub per_gb_ram_hr: Decimal,
    /// Per GB of disk.
    #[serde(default)]
    #[schema(value_type = String)]
    pub per_gb_storage_hr: Decimal,
    /// Per GPU, by model.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub per_gpu_hr: BTreeMap<String, Decimal>,
}

/// What the operator says about a host (worker flags), beside what its driver finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProfile {
    /// Default: the location's region, else [`catalog::DEFAULT_REGION`].
    pub region: Option<String>,
    pub location: Option<String>,
    pub engine: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub gpus: BTreeMap<String, u32>,
    pub pricing: Pricing,
}

/// Why a host profile was refused at worker start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Catalog(#[from] LookupError),
    #[error("location `{location}` is in region `{location_region}`, not `{region}`")]
    RegionMismatch { location: String, location_region: String, region: String },
    #[error("{0}")]
    Invalid(String),
}

impl HostProfile {
    /// Check the profile against the catalog and write it into what the host announces.
    pub fn apply(self, catalog: &Catalog, info: &mut HostInfo) -> Result<(), ProfileError> {
        let location = self.location.as_deref().map(|id| catalog.location(id)).transpose()?;
        let region = match (self.region, location) {
            (Some(r), Some(l)) if r != l.region => {
                return Err(ProfileError::RegionMismatch { location: self.location.unwrap_or_default(), location_region: l.region.clone(), region: r });
            }
            (Some(r), _) => r,
            (None, Some(l)) => l.region.clone(),
            (None, None) => catalog::DEFAULT_REGION.to_owned(),
        };
        catalog.region(&region)?;
        let invalid = |m: String| Err(ProfileError::Invalid(m));
        if self.engine.as_ref().is_some_and(|e| e.trim().is_empty() || e.len() > 64 || e.chars().any(char::is_control)) {
            return invalid("engine: one line of 1-64 characters".into());
        }
        if self.labels.len() > 64
            || self.labels.iter().any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 255 || format!("{k}{v}").chars().any(char::is_control))
        {
            return invalid("labels: at most 64, keys 1-63 and values up to 255 characters".into());
        }
        if let Some((model, _)) = self.gpus.iter().find(|(m, n)| !catalog::is_gpu_model(m) || **n == 0) {
            return invalid(format!("gpu `{model}`: a model of letters, digits, '.', '_' and '-', and a count of at least 1"));
        }
        let p = &self.pricing;
        if [p.per_vcpu_hr, p.per_gb_ram_hr, p.per_gb_storage_hr].iter().chain(p.per_gpu_hr.values()).any(Decimal::is_sign_negative) {
            return invalid("prices may not be negative".into());
        }
        if let Some(model) = p.per_gpu_hr.keys().find(|m| !self.gpus.contains_key(*m)) {
            return invalid(format!("a price for GPU model `{model}`, which the host does not have (--gpu {model}:COUNT)"));
        }
        info.region = region;
        info.location = location.cloned().map(Box::new);
        info.location_id = self.location;
        info.engine = self.engine;
        info.labels = self.labels;
        info.gpus = self.gpus;
        *info.pricing = self.pricing;
        Ok(())
    }
}

/// An inclusive range of host ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The range a host that announced none is held to: every unprivileged port.
    pub const UNPRIVILEGED: Self = Self { first: 1024, last: u16::MAX };
}

impl From<(u16, u16)> for PortRange {
    fn from((first, last): (u16, u16)) -> Self {
        Self { first, last }
    }
}

/// A bootable image as a host announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    /// The slug VMs name in `image`.
    pub name: String,
    pub os: String,
    pub arch: String,
    /// Size of the image's files on disk.
    pub size_bytes: u64,
    /// How it boots, e.g. `kernel+initrd`.
    pub boot: String,
    #[serde(default)]
    pub kernel_version: Option<String>,
}

/// Host events. Liveness is not an event: heartbeats go to a key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostEvent {
    /// A worker announced (or re-announced with changes) its host.
    Registered { info: HostInfo },
    /// An image was imported on the host and can boot VMs there.
    ImageImported { image: ImageInfo },
    /// An import failed; nothing was added.
    ImageImportFailed { name: String, message: String },
    /// An admin cordoned the host: no new VMs or volumes are placed there.
    Cordoned,
    /// An admin uncordoned the host.
    Uncordoned,
}

impl HostEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "host_registered",
            Self::ImageImported { .. } => "image_imported",
            Self::ImageImportFailed { .. } => "image_import_failed",
            Self::Cordoned => "host_cordoned",
            Self::Uncordoned => "host_uncordoned",
        }
    }
}

/// What an imported image's source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// A raw disk image holding an ext2/3/4 root filesystem (no partition table).
    Raw,
    /// The same, as qcow2.
    Qcow2,
    /// An OCI image layout directory (`index.json`, `blobs/`).
    OciLayout,
    /// A `docker save` tarball.
    DockerArchive,
}

/// Commands executed by the worker of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostCommand {
    /// Turn a file on the host into a bootable image named `name`.
    ImportImage { name: String, source: String, format: ImageFormat },
}

/// Fold a host event into what the host announced.
pub fn evolve(info: &mut HostInfo, event: &HostEvent) {
    match event {
        HostEvent::Registered { info: new } => *info = new.clone(),
        HostEvent::ImageImported { image } => {
            info.images.retain(|i| i.name != image.name);
            info.images.push(image.clone());
            info.images.sort_by(|a, b| a.name.cmp(&b.name));
        }
        // Whether the host takes new VMs is the read side's ([`Host::cordoned`]), not what the worker announced.
        HostEvent::ImageImportFailed { .. } | HostEvent::Cordoned | HostEvent::Uncordoned => {}
    }
}

/// Fold one event into a host as the read side keeps it.
pub fn evolve_host(host: &mut Host, event: &HostEvent) {
    match event {
        HostEvent::Cordoned => host.cordoned = true,
        HostEvent::Uncordoned => host.cordoned = false,
        ev => evolve(&mut host.info, ev),
    }
}

/// A cordon or an uncordon of a host (admin), carried out by any worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CordonCommand {
    Cordon,
    Uncordon,
}

impl CordonCommand {
    /// The event it appends (always: a repeated cordon changes nothing but is recorded).
    pub fn event(self) -> HostEvent {
        match self {
            Self::Cordon => HostEvent::Cordoned,
            Self::Uncordon => HostEvent::Uncordoned,
        }
    }

    /// The operation kind shown in operations.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Cordon => "cordon_host",
            Self::Uncordon => "uncordon_host",
        }
    }
}

/// A host as the read side keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: HostId,
    pub info: HostInfo,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// Cordoned by an admin: nothing new is placed here.
    #[serde(default)]
    pub cordoned: bool,
}

/// Whether a host takes new VMs and runs its own: `online` while its
/// heartbeats arrive, `cordoned` when it also takes nothing new (admin),
/// `offline` once they stopped for the offline lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Online,
    Cordoned,
    Offline,
}

impl HostStatus {
    /// The status of a host that is `online` (beats) and maybe `cordoned`.
    pub fn of(online: bool, cordoned: bool) -> Self {
        match (online, cordoned) {
            (false, _) => Self::Offline,
            (true, true) => Self::Cordoned,
            (true, false) => Self::Online,
        }
    }
}

/// Resources a VM takes from its host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
}

impl std::ops::SubAssign for Resources {
    /// Saturating: usage never goes below zero, even if events were skipped.
    fn sub_assign(&mut self, o: Self) {
        self.vcpus = self.vcpus.saturating_sub(o.vcpus);
        self.memory_mib = self.memory_mib.saturating_sub(o.memory_mib);
        self.disk_gb = self.disk_gb.saturating_sub(o.disk_gb);
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, o: Self) {
        self.vcpus += o.vcpus;
        self.memory_mib += o.memory_mib;
        self.disk_gb += o.disk_gb;
    }
}

/// The GPUs of each model a host has left: what it announced less what
/// `taken` holds. A request naming a model takes from that model; one naming
/// none takes from the first model (by name) with enough left, the way
/// [`gpus_fit`] lets it in. What no model can hold any more is dropped.
pub fn free_gpus<'a>(announced: &BTreeMap<String, u32>, taken: impl IntoIterator<Item = &'a crate::spec::GpuSpec>) -> BTreeMap<String, u32> {
    let mut free = announced.clone();
    let (named, unnamed): (Vec<_>, Vec<_>) = taken.into_iter().partition(|g| g.model.is_some());
    for g in named.into_iter().chain(unnamed) {
        let model = match &g.model {
            Some(m) => Some(m.clone()),
            None => free.iter().find(|(_, n)| **n >= g.count).map(|(m, _)| m.clone()),
        };
        if let Some(n) = model.and_then(|m| free.get_mut(&m)) {
            *n = n.saturating_sub(g.count);
        }
    }
    free
}

/// Whether `want` fits in `free` (see [`free_gpus`]): a VM's GPUs are all of one model.
pub fn gpus_fit(free: &BTreeMap<String, u32>, want: &crate::spec::GpuSpec) -> bool {
    match &want.model {
        Some(m) => free.get(m).is_some_and(|n| *n >= want.count),
        None => free.values().any(|n| *n >= want.count),
    }
}

/// A host's time up, from its heartbeats: each beat keeps the host up for
/// `up_for` after it (the gateway's online threshold) and overlapping spans
/// merge, so the record grows with outages, not with beats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uptime {
    /// Sorted, disjoint `[start, end)` spans in unix seconds, none touching the next.
    spans: Vec<(i64, i64)>,
}

impl Uptime {
    /// Record a heartbeat; beats may come in any order and repeat.
    pub fn beat(&mut self, at: OffsetDateTime, up_for: time::Duration) {
        let (mut lo, mut hi) = (at.unix_timestamp(), at.unix_timestamp() + up_for.whole_seconds().max(0));
        let first = self.spans.partition_point(|&(_, end)| end < lo);
        let mut last = first;
        while let Some(&(start, end)) = self.spans.get(last).filter(|&&(start, _)| start <= hi) {
            (lo, hi) = (lo.min(start), hi.max(end));
            last += 1;
        }
        self.spans.splice(first..last, [(lo, hi)]);
    }

    /// The percentage of `[from, to)` the host was up (time before its first
    /// beat counts as down: callers start the window at its registration);
    /// `None` for an empty window.
    pub fn percent(&self, from: OffsetDateTime, to: OffsetDateTime) -> Option<f64> {
        let (from, to) = (from.unix_timestamp(), to.unix_timestamp());
        if to <= from {
            return None;
        }
        let up: i64 = self.spans.iter().map(|&(start, end)| (end.min(to) - start.max(from)).max(0)).sum();
        Some(up as f64 * 100.0 / (to - from) as f64)
    }

    /// Drop what ended before `t`, which no window of interest reaches any more.
    pub fn forget_before(&mut self, t: OffsetDateTime) {
        self.spans.retain(|&(_, end)| end > t.unix_timestamp());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_add_or_replace_images_by_name() {
        let mut info = HostInfo { name: "h".into(), driver: "qemu".into(), cpus: 1, memory_mib: 1, disk_gb: 1, ..HostInfo::default() };
        let img = |name: &str, size| ImageInfo {
            name: name.into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            size_bytes: size,
            boot: "kernel+initrd".into(),
            kernel_version: None,
        };
        evolve(&mut info, &HostEvent::ImageImported { image: img("b", 1) });
        evolve(&mut info, &HostEvent::ImageImported { image: img("a", 1) });
        evolve(&mut info, &HostEvent::ImageImported { image: img("b", 2) });
        evolve(&mut info, &HostEvent::ImageImportFailed { name: "c".into(), message: "x".into() });
        assert_eq!(info.images, vec![img("a", 1), img("b", 2)]);
    }

    #[test]
    fn port_ranges_are_inclusive() {
        let host = HostInfo {
            name: "h".into(),
            driver: "sim".into(),
            cpus: 4,
            memory_mib: 1024,
            disk_gb: 100,
            port_range: Some((20000, 29999).into()),
            ..HostInfo::default()
        };
        assert!(host.port_range.is_some_and(|r| r.contains(20000) && r.contains(29999) && !r.contains(19999) && !r.contains(30000)));
        assert!(!PortRange::UNPRIVILEGED.contains(1023) && PortRange::UNPRIVILEGED.contains(1024));
    }

    #[test]
    fn gpus_are_taken_by_model() {
        use crate::spec::GpuSpec;
        let gpu = |count, model: Option<&str>| GpuSpec { count, model: model.map(Into::into) };
        let announced: BTreeMap<String, u32> = [("A100".into(), 2), ("H100".into(), 8)].into();
        assert_eq!(free_gpus(&announced, []), announced);
        // Named first, whatever the order; an unnamed one goes to the first model with room.
        let taken = [gpu(2, None), gpu(1, Some("A100"))];
        assert_eq!(free_gpus(&announced, &taken), [("A100".into(), 1), ("H100".into(), 6)].into());
        let free = free_gpus(&announced, [&gpu(2, Some("A100"))]);
        assert!(gpus_fit(&free, &gpu(8, Some("H100"))) && !gpus_fit(&free, &gpu(1, Some("A100"))));
        assert!(gpus_fit(&free, &gpu(8, None)) && !gpus_fit(&free, &gpu(9, None)));
        assert!(!gpus_fit(&BTreeMap::new(), &gpu(1, None)));
        assert!(!gpus_fit(&free, &gpu(1, Some("T4"))));
    }

    fn catalog() -> Catalog {
        Catalog::with_override(r#"{"locations": {"ams-1": {"region": "eu-west", "city": "Amsterdam", "country": "NL", "tier": 3}}}"#).unwrap()
    }

    fn price(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_profile_is_checked_and_announced() {
        let mut info = HostInfo::default();
        let profile = HostProfile {
            location: Some("ams-1".into()),
            engine: Some("Narwhal".into()),
            labels: [("tier".into(), "gold".into())].into(),
            gpus: [("A100".into(), 2)].into(),
            pricing: Pricing { per_vcpu_hr: price("0.0015"), per_gpu_hr: [("A100".into(), price("2.2"))].into(), ..Pricing::default() },
            ..HostProfile::default()
        };
        profile.clone().apply(&catalog(), &mut info).unwrap();
        assert_eq!((info.region.as_str(), info.location_id.as_deref()), ("eu-west", Some("ams-1")), "the location's region by default");
        assert_eq!(info.location.as_ref().map(|l| l.city.as_str()), Some("Amsterdam"));
        assert_eq!((info.engine.as_deref(), info.gpus.get("A100"), info.labels.get("tier").map(String::as_str)), (Some("Narwhal"), Some(&2), Some("gold")));
        assert_eq!(info.pricing.per_gpu_hr["A100"], price("2.20"));

        let mut plain = HostInfo::default();
        HostProfile::default().apply(&catalog(), &mut plain).unwrap();
        assert_eq!(plain.region, catalog::DEFAULT_REGION);

        let refused = |p: HostProfile| p.apply(&catalog(), &mut HostInfo::default()).unwrap_err();
        assert!(matches!(
            refused(HostProfile { region: Some("mars".into()), ..HostProfile::default() }),
            ProfileError::Catalog(LookupError::UnknownRegion { .. })
        ));
        assert!(matches!(
            refused(HostProfile { location: Some("nyc-1".into()), ..HostProfile::default() }),
            ProfileError::Catalog(LookupError::UnknownLocation { .. })
        ));
        assert!(matches!(refused(HostProfile { region: Some("us-east".into()), ..profile.clone() }), ProfileError::RegionMismatch { .. }));
        assert!(matches!(refused(HostProfile { gpus: [("A 100".into(), 1)].into(), ..HostProfile::default() }), ProfileError::Invalid(_)));
        assert!(matches!(refused(HostProfile { gpus: [("A100".into(), 0)].into(), ..HostProfile::default() }), ProfileError::Invalid(_)));
        assert!(matches!(refused(HostProfile { labels: [(String::new(), "x".into())].into(), ..HostProfile::default() }), ProfileError::Invalid(_)));
        assert!(matches!(refused(HostProfile { engine: Some(" ".into()), ..HostProfile::default() }), ProfileError::Invalid(_)));
        let negative = Pricing { per_gb_ram_hr: price("-0.1"), ..Pricing::default() };
        assert!(matches!(refused(HostProfile { pricing: negative, ..HostProfile::default() }), ProfileError::Invalid(m) if m.contains("negative")));
        let stray = Pricing { per_gpu_hr: [("H100".into(), price("3"))].into(), ..Pricing::default() };
        assert!(matches!(refused(HostProfile { pricing: stray, ..profile }), ProfileError::Invalid(m) if m.contains("H100")));
    }

    #[test]
    fn older_announcements_still_decode() {
        // What a worker from before regions, GPUs and pricing wrote, in both codecs.
        #[derive(Serialize)]
        struct Old {
            name: String,
            driver: String,
            cpus: u32,
            memory_mib: u64,
            disk_gb: u64,
            images: Vec<ImageInfo>,
        }
        let old = Old { name: "h".into(), driver: "sim".into(), cpus: 2, memory_mib: 512, disk_gb: 10, images: vec![] };
        let want = HostInfo { name: "h".into(), driver: "sim".into(), cpus: 2, memory_mib: 512, disk_gb: 10, ..HostInfo::default() };
        let from_json: HostInfo = serde_json::from_value(serde_json::to_value(&old).unwrap()).unwrap();
        let from_wire: HostInfo = crate::event::decode(&crate::event::encode(&old).unwrap()).unwrap();
        assert_eq!((&from_json, &from_wire), (&want, &want));
        assert_eq!(from_wire.region, "us-east");
        // And the new fields survive the wire, prices exactly.
        let mut new = want;
        HostProfile {
            location: Some("ams-1".into()),
            gpus: [("A100".into(), 2)].into(),
            pricing: Pricing { per_gb_storage_hr: price("0.00005"), per_gpu_hr: [("A100".into(), price("2.2"))].into(), ..Pricing::default() },
            ..HostProfile::default()
        }
        .apply(&catalog(), &mut new)
        .unwrap();
        let back: HostInfo = crate::event::decode(&crate::event::encode(&new).unwrap()).unwrap();
        assert_eq!(back, new);
        assert_eq!(serde_json::to_value(&new.pricing).unwrap()["per_gb_storage_hr"], "0.00005");
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn uptime_from_heartbeats() {
        let up_for = time::Duration::seconds(20);
        let mut u = Uptime::default();
        assert_eq!(u.percent(at(0), at(100)), Some(0.0), "no beats: down");
        assert_eq!(u.percent(at(100), at(100)), None, "empty window");
        // Beats every 5 s for 100 s: up the whole time, and one span.
        for t in (0..100).step_by(5) {
            u.beat(at(t), up_for);
        }
        assert_eq!(u.percent(at(0), at(100)), Some(100.0));
        assert_eq!(u.spans.len(), 1);
        // Silent from 95 to 195: up until 115 (the last beat's 20 s), then down for 80 s.
        u.beat(at(195), up_for);
        assert_eq!(u.percent(at(0), at(200)), Some(60.0));
        assert_eq!(u.percent(at(100), at(200)), Some(20.0));
        assert_eq!(u.spans, vec![(at(0).unix_timestamp(), at(115).unix_timestamp()), (at(195).unix_timestamp(), at(215).unix_timestamp())]);
        // Late and repeated beats fill the gap in any order.
        for t in [175, 115, 135, 155, 135] {
            u.beat(at(t), up_for);
        }
        assert_eq!(u.percent(at(0), at(200)), Some(100.0));
        assert_eq!(u.spans.len(), 1);
        // Time before the first beat counts as down.
        assert_eq!(u.percent(at(-100), at(100)), Some(50.0));
        u.forget_before(at(300));
        assert_eq!(u.percent(at(0), at(200)), Some(0.0));
    }
}
