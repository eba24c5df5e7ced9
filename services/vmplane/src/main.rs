//! The `vmplane` binary: `up` runs everything for one machine; `gateway`,
//! `worker` and `webhooks` run the parts against a shared NATS; `projections rebuild`
//! replays the event stream into a fresh projection store; `nats init` writes
//! the NATS users and server configuration of an installation. The client
//! commands (`vm`, `volume`, `events`, `login`, ...) are `vmplane-cli`'s.
//!
//! Everything vmplane writes is private to its user: the process umask is
//! 077 and the data dir is 0700.

mod images;
mod nats;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vmplane_bus::Bus;
use vmplane_bus::auth::Role;
use vmplane_domain::catalog::{self, Catalog};
use vmplane_domain::host::{HostInfo, HostProfile, Pricing};
use vmplane_gateway::GatewayConfig;
use vmplane_gateway::app::sessions::Caps as SessionCaps;
use vmplane_gateway::projection::Projections;
use vmplane_gateway::routes::hatch::HatchConfig;
use vmplane_worker::WorkerConfig;
use vmplane_worker::claim::DataDirLock;
use vmplane_worker::driver::Driver;
use vmplane_worker::driver::capacity::{self, Reserve};
use vmplane_worker::driver::qemu::accel::{self, AccelChoice};
use vmplane_worker::driver::qemu::bridge;
use vmplane_worker::driver::qemu::{QemuConfig, QemuDriver};
use vmplane_worker::driver::sim::{SimConfig, SimDriver};

#[derive(Parser)]
#[command(name = "vmplane", version, about = "Virtual machines on KVM through an event-sourced control plane")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything for one machine: a local nats-server (unless --nats-url), the gateway, one worker and a webhook deliverer.
    Up(UpArgs),
    /// Run the HTTP gateway against a shared NATS.
    Gateway(GatewayArgs),
    /// Run a worker for this host against a shared NATS.
    Worker(WorkerArgs),
    /// Deliver webhooks against a shared NATS (any number may run; one is active).
    Webhooks(WebhooksArgs),
    /// Maintain the gateway's projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCmd,
    },
    /// NATS users and server configuration.
    Nats {
        #[command(subcommand)]
        command: NatsCmd,
    },
    /// Outside event subscribers on NATS (admin).
    Subscribers {
        #[command(subcommand)]
        command: SubscribersCmd,
    },
    /// The client commands (vm, volume, image, host, events, key, org,
    /// project, login, completions): the HTTP API of a gateway (docs/cli.md).
    #[command(flatten)]
    Client(vmplane_cli::Command),
}

#[derive(Subcommand)]
enum SubscribersCmd {
    /// Give an org's event subscriber its own NATS user: writes its NKey seed
    /// (0600), creates its durable pull consumer on the org's event subjects
    /// on the running server, adds the user to nats.conf (it may read only
    /// that consumer, its inbox and the org's event subjects) and reloads the
    /// running nats-server (SIGHUP to the pid in nats.pid). Prints a JSON
    /// summary: url, credentials file, stream, durable, inbox prefix.
    Create(SubscribersCreateArgs),
}

#[derive(Args)]
struct SubscribersCreateArgs {
    /// The org (`org_…`) whose events the subscriber may read.
    #[arg(long)]
    org: String,
    /// Where vmplane keeps its state; its NATS files are in `<data-dir>/nats`.
    #[arg(long, default_value = "./.vmplane")]
    data_dir: PathBuf,
    /// The directory `vmplane nats init --out-dir` wrote (default: `<data-dir>/nats`).
    #[arg(long)]
    nats_dir: Option<PathBuf>,
    /// Where the credentials (NKey seed) go (default: `<nats-dir>/subscribers/<durable>.nk`); never overwritten.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum NatsCmd {
    /// Write one NKey seed per role (admin.nk, gateway.nk, worker.nk; kept if
    /// present) and a nats-server configuration (nats.conf) that admits only
    /// those users, each with its role's permissions. Run nats-server with
    /// `-c <out-dir>/nats.conf`; give each process its seed with `--nats-creds`.
    Init(NatsInitArgs),
    /// Create vmplane's streams and buckets, or bring existing ones up to
    /// this version's settings, with the admin's credentials (other roles
    /// may create streams but not change them): e.g. to rescale them to
    /// `--stream-replicas` after a single server became a cluster.
    Streams(CommonArgs),
}

#[derive(Args)]
struct NatsInitArgs {
    /// Where the seeds and nats.conf go (created 0700).
    #[arg(long)]
    out_dir: PathBuf,
    /// The address nats-server listens on.
    #[arg(long, default_value = "127.0.0.1:4222")]
    listen: String,
    /// JetStream's store directory (default: --out-dir).
    #[arg(long)]
    store: Option<PathBuf>,
    #[arg(long, default_value = "vmplane")]
    server_name: String,
}

#[derive(Subcommand)]
enum ProjectionsCmd {
    /// Delete the projection store and replay the whole event stream into a new one.
    Rebuild(CommonArgs),
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Where vmplane keeps its state (NATS store, projections, worker state).
    #[arg(long, default_value = "./.vmplane")]
    data_dir: PathBuf,
    /// A NATS server with JetStream (`nats://user:password@host:port` for
    /// password users); without it, a local nats-server is started, with
    /// authorization, from the data dir.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// This process's NATS credentials: an NKey seed file (`vmplane nats init`
    /// writes one per role) or a NATS `.creds` file (user JWT and seed).
    #[arg(long, env = "NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// Join the control plane whose `vmplane up` wrote this `join.json`
    /// (its NATS URLs and this role's credentials) instead of --nats-url/--nats-creds.
    #[arg(long, conflicts_with_all = ["nats_url", "nats_creds"])]
    join: Option<PathBuf>,
    /// How many nats-server nodes hold a copy of each stream and key-value
    /// bucket this process creates: 1 on a single server, 3 on a three-node
    /// cluster (survives the loss of one node). Give every process the same count.
    #[arg(long, env = "VMPLANE_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=vmplane_bus::MAX_REPLICAS as i64))]
    stream_replicas: u8,
}

impl CommonArgs {
    /// Connect as `role` to the resolved NATS, creating streams with --stream-replicas copies.
    async fn connect(&self, nats: &nats::Connection, role: Role) -> anyhow::Result<Bus> {
        Ok(Bus::connect(&nats.url, role, &nats.creds(role)).await?.with_replicas(self.stream_replicas.into()))
    }
}

#[derive(Args, Clone)]
struct GatewayOpts {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// How long a POST waits for its command's first event, for read-your-writes.
    #[arg(long, default_value_t = 2000)]
    accept_wait_ms: u64,
    /// Requests per second per API key (0 = unlimited); the admin token is not limited.
    #[arg(long, env = "VMPLANE_RATE_LIMIT", default_value_t = 50)]
    rate_limit: u32,
    /// Concurrent `GET /v1/events` streams per API key (and for the admin token).
    #[arg(long, env = "VMPLANE_MAX_EVENT_STREAMS", default_value_t = SessionCaps::default().events)]
    max_event_streams: usize,
    /// Concurrent log follows (`logs?follow=true`) per API key.
    #[arg(long, env = "VMPLANE_MAX_LOG_FOLLOWS", default_value_t = SessionCaps::default().log_follows)]
    max_log_follows: usize,
    /// Concurrent terminal sessions per API key.
    #[arg(long, env = "VMPLANE_MAX_TERMINALS", default_value_t = SessionCaps::default().terminals)]
    max_terminals: usize,
    /// Hatch dialect (`/vms`): vCPUs of a VM created without `vcpu_count`.
    #[arg(long, env = "HATCH_DEFAULT_VCPU", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(vmplane_domain::spec::MAX_VCPUS)))]
    hatch_default_vcpu: u32,
    /// Hatch dialect (`/vms`): memory in MiB of a VM created without `mem_mib`.
    #[arg(long, env = "HATCH_DEFAULT_MEM_MIB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(64..=vmplane_domain::spec::MAX_MEMORY_MIB))]
    hatch_default_mem_mib: u64,
}

/// How the fleet tells a lost host (gateway and worker).
#[derive(Args, Clone)]
struct FleetOpts {
    /// A host whose heartbeats (every 5 s, or a third of this if shorter) stopped this long ago is offline:
    /// nothing new is placed there and its VMs show `host_status: offline`.
    #[arg(long, env = "VMPLANE_HOST_OFFLINE_AFTER", default_value = "15s", value_parser = humantime::parse_duration)]
    host_offline_after: Duration,
    /// A command for a VM of an offline host that waited this long fails with
    /// `host_unavailable` (recorded by any other worker, or by the host's own
    /// when it returns) instead of running late.
    #[arg(long, env = "VMPLANE_HOST_UNAVAILABLE_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
    host_unavailable_after: Duration,
}

/// Which webhook URLs are accepted (gateway) and delivered to (deliverer).
#[derive(Args, Clone)]
struct WebhookUrlOpts {
    /// Accept and deliver to webhook URLs whose host is or resolves to a
    /// loopback, private, link-local or metadata address (refused by default).
    #[arg(long, env = "VMPLANE_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
}

/// How the webhook deliverer delivers.
#[derive(Args, Clone)]
struct DelivererOpts {
    /// The delay before each attempt of a delivery: comma-separated durations.
    #[arg(long, env = "VMPLANE_WEBHOOK_RETRY_SCHEDULE", default_value = vmplane_domain::delivery::DEFAULT_SCHEDULE)]
    webhook_retry_schedule: vmplane_domain::delivery::RetrySchedule,
    /// An attempt taking longer than this has failed.
    #[arg(long, env = "VMPLANE_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    webhook_timeout: Duration,
    /// An endpoint failing this long without a success is disabled.
    #[arg(long, env = "VMPLANE_WEBHOOK_DISABLE_AFTER", default_value = "5d", value_parser = humantime::parse_duration)]
    webhook_disable_after: Duration,
    /// Delivery attempts at once, in all.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    webhook_max_in_flight: u32,
    /// Delivery attempts at once, per endpoint.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    webhook_max_per_endpoint: u32,
}

impl DelivererOpts {
    fn config(&self, urls: &WebhookUrlOpts) -> vmplane_webhooks::DelivererConfig {
        vmplane_webhooks::DelivererConfig {
            schedule: self.webhook_retry_schedule.clone(),
            timeout: self.webhook_timeout,
            allow_private: urls.webhook_allow_private,
            disable_after: self.webhook_disable_after,
            max_in_flight: self.webhook_max_in_flight as usize,
            max_per_endpoint: self.webhook_max_per_endpoint as usize,
            ..Default::default()
        }
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum DriverKind {
    /// Real guests: one qemu process per VM, KVM where available, TCG otherwise.
    Qemu,
    /// Simulated guests for tests and benchmarks; no VM really runs.
    Sim,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum AccelArg {
    /// KVM where a hardware KVM module is loaded and /dev/kvm is usable, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Args, Clone)]
struct WorkerOpts {
    /// The hypervisor driver.
    #[arg(long, value_enum, default_value = "qemu")]
    driver: DriverKind,
    /// qemu: the accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// qemu: where images live (`<slug>/manifest.json`); default `<data-dir>/images`.
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// qemu: the emulator binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu_binary: PathBuf,
    /// qemu: seconds a guest may take to print its readiness line.
    #[arg(long, default_value_t = 180)]
    ready_timeout_secs: u64,
    /// qemu: seconds a guest may take to power off after ACPI power-down.
    #[arg(long, default_value_t = 30)]
    stop_timeout_secs: u64,
    /// First and last host port for SSH and port forwards, as `FIRST-LAST`.
    #[arg(long, default_value = "20000-29999", value_parser = parse_range)]
    port_range: (u16, u16),
    /// qemu: a bridge (set up by the operator, with the first address of
    /// --bridge-cidr on it) that VMs in bridge network mode join through taps.
    /// The worker installs an nftables table that keeps its guests off the host.
    #[arg(long, requires = "bridge_cidr", value_parser = parse_interface)]
    bridge: Option<String>,
    /// qemu: the bridge's network; guests get addresses from it.
    #[arg(long, requires = "bridge", value_parser = |s: &str| s.parse::<vmplane_domain::cidr::Cidr>())]
    bridge_cidr: Option<vmplane_domain::cidr::Cidr>,
    /// qemu: the address host port forwards listen on.
    #[arg(long, default_value = "127.0.0.1")]
    forward_bind: std::net::IpAddr,
    /// qemu: passt, for user-mode guest networking; without it guests get
    /// QEMU's user networking with restrict=on (port forwards only).
    #[arg(long, default_value = "passt")]
    passt_binary: PathBuf,
    /// The host's name as shown in /v1/hosts (default: the machine's hostname).
    #[arg(long)]
    host_name: Option<String>,
    /// The catalog region this host serves (docs/catalog.md); default: its
    /// --location's region, else `us-east`.
    #[arg(long)]
    region: Option<String>,
    /// The catalog location this host stands in: an id from the `locations`
    /// of `<data-dir>/catalog.json`.
    #[arg(long)]
    location: Option<String>,
    /// The engine name shown for this host (default: the driver's name).
    #[arg(long)]
    engine: Option<String>,
    /// A label of this host, `KEY=VALUE`; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// GPUs of this host that VMs may be given, `MODEL:COUNT`; repeatable.
    #[arg(long = "gpu", value_name = "MODEL:COUNT", value_parser = parse_gpu)]
    gpus: Vec<(String, u32)>,
    /// Price of one vCPU for an hour, a decimal in the operator's currency.
    #[arg(long, default_value = "0")]
    price_vcpu_hr: Decimal,
    /// Price of one GB of memory for an hour.
    #[arg(long, default_value = "0")]
    price_gb_ram_hr: Decimal,
    /// Price of one GB of disk for an hour.
    #[arg(long, default_value = "0")]
    price_gb_storage_hr: Decimal,
    /// Price of one GPU of a model (given with --gpu) for an hour, `MODEL=PRICE`; repeatable.
    #[arg(long = "price-gpu-hr", value_name = "MODEL=PRICE", value_parser = parse_gpu_price)]
    gpu_prices: Vec<(String, Decimal)>,
    /// On SIGTERM, power off this worker's guests and record them as stopped.
    /// Without it they keep running and the next worker adopts them.
    #[arg(long)]
    stop_guests_on_exit: bool,
    /// How many VM commands run at once.
    #[arg(long, default_value_t = 32)]
    parallelism: usize,
    /// Seconds before an unacknowledged command is redelivered.
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
    /// Deliveries of one command before the worker gives up on it and fails
    /// its operation (each crash or unrecorded attempt is one).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
    max_deliveries: i64,
    /// sim: milliseconds a simulated boot takes.
    #[arg(long, default_value_t = 200)]
    sim_boot_delay_ms: u64,
    /// sim: milliseconds a simulated guest takes to report readiness.
    #[arg(long, default_value_t = 300)]
    sim_ready_delay_ms: u64,
    /// vCPUs kept for the host itself: the announced vCPUs are the measured
    /// ones (sim: --sim-cpus) less these.
    #[arg(long, default_value_t = 0)]
    reserve_cpus: u32,
    /// Memory in MiB kept for the host itself: the announced memory is the
    /// measured memory (sim: --sim-memory-mib) less this.
    #[arg(long, default_value_t = 0)]
    reserve_memory_mib: u64,
    /// sim: announced vCPUs.
    #[arg(long, default_value_t = 64)]
    sim_cpus: u32,
    /// sim: announced memory in MiB.
    #[arg(long, default_value_t = 1024 * 1024)]
    sim_memory_mib: u64,
    /// sim: announced disk in GB.
    #[arg(long, default_value_t = 100_000)]
    sim_disk_gb: u64,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    gateway: GatewayOpts,
    #[command(flatten)]
    worker: WorkerOpts,
    #[command(flatten)]
    fleet: FleetOpts,
    #[command(flatten)]
    urls: WebhookUrlOpts,
    #[command(flatten)]
    deliverer: DelivererOpts,
}

#[derive(Args)]
struct GatewayArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    gateway: GatewayOpts,
    #[command(flatten)]
    fleet: FleetOpts,
    #[command(flatten)]
    urls: WebhookUrlOpts,
}

#[derive(Args)]
struct WebhooksArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    urls: WebhookUrlOpts,
    #[command(flatten)]
    deliverer: DelivererOpts,
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    worker: WorkerOpts,
    #[command(flatten)]
    fleet: FleetOpts,
}

/// jemalloc instead of glibc's allocator: sled's pages and the codec
/// allocate and free small buffers for every event, and glibc's malloc,
/// free and chunk consolidation were ~12% of the gateway's samples under
/// load; jemalloc took a fifth off the gateway's CPU per create for
/// ~17 MiB more resident memory (BENCHMARKS.md, issue 10; mimalloc saved
/// as much CPU for ~65 MiB more).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    // SAFETY: umask(2) only sets this process's file creation mask; it is set
    // before anything creates a file, and children (qemu, nats-server) inherit it.
    unsafe { libc::umask(0o077) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_nats=warn".into()))
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("vmplane: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Up(a) => {
            private_dir(&a.common.data_dir)?;
            let lock = lock_worker_dir(&a.common.data_dir)?;
            let catalog = load_catalog(&a.common.data_dir)?;
            let driver = driver(&a.worker, &a.common.data_dir, &catalog).await?;
            let admin = admin_token(&a.common.data_dir, true)?;
            let nats = nats::resolve(&a.common).await?;
            if nats.is_local() {
                // Only the admin may bring existing streams up to date.
                a.common.connect(&nats, Role::Admin).await?.ensure_topology().await?;
                nats::Join::write(&a.common.data_dir, &nats)?;
            }
            let gateway_bus = a.common.connect(&nats, Role::Gateway).await?;
            let worker_bus = a.common.connect(&nats, Role::Worker).await?;
            let deliverer_bus = a.common.connect(&nats, Role::Webhooks).await?;
            let gateway = gateway(gateway_bus, &a.common, &a.gateway, &a.fleet, &a.urls, admin);
            let worker = worker(worker_bus, driver, &a.common, &a.worker, &a.fleet, &lock);
            let deliverer = vmplane_webhooks::run(deliverer_bus, a.deliverer.config(&a.urls), shutdown_signal());
            // All end on SIGTERM; the worker may still be stopping guests when the gateway is done.
            tokio::try_join!(gateway, worker, deliverer).map(drop)
        }
        Cmd::Gateway(a) => {
            private_dir(&a.common.data_dir)?;
            let admin = admin_token(&a.common.data_dir, false)?;
            let nats = nats::resolve(&a.common).await?;
            gateway(a.common.connect(&nats, Role::Gateway).await?, &a.common, &a.gateway, &a.fleet, &a.urls, admin).await
        }
        Cmd::Webhooks(a) => {
            private_dir(&a.common.data_dir)?;
            let nats = nats::resolve(&a.common).await?;
            let bus = a.common.connect(&nats, Role::Webhooks).await?;
            vmplane_webhooks::run(bus, a.deliverer.config(&a.urls), shutdown_signal()).await
        }
        Cmd::Worker(a) => {
            private_dir(&a.common.data_dir)?;
            let lock = lock_worker_dir(&a.common.data_dir)?;
            let catalog = load_catalog(&a.common.data_dir)?;
            let driver = driver(&a.worker, &a.common.data_dir, &catalog).await?;
            let nats = nats::resolve(&a.common).await?;
            worker(a.common.connect(&nats, Role::Worker).await?, driver, &a.common, &a.worker, &a.fleet, &lock).await
        }
        Cmd::Projections { command: ProjectionsCmd::Rebuild(common) } => {
            private_dir(&common.data_dir)?;
            let dir = projections_dir(&common.data_dir);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            let nats = nats::resolve(&common).await?;
            let bus = common.connect(&nats, Role::Gateway).await?;
            let proj = Projections::open(&dir)?;
            let last = proj.rebuild(&bus).await.map_err(|e| anyhow::anyhow!("replay failed: {e}"))?;
            println!("rebuilt {} from {last} events", dir.display());
            Ok(())
        }
        Cmd::Subscribers { command: SubscribersCmd::Create(a) } => subscribers_create(a).await,
        // Its own exit statuses (docs/cli.md): not found, conflict, auth, unavailable, ...
        Cmd::Client(c) => std::process::exit(vmplane_cli::run(c, Cli::command()).await),
        Cmd::Nats { command: NatsCmd::Streams(common) } => {
            let nats = nats::resolve(&common).await?;
            common.connect(&nats, Role::Admin).await?.ensure_topology().await.context("setting up the streams")?;
            println!("streams and buckets ready with {} replica(s)", common.stream_replicas);
            Ok(())
        }
        Cmd::Nats { command: NatsCmd::Init(a) } => {
            let files = nats::NatsFiles::new(&a.out_dir);
            files.init(&a.listen, a.store.as_deref().unwrap_or(&a.out_dir), &a.server_name)?;
            println!("{}", files.config().display());
            Ok(())
        }
    }
}

/// `vmplane subscribers create`: see [`SubscribersCmd::Create`].
async fn subscribers_create(a: SubscribersCreateArgs) -> anyhow::Result<()> {
    use vmplane_bus::async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use vmplane_bus::auth::{Subscriber, new_user};
    let org: vmplane_domain::OrgId = a.org.parse().map_err(|e| anyhow::anyhow!("--org: {e}"))?;
    let files = nats::NatsFiles::new(&a.nats_dir.unwrap_or_else(|| a.data_dir.join("nats")));
    let config = files.read_config()?;
    let listen = config["listen"].as_str().context("nats.conf has no `listen`")?;
    let url = format!("nats://{}", listen.replace("0.0.0.0", "127.0.0.1"));
    let (seed, nkey) = new_user();
    let sub = Subscriber { org, durable: Subscriber::durable_name(org, &nkey), nkey };
    let out = a.out.unwrap_or_else(|| files.dir.join("subscribers").join(format!("{}.nk", sub.durable)));

    // The durable consumer is the admin's to create (see `auth::Subscriber`).
    let bus = Bus::connect(&url, Role::Admin, &files.creds(Role::Admin))
        .await
        .with_context(|| format!("connecting to {url} as admin: the consumer is made on the running server, start it (`vmplane up`) first"))?;
    let js = vmplane_bus::async_nats::jetstream::new(bus.client.clone());
    let consumer = pull::Config {
        durable_name: Some(sub.durable.clone()),
        description: Some(format!("event subscriber of {org}")),
        filter_subject: vmplane_domain::subjects::org_events(org),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ..Default::default()
    };
    js.create_consumer_on_stream(consumer, vmplane_domain::subjects::EVENT_STREAM).await.context("creating the durable consumer")?;

    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    nats::write_seed(&out, &seed)?;
    files.add_subscriber(sub.clone())?;
    let reloaded = files.reload()?;
    if !reloaded {
        tracing::warn!("no running nats-server found through {}: the new user is admitted from its next start", files.pid_file().display());
    }
    let summary = serde_json::json!({
        "org": org,
        "url": url,
        "credentials": out,
        "stream": vmplane_domain::subjects::EVENT_STREAM,
        "durable": sub.durable,
        "inbox_prefix": sub.inbox_prefix(),
        "subjects": vmplane_domain::subjects::org_events(org),
        "reloaded": reloaded,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn projections_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("projections")
}

/// Create `dir` (and its parents) if needed and make it 0700.
pub(crate) fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))
}

/// One worker per data dir: taken before anything touches it (images, guests).
fn lock_worker_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    Ok(vmplane_worker::claim::lock_data_dir(&data_dir.join("worker"))?)
}

/// The admin token: `VMPLANE_ADMIN_TOKEN`, or for `up` the token kept in the
/// data dir, generated (256 random bits) on first start so a fresh machine
/// works out of the box. An empty token is refused rather than taken as "none".
fn admin_token(data_dir: &Path, generate: bool) -> anyhow::Result<Option<String>> {
    match std::env::var("VMPLANE_ADMIN_TOKEN") {
        Ok(t) if t.trim().is_empty() => bail!("VMPLANE_ADMIN_TOKEN is set but empty: set it to a long random token, or unset it"),
        Ok(t) => return Ok(Some(t.trim().to_owned())),
        Err(std::env::VarError::NotUnicode(_)) => bail!("VMPLANE_ADMIN_TOKEN is not valid UTF-8"),
        Err(std::env::VarError::NotPresent) => {}
    }
    if !generate {
        tracing::warn!("VMPLANE_ADMIN_TOKEN is not set: admin access is disabled");
        return Ok(None);
    }
    let path = data_dir.join("admin-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().is_empty() => bail!("{} is empty: write a token into it, or delete it to have one generated", path.display()),
        Ok(t) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            t.trim().to_owned()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let bytes: [u8; 32] = rand::random();
            let t = format!("vmpadmin_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            f.write_all(t.as_bytes())?;
            t
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    tracing::info!(path = %path.display(), "VMPLANE_ADMIN_TOKEN not set; using the admin token stored in the data dir");
    Ok(Some(token))
}

/// The built-in catalog with `<data-dir>/catalog.json` merged over it when
/// there is one; a malformed file stops the process with the reason.
fn load_catalog(data_dir: &Path) -> anyhow::Result<Catalog> {
    let path = data_dir.join(catalog::OVERRIDE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Catalog::with_override(&text).with_context(|| format!("{} is not a valid catalog (see docs/catalog.md): fix or remove it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::built_in()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What the operator's flags say about the host, checked against the catalog, written into `host`.
fn describe_host(opts: &WorkerOpts, catalog: &Catalog, host: &mut HostInfo) -> anyhow::Result<()> {
    let profile = HostProfile {
        region: opts.region.clone(),
        location: opts.location.clone(),
        engine: Some(opts.engine.clone().unwrap_or_else(|| host.driver.clone())),
        labels: unique("--label", &opts.labels)?,
        gpus: unique("--gpu", &opts.gpus)?,
        pricing: Pricing {
            per_vcpu_hr: opts.price_vcpu_hr,
            per_gb_ram_hr: opts.price_gb_ram_hr,
            per_gb_storage_hr: opts.price_gb_storage_hr,
            per_gpu_hr: unique("--price-gpu-hr", &opts.gpu_prices)?,
        },
    };
    profile.apply(catalog, host).context("describing the host (--region, --location, --engine, --label, --gpu, --price-*)")
}

/// Repeated `KEY…` flags as a map; a key given twice is refused, not overwritten.
fn unique<V: Clone>(flag: &str, pairs: &[(String, V)]) -> anyhow::Result<BTreeMap<String, V>> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            bail!("{flag} names `{k}` twice");
        }
    }
    Ok(map)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "expected KEY=VALUE".into())
}

fn parse_gpu(s: &str) -> Result<(String, u32), String> {
    let (model, count) = s.rsplit_once(':').ok_or("expected MODEL:COUNT")?;
    Ok((model.to_owned(), count.parse().map_err(|_| "COUNT must be a whole number")?))
}

fn parse_gpu_price(s: &str) -> Result<(String, Decimal), String> {
    let (model, price) = s.split_once('=').ok_or("expected MODEL=PRICE")?;
    Ok((model.to_owned(), price.parse().map_err(|_| "PRICE must be a decimal number")?))
}

fn parse_interface(s: &str) -> Result<String, String> {
    if bridge::is_interface_name(s) { Ok(s.to_owned()) } else { Err("expected an interface name (up to 15 of A-Z, a-z, 0-9, '-', '_', '.')".into()) }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected FIRST-LAST")?;
    let (a, b): (u16, u16) = (a.parse().map_err(|_| "bad first port")?, b.parse().map_err(|_| "bad last port")?);
    if a == 0 || a > b { Err("need 0 < FIRST <= LAST".into()) } else { Ok((a, b)) }
}

async fn driver(opts: &WorkerOpts, data_dir: &Path, catalog: &Catalog) -> anyhow::Result<Arc<dyn Driver>> {
    let host_name =
        opts.host_name.clone().unwrap_or_else(|| std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "localhost".into()));
    // What the operator says about the host, and its reserve, are checked before anything slow (the image build).
    let mut host = HostInfo {
        name: host_name,
        driver: match opts.driver {
            DriverKind::Qemu => "qemu",
            DriverKind::Sim => "sim",
        }
        .into(),
        bridge_cidr: opts.bridge_cidr.map(|c| c.to_string()),
        port_range: Some(opts.port_range.into()),
        ..HostInfo::default()
    };
    describe_host(opts, catalog, &mut host)?;
    (host.cpus, host.memory_mib) = match opts.driver {
        DriverKind::Qemu => (capacity::host_cpus(), capacity::host_memory_mib()),
        DriverKind::Sim => (opts.sim_cpus, opts.sim_memory_mib),
    };
    Reserve { cpus: opts.reserve_cpus, memory_mib: opts.reserve_memory_mib }.apply(&mut host)?;
    Ok(match opts.driver {
        DriverKind::Qemu => {
            let choice = match opts.accel {
                AccelArg::Auto => AccelChoice::Auto,
                AccelArg::Kvm => AccelChoice::Kvm,
                AccelArg::Tcg => AccelChoice::Tcg,
            };
            let (accel, reason) = accel::choose(choice, Path::new("/sys/module"), Path::new("/dev/kvm"));
            tracing::info!(%reason, "qemu accelerator");
            let images_dir = opts.images_dir.clone().unwrap_or_else(|| data_dir.join("images"));
            images::ensure_default(&images_dir).await?;
            let dir = data_dir.join("worker").join("qemu");
            std::fs::create_dir_all(&dir)?;
            let host = HostInfo {
                driver_detail: Some(reason.clone()),
                disk_gb: capacity::host_disk_gb(&dir),
                images: vmplane_worker::driver::qemu::image::list(&images_dir),
                ..host
            };
            Arc::new(QemuDriver::new(QemuConfig {
                dir,
                images_dir,
                qemu_binary: opts.qemu_binary.clone(),
                accel,
                accel_reason: reason,
                port_range: opts.port_range,
                forward_bind: opts.forward_bind,
                passt_binary: opts.passt_binary.clone(),
                bridge: opts.bridge.clone().zip(opts.bridge_cidr).map(|(name, cidr)| bridge::Bridge { name, cidr }),
                ready_timeout: Duration::from_secs(opts.ready_timeout_secs),
                stop_timeout: Duration::from_secs(opts.stop_timeout_secs),
                sysfs: PathBuf::from("/sys"),
                host,
            })?)
        }
        DriverKind::Sim => Arc::new(SimDriver::new(SimConfig {
            dir: data_dir.join("worker").join("sim"),
            boot_delay: Duration::from_millis(opts.sim_boot_delay_ms),
            ready_delay: Duration::from_millis(opts.sim_ready_delay_ms),
            host: HostInfo {
                driver_detail: Some("simulated guests: nothing really boots".into()),
                disk_gb: opts.sim_disk_gb,
                images: vmplane_worker::driver::sim::catalog_images(catalog),
                ..host
            },
            port_range: opts.port_range,
        })?),
    })
}

async fn gateway(
    bus: Bus,
    common: &CommonArgs,
    opts: &GatewayOpts,
    fleet: &FleetOpts,
    urls: &WebhookUrlOpts,
    admin_token: Option<String>,
) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")?;
    let proj = Projections::open(&projections_dir(&common.data_dir)).context("opening projections (is another gateway using this data dir?)")?;
    let listener = tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    let cfg = GatewayConfig {
        admin_token,
        accept_wait: Duration::from_millis(opts.accept_wait_ms),
        rate_limit_per_key: opts.rate_limit,
        session_caps: SessionCaps { events: opts.max_event_streams, log_follows: opts.max_log_follows, terminals: opts.max_terminals },
        hatch: HatchConfig { default_vcpus: opts.hatch_default_vcpu, default_memory_mib: opts.hatch_default_mem_mib },
        catalog: load_catalog(&common.data_dir)?,
        webhook_allow_private: urls.webhook_allow_private,
        host_offline_after: fleet.host_offline_after,
    };
    vmplane_gateway::serve(bus, proj, cfg, metrics, listener, shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

async fn worker(bus: Bus, driver: Arc<dyn Driver>, common: &CommonArgs, opts: &WorkerOpts, fleet: &FleetOpts, lock: &DataDirLock) -> anyhow::Result<()> {
    let mut cfg = WorkerConfig::new(common.data_dir.join("worker"));
    cfg.parallelism = opts.parallelism.max(1);
    cfg.ack_wait = Duration::from_secs(opts.ack_wait_secs.max(1));
    cfg.max_deliveries = opts.max_deliveries;
    cfg.host_offline_after = fleet.host_offline_after;
    // A few beats per lease, so one late beat does not make the host look lost.
    cfg.heartbeat_every = (fleet.host_offline_after / 3).clamp(Duration::from_millis(200), Duration::from_secs(5));
    cfg.host_unavailable_after = fleet.host_unavailable_after;
    tokio::select! {
        r = vmplane_worker::run(bus.clone(), driver.clone(), cfg, lock) => r,
        () = shutdown_signal() => {
            if opts.stop_guests_on_exit {
                vmplane_worker::shutdown::stop_guests(&bus, &driver).await;
            }
            tracing::info!("worker stopped");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
