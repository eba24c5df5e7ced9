//! `Idempotency-Key` on POST: the same key with the same request within 24 h
//! returns the first final answer and does nothing again; the same key with a
//! different request is a 422.
//!
//! The caller is authenticated first, so an unauthenticated request never
//! touches the bucket, and a record is named by a hash of caller, org,
//! project and key: two callers' keys never meet. Records live in a
//! JetStream key-value bucket (24 h, bounded in records and bytes), so every
//! gateway replica sees them. A record is
//! - `in_progress` while a request runs: a second request with the key gets
//!   409; a record left by a gateway that died mid-request is taken over
//!   after [`LEASE`];
//! - `open` after an answer that is not final (401, 408, 409, 429, 5xx): the
//!   next retry runs again;
//! - `done` with the final answer (2xx and the other 4xx), replayed from then on.
//!
//! Every record keeps the ids its first attempt allocated ([`Allocation`]:
//! the operation id and the new resource's id), so a retry after any failure
//! runs with the same ids: JetStream deduplicates the command by operation
//! id, and handlers answer from the projection when the operation was
//! carried out already. A client never gets two VMs for one key.
//!
//! Nothing readable sits in NATS: the answer is sealed with
//! ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the caller's
//! bearer token and the record's name, and the request is recorded as an
//! HMAC under another derived key. An API key's secret, in the answer that
//! created it, is replayable only by the caller that holds the credential.

use crate::AppState;
use crate::auth::{Principal, bearer};
use crate::error::ApiError;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use ulid::Ulid;
use vmplane_domain::{OpId, subjects};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Bodies are buffered up to the API's body limit.
const MAX_BODY: usize = crate::MAX_BODY_BYTES;
/// How long a request may hold its record before a retry may take it over;
/// longer than any request runs (publish retries included).
pub const LEASE: Duration = Duration::from_secs(60);

/// The ids a request allocates, fixed across retries of one Idempotency-Key.
/// Handlers take it as an extractor; without the header it is fresh.
#[derive(Debug, Clone, Copy)]
pub struct Allocation {
    op: Ulid,
    resource: Ulid,
    random: [u8; 32],
}

impl Allocation {
    /// Fresh ids, for a request without Idempotency-Key.
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

    /// 256 bits only this caller can reproduce (with this Idempotency-Key),
    /// never stored: the random part of a new API key's secret.
    pub fn random(&self) -> [u8; 32] {
        self.random
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Allocation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().copied().unwrap_or_else(Self::fresh))
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
    /// Hex HMAC of method, URI and body: tells a retry from a reuse.
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
    fn derive(token: &str, name: &str) -> Self {
        let mut okm = [0u8; 96];
        Hkdf::<Sha256>::new(Some(name.as_bytes()), token.as_bytes())
            .expand(b"vmplane idempotency v1", &mut okm)
            .expect("96 bytes is a valid HKDF-SHA256 length");
        let part = |i: usize| -> [u8; 32] { okm[i * 32..(i + 1) * 32].try_into().expect("32-byte slice") };
        Self { seal: ChaCha20Poly1305::new(&part(0).into()), mac: part(1), random: part(2) }
    }

    fn request_mac(&self, method: &Method, uri: &axum::http::Uri, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac).expect("HMAC takes any key length");
        for part in [method.as_str().as_bytes(), b" ", uri.to_string().as_bytes(), b"\n", body] {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Status, content type and body, framed then sealed.
    fn seal(&self, status: StatusCode, content_type: Option<&[u8]>, body: &[u8]) -> String {
        let ct = content_type.unwrap_or_default();
        let mut plain = Vec::with_capacity(4 + ct.len() + body.len());
        plain.extend(status.as_u16().to_be_bytes());
        plain.extend((ct.len() as u16).to_be_bytes());
        plain.extend(ct);
        plain.extend(body);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.seal.encrypt(&nonce, plain.as_slice()).expect("sealing in memory cannot fail");
        hex::encode([nonce.as_slice(), &sealed].concat())
    }

    fn open(&self, sealed: &str) -> Option<Response> {
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, ct) = bytes.split_at(12);
        let plain = self.seal.decrypt(Nonce::from_slice(nonce), ct).ok()?;
        let status = StatusCode::from_u16(u16::from_be_bytes(plain.get(..2)?.try_into().ok()?)).ok()?;
        let ct_len = usize::from(u16::from_be_bytes(plain.get(2..4)?.try_into().ok()?));
        let content_type = plain.get(4..4 + ct_len)?;
        let body = plain.get(4 + ct_len..)?.to_vec();
        let mut resp = (status, body).into_response();
        if let Ok(ct) = HeaderValue::from_bytes(content_type)
            && !content_type.is_empty()
        {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        resp.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        Some(resp)
    }
}

/// The bucket key of a record: caller, org, project and Idempotency-Key, hashed.
fn record_name(who: &Principal, idem: &str) -> String {
    let scope = format!("{}\0{}\0{}\0{idem}", who.actor, who.org, who.project_or_default());
    hex::encode(Sha256::digest(scope.as_bytes()))
}

/// Whether an answer is final and is replayed, rather than retried.
fn is_final(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && ![StatusCode::UNAUTHORIZED, StatusCode::REQUEST_TIMEOUT, StatusCode::CONFLICT, StatusCode::TOO_MANY_REQUESTS].contains(&status))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn encode(record: &Record) -> bytes::Bytes {
    serde_json::to_vec(record).expect("record encodes").into()
}

/// The middleware.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(HEADER) {
        return next.run(req).await;
    }
    match handle(state, req, next).await {
        Ok(resp) | Err(resp) => resp,
    }
}

enum Claim {
    /// Run the request as this record's attempt, holding revision `u64`.
    Run(Record, u64),
    /// Replay this answer.
    Replay(Response),
}

async fn handle(state: AppState, req: Request, next: Next) -> Result<Response, Response> {
    let idem = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if idem.is_empty() || idem.len() > 255 {
        return Err(ApiError::BadRequest("bad_header", "Idempotency-Key must be 1-255 visible characters".into()).into_response());
    }
    let (mut parts, body) = req.into_parts();
    let who = Principal::from_request_parts(&mut parts, &state).await.map_err(IntoResponse::into_response)?;
    let body = to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::PayloadTooLarge.into_response())?;
    let name = record_name(&who, &idem);
    let keys = Keys::derive(bearer(&parts.headers).unwrap_or_default(), &name);
    let request_mac = keys.request_mac(&parts.method, &parts.uri, &body);

    state.bus.ensure_connected().map_err(|e| ApiError::from(e).into_response())?;
    let kv = state.bus.bucket(subjects::IDEMPOTENCY_BUCKET).await.map_err(|e| ApiError::from(e).into_response())?;
    let (record, revision) = match claim(&kv, &name, &request_mac, &keys).await? {
        Claim::Run(record, revision) => (record, revision),
        Claim::Replay(resp) => return Ok(resp),
    };
    parts.extensions.insert(Allocation { op: record.op, resource: record.resource, random: keys.random });

    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = resp.into_parts();
    let body = to_bytes(body, usize::MAX).await.map_err(|e| ApiError::Internal(e.to_string()).into_response())?;
    let after = if is_final(parts.status) {
        let ct = parts.headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
        Record { phase: Phase::Done, sealed: Some(keys.seal(parts.status, ct, &body)), ..record }
    } else {
        // Keep the ids: the command may have been appended.
        Record { phase: Phase::Open, ..record }
    };
    if let Err(e) = kv.update(&name, encode(&after), revision).await {
        // The record stays in progress; a retry takes it over after the lease.
        tracing::warn!(error = %e, "could not store the idempotency record");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Create the record, or find what an earlier request with the key left.
async fn claim(kv: &async_nats::jetstream::kv::Store, name: &str, request_mac: &str, keys: &Keys) -> Result<Claim, Response> {
    use async_nats::jetstream::kv::{CreateErrorKind, Operation};
    let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("idempotency store: {e}")).into_response();
    let in_progress = || ApiError::Conflict("idempotency_in_progress", "a request with this Idempotency-Key is still in progress".into()).into_response();
    for _ in 0..3 {
        let fresh =
            Record { request_mac: request_mac.to_owned(), phase: Phase::InProgress, since: now(), op: Ulid::new(), resource: Ulid::new(), sealed: None };
        match kv.create(name, encode(&fresh)).await {
            Ok(revision) => return Ok(Claim::Run(fresh, revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(&e)),
        }
        let Some(entry) = kv.entry(name).await.map_err(|e| unavailable(&e))? else { continue };
        if entry.operation != Operation::Put {
            continue;
        }
        let record: Record = serde_json::from_slice(&entry.value).map_err(|e| ApiError::Internal(format!("idempotency record: {e}")).into_response())?;
        if record.request_mac != request_mac {
            return Err(ApiError::Unprocessable("idempotency_key_reused", "this Idempotency-Key was used with a different request".into()).into_response());
        }
        match record.phase {
            Phase::Done => {
                let sealed = record.sealed.as_deref().unwrap_or_default();
                return keys.open(sealed).map(Claim::Replay).ok_or_else(|| ApiError::Internal("idempotency record does not open".into()).into_response());
            }
            Phase::InProgress if now().saturating_sub(record.since) < LEASE.as_secs() as i64 => return Err(in_progress()),
            Phase::InProgress | Phase::Open => {
                let taken = Record { phase: Phase::InProgress, since: now(), ..record };
                return match kv.update(name, encode(&taken), entry.revision).await {
                    Ok(revision) => Ok(Claim::Run(taken, revision)),
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
    fn sealed_answers_open_only_with_the_same_credential() {
        let keys = Keys::derive("vmp_secret", "name");
        let sealed = keys.seal(StatusCode::CREATED, Some(b"application/json"), br#"{"secret":"vmp_key_abc"}"#);
        assert!(!sealed.contains(&hex::encode("vmp_key_abc")), "the body is not readable");
        let resp = keys.open(&sealed).expect("opens");
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert!(Keys::derive("vmp_other", "name").open(&sealed).is_none());
        assert!(Keys::derive("vmp_secret", "other").open(&sealed).is_none());
        assert!(keys.open("00").is_none() && keys.open("zz").is_none());
    }

    #[test]
    fn derived_material_depends_on_credential_and_record() {
        let (a, b) = (Keys::derive("t1", "n"), Keys::derive("t2", "n"));
        assert_ne!(a.random, b.random);
        assert_eq!(a.random, Keys::derive("t1", "n").random);
        let uri: axum::http::Uri = "/v1/vms".parse().unwrap();
        assert_ne!(a.request_mac(&Method::POST, &uri, b"{}"), b.request_mac(&Method::POST, &uri, b"{}"));
        assert_ne!(a.request_mac(&Method::POST, &uri, b"{}"), a.request_mac(&Method::POST, &uri, b"{ }"));
    }

    #[test]
    fn only_final_answers_are_kept() {
        for s in [200, 201, 202, 400, 403, 404, 413, 415, 422] {
            assert!(is_final(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [401, 408, 409, 429, 500, 503] {
            assert!(!is_final(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
