//! Placement: which host takes a new VM, volume or image import.
//!
//! One pure decision for every kind of resource: each host either cannot
//! take the resource (an [`Unfit`] reason) or can, with some load once it
//! has; a [`Strategy`] then picks among those that can. The caller reads the
//! hosts and what they have taken; recording the choice (so parallel
//! placements on other gateways see it) is the caller's I/O.

use crate::cidr::Cidr;
use crate::host::{self, Host, PortRange, Resources};
use crate::ids::{HostId, ImageId};
use crate::spec::GpuSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use utoipa::ToSchema;

/// How to choose among the hosts that can take a resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The least loaded host: VMs spread over the fleet, so one host's loss
    /// takes the fewest of them.
    #[default]
    Spread,
    /// The most loaded host that fits: hosts fill one after another and
    /// whole hosts stay free (for large VMs, or to be switched off).
    Binpack,
}

/// Where a request wants its resource placed (`placement` in a create).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Default: the org's strategy, else `spread`.
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Only this host (it must exist, be online and not cordoned).
    #[serde(default)]
    pub host_id: Option<HostId>,
    /// Only hosts serving this catalog region.
    #[serde(default)]
    #[schema(value_type = Option<crate::catalog::RegionCode>)]
    pub region: Option<String>,
    /// Only hosts carrying every one of these labels with these values (worker `--label`).
    #[serde(default)]
    #[schema(value_type = crate::spec::Labels)]
    pub labels: BTreeMap<String, String>,
}

impl Placement {
    /// Check what a request can get wrong without looking at any host.
    pub fn validate(&self) -> Result<(), String> {
        if self.labels.len() > 64 || self.labels.iter().any(|(k, v)| k.is_empty() || k.chars().count() > 63 || v.chars().count() > 255) {
            return Err("placement.labels: at most 64, keys 1-63 and values up to 255 characters".into());
        }
        if self.region.as_ref().is_some_and(|r| r.is_empty() || r.len() > 63) {
            return Err("placement.region: 1-63 characters".into());
        }
        Ok(())
    }
}

/// A resource a host may be short of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// vCPUs of one VM beyond the host's CPU count.
    Vcpus,
    Memory,
    Disk,
}

impl Resource {
    /// What it is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpus => "vCPUs",
            Self::Memory => "memory",
            Self::Disk => "disk",
        }
    }

    /// Its name in messages, with its unit.
    pub fn describe(self, amount: u64) -> String {
        match self {
            Self::Vcpus => format!("{amount} vCPUs"),
            Self::Memory => format!("{amount} MiB of memory"),
            Self::Disk => format!("{amount} GB of disk"),
        }
    }
}

/// Why a host cannot take the resource. The order is how close the host
/// came: a refusal reports the closest host's reason (a host short of room
/// came closer than one in the wrong region).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    /// Short of a resource: it has `free` where `need` was asked.
    Short { resource: Resource, need: u64, free: u64 },
    /// Not enough free GPUs: the count, of the model asked for.
    NoGpu(u32, Option<String>),
    /// A requested host port is forwarded to another VM there.
    PortTaken(u16),
    /// A requested bridge address (IP or MAC) is another VM's there.
    AddressTaken(String),
    /// A requested host port lies outside the host's `--port-range`.
    PortOutOfRange(u16),
    /// A requested bridge address is not a guest address of the host's bridge network.
    AddressOutsideNetwork(Ipv4Addr),
    /// Bridge networking was asked for and the host has no bridge.
    NoBridge,
    /// The host does not have the image.
    NoImage(String),
    /// The host lacks a label asked for (or has another value).
    Label(String),
    /// The host serves another region than the one asked for.
    OtherRegion(String),
    /// The volumes the VM attaches at create are on another host.
    VolumesElsewhere,
    /// An admin cordoned the host.
    Cordoned,
    /// The host's heartbeats stopped.
    Offline,
}

/// What a host has taken: the use of its resources, ports, addresses and GPUs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Taken {
    pub used: Resources,
    pub ports: BTreeSet<u16>,
    /// Bridge-mode guests' addresses.
    pub ips: BTreeSet<Ipv4Addr>,
    pub macs: BTreeSet<String>,
    /// The GPUs its VMs hold.
    pub gpus: Vec<GpuSpec>,
}

/// What a new resource asks of its host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Need {
    pub resources: Resources,
    /// Requested host ports.
    pub ports: Vec<u16>,
    /// Requested bridge address (bridge mode only).
    pub guest_ip: Option<Ipv4Addr>,
    /// Requested MAC, lower case (bridge mode only).
    pub guest_mac: Option<String>,
    pub gpu: Option<GpuSpec>,
    /// An image slug or `img_` id the host must have.
    pub image: Option<String>,
    /// Bridge networking: the host needs a bridge.
    pub bridged: bool,
    /// Only this host.
    pub host: Option<HostId>,
    /// The host holding the volumes a VM attaches at create.
    pub volumes_host: Option<HostId>,
    pub region: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Need {
    /// Whether checking it needs the host's ports, addresses and GPUs (which
    /// cost the caller a scan of the host's VMs).
    pub fn wants_addresses(&self) -> bool {
        !self.ports.is_empty() || self.guest_ip.is_some() || self.guest_mac.is_some() || self.gpu.is_some()
    }
}

/// A host as placement sees it: what it is, whether it beats, what it has taken.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub host: &'a Host,
    pub online: bool,
    pub taken: &'a Taken,
}

/// Why `candidate` cannot take `need`, or `None` when it can.
pub fn check(need: &Need, c: Candidate<'_>) -> Option<Unfit> {
    let (host, info, taken) = (c.host, &c.host.info, c.taken);
    if !c.online {
        return Some(Unfit::Offline);
    }
    if host.cordoned {
        return Some(Unfit::Cordoned);
    }
    if need.volumes_host.is_some_and(|h| h != host.id) {
        return Some(Unfit::VolumesElsewhere);
    }
    if let Some(region) = need.region.as_ref().filter(|r| **r != info.region) {
        return Some(Unfit::OtherRegion(region.clone()));
    }
    if let Some((k, _)) = need.labels.iter().find(|(k, v)| info.labels.get(*k) != Some(*v)) {
        return Some(Unfit::Label(k.clone()));
    }
    if let Some(image) = need.image.as_ref().filter(|i| !info.images.iter().any(|h| h.name == **i || ImageId::for_slug(&h.name).to_string() == **i)) {
        return Some(Unfit::NoImage(image.clone()));
    }
    if need.bridged && info.bridge_cidr.is_none() {
        return Some(Unfit::NoBridge);
    }
    let network = info.bridge_cidr.as_deref().and_then(|c| c.parse::<Cidr>().ok());
    if let (Some(ip), Some(network)) = (need.guest_ip, network)
        && !network.is_guest(ip)
    {
        return Some(Unfit::AddressOutsideNetwork(ip));
    }
    let range = info.port_range.unwrap_or(PortRange::UNPRIVILEGED);
    if let Some(p) = need.ports.iter().find(|p| !range.contains(**p)) {
        return Some(Unfit::PortOutOfRange(*p));
    }
    if let Some(p) = need.ports.iter().find(|p| taken.ports.contains(p)) {
        return Some(Unfit::PortTaken(*p));
    }
    if let Some(ip) = need.guest_ip.filter(|ip| taken.ips.contains(ip)) {
        return Some(Unfit::AddressTaken(format!("guest_ip {ip}")));
    }
    if let Some(m) = need.guest_mac.as_ref().filter(|m| taken.macs.contains(*m)) {
        return Some(Unfit::AddressTaken(format!("guest_mac {m}")));
    }
    if let Some(g) = need.gpu.as_ref().filter(|g| !host::gpus_fit(&host::free_gpus(&info.gpus, &taken.gpus), g)) {
        return Some(Unfit::NoGpu(g.count, g.model.clone()));
    }
    short(info, &taken.used, &need.resources)
}

/// The first resource `want` lacks next to `used`. vCPUs may not exceed the
/// host's count for one VM but are overcommitted across VMs, as every
/// hypervisor does; memory and disk are not overcommitted.
pub fn short(total: &host::HostInfo, used: &Resources, want: &Resources) -> Option<Unfit> {
    let free_memory = total.memory_mib.saturating_sub(used.memory_mib);
    let free_disk = total.disk_gb.saturating_sub(used.disk_gb);
    if want.vcpus > u64::from(total.cpus) {
        Some(Unfit::Short { resource: Resource::Vcpus, need: want.vcpus, free: u64::from(total.cpus) })
    } else if want.memory_mib > free_memory {
        Some(Unfit::Short { resource: Resource::Memory, need: want.memory_mib, free: free_memory })
    } else if want.disk_gb > free_disk {
        Some(Unfit::Short { resource: Resource::Disk, need: want.disk_gb, free: free_disk })
    } else {
        None
    }
}

/// How loaded a host would be with `want` on it, in millionths: the larger
/// of its memory and disk shares (its dominant resource), so one number
/// compares hosts of different sizes. vCPUs are overcommitted and do not count.
pub fn load(info: &host::HostInfo, used: &Resources, want: &Resources) -> u64 {
    let share = |used: u64, want: u64, total: u64| (used + want).saturating_mul(1_000_000).checked_div(total).unwrap_or(1_000_000);
    share(used.memory_mib, want.memory_mib, info.memory_mib).max(share(used.disk_gb, want.disk_gb, info.disk_gb))
}

/// The outcome of looking at every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The host to place on.
    Host(HostId),
    /// Nothing fits: the reason of the host that came closest, and its id.
    Refused(Unfit, HostId),
    /// No host at all is online.
    NoneOnline,
}

/// Check `need` against every candidate (only the one it names, if it names
/// one) and pick one by `strategy`; ties go to the lower host id, so every
/// gateway picks alike.
pub fn choose<'a>(need: &Need, strategy: Strategy, candidates: impl IntoIterator<Item = Candidate<'a>>) -> Choice {
    let mut best: Option<(u64, HostId)> = None;
    let mut closest: Option<(Unfit, HostId)> = None;
    let mut online = false;
    for c in candidates.into_iter().filter(|c| need.host.is_none_or(|h| h == c.host.id)) {
        online |= c.online;
        match check(need, c) {
            None => {
                let load = load(&c.host.info, &c.taken.used, &need.resources);
                let better = match (best, strategy) {
                    (None, _) => true,
                    (Some((l, id)), Strategy::Spread) => (load, c.host.id) < (l, id),
                    (Some((l, id)), Strategy::Binpack) => load > l || (load == l && c.host.id < id),
                };
                if better {
                    best = Some((load, c.host.id));
                }
            }
            Some(u) => {
                if closest.as_ref().is_none_or(|(r, _)| closeness(&u) < closeness(r)) {
                    closest = Some((u, c.host.id));
                }
            }
        }
    }
    match (best, closest) {
        (Some((_, id)), _) => Choice::Host(id),
        // A named host that is offline is that host's refusal, not the fleet's.
        _ if !online && need.host.is_none() => Choice::NoneOnline,
        (None, Some((u, id))) => Choice::Refused(u, id),
        (None, None) => Choice::NoneOnline,
    }
}

/// Orders reasons by how close the host came; among hosts short of a
/// resource, the one missing the smallest share of what was asked.
fn closeness(u: &Unfit) -> (&Unfit, u64) {
    match u {
        Unfit::Short { need, free, .. } => (u, need.saturating_sub(*free).saturating_mul(1_000_000) / (*need).max(1)),
        _ => (u, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{HostInfo, ImageInfo};
    use time::OffsetDateTime;

    fn host(name: &str, memory_mib: u64, disk_gb: u64) -> Host {
        let image = ImageInfo { name: "debian".into(), os: "linux".into(), arch: "x86_64".into(), size_bytes: 1, boot: "kernel".into(), kernel_version: None };
        Host {
            id: HostId::new(),
            info: HostInfo { name: name.into(), driver: "sim".into(), cpus: 4, memory_mib, disk_gb, images: vec![image], ..HostInfo::default() },
            registered_at: OffsetDateTime::UNIX_EPOCH,
            cordoned: false,
        }
    }

    fn used(memory_mib: u64) -> Taken {
        Taken { used: Resources { vcpus: 1, memory_mib, disk_gb: 0 }, ..Taken::default() }
    }

    fn need(memory_mib: u64) -> Need {
        Need { resources: Resources { vcpus: 1, memory_mib, disk_gb: 1 }, image: Some("debian".into()), ..Need::default() }
    }

    #[test]
    fn spread_takes_the_least_loaded_and_binpack_the_most_loaded_that_fits() {
        let (a, b, c) = (host("a", 4096, 100), host("b", 4096, 100), host("c", 4096, 100));
        let (ta, tb, tc) = (used(1024), used(3072), used(3584));
        let all = || [(&a, &ta), (&b, &tb), (&c, &tc)].map(|(host, taken)| Candidate { host, online: true, taken });
        assert_eq!(choose(&need(512), Strategy::Spread, all()), Choice::Host(a.id));
        assert_eq!(choose(&need(512), Strategy::Binpack, all()), Choice::Host(c.id));
        // c is full for 1 GiB: binpack takes the next fullest.
        assert_eq!(choose(&need(1024), Strategy::Binpack, all()), Choice::Host(b.id));
    }

    #[test]
    fn filters_rule_hosts_out_with_their_reason() {
        let mut h = host("h", 4096, 100);
        h.info.region = "eu-west".into();
        h.info.labels = [("tier".into(), "gold".into())].into();
        h.info.gpus = [("A100".into(), 2)].into();
        let t = Taken::default();
        let c = Candidate { host: &h, online: true, taken: &t };
        assert_eq!(check(&need(512), c), None);
        assert_eq!(check(&need(512), Candidate { online: false, ..c }), Some(Unfit::Offline));
        assert_eq!(check(&Need { region: Some("us-east".into()), ..need(512) }, c), Some(Unfit::OtherRegion("us-east".into())));
        assert_eq!(check(&Need { labels: [("tier".into(), "silver".into())].into(), ..need(512) }, c), Some(Unfit::Label("tier".into())));
        assert_eq!(check(&Need { labels: [("tier".into(), "gold".into())].into(), ..need(512) }, c), None);
        assert_eq!(check(&Need { gpu: Some(GpuSpec { count: 3, model: Some("A100".into()) }), ..need(512) }, c), Some(Unfit::NoGpu(3, Some("A100".into()))));
        assert_eq!(check(&Need { gpu: Some(GpuSpec { count: 2, model: None }), ..need(512) }, c), None);
        let named = Need { host: Some(h.id), ..need(512) };
        assert_eq!(choose(&named, Strategy::Spread, [c, Candidate { host: &host("other", 8192, 100), ..c }]), Choice::Host(h.id));
        assert_eq!(choose(&named, Strategy::Spread, [Candidate { online: false, ..c }]), Choice::Refused(Unfit::Offline, h.id));
        assert_eq!(check(&Need { image: Some("alpine".into()), ..need(512) }, c), Some(Unfit::NoImage("alpine".into())));
        let cordoned = Host { cordoned: true, ..h.clone() };
        assert_eq!(check(&need(512), Candidate { host: &cordoned, ..c }), Some(Unfit::Cordoned));
        let ports = Taken { ports: [30000].into(), ..Taken::default() };
        assert_eq!(check(&Need { ports: vec![30000], ..need(512) }, Candidate { taken: &ports, ..c }), Some(Unfit::PortTaken(30000)));
        assert_eq!(check(&Need { ports: vec![80], ..need(512) }, c), Some(Unfit::PortOutOfRange(80)));
    }

    #[test]
    fn a_refusal_names_the_closest_host_and_the_short_resource() {
        let (small, big, far) = (host("small", 1024, 100), host("big", 4096, 2), host("far", 65536, 1000));
        let mut far = far;
        far.info.region = "eu-west".into();
        let t = Taken::default();
        let all = [&small, &big, &far].map(|host| Candidate { host, online: true, taken: &t });
        let want = Need { resources: Resources { vcpus: 1, memory_mib: 2048, disk_gb: 10 }, region: Some("us-east".into()), ..need(0) };
        // small lacks half the memory asked; big has the memory but a fifth of the disk.
        assert_eq!(choose(&want, Strategy::Spread, all), Choice::Refused(Unfit::Short { resource: Resource::Memory, need: 2048, free: 1024 }, small.id));
        let too_many_cpus = Need { resources: Resources { vcpus: 8, memory_mib: 1, disk_gb: 1 }, ..need(0) };
        assert!(matches!(choose(&too_many_cpus, Strategy::Spread, all), Choice::Refused(Unfit::Short { resource: Resource::Vcpus, need: 8, free: 4 }, _)));
        assert_eq!(
            short(&big.info, &Resources { vcpus: 9, memory_mib: 0, disk_gb: 1 }, &Resources { vcpus: 4, memory_mib: 4096, disk_gb: 1 }),
            None,
            "vCPUs are overcommitted across VMs"
        );
        assert_eq!(
            short(&big.info, &Resources::default(), &Resources { vcpus: 1, memory_mib: 1, disk_gb: 3 }),
            Some(Unfit::Short { resource: Resource::Disk, need: 3, free: 2 })
        );
        let offline = [&small].map(|host| Candidate { host, online: false, taken: &t });
        assert_eq!(choose(&need(1), Strategy::Spread, offline), Choice::NoneOnline);
    }
}
