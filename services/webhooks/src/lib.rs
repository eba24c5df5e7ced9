//! The webhook deliverer (`vmplane webhooks`): reads the event stream
//! through a durable consumer and delivers each event to the endpoints of
//! its org that want it, signed as the Standard Webhooks specification says.
//!
//! - **Where it stands** lives in JetStream, not in memory: the durable
//!   consumer's acknowledgements are the cursor, and deliveries waiting
//!   behind a failing one are in the queue bucket (see [`queue`]). A killed
//!   deliverer loses nothing; the deliveries it had in flight are sent again
//!   (at least once; receivers drop duplicates by `webhook-id`). A stopped
//!   one (SIGTERM) first finishes the attempts it is making and
//!   acknowledges them, so a clean handover sends nothing twice.
//! - **Order**: one queue per endpoint and aggregate, drained one attempt at
//!   a time, so an endpoint never sees a VM's `running` before its
//!   `created`; a failing delivery holds back that queue only.
//! - **Records**: every attempt is an event (`webhook.delivery_attempted`,
//!   on `vmplane.evt.<org>.webhook.<id>.deliveries`), and an endpoint it
//!   disables gets `webhook.endpoint_disabled`: the gateway's projection
//!   shows deliveries from these alone.
//! - **One active**: replicas share a lease ([`lease`]); the holder
//!   delivers, the others stand by.
//! - **Bounds**: at most `max_in_flight` attempts at once, `max_per_endpoint`
//!   per endpoint, each within `timeout`, reading at most 64 KiB of an answer.

mod endpoints;
mod lease;
mod queue;
pub mod send;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{AckKind, kv, stream};
use endpoints::Endpoints;
use futures::StreamExt;
use queue::{AckGuard, Item, QueueKey};
use send::Sender;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vmplane_bus::Bus;
use vmplane_domain::delivery::{self, RetrySchedule};
use vmplane_domain::event::{Envelope, Event};
use vmplane_domain::webhook::WebhookEvent;
use vmplane_domain::{DeliveryId, WebhookId, subjects};

/// The durable consumer's name on the event stream.
pub const CONSUMER: &str = "webhooks";
/// How long an event read from the stream may go unacknowledged before it
/// is sent again. Events still being delivered are kept alive every third of
/// it; an active turn that finds events its predecessor left unacknowledged
/// collects them (about this long) before delivering, in stream order.
const ACK_WAIT: Duration = Duration::from_secs(6);

/// How the deliverer delivers.
#[derive(Debug, Clone)]
pub struct DelivererConfig {
    pub schedule: RetrySchedule,
    /// An attempt taking longer has failed.
    pub timeout: Duration,
    /// Deliver to loopback, private, link-local and metadata addresses too.
    pub allow_private: bool,
    /// An endpoint failing this long without a success is disabled.
    pub disable_after: Duration,
    /// Attempts at once, in all.
    pub max_in_flight: usize,
    /// Attempts at once, per endpoint.
    pub max_per_endpoint: usize,
    /// How long the active deliverer's lease lasts unless renewed.
    pub lease: Duration,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::default(),
            timeout: delivery::DEFAULT_TIMEOUT,
            allow_private: false,
            disable_after: delivery::DISABLE_AFTER,
            max_in_flight: 64,
            max_per_endpoint: 8,
            lease: Duration::from_secs(10),
        }
    }
}

/// What the tasks of one active turn share.
pub(crate) struct Shared {
    bus: Bus,
    cfg: DelivererConfig,
    sender: Sender,
    events: stream::Stream,
    queue_kv: kv::Store,
    secrets_kv: kv::Store,
    endpoints: RwLock<Endpoints>,
    queues: Mutex<HashMap<QueueKey, tokio::sync::mpsc::UnboundedSender<Item>>>,
    /// Events being delivered, by stream sequence: a redelivery of one joins it.
    inflight: Mutex<HashMap<u64, Weak<AckGuard>>>,
    /// Since when each failing endpoint fails (mirrored in the queue bucket).
    failing: Mutex<HashMap<WebhookId, OffsetDateTime>>,
    total: Semaphore,
    per_endpoint: Mutex<HashMap<WebhookId, Arc<Semaphore>>>,
    /// Cancelled when the turn ends: nothing is acknowledged after that.
    cancel: CancellationToken,
    /// Cancelled by a clean stop: each queue ends after the attempt it is
    /// making, and what it has not attempted is left unacknowledged.
    stopping: CancellationToken,
    /// The queues' tasks and the acknowledgements, which a clean stop waits for.
    tasks: TaskTracker,
}

impl Shared {
    fn endpoint_permits(&self, id: WebhookId) -> Arc<Semaphore> {
        self.per_endpoint.lock().expect("permits lock").entry(id).or_insert_with(|| Arc::new(Semaphore::new(self.cfg.max_per_endpoint.max(1)))).clone()
    }
}

/// Deliver until `shutdown` resolves: wait for the lease, deliver while it
/// is held, stand by again if it is lost.
pub async fn run(bus: Bus, cfg: DelivererConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    bus.ensure_topology().await?;
    let queue_kv = bus.bucket(subjects::WEBHOOK_QUEUE_BUCKET).await?;
    let me = ulid::Ulid::new();
    tokio::pin!(shutdown);
    loop {
        let revision = tokio::select! {
            r = lease::acquire(&queue_kv, me, cfg.lease) => r,
            () = &mut shutdown => return Ok(()),
        };
        tracing::info!(deliverer = %me, "this deliverer is active");
        let (cancel, stopping, tasks) = (CancellationToken::new(), CancellationToken::new(), TaskTracker::new());
        let ended = tokio::select! {
            r = active(&bus, &cfg, cancel.clone(), stopping.clone(), tasks.clone()) => match r {
                Ok(()) => "the event stream ended".to_owned(),
                Err(e) => format!("{e:#}"),
            },
            lost = lease::hold(&queue_kv, me, cfg.lease, revision) => lost,
            () = &mut shutdown => {
                // A clean stop: the attempts in progress end and are
                // acknowledged before the lease is let go, so the next
                // deliverer does not send them again.
                stopping.cancel();
                tasks.close();
                if tokio::time::timeout(cfg.timeout + ACK_WAIT, tasks.wait()).await.is_err() {
                    tracing::warn!("deliveries still in progress at the stop; the next deliverer sends them again");
                }
                cancel.cancel();
                lease::release(&queue_kv, me).await;
                tracing::info!("deliverer stopped");
                return Ok(());
            }
        };
        cancel.cancel();
        tracing::warn!(reason = %ended, "this deliverer's turn ended; standing by");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One active turn: resume the waiting queues, learn the endpoints, then
/// dispatch every event from the durable consumer's position on.
async fn active(bus: &Bus, cfg: &DelivererConfig, cancel: CancellationToken, stopping: CancellationToken, tasks: TaskTracker) -> anyhow::Result<()> {
    let events = bus.events_stream().await?;
    let shared = Arc::new(Shared {
        bus: bus.clone(),
        cfg: cfg.clone(),
        sender: Sender::new(cfg.timeout, cfg.allow_private)?,
        events: events.clone(),
        queue_kv: bus.bucket(subjects::WEBHOOK_QUEUE_BUCKET).await?,
        secrets_kv: bus.bucket(subjects::WEBHOOK_SECRET_BUCKET).await?,
        endpoints: RwLock::new(Endpoints::default()),
        queues: Mutex::default(),
        inflight: Mutex::default(),
        failing: Mutex::default(),
        total: Semaphore::new(cfg.max_in_flight.max(1)),
        per_endpoint: Mutex::default(),
        cancel,
        stopping,
        tasks,
    });
    let consumer_cfg = pull::Config {
        durable_name: Some(CONSUMER.into()),
        description: Some("webhook deliveries".into()),
        filter_subject: subjects::EVENTS_ALL.into(),
        // The first start reads the stream from its beginning: an endpoint
        // receives the events after its creation, so nothing older is sent.
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: 2_000,
        ..Default::default()
    };
    let consumer: async_nats::jetstream::consumer::PullConsumer = events.create_consumer(consumer_cfg).await?;
    let floor = consumer.cached_info().ack_floor.stream_sequence;
    let known = learn_endpoints(&shared).await?;
    let resumed = queue::resume(&shared).await?;
    let info = consumer.cached_info();
    let (left, last_delivered) = (info.num_ack_pending, info.delivered.stream_sequence);
    tracing::info!(endpoints = known, queues = resumed, from = floor + 1, "delivering");
    tokio::spawn(keep_alive(Arc::downgrade(&shared)));
    let mut messages = consumer.messages().await?;
    if left > 0 {
        // The previous deliverer left events unacknowledged. They come again
        // once their wait runs out, but not necessarily in stream order (a
        // kept-alive one expires last), and new events come meanwhile: hold
        // everything until they are all back, then dispatch in stream order.
        tracing::info!(unacknowledged = left, "the previous deliverer left events in flight; collecting them before delivering");
        let mut held = std::collections::BTreeMap::new();
        let mut back = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + ACK_WAIT * 3;
        while back.len() < left {
            let msg = match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(msg)) => msg?,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(back = back.len(), left, "not every unacknowledged event came back in time; delivering what did");
                    break;
                }
            };
            let Ok(seq) = msg.info().map(|i| i.stream_sequence) else { continue };
            if seq <= last_delivered {
                back.insert(seq);
            }
            // A second copy (its wait ran out again) replaces the first.
            held.insert(seq, msg);
        }
        for msg in held.into_values() {
            dispatch(&shared, msg);
        }
    }
    while let Some(next) = messages.next().await {
        let msg = next?;
        dispatch(&shared, msg);
    }
    Ok(())
}

/// Keep every event being delivered from being sent again, until the turn ends.
async fn keep_alive(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(ACK_WAIT / 3).await;
        let Some(shared) = shared.upgrade().filter(|s| !s.cancel.is_cancelled()) else { return };
        let live: Vec<Arc<AckGuard>> = shared.inflight.lock().expect("inflight lock").values().filter_map(Weak::upgrade).collect();
        drop(shared);
        futures::future::join_all(live.iter().map(|g| g.keep_alive())).await;
    }
}

/// Every endpoint as its events stand now, before any queue resumes (a parked
/// queue's endpoint may be newer than the consumer's position). Events read
/// again later change nothing, and an endpoint is sent only the events after
/// its creation, so knowing the present early is harmless.
async fn learn_endpoints(shared: &Arc<Shared>) -> anyhow::Result<usize> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let consumer = shared
        .events
        .create_consumer(OrderedConfig { filter_subject: subjects::WEBHOOK_ENDPOINTS_ALL.into(), deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    while pending > 0 {
        let Some(msg) = messages.next().await else { break };
        let msg = msg?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        pending = info.pending;
        if let Ok(env) = Envelope::decode(&msg.payload) {
            shared.endpoints.write().expect("endpoints lock").apply(info.stream_sequence, &env);
        }
    }
    Ok(shared.endpoints.read().expect("endpoints lock").len())
}

/// Route one event read from the stream to its deliveries.
fn dispatch(shared: &Arc<Shared>, msg: async_nats::jetstream::Message) {
    let Ok(info) = msg.info() else {
        tracing::error!(subject = %msg.subject, "a message without JetStream metadata");
        return;
    };
    let seq = info.stream_sequence;
    // A redelivery of an event still being delivered joins it.
    let live = shared.inflight.lock().expect("inflight lock").get(&seq).and_then(Weak::upgrade);
    if let Some(guard) = live {
        guard.redelivered(msg);
        return;
    }
    let env = match Envelope::decode(&msg.payload) {
        Ok(env) => Arc::new(env),
        Err(e) => {
            tracing::error!(seq, error = %e, "an undecodable event is not delivered");
            tokio::spawn(async move { msg.ack_with(AckKind::Ack).await });
            return;
        }
    };
    if matches!(env.event, Event::Webhook(_)) {
        shared.endpoints.write().expect("endpoints lock").apply(seq, &env);
    }
    let guard = AckGuard::new(seq, msg, shared);
    if let Event::Webhook(WebhookEvent::DeliveryRetryRequested { delivery, event_seq }) = &env.event {
        return retry_requested(shared, &env, *delivery, *event_seq, guard);
    }
    let targets = shared.endpoints.read().expect("endpoints lock").targets(seq, &env);
    for target in targets {
        let key = QueueKey { webhook: target.webhook, aggregate: env.aggregate.clone() };
        queue::enqueue(shared, key, Item::new(seq, env.clone(), guard.clone()));
    }
}

/// A retry request: the delivery of the event at `event_seq` goes into its
/// queue again (or, waiting there, becomes due now).
fn retry_requested(shared: &Arc<Shared>, env: &Envelope, delivery: DeliveryId, event_seq: u64, guard: Arc<AckGuard>) {
    let Ok(webhook) = env.aggregate.parse::<WebhookId>() else { return };
    let shared = shared.clone();
    tokio::spawn(async move {
        // The queue is the aggregate's whose event it is.
        let event = loop {
            match shared.events.get_raw_message(event_seq).await {
                Ok(raw) => break Envelope::decode(&raw.payload).ok(),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => break None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event of a retried delivery");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        match event.filter(|e| DeliveryId::of(e.id) == delivery) {
            Some(event) => {
                let key = QueueKey { webhook, aggregate: event.aggregate.clone() };
                queue::enqueue(&shared, key, Item::manual(event_seq, event.id, guard));
            }
            None => tracing::warn!(%delivery, event_seq, "a retried delivery's event is not in the stream; nothing to send"),
        }
    });
}
