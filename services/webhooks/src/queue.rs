//! The delivery queues: one per endpoint and aggregate, each drained by a
//! task of its own, in order, one attempt at a time.
//!
//! An event read from the stream is acknowledged once each of its
//! deliveries is *settled*: attempted and recorded, or written to the queue
//! bucket. A queue whose head failed is kept in the bucket (key
//! `q.<webhook>.<aggregate>`, the items in order with their attempt count
//! and next attempt time) until it is empty again, so a deliverer that dies
//! loses nothing: unacknowledged events come again from the stream, waiting
//! ones from the bucket. An endpoint's failing-since time is kept there too
//! (`h.<webhook>`), for the rule that disables endpoints failing for days.

use crate::Shared;
use async_nats::jetstream::{Message, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use vmplane_domain::delivery::{self, AfterFailure, Answer, AttemptOutcome, DeliveryAttempt, DisableReason};
use vmplane_domain::event::{Envelope, Event, EventView};
use vmplane_domain::webhook::{self, SecretRecord, Webhook, WebhookEvent};
use vmplane_domain::{DeliveryId, EventId, OrgId, WebhookId, subjects};

/// How long to wait before trying a NATS operation again.
const BUS_RETRY: Duration = Duration::from_millis(500);

/// One endpoint's deliveries of one aggregate's events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub webhook: WebhookId,
    pub aggregate: String,
}

impl QueueKey {
    fn kv_key(&self) -> String {
        format!("q.{}.{}", self.webhook, self.aggregate)
    }

    fn from_kv_key(key: &str) -> Option<Self> {
        let (webhook, aggregate) = key.strip_prefix("q.")?.split_once('.')?;
        Some(Self { webhook: webhook.parse().ok()?, aggregate: aggregate.to_owned() })
    }
}

/// Acknowledges a stream message once every delivery holding it has settled
/// (when the last holder drops it); never after the deliverer lost its turn.
pub struct AckGuard {
    seq: u64,
    msg: Mutex<Option<Message>>,
    shared: Weak<Shared>,
}

impl std::fmt::Debug for AckGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckGuard").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl AckGuard {
    pub fn new(seq: u64, msg: Message, shared: &Arc<Shared>) -> Arc<Self> {
        let guard = Arc::new(Self { seq, msg: Mutex::new(Some(msg)), shared: Arc::downgrade(shared) });
        shared.inflight.lock().expect("inflight lock").insert(seq, Arc::downgrade(&guard));
        guard
    }

    /// The same event came again (its acknowledgement wait ran out): answer the latest delivery.
    pub fn redelivered(&self, msg: Message) {
        *self.msg.lock().expect("ack guard lock") = Some(msg);
    }

    /// Tell the stream the event is still being delivered, so it is not sent again.
    pub async fn keep_alive(&self) {
        let msg = self.msg.lock().expect("ack guard lock").clone();
        if let Some(msg) = msg {
            let _ = msg.ack_with(async_nats::jetstream::AckKind::Progress).await;
        }
    }

    /// Leave the event unacknowledged whatever its other holders do: a
    /// delivery of it was not attempted, so it must come again.
    fn forsake(&self) {
        self.msg.lock().expect("ack guard lock").take();
    }
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else { return };
        {
            let mut inflight = shared.inflight.lock().expect("inflight lock");
            if inflight.get(&self.seq).is_some_and(|w| w.strong_count() == 0) {
                inflight.remove(&self.seq);
            }
        }
        if shared.cancel.is_cancelled() {
            return;
        }
        if let Some(msg) = self.msg.lock().expect("ack guard lock").take() {
            shared.tasks.spawn(async move {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "acknowledging an event failed; it comes again and is deduplicated");
                }
            });
        }
    }
}

/// One delivery waiting in a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub seq: u64,
    pub event_id: EventId,
    /// Attempts made so far in this run of the schedule.
    pub attempts: u32,
    /// Not before this time (`None`: as soon as it is the head).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_at: Option<OffsetDateTime>,
    /// Asked for with a retry request.
    pub manual: bool,
    /// The event, when read from the stream just now.
    #[serde(skip)]
    pub env: Option<Arc<Envelope>>,
    /// Held until the item is settled.
    #[serde(skip)]
    pub ack: Option<Arc<AckGuard>>,
}

impl Item {
    /// A delivery of an event just read.
    pub fn new(seq: u64, env: Arc<Envelope>, ack: Arc<AckGuard>) -> Self {
        Self { seq, event_id: env.id, attempts: 0, next_at: None, manual: false, env: Some(env), ack: Some(ack) }
    }

    /// A delivery asked for again by its endpoint's owner.
    pub fn manual(seq: u64, event_id: EventId, ack: Arc<AckGuard>) -> Self {
        Self { seq, event_id, attempts: 0, next_at: None, manual: true, env: None, ack: Some(ack) }
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    items: VecDeque<Item>,
}

#[derive(Serialize, Deserialize)]
struct Failing {
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
}

/// Hand an item to its queue's task, starting the task if there is none.
pub fn enqueue(shared: &Arc<Shared>, key: QueueKey, item: Item) {
    let mut queues = shared.queues.lock().expect("queues lock");
    let item = match queues.get(&key) {
        Some(tx) => match tx.send(item) {
            Ok(()) => return,
            Err(mpsc::error::SendError(item)) => item,
        },
        None => item,
    };
    start(shared, &mut queues, key, VecDeque::from([item]), None);
}

type Queues = std::collections::HashMap<QueueKey, mpsc::UnboundedSender<Item>>;

fn start(shared: &Arc<Shared>, queues: &mut Queues, key: QueueKey, items: VecDeque<Item>, revision: Option<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    queues.insert(key.clone(), tx);
    let shared = shared.clone();
    shared.tasks.clone().spawn(async move {
        let cancel = shared.cancel.clone();
        let queue = Queue { shared, key, items, revision, rx };
        tokio::select! {
            () = queue.run() => {}
            () = cancel.cancelled() => {}
        }
    });
}

/// Start a task for every queue the bucket holds, and read the endpoints'
/// failing-since times (at the start of an active turn).
pub async fn resume(shared: &Arc<Shared>) -> anyhow::Result<usize> {
    use futures::TryStreamExt;
    let keys: Vec<String> = shared.queue_kv.keys().await?.try_collect().await?;
    let mut resumed = 0;
    for k in keys {
        if let Some(id) = k.strip_prefix("h.").and_then(|id| id.parse::<WebhookId>().ok()) {
            if let Some(e) = shared.queue_kv.entry(&k).await?.filter(|e| e.operation == kv::Operation::Put)
                && let Ok(f) = serde_json::from_slice::<Failing>(&e.value)
            {
                shared.failing.lock().expect("failing lock").insert(id, f.since);
            }
            continue;
        }
        let Some(key) = QueueKey::from_kv_key(&k) else { continue };
        let Some(entry) = shared.queue_kv.entry(&k).await?.filter(|e| e.operation == kv::Operation::Put) else { continue };
        let stored: Stored = match serde_json::from_slice(&entry.value) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(key = %k, error = %e, "an unreadable delivery queue; leaving it in the bucket");
                continue;
            }
        };
        let mut queues = shared.queues.lock().expect("queues lock");
        start(shared, &mut queues, key, stored.items, Some(entry.revision));
        resumed += 1;
    }
    Ok(resumed)
}

struct Queue {
    shared: Arc<Shared>,
    key: QueueKey,
    items: VecDeque<Item>,
    /// The bucket's revision of this queue, while the bucket holds it.
    revision: Option<u64>,
    rx: mpsc::UnboundedReceiver<Item>,
}

impl Queue {
    async fn run(mut self) {
        loop {
            if self.shared.stopping.is_cancelled() {
                return self.leave_unattempted();
            }
            let mut arrived = false;
            while let Ok(item) = self.rx.try_recv() {
                arrived |= self.take(item);
            }
            if arrived && self.revision.is_some() {
                self.persist().await;
            }
            if self.items.is_empty() {
                self.forget().await;
                // Items are sent under the queues lock: none is lost between the check and the removal.
                let mut queues = self.shared.queues.lock().expect("queues lock");
                match self.rx.try_recv() {
                    Ok(item) => {
                        drop(queues);
                        self.take(item);
                        continue;
                    }
                    Err(_) => {
                        queues.remove(&self.key);
                        return;
                    }
                }
            }
            let endpoint = self.shared.endpoints.read().expect("endpoints lock").enabled(self.key.webhook).cloned();
            let Some(endpoint) = endpoint else {
                // Deleted or disabled: nothing more is sent to it; its deliveries are settled.
                tracing::info!(webhook = %self.key.webhook, dropped = self.items.len(), "endpoint gone or disabled; its waiting deliveries are dropped");
                self.items.clear();
                continue;
            };
            let now = OffsetDateTime::now_utc();
            if let Some(wait) = self.items[0].next_at.and_then(|at| Duration::try_from(at - now).ok()).filter(|d| !d.is_zero()) {
                tokio::select! {
                    item = self.rx.recv() => if let Some(item) = item && self.take(item) && self.revision.is_some() {
                        self.persist().await;
                    },
                    () = tokio::time::sleep(wait) => {}
                    () = self.shared.stopping.cancelled() => {}
                }
                continue;
            }
            self.attempt(&endpoint).await;
        }
    }

    /// At a clean stop: what this queue holds and has not attempted stays
    /// unacknowledged (the next deliverer gets it again); what the bucket
    /// holds carries no acknowledgement anyway.
    fn leave_unattempted(&mut self) {
        while let Ok(item) = self.rx.try_recv() {
            self.items.push_back(item);
        }
        for guard in self.items.iter_mut().filter_map(|i| i.ack.take()) {
            guard.forsake();
        }
    }

    /// Take an item in; whether the queue changed. A retry request for a
    /// delivery already waiting here makes it due now (a change); a
    /// redelivery of one is dropped (no change).
    fn take(&mut self, item: Item) -> bool {
        if let Some(existing) = self.items.iter_mut().find(|i| i.event_id == item.event_id) {
            if item.manual {
                existing.next_at = None;
                existing.manual = true;
                existing.attempts = 0;
                return true;
            }
            // A redelivery of a waiting delivery that the bucket holds: the
            // copy (and its acknowledgement) is settled by dropping it.
            return false;
        }
        self.items.push_back(item);
        true
    }

    /// Attempt the head delivery, record it, and settle what follows.
    async fn attempt(&mut self, endpoint: &Webhook) {
        let head = self.items[0].clone();
        let Some(env) = self.event(&head).await else {
            self.items.pop_front();
            return self.save_or_forget().await;
        };
        let Some(secrets) = self.secrets().await else {
            tracing::warn!(webhook = %endpoint.id, "no signing secret for the endpoint (deleted?); its deliveries are dropped");
            self.items.clear();
            return;
        };
        let body = match serde_json::to_vec(&EventView::new(head.seq, (*env).clone())) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "an event does not render as JSON; not delivered");
                self.items.pop_front();
                return self.save_or_forget().await;
            }
        };
        let reply = {
            // The endpoint's own permit first: a busy endpoint's queues wait
            // without holding permits that other endpoints need.
            let per_endpoint = self.shared.endpoint_permits(endpoint.id);
            let _one = per_endpoint.acquire().await.expect("the semaphore is never closed");
            let _total = self.shared.total.acquire().await.expect("the semaphore is never closed");
            let now = OffsetDateTime::now_utc();
            let signing = secrets.signing(now);
            self.shared.sender.send(&endpoint.url, &env.id.to_string(), body, &signing).await
        };
        let now = OffsetDateTime::now_utc();
        let attempt = head.attempts + 1;
        let answer = delivery::classify(reply.status, reply.retry_after.as_deref(), now);
        let failing_since = self.shared.failing_since(endpoint.id);
        let (outcome, next_retry_at, disable) = match answer {
            Answer::Delivered => (AttemptOutcome::Delivered, None, None),
            _ => {
                let since = failing_since.unwrap_or(now);
                match delivery::after_failure(&self.shared.cfg.schedule, attempt, answer, now, since, self.shared.cfg.disable_after) {
                    AfterFailure::RetryAt(at) => (AttemptOutcome::Retrying, Some(at), None),
                    AfterFailure::GiveUp => (AttemptOutcome::Failed, None, None),
                    AfterFailure::Disable(reason) => (AttemptOutcome::EndpointDisabled, None, Some(reason)),
                }
            }
        };
        let error = match (reply.status, &reply.error) {
            (Some(s), None) if !(200..300).contains(&s) => Some(format!("HTTP {s}")),
            (_, e) => e.clone(),
        };
        let record = DeliveryAttempt {
            delivery_id: DeliveryId::of(env.id),
            event_id: env.id,
            event_seq: head.seq,
            event_type: format!("{}.{}", env.event.aggregate_type(), env.event.type_name()),
            aggregate: env.aggregate.clone(),
            attempt,
            attempted_at: now,
            status: reply.status,
            error,
            duration_ms: reply.duration.as_millis() as u64,
            outcome,
            next_retry_at,
            manual: head.manual,
        };
        metrics::counter!("vmplane_webhook_attempts_total", "outcome" => outcome_name(outcome)).increment(1);
        self.record(endpoint.org, endpoint.id, record).await;
        match outcome {
            AttemptOutcome::Delivered => self.shared.set_failing(endpoint.id, None).await,
            _ if failing_since.is_none() => self.shared.set_failing(endpoint.id, Some(now)).await,
            _ => {}
        }
        match (outcome, disable) {
            (AttemptOutcome::Delivered | AttemptOutcome::Failed, _) => {
                self.items.pop_front();
                self.save_or_forget().await;
            }
            (AttemptOutcome::Retrying, _) => {
                let head = &mut self.items[0];
                head.attempts = attempt;
                head.next_at = next_retry_at;
                head.manual = false;
                self.persist().await;
            }
            (AttemptOutcome::EndpointDisabled, reason) => {
                self.shared.disable(endpoint.org, endpoint.id, reason.unwrap_or(DisableReason::Failing)).await;
                self.items.clear();
            }
        }
    }

    /// The head's event: read just now, or fetched from the stream by sequence.
    async fn event(&self, item: &Item) -> Option<Arc<Envelope>> {
        if let Some(env) = &item.env {
            return Some(env.clone());
        }
        loop {
            match self.shared.events.get_raw_message(item.seq).await {
                Ok(raw) => {
                    return match Envelope::decode(&raw.payload) {
                        Ok(env) if env.id == item.event_id => Some(Arc::new(env)),
                        Ok(_) | Err(_) => {
                            tracing::error!(seq = item.seq, "the event to deliver is not at its sequence; dropping the delivery");
                            None
                        }
                    };
                }
                Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                    tracing::error!(seq = item.seq, "the event to deliver is gone from the stream; dropping the delivery");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading an event to deliver");
                    tokio::time::sleep(BUS_RETRY).await;
                }
            }
        }
    }

    /// The endpoint's signing secrets (`None`: the endpoint has none: deleted).
    async fn secrets(&self) -> Option<SecretRecord> {
        loop {
            match self.shared.secrets_kv.entry(self.key.webhook.to_string()).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => return serde_json::from_slice(&e.value).ok(),
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading a webhook secret");
                    tokio::time::sleep(BUS_RETRY).await;
                }
            }
        }
    }

    /// Append the attempt's record (the same event id on every try, so a retry is deduplicated).
    async fn record(&self, org: OrgId, id: WebhookId, attempt: DeliveryAttempt) {
        let env = Envelope::new(org, None, id.to_string(), None, Event::Webhook(WebhookEvent::DeliveryAttempted(Box::new(attempt))), OffsetDateTime::now_utc());
        let subject = subjects::webhook_deliveries(org, id);
        while let Err(e) = self.shared.bus.record(&subject, &env).await {
            tracing::warn!(error = %e, "recording a delivery attempt");
            tokio::time::sleep(BUS_RETRY).await;
        }
    }

    /// Keep the queue in the bucket if it is there, or forget it when empty.
    async fn save_or_forget(&mut self) {
        if self.items.is_empty() {
            self.forget().await;
        } else if self.revision.is_some() {
            self.persist().await;
        }
    }

    /// Write the queue to the bucket; every item in it is settled.
    async fn persist(&mut self) {
        let stored = Stored { items: self.items.clone() };
        let value: Bytes = serde_json::to_vec(&stored).expect("a queue serializes").into();
        let key = self.key.kv_key();
        loop {
            let written = match self.revision {
                Some(rev) => self.shared.queue_kv.update(&key, value.clone(), rev).await.map_err(|e| e.to_string()),
                None => self.shared.queue_kv.put(&key, value.clone()).await.map_err(|e| e.to_string()),
            };
            match written {
                Ok(rev) => {
                    self.revision = Some(rev);
                    break;
                }
                Err(e) => {
                    tracing::warn!(queue = %key, error = %e, "writing a delivery queue");
                    // Another writer (a deliverer that lost its turn) changed it: write ours over it.
                    self.revision = None;
                    tokio::time::sleep(BUS_RETRY).await;
                }
            }
        }
        for item in &mut self.items {
            item.ack = None;
        }
    }

    /// Remove the queue from the bucket (it is empty).
    async fn forget(&mut self) {
        if self.revision.take().is_some() {
            let key = self.key.kv_key();
            while let Err(e) = self.shared.queue_kv.purge(&key).await {
                tracing::warn!(queue = %key, error = %e, "removing an empty delivery queue");
                tokio::time::sleep(BUS_RETRY).await;
            }
        }
    }
}

fn outcome_name(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::Retrying => "retrying",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::EndpointDisabled => "endpoint_disabled",
    }
}

impl Shared {
    /// Since when the endpoint fails without a success (`None`: it does not).
    fn failing_since(&self, id: WebhookId) -> Option<OffsetDateTime> {
        self.failing.lock().expect("failing lock").get(&id).copied()
    }

    /// Record that the endpoint started failing, or succeeded again.
    async fn set_failing(&self, id: WebhookId, since: Option<OffsetDateTime>) {
        {
            let mut failing = self.failing.lock().expect("failing lock");
            match since {
                Some(t) => {
                    if failing.insert(id, t).is_some() {
                        return;
                    }
                }
                None => {
                    if failing.remove(&id).is_none() {
                        return;
                    }
                }
            }
        }
        let key = format!("h.{id}");
        let written = match since {
            Some(since) => {
                self.queue_kv.put(&key, serde_json::to_vec(&Failing { since }).expect("serializes").into()).await.map(drop).map_err(|e| e.to_string())
            }
            None => self.queue_kv.purge(&key).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            tracing::warn!(webhook = %id, error = %e, "recording whether an endpoint fails");
        }
    }

    /// Disable an endpoint: at once here, and with `webhook.endpoint_disabled`
    /// on its subject (after its last event, so a concurrent change by its
    /// owner is decided again rather than overwritten).
    pub(crate) async fn disable(&self, org: OrgId, id: WebhookId, reason: DisableReason) {
        self.endpoints.write().expect("endpoints lock").mark_disabled(id);
        let subject = subjects::webhook_events(org, id);
        for _ in 0..10 {
            let history = match self.bus.load(&subject).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "reading an endpoint to disable it");
                    tokio::time::sleep(BUS_RETRY).await;
                    continue;
                }
            };
            let state = history.iter().fold(None, |s, (_, e)| match &e.event {
                Event::Webhook(ev) => webhook::evolve(s, id, e.time, ev),
                _ => s,
            });
            if !state.is_some_and(|w| w.enabled) {
                return;
            }
            let env = Envelope::new(org, None, id.to_string(), None, Event::Webhook(WebhookEvent::EndpointDisabled { reason }), OffsetDateTime::now_utc());
            match self.bus.append(&subject, &env, history.last().map_or(0, |(seq, _)| *seq)).await {
                Ok(_) => {
                    tracing::warn!(webhook = %id, ?reason, "endpoint disabled");
                    return;
                }
                Err(e) => tracing::info!(error = %e, "disabling an endpoint raced a change; deciding again"),
            }
        }
        tracing::error!(webhook = %id, "the endpoint could not be disabled in ten tries; it stays disabled in this deliverer");
    }
}
