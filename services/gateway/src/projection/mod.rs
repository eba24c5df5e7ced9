//! Read models in sled, folded from the event stream.
//!
//! Each gateway replica keeps its own. Every event is applied in one sled
//! batch together with the stream sequence it came from, so after a crash the
//! projection resumes exactly after the last applied event; a missing sled
//! directory is rebuilt by replaying the stream from the start.
//!
//! One tree of views, prefixed keys: `vm/<id>`, `vmidx/<org>/<id>`,
//! `op/<id>`, `org/<id>`, `prj/<org>/<id>`, `key/<id>`, `host/<id>`,
//! `hostuse/<id>`, `vol/<id>`, `volidx/<org>/<id>`, `snap/<id>`, `snapidx/<org>/<id>`, `snapclone/<snapshot>/<vm>` (a snapshot's live clones), `tpl/<id>`, `tplidx/<org>/<id>`,
//! `sshkey/<org>/<id>`, `wh/<org>/<id>`, `whdlv/<org>/<webhook>/<delivery>`,
//! `vmls/<org>[/<project>]/<status or all>/<id>` with counters `vmlsn/…`,
//! `vmname/<org>/<name>/<id>` (every VM a name was given),
//! `vmhost/<id>` (a VM's host, read without the VM),
//! `fork/<op>` and `forkof/<clone op>` (a fork's parts, while it runs),
//! `meta/applied` and `meta/version`. A second tree, `history`, holds each
//! VM's events (see `history.rs`): large values that only one read wants,
//! kept out of the views' tree so that its nodes stay small (sled copies a
//! node on every write).
//! A store written by another version of this layout is emptied on open and
//! rebuilt by replaying the stream.

mod history;
pub mod hosts;
pub mod operations;
pub mod snapshots;
pub mod ssh_keys;
pub mod templates;
pub mod tenancy;
pub mod vms;
pub mod volumes;
pub mod webhooks;

use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use vmplane_bus::Bus;
use vmplane_domain::event::{self, Envelope, Event};
use vmplane_domain::subjects;

const APPLIED: &[u8] = b"meta/applied";
/// At most this many events the consumer has ready are applied in one batch.
const BURST: usize = 512;
/// Events per second above which the stream is busy, and the projection
/// waits [`LINGER`] for more events before it commits a batch.
const BUSY_RATE: f64 = 2_000.0;
/// How long a busy projection gathers events for one batch. Each sled batch
/// has a fixed cost (two log writes and their `sync_file_range`, a global
/// write lock) and rewrites every view its events touch once, so fewer,
/// larger batches cost less per event. Below [`BUSY_RATE`] nothing is held,
/// so a lone request's read-your-writes wait is not lengthened.
const LINGER: Duration = Duration::from_millis(3);
/// Events applied in one batch when replaying the stream.
const REPLAY_BATCH: usize = 8_192;
const VERSION: &[u8] = b"meta/version";
/// The layout of the keys above; raised whenever a view or index changes shape.
const LAYOUT: u64 = 5;

/// The gateway's read side.
#[derive(Clone)]
pub struct Projections {
    tree: sled::Tree,
    /// Each VM's events (see the module docs).
    history: sled::Tree,
    applied: watch::Sender<u64>,
    /// Host liveness from heartbeats (not persisted: it is only meaningful live).
    pub heartbeats: hosts::Heartbeats,
    /// Requests waiting for an operation's next event.
    ops: operations::OpWaiters,
    hosts_cache: Arc<hosts::HostsCache>,
}

impl Projections {
    /// Open (or create) the projection store in `dir`.
    pub fn open(dir: &Path) -> sled::Result<Self> {
        let db = sled::Config::new().path(dir).flush_every_ms(Some(200)).open()?;
        let tree = db.open_tree("views")?;
        let history = db.open_tree("history")?;
        let layout = tree.get(VERSION)?.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
        if layout != Some(LAYOUT) {
            if !tree.is_empty() {
                tracing::info!(found = ?layout, wanted = LAYOUT, "the projection has another layout; rebuilding it from the event stream");
            }
            tree.clear()?;
            history.clear()?;
            tree.insert(VERSION, &LAYOUT.to_be_bytes())?;
        }
        let applied = tree.get(APPLIED)?.map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
        Ok(Self {
            tree,
            history,
            applied: watch::Sender::new(applied),
            heartbeats: hosts::Heartbeats::default(),
            ops: operations::OpWaiters::default(),
            hosts_cache: Arc::default(),
        })
    }

    /// The stream sequence of the last applied event.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver that wakes whenever another event has been applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Flush to disk; called on shutdown.
    pub async fn flush(&self) -> sled::Result<()> {
        self.history.flush_async().await?;
        self.tree.flush_async().await.map(|_| ())
    }

    /// Apply one event from the stream. Sequences at or below the cursor were
    /// applied before and are skipped, so redelivery is harmless.
    pub fn apply(&self, seq: u64, payload: &[u8]) -> sled::Result<()> {
        self.apply_all([(seq, payload)])
    }

    /// Apply events in stream order in one sled batch with the cursor: a key
    /// several of them write (a VM's view, its operation, a list counter) is
    /// written once, which is what makes a replay or a burst cheap. Readers
    /// see none of them or all; waiters are woken after the commit.
    pub fn apply_all<'p>(&self, events: impl IntoIterator<Item = (u64, &'p [u8])>) -> sled::Result<()> {
        match self.fold(self.applied(), None, events) {
            Some(folded) => self.commit(folded, Commit::Batch),
            None => Ok(()),
        }
    }

    /// Fold the events after sequence `after` into the writes they make;
    /// `None` if none was new. Views are read from this batch's own writes,
    /// then from `base` (the batch before, folded and not yet committed),
    /// then from the store.
    fn fold<'p>(&self, after: u64, base: Option<&Overlay>, events: impl IntoIterator<Item = (u64, &'p [u8])>) -> Option<Folded> {
        let mut txn = Txn::new(&self.tree, base);
        let mut last = after;
        let mut operations = Vec::new();
        let mut hosts_changed = false;
        for (seq, payload) in events {
            if seq <= last {
                continue;
            }
            last = seq;
            match Envelope::decode(payload) {
                Ok(env) => {
                    operations.extend(env.operation);
                    match &env.event {
                        Event::Vm(ev) => vms::apply(&mut txn, seq, &env, ev, payload),
                        Event::Tenancy(ev) => tenancy::apply(&mut txn, &env, ev),
                        Event::Host(ev) => {
                            hosts_changed = true;
                            hosts::apply(&mut txn, &env, ev);
                        }
                        Event::Volume(ev) => volumes::apply(&mut txn, &env, ev),
                        Event::Template(ev) => templates::apply(&mut txn, &env, ev),
                        Event::SshKey(ev) => ssh_keys::apply(&mut txn, &env, ev),
                        Event::Webhook(ev) => webhooks::apply(&mut txn, &env, ev),
                        // Operations have no view but their own (below).
                        Event::Operation(_) => {}
                    }
                    operations.extend(operations::apply(&mut txn, &env));
                    metrics::counter!("vmplane_projection_events_applied_total", "type" => env.event.type_name()).increment(1);
                }
                Err(e) => tracing::error!(seq, error = %e, "skipping undecodable event"),
            }
        }
        if last == after {
            return None;
        }
        txn.put_raw(APPLIED.to_vec(), last.to_be_bytes().to_vec());
        Some(Folded { overlay: Arc::new(txn.overlay), appended: txn.appended, last, operations, hosts_changed })
    }

    /// Commit a folded batch (see [`Txn`] for the order of its writes),
    /// then tell whoever waits for it.
    fn commit(&self, folded: Folded, how: Commit) -> sled::Result<()> {
        folded.appended.write(&self.history)?;
        match how {
            Commit::Batch => {
                let mut batch = sled::Batch::default();
                for (k, v) in folded.overlay.iter() {
                    match v {
                        Write::Value(v) => batch.insert(k.as_slice(), v.encode()),
                        Write::Bytes(v) => batch.insert(k.as_slice(), v.as_slice()),
                        // A key put and removed within the batch (a VM listed
                        // under a passing status) need not cost a write.
                        Write::Removed if !self.tree.contains_key(k)? => {}
                        Write::Removed => batch.remove(k.as_slice()),
                    }
                }
                self.tree.apply_batch(batch)?;
            }
            Commit::Inserts => {
                // The cursor last, once every write of the batch is in.
                for (k, v) in folded.overlay.iter().filter(|(k, _)| k.as_slice() != APPLIED) {
                    match v {
                        Write::Value(v) => drop(self.tree.insert(k.as_slice(), v.encode())?),
                        Write::Bytes(v) => drop(self.tree.insert(k.as_slice(), v.as_slice())?),
                        Write::Removed => drop(self.tree.remove(k.as_slice())?),
                    }
                }
                self.tree.insert(APPLIED, &folded.last.to_be_bytes())?;
            }
        }
        if folded.hosts_changed {
            self.hosts_cache.invalidate();
        }
        self.applied.send_replace(folded.last);
        metrics::gauge!("vmplane_projection_applied_sequence").set(folded.last as f64);
        for op in folded.operations {
            self.ops.wake(op);
        }
        Ok(())
    }

    /// Follow the event stream forever from the cursor, re-attaching after outages.
    pub async fn follow(&self, bus: Bus) {
        loop {
            if let Err(e) = self.follow_once(&bus).await {
                tracing::warn!(error = %e, "event stream interrupted; re-attaching");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn follow_once(&self, bus: &Bus) -> Result<(), BoxError> {
        let stats = bus.client.statistics();
        let connects = stats.connects.load(Ordering::Relaxed);
        let mut messages = ordered_events(bus, subjects::EVENTS_ALL.into(), self.applied() + 1).await?.ready_chunks(BURST);
        // The ordered consumer is ephemeral: a restarted NATS server has lost
        // it, and the client library takes ~15 s to say so, during which no
        // event is projected. Re-attach as soon as the client has reconnected.
        let mut check = tokio::time::interval(Duration::from_millis(250));
        let mut rate = EventRate::default();
        loop {
            tokio::select! {
                ready = messages.next() => {
                    let Some(ready) = ready else { return Ok(()) };
                    let mut events = Vec::with_capacity(ready.len());
                    sequence(ready, &mut events)?;
                    if rate.busy(events.len()) {
                        let until = tokio::time::Instant::now() + LINGER;
                        while events.len() < BURST {
                            match tokio::time::timeout_at(until, messages.next()).await {
                                Ok(Some(more)) => sequence(more, &mut events)?,
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                    self.apply_read(bus, events).await?;
                }
                _ = check.tick() => {
                    if stats.connects.load(Ordering::Relaxed) != connects {
                        return Err("reconnected to NATS".into());
                    }
                }
            }
        }
    }

    /// Replay the stream into an empty store until it holds every event that
    /// existed when the call began. Used by `vmplane projections rebuild`.
    ///
    /// The store is marked as of no layout until the replay is complete and
    /// flushed, so its batches need not be atomic: a replay cut short leaves
    /// a store that the next open empties (see [`Commit::Inserts`]).
    pub async fn rebuild(&self, bus: &Bus) -> Result<u64, BoxError> {
        if self.applied() != 0 {
            return Err("the projection store to rebuild is not empty".into());
        }
        let last = bus.events_last_sequence().await?;
        if last == 0 {
            return Ok(last);
        }
        let messages = ordered_events(bus, subjects::EVENTS_ALL.into(), self.applied() + 1).await?;
        // Reading and applying overlap: a task reads the next batch while
        // this one is applied. Batches are large: every key several events
        // write (a VM's view, its operation, a list counter) is written once.
        let (batches, mut ready) = tokio::sync::mpsc::channel::<Result<Sequenced, BoxError>>(1);
        let (bus, mut next) = (bus.clone(), self.applied() + 1);
        let reader = tokio::spawn(async move {
            let mut messages = messages.ready_chunks(BURST);
            let mut batch = Vec::with_capacity(REPLAY_BATCH);
            while let Some(chunk) = messages.next().await {
                if let Err(e) = sequence(chunk, &mut batch) {
                    let _ = batches.send(Err(e)).await;
                    return;
                }
                let reached = batch.last().is_some_and(|(seq, _)| *seq >= last);
                if batch.len() >= REPLAY_BATCH || reached {
                    let whole = fill_gaps(&bus, next, std::mem::take(&mut batch)).await;
                    if let Ok(whole) = &whole {
                        next = whole.last().map_or(next, |(seq, _)| next.max(seq + 1));
                    }
                    if batches.send(whole).await.is_err() || reached {
                        return;
                    }
                }
            }
        });
        let replayed = self.replay(&mut ready).await;
        reader.abort();
        replayed?;
        if self.applied() < last {
            return Err(format!("the event stream ended at {} before {last}", self.applied()).into());
        }
        self.mark_complete().await?;
        Ok(last)
    }

    /// Apply batches of events in stream order into a store being rebuilt,
    /// which is marked as of no layout first (see [`Self::mark_complete`]).
    /// Each batch is folded while the one before is committed, reading
    /// through that one's writes: folding and committing are a replay's
    /// largest costs, and each gets a core.
    async fn replay(&self, ready: &mut tokio::sync::mpsc::Receiver<Result<Sequenced, BoxError>>) -> Result<(), BoxError> {
        self.tree.remove(VERSION)?;
        let mut committing: Option<(Arc<Overlay>, tokio::task::JoinHandle<sled::Result<()>>)> = None;
        let mut after = self.applied();
        while let Some(batch) = ready.recv().await {
            let base = committing.as_ref().map(|(overlay, _)| overlay.clone());
            let folded = match batch {
                Ok(batch) => {
                    let me = self.clone();
                    tokio::task::spawn_blocking(move || me.fold(after, base.as_deref(), batch.iter().map(|(seq, payload)| (*seq, payload.as_ref()))))
                        .await
                        .map_err(BoxError::from)
                }
                Err(e) => Err(e),
            };
            // The commit under way ends first, even when this batch failed:
            // nothing is left writing.
            if let Some((_, commit)) = committing.take() {
                commit.await??;
            }
            let Some(folded) = folded? else { continue };
            after = folded.last;
            let (me, overlay) = (self.clone(), folded.overlay.clone());
            committing = Some((overlay, tokio::task::spawn_blocking(move || me.commit(folded, Commit::Inserts))));
        }
        if let Some((_, commit)) = committing {
            commit.await??;
        }
        Ok(())
    }

    /// Mark a replayed store as of this layout, once all it holds is on
    /// disk: until then, opening it empties it.
    async fn mark_complete(&self) -> sled::Result<()> {
        self.flush().await?;
        self.tree.insert(VERSION, &LAYOUT.to_be_bytes())?;
        self.flush().await
    }

    /// Apply events read from the stream in one batch, with any the reader
    /// skipped after the cursor read from the stream's leader first.
    pub async fn apply_read(&self, bus: &Bus, events: Sequenced) -> Result<(), BoxError> {
        let events = fill_gaps(bus, self.applied() + 1, events).await?;
        Ok(self.apply_all(events.iter().map(|(seq, payload)| (*seq, payload.as_ref())))?)
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> sled::Result<Option<T>> {
        Ok(self.tree.get(key)?.and_then(|v| event::decode(&v).ok()))
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> impl Iterator<Item = sled::Result<T>> + '_ {
        self.tree.scan_prefix(prefix).filter_map(|r| match r {
            Ok((_, v)) => event::decode(&v).ok().map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    fn scan_keys(&self, prefix: &[u8]) -> impl Iterator<Item = sled::Result<sled::IVec>> + '_ {
        self.tree.scan_prefix(prefix).keys()
    }

    /// The ids an index holds: the last part of each key under `prefix`.
    fn indexed<I: std::str::FromStr>(&self, prefix: &[u8]) -> impl Iterator<Item = sled::Result<I>> + '_ {
        self.scan_keys(prefix).filter_map(|k| match k {
            Ok(k) => std::str::from_utf8(&k).ok().and_then(|s| s.rsplit('/').next()).and_then(|s| s.parse().ok()).map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    /// One page of the views an index under `prefix` names (read by `view`),
    /// those `keep` keeps, oldest first, and their total.
    fn page<I: std::str::FromStr, T>(
        &self,
        prefix: &[u8],
        view: impl Fn(I) -> sled::Result<Option<T>>,
        keep: impl Fn(&T) -> bool,
        offset: usize,
        limit: usize,
    ) -> sled::Result<(Vec<T>, usize)> {
        let mut page = Vec::new();
        let mut total = 0;
        for id in self.indexed(prefix) {
            let Some(item) = view(id?)?.filter(&keep) else { continue };
            if total >= offset && page.len() < limit {
                page.push(item);
            }
            total += 1;
        }
        Ok((page, total))
    }

    /// Insert `value` at `key` only if absent: used for records the gateway
    /// itself creates on accepting a command, which events later overwrite.
    fn insert_if_absent<T: Serialize>(&self, key: &[u8], value: &T) -> sled::Result<bool> {
        let bytes = event::encode(value).expect("projection values always encode");
        Ok(self.tree.compare_and_swap(key, None as Option<&[u8]>, Some(bytes))?.is_ok())
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The rate of events the projection reads, over windows of at least 100 ms.
struct EventRate {
    since: std::time::Instant,
    events: usize,
    /// Events per second over the last whole window.
    last: f64,
}

impl Default for EventRate {
    fn default() -> Self {
        Self { since: std::time::Instant::now(), events: 0, last: 0.0 }
    }
}

impl EventRate {
    /// Count `read` more events; whether the last whole window was above [`BUSY_RATE`].
    fn busy(&mut self, read: usize) -> bool {
        self.busy_at(std::time::Instant::now(), read)
    }

    fn busy_at(&mut self, now: std::time::Instant, read: usize) -> bool {
        self.events += read;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= Duration::from_millis(100) {
            self.last = self.events as f64 / elapsed.as_secs_f64();
            (self.since, self.events) = (now, 0);
        }
        self.last >= BUSY_RATE
    }
}

/// A chunk of messages an ordered consumer had ready.
type Ready = Vec<Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>>;
/// Event payloads with their stream sequences, in stream order.
pub type Sequenced = Vec<(u64, bytes::Bytes)>;

/// Append each message of `ready` with its stream sequence to `into`.
fn sequence(ready: Ready, into: &mut Sequenced) -> Result<(), BoxError> {
    for msg in ready {
        let msg = msg?;
        into.push((msg.info()?.stream_sequence, msg.message.payload));
    }
    Ok(())
}

/// `events` (read in stream order, the first expected at `next`) with the
/// events missing between them read from the stream's leader.
///
/// The event stream has no gaps, yet an ordered consumer may skip: it is an
/// R1 consumer that nats-server 2.9 places on any replica of the stream,
/// including one that is still catching up after a restart, and it reads
/// that replica's copy. The projection must hold every event (a skipped
/// `created` is a VM one gateway never lists), so a gap is read back from
/// the leader. A sequence the leader lacks too was deleted: skipped.
async fn fill_gaps(bus: &Bus, next: u64, events: Sequenced) -> Result<Sequenced, BoxError> {
    let (mut whole, mut expected, mut skipped, mut filled) = (Vec::with_capacity(events.len()), next, 0u64, 0u64);
    for (seq, payload) in events {
        while expected < seq {
            skipped += 1;
            if let Some(missing) = bus.event_at(expected).await? {
                whole.push((expected, missing));
                filled += 1;
            }
            expected += 1;
        }
        expected = expected.max(seq + 1);
        whole.push((seq, payload));
    }
    if skipped > 0 {
        tracing::warn!(from = next, skipped, filled, "the event reader skipped events; read them from the stream's leader");
        metrics::counter!("vmplane_projection_events_refetched_total").increment(filled);
    }
    Ok(whole)
}

/// An ordered, ephemeral consumer over event subjects starting at `from`.
pub async fn ordered_events(bus: &Bus, filter: String, from: u64) -> Result<async_nats::jetstream::consumer::pull::Ordered, BoxError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let stream = bus.events_stream().await?;
    let deliver_policy = if from <= 1 { DeliverPolicy::All } else { DeliverPolicy::ByStartSequence { start_sequence: from } };
    let consumer = stream.create_consumer(OrderedConfig { filter_subject: filter, deliver_policy, ..Default::default() }).await?;
    Ok(consumer.messages().await?)
}

/// The writes of a batch of events, committed atomically with the cursor.
/// Reads see the writes made earlier in the same batch; a key written
/// several times is committed once, with its last value. Values are kept
/// as written (typed) until the commit, so a view that several events of a
/// batch change (a VM's, its operation's, a list counter) is decoded once
/// and encoded once per batch, not once per event.
///
/// The histories are written first, then the views with the cursor: a
/// crash between the two leaves events past the cursor in a history, which
/// the replay writes again (reads skip an event read twice). So the
/// histories need no atomic batch, and get none: sled rolls its log buffer
/// twice for each `apply_batch` (each roll a write and a `sync_file_range`
/// on its I/O threads), the largest kernel cost of the gateway under load.
pub(crate) struct Txn<'a> {
    tree: &'a sled::Tree,
    overlay: Overlay,
    /// The writes of the batch before, while they are being committed.
    base: Option<&'a Overlay>,
    /// Events appended to VMs' histories.
    appended: history::Appended,
}

/// A batch's pending writes by key.
type Overlay = HashMap<Vec<u8>, Write>;

/// A batch folded into its writes, not yet committed.
struct Folded {
    overlay: Arc<Overlay>,
    appended: history::Appended,
    /// The stream sequence of its last event: the cursor it commits.
    last: u64,
    /// The operations its events belong to, whose waiters it wakes.
    operations: Vec<vmplane_domain::OpId>,
    hosts_changed: bool,
}

/// How a folded batch is written to the store.
#[derive(Clone, Copy)]
enum Commit {
    /// One atomic sled batch with the cursor: readers and a crash see all of
    /// it or none, which a live projection needs.
    Batch,
    /// Key by key, the cursor last: only into a store marked as of no layout
    /// until it is complete (a rebuild), which a crash leaves to be emptied.
    /// sled's batch takes a lock that stops every read, the fold's of the
    /// next batch too, for as long as it applies; plain inserts do not.
    Inserts,
}

/// One pending write of a [`Txn`].
enum Write {
    Removed,
    Bytes(Vec<u8>),
    Value(Box<dyn Stored>),
}

/// A projection value held typed until the commit encodes it.
trait Stored: Send + Sync {
    fn encode(&self) -> Vec<u8>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Any + Send + Sync> Stored for T {
    fn encode(&self) -> Vec<u8> {
        event::encode(self).expect("projection values always encode")
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl<'a> Txn<'a> {
    fn new(tree: &'a sled::Tree, base: Option<&'a Overlay>) -> Self {
        Self { tree, overlay: HashMap::with_capacity(64), base, appended: history::Appended::default() }
    }

    /// Append event `seq` to the history of aggregate `id`.
    pub(crate) fn append_history(&mut self, id: ulid::Ulid, seq: u64, payload: &[u8]) {
        self.appended.push(id, seq, payload);
    }

    pub(crate) fn get<T: DeserializeOwned + Clone + 'static>(&self, key: &[u8]) -> Option<T> {
        match self.overlay.get(key).or_else(|| self.base.and_then(|base| base.get(key))) {
            Some(Write::Removed) => None,
            Some(Write::Bytes(b)) => event::decode(b).ok(),
            Some(Write::Value(v)) => match v.as_any().downcast_ref::<T>() {
                Some(v) => Some(v.clone()),
                // Read as another type than written: through the encoding.
                None => event::decode(&v.encode()).ok(),
            },
            None => self.tree.get(key).ok().flatten().and_then(|b| event::decode(&b).ok()),
        }
    }

    pub(crate) fn put<T: Serialize + Send + Sync + 'static>(&mut self, key: Vec<u8>, value: T) {
        self.overlay.insert(key, Write::Value(Box::new(value)));
    }

    pub(crate) fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(key, Write::Bytes(value));
    }

    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, Write::Removed);
    }

    /// Remove every key starting with `prefix`: committed, written by the
    /// batch before, or written in this one.
    pub(crate) fn remove_prefix(&mut self, prefix: &[u8]) {
        for k in self.tree.scan_prefix(prefix).keys().flatten() {
            self.remove(k.to_vec());
        }
        let base = self.base.into_iter().flat_map(|base| base.keys()).filter(|k| k.starts_with(prefix)).cloned().collect::<Vec<_>>();
        for k in base {
            self.remove(k);
        }
        for v in self.overlay.iter_mut().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v) {
            *v = Write::Removed;
        }
    }
}

/// Build a key from parts joined by `/`.
pub(crate) fn key(parts: &[&dyn std::fmt::Display]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        let _ = write!(out, "{part}");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The projection holds a batch back only while the stream is busy: a
    /// lone event after a quiet spell, or a trickle, is applied at once.
    #[test]
    fn only_a_busy_stream_is_gathered_into_larger_batches() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut rate = EventRate { since: t0, events: 0, last: 0.0 };
        // A trickle: 10 events a window of 100 ms (100/s).
        for w in 1..=3 {
            assert!(!rate.busy_at(ms(w * 100), 10), "100 events/s is not busy");
        }
        // A burst: 400 events within a window (4,000/s).
        assert!(!rate.busy_at(ms(350), 200), "busy is judged on whole windows only");
        assert!(rate.busy_at(ms(400), 200), "4,000 events/s is busy");
        assert!(rate.busy_at(ms(450), 1), "busy until the next whole window");
        // A quiet second, then one event: the window says 1/s.
        assert!(!rate.busy_at(ms(1_450), 0), "a quiet window ends the busy spell");
    }

    /// A store of another layout is emptied on open (the gateway then
    /// replays the stream into it); one of this layout is kept.
    #[test]
    fn a_store_of_another_layout_is_emptied_and_one_of_this_layout_kept() {
        let dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        {
            let db = sled::open(&dir).unwrap();
            let tree = db.open_tree("views").unwrap();
            tree.insert(APPLIED, &41u64.to_be_bytes()).unwrap();
            tree.insert(b"vm/old", b"x").unwrap();
            db.flush().unwrap();
        }
        let proj = reopen(&dir);
        assert_eq!((proj.applied(), proj.tree.len()), (0, 1), "emptied but for its layout");
        proj.tree.insert(APPLIED, &7u64.to_be_bytes()).unwrap();
        proj.tree.flush().unwrap();
        drop(proj);
        assert_eq!(reopen(&dir).applied(), 7, "kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Hosts are read from a cache (placement reads them per create); an
    /// applied host event is seen by the next read, and a re-registration
    /// by the read after it.
    #[test]
    fn a_host_event_is_seen_by_the_next_read_of_the_hosts() {
        use vmplane_domain::host::{HostEvent, HostInfo};
        let dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        let proj = reopen(&dir);
        let host = vmplane_domain::HostId::new();
        let apply = |seq: u64, ev: HostEvent| {
            let env = Envelope::new(vmplane_domain::OrgId::DEFAULT, None, host.to_string(), None, Event::Host(ev), time::OffsetDateTime::now_utc());
            proj.apply(seq, &event::encode(&env).unwrap()).unwrap();
        };
        assert!(proj.hosts().unwrap().is_empty());
        apply(1, HostEvent::Registered { info: HostInfo { name: "one".into(), driver: "sim".into(), ..HostInfo::default() } });
        let hosts = proj.hosts_shared().unwrap();
        assert_eq!((hosts.len(), hosts[0].id, hosts[0].cordoned), (1, host, false));
        assert!(std::sync::Arc::ptr_eq(&hosts, &proj.hosts_shared().unwrap()), "a second read without a change is the cached one");
        apply(2, HostEvent::Cordoned);
        assert!(proj.hosts().unwrap()[0].cordoned, "the cordon is seen");
        apply(3, HostEvent::Registered { info: HostInfo { name: "renamed".into(), driver: "sim".into(), ..HostInfo::default() } });
        assert_eq!(proj.hosts_shared().unwrap()[0].info.name, "renamed");
        drop(proj);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fork's operation ends once its snapshot and every clone's create
    /// have (in whichever order they end), waking its waiters when a clone
    /// ends it; it fails as soon as a part failed; replayed, it ends the same.
    #[test]
    fn a_fork_operation_ends_with_its_snapshot_and_every_clone() {
        use crate::projection::operations::OpStatus;
        use futures::FutureExt as _;
        use vmplane_domain::vm::{Outcome, VmEvent};
        use vmplane_domain::{OpId, OrgId, SnapshotId, VmId};
        let dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        let proj = reopen(&dir);
        let seq = std::cell::Cell::new(0);
        let mut log: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut apply = |op: OpId, ev: VmEvent| {
            seq.set(seq.get() + 1);
            let env = Envelope::new(OrgId::DEFAULT, None, VmId::new().to_string(), Some(op), Event::Vm(ev), time::OffsetDateTime::now_utc());
            let bytes = event::encode(&env).unwrap();
            proj.apply(seq.get(), &bytes).unwrap();
            log.push((seq.get(), bytes));
        };
        let status = |proj: &Projections, op: OpId| proj.operation(op).unwrap().map(|o| o.status);
        let finished = |outcome| VmEvent::OperationFinished { outcome };
        let failed = || Outcome::Failed { code: "driver_error".into(), message: "no room".into() };
        let requested = |clones: &[OpId]| VmEvent::SnapshotRequested { snapshot: SnapshotId::new(), name: "f".into(), clones: clones.to_vec() };

        // Both clones end before the snapshot's own end, the second after it.
        let (fork, c1, c2) = (OpId::new(), OpId::new(), OpId::new());
        apply(fork, requested(&[c1, c2]));
        let op = proj.operation(fork).unwrap().unwrap();
        assert_eq!((op.status, op.kind.as_deref()), (OpStatus::Running, Some("fork")));
        apply(c1, VmEvent::ProvisioningStarted);
        apply(c1, finished(Outcome::Succeeded));
        assert_eq!(status(&proj, fork), Some(OpStatus::Running), "a clone is left");
        apply(fork, finished(Outcome::Succeeded));
        assert_eq!(status(&proj, fork), Some(OpStatus::Running), "the snapshot is taken, a clone is left");
        let mut woken = proj.watch_operation(fork);
        assert!(woken.changed().now_or_never().is_none());
        apply(c2, finished(Outcome::Succeeded));
        assert_eq!(status(&proj, fork), Some(OpStatus::Succeeded), "the last clone ended it");
        assert!(woken.changed().now_or_never().is_some(), "the fork's waiters are woken by its last clone");

        // A clone that fails fails the fork, which stays failed.
        let (fork2, d1, d2) = (OpId::new(), OpId::new(), OpId::new());
        apply(fork2, requested(&[d1, d2]));
        apply(d1, finished(failed()));
        let op = proj.operation(fork2).unwrap().unwrap();
        assert_eq!(op.status, OpStatus::Failed);
        let error = op.error.unwrap();
        assert!(error.code == "driver_error" && error.message.contains(&d1.to_string()) && error.message.ends_with("no room"), "{error:?}");
        apply(fork2, finished(Outcome::Succeeded));
        apply(d2, finished(Outcome::Succeeded));
        assert_eq!(status(&proj, fork2), Some(OpStatus::Failed));

        // A snapshot that fails fails the fork; a plain snapshot ends with itself.
        let (fork3, e1, plain) = (OpId::new(), OpId::new(), OpId::new());
        apply(fork3, requested(&[e1]));
        apply(fork3, finished(failed()));
        assert_eq!(status(&proj, fork3), Some(OpStatus::Failed));
        apply(plain, requested(&[]));
        assert_eq!(proj.operation(plain).unwrap().unwrap().kind.as_deref(), Some("snapshot"));
        apply(plain, finished(Outcome::Succeeded));
        assert_eq!(status(&proj, plain), Some(OpStatus::Succeeded));

        // An ended fork leaves no bookkeeping behind (its clones' later ends change nothing).
        assert_eq!(proj.tree.scan_prefix(b"fork").count(), 0, "no fork/ or forkof/ keys are left");

        // The same events replayed into an empty store in one batch end the same.
        drop(woken);
        let replay_dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        let replayed = reopen(&replay_dir);
        replayed.apply_all(log.iter().map(|(s, b)| (*s, b.as_slice()))).unwrap();
        for op in [fork, fork2, fork3, plain, c1, c2, d1] {
            assert_eq!(replayed.operation(op).unwrap(), proj.operation(op).unwrap(), "{op}");
        }
        assert_eq!(replayed.tree.scan_prefix(b"fork").count(), 0);
        drop((proj, replayed));
        let _ = (std::fs::remove_dir_all(&dir), std::fs::remove_dir_all(&replay_dir));
    }

    /// A replay folds each batch while the one before is still being
    /// committed, key by key: the store it leaves is the one that applying
    /// every event on its own leaves, however the events fall into batches
    /// (a VM's life split across them, counters and list indexes moved by
    /// both, a fork's bookkeeping made in one batch and removed in the
    /// next); one cut short is emptied when the store is next opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_folding_while_it_commits_ends_as_one_event_at_a_time() {
        use vmplane_domain::delivery::{AttemptOutcome, DeliveryAttempt};
        use vmplane_domain::spec::VmSpec;
        use vmplane_domain::vm::{Outcome, VmEvent};
        use vmplane_domain::webhook::WebhookEvent;
        use vmplane_domain::{DeliveryId, EventId, HostId, OpId, OrgId, ProjectId, SnapshotId, VmId, WebhookId};
        let (org, project, host) = (OrgId::new(), ProjectId::new(), HostId::new());
        let mut log: Vec<(u64, bytes::Bytes)> = Vec::new();
        let mut push = |vm: VmId, op: Option<OpId>, ev: VmEvent| {
            let seq = log.len() as u64 + 1;
            let at = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000) + time::Duration::seconds(seq as i64);
            let env = Envelope::new(org, None, vm.to_string(), op, Event::Vm(ev), at);
            log.push((seq, event::encode(&env).unwrap().into()));
        };
        let vms: Vec<VmId> = (0..12).map(|_| VmId::new()).collect();
        for (i, vm) in vms.iter().enumerate() {
            let op = OpId::new();
            push(*vm, Some(op), VmEvent::Created { org, project, spec: Box::new(VmSpec::named(format!("v{}", i % 4))), host });
            push(*vm, Some(op), VmEvent::ProvisioningStarted);
            push(*vm, Some(op), VmEvent::Booted);
            push(*vm, Some(op), VmEvent::Ready);
            push(*vm, Some(op), VmEvent::OperationFinished { outcome: Outcome::Succeeded });
        }
        for vm in &vms[..6] {
            let op = OpId::new();
            push(*vm, Some(op), VmEvent::StopRequested);
            push(*vm, Some(op), VmEvent::Stopped { reason: "asked".into() });
            push(*vm, Some(op), VmEvent::OperationFinished { outcome: Outcome::Succeeded });
        }
        for vm in &vms[..3] {
            push(*vm, None, VmEvent::DeleteRequested);
            push(*vm, None, VmEvent::Deleted);
        }
        let (fork, clone) = (OpId::new(), OpId::new());
        push(vms[8], Some(fork), VmEvent::SnapshotRequested { snapshot: SnapshotId::new(), name: "f".into(), clones: vec![clone] });
        push(vms[8], Some(fork), VmEvent::OperationFinished { outcome: Outcome::Succeeded });
        push(vms[9], Some(clone), VmEvent::OperationFinished { outcome: Outcome::Succeeded });
        // A webhook endpoint with two deliveries, then deleted with them.
        let endpoint = WebhookId::new();
        let mut webhook = |ev: WebhookEvent| {
            let seq = log.len() as u64 + 1;
            let env = Envelope::new(org, None, endpoint.to_string(), None, Event::Webhook(ev), time::OffsetDateTime::UNIX_EPOCH);
            log.push((seq, event::encode(&env).unwrap().into()));
        };
        webhook(WebhookEvent::WebhookEndpointCreated { org, url: "https://example.test/h".into(), event_types: vec![], description: None });
        for n in 0..2 {
            let event_id = EventId::new();
            webhook(WebhookEvent::DeliveryAttempted(Box::new(DeliveryAttempt {
                delivery_id: DeliveryId::of(event_id),
                event_id,
                event_seq: n,
                event_type: "vm.running".into(),
                aggregate: vms[5].to_string(),
                attempt: 1,
                attempted_at: time::OffsetDateTime::UNIX_EPOCH,
                status: Some(200),
                error: None,
                duration_ms: 3,
                outcome: AttemptOutcome::Delivered,
                next_retry_at: None,
                manual: false,
            })));
        }
        webhook(WebhookEvent::WebhookEndpointDeleted);

        let contents = |proj: &Projections| {
            let views = proj.tree.iter().map(|kv| kv.unwrap()).collect::<Vec<_>>();
            let histories =
                vms.iter().map(|vm| history::read(&proj.history, vm.0).unwrap().into_iter().map(|(seq, _)| seq).collect::<Vec<_>>()).collect::<Vec<_>>();
            (views, histories)
        };
        let dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        let one_by_one = reopen(&dir);
        for (seq, payload) in &log {
            one_by_one.apply(*seq, payload).unwrap();
        }
        let expected = contents(&one_by_one);
        assert!(expected.0.iter().any(|(k, _)| k.starts_with(b"vmls/")), "the log fills the list indexes");
        assert!(!expected.0.iter().any(|(k, _)| k.starts_with(b"whdlv/")), "the endpoint's deliveries went with it");
        for size in [1, 2, 3, 7, 16, log.len()] {
            let replay_dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
            let replayed = reopen(&replay_dir);
            let (batches, mut ready) = tokio::sync::mpsc::channel(log.len());
            for chunk in log.chunks(size) {
                batches.send(Ok(chunk.to_vec())).await.unwrap();
            }
            drop(batches);
            replayed.replay(&mut ready).await.unwrap();
            replayed.mark_complete().await.unwrap();
            assert_eq!(replayed.applied(), log.len() as u64);
            assert!(contents(&replayed) == expected, "batches of {size} leave another store");
            drop(replayed);
            let reopened = reopen(&replay_dir);
            assert!(contents(&reopened) == expected, "batches of {size}: the store is kept as it was");
            drop(reopened);
            let _ = std::fs::remove_dir_all(&replay_dir);
        }
        // A replay cut short leaves a store that the next open empties.
        let cut_dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        let cut = reopen(&cut_dir);
        let (batches, mut ready) = tokio::sync::mpsc::channel(2);
        batches.send(Ok(log[..log.len() / 2].to_vec())).await.unwrap();
        batches.send(Err("the stream went away".into())).await.unwrap();
        assert!(cut.replay(&mut ready).await.is_err());
        assert!(cut.applied() > 0, "half of the log was applied");
        cut.flush().await.unwrap();
        drop(cut);
        let reopened = reopen(&cut_dir);
        assert_eq!(reopened.applied(), 0);
        assert_eq!(reopened.tree.iter().count(), 1, "only the layout's mark is left");
        drop(reopened);
        let _ = std::fs::remove_dir_all(&cut_dir);
        drop(one_by_one);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Opens the store once the last holder's lock is gone: sled's flusher
    /// thread keeps the database (and its file lock) a moment after drop.
    fn reopen(dir: &Path) -> Projections {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Projections::open(dir) {
                Ok(proj) => return proj,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => panic!("open {}: {e}", dir.display()),
            }
        }
    }
}
