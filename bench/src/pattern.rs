//! A create's messages without vmplane: the rate vmplane's design allows on
//! this machine's nats-server if vmplane's own code cost nothing.
//!
//! One create through vmplane is, on the wire: one placement-ledger update
//! (a key-value compare-and-set), the command's publish with its message id,
//! the worker's pull delivery of it, one last-by-subject read of the new VM's
//! subject, seven event appends awaited one after another, each with the
//! expected last subject sequence and a message id, the command's ack, and
//! each event delivered twice: to the gateway's ordered consumer (its
//! projection, which answers the 202 once the first event is in) and to the
//! webhook deliverer's durable consumer, which acks it. This phase sends
//! exactly those messages, with vmplane's stream settings and payloads of
//! vmplane's sizes, from three connections of this process (gateway, worker,
//! deliverer), and does nothing between them: no HTTP, no sled, no
//! decisions, no folding. Each client task has its own ledger key, so the
//! figure leaves out the placement turn vmplane takes per gateway.

use crate::{Errors, Stats};
use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

const CMD_STREAM: &str = "BENCHP_CMD";
const EV_STREAM: &str = "BENCHP_EV";
const BUCKET: &str = "benchp_place";
/// Events a create appends (vmplane's `events per create`).
pub(crate) const EVENTS: usize = 7;
/// Commands the worker side handles at once (vmplane's default parallelism).
const WORKER_PARALLELISM: usize = 32;

fn cmd_subject(i: usize) -> String {
    format!("benchp.cmd.host.{i}")
}
fn ev_subject(i: usize) -> String {
    format!("benchp.ev.vm.{i}")
}
/// The create's number from an event or command subject.
fn index(subject: &str) -> Option<usize> {
    subject.rsplit('.').next()?.parse().ok()
}

/// What a create sends: its command and the payload of each of its events,
/// encoded as vmplane encodes them.
pub(crate) struct Payloads {
    pub command: Bytes,
    pub events: [Bytes; EVENTS],
}

pub(crate) struct Pattern {
    /// Command published -> first event seen by the gateway side (vmplane's 202).
    pub accepted: Stats,
    pub wall: Duration,
    /// All creates' seventh event seen, after the last "202".
    pub done_after_last: Option<Duration>,
    pub errors: Errors,
}

impl Pattern {
    pub fn rate(&self) -> f64 {
        self.accepted.samples.len() as f64 / self.wall.as_secs_f64()
    }
}

/// What the gateway side's projection has seen of each create.
struct Seen {
    counts: Vec<AtomicU8>,
    done: AtomicUsize,
    first: Mutex<HashMap<usize, oneshot::Sender<()>>>,
}

/// Run `count` creates by `concurrency` client tasks, each connection opened
/// with `connect(name)`.
pub(crate) async fn run<F, Fut>(connect: F, payloads: Payloads, concurrency: usize, count: usize, limit: Duration) -> Result<Pattern>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<async_nats::Client>>,
{
    let gateway = jetstream::new(connect("bench-pattern-gateway").await?);
    let worker = jetstream::new(connect("bench-pattern-worker").await?);
    let deliverer = jetstream::new(connect("bench-pattern-deliverer").await?);
    let (events, commands, ledgers) = setup(&gateway).await?;
    let payloads = Arc::new(payloads);
    let seen = Arc::new(Seen { counts: (0..count).map(|_| AtomicU8::new(0)).collect(), done: AtomicUsize::new(0), first: Mutex::default() });

    let projection = tokio::spawn(project(events.clone(), seen.clone()));
    let deliveries = tokio::spawn(deliver(deliverer.get_stream(EV_STREAM).await.map_err(|e| anyhow!("{e}"))?));
    let execution = tokio::spawn(execute(commands, worker, payloads.clone()));

    let deadline = Instant::now() + limit;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|task| {
            let (gateway, ledgers, seen, payloads, next) = (gateway.clone(), ledgers.clone(), seen.clone(), payloads.clone(), next.clone());
            tokio::spawn(async move {
                let (mut stats, mut errors) = (Stats::default(), Errors::default());
                let key = format!("host{task}");
                let mut revision = ledgers.put(&key, Bytes::from_static(b"{}")).await.ok();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    if Instant::now() > deadline {
                        errors.add("pattern: phase time limit reached");
                        break;
                    }
                    let t = Instant::now();
                    match create(&gateway, &ledgers, &key, revision, &seen, &payloads, i).await {
                        Ok(r) => {
                            revision = Some(r);
                            stats.push(t.elapsed());
                        }
                        Err(e) => {
                            revision = None;
                            errors.add(format!("pattern: {e}"));
                        }
                    }
                }
                (stats, errors)
            })
        })
        .collect();
    let (accepted, mut errors) = crate::gather(clients).await?;
    let wall = started.elapsed();
    let last = Instant::now();
    let want = accepted.samples.len();
    let mut done_after_last = None;
    while Instant::now() < deadline {
        if seen.done.load(Ordering::Relaxed) >= want {
            done_after_last = Some(last.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for task in [projection, deliveries, execution] {
        task.abort();
    }
    for name in [EV_STREAM, CMD_STREAM, &format!("KV_{BUCKET}")] {
        if let Err(e) = gateway.delete_stream(name).await {
            errors.add(format!("pattern: deleting {name}: {e}"));
        }
    }
    Ok(Pattern { accepted, wall, done_after_last, errors })
}

/// The streams and the bucket, configured as vmplane configures its own.
async fn setup(js: &jetstream::Context) -> Result<(stream::Stream, stream::Stream, jetstream::kv::Store)> {
    let events = js
        .create_stream(crate::stream_like_vmplane(EV_STREAM, "benchp.ev.>", stream::RetentionPolicy::Limits))
        .await
        .map_err(|e| anyhow!("creating {EV_STREAM}: {e}"))?;
    let commands = js
        .create_stream(crate::stream_like_vmplane(CMD_STREAM, "benchp.cmd.>", stream::RetentionPolicy::WorkQueue))
        .await
        .map_err(|e| anyhow!("creating {CMD_STREAM}: {e}"))?;
    js.create_stream(stream::Config {
        name: format!("KV_{BUCKET}"),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(3600),
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("creating the bucket {BUCKET}: {e}"))?;
    let ledgers = js.get_key_value(BUCKET).await.map_err(|e| anyhow!("opening the bucket {BUCKET}: {e}"))?;
    Ok((events, commands, ledgers))
}

/// One create from the client side: ledger, command, first event. Returns the ledger's new revision.
async fn create(
    js: &jetstream::Context,
    ledgers: &jetstream::kv::Store,
    key: &str,
    revision: Option<u64>,
    seen: &Seen,
    payloads: &Payloads,
    i: usize,
) -> Result<u64> {
    let revision = match revision {
        Some(r) => ledgers.update(key, Bytes::from(format!("{{\"claims\":{i}}}")), r).await.map_err(|e| anyhow!("ledger update: {e}"))?,
        None => ledgers.put(key, Bytes::from(format!("{{\"claims\":{i}}}"))).await.map_err(|e| anyhow!("ledger put: {e}"))?,
    };
    let (tx, rx) = oneshot::channel();
    seen.first.lock().expect("waiters").insert(i, tx);
    let msg = jetstream::message::PublishMessage::build().payload(payloads.command.clone()).message_id(ulid::Ulid::new().to_string());
    let published = async { js.send_publish(cmd_subject(i), msg).await?.await.map_err(anyhow::Error::from) }.await;
    if let Err(e) = published {
        seen.first.lock().expect("waiters").remove(&i);
        return Err(e.context("command publish"));
    }
    tokio::time::timeout(Duration::from_secs(10), rx).await.context("first event not seen in 10 s")?.context("projection ended")?;
    Ok(revision)
}

/// The gateway side's projection: every event, in order, by an ordered consumer.
async fn project(events: stream::Stream, seen: Arc<Seen>) -> Result<()> {
    let ordered = events
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "benchp.ev.>".into(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut messages = ordered.messages().await.map_err(|e| anyhow!("{e}"))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| anyhow!("{e}"))?;
        let Some(i) = index(&msg.subject) else { continue };
        let Some(count) = seen.counts.get(i) else { continue };
        match count.fetch_add(1, Ordering::Relaxed) + 1 {
            1 => {
                if let Some(tx) = seen.first.lock().expect("waiters").remove(&i) {
                    let _ = tx.send(());
                }
            }
            n if n as usize == EVENTS => {
                seen.done.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The webhook deliverer's side: a durable consumer that acks every event.
async fn deliver(events: stream::Stream) -> Result<()> {
    let durable = events
        .create_consumer(consumer::pull::Config {
            durable_name: Some("deliverer".into()),
            filter_subject: "benchp.ev.>".into(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 2_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut messages = durable.messages().await.map_err(|e| anyhow!("{e}"))?;
    while let Some(msg) = messages.next().await {
        msg.map_err(|e| anyhow!("{e}"))?.ack().await.map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

/// The worker side: each command read, its subject's last event asked for,
/// its events appended one after another, the command acked.
async fn execute(commands: stream::Stream, js: jetstream::Context, payloads: Arc<Payloads>) -> Result<()> {
    let durable = commands
        .create_consumer(consumer::pull::Config {
            durable_name: Some("worker".into()),
            filter_subject: "benchp.cmd.>".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let events = js.get_stream_no_info(EV_STREAM).await.map_err(|e| anyhow!("{e}"))?;
    let permits = Arc::new(Semaphore::new(WORKER_PARALLELISM));
    let mut messages = durable.messages().await.map_err(|e| anyhow!("{e}"))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| anyhow!("{e}"))?;
        let permit = permits.clone().acquire_owned().await?;
        let (js, events, payloads) = (js.clone(), events.clone(), payloads.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(i) = index(&msg.subject) else { return };
            let subject = ev_subject(i);
            let mut expected = match events.raw_message_builder().last_by_subject(&subject).send().await {
                Ok(last) => last.sequence,
                Err(_) => 0,
            };
            for payload in payloads.events.iter() {
                let event = jetstream::message::PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(ulid::Ulid::new().to_string())
                    .expected_last_subject_sequence(expected);
                match async { js.send_publish(subject.clone(), event).await?.await.map_err(anyhow::Error::from) }.await {
                    Ok(ack) => expected = ack.sequence,
                    Err(_) => return,
                }
            }
            let _ = msg.ack().await;
        });
    }
    Ok(())
}
