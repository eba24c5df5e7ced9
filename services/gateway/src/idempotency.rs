//! `Idempotency-Key` on POST: the same key with the same request within 24 h
//! returns the first response and does nothing again; the same key with a
//! different request is a 422.
//!
//! Records live in a JetStream key-value bucket with a 24 h TTL, so every
//! gateway replica sees them. A key is first reserved with an atomic create,
//! so two concurrent requests with one key cannot both run.

use crate::AppState;
use crate::error::ApiError;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmplane_domain::subjects;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Bodies are buffered up to the API's body limit.
const MAX_BODY: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
struct Record {
    request_sha256: String,
    /// `None` while the first request is still being handled.
    response: Option<Stored>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
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

async fn handle(state: AppState, req: Request, next: Next) -> Result<Response, Response> {
    let idem = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if idem.is_empty() || idem.len() > 255 {
        return Err(ApiError::BadRequest("bad_header", "Idempotency-Key must be 1-255 visible characters".into()).into_response());
    }
    let auth = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::PayloadTooLarge.into_response())?;
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update(b" ");
    h.update(parts.uri.to_string());
    h.update(b"\n");
    h.update(&body);
    let request_sha256 = hex::encode(h.finalize());
    // Scope keys by credential so two callers' keys never collide.
    let kv_key = hex::encode(Sha256::digest([auth.as_slice(), b"\n", idem.as_bytes()].concat()));

    let kv = state.bus.bucket(subjects::IDEMPOTENCY_BUCKET).await.map_err(|e| ApiError::from(e).into_response())?;
    let unavailable = |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("idempotency store: {e}")).into_response();
    let reserve = Record { request_sha256: request_sha256.clone(), response: None };
    let reserved = serde_json::to_vec(&reserve).expect("record encodes");
    if let Err(create_err) = kv.create(&kv_key, reserved.into()).await {
        let existing = kv.get(&kv_key).await.map_err(|e| unavailable(&e))?;
        let Some(existing) = existing else { return Err(unavailable(&create_err)) };
        let record: Record = serde_json::from_slice(&existing).map_err(|e| ApiError::Internal(e.to_string()).into_response())?;
        if record.request_sha256 != request_sha256 {
            return Err(ApiError::Unprocessable("idempotency_key_reused", "this Idempotency-Key was used with a different request".into()).into_response());
        }
        let Some(stored) = record.response else {
            return Err(ApiError::Conflict("idempotency_in_progress", "a request with this Idempotency-Key is still in progress".into()).into_response());
        };
        let mut resp = (StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK), stored.body).into_response();
        if let Some(ct) = stored.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        resp.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        return Ok(resp);
    }

    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = resp.into_parts();
    let body = to_bytes(body, usize::MAX).await.map_err(|e| ApiError::Internal(e.to_string()).into_response())?;
    if parts.status.is_server_error() {
        // Nothing was done that the client should not retry.
        if let Err(e) = kv.delete(&kv_key).await {
            tracing::warn!(error = %e, "could not release idempotency key");
        }
    } else {
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let record = Record { request_sha256, response: Some(Stored { status: parts.status.as_u16(), content_type, body: body.to_vec() }) };
        if let Err(e) = kv.put(&kv_key, serde_json::to_vec(&record).expect("record encodes").into()).await {
            tracing::warn!(error = %e, "could not store idempotent response");
        }
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}
