//! The worker: one per host. It consumes the commands addressed to its host
//! from a durable JetStream consumer (explicit acks, AckWait), executes them
//! against its hypervisor driver, and appends the events.
//!
//! Commands for the same VM run one after another, in stream order, on a
//! per-VM task; different VMs run in parallel up to a bound. Tenancy commands
//! (orgs, projects, API keys) and template commands come from one consumer
//! shared by all workers.
//!
//! Nothing accepted is lost or left pending:
//! - JetStream redelivers an unacknowledged command without limit; the worker
//!   counts the deliveries itself and, past `max_deliveries`, ends the
//!   command's operation as failed (`delivery_limit`) instead of running it
//!   again. A worker crashing on the last attempt leaves the command in the
//!   stream, so the next delivery records the failure.
//! - A command that cannot be decoded, or that the domain refuses, ends its
//!   operation as failed too, through an event (see [`vmplane_domain::operation`]).
//! - A command is kept alive (progress acks) from the moment it is received,
//!   including while it waits behind earlier commands of the same VM.
//! - At start the worker resumes every operation left pending on its host
//!   whose command is gone, found through its local index ([`pending`]).
//! - At start it also compares every guest its driver holds with the VM's
//!   record (the worker may have been away while guests died or records
//!   changed): a VM recorded running whose guest is gone is recorded
//!   stopped, a guest that runs while its VM is recorded stopped, failed or
//!   deleted is powered off. Nothing is booted by this.

pub mod aggregate;
pub mod claim;
pub mod driver;
pub mod executor;
pub mod host;
pub mod logs;
pub mod offline;
pub mod pending;
pub mod record;
pub mod shutdown;
pub mod tenancy;
pub mod terminal;

use crate::aggregate::{VmAggregate, record_operation_failed};
use crate::claim::{ClaimError, DataDirLock, Lease};
use crate::driver::{Driver, Guest, GuestExit};
use crate::executor::{Executor, VmJob, VolumeJob};
use crate::pending::{PendingIndex, Target};
use async_nats::jetstream::{AckKind, Message, consumer::AckPolicy, consumer::pull};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use vmplane_bus::{Bus, BusError, decode_command};
use vmplane_domain::{Command, CommandEnvelope, HostId, OpId, OrgId, VmId, subjects};

/// Worker settings; the CLI fills them from flags.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub data_dir: PathBuf,
    /// How many VM commands run at once on this host.
    pub parallelism: usize,
    /// JetStream AckWait: an unacknowledged command is redelivered after this long
    /// (a received command keeps extending it with progress acks).
    pub ack_wait: Duration,
    /// Deliveries of one command (or resumptions of one operation at start)
    /// before the worker gives up and fails its operation.
    pub max_deliveries: i64,
    /// How long a step retries retryable driver errors.
    pub step_retry_for: Duration,
    /// Interval between heartbeats (and lease renewals).
    pub heartbeat_every: Duration,
    /// How long the host's lease stays another worker's after its last renewal.
    pub lease_ttl: Duration,
    /// Another host whose heartbeats stopped this long ago is offline.
    pub host_offline_after: Duration,
    /// A VM command that waited this long for an offline host fails with `host_unavailable`.
    pub host_unavailable_after: Duration,
}

impl WorkerConfig {
    /// Defaults for production use under `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            parallelism: 32,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 20,
            step_retry_for: Duration::from_secs(60),
            heartbeat_every: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(20),
            host_offline_after: Duration::from_secs(15),
            host_unavailable_after: Duration::from_secs(600),
        }
    }
}

/// Run the worker until the future is dropped. `lock` is the data dir's lock,
/// taken before anything else touched the data dir.
pub async fn run(bus: Bus, driver: Arc<dyn Driver>, cfg: WorkerConfig, lock: &DataDirLock) -> anyhow::Result<()> {
    let transient = |e: &BusError| e.is_transient();
    while_unavailable("setting up streams", transient, async || bus.ensure_topology().await).await?;
    let host = host::host_id(&cfg.data_dir)?;
    let lease = while_unavailable("taking the host's lease", ClaimError::is_transient, async || Lease::acquire(&bus, host, lock, cfg.lease_ttl).await).await?;
    while_unavailable("registering the host", transient, async || host::register(&bus, host, driver.host_info()).await).await?;
    tracing::info!(%host, driver = %driver.host_info().driver, "worker registered its host");
    let exits = driver.take_exits();
    let exec = Executor { bus: bus.clone(), host, driver: driver.clone(), step_retry_for: cfg.step_retry_for };
    let pending = PendingIndex::open(cfg.data_dir.join("pending"))?;
    let queues = VmQueues { map: Arc::default(), parked: Arc::default(), permits: Arc::new(Semaphore::new(cfg.parallelism)), exec, cfg: cfg.clone(), pending };
    queues.reconcile()?;
    queues.reconcile_guests(driver.guests());
    tokio::select! {
        r = host::heartbeat(bus.clone(), host, cfg.heartbeat_every, lease) => r,
        r = consume_vm_commands(queues.clone()) => r,
        r = tenancy::consume(bus.clone(), cfg.clone()) => r,
        r = offline::watch(queues.exec.clone(), host, cfg.host_offline_after, cfg.host_unavailable_after) => r,
        r = forward_exits(queues, exits) => r,
        r = logs::ship(bus.clone(), driver.clone()) => r,
        r = terminal::serve(bus.clone(), host, driver) => r,
    }
}

/// Run a start-up step again while it fails only because NATS is not there
/// yet (a cluster still electing its stream leaders): a worker started beside
/// its NATS waits for it rather than exiting.
async fn while_unavailable<T, E: std::fmt::Display>(what: &str, transient: impl Fn(&E) -> bool, mut step: impl AsyncFnMut() -> Result<T, E>) -> Result<T, E> {
    let mut wait = Duration::from_millis(200);
    loop {
        match step().await {
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, "{what}: NATS is not available yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

/// Consumer settings shared by the worker's durable consumers. JetStream
/// redelivers without limit; the worker counts deliveries itself (see the module docs).
pub(crate) fn consumer_config(name: String, filter: String, cfg: &WorkerConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(name),
        filter_subject: filter,
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Pull messages from a durable consumer forever, re-attaching after NATS outages.
/// Attaching creates the consumer or brings an existing one's settings up to date.
pub(crate) async fn pull_forever(bus: &Bus, consumer_cfg: pull::Config, mut handle: impl FnMut(Message)) -> anyhow::Result<()> {
    loop {
        let attach = async {
            let stream = bus.js.get_stream(subjects::COMMAND_STREAM).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
            let consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.create_consumer(consumer_cfg.clone()).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
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

/// Extends a received message's AckWait until dropped, so that it is not
/// redelivered while it waits its turn or executes.
pub(crate) struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    pub(crate) fn start(msg: &Message, every: Duration) -> Self {
        let acker = msg.clone();
        Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = acker.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many times this message was delivered, this delivery included.
pub(crate) fn deliveries(msg: &Message) -> i64 {
    msg.info().map(|i| i.delivered).unwrap_or(1)
}

/// Why the worker gives up on a command that went past its delivery limit.
pub(crate) fn delivery_limit_message(delivered: i64) -> String {
    format!("the worker gave up on this command after {} attempts: each one crashed the worker or could not record its progress", delivered.saturating_sub(1))
}

/// End the operation of a command that cannot be decoded: its id is the
/// message id, its target the last token of the subject. `org` is known only
/// where the subject names it.
pub(crate) async fn give_up_undecodable(bus: &Bus, msg: &Message, org: Option<OrgId>, error: &BusError) -> Result<(), BusError> {
    let op = msg.headers.as_ref().and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)).and_then(|id| id.as_str().parse::<OpId>().ok());
    let target = msg.subject.rsplit('.').next().unwrap_or_default();
    let Some(op) = op else {
        tracing::error!(subject = %msg.subject, %error, "undecodable command without an operation id; dropping it");
        return Ok(());
    };
    tracing::error!(%op, subject = %msg.subject, %error, "undecodable command; failing its operation");
    record_operation_failed(bus, org, op, target, "undecodable_command", format!("the worker cannot read this command: {error}")).await
}

/// Work for one VM's task.
enum Job {
    /// A command from the stream, kept alive until it is acknowledged.
    Command(Box<Message>, KeepAlive),
    /// The driver saw the guest stop on its own.
    Exited(GuestExit),
    /// An aggregate the index says may have an operation left pending (at start).
    Reconcile(pending::Entry),
    /// A VM whose guest the driver holds, to compare with its record (at start).
    Guest(VmId),
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
    pending: PendingIndex,
    /// The aggregates of VMs whose task went idle, for their next job:
    /// loading one again costs a read per event it has. A stale one is
    /// harmless (an append on it conflicts, and it is loaded afresh).
    parked: Arc<Mutex<HashMap<String, VmAggregate>>>,
}

/// At most this many idle aggregates are kept (a few KiB each); past it the
/// keep is emptied and refills with the VMs that get work.
const PARKED_MAX: usize = 50_000;

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

    /// Queue a check of every aggregate the index names.
    fn reconcile(&self) -> std::io::Result<()> {
        let entries = self.pending.entries()?;
        if !entries.is_empty() {
            tracing::info!(count = entries.len(), "checking aggregates that may have operations left pending");
        }
        for entry in entries {
            self.push(entry.target.key(), Job::Reconcile(entry));
        }
        Ok(())
    }

    /// Queue a comparison of every guest the driver holds with its record,
    /// behind any pending operation of the same VM.
    fn reconcile_guests(&self, guests: Vec<Guest>) {
        tracing::info!(count = guests.len(), "checking the host's guests against their records");
        for guest in guests {
            self.push(guest.vm.to_string(), Job::Guest(guest.vm));
        }
    }

    async fn run(self, key: String, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut agg: Option<VmAggregate> = self.parked.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
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
                            if let Some(agg) = agg {
                                let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
                                if parked.len() >= PARKED_MAX {
                                    parked.clear();
                                }
                                parked.insert(key, agg);
                            }
                            return;
                        }
                    }
                }
            };
            match job {
                Job::Command(msg, alive) => {
                    let _permit = self.permits.acquire().await.expect("semaphore never closed");
                    let ack = self.handle_command(&mut agg, &msg).await;
                    if let Err(e) = msg.ack_with(ack).await {
                        tracing::warn!(%key, error = %e, "ack failed; the command will be redelivered and recognised");
                    }
                    drop(alive);
                }
                Job::Exited(exit) => {
                    if let Err(e) = self.exec.record_exit(&mut agg, &exit).await {
                        tracing::warn!(%key, error = %e, "could not record the guest's exit; retrying");
                        self.retry_later(exit.vm.to_string(), Job::Exited(exit));
                    }
                }
                Job::Guest(vm) => {
                    let _permit = self.permits.acquire().await.expect("semaphore never closed");
                    if let Err(e) = self.exec.reconcile_guest(&mut agg, vm).await {
                        tracing::warn!(%key, error = %e, "could not check a guest against its record; retrying");
                        self.retry_later(key.clone(), Job::Guest(vm));
                    }
                }
                Job::Reconcile(entry) => {
                    let _permit = self.permits.acquire().await.expect("semaphore never closed");
                    if let Err(e) = self.reconcile_one(&mut agg, entry.clone()).await {
                        tracing::warn!(%key, error = %e, "could not check for an operation left pending; retrying");
                        self.retry_later(key.clone(), Job::Reconcile(entry));
                    }
                }
            }
        }
    }

    fn retry_later(&self, key: String, job: Job) {
        let queues = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            queues.push(key, job);
        });
    }

    /// Carry out one command, or give up on it; says how to acknowledge it.
    async fn handle_command(&self, agg: &mut Option<VmAggregate>, msg: &Message) -> AckKind {
        let delivered = deliveries(msg);
        let started = std::time::Instant::now();
        let result = match decode_command(&msg.payload) {
            Err(e) => give_up_undecodable(&self.exec.bus, msg, None, &e).await,
            Ok(env) if delivered > self.cfg.max_deliveries => {
                tracing::warn!(op = %env.op, delivered, "command past its delivery limit; failing its operation");
                self.give_up(agg, &env, "delivery_limit", &delivery_limit_message(delivered)).await
            }
            // It waited too long for this host (which was away): fail it rather than run it late.
            Ok(env)
                if matches!(env.command, Command::Vm { .. }) && offline::overdue(&env, self.cfg.host_unavailable_after, time::OffsetDateTime::now_utc()) =>
            {
                let Command::Vm { vm, .. } = env.command else { unreachable!("matched above") };
                *agg = None;
                self.exec.fail_queued(env.org, vm, env.op, offline::CODE, &offline::message(self.cfg.host_unavailable_after)).await
            }
            Ok(env) => self.execute(agg, env).await,
        };
        match result {
            Ok(()) => {
                metrics::histogram!("vmplane_worker_command_seconds").record(started.elapsed().as_secs_f64());
                AckKind::Ack
            }
            Err(e) => {
                tracing::warn!(subject = %msg.subject, delivered, error = %e, "command not finished; it will be redelivered");
                AckKind::Nak(Some(backoff_delay(delivered, self.cfg.ack_wait)))
            }
        }
    }

    async fn execute(&self, agg: &mut Option<VmAggregate>, env: CommandEnvelope) -> Result<(), BusError> {
        let (op, org, project) = (env.op, env.org, env.project);
        match env.command {
            Command::Vm { vm, command } => {
                self.note_pending(org, Target::Vm(vm));
                self.exec.execute(agg, &VmJob { op, org, project, vm, command }).await?;
                let state = agg.as_ref().and_then(|a| a.state.as_ref());
                if state.is_none_or(|v| v.pending_op.is_none()) {
                    self.clear_pending(&Target::Vm(vm));
                }
                Ok(())
            }
            Command::Volume { volume, command } => {
                self.note_pending(org, Target::Volume(volume));
                self.exec.execute_volume(&VolumeJob { op, org, project, volume, command }).await?;
                self.clear_pending(&Target::Volume(volume));
                Ok(())
            }
            Command::Host { host, command } => self.exec.execute_host(op, host, &command).await,
            Command::Tenancy { command } => {
                let message = "a tenancy command was addressed to a host; no worker carries it out there";
                record_operation_failed(&self.exec.bus, Some(command.org()), op, &command.org().to_string(), "misrouted", message.into()).await
            }
            Command::Template { template, .. } => {
                let message = "a template command was addressed to a host; no worker carries it out there";
                record_operation_failed(&self.exec.bus, Some(org), op, &template.to_string(), "misrouted", message.into()).await
            }
            Command::SshKey { command } => {
                let message = "an ssh key command was addressed to a host; no worker carries it out there";
                record_operation_failed(&self.exec.bus, Some(command.org()), op, &command.id().to_string(), "misrouted", message.into()).await
            }
            Command::Webhook { command } => {
                let message = "a webhook command was addressed to a host; no worker carries it out there";
                record_operation_failed(&self.exec.bus, Some(command.org()), op, &command.id().to_string(), "misrouted", message.into()).await
            }
            Command::Cordon { host, .. } => {
                let message = "a cordon was addressed to a host's own consumer; no worker carries it out there";
                record_operation_failed(&self.exec.bus, None, op, &host.to_string(), "misrouted", message.into()).await
            }
        }
    }

    /// End the command's operation as failed, through its aggregate's own
    /// events where it has one.
    async fn give_up(&self, agg: &mut Option<VmAggregate>, env: &CommandEnvelope, code: &str, message: &str) -> Result<(), BusError> {
        let (op, org) = (env.op, env.org);
        let result = match &env.command {
            Command::Vm { vm, .. } => self.exec.fail_vm_op(agg, org, *vm, op, code, message).await,
            Command::Volume { volume, .. } => self.exec.fail_volume_op(org, *volume, op, code, message).await,
            Command::Host { host, command } => self.exec.fail_host_op(*host, op, command, message).await,
            Command::Tenancy { command } => {
                record_operation_failed(&self.exec.bus, Some(command.org()), op, &target_of(&env.command), code, message.into()).await
            }
            Command::Template { .. } => record_operation_failed(&self.exec.bus, Some(org), op, &target_of(&env.command), code, message.into()).await,
            Command::SshKey { command } => {
                record_operation_failed(&self.exec.bus, Some(command.org()), op, &target_of(&env.command), code, message.into()).await
            }
            Command::Webhook { command } => {
                record_operation_failed(&self.exec.bus, Some(command.org()), op, &target_of(&env.command), code, message.into()).await
            }
            Command::Cordon { .. } => record_operation_failed(&self.exec.bus, None, op, &target_of(&env.command), code, message.into()).await,
        };
        match result {
            // The aggregate's events cannot be read: end the operation on its own subject.
            Err(BusError::Codec(e)) => {
                record_operation_failed(
                    &self.exec.bus,
                    Some(org),
                    op,
                    &target_of(&env.command),
                    code,
                    format!("{message} (its target's events are unreadable: {e})"),
                )
                .await
            }
            other => other,
        }
    }

    /// Resume the operation the index says may be left pending on an
    /// aggregate, unless its command is still in the stream (its delivery
    /// resumes it); give up past the delivery limit.
    async fn reconcile_one(&self, agg: &mut Option<VmAggregate>, mut entry: pending::Entry) -> Result<(), BusError> {
        let bus = &self.exec.bus;
        let (org, target) = (entry.org, entry.target);
        let (pending_op, subject) = match target {
            Target::Vm(vm) => {
                let a = VmAggregate::load(bus, org, vm).await?;
                let op = a.state.as_ref().and_then(|v| v.pending_op.as_ref()).map(|p| p.id);
                *agg = Some(a);
                (op, subjects::vm_command(self.exec.host, vm))
            }
            Target::Volume(volume) => {
                let v = aggregate::VolumeAggregate::load(bus, org, volume).await?;
                (v.state.and_then(|v| v.pending_op), subjects::volume_command(self.exec.host, volume))
            }
        };
        let Some(op) = pending_op else {
            self.clear_pending(&target);
            return Ok(());
        };
        if bus.command_in_stream(&subject, &op.to_string()).await? {
            tracing::info!(%op, target = %target.key(), "operation pending; its command is still queued and will resume it");
            return Ok(());
        }
        entry.resumes += 1;
        if let Err(e) = self.pending.write(&entry) {
            tracing::warn!(error = %e, "cannot count a resumption in the pending-operation index");
        }
        if entry.resumes > self.cfg.max_deliveries {
            tracing::warn!(%op, target = %target.key(), resumes = entry.resumes, "giving up on an operation whose command is gone");
            let message = format!("the worker gave up on this operation after resuming it {} times without its command", entry.resumes - 1);
            match target {
                Target::Vm(vm) => self.exec.fail_vm_op(agg, org, vm, op, "delivery_limit", &message).await?,
                Target::Volume(volume) => self.exec.fail_volume_op(org, volume, op, "delivery_limit", &message).await?,
            }
        } else {
            tracing::warn!(%op, target = %target.key(), "operation left pending and its command is gone; resuming it");
            match target {
                Target::Vm(vm) => self.exec.resume_vm(agg, org, vm).await?,
                Target::Volume(volume) => self.exec.resume_volume(org, volume).await?,
            }
        }
        self.clear_pending(&target);
        Ok(())
    }

    fn note_pending(&self, org: OrgId, target: Target) {
        if let Err(e) = self.pending.note(org, target) {
            tracing::warn!(target = %target.key(), error = %e, "cannot note a pending operation in the local index");
        }
    }

    fn clear_pending(&self, target: &Target) {
        if let Err(e) = self.pending.clear(target) {
            tracing::warn!(target = %target.key(), error = %e, "cannot clear a pending operation from the local index");
        }
    }
}

async fn consume_vm_commands(queues: VmQueues) -> anyhow::Result<()> {
    let consumer_cfg = consumer_config(host_consumer(queues.exec.host), subjects::host_commands(queues.exec.host), &queues.cfg);
    let bus = queues.exec.bus.clone();
    pull_forever(&bus, consumer_cfg, |msg| {
        let key = msg.subject.rsplit('.').next().unwrap_or_default().to_owned();
        let alive = KeepAlive::start(&msg, queues.cfg.ack_wait / 3);
        queues.push(key, Job::Command(Box::new(msg), alive));
    })
    .await
}

/// How the name of a host's durable command consumer begins (the host id follows).
pub(crate) const HOST_CONSUMER_PREFIX: &str = "host-";

/// The durable consumer of a host's commands.
pub(crate) fn host_consumer(host: HostId) -> String {
    format!("{HOST_CONSUMER_PREFIX}{host}")
}

/// The resource a command addresses, for an operation that ends without its events.
fn target_of(command: &Command) -> String {
    match command {
        Command::Vm { vm, .. } => vm.to_string(),
        Command::Volume { volume, .. } => volume.to_string(),
        Command::Host { host, .. } => host.to_string(),
        Command::Tenancy { command } => command.org().to_string(),
        Command::Template { template, .. } => template.to_string(),
        Command::SshKey { command } => command.id().to_string(),
        Command::Webhook { command } => command.id().to_string(),
        Command::Cordon { host, .. } => host.to_string(),
    }
}

/// Turn the driver's reports of guests stopping on their own into VM jobs.
async fn forward_exits(queues: VmQueues, exits: Option<mpsc::UnboundedReceiver<GuestExit>>) -> anyhow::Result<()> {
    let Some(mut exits) = exits else { return std::future::pending().await };
    while let Some(exit) = exits.recv().await {
        queues.push(exit.vm.to_string(), Job::Exited(exit));
    }
    Ok(())
}

/// Redelivery delay after a bus error: grows with each attempt, capped at AckWait.
pub(crate) fn backoff_delay(delivered: i64, cap: Duration) -> Duration {
    let exp = delivered.clamp(1, 10) as u32;
    Duration::from_millis(200u64.saturating_mul(2u64.saturating_pow(exp - 1))).min(cap)
}
