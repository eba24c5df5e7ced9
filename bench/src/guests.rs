//! `vmplane-bench guests`: real guests, in one run on one machine.
//!
//! * **boot**: `POST /v1/vms` until the operation is `succeeded` (the worker
//!   appends `ready` when the guest prints `VMPLANE-READY` on its serial
//!   console, then `operation_finished`; the operation long-poll answers once
//!   the gateway has projected that), next to the same kernel, initrd, root
//!   overlay and seed booted by (a) bare `qemu-system-x86_64` with the very
//!   command line the worker ran (read from `/proc/<pid>/cmdline` of a vmplane
//!   guest; see `bare.rs`) and (b) libvirt (`virsh create` of an equivalent
//!   domain), timed from process start until the readiness line is in the
//!   serial log. Boots are interleaved round-robin (rotating which system goes
//!   first) so that a change in the machine's load hits all three alike, and
//!   every guest is torn down before the next boot.
//! * **standby**: vmplane `POST /v1/vms/{id}/standby` and `/restore` until
//!   the operation succeeded, next to the same QMP sequence by hand on bare
//!   qemu and `virsh save` / `virsh restore`; after every restore the guest
//!   agent must answer `ping`.
//! * **capacity**: guests of 128 MiB started one at a time through vmplane
//!   until the API refuses (409), a boot fails, or a count or time bound is
//!   reached; then all are deleted.
//!
//! It starts nats-server, `vmplane gateway`, `vmplane worker --driver qemu`
//! and, unless they already run, `virtlogd -d` and `libvirtd -d`, and stops
//! all of them (and every guest) at the end, on error and on Ctrl-C.

#[path = "clones.rs"]
mod clones;

use crate::bare::{Bare, Template};
use crate::libvirt::{Libvirt, Libvirtd};
use crate::{Api, ClusterSpec, Stats, find_vmplane, start_cluster, wait_vmplane};
use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::ValueEnum;
use serde_json::{Value, json};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vmplane_worker::driver::qemu::READY_LINE;
use vmplane_worker::driver::qemu::accel::{self, Accel, AccelChoice};
use vmplane_worker::driver::qemu::image;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Boot,
    Standby,
    /// What one idle guest costs (CPU with and without a client on the agent socket, memory).
    Idle,
    Capacity,
    /// VMs created from a snapshot against cold creates, a fork, and clones' shared memory.
    Clones,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// What vmplane's worker picks (KVM if a hardware KVM module is loaded and /dev/kvm is usable, else TCG).
    Auto,
    Tcg,
    Kvm,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GuestArgs {
    /// Phases to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "boot,standby,idle,capacity")]
    pub phases: Vec<Phase>,
    /// boot: measured boots per system (vmplane, bare qemu, libvirt), interleaved.
    #[arg(long, default_value_t = 12)]
    pub boots: usize,
    /// boot: unmeasured boots per system before those.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// boot and standby: guest memory in MiB (the same for all three systems).
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u64,
    /// boot and standby: root disk (qcow2 overlay) size in GB; the guest grows its filesystem to it at boot.
    #[arg(long, default_value_t = 10)]
    pub disk_gb: u32,
    /// boot: pause between two boots in ms, after the previous guest is gone.
    #[arg(long, default_value_t = 1000)]
    pub pause_ms: u64,
    /// standby: standby + restore cycles per system.
    #[arg(long, default_value_t = 5)]
    pub standby_cycles: usize,
    /// clones: how many clones run together for the memory figure.
    #[arg(long, default_value_t = 10)]
    pub clones: usize,
    /// capacity: start at most this many guests.
    #[arg(long, default_value_t = 64)]
    pub capacity_max: usize,
    /// capacity: stop starting guests after this many minutes.
    #[arg(long, default_value_t = 20)]
    pub capacity_minutes: u64,
    /// capacity: memory of each guest in MiB.
    #[arg(long, default_value_t = 128)]
    pub capacity_memory_mib: u64,
    /// capacity: root disk of each guest in GB (vmplane counts root disks against the host's free disk).
    #[arg(long, default_value_t = 1)]
    pub capacity_disk_gb: u32,
    /// Leave libvirt out.
    #[arg(long)]
    pub skip_libvirt: bool,
    /// Before each phase, wait until the 1-minute load average is below this (at most --load-wait-secs).
    #[arg(long, default_value_t = 1.0)]
    pub max_load: f64,
    #[arg(long, default_value_t = 900)]
    pub load_wait_secs: u64,
    /// Seconds a guest may take to print its readiness line (all systems; also the worker's --ready-timeout-secs).
    #[arg(long, default_value_t = 180)]
    pub boot_timeout_secs: u64,
    /// Where the image lives (`<dir>/debian-minimal/`); the worker builds it there on first start.
    #[arg(long, default_value = "/var/tmp/vmplane-bench/images")]
    pub images_dir: PathBuf,
    /// The repository's `images/` folder (build.sh, make-seed.sh). Default: found above the binary, else ./images.
    #[arg(long)]
    pub images_src: Option<PathBuf>,
    /// The emulator, for all three systems.
    #[arg(long, default_value = "/usr/bin/qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// The accelerator, for all three systems.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Host ports the bench's worker hands out for SSH forwards (bound on 127.0.0.1 only).
    #[arg(long, default_value = "41000-41999")]
    pub port_range: String,
    /// The vmplane binary (default: `vmplane` next to this binary).
    #[arg(long)]
    pub vmplane: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    pub nats_server: PathBuf,
    /// RUST_LOG for the vmplane processes.
    #[arg(long, default_value = "info,async_nats=warn")]
    pub vmplane_log: String,
    /// Keep the temp dir (process logs, worker state) and print its path.
    #[arg(long)]
    pub keep_tmp: bool,
}

/// The image every system boots.
pub const IMAGE: &str = "debian-minimal";

// ---------------------------------------------------------------- host helpers

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok())).unwrap_or(f64::NAN)
}

fn meminfo_mib(key: &str) -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = m.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}

/// User + system CPU time a process has used.
pub fn proc_cpu(pid: i32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// Proportional set size (shared pages split between their users), in KiB.
pub fn proc_pss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines().find(|l| l.starts_with("Pss:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

/// Live qemu processes with `marker` (a path of this run) in their command line.
pub fn qemus_with(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let mut args = cmd.split(|b| *b == 0);
            let is_qemu = args.next().is_some_and(|a0| String::from_utf8_lossy(a0).rsplit('/').next().is_some_and(|n| n.starts_with("qemu-system")));
            is_qemu && pid_alive(*pid) && cmd.split(|b| *b == 0).any(|a| String::from_utf8_lossy(a).contains(marker))
        })
        .collect()
}

/// Wait (bounded) until the 1-minute load average is below `max`; the load it started at.
async fn wait_low_load(max: f64, limit: Duration, what: &str) -> f64 {
    let deadline = Instant::now() + limit;
    let mut said = None::<Instant>;
    loop {
        let l = load1();
        if l < max {
            if said.is_some() {
                eprintln!("vmplane-bench: load {l:.2}, starting {what}");
            }
            return l;
        }
        if Instant::now() > deadline {
            eprintln!("vmplane-bench: WARNING: load still {l:.2} after {limit:?}; starting {what} anyway");
            return l;
        }
        if said.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            eprintln!("vmplane-bench: waiting for the 1-min load average ({l:.2}) to drop below {max} before {what} (at most {limit:?})");
            said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// A command's stdout, or an error with its stderr; bounded in time.
pub async fn run_cmd(program: impl AsRef<std::ffi::OsStr>, args: &[OsString], limit: Duration) -> Result<String> {
    let program = program.as_ref();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let what = || format!("{} {}", program.to_string_lossy(), args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let out = tokio::time::timeout(limit, cmd.output()).await.map_err(|_| anyhow!("`{}` did not finish within {limit:?}", what()))?.with_context(what)?;
    ensure!(out.status.success(), "`{}` failed ({}): {}", what(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// The qcow2 overlay vmplane's driver makes (`prepare_disk`): `rootfs` as raw backing file.
pub async fn make_overlay(rootfs: &Path, out: &Path, disk_gb: u32) -> Result<()> {
    run_cmd(
        "qemu-img",
        &[os("create"), os("-q"), os("-f"), os("qcow2"), os("-F"), os("raw"), os("-b"), rootfs.into(), out.into(), os(format!("{disk_gb}G"))],
        Duration::from_secs(30),
    )
    .await
    .map(drop)
}

/// A NoCloud seed with `make-seed.sh`, holding what vmplane's driver writes
/// for a VM created with only a name: meta-data, empty user-data,
/// authorized_keys, env and volumes.
pub async fn make_seed(script: &Path, out: &Path, instance_id: &str, hostname: &str) -> Result<()> {
    let staging = tempfile::tempdir()?;
    let d = staging.path();
    std::fs::write(d.join("meta-data"), format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n"))?;
    for f in ["user-data", "authorized_keys", "env", "volumes"] {
        std::fs::write(d.join(f), "")?;
    }
    let kv = |n: &str| os(format!("{n}={}", d.join(n).display()));
    run_cmd(
        script,
        &[out.into(), d.join("meta-data").into(), d.join("user-data").into(), kv("authorized_keys"), kv("env"), kv("volumes")],
        Duration::from_secs(30),
    )
    .await
    .map(drop)
}

/// Poll `log` (every 10 ms) until it holds the readiness line: the time since `t0`.
/// `alive` is asked on every poll and must say whether the guest's qemu still runs.
pub async fn wait_ready_line(log: &Path, t0: Instant, deadline: Instant, mut alive: impl FnMut() -> bool) -> Result<Duration> {
    loop {
        if let Ok(bytes) = std::fs::read(log)
            && bytes.windows(READY_LINE.len()).any(|w| w == READY_LINE)
        {
            return Ok(t0.elapsed());
        }
        if !alive() {
            bail!("qemu exited before the readiness line; end of the console log: {}", console_tail(log));
        }
        if Instant::now() > deadline {
            bail!("no readiness line in time; end of the console log: {}", console_tail(log));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn console_tail(log: &Path) -> String {
    let b = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&b[b.len().saturating_sub(600)..]).replace('\r', "")
}

/// Send `ping` to the guest agent's socket and wait for `pong` (proves the guest runs).
pub async fn agent_ping(sock: &Path, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let fut = async {
        let stream = tokio::net::UnixStream::connect(sock).await.with_context(|| format!("connecting to {}", sock.display()))?;
        let (r, mut w) = stream.into_split();
        w.write_all(b"ping\n").await?;
        let mut lines = BufReader::new(r).lines();
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "pong" {
                return Ok(());
            }
        }
        bail!("the agent closed the connection without answering")
    };
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow!("no answer from the guest agent within {limit:?}"))??;
    Ok(t0.elapsed())
}

/// Kills, on drop, any qemu still running with this run's temp dir in its
/// command line: vmplane's guests are daemonized and would outlive the worker.
struct Sweep(Option<String>);

impl Sweep {
    fn kill(&self) -> usize {
        let Some(marker) = &self.0 else { return 0 };
        let pids = qemus_with(marker);
        for pid in &pids {
            // SAFETY: kill(2) on a qemu this run started (its command line names our temp dir).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        pids.len()
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let n = self.kill();
        if n > 0 {
            eprintln!("vmplane-bench: killed {n} leftover qemu process(es) of this run");
        }
    }
}

// ---------------------------------------------------------------- samples

/// One boot.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// POST sent / process started -> ready (vmplane: operation succeeded; others: readiness line in the serial log).
    pub total: Duration,
    /// vmplane: POST -> 202; libvirt: `virsh create` returned.
    pub launched: Option<Duration>,
    /// vmplane: POST -> the worker's `booted` event (qemu started and daemonized).
    pub booted_event: Option<Duration>,
    /// vmplane: POST -> the worker's `ready` event (it saw the readiness line).
    pub ready_event: Option<Duration>,
    /// CPU time of the guest's qemu when it was seen ready.
    pub cpu: Option<Duration>,
    /// 1-minute load average just before the boot.
    pub load: f64,
    /// bare qemu and libvirt: making the overlay and the seed, before the clock starts
    /// (vmplane's figure includes its own).
    pub prep: Option<Duration>,
    /// Tear-down: vmplane DELETE -> operation succeeded; bare: SIGTERM -> exit; libvirt: `virsh destroy`.
    pub teardown: Duration,
}

fn stats(v: impl IntoIterator<Item = Duration>) -> Stats {
    let mut s = Stats::default();
    for d in v {
        s.push(d);
    }
    s
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn p(s: &Stats, pct: f64) -> Duration {
    Stats::pct(&s.sorted(), pct)
}

// ---------------------------------------------------------------- vmplane API

async fn call(api: &Api, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let mut req = api.http.request(method.clone(), format!("{}{path}", api.base)).bearer_auth(&api.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.with_context(|| format!("{method} {path}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.with_context(|| format!("{method} {path}: reading the body"))?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// A 202's VM id and operation id.
fn accepted(what: &str, status: u16, v: &Value) -> Result<(String, String)> {
    ensure!(status == 202, "{what}: HTTP {status}: {v}");
    Ok((v["id"].as_str().unwrap_or_default().to_owned(), v["operation"]["id"].as_str().unwrap_or_default().to_owned()))
}

/// Long-poll `GET /v1/operations/{op}?wait=10` until it is terminal: the operation.
async fn op_wait(api: &Api, op: &str, deadline: Instant) -> Result<Value> {
    loop {
        let (status, v) = call(api, reqwest::Method::GET, &format!("/v1/operations/{op}?wait=10"), None).await?;
        ensure!(status == 200, "GET /v1/operations/{op}: HTTP {status}: {v}");
        match v["status"].as_str() {
            Some("succeeded" | "failed") => return Ok(v),
            _ if Instant::now() > deadline => bail!("operation {op} still {} at its time limit", v["status"]),
            _ => {}
        }
    }
}

/// Run an action (`standby`, `restore`, DELETE) and wait for its operation: the time it took.
async fn vm_action(api: &Api, vm: &str, action: &str, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let (status, v) = if action == "delete" {
        call(api, reqwest::Method::DELETE, &format!("/v1/vms/{vm}"), None).await?
    } else {
        call(api, reqwest::Method::POST, &format!("/v1/vms/{vm}/{action}"), None).await?
    };
    let (_, op) = accepted(&format!("{action} {vm}"), status, &v)?;
    let done = op_wait(api, &op, t0 + limit).await?;
    ensure!(done["status"] == "succeeded", "{action} {vm}: operation {}: {}", done["status"], done["error"]);
    Ok(t0.elapsed())
}

/// Create a VM and wait until it runs: (vm id, POST -> 202, POST -> operation succeeded).
/// On failure the VM (if one was accepted) is deleted.
async fn vm_create(api: &Api, body: Value, limit: Duration) -> Result<(String, Duration, Duration)> {
    let t0 = Instant::now();
    let (status, v) = call(api, reqwest::Method::POST, "/v1/vms", Some(body)).await?;
    if status == 409 {
        bail!(Refused(format!("HTTP 409 {}: {}", v["code"].as_str().unwrap_or_default(), v["message"].as_str().unwrap_or_default())));
    }
    let (vm, op) = accepted("POST /v1/vms", status, &v)?;
    let posted = t0.elapsed();
    let done = match op_wait(api, &op, t0 + limit).await {
        Ok(d) => d,
        Err(e) => {
            let _ = vm_action(api, &vm, "delete", Duration::from_secs(60)).await;
            return Err(e);
        }
    };
    let total = t0.elapsed();
    if done["status"] != "succeeded" {
        let (_, vmv) = call(api, reqwest::Method::GET, &format!("/v1/vms/{vm}"), None).await.unwrap_or_default();
        let _ = vm_action(api, &vm, "delete", Duration::from_secs(60)).await;
        bail!("create {vm} failed: {} (vm: {} {})", done["error"], vmv["status"], vmv["message"]);
    }
    Ok((vm, posted, total))
}

/// The API said no (409): not an error of the bench.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Seconds from `t0` to the first event of type `kind` in the VM's history.
async fn event_offset(api: &Api, vm: &str, kind: &str, t0: OffsetDateTime) -> Option<Duration> {
    let (_, v) = call(api, reqwest::Method::GET, &format!("/v1/vms/{vm}/events"), None).await.ok()?;
    let e = v.as_array()?.iter().find(|e| e["type"] == kind)?;
    let at = OffsetDateTime::parse(e["time"].as_str()?, &Rfc3339).ok()?;
    Duration::try_from(at - t0).ok()
}

struct Vmplane<'a> {
    api: &'a Api,
    /// The command line of the last guest it booted, for bare qemu.
    template: std::sync::Mutex<Option<Template>>,
    /// The worker's qemu driver dir (`vms/<id>/...`).
    qemu_dir: PathBuf,
    memory_mib: u64,
    disk_gb: u32,
    limit: Duration,
}

impl Vmplane<'_> {
    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.qemu_dir.join("vms").join(vm)
    }

    /// The running guest's qemu pid; its command line becomes the template.
    fn observe(&self, vm: &str) -> Option<i32> {
        let dir = self.vm_dir(vm);
        let pid = read_pid(&dir.join("qemu.pid"))?;
        match Template::capture(pid, &dir, vm) {
            Ok(t) => *self.template.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
            Err(e) => eprintln!("vmplane-bench: cannot read the command line of {vm}'s qemu: {e:#}"),
        }
        Some(pid)
    }

    fn template(&self) -> Result<Template> {
        self.template.lock().unwrap_or_else(|p| p.into_inner()).clone().context("no guest has booted through vmplane yet, so there is no command line to copy")
    }

    /// The template, booting (and deleting) a guest through vmplane first if none has run yet.
    async fn ensure_template(&self) -> Result<Template> {
        if let Ok(t) = self.template() {
            return Ok(t);
        }
        let (vm, _, _) = vm_create(self.api, json!({ "name": "template", "memory_mib": self.memory_mib, "disk_gb": self.disk_gb }), self.limit).await?;
        self.observe(&vm);
        vm_action(self.api, &vm, "delete", Duration::from_secs(120)).await?;
        self.template()
    }

    async fn boot(&self, name: &str) -> Result<Boot> {
        let load = load1();
        let wall0 = OffsetDateTime::now_utc();
        let body = json!({ "name": name, "memory_mib": self.memory_mib, "disk_gb": self.disk_gb });
        let (vm, posted, total) = vm_create(self.api, body, self.limit).await?;
        let cpu = self.observe(&vm).and_then(proc_cpu);
        let booted_event = event_offset(self.api, &vm, "booted", wall0).await;
        let ready_event = event_offset(self.api, &vm, "ready", wall0).await;
        let teardown = vm_action(self.api, &vm, "delete", Duration::from_secs(120)).await?;
        Ok(Boot { total, launched: Some(posted), booted_event, ready_event, cpu, load, teardown, prep: None })
    }
}

// ---------------------------------------------------------------- the run

/// `images/` of the repository: given, or above the binary (target/release/..), or ./images.
fn find_images_src(given: &Option<PathBuf>) -> Result<PathBuf> {
    let rel = Path::new(IMAGE).join("make-seed.sh");
    let mut candidates: Vec<PathBuf> = given.iter().cloned().collect();
    if given.is_none() {
        if let Ok(exe) = std::env::current_exe() {
            candidates.extend(exe.ancestors().skip(1).map(|d| d.join("images")));
        }
        candidates.push(PathBuf::from("images"));
    }
    let found =
        candidates.into_iter().find(|d| d.join(&rel).is_file()).context("cannot find images/debian-minimal/make-seed.sh; pass --images-src REPO/images")?;
    Ok(std::fs::canonicalize(&found)?)
}

#[derive(Default)]
struct Report {
    template: Option<Template>,
    idle: Option<Result<crate::bare::IdleCost, String>>,
    boots: Vec<(&'static str, Vec<Boot>)>,
    boot_errors: Vec<String>,
    boot_loads: (f64, f64),
    standby: Vec<StandbyRow>,
    capacity: Option<Capacity>,
}

/// One system's standby / restore cycles.
pub struct StandbyRow {
    pub system: &'static str,
    pub standby: Stats,
    pub restore: Stats,
    /// Size of the saved state after each standby.
    pub state_mib: Vec<f64>,
    /// Restores after which the guest agent answered `ping`.
    pub pings: usize,
    pub errors: Vec<String>,
}

impl StandbyRow {
    pub fn new(system: &'static str) -> Self {
        Self { system, standby: Stats::default(), restore: Stats::default(), state_mib: Vec::new(), pings: 0, errors: Vec::new() }
    }

    pub fn log_cycle(&self, c: usize) {
        let last = |s: &Stats| secs(s.samples.last().copied().unwrap_or_default());
        eprintln!("vmplane-bench: standby {c} {}: standby {} s, restore {} s", self.system, last(&self.standby), last(&self.restore));
    }
}

struct Capacity {
    started: Vec<(Duration, f64, u64)>,
    stop_reason: String,
    running: u64,
    qemu_count: usize,
    pss_mib: u64,
    idle_cores: f64,
    mem_used_mib: u64,
    mem_total_mib: u64,
    load_at_peak: f64,
    allowed_by_memory: u64,
    allowed_by_disk: u64,
    default_disk_allows: u64,
    delete_wall: Duration,
    delete_errors: usize,
    elapsed: Duration,
}

pub async fn run(args: GuestArgs) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "vmplane-bench guests must run as root (the worker builds the image, libvirtd runs as root)");
    ensure!(args.boots > 0 && args.standby_cycles > 0 && args.capacity_max > 0, "counts must be positive");
    ensure!(args.qemu.is_file(), "{} not found (apt-get install qemu-system-x86)", args.qemu.display());
    let images_src = find_images_src(&args.images_src)?;
    let make_seed = images_src.join(IMAGE).join("make-seed.sh");
    let vmplane_bin = find_vmplane(&args.vmplane)?;
    let limit = Duration::from_secs(args.boot_timeout_secs);
    let run_started = OffsetDateTime::now_utc();
    let want_libvirt = !args.skip_libvirt && args.phases.iter().any(|p| matches!(p, Phase::Boot | Phase::Standby));

    let (accel, accel_reason) = accel::choose(
        match args.accel {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Tcg => AccelChoice::Tcg,
            AccelArg::Kvm => AccelChoice::Kvm,
        },
        Path::new("/sys/module"),
        Path::new("/dev/kvm"),
    );
    let qemu_version = run_cmd(&args.qemu, &[os("--version")], Duration::from_secs(10)).await?.lines().next().unwrap_or_default().to_owned();

    // Declared first, so it runs last: after the cluster and libvirtd are stopped.
    let mut sweep = Sweep(None);
    let accel_flag = match args.accel {
        AccelArg::Auto => "auto",
        AccelArg::Tcg => "tcg",
        AccelArg::Kvm => "kvm",
    };
    let worker_args: Vec<OsString> = vec![
        os("--driver"),
        os("qemu"),
        os("--accel"),
        os(accel_flag),
        os("--images-dir"),
        args.images_dir.clone().into(),
        os("--qemu-binary"),
        args.qemu.clone().into(),
        os("--host-name"),
        os("bench-qemu"),
        os("--port-range"),
        os(&args.port_range),
        os("--forward-bind"),
        os("127.0.0.1"),
        os("--ready-timeout-secs"),
        os(args.boot_timeout_secs.to_string()),
    ];
    eprintln!(
        "vmplane-bench: starting nats-server, gateway and worker (qemu driver; the worker builds the image into {} if needed)",
        args.images_dir.display()
    );
    let mut cluster = start_cluster(ClusterSpec {
        vmplane: vmplane_bin,
        nats_server: &args.nats_server,
        keep_tmp: args.keep_tmp,
        accept_wait_ms: None,
        vmplane_log: &args.vmplane_log,
        gateway_args: Vec::new(),
        worker_args,
        worker_env: vec![("VMPLANE_IMAGES_SRC", images_src.display().to_string())],
        nats_monitor_port: None,
    })
    .await?;
    let tmp = cluster.dir.clone();
    sweep.0 = Some(tmp.display().to_string());
    // libvirt runs qemu as libvirt-qemu: it must reach its guests' files below the temp dir.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).tcp_nodelay(true).build()?;
    let host_id = wait_vmplane(&mut cluster, &http, Duration::from_secs(600)).await?;
    let api = Api { http: http.clone(), base: cluster.base.clone(), token: cluster.admin_token.clone() };
    let (_, hosts) = call(&api, reqwest::Method::GET, "/v1/hosts", None).await?;
    let host = hosts.as_array().into_iter().flatten().find(|h| h["id"] == host_id.as_str()).cloned().unwrap_or(Value::Null);
    let image = image::load(&args.images_dir, IMAGE).map_err(|e| anyhow!(e))?;
    let image_owners = owners(&[&image.kernel, &image.initrd, &image.rootfs]);
    let qemu_dir = tmp.join("worker").join("worker").join("qemu");
    eprintln!("vmplane-bench: host {host_id} online: {}", host["driver_detail"].as_str().unwrap_or_default());

    let libvirtd = if want_libvirt { Some(Libvirtd::start().await?) } else { None };
    let libvirt_version = libvirtd.as_ref().map(|l| l.version.clone());

    let mut report = Report::default();
    let vmp = Vmplane { api: &api, template: Default::default(), qemu_dir: qemu_dir.clone(), memory_mib: args.memory_mib, disk_gb: args.disk_gb, limit };
    let bare = Bare::new(tmp.join("bare"), image.rootfs.clone(), make_seed.clone(), args.disk_gb)?;
    let lv = if want_libvirt {
        Some(Libvirt::new(args.qemu.clone(), accel, image.clone(), tmp.join("libvirt"), make_seed.clone(), args.memory_mib, args.disk_gb)?)
    } else {
        None
    };
    let load_wait = Duration::from_secs(args.load_wait_secs);

    // ------------------------------------------------ boot
    if args.phases.contains(&Phase::Boot) {
        let l0 = wait_low_load(args.max_load, load_wait, "the boot phase").await;
        let systems: Vec<&'static str> = if lv.is_some() { vec!["vmplane", "bare qemu", "libvirt"] } else { vec!["vmplane", "bare qemu"] };
        let mut samples: Vec<Vec<Boot>> = vec![Vec::new(); systems.len()];
        let mut errors = Vec::new();
        let (mut lo, mut hi) = (l0, l0);
        let rounds = args.warmup + args.boots;
        'rounds: for round in 0..rounds {
            let measured = round >= args.warmup;
            for k in 0..systems.len() {
                let s = (round + k) % systems.len();
                let name = format!("boot-{round}");
                let load = load1();
                (lo, hi) = (lo.min(load), hi.max(load));
                let r = match s {
                    0 => vmp.boot(&name).await,
                    1 => match vmp.template() {
                        Ok(t) => bare.boot(&t, &name, limit).await,
                        Err(e) => Err(e),
                    },
                    _ => lv.as_ref().expect("libvirt").boot(&name, &kernel_cmdline(&vmp, &image.cmdline), limit).await,
                };
                match r {
                    Ok(b) => {
                        eprintln!(
                            "vmplane-bench: boot {round}{} {:<9} {} s (load {:.2})",
                            if measured { "" } else { " (warm-up)" },
                            systems[s],
                            secs(b.total),
                            b.load
                        );
                        if measured {
                            samples[s].push(b);
                        }
                    }
                    Err(e) => {
                        eprintln!("vmplane-bench: boot {round} {} FAILED: {e:#}", systems[s]);
                        errors.push(format!("{} boot {round}: {e:#}", systems[s]));
                        if errors.len() > 5 {
                            errors.push("more than 5 failed boots: boot phase stopped".into());
                            break 'rounds;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
            }
        }
        report.boots = systems.into_iter().zip(samples).collect();
        report.boot_errors = errors;
        report.boot_loads = (lo, hi);
    }

    // ------------------------------------------------ standby / restore
    if args.phases.contains(&Phase::Standby) {
        wait_low_load(args.max_load, load_wait, "the standby phase").await;
        report.standby.push(standby_vmplane(&vmp, args.standby_cycles).await);
        match vmp.template() {
            Ok(t) => {
                report.standby.push(bare.standby_cycles(&t, args.standby_cycles, limit, None).await);
                // The same with QEMU's migration bandwidth limit (default 128 MiB/s) lifted.
                report.standby.push(bare.standby_cycles(&t, args.standby_cycles, limit, Some(10 << 30)).await);
            }
            Err(e) => {
                let mut row = StandbyRow::new("bare qemu");
                row.errors.push(format!("{e:#}"));
                report.standby.push(row);
            }
        }
        if let Some(lv) = &lv {
            report.standby.push(lv.standby_cycles(&kernel_cmdline(&vmp, &image.cmdline), args.standby_cycles, limit).await);
        }
    }

    // ------------------------------------------------ idle cost
    if args.phases.contains(&Phase::Idle) {
        wait_low_load(args.max_load, load_wait, "the idle phase").await;
        report.idle = Some(match vmp.ensure_template().await {
            Ok(t) => bare.idle_cost(&t, limit, Duration::from_secs(20)).await.map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        });
    }

    // ------------------------------------------------ capacity
    if args.phases.contains(&Phase::Capacity) {
        wait_low_load(args.max_load, load_wait, "the capacity phase").await;
        report.capacity = Some(capacity(&api, &qemu_dir, &host, &args, limit).await?);
    }

    // ------------------------------------------------ snapshots and clones
    let clones = if args.phases.contains(&Phase::Clones) {
        wait_low_load(args.max_load, load_wait, "the clones phase").await;
        Some(clones::phase(&api, &qemu_dir, args.memory_mib, args.disk_gb, args.boots, args.clones, limit).await.map_err(|e| format!("{e:#}")))
    } else {
        None
    };

    // ------------------------------------------------ report
    report.template = vmp.template().ok();
    let out = render(
        &args,
        &report,
        &ReportHead {
            started: run_started,
            finished: OffsetDateTime::now_utc(),
            qemu_version,
            libvirt_version,
            accel,
            accel_reason,
            host: host.clone(),
            image: format!("{} ({})", image.name, image.cmdline),
        },
    )?;
    print!("{out}");
    match &clones {
        Some(Ok(section)) => print!("{section}"),
        Some(Err(e)) => println!("\nsnapshots and clones: FAILED: {e}"),
        None => {}
    }

    // ------------------------------------------------ clean up
    drop(lv);
    drop(libvirtd);
    drop(api);
    drop(http);
    cluster.stop();
    let leftovers = sweep.kill();
    restore_owners(&image_owners);
    eprintln!("vmplane-bench: stopped nats-server, gateway, worker{}", if want_libvirt { " and the libvirt daemons it started" } else { "" });
    let clean =
        clones.as_ref().is_none_or(Result::is_ok) && report.boot_errors.is_empty() && report.standby.iter().all(|r| r.errors.is_empty()) && leftovers == 0;
    if leftovers > 0 {
        eprintln!("vmplane-bench: {leftovers} qemu process(es) were still running at the end and were killed");
    }
    Ok(clean)
}

/// The kernel command line vmplane's last guest got (its `-append`), else the image's.
fn kernel_cmdline(vmp: &Vmplane<'_>, image: &str) -> String {
    vmp.template().ok().and_then(|t| t.append()).unwrap_or_else(|| image.to_owned())
}

/// libvirt's dynamic ownership chowns the image files to libvirt-qemu; put them back.
fn owners(files: &[&Path]) -> Vec<(PathBuf, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    files.iter().filter_map(|f| std::fs::metadata(f).ok().map(|m| (f.to_path_buf(), m.uid(), m.gid()))).collect()
}

fn restore_owners(list: &[(PathBuf, u32, u32)]) {
    for (f, uid, gid) in list {
        let _ = std::os::unix::fs::chown(f, Some(*uid), Some(*gid));
    }
}

// ---------------------------------------------------------------- standby

async fn standby_vmplane(vmp: &Vmplane<'_>, cycles: usize) -> StandbyRow {
    let mut row = StandbyRow::new("vmplane");
    let body = json!({ "name": "standby", "memory_mib": vmp.memory_mib, "disk_gb": vmp.disk_gb });
    let vm = match vm_create(vmp.api, body, vmp.limit).await {
        Ok((vm, _, _)) => vm,
        Err(e) => {
            row.errors.push(format!("create: {e:#}"));
            return row;
        }
    };
    vmp.observe(&vm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dir = vmp.vm_dir(&vm);
    for c in 0..cycles {
        match vm_action(vmp.api, &vm, "standby", Duration::from_secs(300)).await {
            Ok(d) => {
                row.standby.push(d);
                if let Ok(m) = std::fs::metadata(dir.join("state.vmstate")) {
                    row.state_mib.push(m.len() as f64 / 1048576.0);
                }
            }
            Err(e) => {
                row.errors.push(format!("standby {c}: {e:#}"));
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match vm_action(vmp.api, &vm, "restore", Duration::from_secs(300)).await {
            Ok(d) => row.restore.push(d),
            Err(e) => {
                row.errors.push(format!("restore {c}: {e:#}"));
                break;
            }
        }
        match agent_ping(&dir.join("agent.sock"), Duration::from_secs(15)).await {
            Ok(_) => row.pings += 1,
            Err(e) => row.errors.push(format!("agent ping after restore {c}: {e:#}")),
        }
        row.log_cycle(c);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Err(e) = vm_action(vmp.api, &vm, "delete", Duration::from_secs(120)).await {
        row.errors.push(format!("delete: {e:#}"));
    }
    row
}

// ---------------------------------------------------------------- capacity

async fn capacity(api: &Api, qemu_dir: &Path, host: &Value, args: &GuestArgs, limit: Duration) -> Result<Capacity> {
    let t_start = Instant::now();
    let until = t_start + Duration::from_secs(args.capacity_minutes * 60);
    let host_mem = host["memory_mib"].as_u64().unwrap_or(0);
    let host_disk = host["disk_gb"].as_u64().unwrap_or(0);
    let mem_total = meminfo_mib("MemTotal:").unwrap_or(0);
    let avail_before = meminfo_mib("MemAvailable:").unwrap_or(0);
    let mut vms: Vec<String> = Vec::new();
    let mut started = Vec::new();
    let mut stop_reason = format!("reached --capacity-max {}", args.capacity_max);
    eprintln!(
        "vmplane-bench: capacity: guests of {} MiB / {} GB, one at a time, at most {} or {} min",
        args.capacity_memory_mib, args.capacity_disk_gb, args.capacity_max, args.capacity_minutes
    );
    for k in 0..args.capacity_max {
        if Instant::now() > until {
            stop_reason = format!("reached the --capacity-minutes bound ({} min)", args.capacity_minutes);
            break;
        }
        let body = json!({ "name": format!("cap-{k}"), "memory_mib": args.capacity_memory_mib, "disk_gb": args.capacity_disk_gb });
        match vm_create(api, body, limit).await {
            Ok((vm, _, total)) => {
                let load = load1();
                let avail = meminfo_mib("MemAvailable:").unwrap_or(0);
                eprintln!("vmplane-bench: capacity: guest {} running after {} s (load {load:.2}, MemAvailable {avail} MiB)", k + 1, secs(total));
                started.push((total, load, avail));
                vms.push(vm);
            }
            Err(e) => {
                stop_reason = match e.downcast_ref::<Refused>() {
                    Some(r) => format!("the API refused guest {}: {r}", k + 1),
                    None => format!("guest {} did not boot: {e:#}", k + 1),
                };
                eprintln!("vmplane-bench: capacity: {stop_reason}");
                break;
            }
        }
    }
    let elapsed = t_start.elapsed();
    // Steady state with every guest up: still running? what do they cost?
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, page) = call(api, reqwest::Method::GET, "/v1/vms?status=running&limit=1", None).await?;
    let running = page["pagination"]["total_items"].as_u64().unwrap_or(0);
    let pids = qemus_with(&qemu_dir.display().to_string());
    let cpu0: Duration = pids.iter().filter_map(|p| proc_cpu(*p)).sum();
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu1: Duration = pids.iter().filter_map(|p| proc_cpu(*p)).sum();
    let idle_cores = cpu1.saturating_sub(cpu0).as_secs_f64() / w0.elapsed().as_secs_f64();
    let pss_mib = pids.iter().filter_map(|p| proc_pss_kib(*p)).sum::<u64>() / 1024;
    let avail_peak = meminfo_mib("MemAvailable:").unwrap_or(0);
    let load_at_peak = load1();
    eprintln!(
        "vmplane-bench: capacity: {running} running, {} qemu processes, {pss_mib} MiB PSS, {idle_cores:.2} cores busy while idle; deleting them",
        pids.len()
    );

    // Delete all, 8 at a time, bounded.
    let t_del = Instant::now();
    let mut delete_errors = 0;
    for chunk in vms.chunks(8) {
        let results = futures::future::join_all(chunk.iter().map(|vm| vm_action(api, vm, "delete", Duration::from_secs(300)))).await;
        delete_errors += results.iter().filter(|r| r.is_err()).count();
    }
    let delete_wall = t_del.elapsed();
    Ok(Capacity {
        started,
        stop_reason,
        running,
        qemu_count: pids.len(),
        pss_mib,
        idle_cores,
        mem_used_mib: avail_before.saturating_sub(avail_peak),
        mem_total_mib: mem_total,
        load_at_peak,
        allowed_by_memory: host_mem / args.capacity_memory_mib.max(1),
        allowed_by_disk: host_disk / u64::from(args.capacity_disk_gb.max(1)),
        default_disk_allows: host_disk / 10,
        delete_wall,
        delete_errors,
        elapsed,
    })
}

// ---------------------------------------------------------------- report

struct ReportHead {
    started: OffsetDateTime,
    finished: OffsetDateTime,
    qemu_version: String,
    libvirt_version: Option<String>,
    accel: Accel,
    accel_reason: String,
    host: Value,
    image: String,
}

fn render(args: &GuestArgs, r: &Report, h: &ReportHead) -> Result<String> {
    let mut o = String::new();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_owned()))
        .unwrap_or_default();
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    writeln!(o)?;
    writeln!(o, "vmplane-bench guests: {} -> {}", fmt(h.started), fmt(h.finished))?;
    writeln!(
        o,
        "machine: {} x {cpu_model}, {} MiB RAM; {}; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        meminfo_mib("MemTotal:").unwrap_or(0),
        h.qemu_version,
        h.libvirt_version.as_deref().unwrap_or("libvirt not used")
    )?;
    writeln!(o, "accelerator: {} ({})", h.accel.qemu_name(), h.accel_reason)?;
    writeln!(o, "vmplane host as announced: {} cpus, {} MiB memory, {} GB free disk", h.host["cpus"], h.host["memory_mib"], h.host["disk_gb"])?;
    writeln!(o, "image: {}; guests: {} MiB, 1 vCPU, {} GB qcow2 overlay, fresh overlay and seed per boot", h.image, args.memory_mib, args.disk_gb)?;

    if let Some(t) = &r.template {
        writeln!(o, "bare qemu runs the worker's own command line, read from /proc/<pid>/cmdline of a vmplane guest (paths, id, ssh port replaced):")?;
        writeln!(o, "  {} {}", t.program.display(), t.args.join(" "))?;
    }
    if !r.boots.is_empty() {
        writeln!(o)?;
        writeln!(
            o,
            "boot to readiness, {} measured boots per system after {} warm-up, interleaved; 1-min load during the phase {:.2} - {:.2}",
            args.boots, args.warmup, r.boot_loads.0, r.boot_loads.1
        )?;
        writeln!(o, "{:<44} {:>3} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9}", "seconds", "n", "min", "p50", "p90", "max", "mean", "cpu p50", "teardown")?;
        let label = |s: &str| match s {
            "vmplane" => "vmplane: POST /v1/vms -> op succeeded",
            "bare qemu" => "bare qemu: exec -> VMPLANE-READY in log",
            _ => "libvirt: virsh create -> VMPLANE-READY",
        };
        for (system, boots) in &r.boots {
            let t = stats(boots.iter().map(|b| b.total));
            let sorted = t.sorted();
            let cpu = stats(boots.iter().filter_map(|b| b.cpu));
            let td = stats(boots.iter().map(|b| b.teardown));
            writeln!(
                o,
                "{:<44} {:>3} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9}",
                label(system),
                sorted.len(),
                secs(sorted.first().copied().unwrap_or_default()),
                secs(p(&t, 50.0)),
                secs(p(&t, 90.0)),
                secs(sorted.last().copied().unwrap_or_default()),
                secs(t.mean()),
                if cpu.samples.is_empty() { "-".into() } else { secs(p(&cpu, 50.0)) },
                secs(p(&td, 50.0))
            )?;
        }
        let p50 = |name: &str, pct: f64| r.boots.iter().find(|(s, _)| *s == name).map(|(_, b)| p(&stats(b.iter().map(|b| b.total)), pct));
        writeln!(o)?;
        writeln!(o, "ratios (p50 / p50, p90 / p90)")?;
        if let (Some(v), Some(b)) = (p50("vmplane", 50.0), p50("bare qemu", 50.0)) {
            let (v9, b9) = (p50("vmplane", 90.0).unwrap_or_default(), p50("bare qemu", 90.0).unwrap_or_default());
            writeln!(
                o,
                "  vmplane / bare qemu    {:>6.2}x   {:>6.2}x   ({:+.3} s at p50)",
                v.as_secs_f64() / b.as_secs_f64(),
                v9.as_secs_f64() / b9.as_secs_f64(),
                v.as_secs_f64() - b.as_secs_f64()
            )?;
        }
        if let (Some(l), Some(b)) = (p50("libvirt", 50.0), p50("bare qemu", 50.0)) {
            let (l9, b9) = (p50("libvirt", 90.0).unwrap_or_default(), p50("bare qemu", 90.0).unwrap_or_default());
            writeln!(
                o,
                "  libvirt / bare qemu    {:>6.2}x   {:>6.2}x   ({:+.3} s at p50)",
                l.as_secs_f64() / b.as_secs_f64(),
                l9.as_secs_f64() / b9.as_secs_f64(),
                l.as_secs_f64() - b.as_secs_f64()
            )?;
        }
        if let (Some(v), Some(l)) = (p50("vmplane", 50.0), p50("libvirt", 50.0)) {
            writeln!(o, "  vmplane / libvirt      {:>6.2}x", v.as_secs_f64() / l.as_secs_f64())?;
        }
        if let Some((_, b)) = r.boots.iter().find(|(s, _)| *s == "vmplane") {
            let st = |f: &dyn Fn(&Boot) -> Option<Duration>| stats(b.iter().filter_map(f));
            let posted = st(&|b| b.launched);
            let booted = st(&|b| b.booted_event);
            let ready = st(&|b| b.ready_event);
            let after = st(&|b| b.ready_event.map(|r| b.total.saturating_sub(r)));
            let guest = st(&|b| Some(b.ready_event?.saturating_sub(b.booted_event?)));
            writeln!(o)?;
            writeln!(o, "vmplane, where the time goes (p50 of each, seconds; event times are the worker's clock, same host)")?;
            for (label, st) in [
                ("POST -> 202", &posted),
                ("POST -> `booted` event (network, overlay, seed, qemu -daemonize returned)", &booted),
                ("`booted` -> `ready` event (guest boot + the worker's 100 ms log poll)", &guest),
                ("POST -> `ready` event", &ready),
                ("`ready` event -> operation succeeded seen by the client", &after),
            ] {
                writeln!(o, "  {label:<76} {}", secs(p(st, 50.0)))?;
            }
        }
        if let Some((_, b)) = r.boots.iter().find(|(s, _)| *s == "libvirt") {
            let created = stats(b.iter().filter_map(|b| b.launched));
            writeln!(o, "libvirt: `virsh create` returned after {} s (p50)", secs(p(&created, 50.0)))?;
        }
        for (system, b) in &r.boots {
            let prep = stats(b.iter().filter_map(|b| b.prep));
            if !prep.samples.is_empty() {
                writeln!(o, "{system}: qemu-img create + make-seed.sh before the clock starts: {} s (p50), not included above", secs(p(&prep, 50.0)))?;
            }
        }
        writeln!(o, "per-boot samples (s, in boot order):")?;
        for (system, boots) in &r.boots {
            writeln!(o, "  {system:<10} {}", boots.iter().map(|b| format!("{:.2}", b.total.as_secs_f64())).collect::<Vec<_>>().join(" "))?;
        }
        for e in &r.boot_errors {
            writeln!(o, "  BOOT ERROR: {e}")?;
        }
    }

    if !r.standby.is_empty() {
        writeln!(o)?;
        writeln!(o, "standby / restore ({} cycles per system, {} MiB guest)", args.standby_cycles, args.memory_mib)?;
        writeln!(o, "{:<52} {:>3} {:>7} {:>7} {:>7} {:>9}", "seconds", "n", "min", "p50", "max", "state MiB")?;
        for row in &r.standby {
            let (sl, rl) = match row.system {
                "vmplane" => ("vmplane: POST standby -> op succeeded", "vmplane: POST restore -> op succeeded"),
                "bare qemu" => ("bare qemu: stop + migrate to file + quit", "bare qemu: exec -incoming + migrate-incoming + cont"),
                "bare qemu, max-bandwidth raised" => ("bare qemu, max-bandwidth 10 GiB/s: standby", "bare qemu, max-bandwidth 10 GiB/s: restore"),
                _ => ("libvirt: virsh save", "libvirt: virsh restore"),
            };
            let state =
                if row.state_mib.is_empty() { "-".to_owned() } else { format!("{:.0}", row.state_mib.iter().sum::<f64>() / row.state_mib.len() as f64) };
            for (l, s, extra) in [(sl, &row.standby, state.as_str()), (rl, &row.restore, "")] {
                let sorted = s.sorted();
                writeln!(
                    o,
                    "{:<52} {:>3} {:>7} {:>7} {:>7} {:>9}",
                    l,
                    sorted.len(),
                    secs(sorted.first().copied().unwrap_or_default()),
                    secs(p(s, 50.0)),
                    secs(sorted.last().copied().unwrap_or_default()),
                    extra
                )?;
            }
            writeln!(o, "  {}: guest agent answered ping after {} of {} restores", row.system, row.pings, row.restore.samples.len())?;
            for e in &row.errors {
                writeln!(o, "  STANDBY ERROR ({}): {e}", row.system)?;
            }
        }
    }

    match &r.idle {
        Some(Ok(i)) => {
            writeln!(o)?;
            writeln!(o, "one idle guest ({} MiB, bare qemu, 20 s windows from 5 s after readiness; boot {} s)", args.memory_mib, secs(i.boot))?;
            writeln!(o, "  CPU, nobody on the agent socket (as vmplane leaves it): {:.1}% of a core", 100.0 * i.unconnected)?;
            writeln!(o, "  CPU, a host client holding the agent socket open:      {:.1}% of a core", 100.0 * i.connected)?;
            writeln!(o, "  qemu PSS: {} MiB", i.pss_mib)?;
        }
        Some(Err(e)) => writeln!(o, "\nIDLE ERROR: {e}")?,
        None => {}
    }
    if let Some(c) = &r.capacity {
        writeln!(o)?;
        writeln!(
            o,
            "capacity: {} MiB / {} GB guests started one at a time through vmplane (each waits until running)",
            args.capacity_memory_mib, args.capacity_disk_gb
        )?;
        writeln!(
            o,
            "  vmplane's accounting allows {} by memory ({} MiB announced) and {} by disk ({} GB free announced; with the default disk_gb 10: {})",
            c.allowed_by_memory,
            args.capacity_memory_mib,
            c.allowed_by_disk,
            c.allowed_by_disk * u64::from(args.capacity_disk_gb),
            c.default_disk_allows
        )?;
        writeln!(o, "  started {} guests in {:.0} s; stopped because: {}", c.started.len(), c.elapsed.as_secs_f64(), c.stop_reason)?;
        writeln!(o, "  running at the end: {} (API), {} qemu processes", c.running, c.qemu_count)?;
        let boots: Vec<Duration> = c.started.iter().map(|s| s.0).collect();
        for chunk in [(0usize, 1usize), (1, 8), (8, 16), (16, 32), (32, 48), (48, 64), (64, usize::MAX)] {
            let (a, b) = chunk;
            if a >= boots.len() {
                break;
            }
            let part = stats(boots[a..b.min(boots.len())].iter().copied());
            let loads: Vec<f64> = c.started[a..b.min(boots.len())].iter().map(|s| s.1).collect();
            writeln!(
                o,
                "  guests {:>3}-{:<3} boot p50 {:>7} s, max {:>7} s, load {:.1} - {:.1}",
                a + 1,
                b.min(boots.len()),
                secs(p(&part, 50.0)),
                secs(part.sorted().last().copied().unwrap_or_default()),
                loads.iter().copied().fold(f64::INFINITY, f64::min),
                loads.iter().copied().fold(0.0, f64::max)
            )?;
        }
        writeln!(o, "  per-guest boot times (s): {}", boots.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect::<Vec<_>>().join(" "))?;
        writeln!(
            o,
            "  with all up: qemu PSS {} MiB in all ({} MiB per guest), MemAvailable down {} MiB ({} MiB per guest) of {} MiB, {:.2} cores busy with idle guests ({:.1}% of a core each), load {:.2}",
            c.pss_mib,
            c.pss_mib / (c.qemu_count.max(1) as u64),
            c.mem_used_mib,
            c.mem_used_mib / (c.qemu_count.max(1) as u64),
            c.mem_total_mib,
            c.idle_cores,
            100.0 * c.idle_cores / c.qemu_count.max(1) as f64,
            c.load_at_peak
        )?;
        writeln!(o, "  deleting them all (8 at a time): {:.1} s, {} errors", c.delete_wall.as_secs_f64(), c.delete_errors)?;
    }
    Ok(o)
}
