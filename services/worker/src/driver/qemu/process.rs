//! The qemu process of one VM: its command line (a list of arguments, never
//! a shell string), launching it detached so it outlives a worker crash, and
//! finding it again by pid file after one.

use super::accel::Accel;
use super::image::Image;
use super::layout::VmDir;
use std::path::Path;
use std::process::Stdio;
use vmplane_domain::VmId;
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
    pub forward_bind: &'a str,
    /// Start paused, waiting for `migrate-incoming` (restore from a snapshot).
    pub incoming: bool,
    /// Bridge mode: the tap device and the guest's static address.
    pub tap: Option<TapPlan>,
}

/// A bridge-mode VM's network plumbing.
#[derive(Debug, Clone)]
pub struct TapPlan {
    pub device: String,
    /// `ADDR/PREFIX,GATEWAY`, given to the guest as `vmplane.net=`.
    pub address: String,
}

impl Launch<'_> {
    /// The full argument list.
    pub fn args(&self) -> Vec<String> {
        let vm = self.vm;
        let d = self.dir;
        let p = |path: &Path| path.display().to_string();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("vmplane-{},process=vmplane-{}", vm.id, vm.id),
            "-machine".into(),
            "q35".into(),
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
            format!("unix:{},server=on,wait=off", p(&d.qmp())),
            "-chardev".into(),
            format!("socket,id=console,path={},server=on,wait=off,logfile={},logappend=on", p(&d.console_socket()), p(&d.console_log())),
            "-serial".into(),
            "chardev:console".into(),
            "-kernel".into(),
            p(&self.image.kernel),
            "-initrd".into(),
            p(&self.image.initrd),
            "-append".into(),
            cmdline(&self.image.cmdline, vm, self.tap.as_ref()),
            "-drive".into(),
            format!("if=none,id=root,file={},format=qcow2,cache=writeback,discard=unmap", p(&d.root_disk())),
            "-device".into(),
            "virtio-blk-pci,drive=root,serial=root".into(),
            "-drive".into(),
            format!("if=none,id=seed,file={},format=raw,readonly=on", p(&d.seed())),
            "-device".into(),
            "virtio-blk-pci,drive=seed,serial=cidata".into(),
            "-device".into(),
            "virtio-serial-pci,id=vser".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={},server=on,wait=off", p(&d.agent_socket())),
            "-device".into(),
            "virtserialport,chardev=agent,name=org.vmplane.agent".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
        if let Some(t) = &self.tap {
            let mac = self.network.mac.as_deref().unwrap_or("52:54:00:12:34:56");
            a.extend(["-netdev".into(), format!("tap,id=net0,ifname={},script=no,downscript=no", t.device), "-device".into()]);
            a.push(format!("virtio-net-pci,netdev=net0,mac={mac}"));
        } else if vm.spec.network.enabled {
            let mut netdev = "user,id=net0".to_owned();
            if let Some(ssh) = self.network.ssh_port {
                netdev.push_str(&format!(",hostfwd=tcp:{}:{ssh}-:22", self.forward_bind));
            }
            for pf in &self.network.port_forwards {
                let proto = match pf.protocol {
                    vmplane_domain::spec::Protocol::Tcp => "tcp",
                    vmplane_domain::spec::Protocol::Udp => "udp",
                };
                netdev.push_str(&format!(",hostfwd={proto}:{}:{}-:{}", self.forward_bind, pf.host_port, pf.guest_port));
            }
            a.extend(["-netdev".into(), netdev, "-device".into()]);
            let mac = self.network.mac.as_deref().unwrap_or("52:54:00:12:34:56");
            a.push(format!("virtio-net-pci,netdev=net0,mac={mac}"));
        }
        for i in 0..HOTPLUG_PORTS {
            a.extend(["-device".into(), format!("pcie-root-port,id=hp{i},chassis={},slot={}", i + 1, i + 1)]);
        }
        for volume in super::volumes::plugged(d) {
            a.extend(volume.args());
        }
        if self.incoming {
            a.extend(["-incoming".into(), "defer".into()]);
        }
        a
    }

    /// Start qemu; `-daemonize` detaches it (its own session), so it outlives
    /// the worker, and returns once the guest's devices and sockets exist.
    pub async fn spawn(&self) -> Result<(), String> {
        let out = tokio::process::Command::new(self.qemu)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.qemu.display()))?;
        if out.status.success() { Ok(()) } else { Err(format!("qemu failed to start ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())) }
    }
}

/// The kernel command line: the image's, the VM's extra arguments, and
/// onlining of hot-plugged memory when the VM may get some.
fn cmdline(image: &str, vm: &Vm, tap: Option<&TapPlan>) -> String {
    let mut line = image.to_owned();
    if let Some(t) = tap {
        line.push_str(&format!(" vmplane.net={}", t.address));
    }
    if vm.spec.hotplug_memory_mib > 0 {
        line.push_str(" memhp_default_state=online");
    }
    if let Some(extra) = &vm.spec.boot_args {
        line.push(' ');
        line.push_str(extra);
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

    #[test]
    fn memory_with_and_without_hotplug() {
        assert_eq!(memory_arg(512, 0), "512M");
        assert_eq!(memory_arg(512, 1024), "512M,slots=4,maxmem=1536M");
    }
}
