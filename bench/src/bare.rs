//! Bare qemu: the exact command line vmplane's worker ran for a guest (read
//! from `/proc/<pid>/cmdline` of a guest booted through vmplane in the same
//! run), started by hand for a new overlay and seed. The only differences:
//! the VM's directory, id and SSH forward port are those of the new guest,
//! and there is no `-daemonize` / `-pidfile`, so the bench owns the process
//! (it dies with the bench).

use crate::Proc;
use crate::guests::{Boot, StandbyRow, agent_ping, load1, make_overlay, make_seed, pid_alive, proc_cpu, wait_ready_line};
use anyhow::{Context, Result, anyhow, bail, ensure};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmplane_domain::VmId;
use vmplane_worker::driver::qemu::layout::VmDir;
use vmplane_worker::driver::qemu::qmp::Qmp;

/// A command line the worker ran, with what is specific to its VM.
#[derive(Debug, Clone)]
pub struct Template {
    /// The arguments after the program, without `-daemonize` and `-pidfile PATH`.
    pub args: Vec<String>,
    pub program: PathBuf,
    /// The VM's directory and id as they appear in `args`.
    pub vm_dir: String,
    pub vm_id: String,
    /// The host port of its SSH forward, if any.
    pub ssh_port: Option<u16>,
}

impl Template {
    /// Read a running guest's command line.
    pub fn capture(pid: i32, vm_dir: &Path, vm_id: &str) -> Result<Self> {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).with_context(|| format!("reading the command line of qemu {pid}"))?;
        Self::parse(&raw, vm_dir, vm_id)
    }

    /// From a NUL-separated command line (as in `/proc/<pid>/cmdline`).
    fn parse(raw: &[u8], vm_dir: &Path, vm_id: &str) -> Result<Self> {
        let mut all: Vec<String> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        ensure!(!all.is_empty(), "empty command line");
        let program = PathBuf::from(all.remove(0));
        let mut args = Vec::new();
        let mut it = all.into_iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-daemonize" => {}
                "-pidfile" => {
                    it.next();
                }
                _ => args.push(a),
            }
        }
        let ssh_port = args
            .iter()
            .find_map(|a| a.split(",hostfwd=tcp:").nth(1).and_then(|f| f.split('-').next()).and_then(|hp| hp.rsplit(':').next()).and_then(|p| p.parse().ok()));
        Ok(Self { args, program, vm_dir: vm_dir.display().to_string(), vm_id: vm_id.to_owned(), ssh_port })
    }

    /// The kernel command line (`-append`).
    pub fn append(&self) -> Option<String> {
        self.args.iter().position(|a| a == "-append").and_then(|i| self.args.get(i + 1)).cloned()
    }

    /// The same command line for another VM directory, id and SSH port.
    fn instantiate(&self, dir: &VmDir, id: &str, ssh: u16, incoming: bool) -> Vec<String> {
        let new_dir = dir.path().display().to_string();
        let mut out: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                let mut a = a.replace(&self.vm_dir, &new_dir).replace(&self.vm_id, id);
                if let Some(old) = self.ssh_port {
                    a = a.replace(&format!(":{old}-:22"), &format!(":{ssh}-:22"));
                }
                a
            })
            .collect();
        if incoming {
            out.extend(["-incoming".into(), "defer".into()]);
        }
        out
    }
}

pub struct Bare {
    root: PathBuf,
    rootfs: PathBuf,
    make_seed: PathBuf,
    disk_gb: u32,
}

/// One guest: its files (laid out like the driver's) and its process.
pub struct BareGuest {
    id: String,
    dir: VmDir,
    ssh: u16,
    proc: Option<Proc>,
}

impl Drop for BareGuest {
    fn drop(&mut self) {
        drop(self.proc.take());
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

impl Bare {
    pub fn new(root: PathBuf, rootfs: PathBuf, make_seed: PathBuf, disk_gb: u32) -> Result<Self> {
        std::fs::create_dir_all(&root)?;
        Ok(Self { root, rootfs, make_seed, disk_gb })
    }

    /// A new VM directory with an overlay and a seed like the driver's.
    async fn prepare(&self, name: &str) -> Result<BareGuest> {
        let id = VmId::new();
        let dir = VmDir::new(&self.root, id);
        std::fs::create_dir_all(dir.path())?;
        let g = BareGuest { id: id.to_string(), dir, ssh: std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(), proc: None };
        make_overlay(&self.rootfs, &g.dir.root_disk(), self.disk_gb).await?;
        make_seed(&self.make_seed, &g.dir.seed(), &g.id, name).await?;
        Ok(g)
    }

    fn spawn(&self, t: &Template, g: &mut BareGuest, incoming: bool) -> Result<i32> {
        let args: Vec<OsString> = t.instantiate(&g.dir, &g.id, g.ssh, incoming).into_iter().map(OsString::from).collect();
        let p = Proc::spawn("qemu (bare)", &t.program, &args, &[], g.dir.path().join("qemu.out"))?;
        let pid = p.child.id() as i32;
        g.proc = Some(p);
        Ok(pid)
    }

    /// (guest, exec -> readiness line, pid, time to make the overlay and seed).
    async fn boot_guest(&self, t: &Template, name: &str, limit: Duration) -> Result<(BareGuest, Duration, i32, Duration)> {
        let t_prep = Instant::now();
        let mut g = self.prepare(name).await?;
        let prep = t_prep.elapsed();
        let log = g.dir.console_log();
        let t0 = Instant::now();
        let pid = self.spawn(t, &mut g, false)?;
        let total = wait_ready_line(&log, t0, t0 + limit, || pid_alive(pid)).await?;
        Ok((g, total, pid, prep))
    }

    pub async fn boot(&self, t: &Template, name: &str, limit: Duration) -> Result<Boot> {
        let load = load1();
        let (mut g, total, pid, prep) = self.boot_guest(t, name, limit).await?;
        let cpu = proc_cpu(pid);
        let started = Instant::now();
        if let Some(mut p) = g.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        let teardown = started.elapsed();
        Ok(Boot { total, launched: None, booted_event: None, ready_event: None, cpu, load, teardown, prep: Some(prep) })
    }

    /// What the driver's `snapshot` does: QMP stop, migrate to a file, quit;
    /// with `max_bandwidth`, raise QEMU's migration bandwidth limit first.
    async fn standby(&self, g: &mut BareGuest, max_bandwidth: Option<u64>) -> Result<(Duration, f64)> {
        let t0 = Instant::now();
        let state = g.dir.snapshot();
        let partial = state.with_extension("partial");
        let mut q = Qmp::connect(&g.dir.qmp()).await?;
        if let Some(bw) = max_bandwidth {
            q.execute("migrate-set-parameters", Some(serde_json::json!({ "max-bandwidth": bw }))).await?;
        }
        q.execute("stop", None).await?;
        q.execute("migrate", Some(serde_json::json!({ "uri": format!("file:{}", partial.display()) }))).await?;
        q.wait_migration(Duration::from_secs(300)).await?;
        std::fs::rename(&partial, &state)?;
        let _ = q.execute("quit", None).await;
        drop(q);
        let mut p = g.proc.take().context("no process")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("qemu did not quit");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = t0.elapsed();
        Ok((took, std::fs::metadata(&state)?.len() as f64 / 1048576.0))
    }

    /// What the driver's `restore` does: start with `-incoming defer`, migrate-incoming, cont.
    async fn restore(&self, t: &Template, g: &mut BareGuest) -> Result<Duration> {
        let t0 = Instant::now();
        let pid = self.spawn(t, g, true)?;
        // Without -daemonize the QMP socket appears a little after exec.
        let mut q = loop {
            match Qmp::connect(&g.dir.qmp()).await {
                Ok(q) => break q,
                Err(e) if t0.elapsed() > Duration::from_secs(10) || !pid_alive(pid) => return Err(anyhow!("QMP: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        q.execute("migrate-incoming", Some(serde_json::json!({ "uri": format!("file:{}", g.dir.snapshot().display()) }))).await?;
        q.wait_migration(Duration::from_secs(300)).await?;
        q.execute("cont", None).await?;
        let took = t0.elapsed();
        let _ = std::fs::remove_file(g.dir.snapshot());
        Ok(took)
    }

    pub async fn standby_cycles(&self, t: &Template, cycles: usize, limit: Duration, max_bandwidth: Option<u64>) -> StandbyRow {
        let mut row = StandbyRow::new(if max_bandwidth.is_some() { "bare qemu, max-bandwidth raised" } else { "bare qemu" });
        let mut g = match self.boot_guest(t, "standby", limit).await {
            Ok((g, ..)) => g,
            Err(e) => {
                row.errors.push(format!("boot: {e:#}"));
                return row;
            }
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        for c in 0..cycles {
            match self.standby(&mut g, max_bandwidth).await {
                Ok((d, mib)) => {
                    row.standby.push(d);
                    row.state_mib.push(mib);
                }
                Err(e) => {
                    row.errors.push(format!("standby {c}: {e:#}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            match self.restore(t, &mut g).await {
                Ok(d) => row.restore.push(d),
                Err(e) => {
                    row.errors.push(format!("restore {c}: {e:#}"));
                    break;
                }
            }
            match agent_ping(&g.dir.agent_socket(), Duration::from_secs(15)).await {
                Ok(_) => row.pings += 1,
                Err(e) => row.errors.push(format!("agent ping after restore {c}: {e:#}")),
            }
            row.log_cycle(c);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        row
    }

    /// CPU an idle guest costs (and its memory), with nobody connected to the
    /// agent socket (as vmplane leaves it) and with a client holding it open.
    pub async fn idle_cost(&self, t: &Template, limit: Duration, window: Duration) -> Result<IdleCost> {
        let (g, boot, pid, _) = self.boot_guest(t, "idle", limit).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let busy = |w: Duration| async move {
            let c0 = proc_cpu(pid).unwrap_or_default();
            let t0 = Instant::now();
            tokio::time::sleep(w).await;
            proc_cpu(pid).unwrap_or_default().saturating_sub(c0).as_secs_f64() / t0.elapsed().as_secs_f64()
        };
        let unconnected = busy(window).await;
        let pss_mib = crate::guests::proc_pss_kib(pid).unwrap_or(0) / 1024;
        let _held = tokio::net::UnixStream::connect(g.dir.agent_socket()).await.context("connecting to the agent socket")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected = busy(window).await;
        drop(g);
        Ok(IdleCost { boot, unconnected, connected, pss_mib })
    }
}

/// What one idle guest costs.
pub struct IdleCost {
    pub boot: Duration,
    /// Share of one core, nobody on the agent socket.
    pub unconnected: f64,
    /// Share of one core, a host client holding the agent socket.
    pub connected: f64,
    /// Its qemu's proportional set size.
    pub pss_mib: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_moves_to_another_vm_and_drops_daemonize() {
        let argv = [
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "vmplane-vm_a,process=vmplane-vm_a",
            "-daemonize",
            "-pidfile",
            "/w/vms/vm_a/qemu.pid",
            "-qmp",
            "unix:/w/vms/vm_a/qmp.sock,server=on,wait=off",
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:41000-:22",
            "-m",
            "256M",
        ];
        let raw: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let t = Template::parse(&raw, Path::new("/w/vms/vm_a"), "vm_a").unwrap();
        assert_eq!(t.program, PathBuf::from("/usr/bin/qemu-system-x86_64"));
        assert_eq!(t.ssh_port, Some(41000));
        let dir = VmDir::new(Path::new("/b"), VmId::new());
        let id = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
        let args = t.instantiate(&dir, &id, 5555, true);
        let d = dir.path().display().to_string();
        assert_eq!(
            args,
            vec![
                "-name".to_owned(),
                format!("vmplane-{id},process=vmplane-{id}"),
                "-qmp".into(),
                format!("unix:{d}/qmp.sock,server=on,wait=off"),
                "-netdev".into(),
                "user,id=net0,hostfwd=tcp:127.0.0.1:5555-:22".into(),
                "-m".into(),
                "256M".into(),
                "-incoming".into(),
                "defer".into(),
            ]
        );
    }
}
