//! The qemu process of one VM: its command line (a list of arguments, never
//! a shell string; values inside QEMU option lists have their commas
//! doubled), launching it detached so it outlives a worker crash, and
//! finding it again by pid file after one.

use super::accel::Accel;
use super::gpu::Bdf;
use super::image::Image;
use super::layout::VmDir;
use super::passt::{self, UserNet};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use vmplane_domain::VmId;
use vmplane_domain::spec::Protocol;
use vmplane_domain::vm::{NetworkRuntime, Vm};

/// Hot-plug slots for volumes (q35 needs a PCIe root port per hot-plugged device).
pub const HOTPLUG_PORTS: usize = 8;

/// Everything a command line is built from.
pub struct Launch<'a> {
    pub qemu: &'a Path,
    pub accel: Accel,
    pub vm: &'a Vm,
    pub image: &'a Image,
    pub dir: &'a VmDir,
    pub network: &'a NetworkRuntime,
    pub forward_bind: IpAddr,
    /// How user-mode networking is done on this host.
    pub user_net: &'a UserNet,
    /// How the guest starts: booting, or paused for a state to be loaded.
    pub start: Start,
    /// Bridge mode: the tap device and the guest's static address.
    pub tap: Option<TapPlan>,
    /// GPUs passed through by VFIO, each behind its own PCIe root port.
    pub gpus: Vec<Bdf>,
}

/// How a qemu process starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Boot the kernel.
    Boot,
    /// Wait paused for `migrate-incoming` of a full saved state (standby restore).
    Incoming,
    /// Snapshot templating: wait for a full saved state, loaded into guest
    /// RAM that is the shared file `memory`, so that saving again with
    /// `x-ignore-shared` writes the device state alone. Nothing runs the
    /// guest, so its NIC has no backend, except for a source on a tap: the
    /// NIC then offers the offloads a tap's vnet header allows, which its
    /// guest may have taken (a state that took them loads only where they
    /// are offered). That tap, `tap`, is qemu's own, on no bridge and never
    /// up, and goes when qemu does.
    Template { memory: std::path::PathBuf, tap: Option<String> },
    /// A clone: guest RAM maps the snapshot's `memory` privately (pages
    /// shared with the other clones until written), waiting for the device state.
    Clone { memory: std::path::PathBuf },
}

impl Start {
    /// The file guest RAM lives in and whether writes go back to it.
    fn memory_file(&self) -> Option<(&Path, bool)> {
        match self {
            Self::Template { memory, .. } => Some((memory, true)),
            Self::Clone { memory } => Some((memory, false)),
            Self::Boot | Self::Incoming => None,
        }
    }
}

/// The id of guest RAM: what QEMU names the RAM block of `-m` alone, so
/// that a state saved by a VM started either way loads into the other.
const RAM_ID: &str = "pc.ram";

/// A bridge-mode VM's network plumbing.
#[derive(Debug, Clone)]
pub struct TapPlan {
    pub device: String,
    /// `ADDR/PREFIX,GATEWAY`, given to the guest as `vmplane.net=`.
    pub address: String,
}

/// A value inside a QEMU option list (`key=value,...`): a comma is doubled,
/// so it cannot end the value and start another option.
fn opt(value: impl std::fmt::Display) -> String {
    value.to_string().replace(',', ",,")
}

impl Launch<'_> {
    /// Whether the guest's NIC is served by a passt process.
    fn uses_passt(&self) -> bool {
        !matches!(self.start, Start::Template { .. }) && self.tap.is_none() && self.vm.spec.network.enabled && matches!(self.user_net, UserNet::Passt { .. })
    }

    /// A template's root drive is QEMU's null block driver of the disk's
    /// size: nothing runs its guest, so the disk is never read, and the
    /// qemu can start before the snapshot's copy of the disk exists.
    fn root_drive(&self) -> String {
        match self.start {
            Start::Template { .. } => format!("if=none,id=root,driver=null-co,size={}G", self.vm.spec.disk_gb.max(1)),
            _ => format!("if=none,id=root,file={},format=qcow2,cache=writeback,discard=unmap", opt(self.root_disk())),
        }
    }

    /// The root disk: the one the VM's disk step prepared (a root volume's
    /// file, or the VM's own overlay over its image).
    fn root_disk(&self) -> String {
        self.vm.root_disk.as_ref().map_or_else(|| self.dir.root_disk().display().to_string(), |d| d.location.clone())
    }

    /// The full argument list; `passt_fd` is qemu's end of the socket pair
    /// with passt (used only when passt serves the guest).
    pub fn args(&self, passt_fd: RawFd) -> Vec<String> {
        let vm = self.vm;
        let d = self.dir;
        let p = |path: &Path| path.display().to_string();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("vmplane-{},process=vmplane-{}", vm.id, vm.id),
            "-machine".into(),
            match self.start.memory_file() {
                Some(_) => format!("q35,memory-backend={RAM_ID}"),
                None => "q35".into(),
            },
            "-accel".into(),
            self.accel.qemu_name().into(),
            "-cpu".into(),
            self.accel.cpu_model().into(),
            "-smp".into(),
            vm.spec.vcpus.to_string(),
            "-m".into(),
            memory_arg(vm.spec.memory_mib, vm.spec.hotplug_memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-daemonize".into(),
            "-pidfile".into(),
            p(&d.pid()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt(p(&d.qmp()))),
            "-chardev".into(),
            format!("socket,id=console,path={},server=on,wait=off,logfile={},logappend=on", opt(p(&d.console_socket())), opt(p(&d.console_log()))),
            "-serial".into(),
            "chardev:console".into(),
            "-kernel".into(),
            p(&self.image.kernel),
            "-initrd".into(),
            p(&self.image.initrd),
            "-append".into(),
            cmdline(&self.image.cmdline, vm, self.tap.as_ref()),
            "-drive".into(),
            self.root_drive(),
            "-device".into(),
            "virtio-blk-pci,drive=root,serial=root".into(),
            "-drive".into(),
            format!("if=none,id=seed,file={},format=raw,readonly=on", opt(p(&d.seed()))),
            "-device".into(),
            "virtio-blk-pci,drive=seed,serial=cidata".into(),
            "-device".into(),
            "virtio-serial-pci,id=vser".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={},server=on,wait=off", opt(p(&d.agent_socket()))),
            "-device".into(),
            "virtserialport,chardev=agent,name=org.vmplane.agent".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
            // A new generation id on every start: a guest resumed as a clone
            // learns it is a copy and reseeds its random number generator.
            "-device".into(),
            "vmgenid,guid=auto".into(),
        ];
        if let Some((memory, share)) = self.start.memory_file() {
            let share = if share { "on" } else { "off" };
            a.extend(["-object".into(), format!("memory-backend-file,id={RAM_ID},size={}M,mem-path={},share={share}", vm.spec.memory_mib, opt(p(memory)))]);
        }
        let mac = opt(self.network.mac.as_deref().unwrap_or("52:54:00:12:34:56"));
        let netdev = if let Start::Template { tap, .. } = &self.start {
            vm.spec.network.enabled.then(|| match tap {
                Some(tap) => format!("tap,id=net0,ifname={},script=no,downscript=no", opt(tap)),
                None => "hubport,id=net0,hubid=0".to_owned(),
            })
        } else if let Some(t) = &self.tap {
            Some(format!("tap,id=net0,ifname={},script=no,downscript=no", opt(&t.device)))
        } else if self.uses_passt() {
            Some(format!("stream,id=net0,server=off,addr.type=fd,addr.str={passt_fd}"))
        } else if vm.spec.network.enabled {
            // passt is missing: slirp, which may not open anything for the guest.
            let mut netdev = "user,id=net0,restrict=on".to_owned();
            let forwards = self
                .network
                .ssh_port
                .map(|p| (Protocol::Tcp, p, 22))
                .into_iter()
                .chain(self.network.port_forwards.iter().map(|f| (f.protocol, f.host_port, f.guest_port)));
            for (protocol, host, guest) in forwards {
                let proto = match protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                netdev.push_str(&format!(",hostfwd={proto}:{}:{host}-:{guest}", opt(self.forward_bind)));
            }
            Some(netdev)
        } else {
            None
        };
        if let Some(netdev) = netdev {
            a.extend(["-netdev".into(), netdev, "-device".into(), format!("virtio-net-pci,netdev=net0,mac={mac}")]);
        }
        for i in 0..HOTPLUG_PORTS {
            a.extend(["-device".into(), format!("pcie-root-port,id=hp{i},chassis={},slot={}", i + 1, i + 1)]);
        }
        // A GPU driver expects its device on a PCIe link, not on the root complex.
        for (i, bdf) in self.gpus.iter().enumerate() {
            let chassis = HOTPLUG_PORTS + 1 + i;
            a.extend([
                "-device".into(),
                format!("pcie-root-port,id=gpuport{i},chassis={chassis},slot={chassis}"),
                "-device".into(),
                format!("vfio-pci,host={},id=gpu{i},bus=gpuport{i}", opt(bdf)),
            ]);
        }
        for volume in super::volumes::plugged(d) {
            a.extend(volume.args());
        }
        if self.start != Start::Boot {
            a.extend(["-incoming".into(), "defer".into()]);
        }
        a
    }

    /// Start qemu (after its passt, if passt serves the guest); `-daemonize`
    /// detaches it (its own session), so it outlives the worker, and returns
    /// once the guest's devices and sockets exist.
    pub async fn spawn(&self) -> Result<(), String> {
        let passt_end = match self.user_net {
            UserNet::Passt { binary, runas, filtered } if self.uses_passt() => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("socket pair for passt: {e}"))?;
                passt::start(binary, *runas, *filtered, self.dir, self.forward_bind, self.network, theirs.into()).await?;
                Some(OwnedFd::from(ours))
            }
            _ => None,
        };
        // qemu appends to an existing log, keeping its mode.
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(self.dir.console_log()).map_err(|e| format!("console log: {e}"))?;
        let fd = passt_end.as_ref().map(AsRawFd::as_raw_fd);
        let mut cmd = tokio::process::Command::new(self.qemu);
        cmd.args(self.args(fd.unwrap_or(-1))).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        private_child(&mut cmd, fd);
        let out = cmd.output().await.map_err(|e| format!("cannot run {}: {e}", self.qemu.display()));
        // Only qemu holds passt's peer now: passt exits when qemu does.
        drop(passt_end);
        let out = match out {
            Ok(out) if out.status.success() => {
                private_files(self.dir);
                return Ok(());
            }
            Ok(out) => format!("qemu failed to start ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            Err(e) => e,
        };
        if let UserNet::Passt { runas, .. } = self.user_net {
            passt::stop(self.dir, *runas).await;
        }
        Err(out)
    }
}

/// qemu's daemon sets its own umask (027): make what it created root's alone.
/// A failure is only logged: the guest runs, and the VM directory (0700)
/// keeps everyone else out anyway.
fn private_files(dir: &VmDir) {
    for path in [dir.qmp(), dir.console_socket(), dir.agent_socket(), dir.console_log(), dir.pid()] {
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot make a qemu file private");
        }
    }
}

/// Make a child vmplane starts (qemu, passt) create private files whatever
/// the worker's umask, and inherit the descriptor `keep` (all others are
/// close-on-exec).
pub fn private_child(cmd: &mut tokio::process::Command, keep: Option<RawFd>) {
    // SAFETY: runs in the child between fork and exec; umask(2) and fcntl(2)
    // are async-signal-safe and nothing here allocates.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(0o077);
            if let Some(fd) = keep
                && libc::fcntl(fd, libc::F_SETFD, 0) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The kernel command line: the image's, the VM's extra arguments, then
/// vmplane's own (last, so they win; `boot_args` may not name `vmplane.*`):
/// onlining of hot-plugged memory and, in bridge mode, the static address.
fn cmdline(image: &str, vm: &Vm, tap: Option<&TapPlan>) -> String {
    let mut line = image.to_owned();
    if let Some(extra) = &vm.spec.boot_args {
        line.push(' ');
        line.push_str(extra);
    }
    if vm.spec.hotplug_memory_mib > 0 {
        line.push_str(" memhp_default_state=online");
    }
    if let Some(t) = tap {
        line.push_str(&format!(" vmplane.net={}", t.address));
    }
    line
}

/// `-m` value; with hot-pluggable memory, slots and a maximum make room for DIMMs.
fn memory_arg(base: u64, hotplug: u64) -> String {
    if hotplug == 0 { format!("{base}M") } else { format!("{base}M,slots=4,maxmem={}M", base + hotplug) }
}

/// The pid of the VM's qemu if it is alive and really is that VM's qemu
/// (guards against pid reuse after a host reboot).
pub fn running_pid(dir: &VmDir, vm: &Vm) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.pid()).ok()?.trim().parse().ok()?;
    is_our_qemu(pid, vm.id).then_some(pid)
}

/// Whether `pid` is a live (not zombie) qemu started for `vm`.
pub fn is_our_qemu(pid: i32, vm: VmId) -> bool {
    let needle = format!("vmplane-{vm}");
    let ours =
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| std::str::from_utf8(a).is_ok_and(|s| s.contains(&needle))));
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')));
    ours && !zombie
}

/// Send a signal to a pid.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use time::OffsetDateTime;
    use vmplane_domain::spec::{PortForward, VmSpec};
    use vmplane_domain::vm::{ResolvedPortForward, VmEvent, evolve};
    use vmplane_domain::{HostId, OrgId, ProjectId};

    #[test]
    fn memory_with_and_without_hotplug() {
        assert_eq!(memory_arg(512, 0), "512M");
        assert_eq!(memory_arg(512, 1024), "512M,slots=4,maxmem=1536M");
    }

    fn vm(spec: VmSpec) -> Vm {
        let created = VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: Box::new(spec), host: HostId::new() };
        evolve(None, VmId::new(), None, OffsetDateTime::now_utc(), &created).unwrap()
    }

    fn image() -> Image {
        Image {
            name: "i".into(),
            kernel: "/i/vmlinuz".into(),
            initrd: "/i/initrd.img".into(),
            rootfs: "/i/rootfs.ext4".into(),
            cmdline: "console=ttyS0".into(),
        }
    }

    fn network() -> NetworkRuntime {
        NetworkRuntime {
            ip: Some("10.0.2.15".into()),
            mac: Some("52:54:00:aa:bb:cc".into()),
            ssh_port: Some(20001),
            port_forwards: vec![ResolvedPortForward { guest_port: 53, host_port: 20002, protocol: Protocol::Udp }],
        }
    }

    /// The values of every `-flag` in `args`.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    fn launch_args(vm: &Vm, dir: &VmDir, user_net: &UserNet, tap: Option<TapPlan>) -> Vec<String> {
        launch_args_with_gpus(vm, dir, user_net, tap, Vec::new())
    }

    fn launch_args_with_gpus(vm: &Vm, dir: &VmDir, user_net: &UserNet, tap: Option<TapPlan>, gpus: Vec<Bdf>) -> Vec<String> {
        launch_args_starting(vm, dir, user_net, tap, gpus, Start::Boot)
    }

    fn launch_args_starting(vm: &Vm, dir: &VmDir, user_net: &UserNet, tap: Option<TapPlan>, gpus: Vec<Bdf>, start: Start) -> Vec<String> {
        let (image, network) = (image(), network());
        let l = Launch {
            qemu: Path::new("qemu"),
            accel: Accel::Tcg,
            vm,
            image: &image,
            dir,
            network: &network,
            forward_bind: "127.0.0.1".parse().unwrap(),
            user_net,
            start,
            tap,
            gpus,
        };
        l.args(9)
    }

    #[test]
    fn templates_and_clones_keep_guest_ram_in_the_snapshot_file() {
        let passt = UserNet::Passt { binary: "passt".into(), runas: None, filtered: true };
        let (v, dir) = (vm(VmSpec::named("a")), VmDir::new(Path::new("/d"), VmId::new()));
        let boot = launch_args(&v, &dir, &passt, None);
        assert_eq!(values(&boot, "-machine"), ["q35"]);
        assert!(values(&boot, "-object").is_empty() && values(&boot, "-incoming").is_empty(), "{boot:?}");
        assert!(values(&boot, "-device").contains(&"vmgenid,guid=auto"), "{boot:?}");

        let memory = PathBuf::from("/s/snap,x/memory");
        let template = launch_args_starting(&v, &dir, &passt, None, Vec::new(), Start::Template { memory: memory.clone(), tap: None });
        assert_eq!(values(&template, "-machine"), ["q35,memory-backend=pc.ram"]);
        assert_eq!(values(&template, "-object"), ["memory-backend-file,id=pc.ram,size=512M,mem-path=/s/snap,,x/memory,share=on"]);
        assert_eq!(values(&template, "-netdev"), ["hubport,id=net0,hubid=0"], "a template's NIC has no backend, never passt");
        assert_eq!(values(&template, "-incoming"), ["defer"]);
        let root = values(&template, "-drive").into_iter().find(|d| d.starts_with("if=none,id=root,")).map(str::to_owned);
        assert_eq!(root.as_deref(), Some("if=none,id=root,driver=null-co,size=10G"), "a template never reads a disk");
        let tapped = launch_args_starting(&v, &dir, &passt, None, Vec::new(), Start::Template { memory: memory.clone(), tap: Some("vs1".into()) });
        assert_eq!(values(&tapped, "-netdev"), ["tap,id=net0,ifname=vs1,script=no,downscript=no"], "a tap source's template offers a tap's offloads");

        let clone = launch_args_starting(&v, &dir, &passt, None, Vec::new(), Start::Clone { memory });
        assert_eq!(values(&clone, "-object"), ["memory-backend-file,id=pc.ram,size=512M,mem-path=/s/snap,,x/memory,share=off"]);
        assert_eq!(values(&clone, "-netdev"), ["stream,id=net0,server=off,addr.type=fd,addr.str=9"]);
        assert_eq!(values(&clone, "-incoming"), ["defer"]);
    }

    #[test]
    fn passt_serves_the_guest_over_the_given_descriptor() {
        let passt = UserNet::Passt { binary: "passt".into(), runas: None, filtered: true };
        let a = launch_args(&vm(VmSpec::named("a")), &VmDir::new(Path::new("/d"), VmId::new()), &passt, None);
        assert_eq!(values(&a, "-netdev"), ["stream,id=net0,server=off,addr.type=fd,addr.str=9"]);
        assert_eq!(values(&a, "-device").iter().filter(|d| d.starts_with("virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc")).count(), 1);
    }

    #[test]
    fn without_passt_slirp_is_restricted_and_forwards_bind_the_operator_address() {
        let a = launch_args(&vm(VmSpec::named("a")), &VmDir::new(Path::new("/d"), VmId::new()), &UserNet::Restricted, None);
        assert_eq!(values(&a, "-netdev"), ["user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:20001-:22,hostfwd=udp:127.0.0.1:20002-:53"]);
        // No network: no NIC at all.
        let mut spec = VmSpec::named("a");
        spec.network.enabled = false;
        spec.port_forwards = vec![PortForward { guest_port: 80, host_port: None, protocol: Protocol::Tcp }];
        let a = launch_args(&vm(spec), &VmDir::new(Path::new("/d"), VmId::new()), &UserNet::Restricted, None);
        assert!(values(&a, "-netdev").is_empty(), "{a:?}");
    }

    #[test]
    fn request_values_cannot_add_qemu_options() {
        let mut spec = VmSpec::named("a");
        spec.name = "x,hostfwd=tcp::2222-:22".into();
        spec.boot_args = Some("quiet,hostfwd=tcp::1-:22 init=/bin/sh -- x".into());
        let hostile = vm(spec);
        // Even a data directory with commas stays one value per option.
        let dir = VmDir::new(&PathBuf::from("/srv/a,readonly=off"), hostile.id);
        for net in [UserNet::Restricted, UserNet::Passt { binary: "passt".into(), runas: None, filtered: true }] {
            let a = launch_args(&hostile, &dir, &net, None);
            assert!(!a.iter().any(|v| v.contains("x,hostfwd")), "the VM name reached the command line: {a:?}");
            // boot_args travel as the value of -append only, never inside an option list.
            let append = values(&a, "-append");
            assert_eq!(append.len(), 1);
            assert!(append[0].starts_with("console=ttyS0 quiet,hostfwd="), "{append:?}");
            for (i, v) in a.iter().enumerate() {
                if i > 0 && a[i - 1] == "-append" {
                    continue;
                }
                assert!(!v.contains("hostfwd=tcp::"), "{v}");
            }
            let drives = values(&a, "-drive");
            assert!(drives.iter().any(|d| d.starts_with("if=none,id=root,file=/srv/a,,readonly=off/vms/")), "{drives:?}");
            assert_eq!(values(&a, "-netdev").len(), 1, "{a:?}");
        }
    }

    #[test]
    fn the_root_disk_is_the_one_the_disk_step_prepared() {
        let mut v = vm(VmSpec::named("a"));
        let dir = VmDir::new(Path::new("/d"), v.id);
        let root = |a: &[String]| values(a, "-drive").into_iter().find(|d| d.starts_with("if=none,id=root,")).map(str::to_owned);
        let own = root(&launch_args(&v, &dir, &UserNet::Restricted, None)).unwrap();
        assert!(own.starts_with(&format!("if=none,id=root,file=/d/vms/{}/root.qcow2,", v.id)), "{own}");
        // Booted from a root volume: its file, whatever its name holds.
        v.root_disk = Some(vmplane_domain::vm::DiskInfo { location: "/d/volumes/vol_a,b.qcow2".into(), size_gb: 12 });
        let volume = root(&launch_args(&v, &dir, &UserNet::Restricted, None)).unwrap();
        assert!(volume.starts_with("if=none,id=root,file=/d/volumes/vol_a,,b.qcow2,format=qcow2,"), "{volume}");
    }

    #[test]
    fn gpus_are_passed_through_by_vfio_each_behind_its_own_root_port() {
        let v = vm(VmSpec::named("a"));
        let dir = VmDir::new(Path::new("/d"), v.id);
        let none = launch_args(&v, &dir, &UserNet::Restricted, None);
        assert!(!none.iter().any(|a| a.contains("vfio")), "{none:?}");
        let gpus = vec!["0000:17:00.0".parse().unwrap(), "0000:b3:00.0".parse().unwrap()];
        let a = launch_args_with_gpus(&v, &dir, &UserNet::Restricted, None, gpus);
        let devices = values(&a, "-device");
        let gpu_devices: Vec<&str> = devices.iter().copied().filter(|d| d.contains("gpu")).collect();
        assert_eq!(
            gpu_devices,
            [
                "pcie-root-port,id=gpuport0,chassis=9,slot=9",
                "vfio-pci,host=0000:17:00.0,id=gpu0,bus=gpuport0",
                "pcie-root-port,id=gpuport1,chassis=10,slot=10",
                "vfio-pci,host=0000:b3:00.0,id=gpu1,bus=gpuport1",
            ]
        );
        // Every root port has its own chassis/slot pair, the hot-plug ports' included.
        let ports: Vec<&str> = devices.iter().filter_map(|d| d.strip_prefix("pcie-root-port,")).map(|d| d.split_once(',').unwrap().1).collect();
        assert_eq!(ports.len(), HOTPLUG_PORTS + 2);
        assert_eq!(ports.iter().collect::<std::collections::BTreeSet<_>>().len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn vmplane_parameters_come_last_on_the_kernel_line() {
        let mut spec = VmSpec::named("a");
        spec.boot_args = Some("loglevel=7".into());
        spec.hotplug_memory_mib = 256;
        spec.network.mode = vmplane_domain::spec::NetworkMode::Bridge;
        let v = vm(spec);
        let tap = TapPlan { device: "vt1".into(), address: "172.30.0.5/24,172.30.0.1".into() };
        let a = launch_args(&v, &VmDir::new(Path::new("/d"), v.id), &UserNet::Restricted, Some(tap));
        assert_eq!(values(&a, "-append"), ["console=ttyS0 loglevel=7 memhp_default_state=online vmplane.net=172.30.0.5/24,172.30.0.1"]);
        assert_eq!(values(&a, "-netdev"), ["tap,id=net0,ifname=vt1,script=no,downscript=no"]);
    }
}
