//! The `sim` driver: an in-process hypervisor stand-in for fast tests and load
//! benchmarks. It is never a default; `--driver sim` must be asked for.
//!
//! Its "guests" are JSON files under `<data-dir>/sim/`, so they outlive a
//! worker crash just as real qemu processes do, and they count boots so tests
//! can prove that a redelivered command never boots a guest twice.
//!
//! A running guest's serial console is a unix socket that echoes what it is
//! sent, so terminal sessions can be tested without a real guest; the last
//! window size a terminal gave it is kept in the guest's file.
//!
//! Faults are injected per VM through labels, which only this driver reads:
//! `sim.fail=<step>` fails that step for good, `sim.fail-once=<step>` fails it
//! once with a retryable error, `sim.crash=<step>` aborts the whole worker
//! process whenever that step runs (a driver that takes its host down),
//! `sim.crash-once=<step>` the first time only (a crash the restarted worker
//! recovers from). Steps: `network`, `disk`, `boot`, `ready`,
//! `power_off`, `reboot`, `snapshot`, `restore`, `destroy`, `attach_volume`
//! (also the disks attached at create), `detach_volume`, `keep_root_disk`,
//! `plug_memory`, `export_disk`, `import_disk`.

use super::{Driver, DriverError, Guest};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use vmplane_domain::catalog::Catalog;
use vmplane_domain::cidr::Cidr;
use vmplane_domain::host::{HostInfo, ImageFormat, ImageInfo};
use vmplane_domain::spec::{NetworkMode, VolumeMount};
use vmplane_domain::subjects::WindowSize;
use vmplane_domain::vm::{DiskInfo, NetworkRuntime, ResolvedPortForward, SnapshotTaken, Vm};
use vmplane_domain::volume::Volume;
use vmplane_domain::{OrgId, SnapshotId, VmId, VolumeId};

/// Knobs for tests and benchmarks.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub dir: PathBuf,
    /// Time the simulated hypervisor takes to boot a guest.
    pub boot_delay: Duration,
    /// Time a simulated guest takes to report readiness.
    pub ready_delay: Duration,
    /// The capacity announced for this simulated host.
    pub host: HostInfo,
    /// Host ports handed out for port forwards that name none.
    pub port_range: (u16, u16),
}

/// What a simulated host boots: the default image and every image of the
/// catalog, so that any catalog name resolves on it.
pub fn catalog_images(catalog: &Catalog) -> Vec<ImageInfo> {
    let image = |name: &str, os: &str| ImageInfo {
        name: name.into(),
        os: os.into(),
        arch: "x86_64".into(),
        size_bytes: 0,
        boot: "simulated".into(),
        kernel_version: None,
    };
    let mut images: Vec<ImageInfo> = catalog.images().iter().map(|(slug, e)| image(slug, &e.os)).collect();
    if !catalog.images().contains_key(vmplane_domain::spec::DEFAULT_IMAGE) {
        images.push(image(vmplane_domain::spec::DEFAULT_IMAGE, "debian"));
        images.sort_by(|a, b| a.name.cmp(&b.name));
    }
    images
}

/// One simulated guest, persisted as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGuest {
    pub running: bool,
    pub boots: u32,
    pub reboots: u32,
    pub has_snapshot: bool,
    pub host_ports: Vec<u16>,
    /// Steps that already failed once under `sim.fail-once`.
    pub failed_once: BTreeSet<String>,
    /// Attached volume ids.
    #[serde(default)]
    pub volumes: BTreeSet<String>,
    /// Where attached volumes are mounted (block devices are not): volume id -> path.
    #[serde(default)]
    pub mounts: BTreeMap<String, String>,
    /// The root disk the guest last booted from.
    #[serde(default)]
    pub root_disk: Option<String>,
    /// Memory after the last hot-plug (0 = never resized).
    #[serde(default)]
    pub memory_mib: u64,
    /// Its address on the bridge, in bridge mode.
    #[serde(default)]
    pub bridge_ip: Option<Ipv4Addr>,
    /// The last window size a terminal gave its console, `<cols>x<rows>`.
    #[serde(default)]
    pub console_size: Option<String>,
    /// The VM's org (absent from guests written before it was kept).
    #[serde(default)]
    pub org: Option<OrgId>,
    /// The snapshot its first boot resumed from, for a clone.
    #[serde(default)]
    pub resumed_from: Option<SnapshotId>,
    /// Whether a clone's disk was flattened (no longer reads its snapshot's).
    #[serde(default)]
    pub flattened: bool,
}

/// The host ports the guests hold, by guest and all together, and where the
/// next automatic choice starts: choosing a port costs the same with 20,000
/// guests as with one.
#[derive(Default)]
struct Ports {
    by_vm: HashMap<VmId, Vec<u16>>,
    taken: BTreeSet<u16>,
    next: u16,
}

impl Ports {
    fn set(&mut self, vm: VmId, ports: Vec<u16>) {
        self.remove(vm);
        self.taken.extend(&ports);
        self.by_vm.insert(vm, ports);
    }

    fn remove(&mut self, vm: VmId) {
        for p in self.by_vm.remove(&vm).unwrap_or_default() {
            self.taken.remove(&p);
        }
    }
}

/// See the module docs.
pub struct SimDriver {
    cfg: SimConfig,
    /// Serialises read-modify-write of guest files and the port allocator.
    lock: Mutex<()>,
    /// Host ports per guest, loaded once at start and kept in step with the files.
    ports: Mutex<Ports>,
    /// Guests whose console socket is being served.
    consoles: Mutex<BTreeSet<VmId>>,
}

impl SimDriver {
    /// A driver keeping its guests under `cfg.dir`.
    pub fn new(cfg: SimConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut ports = Ports::default();
        for entry in std::fs::read_dir(&cfg.dir)?.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<VmId>().ok()) else { continue };
            if let Some(g) = std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice::<SimGuest>(&b).ok()) {
                ports.set(id, g.host_ports);
            }
        }
        Ok(Self { cfg, lock: Mutex::new(()), ports: Mutex::new(ports), consoles: Mutex::default() })
    }

    /// Where a snapshot's record lives: its memory size, as the qemu
    /// driver's snapshot directory holds the memory itself.
    fn snapshot_path(&self, snapshot: SnapshotId) -> PathBuf {
        self.cfg.dir.join(format!("{snapshot}.snapshot"))
    }

    fn console_path(&self, vm: VmId) -> PathBuf {
        self.cfg.dir.join(format!("{vm}.console"))
    }

    /// Where a guest's state lives; tests read it to count boots.
    pub fn guest_path(dir: &Path, vm: VmId) -> PathBuf {
        dir.join(format!("{vm}.json"))
    }

    fn read(&self, vm: VmId) -> Result<Option<SimGuest>, DriverError> {
        match std::fs::read(Self::guest_path(&self.cfg.dir, vm)) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| DriverError::Fatal(format!("corrupt sim guest: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::Retryable(e.to_string())),
        }
    }

    fn write(&self, vm: VmId, g: &SimGuest) -> Result<(), DriverError> {
        let bytes = serde_json::to_vec(g).map_err(|e| DriverError::Fatal(e.to_string()))?;
        crate::record::write(&Self::guest_path(&self.cfg.dir, vm), &bytes).map_err(|e| DriverError::Retryable(e.to_string()))
    }

    /// Bridge mode, as the qemu driver does it: the requested address (or
    /// the first free one of the bridge network the host announces), the
    /// requested MAC (or a generated one), no forwarded ports.
    fn bridge_network(&self, vm: &Vm) -> Result<NetworkRuntime, DriverError> {
        let fatal = |m: String| DriverError::Fatal(m);
        let cidr: Cidr = self
            .cfg
            .host
            .bridge_cidr
            .as_deref()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| fatal("bridge networking is not configured on this host (worker --bridge)".into()))?;
        let ip = self.update(vm, "network", |g| {
            if let Some(ip) = g.bridge_ip {
                return Ok(ip);
            }
            // Under the lock: the addresses of every other guest.
            let taken: BTreeSet<Ipv4Addr> = std::fs::read_dir(&self.cfg.dir)
                .map_err(|e| DriverError::Retryable(e.to_string()))?
                .flatten()
                .filter(|e| e.file_name() != format!("{}.json", vm.id).as_str())
                .filter_map(|e| std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<SimGuest>(&b).ok()))
                .filter_map(|other| other.bridge_ip)
                .collect();
            let ip = match vm.spec.network.guest_ip {
                Some(ip) if !cidr.is_guest(ip) => return Err(fatal(format!("guest_ip {ip} is not a guest address of {cidr}"))),
                Some(ip) if taken.contains(&ip) => return Err(fatal(format!("guest_ip {ip} is already in use"))),
                Some(ip) => ip,
                None => cidr.guests().find(|ip| !taken.contains(ip)).ok_or_else(|| fatal(format!("no free address left in {cidr}")))?,
            };
            g.bridge_ip = Some(ip);
            Ok(ip)
        })?;
        let b = vm.id.0.to_bytes();
        let mac = vm.spec.network.guest_mac.clone().unwrap_or_else(|| format!("02:fc:{:02x}:{:02x}:{:02x}:{:02x}", b[12], b[13], b[14], b[15]));
        Ok(NetworkRuntime { ip: Some(ip.to_string()), mac: Some(mac), ssh_port: None, port_forwards: Vec::new() })
    }

    /// Read-modify-write one guest under the lock; the closure's error aborts without writing.
    fn update<T>(&self, vm: &Vm, step: &str, f: impl FnOnce(&mut SimGuest) -> Result<T, DriverError>) -> Result<T, DriverError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if vm.spec.labels.get("sim.crash").is_some_and(|s| s == step) {
            tracing::error!(vm = %vm.id, step, "injected crash: aborting the worker");
            std::process::abort();
        }
        if vm.spec.labels.get("sim.crash-once").is_some_and(|s| s == step) {
            let mark = self.cfg.dir.join(format!("{}.crashed-{step}", vm.id));
            if !mark.exists() && std::fs::write(&mark, b"").is_ok() {
                tracing::error!(vm = %vm.id, step, "injected crash (once): aborting the worker");
                std::process::abort();
            }
        }
        let mut guest = self.read(vm.id)?.unwrap_or_default();
        guest.org = Some(vm.org);
        if vm.spec.labels.get("sim.fail").is_some_and(|s| s == step) {
            return Err(DriverError::Fatal(format!("injected failure at {step}")));
        }
        if vm.spec.labels.get("sim.fail-once").is_some_and(|s| s == step) && guest.failed_once.insert(step.to_owned()) {
            self.write(vm.id, &guest)?;
            return Err(DriverError::Retryable(format!("injected transient failure at {step}")));
        }
        let out = f(&mut guest)?;
        self.write(vm.id, &guest)?;
        Ok(out)
    }
}

#[async_trait]
impl Driver for SimDriver {
    fn host_info(&self) -> HostInfo {
        self.cfg.host.clone()
    }

    fn guests(&self) -> Vec<Guest> {
        let Ok(entries) = std::fs::read_dir(&self.cfg.dir) else { return Vec::new() };
        let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        names.iter().filter_map(|n| n.to_str()?.strip_suffix(".json")?.parse::<VmId>().ok()).filter_map(|vm| self.guest(vm)).collect()
    }

    fn guest(&self, vm: VmId) -> Option<Guest> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.read(vm) {
            Ok(Some(SimGuest { running, org: Some(org), .. })) => Some(Guest { vm, org, running }),
            _ => None,
        }
    }

    fn console_socket(&self, vm: VmId) -> Option<PathBuf> {
        if !self.read(vm).ok().flatten()?.running {
            return None;
        }
        let path = self.console_path(vm);
        let mut serving = self.consoles.lock().unwrap_or_else(|p| p.into_inner());
        if !serving.contains(&vm) {
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).ok()?;
            serving.insert(vm);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut rd, mut wr) = stream.into_split();
                        let _ = tokio::io::copy(&mut rd, &mut wr).await;
                    });
                }
            });
        }
        Some(path)
    }

    async fn resize_console(&self, vm: VmId, size: WindowSize) -> Result<(), DriverError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut guest = self.read(vm)?.filter(|g| g.running).ok_or_else(|| DriverError::Fatal("the guest is not running here".into()))?;
        guest.console_size = Some(size.to_string());
        self.write(vm, &guest)
    }

    async fn allocate_network(&self, vm: &Vm) -> Result<NetworkRuntime, DriverError> {
        if vm.spec.network.enabled && vm.spec.network.mode == NetworkMode::Bridge {
            return self.bridge_network(vm);
        }
        let mut all = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        let (ports, last_pick) = self.update(vm, "network", |g| {
            if !g.host_ports.is_empty() {
                return Ok((g.host_ports.clone(), None));
            }
            let (lo, hi) = self.cfg.port_range;
            // Ports chosen for this guest so far; the others' are in `all.taken`.
            let mut mine = BTreeSet::new();
            // Requested ports first, so that no automatic choice takes one of them.
            for p in vm.spec.port_forwards.iter().filter_map(|pf| pf.host_port) {
                if !(lo..=hi).contains(&p) {
                    return Err(DriverError::Fatal(format!("host port {p} is outside this host's port range {lo}-{hi}")));
                }
                if all.taken.contains(&p) || !mine.insert(p) {
                    return Err(DriverError::Fatal(format!("host port {p} is already in use")));
                }
            }
            // From where the last choice stopped, once round the range.
            let start = all.next.clamp(lo, hi);
            let mut order = (start..=hi).chain(lo..start);
            let mut last_pick = None;
            let mut pick = || -> Result<u16, DriverError> {
                let p = order
                    .by_ref()
                    .find(|p| !all.taken.contains(p) && !mine.contains(p))
                    .ok_or_else(|| DriverError::Fatal("no free host port left in the range".into()))?;
                mine.insert(p);
                last_pick = Some(p);
                Ok(p)
            };
            let mut ports = vec![pick()?];
            for pf in &vm.spec.port_forwards {
                ports.push(pf.host_port.map_or_else(&mut pick, Ok)?);
            }
            g.host_ports = ports.clone();
            Ok((ports, last_pick))
        })?;
        if let Some(p) = last_pick {
            all.next = p.saturating_add(1);
        }
        all.set(vm.id, ports.clone());
        drop(all);
        let b = vm.id.0.to_bytes();
        let enabled = vm.spec.network.enabled;
        Ok(NetworkRuntime {
            ip: enabled.then(|| format!("10.88.{}.{}", b[14], b[15].max(2))),
            mac: enabled.then(|| vm.spec.network.guest_mac.clone().unwrap_or_else(|| format!("02:fc:{:02x}:{:02x}:{:02x}:{:02x}", b[12], b[13], b[14], b[15]))),
            ssh_port: enabled.then_some(ports[0]),
            port_forwards: vm
                .spec
                .port_forwards
                .iter()
                .zip(&ports[1..])
                .map(|(pf, hp)| ResolvedPortForward { guest_port: pf.guest_port, host_port: *hp, protocol: pf.protocol })
                .collect(),
        })
    }

    async fn prepare_disk(&self, vm: &Vm) -> Result<DiskInfo, DriverError> {
        self.update(vm, "disk", |_| Ok(()))?;
        Ok(DiskInfo { location: format!("sim://{}/root", vm.id), size_gb: vm.spec.disk_gb })
    }

    async fn boot(&self, vm: &Vm) -> Result<(), DriverError> {
        if self.read(vm.id)?.is_some_and(|g| g.running) {
            return Ok(());
        }
        // A clone's first boot resumes from its snapshot, which must be here.
        let resume = vm.spec.from_snapshot.filter(|_| vm.started_at.is_none());
        if let Some(snap) = resume {
            if !self.snapshot_path(snap).exists() {
                // As the qemu driver: a fork's clones wait for their snapshot.
                return Err(DriverError::Retryable(format!("snapshot {snap} is not ready on this host yet")));
            }
        } else {
            tokio::time::sleep(self.cfg.boot_delay).await;
        }
        self.update(vm, "boot", |g| {
            if !g.running {
                g.running = true;
                g.boots += 1;
                g.resumed_from = resume.or(g.resumed_from);
                g.root_disk = vm.root_disk.as_ref().map(|d| d.location.clone());
            }
            Ok(())
        })
    }

    async fn wait_ready(&self, vm: &Vm) -> Result<(), DriverError> {
        tokio::time::sleep(self.cfg.ready_delay).await;
        self.update(vm, "ready", |g| if g.running { Ok(()) } else { Err(DriverError::Fatal("guest is not running".into())) })
    }

    async fn power_off(&self, vm: &Vm) -> Result<(), DriverError> {
        self.update(vm, "power_off", |g| {
            g.running = false;
            Ok(())
        })
    }

    async fn halt(&self, vm: &Vm) -> Result<(), DriverError> {
        self.update(vm, "halt", |g| {
            g.running = false;
            Ok(())
        })
    }

    async fn reboot(&self, vm: &Vm) -> Result<(), DriverError> {
        self.update(vm, "reboot", |g| {
            if !g.running {
                return Err(DriverError::Fatal("guest is not running".into()));
            }
            g.reboots += 1;
            Ok(())
        })
    }

    async fn snapshot(&self, vm: &Vm) -> Result<(), DriverError> {
        self.update(vm, "snapshot", |g| {
            if g.running {
                g.running = false;
                g.has_snapshot = true;
            } else if !g.has_snapshot {
                return Err(DriverError::Fatal("guest is not running".into()));
            }
            Ok(())
        })
    }

    async fn restore(&self, vm: &Vm) -> Result<(), DriverError> {
        self.update(vm, "restore", |g| {
            if g.has_snapshot {
                g.has_snapshot = false;
                g.running = true;
            } else if !g.running {
                return Err(DriverError::Fatal("no snapshot to restore".into()));
            }
            Ok(())
        })
    }

    async fn take_snapshot(&self, vm: &Vm, snapshot: SnapshotId) -> Result<SnapshotTaken, DriverError> {
        let path = self.snapshot_path(snapshot);
        let size_bytes = vm.spec.memory_mib * 1024 * 1024;
        self.update(vm, "take_snapshot", |g| {
            if !g.running && !g.has_snapshot {
                return Err(DriverError::Fatal("guest is neither running nor in standby".into()));
            }
            crate::record::write(&path, size_bytes.to_string().as_bytes()).map_err(|e| DriverError::Retryable(e.to_string()))
        })?;
        Ok(SnapshotTaken { size_bytes, pause_ms: 0 })
    }

    async fn delete_snapshot(&self, snapshot: SnapshotId) -> Result<(), DriverError> {
        match std::fs::remove_file(self.snapshot_path(snapshot)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DriverError::Retryable(e.to_string())),
            _ => Ok(()),
        }
    }

    async fn flatten_disk(&self, vm: &Vm) -> Result<(), DriverError> {
        self.update(vm, "flatten_disk", |g| {
            g.flattened = true;
            Ok(())
        })
    }

    async fn create_volume(&self, volume: &Volume) -> Result<String, DriverError> {
        Ok(format!("sim://volumes/{}", volume.id))
    }

    async fn delete_volume(&self, _volume: &Volume) -> Result<(), DriverError> {
        Ok(())
    }

    async fn keep_root_disk(&self, vm: &Vm, volume: VolumeId) -> Result<String, DriverError> {
        self.update(vm, "keep_root_disk", |g| {
            g.running = false;
            Ok(format!("sim://volumes/{volume}"))
        })
    }

    async fn attach_volume(&self, vm: &Vm, _location: &str, mount: &VolumeMount) -> Result<(), DriverError> {
        self.update(vm, "attach_volume", |g| {
            let id = mount.volume_id.to_string();
            if let Some(path) = &mount.mount_path {
                g.mounts.insert(id.clone(), path.clone());
            }
            g.volumes.insert(id);
            Ok(())
        })
    }

    async fn detach_volume(&self, vm: &Vm, mount: &VolumeMount) -> Result<(), DriverError> {
        self.update(vm, "detach_volume", |g| {
            let id = mount.volume_id.to_string();
            g.mounts.remove(&id);
            g.volumes.remove(&id);
            Ok(())
        })
    }

    async fn import_image(&self, name: &str, source: &std::path::Path, _format: ImageFormat) -> Result<ImageInfo, DriverError> {
        if !source.exists() {
            return Err(DriverError::Fatal(format!("{} does not exist on this host", source.display())));
        }
        Ok(ImageInfo { name: name.into(), os: "linux".into(), arch: "x86_64".into(), size_bytes: 0, boot: "simulated".into(), kernel_version: None })
    }

    async fn plug_memory(&self, vm: &Vm, total_mib: u64) -> Result<(), DriverError> {
        self.update(vm, "plug_memory", |g| {
            g.memory_mib = total_mib;
            Ok(())
        })
    }

    async fn export_disk(&self, vm: &Vm) -> Result<PathBuf, DriverError> {
        let guest = self.update(vm, "export_disk", |g| Ok(g.clone()))?;
        let path = self.cfg.dir.join(format!("{}.export", vm.id));
        let bytes = serde_json::to_vec(&guest).map_err(|e| DriverError::Fatal(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(|e| DriverError::Retryable(e.to_string()))?;
        Ok(path)
    }

    fn import_path(&self, vm: VmId) -> PathBuf {
        self.cfg.dir.join(format!("{vm}.import"))
    }

    async fn import_disk(&self, vm: &Vm) -> Result<DiskInfo, DriverError> {
        let disk = DiskInfo { location: format!("sim://{}/root", vm.id), size_gb: vm.spec.disk_gb };
        let path = self.import_path(vm.id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.read(vm.id)?.is_some() => return Ok(disk),
            Err(e) => return Err(DriverError::Fatal(format!("the moved disk is not here: {e}"))),
        };
        let moved: SimGuest = serde_json::from_slice(&bytes).map_err(|e| DriverError::Fatal(format!("corrupt moved disk: {e}")))?;
        self.update(vm, "import_disk", |g| {
            // The disk and what the guest wrote to it come along; it does not run here yet.
            *g = SimGuest { running: false, host_ports: Vec::new(), bridge_ip: None, org: Some(vm.org), ..moved };
            Ok(())
        })?;
        let _ = std::fs::remove_file(&path);
        Ok(disk)
    }

    async fn destroy(&self, vm: &Vm) -> Result<(), DriverError> {
        self.update(vm, "destroy", |_| Ok(()))?;
        self.ports.lock().unwrap_or_else(|p| p.into_inner()).remove(vm.id);
        let _ = std::fs::remove_file(self.console_path(vm.id));
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::remove_file(Self::guest_path(&self.cfg.dir, vm.id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::Retryable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;
    use vmplane_domain::spec::{PortForward, VmSpec};
    use vmplane_domain::vm::{VmEvent, evolve};
    use vmplane_domain::{HostId, OrgId, ProjectId};

    fn driver(dir: &Path) -> SimDriver {
        SimDriver::new(SimConfig {
            dir: dir.to_owned(),
            boot_delay: Duration::ZERO,
            ready_delay: Duration::ZERO,
            host: HostInfo {
                name: "t".into(),
                driver: "sim".into(),
                cpus: 4,
                memory_mib: 4096,
                disk_gb: 100,
                port_range: Some((30000, 30009).into()),
                ..HostInfo::default()
            },
            port_range: (30000, 30009),
        })
        .unwrap()
    }

    fn vm(spec: VmSpec) -> Vm {
        let created = VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: Box::new(spec), host: HostId::new() };
        evolve(None, VmId::new(), None, OffsetDateTime::now_utc(), &created).unwrap()
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[tokio::test]
    async fn boot_is_idempotent_and_counted() {
        let dir = tmp();
        let d = driver(dir.path());
        let v = vm(VmSpec::named("a"));
        d.boot(&v).await.unwrap();
        d.boot(&v).await.unwrap();
        let g = d.read(v.id).unwrap().unwrap();
        assert_eq!((g.running, g.boots), (true, 1));
        d.power_off(&v).await.unwrap();
        d.boot(&v).await.unwrap();
        assert_eq!(d.read(v.id).unwrap().unwrap().boots, 2);
        d.destroy(&v).await.unwrap();
        d.destroy(&v).await.unwrap();
        assert!(d.read(v.id).unwrap().is_none());
    }

    #[tokio::test]
    async fn ports_are_allocated_without_conflicts() {
        let dir = tmp();
        let d = driver(dir.path());
        let mut spec = VmSpec::named("a");
        spec.port_forwards = vec![PortForward { guest_port: 80, host_port: Some(30002), protocol: Default::default() }];
        let a = vm(spec.clone());
        let net = d.allocate_network(&a).await.unwrap();
        assert_eq!(net.ssh_port, Some(30000));
        assert_eq!(net.port_forwards[0].host_port, 30002);
        assert_eq!(d.allocate_network(&a).await.unwrap(), net, "allocation is idempotent");
        let b = vm(spec);
        assert_eq!(d.allocate_network(&b).await, Err(DriverError::Fatal("host port 30002 is already in use".into())));
        let c = vm(VmSpec::named("c"));
        assert_eq!(d.allocate_network(&c).await.unwrap().ssh_port, Some(30001));
        // A requested port is never the automatic choice of the same VM (its SSH port).
        let mut spec = VmSpec::named("d");
        spec.port_forwards = vec![PortForward { guest_port: 80, host_port: Some(30003), protocol: Default::default() }];
        let net = d.allocate_network(&vm(spec)).await.unwrap();
        assert_eq!((net.ssh_port, net.port_forwards[0].host_port), (Some(30004), 30003));
        // Nor one outside the operator's range.
        let mut spec = VmSpec::named("e");
        spec.port_forwards = vec![PortForward { guest_port: 80, host_port: Some(22), protocol: Default::default() }];
        assert!(matches!(d.allocate_network(&vm(spec)).await, Err(DriverError::Fatal(m)) if m.contains("outside")));
    }

    #[tokio::test]
    async fn bridge_mode_takes_addresses_from_the_announced_network() {
        let dir = tmp();
        let mut d = driver(dir.path());
        let mut spec = VmSpec::named("a");
        spec.network.mode = NetworkMode::Bridge;
        assert!(matches!(d.allocate_network(&vm(spec.clone())).await, Err(DriverError::Fatal(m)) if m.contains("not configured")));
        d.cfg.host.bridge_cidr = Some("172.16.0.0/24".into());
        let first = vm(spec.clone());
        let net = d.allocate_network(&first).await.unwrap();
        assert_eq!((net.ip.as_deref(), net.ssh_port), (Some("172.16.0.2"), None), "the first guest address; nothing forwarded");
        assert_eq!(d.allocate_network(&first).await.unwrap(), net, "allocation is idempotent");
        spec.network.guest_ip = Some(Ipv4Addr::new(172, 16, 0, 10));
        spec.network.guest_mac = Some("02:FC:00:00:00:0A".into());
        let net = d.allocate_network(&vm(spec.clone())).await.unwrap();
        assert_eq!((net.ip.as_deref(), net.mac.as_deref()), (Some("172.16.0.10"), Some("02:FC:00:00:00:0A")));
        assert!(matches!(d.allocate_network(&vm(spec.clone())).await, Err(DriverError::Fatal(m)) if m.contains("in use")));
        spec.network.guest_ip = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert!(matches!(d.allocate_network(&vm(spec)).await, Err(DriverError::Fatal(m)) if m.contains("not a guest address")));
    }

    #[tokio::test]
    async fn injected_faults() {
        let dir = tmp();
        let d = driver(dir.path());
        let mut spec = VmSpec::named("a");
        spec.labels.insert("sim.fail-once".into(), "boot".into());
        let v = vm(spec);
        assert!(matches!(d.boot(&v).await, Err(DriverError::Retryable(_))));
        d.boot(&v).await.unwrap();
        let mut spec = VmSpec::named("b");
        spec.labels.insert("sim.fail".into(), "disk".into());
        let v = vm(spec);
        assert!(matches!(d.prepare_disk(&v).await, Err(DriverError::Fatal(_))));
    }

    #[test]
    fn announces_every_catalog_image() {
        let names = |c: &Catalog| catalog_images(c).into_iter().map(|i| i.name).collect::<Vec<_>>();
        let built_in = Catalog::built_in();
        let images = catalog_images(&built_in);
        assert_eq!(names(&built_in), built_in.images().keys().cloned().collect::<Vec<_>>());
        for name in ["ubuntu-24.04", "img_default", "docker.io/library/alpine:latest", "ubuntu2404", "rocky-9"] {
            built_in.resolve_image(name, &images).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(images.iter().find(|i| i.name == "ubuntu-2404").map(|i| i.os.as_str()), Some("ubuntu"));
        // The default image stays bootable when an override drops its entry.
        let c = Catalog::with_override(r#"{"images": {"debian-minimal": null, "my-app": {"os": "alpine", "version": "3"}}}"#).unwrap();
        assert!(names(&c).contains(&"debian-minimal".to_owned()) && names(&c).contains(&"my-app".to_owned()));
    }
}
