//! libvirt: the daemons (`virtlogd -d`, `libvirtd -d`, started here unless
//! they already run, and stopped again if started here) and a transient
//! domain equivalent to vmplane's qemu command line, driven with `virsh`.

use crate::guests::{Boot, StandbyRow, agent_ping, load1, make_overlay, make_seed, os, pid_alive, proc_cpu, read_pid, run_cmd, wait_ready_line};
use anyhow::{Context, Result, ensure};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmplane_worker::driver::qemu::accel::Accel;
use vmplane_worker::driver::qemu::image::Image;

const URI: &str = "qemu:///system";
const INSTALL: &str = "apt-get install -y libvirt-daemon-system libvirt-clients";

async fn virsh(args: &[OsString], limit: Duration) -> Result<String> {
    let mut all = vec![os("-q"), os("-c"), os(URI)];
    all.extend_from_slice(args);
    run_cmd("virsh", &all, limit).await
}

/// The pid in `pidfile` if that process lives and is called `name`.
fn daemon_pid(pidfile: &str, name: &str) -> Option<i32> {
    let pid = read_pid(Path::new(pidfile))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == name && pid_alive(pid)).then_some(pid)
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// libvirt's daemons for the run.
pub struct Libvirtd {
    pub version: String,
    /// Daemons this run started (name, pid file), stopped on drop, last first.
    started: Vec<(&'static str, &'static str)>,
}

impl Libvirtd {
    pub async fn start() -> Result<Self> {
        for b in ["virsh", "libvirtd", "virtlogd"] {
            ensure!(which(b).is_some(), "{b} not found: install libvirt with `{INSTALL}` (or pass --skip-libvirt)");
        }
        let mut me = Self { version: String::new(), started: Vec::new() };
        for (name, pidfile) in [("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")] {
            if daemon_pid(pidfile, name).is_some() {
                eprintln!("vmplane-bench: {name} already runs; using it and leaving it running");
                continue;
            }
            eprintln!("vmplane-bench: starting `{name} -d`");
            run_cmd(which(name).expect("checked"), &[os("-d")], Duration::from_secs(30)).await?;
            me.started.push((name, pidfile));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match virsh(&[os("version")], Duration::from_secs(10)).await {
                Ok(v) => {
                    let lib = v.lines().find(|l| l.contains("Using library")).unwrap_or_default().trim().to_owned();
                    let hv = v.lines().find(|l| l.contains("Running hypervisor")).unwrap_or_default().trim().to_owned();
                    me.version = format!("{lib} ({hv})");
                    break;
                }
                Err(e) if Instant::now() > deadline => return Err(e.context("libvirtd did not answer within 30 s")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok(me)
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // Any domain of this run still there.
        if let Ok(out) = std::process::Command::new("virsh").args(["-q", "-c", URI, "list", "--name"]).output() {
            for name in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|n| n.starts_with(&prefix())) {
                let _ = std::process::Command::new("virsh").args(["-q", "-c", URI, "destroy", name]).output();
            }
        }
        for (name, pidfile) in self.started.iter().rev() {
            let Some(pid) = daemon_pid(pidfile, name) else { continue };
            // SAFETY: kill(2) on a daemon this run started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && std::fs::metadata(format!("/proc/{pid}")).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if pid_alive(pid) {
                eprintln!("vmplane-bench: {name} ignored SIGTERM; killing it");
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            eprintln!("vmplane-bench: stopped {name}");
        }
    }
}

/// Domain names of this run start with this.
fn prefix() -> String {
    format!("vmplane-bench-{}-", std::process::id())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

pub struct Libvirt {
    qemu: PathBuf,
    accel: Accel,
    image: Image,
    root: PathBuf,
    make_seed: PathBuf,
    memory_mib: u64,
    disk_gb: u32,
    next: AtomicUsize,
}

/// One transient domain and its files; destroyed (if running) and removed on drop.
pub struct LvGuest {
    name: String,
    dir: PathBuf,
    running: bool,
}

impl LvGuest {
    fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    fn pid(&self) -> Option<i32> {
        read_pid(&Path::new("/run/libvirt/qemu").join(format!("{}.pid", self.name)))
    }
}

impl Drop for LvGuest {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new("virsh").args(["-q", "-c", URI, "destroy", &self.name]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Libvirt {
    pub fn new(qemu: PathBuf, accel: Accel, image: Image, root: PathBuf, make_seed: PathBuf, memory_mib: u64, disk_gb: u32) -> Result<Self> {
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { qemu, accel, image, root, make_seed, memory_mib, disk_gb, next: AtomicUsize::new(0) })
    }

    async fn prepare(&self, name: &str, cmdline: &str) -> Result<LvGuest> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let g = LvGuest { name: format!("{}{name}-{n}", prefix()), dir: self.root.join(format!("{name}-{n}")), running: false };
        std::fs::create_dir_all(&g.dir)?;
        // qemu runs as libvirt-qemu and creates its sockets here.
        std::fs::set_permissions(&g.dir, std::fs::Permissions::from_mode(0o777))?;
        make_overlay(&self.image.rootfs, &g.dir.join("root.qcow2"), self.disk_gb).await?;
        make_seed(&self.make_seed, &g.dir.join("seed.img"), &g.name, name).await?;
        std::fs::write(g.dir.join("domain.xml"), self.xml(&g, n, cmdline))?;
        Ok(g)
    }

    /// A domain with what vmplane's command line has: q35, the same CPU model
    /// and accelerator, kernel/initrd/cmdline, the two virtio disks with their
    /// serials, the serial console on a unix socket with a log file, the agent's
    /// virtio-serial port, virtio-rng, user networking with virtio-net, 8 PCIe
    /// root ports; devices sit on pcie.0 like qemu places them. Not the same:
    /// libvirt's user networking has no host port forward for SSH (9.0 offers
    /// that only with the passt backend), and libvirt adds its own options
    /// (`-S` then `cont`, `-sandbox`, a memory backend object, `-no-shutdown`...).
    fn xml(&self, g: &LvGuest, n: usize, cmdline: &str) -> String {
        let e = |p: &Path| xml_escape(&p.display().to_string());
        let d = &g.dir;
        let addr = |slot: u32| format!("<address type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/>");
        let (dtype, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "<cpu mode='host-passthrough' check='none'/>"),
            Accel::Tcg => ("qemu", "<cpu mode='maximum' check='none'/>"),
        };
        let ports: String = (1..=8u32)
            .map(|i| {
                format!(
                    "<controller type='pci' index='{i}' model='pcie-root-port'><target chassis='{i}' port='0x{:x}'/>{}</controller>\n    ",
                    i + 7,
                    addr(i + 5)
                )
            })
            .collect();
        format!(
            "<domain type='{dtype}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='writeback' discard='unmap'/>
      <source file='{root}'/>
      <target dev='vda' bus='virtio'/>
      <serial>root</serial>
      {a1}
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{seed}'/>
      <target dev='vdb' bus='virtio'/>
      <serial>cidata</serial>
      <readonly/>
      {a2}
    </disk>
    <controller type='usb' model='none'/>
    <controller type='virtio-serial' index='0'>{a3}</controller>
    {ports}<serial type='unix'>
      <source mode='bind' path='{console}'/>
      <log file='{log}' append='on'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='{agent}'/>
      <target type='virtio' name='org.vmplane.agent'/>
    </channel>
    <interface type='user'>
      <mac address='52:54:00:be:{hi:02x}:{lo:02x}'/>
      <model type='virtio'/>
      {a5}
    </interface>
    <rng model='virtio'><backend model='builtin'/>{a4}</rng>
    <memballoon model='none'/>
  </devices>
</domain>
",
            name = xml_escape(&g.name),
            mem = self.memory_mib,
            kernel = e(&self.image.kernel),
            initrd = e(&self.image.initrd),
            cmdline = xml_escape(cmdline),
            qemu = e(&self.qemu),
            root = e(&d.join("root.qcow2")),
            seed = e(&d.join("seed.img")),
            console = e(&d.join("console.sock")),
            log = e(&g.console_log()),
            agent = e(&d.join("agent.sock")),
            hi = (n >> 8) & 0xff,
            lo = n & 0xff,
            a1 = addr(1),
            a2 = addr(2),
            a3 = addr(3),
            a4 = addr(4),
            a5 = addr(5),
        )
    }

    /// `virsh create`, then the readiness line: (guest, total, `virsh create` returned after, pid, prep time).
    async fn boot_guest(&self, name: &str, cmdline: &str, limit: Duration) -> Result<(LvGuest, Duration, Duration, i32, Duration)> {
        let t_prep = Instant::now();
        let mut g = self.prepare(name, cmdline).await?;
        let prep = t_prep.elapsed();
        let t0 = Instant::now();
        virsh(&[os("create"), g.dir.join("domain.xml").into()], limit).await?;
        let created = t0.elapsed();
        g.running = true;
        let pid = g.pid().context("libvirt wrote no pid file for the domain")?;
        let total = wait_ready_line(&g.console_log(), t0, t0 + limit, || pid_alive(pid)).await?;
        Ok((g, total, created, pid, prep))
    }

    pub async fn boot(&self, name: &str, cmdline: &str, limit: Duration) -> Result<Boot> {
        let load = load1();
        let (mut g, total, created, pid, prep) = self.boot_guest(name, cmdline, limit).await?;
        let cpu = proc_cpu(pid);
        let t = Instant::now();
        virsh(&[os("destroy"), os(&g.name)], Duration::from_secs(60)).await?;
        g.running = false;
        let teardown = t.elapsed();
        Ok(Boot { total, launched: Some(created), booted_event: None, ready_event: None, cpu, load, teardown, prep: Some(prep) })
    }

    pub async fn standby_cycles(&self, cmdline: &str, cycles: usize, limit: Duration) -> StandbyRow {
        let mut row = StandbyRow::new("libvirt");
        let mut g = match self.boot_guest("standby", cmdline, limit).await {
            Ok((g, ..)) => g,
            Err(e) => {
                row.errors.push(format!("boot: {e:#}"));
                return row;
            }
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let state = g.dir.join("state.save");
        for c in 0..cycles {
            let t = Instant::now();
            match virsh(&[os("save"), os(&g.name), state.clone().into()], Duration::from_secs(300)).await {
                Ok(_) => {
                    row.standby.push(t.elapsed());
                    g.running = false;
                    row.state_mib.push(std::fs::metadata(&state).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0));
                }
                Err(e) => {
                    row.errors.push(format!("virsh save {c}: {e:#}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = Instant::now();
            match virsh(&[os("restore"), state.clone().into()], Duration::from_secs(300)).await {
                Ok(_) => {
                    row.restore.push(t.elapsed());
                    g.running = true;
                }
                Err(e) => {
                    row.errors.push(format!("virsh restore {c}: {e:#}"));
                    break;
                }
            }
            let _ = std::fs::remove_file(&state);
            match agent_ping(&g.dir.join("agent.sock"), Duration::from_secs(15)).await {
                Ok(_) => row.pings += 1,
                Err(e) => row.errors.push(format!("agent ping after restore {c}: {e:#}")),
            }
            row.log_cycle(c);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if g.running {
            if let Err(e) = virsh(&[os("destroy"), os(&g.name)], Duration::from_secs(60)).await {
                row.errors.push(format!("virsh destroy: {e:#}"));
            } else {
                g.running = false;
            }
        }
        row
    }
}
