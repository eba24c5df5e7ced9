//! JetStream plumbing shared by the gateway and the worker.
//!
//! Two streams: commands (work queue, consumed once by the worker they are
//! addressed to) and events (file-backed, never expire, the source of truth).
//! Appends to an aggregate's subject carry the expected last subject sequence,
//! so two writers of the same aggregate cannot interleave.

pub mod auth;

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

/// Console lines kept per VM in the log stream.
pub const LOG_LINES_PER_VM: i64 = 10_000;
/// The largest console message (a line is cut at 4096 bytes; room for headers).
pub const LOG_LINE_BYTES: i32 = 8 << 10;
/// Most idempotency records kept at once.
pub const IDEMPOTENCY_MAX_RECORDS: i64 = 200_000;
/// Most bytes of idempotency records kept at once.
pub const IDEMPOTENCY_MAX_BYTES: i64 = 256 << 20;
/// JetStream keeps at most 5 copies of a stream.
pub const MAX_REPLICAS: usize = 5;

/// A connection to NATS with the JetStream context vmplane uses.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Whether this connection may change existing streams' configuration
    /// (the admin, or a server without authorization).
    reconfigure: bool,
    /// How many servers of a cluster hold each stream and bucket this
    /// connection creates (`--stream-replicas`; 1 on a single server).
    replicas: usize,
    /// Key-value handles by bucket: opening one asks the server for its
    /// stream's info, a round trip the hot paths (placement, idempotency)
    /// would otherwise pay on every request.
    buckets: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, kv::Store>>>,
}

impl Bus {
    /// Connect as `role` with `creds` to `url` (one URL, or several
    /// comma-separated: the nodes of a cluster), retrying the first
    /// connection until it succeeds, and keep reconnecting forever after that.
    pub async fn connect(url: &str, role: auth::Role, creds: &auth::Credentials) -> Result<Self, BusError> {
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>().map_err(|e| BusError::Other(format!("NATS URL `{}`: {e}", u.trim()))))
            .collect::<Result<Vec<_>, _>>()?;
        let client = creds
            .options(url)
            .await?
            .name(format!("vmplane-{}", role.name()))
            .custom_inbox_prefix(role.inbox_prefix())
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| Duration::from_millis((100 * 2u64.saturating_pow(attempt.min(5) as u32)).min(2_000)))
            .event_callback(|ev| async move { tracing::info!(event = %ev, "nats connection") })
            .connect(servers)
            .await
            .map_err(unavailable)?;
        let js = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        let reconfigure = role == auth::Role::Admin || (*creds == auth::Credentials::None && auth::url_user(url).is_none());
        Ok(Self { client, js, reconfigure, replicas: 1, buckets: std::sync::Arc::default() })
    }

    /// The same connection creating its streams and buckets with `replicas`
    /// copies (at most 5, JetStream's limit; a cluster of 3 takes 3).
    pub fn with_replicas(self, replicas: usize) -> Self {
        Self { replicas: replicas.clamp(1, MAX_REPLICAS), ..self }
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
            num_replicas: self.replicas,
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
            num_replicas: self.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("command stream: {e}")))?;
        // Console lines: each VM's subject keeps its last LOG_LINES_PER_VM lines
        // of at most LOG_LINE_BYTES, so a flooding guest only evicts its own
        // lines (at most 80 MiB); the stream's byte cap is reached only when
        // more than 25 VMs all hold full-size lines.
        self.stream(stream::Config {
            name: subjects::LOG_STREAM.into(),
            description: Some("vmplane guest serial console lines".into()),
            subjects: vec![subjects::LOGS_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_messages_per_subject: LOG_LINES_PER_VM,
            max_message_size: LOG_LINE_BYTES,
            max_bytes: 2 << 30,
            discard: DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            num_replicas: self.replicas,
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
            // Secrets live as long as their endpoint (no age limit).
            (subjects::WEBHOOK_SECRET_BUCKET, Duration::ZERO, unbounded),
            // Deliveries waiting behind a failing one: as long as they wait.
            (subjects::WEBHOOK_QUEUE_BUCKET, Duration::ZERO, unbounded),
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
                // The server's own choice when unset, spelled out so configs compare equal.
                duplicate_window: if ttl.is_zero() { Duration::from_secs(120) } else { ttl.min(Duration::from_secs(120)) },
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("bucket {bucket}: {e}")))?;
        }
        Ok(())
    }

    /// Create a stream, or bring an existing one's configuration up to date
    /// when this connection may (other users only warn: they may create
    /// streams but never change them). A replica count is changed like any
    /// other setting: a clustered nats-server (2.9 included) rescales a
    /// stream in place; a single server refuses more than 1, and that error
    /// is returned. Two processes starting at once race between "not found"
    /// and "create"; the loser's create fails and its next attempt finds the
    /// stream.
    async fn stream(&self, config: stream::Config) -> Result<(), String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.js.get_stream(&config.name).await {
                Ok(existing) => match config_difference(&existing.cached_info().config, &config) {
                    None => return Ok(()),
                    Some("num_replicas") if !self.reconfigure => {
                        let have = existing.cached_info().config.num_replicas;
                        tracing::warn!(stream = %config.name, have, want = config.num_replicas, "the stream exists with another replica count than --stream-replicas asks; it keeps its count until the admin rescales it: `vmplane nats streams --stream-replicas N` with the admin's credentials");
                        return Ok(());
                    }
                    Some(setting) if !self.reconfigure => {
                        tracing::warn!(stream = %config.name, %setting, "stream configuration differs from this version's; an admin must update it (`vmplane up` does)");
                        return Ok(());
                    }
                    Some(_) => self.js.update_stream(config.clone()).await.map(drop).map_err(|e| e.to_string()),
                },
                Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                    self.js.create_stream(config.clone()).await.map(drop).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 => tracing::debug!(stream = %config.name, error = %e, "stream setup raced another process; trying again"),
                Err(e) => return Err(e),
            }
        }
    }

    /// Append a command; JetStream deduplicates retries by operation id.
    /// Returns once the command is durably stored.
    pub async fn publish_command(&self, subject: String, cmd: &CommandEnvelope) -> Result<u64, BusError> {
        self.publish_command_as(subject, cmd, &cmd.op.to_string()).await
    }

    /// Append a command deduplicated by `msg_id` rather than its operation id
    /// (a later command of the same operation, such as a move's resumption
    /// on the host it moved to).
    pub async fn publish_command_as(&self, subject: String, cmd: &CommandEnvelope, msg_id: &str) -> Result<u64, BusError> {
        self.ensure_connected()?;
        let payload = Bytes::from(event::encode(cmd)?);
        let msg = jetstream::message::PublishMessage::build().payload(payload).message_id(msg_id);
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

    /// Append one event that no decision depends on (a record such as a
    /// webhook delivery attempt): without an expected sequence, so records
    /// of one subject never conflict; a retry with the same event id is
    /// deduplicated. Returns the event's stream sequence.
    pub async fn record(&self, subject: &str, env: &Envelope) -> Result<u64, BusError> {
        let payload = Bytes::from(event::encode(env)?);
        let msg = jetstream::message::PublishMessage::build().payload(payload).message_id(env.id.to_string());
        let ack = self.js.send_publish(subject.to_owned(), msg).await.map_err(|e| BusError::from_publish(e, subject))?;
        let ack = ack.await.map_err(|e| BusError::from_publish(e, subject))?;
        Ok(ack.sequence)
    }

    /// Every event of one aggregate subject in order, with stream sequences.
    /// Used on a cache miss or after a conflict, so it favours simplicity.
    pub async fn load(&self, subject: &str) -> Result<Vec<(u64, Envelope)>, BusError> {
        // Direct reads need no stream info: skip that round trip.
        let stream = self.js.get_stream_no_info(subjects::EVENT_STREAM).await.map_err(unavailable)?;
        let mut out = Vec::new();
        // A new aggregate (every create) has no event. Asking for the subject's
        // last one is answered from the server's subject index, where walking
        // from sequence 1 visits every block of the stream to find nothing.
        match stream.raw_message_builder().last_by_subject(subject).send().await {
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(out),
            Err(e) => return Err(unavailable(e)),
            Ok(_) => {}
        }
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

    /// Whether the command stream still holds a command on `subject` whose
    /// message id (its operation id) is `msg_id`: not yet acknowledged, so it
    /// will be delivered (again). Commands are few per subject, so this walks them.
    pub async fn command_in_stream(&self, subject: &str, msg_id: &str) -> Result<bool, BusError> {
        let stream = self.js.get_stream(subjects::COMMAND_STREAM).await.map_err(unavailable)?;
        let mut next = 1;
        loop {
            match stream.raw_message_builder().sequence(next).next_by_subject(subject).send().await {
                Ok(msg) => {
                    if msg.headers.get(async_nats::header::NATS_MESSAGE_ID).is_some_and(|id| id.as_str() == msg_id) {
                        return Ok(true);
                    }
                    next = msg.sequence + 1;
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(false),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// The commands on `filter` (wildcards allowed) after stream sequence
    /// `after`, oldest first: for a host, those its consumer has not
    /// acknowledged past its ack floor. An undecodable one is skipped.
    pub async fn commands_after(&self, filter: &str, after: u64) -> Result<Vec<CommandEnvelope>, BusError> {
        let stream = self.js.get_stream(subjects::COMMAND_STREAM).await.map_err(unavailable)?;
        let mut out = Vec::new();
        let mut next = after + 1;
        loop {
            match stream.raw_message_builder().sequence(next).next_by_subject(filter).send().await {
                Ok(msg) => {
                    next = msg.sequence + 1;
                    match decode_command(&msg.payload) {
                        Ok(cmd) => out.push(cmd),
                        Err(e) => tracing::debug!(seq = msg.sequence, error = %e, "skipping an undecodable command"),
                    }
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(out),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// The names of the command stream's consumers (each host's durable one among them).
    pub async fn command_consumers(&self) -> Result<Vec<String>, BusError> {
        let stream = self.js.get_stream(subjects::COMMAND_STREAM).await.map_err(unavailable)?;
        futures::TryStreamExt::try_collect(stream.consumer_names()).await.map_err(unavailable)
    }

    /// The stream sequence up to which a durable consumer of the command
    /// stream acknowledged everything; 0 when it does not exist.
    pub async fn command_ack_floor(&self, durable: &str) -> Result<u64, BusError> {
        let stream = self.js.get_stream(subjects::COMMAND_STREAM).await.map_err(unavailable)?;
        match stream.consumer_info(durable).await {
            Ok(info) => Ok(info.ack_floor.stream_sequence),
            Err(e) if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(0),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The object store that carries moving disks, created on first use.
    async fn moves(&self) -> Result<async_nats::jetstream::object_store::ObjectStore, BusError> {
        if let Ok(store) = self.js.get_object_store(subjects::MOVES_BUCKET).await {
            return Ok(store);
        }
        let config =
            async_nats::jetstream::object_store::Config { bucket: subjects::MOVES_BUCKET.to_owned(), num_replicas: self.replicas, ..Default::default() };
        self.js.create_object_store(config).await.map_err(unavailable)
    }

    /// Store the file at `path` as the moving disk `name` (replacing one of that name).
    pub async fn put_moving_disk(&self, name: &str, path: &std::path::Path) -> Result<(), BusError> {
        let mut file = tokio::fs::File::open(path).await.map_err(|e| BusError::Other(format!("{}: {e}", path.display())))?;
        self.moves().await?.put(name, &mut file).await.map_err(unavailable)?;
        Ok(())
    }

    /// Write the moving disk `name` to `path` (through a temporary file);
    /// `false` when there is no such disk.
    pub async fn get_moving_disk(&self, name: &str, path: &std::path::Path) -> Result<bool, BusError> {
        use async_nats::jetstream::object_store::GetErrorKind;
        let mut object = match self.moves().await?.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(unavailable(e)),
        };
        let tmp = path.with_extension("part");
        let io = |e: std::io::Error| BusError::Other(format!("{}: {e}", tmp.display()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        tokio::io::copy(&mut object, &mut file).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        tokio::fs::rename(&tmp, path).await.map_err(io)?;
        Ok(true)
    }

    /// Forget the moving disk `name`; already gone is success.
    pub async fn delete_moving_disk(&self, name: &str) -> Result<(), BusError> {
        use async_nats::jetstream::object_store::DeleteErrorKind;
        match self.moves().await?.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The event stream handle.
    pub async fn events_stream(&self) -> Result<stream::Stream, BusError> {
        self.js.get_stream(subjects::EVENT_STREAM).await.map_err(unavailable)
    }

    /// The event at stream sequence `seq` as the stream's leader holds it
    /// (`STREAM.MSG.GET` is answered by the leader only, unlike a direct
    /// get or a consumer, which may read a replica that is behind); `None`
    /// when the stream has no such message (deleted, or not yet written).
    pub async fn event_at(&self, seq: u64) -> Result<Option<bytes::Bytes>, BusError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let stream = self.js.get_stream_no_info(subjects::EVENT_STREAM).await.map_err(unavailable)?;
        match stream.get_raw_message(seq).await {
            Ok(msg) => Ok(Some(msg.payload)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The last sequence in the event stream (0 when empty).
    pub async fn events_last_sequence(&self) -> Result<u64, BusError> {
        let stream = self.js.get_stream_no_info(subjects::EVENT_STREAM).await.map_err(unavailable)?;
        Ok(stream.get_info().await.map_err(unavailable)?.state.last_sequence)
    }

    /// A key-value bucket created by [`Bus::ensure_topology`].
    pub async fn bucket(&self, name: &str) -> Result<kv::Store, BusError> {
        if let Some(store) = self.buckets.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(store.clone());
        }
        let store = self.js.get_key_value(name).await.map_err(unavailable)?;
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), store.clone());
        Ok(store)
    }
}

/// The first setting vmplane manages that a stream's configuration has otherwise than `want`.
fn config_difference(have: &stream::Config, want: &stream::Config) -> Option<&'static str> {
    const MANAGED: [&str; 15] = [
        "subjects",
        "retention",
        "storage",
        "max_age",
        "max_bytes",
        "max_msgs",
        "max_msgs_per_subject",
        "max_msg_size",
        "discard",
        "duplicate_window",
        "allow_rollup_hdrs",
        "deny_delete",
        "deny_purge",
        "allow_direct",
        "num_replicas",
    ];
    let (Ok(have), Ok(want)) = (serde_json::to_value(have), serde_json::to_value(want)) else { return Some("(unreadable)") };
    // An unset setting may be absent, 0, false, or (from the server) -1: all mean "none".
    let setting = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => serde_json::Value::Null,
        Some(n) if n.as_i64().is_some_and(|n| n == 0 || n == -1) => serde_json::Value::Null,
        Some(v) => v.clone(),
    };
    MANAGED.into_iter().find(|k| setting(have.get(k)) != setting(want.get(k)))
}

/// Decode errors in a stream we own are bugs or version skew; callers log and skip.
pub fn decode_command(bytes: &[u8]) -> Result<CommandEnvelope, BusError> {
    Ok(event::decode(bytes)?)
}
