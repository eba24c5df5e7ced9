//! Idempotency records: what a request under an idempotency key did, so a
//! retry with the same key and request does nothing again, and a retry after
//! a failure runs with the same ids. How a key reaches the gateway and which
//! answers are final is the HTTP layer's affair (`routes::native::idempotency`).
//!
//! A record is named by a hash of caller, org, project and key: two callers'
//! keys never meet. Records live in a JetStream key-value bucket (24 h,
//! bounded in records and bytes), so every gateway replica sees them. A record is
//! - `in_progress` while a request runs: a second request with the key is a
//!   conflict; a record left by a gateway that died mid-request is taken over
//!   after [`LEASE`];
//! - `open` after an answer that is not final: the next retry runs again;
//! - `done` with the final answer, replayed from then on.
//!
//! Every record keeps the ids its first attempt allocated ([`Allocation`]:
//! the operation id and the new resource's id), so a retry after any failure
//! runs with the same ids: JetStream deduplicates the command by operation
//! id, and use cases answer from the projection when the operation was
//! carried out already. A client never gets two VMs for one key.
//!
//! Nothing readable sits in NATS: the answer is sealed with
//! ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the caller's
//! credential and the record's name, and the request is recorded as an HMAC
//! under another derived key. An API key's secret, in the answer that
//! created it, is replayable only by the caller that holds the credential.

use super::{App, AppError, AppResult, Principal};
use async_nats::jetstream::kv;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use ulid::Ulid;
use vmplane_domain::{OpId, subjects};

/// How long a request may hold its record before a retry may take it over;
/// longer than any request runs (publish retries included).
const LEASE: Duration = Duration::from_secs(60);

/// How long storing a request's outcome is retried: a JetStream leader
/// election (a NATS node lost) takes seconds, and a record left in progress
/// holds its client off for the whole [`LEASE`].
const FINISH_RETRY_FOR: Duration = Duration::from_secs(15);

/// The ids a request allocates, fixed across retries of one idempotency key;
/// fresh without one.
#[derive(Debug, Clone, Copy)]
pub struct Allocation {
    op: Ulid,
    resource: Ulid,
    random: [u8; 32],
}

impl Allocation {
    /// Fresh ids, for a request without an idempotency key.
    pub fn fresh() -> Self {
        Self { op: Ulid::new(), resource: Ulid::new(), random: rand::random() }
    }

    /// The operation id (the command's JetStream message id).
    pub fn op(&self) -> OpId {
        OpId(self.op)
    }

    /// The ULID of the resource the request creates, if it creates one.
    pub fn resource(&self) -> Ulid {
        self.resource
    }

    /// The ids of the `n`th request a use case makes on behalf of this one
    /// (a fork's clone creates): distinct for each `n`, and the same for a
    /// retry with the same idempotency key, so the sub-requests are retried
    /// idempotently too.
    pub fn derived(&self, n: u32) -> Self {
        // An odd 80-bit multiplier spreads n over the random part; the time part stays.
        const SPREAD: u128 = 0x9E37_79B9_7F4A_7C15_F39D;
        let mix = |u: Ulid| Ulid::from_parts(u.timestamp_ms(), u.random() ^ ((u128::from(n) + 1).wrapping_mul(SPREAD) & ((1u128 << 80) - 1)));
        Self { op: mix(self.op), resource: mix(self.resource), random: self.random }
    }

    /// 256 bits only this caller can reproduce (with this idempotency key),
    /// never stored: the random part of a new API key's secret.
    pub fn random(&self) -> [u8; 32] {
        self.random
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    InProgress,
    Open,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Hex HMAC of the request: tells a retry from a reuse.
    request_mac: String,
    phase: Phase,
    /// Unix seconds when the current attempt started.
    since: i64,
    op: Ulid,
    resource: Ulid,
    /// The final answer, sealed: hex of nonce and ciphertext.
    sealed: Option<String>,
}

/// The keys derived from the caller's credential for one record.
struct Keys {
    seal: ChaCha20Poly1305,
    mac: [u8; 32],
    random: [u8; 32],
}

impl Keys {
    fn derive(credential: &str, name: &str) -> Self {
        let mut okm = [0u8; 96];
        Hkdf::<Sha256>::new(Some(name.as_bytes()), credential.as_bytes())
            .expand(b"vmplane idempotency v1", &mut okm)
            .expect("96 bytes is a valid HKDF-SHA256 length");
        let part = |i: usize| -> [u8; 32] { okm[i * 32..(i + 1) * 32].try_into().expect("32-byte slice") };
        Self { seal: ChaCha20Poly1305::new(&part(0).into()), mac: part(1), random: part(2) }
    }

    fn request_mac(&self, request: &[&[u8]]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac).expect("HMAC takes any key length");
        for part in request {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn seal(&self, answer: &[u8]) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.seal.encrypt(&nonce, answer).expect("sealing in memory cannot fail");
        hex::encode([nonce.as_slice(), &sealed].concat())
    }

    fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, ct) = bytes.split_at(12);
        self.seal.decrypt(Nonce::from_slice(nonce), ct).ok()
    }
}

/// The bucket key of a record: caller, org, project and idempotency key, hashed.
fn record_name(who: &Principal, key: &str) -> String {
    let scope = format!("{}\0{}\0{}\0{key}", who.actor, who.org, who.project_or_default());
    hex::encode(Sha256::digest(scope.as_bytes()))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn encode(record: &Record) -> bytes::Bytes {
    serde_json::to_vec(record).expect("record encodes").into()
}

/// What a request under an idempotency key is to do.
pub enum Begun {
    /// Run, as this record's attempt.
    Run(Box<Attempt>),
    /// Answer this, the final answer of an earlier attempt.
    Replay(Vec<u8>),
}

/// A request running under its record; [`Attempt::finish`] records the outcome.
pub struct Attempt {
    kv: kv::Store,
    name: String,
    record: Record,
    revision: u64,
    keys: Keys,
}

impl Attempt {
    /// The ids this attempt runs with: those of the record's first attempt.
    pub fn allocation(&self) -> Allocation {
        Allocation { op: self.record.op, resource: self.record.resource, random: self.keys.random }
    }

    /// Record the outcome: a final `answer` is kept and replayed to every
    /// retry; without one the next retry runs again, with the same ids (the
    /// command may have been appended).
    pub async fn finish(self, answer: Option<&[u8]>) {
        let after = match answer {
            Some(answer) => Record { phase: Phase::Done, sealed: Some(self.keys.seal(answer)), ..self.record },
            None => Record { phase: Phase::Open, ..self.record },
        };
        let value = encode(&after);
        let deadline = tokio::time::Instant::now() + FINISH_RETRY_FOR;
        loop {
            let e = match self.kv.update(&self.name, value.clone(), self.revision).await {
                Ok(_) => return,
                Err(e) => e,
            };
            // An update that timed out may have been stored: then the record
            // holds exactly these bytes (the sealed answer's nonce is unique).
            let stored = match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => self.kv.entry(&self.name).await.ok().flatten().is_some_and(|entry| entry.value == value),
                _ => false,
            };
            if stored {
                return;
            }
            let transient = matches!(e.kind(), kv::UpdateErrorKind::TimedOut | kv::UpdateErrorKind::Other);
            if !transient || tokio::time::Instant::now() >= deadline {
                // The record stays in progress; a retry takes it over after the lease.
                tracing::warn!(error = %e, "could not store the idempotency record");
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Start a request under idempotency key `key`: create its record, or find
/// what an earlier request with the key left. `credential` is the caller's
/// secret (the answer is sealed under it); `request` is everything that
/// must match for a retry (method, target, body, in order).
pub async fn begin(app: &App, who: &Principal, credential: &str, key: &str, request: &[&[u8]]) -> AppResult<Begun> {
    use kv::{CreateErrorKind, Operation};
    let name = record_name(who, key);
    let keys = Keys::derive(credential, &name);
    let request_mac = keys.request_mac(request);
    app.bus.ensure_connected()?;
    let store = app.bus.bucket(subjects::IDEMPOTENCY_BUCKET).await?;
    let unavailable = |e: &dyn std::fmt::Display| AppError::Unavailable(format!("idempotency store: {e}"));
    let in_progress = || AppError::Conflict("idempotency_in_progress", "a request with this Idempotency-Key is still in progress".into());
    for _ in 0..3 {
        let fresh = Record { request_mac: request_mac.clone(), phase: Phase::InProgress, since: now(), op: Ulid::new(), resource: Ulid::new(), sealed: None };
        match store.create(&name, encode(&fresh)).await {
            Ok(revision) => return Ok(Begun::Run(Box::new(Attempt { kv: store, name, record: fresh, revision, keys }))),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(&e)),
        }
        let Some(entry) = store.entry(&name).await.map_err(|e| unavailable(&e))? else { continue };
        if entry.operation != Operation::Put {
            continue;
        }
        let record: Record = serde_json::from_slice(&entry.value).map_err(|e| AppError::Internal(format!("idempotency record: {e}")))?;
        if record.request_mac != request_mac {
            return Err(AppError::Invalid("idempotency_key_reused", "this Idempotency-Key was used with a different request".into()));
        }
        match record.phase {
            Phase::Done => {
                let sealed = record.sealed.as_deref().unwrap_or_default();
                return keys.open(sealed).map(Begun::Replay).ok_or_else(|| AppError::Internal("idempotency record does not open".into()));
            }
            Phase::InProgress if now().saturating_sub(record.since) < LEASE.as_secs() as i64 => return Err(in_progress()),
            Phase::InProgress | Phase::Open => {
                let taken = Record { phase: Phase::InProgress, since: now(), ..record };
                return match store.update(&name, encode(&taken), entry.revision).await {
                    Ok(revision) => Ok(Begun::Run(Box::new(Attempt { kv: store, name, record: taken, revision, keys }))),
                    Err(_) => Err(in_progress()),
                };
            }
        }
    }
    Err(unavailable(&"the record keeps changing; retry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_distinct_per_part_and_the_same_on_a_retry() {
        let a = Allocation::fresh();
        let ids: std::collections::BTreeSet<Ulid> = (1..=16).flat_map(|n| [a.derived(n).op, a.derived(n).resource]).chain([a.op, a.resource]).collect();
        assert_eq!(ids.len(), 34, "every part gets ids of its own");
        assert_eq!((a.derived(3).op, a.derived(3).resource), (a.derived(3).op, a.derived(3).resource));
        assert_eq!(a.derived(3).op.timestamp_ms(), a.op.timestamp_ms(), "they sort with the request's");
    }

    #[test]
    fn sealed_answers_open_only_with_the_same_credential() {
        let keys = Keys::derive("vmp_secret", "name");
        let sealed = keys.seal(br#"{"secret":"vmp_key_abc"}"#);
        assert!(!sealed.contains(&hex::encode("vmp_key_abc")), "the answer is not readable");
        assert_eq!(keys.open(&sealed).expect("opens"), br#"{"secret":"vmp_key_abc"}"#);
        assert!(Keys::derive("vmp_other", "name").open(&sealed).is_none());
        assert!(Keys::derive("vmp_secret", "other").open(&sealed).is_none());
        assert!(keys.open("00").is_none() && keys.open("zz").is_none());
    }

    #[test]
    fn derived_material_depends_on_credential_and_record() {
        let (a, b) = (Keys::derive("t1", "n"), Keys::derive("t2", "n"));
        assert_ne!(a.random, b.random);
        assert_eq!(a.random, Keys::derive("t1", "n").random);
        let request: [&[u8]; 3] = [b"POST", b" /v1/vms\n", b"{}"];
        assert_ne!(a.request_mac(&request), b.request_mac(&request));
        assert_ne!(a.request_mac(&request), a.request_mac(&[b"POST", b" /v1/vms\n", b"{ }"]));
    }
}
