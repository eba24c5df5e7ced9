//! The `qemu` driver: one qemu process per VM on q35 (PCIe hot-plug for
//! volumes), controlled over QMP on a per-VM unix socket, booting an image's
//! kernel and initrd with a qcow2 overlay as root disk and a NoCloud seed.
//!
//! qemu is daemonized, so guests outlive a worker crash; a restarted worker
//! finds them by pid file and adopts them. A watcher reports guests that stop
//! without being asked, and the serial console is logged to a file that the
//! worker ships to JetStream.

pub mod accel;
pub mod agent;
pub mod bridge;
pub mod gpu;
pub mod image;
pub mod import;
pub mod layout;
pub mod nft;
pub mod passt;
pub mod process;
pub mod qmp;
pub mod seed;
pub mod snapshot;
pub mod volumes;

use super::{Console, Driver, DriverError, Guest, GuestExit};
use accel::Accel;
use async_trait::async_trait;
use layout::{VmDir, write_private};
use passt::UserNet;
use process::{Launch, Start, is_our_qemu, running_pid, signal};
use qmp::Qmp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use vmplane_domain::host::{HostInfo, ImageFormat, ImageInfo};
use vmplane_domain::spec::{NetworkMode, Protocol, VolumeMount};
use vmplane_domain::subjects::WindowSize;
use vmplane_domain::vm::{DiskInfo, NetworkRuntime, ResolvedPortForward, SnapshotTaken, Vm};
use vmplane_domain::volume::Volume;
use vmplane_domain::{OrgId, SnapshotId, VmId, VolumeId};

/// The line the guest prints on its serial console when it is ready.
pub const READY_LINE: &[u8] = b"VMPLANE-READY";

/// Settings of the qemu driver.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Root of the driver's state: `vms/<id>/...`.
    pub dir: PathBuf,
    /// Where images live: `<slug>/manifest.json`.
    pub images_dir: PathBuf,
    pub qemu_binary: PathBuf,
    pub accel: Accel,
    /// Why that accelerator (shown in `/v1/hosts`).
    pub accel_reason: String,
    /// Host ports handed out for SSH and port forwards that name none.
    pub port_range: (u16, u16),
    /// Address host port forwards listen on.
    pub forward_bind: IpAddr,
    /// passt, for user-mode networking (QEMU's restricted slirp without it).
    pub passt_binary: PathBuf,
    /// The bridge bridge-mode VMs join, if the operator configured one.
    pub bridge: Option<bridge::Bridge>,
    /// How long a guest may take to print its readiness line.
    pub ready_timeout: Duration,
    /// How long a guest may take to power off after ACPI power-down.
    pub stop_timeout: Duration,
    /// Where sysfs is mounted (`/sys`), to find GPUs; a parameter so tests can give a fake tree.
    pub sysfs: PathBuf,
    /// What the host announces; its `gpus` are the declared ones, merged with
    /// those found in sysfs at start ([`gpu::merge`]).
    pub host: HostInfo,
}

/// What `network.json` keeps, so allocation survives restarts and is idempotent.
#[derive(Serialize, Deserialize)]
struct Allocated {
    network: NetworkRuntime,
    /// Bridge mode: the tap device and `vmplane.net=` address.
    #[serde(default)]
    tap: Option<(String, String)>,
}

/// See the module docs.
pub struct QemuDriver {
    cfg: QemuConfig,
    /// How user-mode guests are networked, decided at start.
    user_net: UserNet,
    /// Serialises port allocation.
    ports: Mutex<()>,
    /// Serialises handing out GPUs.
    gpus: Mutex<()>,
    /// Guests being watched for unasked exits: vm -> (pid, org).
    watched: Arc<Mutex<HashMap<VmId, (i32, OrgId)>>>,
    exits: Mutex<Option<mpsc::UnboundedReceiver<GuestExit>>>,
    /// Clones' agent channels, connected before their state is loaded and
    /// kept until they take their identity (see `agent::Held`).
    held_agents: Mutex<HashMap<VmId, agent::Held>>,
}

fn fatal(e: impl std::fmt::Display) -> DriverError {
    DriverError::Fatal(e.to_string())
}

fn retry(e: impl std::fmt::Display) -> DriverError {
    DriverError::Retryable(e.to_string())
}

impl QemuDriver {
    /// Start the driver: find the host's GPUs, choose how guests are
    /// networked and put the filters that keep them off the host in place
    /// (saying so in `driver_detail`), adopt guests that are still running,
    /// and watch them.
    pub fn new(mut cfg: QemuConfig) -> std::io::Result<Self> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(cfg.dir.join("vms"))?;
        let gpus = gpu::discover(&cfg.sysfs);
        cfg.host.gpus = gpu::merge(&cfg.host.gpus, &gpus);
        let user_net = UserNet::detect(&cfg.passt_binary);
        let mut detail: Vec<String> = cfg.host.driver_detail.take().into_iter().collect();
        detail.extend(gpu::describe(&gpus));
        detail.push(user_net.describe());
        if let Some(b) = &cfg.bridge {
            detail.push(bridge_filter(b));
        }
        cfg.host.driver_detail = Some(detail.join("; "));
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Self {
            cfg,
            user_net,
            ports: Mutex::new(()),
            gpus: Mutex::new(()),
            watched: Arc::default(),
            exits: Mutex::new(Some(rx)),
            held_agents: Mutex::default(),
        };
        driver.adopt();
        snapshot::sweep_templates(&driver.cfg.dir);
        tokio::spawn(watch(driver.watched.clone(), driver.cfg.dir.clone(), tx));
        Ok(driver)
    }

    fn dir(&self, vm: VmId) -> VmDir {
        VmDir::new(&self.cfg.dir, vm)
    }

    /// Where moving disks wait (private: they hold guests' data).
    fn moves_dir(&self) -> Result<PathBuf, DriverError> {
        let dir = self.cfg.dir.join("moves");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(retry)?;
        Ok(dir)
    }

    /// Find running guests left by a previous worker and watch them again.
    fn adopt(&self) {
        let Ok(entries) = std::fs::read_dir(self.cfg.dir.join("vms")) else { return };
        for entry in entries.flatten() {
            let Some(vm) = entry.file_name().to_str().and_then(|s| s.parse::<VmId>().ok()) else { continue };
            let dir = self.dir(vm);
            let (Ok(pid), Some(org)) = (std::fs::read_to_string(dir.pid()), read_org(&dir)) else { continue };
            let Ok(pid) = pid.trim().parse::<i32>() else { continue };
            if is_our_qemu(pid, vm) {
                tracing::info!(%vm, pid, "adopted running guest");
                if let UserNet::Passt { runas, .. } = &self.user_net
                    && passt::pid_file(&dir).exists()
                    && passt::running(&dir, *runas).is_none()
                {
                    tracing::warn!(%vm, "the guest's passt is gone: it has no network until it is stopped and started");
                }
                self.watched.lock().unwrap_or_else(|p| p.into_inner()).insert(vm, (pid, org));
            } else if !dir.expected_exit().exists() && !dir.snapshot().exists() {
                // It died while no worker watched: report it like a live exit.
                self.watched.lock().unwrap_or_else(|p| p.into_inner()).insert(vm, (pid, org));
            }
        }
    }

    fn watch_pid(&self, vm: &Vm, dir: &VmDir) -> Result<(), DriverError> {
        let pid = running_pid(dir, vm).ok_or_else(|| fatal("qemu exited right after starting"))?;
        self.watched.lock().unwrap_or_else(|p| p.into_inner()).insert(vm.id, (pid, vm.org));
        Ok(())
    }

    fn unwatch(&self, vm: VmId) {
        self.watched.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm);
        self.held_agents.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm);
    }

    /// Connect a clone's agent channel before its state is loaded, once
    /// (best effort: without it, the agent finds the host by polling).
    async fn hold_agent(&self, vm: VmId, dir: &VmDir) {
        if self.held_agents.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&vm) {
            return;
        }
        match agent::Held::open(dir).await {
            Ok(held) => drop(self.held_agents.lock().unwrap_or_else(|p| p.into_inner()).insert(vm, held)),
            Err(e) => tracing::debug!(vm = %vm, error = %e, "clone's agent channel not held"),
        }
    }

    fn take_held_agent(&self, vm: VmId) -> Option<agent::Held> {
        self.held_agents.lock().unwrap_or_else(|p| p.into_inner()).remove(&vm)
    }

    /// The GPUs the VM is given: those it holds (`gpus.json`), else free
    /// devices of its model bound to `vfio-pci`, recorded before qemu starts
    /// so that no other VM is given them; held until the VM is destroyed.
    fn claim_gpus(&self, vm: &Vm, dir: &VmDir) -> Result<Vec<gpu::Bdf>, DriverError> {
        let Some(want) = &vm.spec.gpu else { return Ok(Vec::new()) };
        let found = gpu::discover(&self.cfg.sysfs);
        let _guard = self.gpus.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = held_gpus(dir) {
            // Still there and still bound: a host reboot may have rebound a device to its vendor driver.
            if let Some(lost) = held.iter().find(|b| !found.iter().any(|g| g.bdf == **b && g.passthrough_ready())) {
                return Err(fatal(format!("GPU {lost} this VM holds is gone or no longer bound to {}", gpu::VFIO_DRIVER)));
            }
            return Ok(held);
        }
        let others: BTreeSet<gpu::Bdf> = self.other_vms(vm.id).filter_map(|other| held_gpus(&self.dir(other))).flatten().collect();
        let picked = gpu::pick(&found, want.count, want.model.as_deref(), &others).map_err(fatal)?;
        write_private(&dir.gpus(), &serde_json::to_vec(&picked).map_err(fatal)?).map_err(retry)?;
        Ok(picked)
    }

    /// Build the command line (claiming the VM's GPUs); in bridge mode, make sure the tap exists first.
    async fn launch<'a>(
        &'a self,
        vm: &'a Vm,
        image: &'a image::Image,
        dir: &'a VmDir,
        network: &'a NetworkRuntime,
        start: Start,
    ) -> Result<Launch<'a>, DriverError> {
        let tap = match allocated(dir).and_then(|a| a.tap) {
            Some((device, address)) => {
                let bridge = self.cfg.bridge.as_ref().ok_or_else(|| fatal("this VM uses bridge networking but the worker has no --bridge"))?;
                bridge::ensure_tap(bridge, &device).await?;
                Some(process::TapPlan { device, address })
            }
            None => None,
        };
        let gpus = self.claim_gpus(vm, dir)?;
        Ok(Launch {
            qemu: &self.cfg.qemu_binary,
            accel: self.cfg.accel,
            vm,
            image,
            dir,
            network,
            forward_bind: self.cfg.forward_bind,
            user_net: &self.user_net,
            start,
            tap,
            gpus,
        })
    }

    fn image(&self, vm: &Vm) -> Result<image::Image, DriverError> {
        image::load(&self.cfg.images_dir, &vm.spec.image).map_err(fatal)
    }

    /// Mark where the next readiness line must appear: after everything printed so far.
    fn mark_ready_from(&self, dir: &VmDir) -> Result<(), DriverError> {
        let len = std::fs::metadata(dir.console_log()).map(|m| m.len()).unwrap_or(0);
        write_private(&dir.ready_mark(), len.to_string().as_bytes()).map_err(retry)
    }

    /// Ask the guest to power off, wait, then insist; its passt goes with it.
    async fn stop_process(&self, vm: &Vm, dir: &VmDir, graceful: bool) -> Result<(), DriverError> {
        write_private(&dir.expected_exit(), b"").map_err(retry)?;
        self.stop_qemu(vm, dir, graceful).await;
        if let UserNet::Passt { runas, .. } = &self.user_net {
            passt::stop(dir, *runas).await;
        }
        Ok(())
    }

    async fn stop_qemu(&self, vm: &Vm, dir: &VmDir, graceful: bool) {
        let Some(pid) = running_pid(dir, vm) else { return };
        if graceful {
            if let Ok(mut q) = Qmp::connect(&dir.qmp()).await {
                let _ = q.execute("system_powerdown", None).await;
            }
            if wait_gone(dir, vm, self.cfg.stop_timeout).await {
                return;
            }
            tracing::warn!(vm = %vm.id, "guest ignored ACPI power-down; stopping it hard");
        }
        if let Ok(mut q) = Qmp::connect(&dir.qmp()).await {
            let _ = q.execute("quit", None).await;
        }
        if !wait_gone(dir, vm, Duration::from_secs(5)).await {
            signal(pid, libc::SIGKILL);
            wait_gone(dir, vm, Duration::from_secs(5)).await;
        }
    }

    /// Guest addresses other bridge-mode VMs on this host hold.
    fn used_guest_ips(&self, except: VmId) -> BTreeSet<std::net::Ipv4Addr> {
        self.other_allocations(except).filter(|a| a.tap.is_some()).filter_map(|a| a.network.ip.and_then(|ip| ip.parse().ok())).collect()
    }

    /// MAC addresses (lower case) other bridge-mode VMs on this host hold.
    fn used_guest_macs(&self, except: VmId) -> BTreeSet<String> {
        self.other_allocations(except).filter(|a| a.tap.is_some()).filter_map(|a| a.network.mac.map(|m| m.to_ascii_lowercase())).collect()
    }

    /// Every other VM with a directory on this host.
    fn other_vms(&self, except: VmId) -> impl Iterator<Item = VmId> + use<> {
        std::fs::read_dir(self.cfg.dir.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<VmId>().ok()))
            .filter(move |vm| *vm != except)
    }

    /// The network allocations of every other VM on this host.
    fn other_allocations(&self, except: VmId) -> impl Iterator<Item = Allocated> + '_ {
        self.other_vms(except).filter_map(|vm| allocated(&self.dir(vm)))
    }

    fn used_ports(&self, except: VmId) -> BTreeSet<u16> {
        self.other_allocations(except)
            .flat_map(|a| a.network.ssh_port.into_iter().chain(a.network.port_forwards.iter().map(|p| p.host_port)).collect::<Vec<_>>())
            .collect()
    }
}

/// The GPUs a VM holds, if it was given any.
fn held_gpus(dir: &VmDir) -> Option<Vec<gpu::Bdf>> {
    std::fs::read(dir.gpus()).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn allocated(dir: &VmDir) -> Option<Allocated> {
    std::fs::read(dir.network()).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Put the nftables filter for `bridge` in place; one line for `driver_detail`.
fn bridge_filter(bridge: &bridge::Bridge) -> String {
    let table = nft::bridge_table(&bridge.name);
    let applied = if bridge::is_interface_name(&bridge.name) {
        nft::apply(&nft::bridge(&bridge.name, bridge.cidr.gateway()))
    } else {
        Err("not an interface name".into())
    };
    match applied {
        Ok(()) => {
            tracing::info!(bridge = %bridge.name, %table, "bridge guests: kept off the host by nftables");
            format!("bridge {}: guests kept off the host by nftables table inet {table}", bridge.name)
        }
        Err(e) => {
            tracing::error!(bridge = %bridge.name, error = %e, "cannot install the nftables filter for the bridge; BRIDGE GUESTS CAN REACH THIS HOST'S SERVICES");
            format!("bridge {}: WITHOUT the host filter ({e}): guests can reach the host's services", bridge.name)
        }
    }
}

/// Run `qemu-img` with `args` then `paths`; its complaint is the error.
pub(crate) async fn qemu_img<'a>(args: impl IntoIterator<Item = &'a OsStr>, paths: impl IntoIterator<Item = &'a OsStr>) -> Result<(), DriverError> {
    qemu_img_output(args, paths).await.map(drop)
}

/// `qemu-img info` of a qcow2 image, as JSON (`-U`: also while a qemu holds it).
pub(crate) async fn qcow2_info(image: &Path) -> Result<serde_json::Value, DriverError> {
    let out = qemu_img_output(["info", "--output=json", "-U", "-f", "qcow2"].map(OsStr::new), [image.as_os_str()]).await?;
    serde_json::from_slice(&out).map_err(|e| fatal(format!("qemu-img info: {e}")))
}

/// [`qemu_img`], returning what it printed.
async fn qemu_img_output<'a>(args: impl IntoIterator<Item = &'a OsStr>, paths: impl IntoIterator<Item = &'a OsStr>) -> Result<Vec<u8>, DriverError> {
    let out =
        tokio::process::Command::new("qemu-img").args(args).args(paths).output().await.map_err(|e| fatal(format!("qemu-img: {e} (install qemu-utils)")))?;
    if out.status.success() { Ok(out.stdout) } else { Err(fatal(format!("qemu-img: {}", String::from_utf8_lossy(&out.stderr).trim()))) }
}

fn read_org(dir: &VmDir) -> Option<OrgId> {
    std::fs::read_to_string(dir.path().join("org")).ok()?.trim().parse().ok()
}

async fn wait_gone(dir: &VmDir, vm: &Vm, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if running_pid(dir, vm).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running_pid(dir, vm).is_none()
}

/// Report watched guests whose qemu is gone and whose exit nobody asked for.
async fn watch(watched: Arc<Mutex<HashMap<VmId, (i32, OrgId)>>>, root: PathBuf, tx: mpsc::UnboundedSender<GuestExit>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let gone: Vec<(VmId, OrgId)> = {
            let mut map = watched.lock().unwrap_or_else(|p| p.into_inner());
            let dead: Vec<VmId> = map.iter().filter(|(vm, (pid, _))| !is_our_qemu(*pid, **vm)).map(|(vm, _)| *vm).collect();
            dead.into_iter().filter_map(|vm| map.remove(&vm).map(|(_, org)| (vm, org))).collect()
        };
        for (vm, org) in gone {
            let dir = VmDir::new(&root, vm);
            if dir.expected_exit().exists() {
                continue;
            }
            // Only what this boot printed counts: an earlier power-off's line must not
            // make a crash look clean.
            let since_boot: u64 = std::fs::read_to_string(dir.ready_mark()).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            let tail = read_tail(&dir.console_log(), since_boot, 4096);
            let clean = tail.windows(b"reboot: Power down".len()).any(|w| w == b"reboot: Power down");
            let detail = if clean { "guest powered off".to_owned() } else { "qemu exited unexpectedly (guest crash or qemu killed)".to_owned() };
            tracing::warn!(%vm, %detail, "guest stopped on its own");
            let _ = tx.send(GuestExit { vm, org, clean, detail });
        }
    }
}

/// How long saving or loading a guest's state may take.
const MIGRATION_LIMIT: Duration = Duration::from_secs(300);

/// How long a clone's disk step watches for its snapshot to complete on
/// this host before handing the wait back to the executor's backoff.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(15);

/// Resume a paused guest, on a fresh QMP connection (the old one may have broken).
async fn resume(dir: &VmDir) -> Result<(), qmp::QmpError> {
    Qmp::connect(&dir.qmp()).await?.execute("cont", None).await.map(drop)
}

/// Looks for a line in a growing console log, reading only what was appended
/// since the last look (a bounded amount per look), never the whole file.
struct Scan {
    needle: &'static [u8],
    pos: u64,
    /// The tail of what was read, so a needle split across reads is found.
    carry: Vec<u8>,
}

impl Scan {
    /// At most this much is read per look; a flooding guest cannot make one look unbounded.
    const PER_LOOK: u64 = 1 << 20;

    fn new(needle: &'static [u8], from: u64) -> Self {
        Self { needle, pos: from, carry: Vec::new() }
    }

    /// Whether the needle appeared since `from`. A log truncated by rotation is read again from its start.
    fn found(&mut self, path: &Path) -> std::io::Result<bool> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() < self.pos {
            self.pos = 0;
            self.carry.clear();
        }
        f.seek(SeekFrom::Start(self.pos))?;
        let mut chunk = std::mem::take(&mut self.carry);
        let n = f.take(Self::PER_LOOK).read_to_end(&mut chunk)?;
        self.pos += n as u64;
        if chunk.windows(self.needle.len()).any(|w| w == self.needle) {
            return Ok(true);
        }
        let keep = (self.needle.len() - 1).min(chunk.len());
        self.carry = chunk.split_off(chunk.len() - keep);
        Ok(false)
    }
}

/// At most the last `n` bytes of a file, none from before offset `from`.
fn read_tail(path: &Path, from: u64, n: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n).max(from.min(len))));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    buf
}

#[async_trait]
impl Driver for QemuDriver {
    fn host_info(&self) -> HostInfo {
        self.cfg.host.clone()
    }

    fn take_exits(&self) -> Option<mpsc::UnboundedReceiver<GuestExit>> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn guests(&self) -> Vec<Guest> {
        let Ok(entries) = std::fs::read_dir(self.cfg.dir.join("vms")) else { return Vec::new() };
        entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<VmId>().ok()).filter_map(|vm| self.guest(vm)).collect()
    }

    fn guest(&self, vm: VmId) -> Option<Guest> {
        let dir = self.dir(vm);
        let org = read_org(&dir)?;
        let pid = std::fs::read_to_string(dir.pid()).ok().and_then(|p| p.trim().parse::<i32>().ok());
        Some(Guest { vm, org, running: pid.is_some_and(|pid| is_our_qemu(pid, vm)) })
    }

    fn console_socket(&self, vm: VmId) -> Option<PathBuf> {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&vm);
        let socket = self.dir(vm).console_socket();
        (watched && socket.exists()).then_some(socket)
    }

    async fn resize_console(&self, vm: VmId, size: WindowSize) -> Result<(), DriverError> {
        if self.console_socket(vm).is_none() {
            return Err(DriverError::Fatal("the guest is not running here".into()));
        }
        // Quick or not at all: the next resize brings the newest size anyway.
        agent::call(&self.dir(vm), &format!("winsize {} {}", size.cols, size.rows), Duration::from_secs(5)).await
    }

    fn consoles(&self) -> Vec<Console> {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        watched.iter().map(|(vm, (_, org))| Console { vm: *vm, org: *org, log: self.dir(*vm).console_log() }).collect()
    }

    async fn allocate_network(&self, vm: &Vm) -> Result<NetworkRuntime, DriverError> {
        let dir = self.dir(vm.id);
        dir.create().map_err(retry)?;
        write_private(&dir.path().join("org"), vm.org.to_string().as_bytes()).map_err(retry)?;
        let _guard = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = allocated(&dir) {
            return Ok(a.network);
        }
        let b = vm.id.0.to_bytes();
        let generated = |k: u8| format!("52:54:00:{:02x}:{:02x}:{:02x}", b[13].wrapping_add(k), b[14], b[15]);
        if vm.spec.network.enabled && vm.spec.network.mode == NetworkMode::Bridge {
            let bridge = self.cfg.bridge.as_ref().ok_or_else(|| fatal("bridge networking is not configured on this host (worker --bridge)"))?;
            let taken = self.used_guest_ips(vm.id);
            let ip = match vm.spec.network.guest_ip {
                Some(ip) if !bridge.cidr.is_guest(ip) => return Err(fatal(format!("guest_ip {ip} is not a guest address of {}", bridge.cidr))),
                Some(ip) if taken.contains(&ip) => return Err(fatal(format!("guest_ip {ip} is already in use"))),
                Some(ip) => ip,
                None => bridge.cidr.guests().find(|ip| !taken.contains(ip)).ok_or_else(|| fatal(format!("no free address left in {}", bridge.cidr)))?,
            };
            // Two guests with one MAC on a bridge would steal each other's frames.
            let macs = self.used_guest_macs(vm.id);
            let mac = match &vm.spec.network.guest_mac {
                Some(mac) if macs.contains(&mac.to_ascii_lowercase()) => return Err(fatal(format!("guest_mac {mac} is already in use"))),
                Some(mac) => mac.clone(),
                None => (0..=u8::MAX).map(generated).find(|m| !macs.contains(m)).ok_or_else(|| fatal("no free MAC address"))?,
            };
            let network = NetworkRuntime { ip: Some(ip.to_string()), mac: Some(mac), ssh_port: None, port_forwards: Vec::new() };
            let tap = (bridge::tap_name(vm.id), format!("{ip}/{},{}", bridge.cidr.prefix, bridge.cidr.gateway()));
            let bytes = serde_json::to_vec(&Allocated { network: network.clone(), tap: Some(tap) }).map_err(fatal)?;
            write_private(&dir.network(), &bytes).map_err(retry)?;
            return Ok(network);
        }
        let mac = vm.spec.network.guest_mac.clone().unwrap_or_else(|| generated(0));
        let mut taken = self.used_ports(vm.id);
        let (lo, hi) = self.cfg.port_range;
        let bind = self.cfg.forward_bind;
        let free = |p: u16, protocol: Protocol| match protocol {
            Protocol::Tcp => std::net::TcpListener::bind((bind, p)).is_ok(),
            Protocol::Udp => std::net::UdpSocket::bind((bind, p)).is_ok(),
        };
        let enabled = vm.spec.network.enabled;
        let forwards = if enabled { vm.spec.port_forwards.as_slice() } else { &[] };
        // Requested ports first, so that no automatic choice takes one of them.
        for pf in forwards {
            let Some(p) = pf.host_port else { continue };
            if !(lo..=hi).contains(&p) {
                return Err(fatal(format!("host port {p} is outside this host's port range {lo}-{hi}")));
            }
            if !taken.insert(p) || !free(p, pf.protocol) {
                return Err(fatal(format!("host port {p} is already in use")));
            }
        }
        let mut next = lo;
        let mut pick = |protocol: Protocol| -> Result<u16, DriverError> {
            while next <= hi {
                let p = next;
                next += 1;
                if !taken.contains(&p) && free(p, protocol) {
                    taken.insert(p);
                    return Ok(p);
                }
            }
            Err(fatal(format!("no free host port left in {lo}-{hi}")))
        };
        let ssh_port = if enabled { Some(pick(Protocol::Tcp)?) } else { None };
        let forwards = forwards
            .iter()
            .map(|pf| {
                Ok(ResolvedPortForward { guest_port: pf.guest_port, host_port: pf.host_port.map_or_else(|| pick(pf.protocol), Ok)?, protocol: pf.protocol })
            })
            .collect::<Result<Vec<_>, DriverError>>()?;
        let network = NetworkRuntime { ip: enabled.then(|| passt::GUEST_ADDR.to_string()), mac: enabled.then_some(mac), ssh_port, port_forwards: forwards };
        let bytes = serde_json::to_vec(&Allocated { network: network.clone(), tap: None }).map_err(fatal)?;
        write_private(&dir.network(), &bytes).map_err(retry)?;
        Ok(network)
    }

    async fn prepare_disk(&self, vm: &Vm) -> Result<DiskInfo, DriverError> {
        let dir = self.dir(vm.id);
        std::fs::create_dir_all(dir.path()).map_err(retry)?;
        let image = self.image(vm)?;
        let root = dir.root_disk();
        if !root.exists() {
            let tmp = root.with_extension("qcow2.tmp");
            let size = format!("{}G", vm.spec.disk_gb);
            // A clone's disk starts as the snapshot's frozen disk; any other as the image.
            let (backing, format) = match vm.spec.from_snapshot {
                Some(snap) => (self.snapshot_dir(snap).ready_within(SNAPSHOT_PATIENCE).await?.disk(), "qcow2"),
                None => (image.rootfs.clone(), "raw"),
            };
            qemu_img(
                [OsStr::new("create"), "-q".as_ref(), "-f".as_ref(), "qcow2".as_ref(), "-F".as_ref(), format.as_ref(), "-b".as_ref()],
                [backing.as_os_str(), tmp.as_os_str(), size.as_ref()],
            )
            .await?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(retry)?;
            std::fs::rename(&tmp, &root).map_err(retry)?;
        }
        Ok(DiskInfo { location: root.display().to_string(), size_gb: vm.spec.disk_gb })
    }

    async fn boot(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        if running_pid(&dir, vm).is_some() {
            // A clone an earlier attempt started may still wait for its state.
            if let Some(snap) = snapshot::resumes_from(vm) {
                self.hold_agent(vm.id, &dir).await;
                self.resume_clone(&dir, snap).await?;
            }
            return self.watch_pid(vm, &dir);
        }
        let image = self.image(vm)?;
        let network = vm.network.clone().unwrap_or_default();
        let _ = std::fs::remove_file(dir.expected_exit());
        let plugged: String = volumes::plugged(&dir).iter().filter_map(volumes::Plugged::seed_line).collect();
        seed::write(vm, &dir.seed(), plugged).await.map_err(fatal)?;
        std::fs::set_permissions(dir.seed(), std::fs::Permissions::from_mode(0o600)).map_err(retry)?;
        self.mark_ready_from(&dir)?;
        let start = match snapshot::resumes_from(vm) {
            Some(snap) => Start::Clone { memory: self.snapshot_dir(snap).ready()?.memory() },
            None => Start::Boot,
        };
        self.launch(vm, &image, &dir, &network, start).await?.spawn().await.map_err(fatal)?;
        if let Some(snap) = snapshot::resumes_from(vm) {
            self.hold_agent(vm.id, &dir).await;
            self.resume_clone(&dir, snap).await?;
        }
        self.watch_pid(vm, &dir)
    }

    async fn wait_ready(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        if snapshot::resumes_from(vm).is_some() {
            // A resumed clone printed its readiness line long ago, as its source.
            // In bridge mode, its address too (there is no DHCP server on the bridge).
            let static_net = allocated(&dir).and_then(|a| a.tap).map(|(_, address)| address);
            return snapshot::take_identity(vm, &dir, static_net.as_deref(), self.take_held_agent(vm.id), self.cfg.ready_timeout).await;
        }
        let from: u64 = std::fs::read_to_string(dir.ready_mark()).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let mut scan = Scan::new(READY_LINE, from);
        let deadline = tokio::time::Instant::now() + self.cfg.ready_timeout;
        loop {
            if scan.found(&dir.console_log()).map_err(retry)? {
                return Ok(());
            }
            if running_pid(&dir, vm).is_none() {
                return Err(fatal("qemu exited before the guest was ready"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(fatal(format!("guest printed no readiness line within {} s", self.cfg.ready_timeout.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn power_off(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        self.stop_process(vm, &dir, true).await?;
        self.unwatch(vm.id);
        Ok(())
    }

    async fn reboot(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        if running_pid(&dir, vm).is_none() {
            return Err(fatal("guest is not running"));
        }
        self.mark_ready_from(&dir)?;
        let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
        q.execute("system_reset", None).await.map_err(retry)?;
        Ok(())
    }

    async fn snapshot(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        let state = dir.snapshot();
        if running_pid(&dir, vm).is_none() {
            return if state.exists() { Ok(()) } else { Err(fatal("guest is not running and has no snapshot")) };
        }
        let partial = state.with_extension("partial");
        let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
        let saved = async {
            q.execute("stop", None).await?;
            q.save_state(&partial, MIGRATION_LIMIT).await
        };
        let saved = saved.await;
        // QEMU serves one QMP client at a time: let go of this one first.
        drop(q);
        if let Err(e) = saved {
            // Leave the guest as it was: running, with no state file claiming otherwise.
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&state);
            return match resume(&dir).await {
                Ok(()) => Err(fatal(format!("saving the guest's state failed ({e}); the guest was resumed"))),
                Err(r) => {
                    self.halt(vm).await?;
                    Err(DriverError::GuestLost(format!("saving the guest's state failed ({e}) and the guest could not be resumed ({r})")))
                }
            };
        }
        std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(retry)?;
        std::fs::rename(&partial, &state).map_err(retry)?;
        self.stop_process(vm, &dir, false).await?;
        self.unwatch(vm.id);
        Ok(())
    }

    async fn restore(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        if running_pid(&dir, vm).is_none() {
            if !dir.snapshot().exists() {
                return Err(fatal("no snapshot to restore"));
            }
            let image = self.image(vm)?;
            let network = vm.network.clone().unwrap_or_default();
            let _ = std::fs::remove_file(dir.expected_exit());
            self.launch(vm, &image, &dir, &network, Start::Incoming).await?.spawn().await.map_err(fatal)?;
        }
        // A qemu found running was started by an earlier attempt: finish what it began.
        let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
        if q.status().await.map_err(retry)? == "inmigrate" {
            q.load_state(&dir.snapshot(), MIGRATION_LIMIT).await.map_err(|e| fatal(format!("loading the saved state failed: {e}")))?;
        }
        if q.status().await.map_err(retry)? != "running" {
            q.execute("cont", None).await.map_err(fatal)?;
        }
        let _ = std::fs::remove_file(dir.snapshot());
        self.watch_pid(vm, &dir)
    }

    async fn take_snapshot(&self, vm: &Vm, snap: SnapshotId) -> Result<SnapshotTaken, DriverError> {
        self.snapshot_vm(vm, snap).await
    }

    async fn delete_snapshot(&self, snap: SnapshotId) -> Result<(), DriverError> {
        match std::fs::remove_dir_all(self.snapshot_dir(snap).path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(retry(e)),
            _ => Ok(()),
        }
    }

    async fn flatten_disk(&self, vm: &Vm) -> Result<(), DriverError> {
        self.flatten_clone(vm).await
    }

    async fn halt(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        if dir.path().exists() {
            self.stop_process(vm, &dir, false).await?;
        }
        self.unwatch(vm.id);
        Ok(())
    }

    async fn create_volume(&self, volume: &Volume) -> Result<String, DriverError> {
        Ok(volumes::create(&self.cfg.dir, volume.id, volume.spec.size_gb).await?.display().to_string())
    }

    async fn delete_volume(&self, volume: &Volume) -> Result<(), DriverError> {
        match std::fs::remove_file(volumes::volume_file(&self.cfg.dir, volume.id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(retry(e)),
        }
    }

    async fn keep_root_disk(&self, vm: &Vm, volume: VolumeId) -> Result<String, DriverError> {
        let dir = self.dir(vm.id);
        let target = volumes::volume_file(&self.cfg.dir, volume);
        if dir.root_disk().exists() {
            self.stop_process(vm, &dir, true).await?;
            self.unwatch(vm.id);
            std::fs::create_dir_all(target.parent().expect("volume files have a parent")).map_err(retry)?;
            std::fs::rename(dir.root_disk(), &target).map_err(retry)?;
        } else if !target.exists() {
            return Err(fatal("the vm has no root disk to keep"));
        }
        Ok(target.display().to_string())
    }

    async fn attach_volume(&self, vm: &Vm, location: &str, mount: &VolumeMount) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        volumes::attach(&dir, location, mount, running_pid(&dir, vm).is_some()).await
    }

    async fn detach_volume(&self, vm: &Vm, mount: &VolumeMount) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        volumes::detach(&dir, mount, running_pid(&dir, vm).is_some()).await
    }

    async fn import_image(&self, name: &str, source: &Path, format: ImageFormat) -> Result<ImageInfo, DriverError> {
        let base = image::load(&self.cfg.images_dir, vmplane_domain::spec::DEFAULT_IMAGE).map_err(fatal)?;
        import::import(&self.cfg.images_dir, &base, name, source, format).await
    }

    async fn plug_memory(&self, vm: &Vm, total_mib: u64) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        if running_pid(&dir, vm).is_none() {
            return Err(fatal("guest is not running"));
        }
        let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
        let dimms = q.execute("query-memory-devices", None).await.map_err(retry)?;
        let dimms = dimms.as_array().cloned().unwrap_or_default();
        let plugged: u64 = dimms.iter().filter_map(|d| d["data"]["size"].as_u64()).sum::<u64>() >> 20;
        let Some(extra) = total_mib.checked_sub(vm.spec.memory_mib + plugged).filter(|e| *e > 0) else { return Ok(()) };
        let n = dimms.len();
        q.execute("object-add", Some(json!({"qom-type": "memory-backend-ram", "id": format!("mem{n}"), "size": extra << 20}))).await.map_err(fatal)?;
        q.execute("device_add", Some(json!({"driver": "pc-dimm", "id": format!("dimm{n}"), "memdev": format!("mem{n}")}))).await.map_err(fatal)?;
        Ok(())
    }

    async fn export_disk(&self, vm: &Vm) -> Result<PathBuf, DriverError> {
        let root = self.dir(vm.id).root_disk();
        if !root.exists() {
            return Err(fatal(format!("{}: the root disk is missing", root.display())));
        }
        let moves = self.moves_dir()?;
        let (out, tmp) = (moves.join(format!("{}.out.qcow2", vm.id)), moves.join(format!("{}.out.qcow2.tmp", vm.id)));
        // Flattened: the image it is layered on may sit elsewhere on the other host.
        qemu_img(["convert", "-q", "-O", "qcow2"].map(OsStr::new), [root.as_os_str(), tmp.as_os_str()]).await?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(retry)?;
        std::fs::rename(&tmp, &out).map_err(retry)?;
        Ok(out)
    }

    fn import_path(&self, vm: VmId) -> PathBuf {
        self.cfg.dir.join("moves").join(format!("{vm}.in.qcow2"))
    }

    async fn import_disk(&self, vm: &Vm) -> Result<DiskInfo, DriverError> {
        let dir = self.dir(vm.id);
        let (incoming, root) = (self.import_path(vm.id), dir.root_disk());
        let disk = DiskInfo { location: root.display().to_string(), size_gb: vm.spec.disk_gb };
        if !incoming.exists() {
            return if root.exists() { Ok(disk) } else { Err(fatal("the moved root disk is not here")) };
        }
        dir.create().map_err(retry)?;
        write_private(&dir.path().join("org"), vm.org.to_string().as_bytes()).map_err(retry)?;
        std::fs::set_permissions(&incoming, std::fs::Permissions::from_mode(0o600)).map_err(retry)?;
        std::fs::rename(&incoming, &root).map_err(retry)?;
        Ok(disk)
    }

    async fn destroy(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        if dir.path().exists() {
            self.stop_process(vm, &dir, false).await?;
        }
        self.unwatch(vm.id);
        if let Some((tap, _)) = allocated(&dir).and_then(|a| a.tap) {
            bridge::remove_tap(&tap).await;
        }
        match std::fs::remove_dir_all(dir.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(retry(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A driver over a temp dir, finding GPUs in the fake sysfs under it
    /// (`gpu::tests::device`); it never runs qemu or passt.
    fn driver(root: &Path, declared: &[(&str, u32)]) -> QemuDriver {
        let host = HostInfo { gpus: declared.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect(), ..HostInfo::default() };
        QemuDriver::new(QemuConfig {
            dir: root.join("qemu"),
            images_dir: root.join("images"),
            qemu_binary: root.join("no-qemu"),
            accel: Accel::Tcg,
            accel_reason: String::new(),
            port_range: (20000, 20010),
            forward_bind: "127.0.0.1".parse().unwrap(),
            passt_binary: root.join("no-passt"),
            bridge: None,
            ready_timeout: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(1),
            sysfs: root.join("sys"),
            host,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_host_announces_found_gpus_merged_with_declared_ones() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        gpu::tests::device(&sys, "0000:17:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        gpu::tests::device(&sys, "0000:65:00.0", 0x10de, 0x2330, 0x030200, Some("nvidia"));
        gpu::tests::device(&sys, "0000:03:00.0", 0x1002, 0x740f, 0x030000, Some("vfio-pci"));
        let info = driver(d.path(), &[("nvidia-2330", 1), ("A100", 2)]).host_info();
        let gpus: Vec<(&str, u32)> = info.gpus.iter().map(|(m, n)| (m.as_str(), *n)).collect();
        assert_eq!(gpus, [("A100", 2), ("amd-740f", 1), ("nvidia-2330", 1)], "declared counts win, found-only models are counted");
        let detail = info.driver_detail.unwrap();
        assert!(detail.contains("GPUs: amd-740f 0000:03:00.0 (vfio-pci), nvidia-2330 0000:17:00.0 (vfio-pci), nvidia-2330 0000:65:00.0 (nvidia)"), "{detail}");
    }

    /// A VM asking for `count` GPUs (none for 0).
    fn gpu_vm(count: u32, model: Option<&str>) -> Vm {
        let mut spec = vmplane_domain::spec::VmSpec::named("g");
        spec.gpu = (count > 0).then(|| vmplane_domain::spec::GpuSpec { count, model: model.map(str::to_owned) });
        let created = vmplane_domain::vm::VmEvent::Created {
            org: OrgId::DEFAULT,
            project: vmplane_domain::ProjectId::DEFAULT,
            spec: Box::new(spec),
            host: vmplane_domain::HostId::new(),
        };
        vmplane_domain::vm::evolve(None, VmId::new(), None, time::OffsetDateTime::now_utc(), &created).unwrap()
    }

    /// The qemu arguments the driver would start `vm` with (claiming its GPUs on the way).
    async fn launch_args(d: &QemuDriver, vm: &Vm) -> Result<Vec<String>, DriverError> {
        let dir = d.dir(vm.id);
        dir.create().unwrap();
        let image = image::Image { name: "i".into(), kernel: "/k".into(), initrd: "/i".into(), rootfs: "/r".into(), cmdline: String::new() };
        let network = NetworkRuntime::default();
        Ok(d.launch(vm, &image, &dir, &network, Start::Boot).await?.args(-1))
    }

    fn passed_through(args: &[String]) -> Vec<String> {
        args.iter().filter_map(|a| a.strip_prefix("vfio-pci,host=")).map(|a| a.split(',').next().unwrap().to_owned()).collect()
    }

    #[tokio::test]
    async fn a_vm_is_given_free_vfio_bound_gpus_no_other_vm_holds() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        gpu::tests::device(&sys, "0000:17:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        gpu::tests::device(&sys, "0000:18:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        gpu::tests::device(&sys, "0000:65:00.0", 0x10de, 0x2330, 0x030200, Some("nvidia"));
        let driver = driver(d.path(), &[]);
        let (a, b, c) = (gpu_vm(1, Some("nvidia-2330")), gpu_vm(1, None), gpu_vm(1, Some("nvidia-2330")));
        assert_eq!(passed_through(&launch_args(&driver, &a).await.unwrap()), ["0000:17:00.0"]);
        assert_eq!(passed_through(&launch_args(&driver, &b).await.unwrap()), ["0000:18:00.0"], "a device another VM holds is not given twice");
        // Starting again (a restart, a crash retry) keeps the same device.
        assert_eq!(passed_through(&launch_args(&driver, &a).await.unwrap()), ["0000:17:00.0"]);
        // The only free one is bound to its vendor driver: refused with the reason.
        let Err(DriverError::Fatal(why)) = launch_args(&driver, &c).await else { panic!("the third VM got a GPU") };
        assert!(why.contains("bound to vfio-pci") && why.contains("0000:65:00.0 (nvidia)"), "{why}");
        assert!(!driver.dir(c.id).gpus().exists(), "a refused VM holds nothing");
        // A destroyed VM's device goes to the next.
        driver.destroy(&a).await.unwrap();
        assert_eq!(passed_through(&launch_args(&driver, &c).await.unwrap()), ["0000:17:00.0"]);
        // A held device that was rebound to its vendor driver (a host reboot) fails the start, saying which.
        std::fs::remove_file(sys.join("bus/pci/devices/0000:18:00.0/driver")).unwrap();
        let Err(DriverError::Fatal(why)) = launch_args(&driver, &b).await else { panic!("started with a device not bound to vfio-pci") };
        assert!(why.contains("0000:18:00.0"), "{why}");
        // A VM without GPUs gets none, and a model the host lacks is refused.
        assert!(passed_through(&launch_args(&driver, &gpu_vm(0, None)).await.unwrap()).is_empty());
        let Err(DriverError::Fatal(why)) = launch_args(&driver, &gpu_vm(1, Some("A100"))).await else { panic!("an absent model was given") };
        assert!(why.contains("no A100 device"), "{why}");
    }

    #[test]
    fn the_readiness_scan_reads_only_what_was_appended() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        let append = |b: &[u8]| std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap().write_all(b).unwrap();
        append(b"old boot VMPLANE-READY\n");
        let from = std::fs::metadata(&log).unwrap().len();
        let mut scan = Scan::new(READY_LINE, from);
        assert!(!scan.found(&log).unwrap(), "a readiness line before the mark does not count");
        append(b"booting... VMPLANE-RE");
        assert!(!scan.found(&log).unwrap());
        assert_eq!(scan.pos, std::fs::metadata(&log).unwrap().len(), "everything appended was consumed");
        assert!(scan.carry.len() < READY_LINE.len(), "only a needle's length is kept between looks");
        append(b"ADY\n");
        assert!(scan.found(&log).unwrap(), "a line split across two looks is found");
    }

    #[test]
    fn the_readiness_scan_is_bounded_per_look_and_survives_rotation() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        let flood = vec![b'x'; (Scan::PER_LOOK * 2) as usize];
        std::fs::write(&log, &flood).unwrap();
        let mut scan = Scan::new(READY_LINE, 0);
        assert!(!scan.found(&log).unwrap());
        assert_eq!(scan.pos, Scan::PER_LOOK, "one look reads at most PER_LOOK bytes");
        assert!(!scan.found(&log).unwrap());
        assert_eq!(scan.pos, 2 * Scan::PER_LOOK);
        // Rotation truncates the log: reading starts over.
        std::fs::write(&log, b"VMPLANE-READY\n").unwrap();
        assert!(scan.found(&log).unwrap());
    }
}
