//! The worker: one per host. It consumes the commands addressed to its host
//! from a durable JetStream consumer (explicit acks, AckWait, MaxDeliver),
//! executes them against its hypervisor driver, and appends the events.
//!
//! Commands for the same VM run one after another, in stream order, on a
//! per-VM task; different VMs run in parallel up to a bound. Tenancy commands
//! (orgs, projects, API keys) come from one consumer shared by all workers.

pub mod aggregate;
pub mod driver;
pub mod executor;
pub mod host;
pub mod logs;
pub mod shutdown;
pub mod tenancy;
pub mod terminal;

use crate::aggregate::VmAggregate;
use crate::driver::{Driver, GuestExit};
use crate::executor::{Executor, VmJob, VolumeJob};
use async_nats::jetstream::{AckKind, Message, consumer::AckPolicy, consumer::pull};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use vmplane_bus::{Bus, BusError, decode_command};
use vmplane_domain::{Command, HostId, subjects};

/// Worker settings; the CLI fills them from flags.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub data_dir: PathBuf,
    /// How many VM commands run at once on this host.
    pub parallelism: usize,
    /// JetStream AckWait: an unacknowledged command is redelivered after this long
    /// (a running command keeps extending it with progress acks).
    pub ack_wait: Duration,
    /// JetStream MaxDeliver for commands.
    pub max_deliver: i64,
    /// How long a step retries retryable driver errors.
    pub step_retry_for: Duration,
    /// Interval between heartbeats.
    pub heartbeat_every: Duration,
}

impl WorkerConfig {
    /// Defaults for production use under `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            parallelism: 32,
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            step_retry_for: Duration::from_secs(60),
            heartbeat_every: Duration::from_secs(5),
        }
    }
}

/// Run the worker until the future is dropped.
pub async fn run(bus: Bus, driver: Arc<dyn Driver>, cfg: WorkerConfig) -> anyhow::Result<()> {
    bus.ensure_topology().await?;
    let host = host::register(&bus, &cfg.data_dir, driver.host_info()).await?;
    tracing::info!(%host, driver = %driver.host_info().driver, "worker registered its host");
    let exits = driver.take_exits();
    let exec = Executor { bus: bus.clone(), driver: driver.clone(), step_retry_for: cfg.step_retry_for };
    let queues = VmQueues { map: Arc::default(), permits: Arc::new(Semaphore::new(cfg.parallelism)), exec, cfg: cfg.clone() };
    tokio::select! {
        r = host::heartbeat(bus.clone(), host, cfg.heartbeat_every) => r,
        r = consume_vm_commands(queues.clone(), host) => r,
        r = tenancy::consume(bus.clone(), cfg.clone()) => r,
        r = forward_exits(queues, exits) => r,
        r = logs::ship(bus.clone(), driver.clone()) => r,
        r = terminal::serve(bus.clone(), host, driver) => r,
    }
}

/// Consumer settings shared by the worker's durable consumers.
pub(crate) fn consumer_config(name: String, filter: String, cfg: &WorkerConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(name),
        filter_subject: filter,
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: cfg.max_deliver,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Pull messages from a durable consumer forever, re-attaching after NATS outages.
pub(crate) async fn pull_forever(bus: &Bus, consumer_cfg: pull::Config, mut handle: impl FnMut(Message)) -> anyhow::Result<()> {
    loop {
        let attach = async {
            let stream = bus.js.get_stream(subjects::COMMAND_STREAM).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
            let name = consumer_cfg.durable_name.clone().unwrap_or_default();
            let consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_or_create_consumer(&name, consumer_cfg.clone()).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
            consumer.messages().await.map_err(|e| BusError::Unavailable(e.to_string()))
        };
        match attach.await {
            Ok(mut messages) => {
                while let Some(next) = messages.next().await {
                    match next {
                        Ok(msg) => handle(msg),
                        Err(e) => {
                            tracing::warn!(error = %e, "command consumer interrupted");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot attach command consumer; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Keep extending a message's AckWait while it is queued or executing.
pub(crate) fn keep_alive(msg: &Message, every: Duration) -> tokio::task::JoinHandle<()> {
    let acker = msg.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "progress ack failed");
            }
        }
    })
}

/// Work for one VM's task.
enum Job {
    /// A command from the stream, acknowledged when done.
    Command(Box<Message>),
    /// The driver saw the guest stop on its own.
    Exited(GuestExit),
}

/// Per-aggregate queues (keyed by the VM or volume id): one task per
/// aggregate with work, so its jobs never overlap; a global semaphore bounds
/// how many are worked on at once.
#[derive(Clone)]
struct VmQueues {
    map: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>>,
    permits: Arc<Semaphore>,
    exec: Executor,
    cfg: WorkerConfig,
}

impl VmQueues {
    fn push(&self, key: String, job: Job) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let job = match map.get(&key) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                // The VM's task just went idle and exited: start a new one.
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(job).unwrap_or_else(|_| unreachable!("receiver held below"));
        map.insert(key.clone(), tx);
        tokio::spawn(self.clone().run(key, rx));
    }

    async fn run(self, key: String, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut agg: Option<VmAggregate> = None;
        loop {
            let job = match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_idle) => {
                    let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            map.remove(&key);
                            return;
                        }
                    }
                }
            };
            match job {
                Job::Command(msg) => {
                    let alive = keep_alive(&msg, self.cfg.ack_wait / 3);
                    let _permit = self.permits.acquire().await.expect("semaphore never closed");
                    let ack = handle_vm_command(&self.exec, &mut agg, &msg, &self.cfg).await;
                    alive.abort();
                    if let Err(e) = msg.ack_with(ack).await {
                        tracing::warn!(%key, error = %e, "ack failed; the command will be redelivered and recognised");
                    }
                }
                Job::Exited(exit) => {
                    if let Err(e) = self.exec.record_exit(&mut agg, &exit).await {
                        tracing::warn!(%key, error = %e, "could not record the guest's exit; retrying");
                        let queues = self.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            queues.push(exit.vm.to_string(), Job::Exited(exit));
                        });
                    }
                }
            }
        }
    }
}

async fn consume_vm_commands(queues: VmQueues, host: HostId) -> anyhow::Result<()> {
    let consumer_cfg = consumer_config(format!("host-{host}"), subjects::host_commands(host), &queues.cfg);
    let bus = queues.exec.bus.clone();
    pull_forever(&bus, consumer_cfg, |msg| {
        let key = msg.subject.rsplit('.').next().unwrap_or_default().to_owned();
        queues.push(key, Job::Command(Box::new(msg)));
    })
    .await
}

/// Turn the driver's reports of guests stopping on their own into VM jobs.
async fn forward_exits(queues: VmQueues, exits: Option<mpsc::UnboundedReceiver<GuestExit>>) -> anyhow::Result<()> {
    let Some(mut exits) = exits else { return std::future::pending().await };
    while let Some(exit) = exits.recv().await {
        queues.push(exit.vm.to_string(), Job::Exited(exit));
    }
    Ok(())
}

async fn handle_vm_command(exec: &Executor, agg: &mut Option<VmAggregate>, msg: &Message, cfg: &WorkerConfig) -> AckKind {
    let env = match decode_command(&msg.payload) {
        Ok(env) => env,
        Err(e) => {
            tracing::error!(error = %e, "undecodable command; terminating it");
            return AckKind::Term;
        }
    };
    let started = std::time::Instant::now();
    let op = env.op;
    let result = match env.command {
        Command::Vm { vm, command } => exec.execute(agg, &VmJob { op, org: env.org, project: env.project, vm, command }).await,
        Command::Volume { volume, command } => exec.execute_volume(&VolumeJob { op, org: env.org, project: env.project, volume, command }).await,
        Command::Host { host, command } => exec.execute_host(op, host, &command).await,
        Command::Tenancy { .. } => {
            tracing::error!(%op, "tenancy command on a host subject; terminating it");
            return AckKind::Term;
        }
    };
    match result {
        Ok(()) => {
            metrics::histogram!("vmplane_worker_command_seconds").record(started.elapsed().as_secs_f64());
            AckKind::Ack
        }
        Err(e) => {
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            tracing::warn!(%op, delivered, error = %e, "command not finished; it will be redelivered");
            AckKind::Nak(Some(backoff_delay(delivered, cfg.ack_wait)))
        }
    }
}

/// Redelivery delay after a bus error: grows with each attempt, capped at AckWait.
fn backoff_delay(delivered: i64, cap: Duration) -> Duration {
    let exp = delivered.clamp(1, 10) as u32;
    Duration::from_millis(200u64.saturating_mul(2u64.saturating_pow(exp - 1))).min(cap)
}
