//! `vmplane-bench`: vmplane's API latency and throughput next to raw
//! JetStream publish-with-ack, in one process and one run, on loopback
//! (`vmplane-bench` or `vmplane-bench api`), and real guests booted through
//! vmplane's qemu driver next to bare qemu and libvirt (`vmplane-bench guests`,
//! see `guests.rs`), and webhook delivery next to the SSE feed
//! (`vmplane-bench webhooks`, see `webhooks.rs`), and what replicated
//! streams cost (`vmplane-bench replicas`, see `replicas.rs`).
//!
//! `api` starts its own `nats-server -js` (temp store, free loopback port), then
//! `vmplane gateway` and `vmplane worker --driver sim` (zero simulated delays)
//! against it, waits until the gateway is ready and the simulated host is
//! online, and measures:
//!
//! * raw JetStream `publish(..).await?.await?` of a payload the size of an
//!   encoded `CommandEnvelope` for a Create, sequential and with C tasks,
//!   to a stream of its own (`BENCH`, `bench.>`) on the same server;
//! * `POST /v1/vms` until the 202, sequential;
//! * POST sent -> operation `succeeded` (long poll of
//!   `GET /v1/operations/{op}?wait=10`), i.e. the VM's final event is in the
//!   gateway's projection and `GET /v1/vms/{id}` shows `running`;
//! * `GET /v1/vms/{id}`;
//! * a create's own messages on bare NATS with C tasks (`pattern.rs`): the
//!   placement-ledger update, the command, seven checked event appends, the
//!   command's ack and both deliveries of every event, without vmplane's
//!   code: the ceiling this design has on this machine's nats-server;
//! * `POST /v1/vms` accepted per second with C concurrent clients, over the
//!   whole burst and its first and last tenth, and how long after the last 202
//!   every one of those VMs is `running`;
//! * with `--preload N`, N VMs created (and running) before those phases;
//!   stop then start of running VMs; `GET /v1/vms/{id}` and a page of
//!   `GET /v1/vms?status=running` with the whole fleet present; resident
//!   memory and events per create; `vmplane projections rebuild` beside a
//!   bare read of the event stream (see `api_phases.rs`); and every ratio
//!   issue 10 sets a target for.
//!
//! Everything it starts is stopped when it ends, on error and on Ctrl-C too
//! (children also get SIGTERM if the bench itself is killed). Every loop is
//! bounded by a count and a time limit.
//!
//! Build first: `cargo build --release -p vmplane -p vmplane-bench`.

mod api_phases;
mod bare;
mod guests;
mod libvirt;
mod pattern;
mod replicas;
mod webhooks;

use anyhow::{Context, Result, anyhow, bail, ensure};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use vmplane_domain::spec::VmSpec;
use vmplane_domain::vm::VmCommand;
use vmplane_domain::{CommandEnvelope, HostId, OpId, OrgId, ProjectId, VmId, event};

/// The worker hands out host ports 20000-29999 by default, one per VM (ssh)
/// with the sim driver too; a run that creates more widens `--port-range`.
const SIM_PORTS: usize = 10_000;
/// The lowest host port a widened range starts at.
const SIM_WIDE_FIRST_PORT: usize = 1024;

#[derive(Parser, Debug)]
#[command(
    name = "vmplane-bench",
    about = "vmplane benchmarks: API latency and throughput against raw JetStream (default, or `api`), real guest boots against bare qemu and libvirt (`guests`), webhook delivery against the SSE feed (`webhooks`)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Options of `api` (the default when no subcommand is given).
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// API latency and throughput with the sim driver against raw JetStream publish-with-ack (the default).
    Api(ApiArgs),
    /// Real guests (qemu driver): POST /v1/vms -> readiness line next to bare qemu and libvirt, standby/restore, capacity.
    Guests(guests::GuestArgs),
    /// Webhook delivery (`vmplane webhooks`) to a local receiver: events/s and append -> receipt lag, beside the SSE feed's.
    Webhooks(webhooks::WebhookArgs),
    /// JetStream publish+ack on a stream of 1 and of 3 replicas (a three-node cluster on this machine) and on one server.
    Replicas(replicas::ReplicaArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct ApiArgs {
    /// VMs created one after another (POST latency, command -> running, GET latency).
    #[arg(long, default_value_t = 300)]
    vms: usize,
    /// Concurrent clients (HTTP) / tasks (raw NATS) in the throughput phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// POSTs in the vmplane throughput phase.
    #[arg(long, default_value_t = 2000)]
    throughput_count: usize,
    /// VMs created (by C clients) and running before the measured phases, so
    /// that those run with this many VMs in the projection.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Running VMs stopped, then started again, by C clients (0: no start/stop phase).
    #[arg(long, default_value_t = 1000)]
    start_stop_count: usize,
    /// Sequential `GET /v1/vms/{id}` and `GET /v1/vms?status=running&limit=100`
    /// (each) with the whole fleet present, at the end.
    #[arg(long, default_value_t = 300)]
    fleet_gets: usize,
    /// VMs whose `GET /v1/vms/{id}/events` is counted for events per create.
    #[arg(long, default_value_t = 50)]
    events_sample: usize,
    /// Skip the projection rebuild and the bare read of the event stream.
    #[arg(long)]
    no_rebuild: bool,
    /// Publishes in the raw throughput phase (more than POSTs: raw is far faster,
    /// and a phase of a few ms would be mostly noise).
    #[arg(long, default_value_t = 20000)]
    raw_throughput_count: usize,
    /// Sequential raw publishes for the raw latency figures.
    #[arg(long, default_value_t = 2000)]
    raw_count: usize,
    /// Creates in the bare-NATS create pattern phase: a create's messages
    /// without vmplane's code (0 skips it).
    #[arg(long, default_value_t = 2000)]
    pattern_count: usize,
    /// GETs per created VM in the GET phase.
    #[arg(long, default_value_t = 3)]
    get_rounds: usize,
    /// Unmeasured requests before each sequential phase (VMs for vmplane).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Upper bound on each phase's wall time, in seconds.
    #[arg(long, default_value_t = 180)]
    phase_timeout_secs: u64,
    /// The vmplane binary (default: `vmplane` next to this binary, i.e. target/release/vmplane).
    #[arg(long)]
    vmplane: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// Worker: VM commands run at once (vmplane's default is 32).
    #[arg(long, default_value_t = 32)]
    worker_parallelism: usize,
    /// Worker: simulated boot time in ms.
    #[arg(long, default_value_t = 0)]
    sim_boot_delay_ms: u64,
    /// Worker: simulated time to readiness in ms.
    #[arg(long, default_value_t = 0)]
    sim_ready_delay_ms: u64,
    /// Gateway: how long a POST waits for its command's first event to be
    /// projected (read-your-writes). Unset: vmplane's default (2000 ms). 0 turns
    /// the wait off, to measure what it costs.
    #[arg(long)]
    accept_wait_ms: Option<u64>,
    /// RUST_LOG for the vmplane processes (vmplane's own default).
    #[arg(long, default_value = "info,async_nats=warn")]
    vmplane_log: String,
    /// Keep the temp dir (stores and process logs) and print its path.
    #[arg(long)]
    keep_tmp: bool,
    /// Serve nats-server's monitoring endpoint on this loopback port, to read
    /// `/jsz` (JetStream API calls, stream messages) and `/connz` (messages
    /// per connection) while the phases run.
    #[arg(long)]
    nats_monitor_port: Option<u16>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    let work = async move {
        match cli.cmd {
            None => run(cli.api).await,
            Some(Cmd::Api(args)) => run(args).await,
            Some(Cmd::Guests(args)) => guests::run(args).await,
            Some(Cmd::Webhooks(args)) => webhooks::run(args).await,
            Some(Cmd::Replicas(args)) => replicas::run(args).await,
        }
    };
    // Dropping the run future (on a signal) drops the Cluster (and the guests
    // run's guards), which stop the children.
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    match result {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("vmplane-bench: finished, but some requests failed (see ERRORS above)");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("vmplane-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------- processes

/// A child process with its log file; stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, program: &Path, args: &[OsString], env: &[(&str, &str)], log: PathBuf) -> Result<Self> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: prctl is async-signal-safe. The child gets SIGTERM when the
        // thread that spawned it dies, so a SIGKILLed bench leaves nothing behind.
        // (Spawned from the main thread, which lives as long as the bench.)
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self { name, child, log })
    }

    /// An error (with the end of its log) if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); end of {}:\n{}", self.name, self.log.display(), tail(&self.log, 25));
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Idempotent.
    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("vmplane-bench: {} did not stop within {grace:?} of SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Everything the bench started. Dropping it stops the vmplane processes
/// first, then nats-server, then removes the temp dir (unless kept).
struct Cluster {
    gateway: Option<Proc>,
    worker: Option<Proc>,
    /// The webhook deliverer, when a bench starts one.
    webhooks: Option<Proc>,
    nats: Option<Proc>,
    tmp: Option<tempfile::TempDir>,
    keep_tmp: bool,
    nats_url: String,
    base: String,
    admin_token: String,
    /// The temp dir: stores, process logs, the worker's data.
    dir: PathBuf,
    /// How the gateway was started, to start it again (after a projection rebuild).
    gateway_spawn: Option<GatewaySpawn>,
}

/// The gateway's command line and environment.
struct GatewaySpawn {
    program: PathBuf,
    args: Vec<OsString>,
    admin_token: String,
    log: String,
}

impl Cluster {
    fn check_alive(&mut self) -> Result<()> {
        for p in [&mut self.nats, &mut self.gateway, &mut self.worker, &mut self.webhooks].into_iter().flatten() {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Starts the gateway again as it was first started (same data dir and port).
    fn restart_gateway(&mut self) -> Result<()> {
        let s = self.gateway_spawn.as_ref().context("the gateway's command line is not known")?;
        let env = [("VMPLANE_ADMIN_TOKEN", s.admin_token.as_str()), ("RUST_LOG", s.log.as_str())];
        self.gateway = Some(Proc::spawn("vmplane gateway", &s.program, &s.args, &env, self.dir.join("gateway-restarted.log"))?);
        Ok(())
    }

    fn stop(&mut self) {
        // The vmplane processes stop in parallel, then NATS.
        for p in [&mut self.gateway, &mut self.worker, &mut self.webhooks].into_iter().flatten() {
            if let Ok(None) = p.child.try_wait() {
                // SAFETY: as in Proc::stop.
                unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        drop(self.gateway.take());
        drop(self.worker.take());
        drop(self.webhooks.take());
        drop(self.nats.take());
        if let Some(tmp) = self.tmp.take()
            && self.keep_tmp
        {
            eprintln!("vmplane-bench: kept {}", tmp.keep().display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_ports() -> Result<(u16, u16)> {
    // Held together so the two differ; released just before use.
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn find_vmplane(given: &Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().context("the bench binary has no directory")?.join("vmplane"),
    };
    ensure!(
        path.is_file(),
        "vmplane binary not found at {}: build it first with `cargo build --release -p vmplane -p vmplane-bench`, or pass --vmplane PATH",
        path.display()
    );
    Ok(path)
}

/// How to start nats-server, the gateway and a worker.
struct ClusterSpec<'a> {
    vmplane: PathBuf,
    nats_server: &'a Path,
    keep_tmp: bool,
    accept_wait_ms: Option<u64>,
    vmplane_log: &'a str,
    /// Extra arguments of the gateway.
    gateway_args: Vec<OsString>,
    /// The worker's arguments after `worker --nats-url URL --data-dir DIR`.
    worker_args: Vec<OsString>,
    /// Extra environment for the worker.
    worker_env: Vec<(&'static str, String)>,
    /// nats-server's monitoring port (`-m`; on the config's loopback host).
    nats_monitor_port: Option<u16>,
}

/// The sim cluster of the `api` bench.
async fn start(args: &ApiArgs) -> Result<Cluster> {
    let os = |s: &str| OsString::from(s);
    let mut worker_args: Vec<OsString> = vec![
        os("--driver"),
        os("sim"),
        os("--host-name"),
        os("bench-sim"),
        os("--parallelism"),
        os(&args.worker_parallelism.to_string()),
        os("--sim-boot-delay-ms"),
        os(&args.sim_boot_delay_ms.to_string()),
        os("--sim-ready-delay-ms"),
        os(&args.sim_ready_delay_ms.to_string()),
        // Room for every VM of the run: memory and disk are not what is measured.
        os("--sim-memory-mib"),
        os(&(1u64 << 40).to_string()),
        os("--sim-disk-gb"),
        os(&(1u64 << 40).to_string()),
    ];
    if let Some((first, last)) = sim_port_range(args)? {
        worker_args.extend([os("--port-range"), os(&format!("{first}-{last}"))]);
    }
    start_cluster(ClusterSpec {
        vmplane: find_vmplane(&args.vmplane)?,
        nats_server: &args.nats_server,
        keep_tmp: args.keep_tmp,
        accept_wait_ms: args.accept_wait_ms,
        vmplane_log: &args.vmplane_log,
        gateway_args: Vec::new(),
        worker_args,
        worker_env: Vec::new(),
        nats_monitor_port: args.nats_monitor_port,
    })
    .await
}

/// VMs the run creates (one host port each).
fn vms_created(args: &ApiArgs) -> usize {
    args.preload + args.warmup + args.vms + args.throughput_count
}

/// A worker `--port-range` wide enough for every VM of the run, when the
/// default 10,000 ports are not (`None`: the default will do).
fn sim_port_range(args: &ApiArgs) -> Result<Option<(usize, usize)>> {
    let total = vms_created(args);
    if total < SIM_PORTS {
        return Ok(None);
    }
    // A margin for VMs the bench does not count, e.g. of a POST that timed out after its command was appended.
    let wanted = total + 100;
    let first = if 20_000 + wanted < usize::from(u16::MAX) { 20_000 } else { SIM_WIDE_FIRST_PORT };
    ensure!(
        first + wanted < usize::from(u16::MAX),
        "this run would create {total} VMs, each holding a host port of the worker's --port-range (ports are 16-bit: at most {} VMs); lower --preload or --throughput-count",
        usize::from(u16::MAX) - SIM_WIDE_FIRST_PORT - 100
    );
    Ok(Some((first, first + wanted)))
}

async fn start_cluster(spec: ClusterSpec<'_>) -> Result<Cluster> {
    let vmplane = spec.vmplane;
    ensure!(
        spec.nats_server.is_file(),
        "nats-server not found at {} (Debian: `apt-get install nats-server`), or pass --nats-server PATH",
        spec.nats_server.display()
    );
    let tmp = tempfile::Builder::new().prefix("vmplane-bench-").tempdir().context("creating a temp dir")?;
    let dir = tmp.path().to_owned();
    let (nats_port, http_port) = free_ports()?;
    let admin_token = format!("vmpbench_{}", OpId::new());
    let mut c = Cluster {
        gateway: None,
        worker: None,
        webhooks: None,
        nats: None,
        tmp: Some(tmp),
        keep_tmp: spec.keep_tmp,
        nats_url: format!("nats://127.0.0.1:{nats_port}"),
        base: format!("http://127.0.0.1:{http_port}"),
        admin_token,
        dir: dir.clone(),
        gateway_spawn: None,
    };

    let os = |s: &str| OsString::from(s);
    // NATS as vmplane deploys it: authorization on, a user per role (`vmplane nats init`).
    let nats_dir = dir.join("nats");
    let init = Command::new(&vmplane)
        .args([
            os("nats"),
            os("init"),
            os("--out-dir"),
            nats_dir.clone().into(),
            os("--listen"),
            os(&format!("127.0.0.1:{nats_port}")),
            os("--server-name"),
            os("bench"),
        ])
        .output()
        .context("running vmplane nats init")?;
    ensure!(init.status.success(), "vmplane nats init: {}", String::from_utf8_lossy(&init.stderr));
    let mut nats_args = vec![os("-c"), nats_dir.join("nats.conf").into()];
    if let Some(port) = spec.nats_monitor_port {
        nats_args.extend([os("-m"), os(&port.to_string())]);
    }
    c.nats = Some(Proc::spawn("nats-server", spec.nats_server, &nats_args, &[], dir.join("nats-server.log"))?);
    wait_nats(&mut c).await?;

    let env = [("VMPLANE_ADMIN_TOKEN", c.admin_token.as_str()), ("RUST_LOG", spec.vmplane_log)];
    let mut gw_args: Vec<OsString> = vec![
        os("gateway"),
        os("--nats-url"),
        os(&c.nats_url),
        os("--nats-creds"),
        nats_dir.join("gateway.nk").into(),
        os("--data-dir"),
        dir.join("gateway").into(),
        os("--listen"),
        os(&format!("127.0.0.1:{http_port}")),
        os("--rate-limit"),
        os("0"),
    ];
    if let Some(ms) = spec.accept_wait_ms {
        gw_args.extend([os("--accept-wait-ms"), os(&ms.to_string())]);
    }
    gw_args.extend(spec.gateway_args);
    c.gateway = Some(Proc::spawn("vmplane gateway", &vmplane, &gw_args, &env, dir.join("gateway.log"))?);
    c.gateway_spawn = Some(GatewaySpawn { program: vmplane.clone(), args: gw_args, admin_token: c.admin_token.clone(), log: spec.vmplane_log.to_owned() });
    let mut wk_args: Vec<OsString> = vec![
        os("worker"),
        os("--nats-url"),
        os(&c.nats_url),
        os("--nats-creds"),
        nats_dir.join("worker.nk").into(),
        os("--data-dir"),
        dir.join("worker").into(),
    ];
    wk_args.extend(spec.worker_args);
    let mut wk_env: Vec<(&str, &str)> = env.to_vec();
    wk_env.extend(spec.worker_env.iter().map(|(k, v)| (*k, v.as_str())));
    c.worker = Some(Proc::spawn("vmplane worker", &vmplane, &wk_args, &wk_env, dir.join("worker.log"))?);
    Ok(c)
}

/// Until nats-server accepts connections and JetStream answers (10 s).
async fn wait_nats(c: &mut Cluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.check_alive()?;
        if let Ok(client) = admin_options(&c.dir)?.connection_timeout(Duration::from_secs(1)).connect(&c.nats_url).await {
            let js = jetstream::new(client);
            if js.get_stream("NO_SUCH_STREAM_PROBE").await.is_err_and(|e| e.to_string().contains("not found")) {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "nats-server did not become ready within 10 s; end of its log:\n{}", tail(&c.nats.as_ref().unwrap().log, 25));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Until `/readyz` is 200 and a host is `online` (within `limit`).
async fn wait_vmplane(c: &mut Cluster, http: &reqwest::Client, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let mut last;
    loop {
        c.check_alive()?;
        match http.get(format!("{}/readyz", c.base)).send().await {
            Ok(r) if r.status().is_success() => break,
            Ok(r) => last = format!("/readyz {}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = format!("/readyz: {e}"),
        }
        ensure!(Instant::now() < deadline, "the gateway was not ready within {limit:?} ({last})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        c.check_alive()?;
        let r = http.get(format!("{}/v1/hosts", c.base)).bearer_auth(&c.admin_token).send().await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            if let Some(h) = body.as_array().into_iter().flatten().find(|h| h["status"] == "online") {
                return Ok(h["id"].as_str().unwrap_or_default().to_owned());
            }
            last = format!("hosts: {body}");
        } else {
            last = format!("/v1/hosts {status}: {body}");
        }
        ensure!(
            Instant::now() < deadline,
            "no host came online within {limit:?} ({last}); end of the worker's log:\n{}",
            tail(&c.worker.as_ref().unwrap().log, 25)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- statistics

#[derive(Default)]
struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    /// One table row: label (padded to `width`), count, mean, p50, p99, max in ms.
    fn row(&self, o: &mut String, width: usize, label: &str) -> std::fmt::Result {
        use std::fmt::Write;
        let sorted = self.sorted();
        writeln!(
            o,
            "{label:<width$} {:>6} {:>9} {:>9} {:>9} {:>9}",
            sorted.len(),
            ms(self.mean()),
            ms(Stats::pct(&sorted, 50.0)),
            ms(Stats::pct(&sorted, 99.0)),
            ms(sorted.last().copied().unwrap_or_default())
        )
    }

    fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }
    fn extend(&mut self, o: Stats) {
        self.samples.extend(o.samples);
    }
    fn sorted(&self) -> Vec<Duration> {
        let mut s = self.samples.clone();
        s.sort_unstable();
        s
    }
    /// Nearest-rank percentile.
    fn pct(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }
    fn p50(&self) -> Duration {
        Self::pct(&self.sorted(), 50.0)
    }
    fn p99(&self) -> Duration {
        Self::pct(&self.sorted(), 99.0)
    }
    fn mean(&self) -> Duration {
        if self.samples.is_empty() { Duration::ZERO } else { self.samples.iter().sum::<Duration>() / self.samples.len() as u32 }
    }
    /// p50 of the first and the last tenth, in sample order (to show drift).
    fn drift(&self) -> Option<(Duration, Duration)> {
        let n = self.samples.len() / 10;
        if n < 3 {
            return None;
        }
        let p50 = |s: &[Duration]| {
            let mut v = s.to_vec();
            v.sort_unstable();
            Self::pct(&v, 50.0)
        };
        Some((p50(&self.samples[..n]), p50(&self.samples[self.samples.len() - n..])))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Outcomes other than the expected status, by kind.
#[derive(Default)]
struct Errors(BTreeMap<String, usize>);

impl Errors {
    fn add(&mut self, what: impl Into<String>) {
        *self.0.entry(what.into()).or_default() += 1;
    }
    fn merge(&mut self, o: Errors) {
        for (k, v) in o.0 {
            *self.0.entry(k).or_default() += v;
        }
    }
    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

// ---------------------------------------------------------------- raw JetStream

const RAW_STREAM: &str = "BENCH";

/// The bytes of a representative command: the `CommandEnvelope` the gateway
/// publishes for `POST /v1/vms {"name": ...}`, rmp-serde encoded as the bus does.
fn representative_command() -> Result<Vec<u8>> {
    let host = HostId::new();
    let env = CommandEnvelope {
        op: OpId::new(),
        org: OrgId::DEFAULT,
        project: ProjectId::DEFAULT,
        actor: "admin".into(),
        issued_at: OffsetDateTime::now_utc(),
        command: vmplane_domain::Command::Vm { vm: VmId::new(), command: VmCommand::Create { spec: Box::new(VmSpec::named("seq-123")), host } },
    };
    Ok(event::encode(&env)?)
}

/// The payloads of one create's messages, encoded as vmplane encodes them:
/// its command and its seven events (created, provisioning started, network
/// allocated, disk prepared, booted, ready, operation finished).
fn representative_create() -> Result<pattern::Payloads> {
    use vmplane_domain::event::{Envelope, Event};
    use vmplane_domain::vm::{DiskInfo, NetworkRuntime, Outcome, VmEvent};
    let (vm, op) = (VmId::new(), OpId::new());
    let network = NetworkRuntime { ip: Some("10.0.2.15".into()), mac: Some("52:54:00:12:34:56".into()), ssh_port: Some(20022), port_forwards: Vec::new() };
    let events = [
        VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: Box::new(VmSpec::named("seq-123")), host: HostId::new() },
        VmEvent::ProvisioningStarted,
        VmEvent::NetworkAllocated { network },
        VmEvent::DiskPrepared { disk: DiskInfo { location: format!("/var/lib/vmplane/vms/{vm}/root.qcow2"), size_gb: 10 } },
        VmEvent::Booted,
        VmEvent::Ready,
        VmEvent::OperationFinished { outcome: Outcome::Succeeded },
    ]
    .map(|e| {
        let env = Envelope::new(OrgId::DEFAULT, Some(ProjectId::DEFAULT), vm.to_string(), Some(op), Event::Vm(e), OffsetDateTime::now_utc());
        event::encode(&env).map(Bytes::from)
    });
    let [a, b, c, d, e, f, g] = events;
    Ok(pattern::Payloads { command: Bytes::from(representative_command()?), events: [a?, b?, c?, d?, e?, f?, g?] })
}

/// A subject shaped like a vmplane command subject (`vmplane.cmd.host.<host>.<vm>`).
fn raw_subject(host: &str) -> String {
    format!("bench.cmd.host.{host}.{}", VmId::new())
}

/// Connect options of the NATS admin of the cluster in `dir` (the raw baseline and readiness probe).
fn admin_options(dir: &Path) -> Result<async_nats::ConnectOptions> {
    let seed = std::fs::read_to_string(dir.join("nats").join("admin.nk")).context("reading the NATS admin seed")?;
    Ok(async_nats::ConnectOptions::with_nkey(seed.trim().to_owned()))
}

async fn raw_setup(dir: &Path, nats_url: &str) -> Result<jetstream::Context> {
    let client = admin_options(dir)?.name("vmplane-bench").connect(nats_url).await.context("connecting to nats-server")?;
    let js = jetstream::new(client);
    // Configured like vmplane's command stream (file storage, work queue).
    js.create_stream(stream_like_vmplane(RAW_STREAM, "bench.>", stream::RetentionPolicy::WorkQueue))
        .await
        .map_err(|e| anyhow!("creating stream {RAW_STREAM}: {e}"))?;
    Ok(js)
}

/// A stream stored and deduplicated as vmplane's own streams are (file
/// storage, new messages refused when full, a two-minute duplicate window).
fn stream_like_vmplane(name: &str, subject: &str, retention: stream::RetentionPolicy) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        retention,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

async fn raw_publish(js: &jetstream::Context, host: &str, payload: &Bytes) -> Result<()> {
    js.publish(raw_subject(host), payload.clone()).await?.await?;
    Ok(())
}

async fn raw_sequential(js: &jetstream::Context, payload: &Bytes, warmup: usize, count: usize, limit: Duration) -> Result<(Stats, Errors)> {
    let host = HostId::new().to_string();
    let deadline = Instant::now() + limit;
    let (mut stats, mut errors) = (Stats::default(), Errors::default());
    for i in 0..warmup + count {
        if Instant::now() > deadline {
            errors.add("raw sequential: phase time limit reached");
            break;
        }
        let t = Instant::now();
        match raw_publish(js, &host, payload).await {
            Ok(()) if i >= warmup => stats.push(t.elapsed()),
            Ok(()) => {}
            Err(e) => errors.add(format!("raw publish: {e}")),
        }
    }
    Ok((stats, errors))
}

/// `count` publishes shared by `concurrency` tasks on one connection (as the gateway has one).
async fn raw_concurrent(
    js: &jetstream::Context,
    payload: &Bytes,
    concurrency: usize,
    count: usize,
    limit: Duration,
) -> Result<(Stats, Errors, Duration, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let host = HostId::new().to_string();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (js, payload, next, host) = (js.clone(), payload.clone(), next.clone(), host.clone());
            tokio::spawn(async move {
                let (mut stats, mut errors) = (Stats::default(), Errors::default());
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    if Instant::now() > deadline {
                        errors.add("raw concurrent: phase time limit reached");
                        break;
                    }
                    let t = Instant::now();
                    match raw_publish(&js, &host, &payload).await {
                        Ok(()) => stats.push(t.elapsed()),
                        Err(e) => errors.add(format!("raw publish: {e}")),
                    }
                }
                (stats, errors)
            })
        })
        .collect();
    let (stats, errors) = gather(tasks).await?;
    let wall = started.elapsed();
    let ok = stats.samples.len();
    Ok((stats, errors, wall, ok))
}

/// The latencies and errors of concurrent client tasks, merged.
async fn gather(tasks: Vec<tokio::task::JoinHandle<(Stats, Errors)>>) -> Result<(Stats, Errors)> {
    let (mut stats, mut errors) = (Stats::default(), Errors::default());
    for t in tasks {
        let (s, e) = t.await?;
        stats.extend(s);
        errors.merge(e);
    }
    Ok((stats, errors))
}

// ---------------------------------------------------------------- vmplane API

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// One accepted create.
struct Accepted {
    vm: String,
    op: String,
    op_status: String,
}

impl Api {
    async fn create(&self, name: &str) -> Result<Accepted, String> {
        self.accept(self.http.post(format!("{}/v1/vms", self.base)).json(&json!({ "name": name })), "POST /v1/vms").await
    }

    /// Send a command request and read its 202 answer.
    async fn accept(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Accepted, String> {
        let r = request.bearer_auth(&self.token).send().await.map_err(|e| if e.is_timeout() { format!("{what}: timeout") } else { format!("{what}: {e}") })?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| format!("{what}: reading body: {e}"))?;
        if status != reqwest::StatusCode::ACCEPTED {
            let code = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["code"].as_str().map(str::to_owned)).unwrap_or_default();
            return Err(format!("{what}: HTTP {} {code}", status.as_u16()));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{what}: bad JSON: {e}"))?;
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok(Accepted { vm: s(&v["id"]), op: s(&v["operation"]["id"]), op_status: s(&v["operation"]["status"]) })
    }

    /// Long-poll the operation until it is terminal; its final status.
    async fn wait_op(&self, op: &str, deadline: Instant) -> Result<String, String> {
        loop {
            let r = self
                .http
                .get(format!("{}/v1/operations/{op}?wait=10", self.base))
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| format!("GET /v1/operations: {e}"))?;
            let status = r.status();
            if !status.is_success() {
                return Err(format!("GET /v1/operations: HTTP {}", status.as_u16()));
            }
            let v: Value = r.json().await.map_err(|e| format!("GET /v1/operations: {e}"))?;
            let st = v["status"].as_str().unwrap_or_default().to_owned();
            if st == "succeeded" || st == "failed" {
                return Ok(st);
            }
            if Instant::now() > deadline {
                return Err(format!("operation still {st} at the phase time limit"));
            }
        }
    }

    async fn get_vm(&self, id: &str) -> Result<String, String> {
        let r = self.http.get(format!("{}/v1/vms/{id}", self.base)).bearer_auth(&self.token).send().await.map_err(|e| format!("GET /v1/vms/{{id}}: {e}"))?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| format!("GET /v1/vms/{{id}}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET /v1/vms/{{id}}: HTTP {}", status.as_u16()));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("GET /v1/vms/{{id}}: {e}"))?;
        Ok(v["status"].as_str().unwrap_or_default().to_owned())
    }

    /// `POST /v1/vms/{id}/<action>` (start, stop) until the 202.
    async fn act(&self, id: &str, action: &str) -> Result<Accepted, String> {
        self.accept(self.http.post(format!("{}/v1/vms/{id}/{action}", self.base)), &format!("POST /v1/vms/{{id}}/{action}")).await
    }

    /// `GET /v1/vms?status=running&limit=100`, the body read in full.
    async fn list_running_page(&self) -> Result<(), String> {
        const WHAT: &str = "GET /v1/vms?status=running&limit=100";
        let r = self
            .http
            .get(format!("{}/v1/vms?status=running&limit=100", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("{WHAT}: {e}"))?;
        let status = r.status();
        r.bytes().await.map_err(|e| format!("{WHAT}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{WHAT}: HTTP {}", status.as_u16()));
        }
        Ok(())
    }

    /// How many events `GET /v1/vms/{id}/events` lists.
    async fn history_len(&self, id: &str) -> Result<usize, String> {
        const WHAT: &str = "GET /v1/vms/{id}/events";
        let r = self.http.get(format!("{}/v1/vms/{id}/events", self.base)).bearer_auth(&self.token).send().await.map_err(|e| format!("{WHAT}: {e}"))?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| format!("{WHAT}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{WHAT}: HTTP {}", status.as_u16()));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{WHAT}: {e}"))?;
        v.as_array().map(Vec::len).ok_or_else(|| format!("{WHAT}: not a JSON array"))
    }

    /// How many VMs are in `status` (total of a one-item page).
    async fn count(&self, status: &str) -> Result<u64> {
        let r = self.http.get(format!("{}/v1/vms?status={status}&limit=1", self.base)).bearer_auth(&self.token).send().await?;
        ensure!(r.status().is_success(), "GET /v1/vms?status={status}: HTTP {}", r.status());
        let v: Value = r.json().await?;
        v["pagination"]["total_items"].as_u64().context("no pagination.total_items")
    }
}

/// Results of the sequential vmplane phase.
#[derive(Default)]
struct Sequential {
    post: Stats,
    running: Stats,
    vms: Vec<String>,
    /// 202s whose operation was still `pending`: the accept wait ran out.
    accepted_pending: usize,
    errors: Errors,
}

async fn vmplane_sequential(api: &Api, warmup: usize, count: usize, limit: Duration) -> Sequential {
    let deadline = Instant::now() + limit;
    let mut out = Sequential::default();
    for i in 0..warmup + count {
        if Instant::now() > deadline {
            out.errors.add("vmplane sequential: phase time limit reached");
            break;
        }
        let measured = i >= warmup;
        let name = if measured { format!("seq-{}", i - warmup) } else { format!("warm-{i}") };
        let t = Instant::now();
        let acc = match api.create(&name).await {
            Ok(a) => a,
            Err(e) => {
                out.errors.add(e);
                continue;
            }
        };
        let posted = t.elapsed();
        if acc.op_status == "pending" {
            out.accepted_pending += 1;
        }
        match api.wait_op(&acc.op, deadline).await {
            Ok(st) if st == "succeeded" => {
                if measured {
                    out.post.push(posted);
                    out.running.push(t.elapsed());
                    out.vms.push(acc.vm);
                }
            }
            Ok(st) => out.errors.add(format!("create operation {st}")),
            Err(e) => out.errors.add(e),
        }
    }
    out
}

async fn vmplane_gets(api: &Api, vms: &[String], rounds: usize, limit: Duration) -> (Stats, Errors) {
    let deadline = Instant::now() + limit;
    let (mut stats, mut errors) = (Stats::default(), Errors::default());
    'rounds: for _ in 0..rounds {
        for id in vms {
            if Instant::now() > deadline {
                errors.add("GET phase: time limit reached");
                break 'rounds;
            }
            let t = Instant::now();
            match api.get_vm(id).await {
                Ok(st) => {
                    stats.push(t.elapsed());
                    if st != "running" {
                        errors.add(format!("GET /v1/vms/{{id}}: status {st}, expected running"));
                    }
                }
                Err(e) => errors.add(e),
            }
        }
    }
    (stats, errors)
}

// ---------------------------------------------------------------- the run

async fn run(args: ApiArgs) -> Result<bool> {
    ensure!(
        args.vms > 0 && args.concurrency > 0 && args.throughput_count > 0 && args.raw_count > 0 && args.raw_throughput_count > 0,
        "counts must be positive"
    );
    let port_range = sim_port_range(&args)?;
    let limit = Duration::from_secs(args.phase_timeout_secs);

    let nats_version =
        Command::new(&args.nats_server).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let mut cluster = start(&args).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).tcp_nodelay(true).pool_max_idle_per_host(args.concurrency + 4).build()?;
    let host = wait_vmplane(&mut cluster, &http, Duration::from_secs(30)).await?;
    let payload = Bytes::from(representative_command()?);
    let post_body_len = serde_json::to_vec(&json!({"name": "seq-123"}))?.len();
    eprintln!(
        "vmplane-bench: nats-server at {}, gateway at {}, host {host} online; {} (payload {} B)",
        cluster.nats_url,
        cluster.base,
        nats_version,
        payload.len()
    );

    // Raw JetStream first, while vmplane idles (only heartbeats).
    let js = raw_setup(&cluster.dir, &cluster.nats_url).await?;
    eprintln!("vmplane-bench: raw JetStream, {} sequential publishes", args.raw_count);
    let (raw_seq, raw_seq_err) = raw_sequential(&js, &payload, args.warmup, args.raw_count, limit).await?;
    eprintln!("vmplane-bench: raw JetStream, {} publishes by {} tasks", args.raw_throughput_count, args.concurrency);
    let (raw_conc, raw_conc_err, raw_wall, raw_ok) = raw_concurrent(&js, &payload, args.concurrency, args.raw_throughput_count, limit).await?;
    cluster.check_alive()?;
    let create_pattern = if args.pattern_count > 0 {
        eprintln!("vmplane-bench: a create's messages on bare NATS, {} creates by {} tasks", args.pattern_count, args.concurrency);
        let connect = |name: &'static str| {
            let (options, url) = (admin_options(&cluster.dir), cluster.nats_url.clone());
            async move { options?.name(name).connect(url).await.context("connecting to nats-server") }
        };
        let p = pattern::run(connect, representative_create()?, args.concurrency, args.pattern_count, limit).await?;
        cluster.check_alive()?;
        Some(p)
    } else {
        None
    };

    let api = Arc::new(Api { http: http.clone(), base: cluster.base.clone(), token: cluster.admin_token.clone() });
    let run_started = Instant::now();
    let preload = if args.preload > 0 {
        eprintln!("vmplane-bench: preload, {} VMs by {} clients, until all run", args.preload, args.concurrency);
        let p = api_phases::creates(&api, "pre", args.concurrency, args.preload, limit).await?;
        cluster.check_alive()?;
        Some(p)
    } else {
        None
    };
    let rss_preload = api_phases::cluster_rss(&cluster);

    eprintln!("vmplane-bench: vmplane, {} VMs one after another ({} warm-up)", args.vms, args.warmup);
    let seq = vmplane_sequential(&api, args.warmup, args.vms, limit).await;
    cluster.check_alive()?;
    eprintln!("vmplane-bench: vmplane, {} x GET /v1/vms/{{id}}", seq.vms.len() * args.get_rounds);
    let (gets, get_err) = vmplane_gets(&api, &seq.vms, args.get_rounds, limit).await;
    cluster.check_alive()?;
    eprintln!("vmplane-bench: vmplane, {} POSTs by {} clients, until all run", args.throughput_count, args.concurrency);
    let conc_before = preload.as_ref().map_or(0, |p| p.burst.accepted) + args.warmup + seq.vms.len();
    let conc = api_phases::creates(&api, "tp", args.concurrency, args.throughput_count, limit).await?;
    cluster.check_alive()?;

    // Events per create, before any stop or start adds events to the stream.
    let (stream_events, _) = api_phases::event_stream_state(&js).await?;
    let created = preload.as_ref().map_or(0, |p| p.burst.accepted) + args.warmup + seq.vms.len() + conc.burst.accepted;
    let sample: Vec<String> = seq.vms.iter().take(args.events_sample).cloned().collect();
    let (history_mean, history_err) = api_phases::events_per_vm(&api, &sample).await;

    let mut fleet: Vec<String> = preload.as_ref().map(|p| p.burst.vms.clone()).unwrap_or_default();
    fleet.extend(seq.vms.iter().cloned());
    fleet.extend(conc.burst.vms.iter().cloned());
    let start_stop = if args.start_stop_count > 0 {
        // Preloaded VMs first, then those of the throughput phase (all running).
        let mut pick: Vec<String> = preload.as_ref().map(|p| p.burst.vms.clone()).unwrap_or_default();
        pick.extend(conc.burst.vms.iter().cloned());
        pick.truncate(args.start_stop_count);
        eprintln!("vmplane-bench: {} stops then {} starts by {} clients", pick.len(), pick.len(), args.concurrency);
        let s = api_phases::start_stop(&api, pick, args.concurrency, limit).await?;
        cluster.check_alive()?;
        Some(s)
    } else {
        None
    };

    eprintln!("vmplane-bench: {} x GET /v1/vms/{{id}} and GET /v1/vms?status=running&limit=100 with {} VMs", args.fleet_gets, fleet.len());
    let (fleet_get, fleet_list, fleet_err) = api_phases::fleet_reads(&api, &fleet, args.fleet_gets, limit).await;
    cluster.check_alive()?;
    let rss_end = api_phases::cluster_rss(&cluster);
    let end = api_phases::counts(&api).await?;
    let run_wall = run_started.elapsed();

    let rebuild = if args.no_rebuild {
        None
    } else {
        eprintln!("vmplane-bench: stopping the gateway; vmplane projections rebuild, then a bare read of the event stream");
        let r = api_phases::rebuild_vs_bare(&mut cluster, &api, &http, &js, limit).await?;
        cluster.check_alive()?;
        Some(r)
    };

    // ------------------------------------------------ report
    let raw_rate = raw_ok as f64 / raw_wall.as_secs_f64();
    let vmp_rate = conc.burst.rate();
    let mut o = String::new();
    let c = args.concurrency;
    let n_fleet = fleet.len();
    writeln!(o)?;
    writeln!(
        o,
        "vmplane-bench: N={} sequential VMs, C={c}, {} POSTs / {} raw publishes in the throughput phases, preload {}, {} stops+starts, sim delays {}/{} ms, worker parallelism {}, accept wait {}, worker port range {}",
        args.vms,
        args.throughput_count,
        args.raw_throughput_count,
        args.preload,
        start_stop.as_ref().map_or(0, |s| s.stop.vms.len()),
        args.sim_boot_delay_ms,
        args.sim_ready_delay_ms,
        args.worker_parallelism,
        args.accept_wait_ms.map_or_else(|| "default (2000 ms)".to_owned(), |ms| format!("{ms} ms")),
        port_range.map_or_else(|| "default (20000-29999)".to_owned(), |(a, b)| format!("{a}-{b}"))
    )?;
    writeln!(o, "payload: raw publish = encoded CommandEnvelope(Create) = {} B; the POST body is {post_body_len} B of JSON", payload.len())?;
    writeln!(o)?;
    writeln!(o, "{:<60} {:>6} {:>9} {:>9} {:>9} {:>9}", "latency (ms)", "count", "mean", "p50", "p99", "max")?;
    let row = |o: &mut String, label: &str, s: &Stats| s.row(o, 60, label);
    row(&mut o, "raw JetStream publish+ack, sequential", &raw_seq)?;
    row(&mut o, "vmplane POST /v1/vms -> 202, sequential", &seq.post)?;
    row(&mut o, "vmplane POST sent -> op succeeded (VM running)", &seq.running)?;
    row(&mut o, "vmplane GET /v1/vms/{id}", &gets)?;
    row(&mut o, &format!("raw JetStream publish+ack, {c} concurrent"), &raw_conc)?;
    if let Some(p) = &create_pattern {
        row(&mut o, &format!("bare-NATS create pattern, command -> 1st event, {c} conc."), &p.accepted)?;
    }
    if let Some(p) = &preload {
        row(&mut o, &format!("vmplane preload POST /v1/vms -> 202, {c} concurrent"), &p.burst.post)?;
    }
    row(&mut o, &format!("vmplane POST /v1/vms -> 202, {c} concurrent"), &conc.burst.post)?;
    if let Some(s) = &start_stop {
        row(&mut o, &format!("vmplane POST /v1/vms/{{id}}/stop -> 202, {c} concurrent"), &s.stop.post)?;
        row(&mut o, &format!("vmplane POST /v1/vms/{{id}}/start -> 202, {c} concurrent"), &s.start.post)?;
    }
    row(&mut o, &format!("vmplane GET /v1/vms/{{id}}, {n_fleet} VMs"), &fleet_get)?;
    row(&mut o, &format!("vmplane GET /v1/vms?status=running&limit=100, {n_fleet} VMs"), &fleet_list)?;
    writeln!(o)?;

    writeln!(
        o,
        "{:<60} {:>6} {:>9} {:>11} {:>11} {:>11} {:>14}",
        &format!("throughput (C={c})"),
        "count",
        "wall s",
        "per second",
        "first 1/10",
        "last 1/10",
        "settled after"
    )?;
    writeln!(o, "{:<60} {:>6} {:>9.3} {:>11.1}", "raw JetStream publish+ack", raw_ok, raw_wall.as_secs_f64(), raw_rate)?;
    if let Some(p) = &create_pattern {
        let settled = p.done_after_last.map_or_else(|| "TIMEOUT".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()));
        let label = "bare-NATS create pattern (1st event), all 7 events in";
        writeln!(o, "{label:<60} {:>6} {:>9.3} {:>11.1} {:>11} {:>11} {settled:>14}", p.accepted.samples.len(), p.wall.as_secs_f64(), p.rate(), "-", "-")?;
    }
    let burst_row = |o: &mut String, label: &str, b: &api_phases::Burst, settled: Option<Duration>| {
        let (first, last) = b.tenths().map_or_else(|| ("-".to_owned(), "-".to_owned()), |(_, f, l)| (format!("{f:.1}"), format!("{l:.1}")));
        let settled = settled.map_or_else(|| "TIMEOUT".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()));
        writeln!(o, "{label:<60} {:>6} {:>9.3} {:>11.1} {first:>11} {last:>11} {settled:>14}", b.accepted, b.wall.as_secs_f64(), b.rate())
    };
    if let Some(p) = &preload {
        burst_row(&mut o, "vmplane preload POST /v1/vms accepted (202), all running", &p.burst, p.settled_after_last_202)?;
    }
    burst_row(&mut o, "vmplane POST /v1/vms accepted (202), all running", &conc.burst, conc.settled_after_last_202)?;
    if let Some(s) = &start_stop {
        burst_row(&mut o, "vmplane POST /v1/vms/{id}/stop accepted (202), all stopped", &s.stop, s.stopped_after_last_202)?;
        burst_row(&mut o, "vmplane POST /v1/vms/{id}/start accepted (202), all running", &s.start, s.running_after_last_202)?;
    }
    match conc.settled_after_start {
        Some(d) => writeln!(
            o,
            "{:<60} {:>6} {:>9.3} {:>11.1}",
            "vmplane same VMs: first POST -> all running",
            conc.burst.accepted,
            d.as_secs_f64(),
            conc.burst.accepted as f64 / d.as_secs_f64()
        )?,
        None => writeln!(o, "{:<60} {:>6} {:>9} {:>11}", "vmplane same VMs: first POST -> all running", conc.burst.accepted, "TIMEOUT", "-")?,
    }
    writeln!(
        o,
        "  (first/last 1/10: accepted/s over the first and the last tenth of the 202s; settled after: from the phase's last 202 until all its VMs were there)"
    )?;
    writeln!(o)?;

    if let Some(r) = &rebuild {
        writeln!(o, "{:<60} {:>8} {:>9} {:>11}", &format!("event stream read ({} events)", r.events), "read", "wall s", "per second")?;
        writeln!(
            o,
            "{:<60} {:>8} {:>9.3} {:>11.1}",
            "vmplane projections rebuild (process start to exit)",
            r.events,
            r.rebuild_wall.as_secs_f64(),
            r.rebuild_rate()
        )?;
        writeln!(
            o,
            "{:<60} {:>8} {:>9.3} {:>11.1}",
            "bare ordered pull consumer (async-nats, no decoding)",
            r.bare_read,
            r.bare_wall.as_secs_f64(),
            r.bare_rate()
        )?;
        writeln!(o, "  rebuild said: {}", r.rebuild_said)?;
        writeln!(
            o,
            "  gateway restarted on the rebuilt projection: {} running, {} stopped, {} failed (before the rebuild: {}, {}, {})",
            r.after.running, r.after.stopped, r.after.failed, r.before.running, r.before.stopped, r.before.failed
        )?;
        writeln!(o)?;
    }

    let mib = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |m| format!("{m:.1}"));
    writeln!(o, "{:<60} {:>9} {:>9}", "resident memory (VmRSS, MiB)", "gateway", "worker")?;
    writeln!(
        o,
        "{:<60} {:>9} {:>9}",
        &preload.as_ref().map_or_else(|| "before the phases (no preload)".to_owned(), |p| format!("after the preload ({} VMs)", p.burst.accepted)),
        mib(rss_preload.0),
        mib(rss_preload.1)
    )?;
    writeln!(o, "{:<60} {:>9} {:>9}", &format!("at the end of the phases ({} VMs)", end.running + end.stopped + end.failed), mib(rss_end.0), mib(rss_end.1))?;
    writeln!(o)?;
    writeln!(
        o,
        "events per create: {:.2} (event stream: {stream_events} events / {created} VMs created, before the start/stop phase; includes host events)",
        stream_events as f64 / created.max(1) as f64
    )?;
    if let Some(h) = history_mean {
        writeln!(o, "events per create: {h:.2} (mean length of GET /v1/vms/{{id}}/events over {} sequentially created VMs)", sample.len())?;
    }
    writeln!(o)?;

    writeln!(o, "ratios (issue 10's targets in brackets)")?;
    // One line: label, value (with its unit), and the target with whether this run met it.
    let ratio = |o: &mut String, label: &str, value: String, goal: Option<(&str, bool)>| {
        let goal = goal.map_or_else(String::new, |(g, ok)| format!("[{g}: {}]", if ok { "met" } else { "NOT met" }));
        writeln!(o, "  {label:<70} {value:>10}  {goal}")
    };
    let creates_ratio = vmp_rate / raw_rate;
    ratio(&mut o, &format!("accepted creates/s / raw publish+ack/s (C={c})"), format!("{creates_ratio:.3}"), Some((">= 0.10", creates_ratio >= 0.10)))?;
    if let Some(p) = &create_pattern {
        let ceiling = p.rate() / raw_rate;
        ratio(&mut o, "bare-NATS create pattern/s / raw publish+ack/s (NATS's own ceiling)", format!("{ceiling:.3}"), None)?;
        ratio(&mut o, "accepted creates/s / bare-NATS create pattern/s", format!("{:.3}", vmp_rate / p.rate()), None)?;
    }
    let post_x = seq.post.p50().as_secs_f64() / raw_seq.p50().as_secs_f64();
    ratio(&mut o, "sequential POST -> 202 p50 / raw publish+ack p50", format!("{post_x:.1}x"), Some(("<= 5x", post_x <= 5.0)))?;
    let run_x = seq.running.p50().as_secs_f64() / raw_seq.p50().as_secs_f64();
    ratio(&mut o, "POST -> running p50 / raw publish+ack p50", format!("{run_x:.1}x"), Some(("<= 15x", run_x <= 15.0)))?;
    if let Some((n, first, last)) = conc.burst.tenths() {
        let flat = last / first;
        let label = format!("creates accepted/s, last / first tenth ({n} each), {conc_before} VMs before");
        // Targets set at 20,000 VMs are judged only there; below, the figure is shown without a verdict.
        ratio(&mut o, &label, format!("{flat:.3}"), (conc_before >= 20_000).then_some((">= 0.90 at 20,000 VMs", flat >= 0.90)))?;
    }
    if let Some((n, first, last)) = preload.as_ref().and_then(|p| p.burst.tenths()) {
        ratio(&mut o, &format!("preload accepted/s, last / first tenth ({n} each)"), format!("{:.3}", last / first), None)?;
    }
    let get_p99 = fleet_get.p99().as_secs_f64() * 1000.0;
    ratio(
        &mut o,
        &format!("GET /v1/vms/{{id}} p99 at {n_fleet} VMs"),
        format!("{get_p99:.3} ms"),
        (n_fleet >= 20_000).then_some(("<= 1 ms at 20,000 VMs", get_p99 <= 1.0)),
    )?;
    let list_p99 = fleet_list.p99().as_secs_f64() * 1000.0;
    ratio(
        &mut o,
        &format!("GET /v1/vms?status=running&limit=100 p99 at {n_fleet} VMs"),
        format!("{list_p99:.3} ms"),
        (n_fleet >= 20_000).then_some(("<= 5 ms at 20,000 VMs", list_p99 <= 5.0)),
    )?;
    ratio(&mut o, &format!("creates accepted/s (C={c})"), format!("{vmp_rate:.1}"), Some((">= 2000", vmp_rate >= 2000.0)))?;
    if let Some(d) = conc.settled_after_last_202 {
        ratio(&mut o, "creates all running after the last 202", format!("{:.3} s", d.as_secs_f64()), Some(("<= 1 s", d <= Duration::from_secs(1))))?;
    }
    if let Some(s) = &start_stop {
        for (what, b) in [("stops", &s.stop), ("starts", &s.start)] {
            ratio(&mut o, &format!("{what} accepted/s (C={c})"), format!("{:.1}", b.rate()), Some((">= 2000", b.rate() >= 2000.0)))?;
        }
    }
    if let Some(r) = &rebuild {
        ratio(&mut o, "rebuild events/s", format!("{:.1}", r.rebuild_rate()), Some((">= 50000", r.rebuild_rate() >= 50_000.0)))?;
        ratio(&mut o, "rebuild events/s / bare read messages/s", format!("{:.3}", r.rebuild_rate() / r.bare_rate()), None)?;
    }
    writeln!(o)?;
    writeln!(o, "drift (first tenth -> last tenth of a phase; latencies are p50)")?;
    for (label, s) in [("POST -> 202", &seq.post), ("POST -> running", &seq.running)] {
        if let Some((first, last)) = s.drift() {
            writeln!(o, "  {label:<20} {} ms -> {} ms", ms(first), ms(last))?;
        }
    }
    if let Some((n, first, last)) = conc.burst.tenths() {
        writeln!(o, "  accepted/s, C={c:<9}  {first:.1}/s over the first {n} POSTs -> {last:.1}/s over the last {n}")?;
    }
    writeln!(
        o,
        "  VMs at the end: {} running, {} stopped, {} failed; phases took {:.1} s after the raw baseline",
        end.running,
        end.stopped,
        end.failed,
        run_wall.as_secs_f64()
    )?;
    let pending = preload.as_ref().map_or(0, |p| p.burst.accepted_pending) + conc.burst.accepted_pending;
    if seq.accepted_pending + pending > 0 {
        let why = if args.accept_wait_ms == Some(0) { "accept wait is off" } else { "accept wait ran out" };
        writeln!(o, "  202s whose operation was still pending ({why}): {} sequential, {pending} concurrent", seq.accepted_pending)?;
    }

    let mut errors = Errors::default();
    let pattern_err = create_pattern.map(|p| p.errors).unwrap_or_default();
    for e in [raw_seq_err, raw_conc_err, pattern_err, seq.errors, get_err, history_err, fleet_err] {
        errors.merge(e);
    }
    if let Some(p) = preload {
        errors.merge(p.burst.errors);
        if p.settled_after_last_202.is_none() {
            errors.add("the preloaded VMs were not all running within the phase time limit");
        }
    }
    errors.merge(conc.burst.errors);
    if conc.settled_after_last_202.is_none() {
        errors.add("the concurrent phase's VMs were not all running within the phase time limit");
    }
    if let Some(s) = start_stop {
        errors.merge(s.stop.errors);
        errors.merge(s.start.errors);
        if s.stopped_after_last_202.is_none() {
            errors.add("the stopped VMs were not all stopped within the phase time limit");
        }
        if s.running_after_last_202.is_none() {
            errors.add("the started VMs were not all running within the phase time limit");
        }
    }
    if end.failed > 0 {
        errors.add(format!("{} VMs failed", end.failed));
    }
    if let Some(r) = &rebuild {
        if (r.after.running, r.after.stopped, r.after.failed) != (r.before.running, r.before.stopped, r.before.failed) {
            errors.add("the rebuilt projection shows other VM counts than before the rebuild");
        }
        if r.bare_read < r.events {
            errors.add("the bare read saw fewer messages than the event stream holds");
        }
    }
    writeln!(o)?;
    if errors.total() == 0 {
        writeln!(o, "errors: none (no non-2xx, no timeouts)")?;
    } else {
        writeln!(o, "ERRORS:")?;
        for (k, v) in &errors.0 {
            writeln!(o, "  {v:>6}  {k}")?;
        }
    }
    print!("{o}");

    drop(api);
    drop(http);
    cluster.stop();
    eprintln!("vmplane-bench: stopped nats-server, gateway and worker");
    Ok(errors.total() == 0)
}
