//! JetStream plumbing shared by the gateway and the worker.
//!
//! Two streams: commands (work queue, consumed once by the worker they are
//! addressed to) and events (file-backed, never expire, the source of truth).
//! Appends to an aggregate's subject carry the expected last subject sequence,
//! so two writers of the same aggregate cannot interleave.

use async_nats::jetstream::{
    self,
    context::{PublishError, PublishErrorKind},
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use bytes::Bytes;
use std::time::Duration;
use vmplane_domain::{
    CommandEnvelope, Envelope,
    event::{self, CodecError},
    subjects,
};

pub use async_nats;

/// Errors talking to NATS, classified by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// NATS is unreachable or did not answer in time: retry later (HTTP 503).
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    /// Someone else appended to the aggregate first: reload and decide again.
    #[error("concurrent append to {subject}")]
    Conflict { subject: String },
    /// A message in the stream cannot be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Anything else NATS refused.
    #[error("NATS error: {0}")]
    Other(String),
}

impl BusError {
    fn from_publish(e: PublishError, subject: &str) -> Self {
        match e.kind() {
            PublishErrorKind::WrongLastSequence => Self::Conflict { subject: subject.to_owned() },
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::StreamNotFound => Self::Unavailable(e.to_string()),
            _ => Self::Other(e.to_string()),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// How long one JetStream request may take before the caller gives up; keeps
/// HTTP requests bounded when NATS is down.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Most idempotency records kept at once.
pub const IDEMPOTENCY_MAX_RECORDS: i64 = 200_000;
/// Most bytes of idempotency records kept at once.
pub const IDEMPOTENCY_MAX_BYTES: i64 = 256 << 20;

/// A connection to NATS with the JetStream context vmplane uses.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl Bus {
    /// Connect, retrying the first connection until it succeeds, and keep
    /// reconnecting forever after that.
    pub async fn connect(url: &str, name: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| Duration::from_millis((100 * 2u64.saturating_pow(attempt.min(5) as u32)).min(2_000)))
            .event_callback(|ev| async move { tracing::info!(event = %ev, "nats connection") })
            .connect(url)
            .await
            .map_err(unavailable)?;
        let js = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        Ok(Self { client, js })
    }

    /// Whether the client currently holds a live connection.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Fail fast instead of queueing behind a dead connection.
    pub fn ensure_connected(&self) -> Result<(), BusError> {
        if self.is_connected() { Ok(()) } else { Err(BusError::Unavailable("not connected to NATS".into())) }
    }

    /// Create or update the streams and buckets. Idempotent; every process runs it at start.
    pub async fn ensure_topology(&self) -> Result<(), BusError> {
        self.stream(stream::Config {
            name: subjects::EVENT_STREAM.into(),
            description: Some("vmplane events: the source of truth".into()),
            subjects: vec![subjects::EVENTS_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::ZERO,
            max_messages: -1,
            max_bytes: -1,
            discard: DiscardPolicy::New,
            deny_delete: true,
            deny_purge: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("event stream: {e}")))?;
        self.stream(stream::Config {
            name: subjects::COMMAND_STREAM.into(),
            description: Some("vmplane commands, consumed once by the worker they address".into()),
            subjects: vec![subjects::COMMANDS_ALL.into()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            discard: DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("command stream: {e}")))?;
        self.stream(stream::Config {
            name: subjects::LOG_STREAM.into(),
            description: Some("vmplane guest serial console lines".into()),
            subjects: vec![subjects::LOGS_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_messages_per_subject: 20_000,
            max_bytes: 2 << 30,
            discard: DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("log stream: {e}")))?;
        // Idempotency records are bounded (callers choose their keys): when
        // full, the oldest records go first. Placement ledgers are one small
        // value per host.
        let unbounded = (-1, -1, DiscardPolicy::New);
        for (bucket, ttl, (max_messages, max_bytes, discard)) in [
            (subjects::HEARTBEAT_BUCKET, Duration::from_secs(60), unbounded),
            (subjects::IDEMPOTENCY_BUCKET, Duration::from_secs(24 * 3600), (IDEMPOTENCY_MAX_RECORDS, IDEMPOTENCY_MAX_BYTES, DiscardPolicy::Old)),
            (subjects::PLACEMENT_BUCKET, Duration::from_secs(3600), unbounded),
        ] {
            // The stream a key-value bucket is, spelled out: async-nats' own
            // bucket creation queries account fields that nats-server 2.9 lacks.
            self.stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_messages,
                max_bytes,
                max_age: ttl,
                storage: StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("bucket {bucket}: {e}")))?;
        }
        Ok(())
    }

    /// Create a stream or bring its config up to date. Two processes starting
    /// at once race between "not found" and "create"; the loser's create
    /// fails (name in use, or subjects overlapping the winner's), and its
    /// second attempt finds the stream and updates it.
    async fn stream(&self, config: stream::Config) -> Result<(), async_nats::jetstream::context::CreateStreamError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.js.create_or_update_stream(config.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 3 => tracing::debug!(stream = %config.name, error = %e, "stream setup raced another process; trying again"),
                Err(e) => return Err(e),
            }
        }
    }

    /// Append a command; JetStream deduplicates retries by operation id.
    /// Returns once the command is durably stored.
    pub async fn publish_command(&self, subject: String, cmd: &CommandEnvelope) -> Result<u64, BusError> {
        self.ensure_connected()?;
        let payload = Bytes::from(event::encode(cmd)?);
        let msg = jetstream::message::PublishMessage::build().payload(payload).message_id(cmd.op.to_string());
        let ack = self.js.send_publish(subject.clone(), msg).await.map_err(|e| BusError::from_publish(e, &subject))?;
        let ack = ack.await.map_err(|e| BusError::from_publish(e, &subject))?;
        Ok(ack.sequence)
    }

    /// Append one event to an aggregate's subject, only if the subject's last
    /// sequence is still `expected` (0 = the subject has no events yet).
    /// Returns the new event's stream sequence.
    pub async fn append(&self, subject: &str, env: &Envelope, expected: u64) -> Result<u64, BusError> {
        let payload = Bytes::from(event::encode(env)?);
        let msg = jetstream::message::PublishMessage::build().payload(payload).message_id(env.id.to_string()).expected_last_subject_sequence(expected);
        let ack = self.js.send_publish(subject.to_owned(), msg).await.map_err(|e| BusError::from_publish(e, subject))?;
        let ack = ack.await.map_err(|e| BusError::from_publish(e, subject))?;
        Ok(ack.sequence)
    }

    /// Every event of one aggregate subject in order, with stream sequences.
    /// Used on a cache miss or after a conflict, so it favours simplicity.
    pub async fn load(&self, subject: &str) -> Result<Vec<(u64, Envelope)>, BusError> {
        let stream = self.events_stream().await?;
        let mut out = Vec::new();
        let mut next = 1;
        loop {
            match stream.raw_message_builder().sequence(next).next_by_subject(subject).send().await {
                Ok(msg) => {
                    next = msg.sequence + 1;
                    out.push((msg.sequence, Envelope::decode(&msg.payload)?));
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(out),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// The event stream handle.
    pub async fn events_stream(&self) -> Result<stream::Stream, BusError> {
        self.js.get_stream(subjects::EVENT_STREAM).await.map_err(unavailable)
    }

    /// The last sequence in the event stream (0 when empty).
    pub async fn events_last_sequence(&self) -> Result<u64, BusError> {
        let stream = self.js.get_stream_no_info(subjects::EVENT_STREAM).await.map_err(unavailable)?;
        Ok(stream.get_info().await.map_err(unavailable)?.state.last_sequence)
    }

    /// A key-value bucket created by [`Bus::ensure_topology`].
    pub async fn bucket(&self, name: &str) -> Result<kv::Store, BusError> {
        self.js.get_key_value(name).await.map_err(unavailable)
    }
}

/// Decode errors in a stream we own are bugs or version skew; callers log and skip.
pub fn decode_command(bytes: &[u8]) -> Result<CommandEnvelope, BusError> {
    Ok(event::decode(bytes)?)
}
