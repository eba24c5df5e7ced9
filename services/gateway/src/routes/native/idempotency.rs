//! `Idempotency-Key` on POST: the same key with the same request within 24 h
//! returns the first final answer and does nothing again; the same key with a
//! different request is a 422; while the first still runs, a 409.
//!
//! The caller is authenticated first, so an unauthenticated request never
//! touches the records (`app::idempotency`, which keeps them). An answer is
//! final, and replayed, when it is a 2xx or a 4xx other than 401, 408, 409
//! and 429; after any other the next retry runs again, with the same ids
//! ([`Allocation`]). The answer is kept as status, content type and body.

use super::auth::bearer;
use super::error::ApiError;
use crate::AppState;
use crate::app::Principal;
use crate::app::idempotency::{Allocation, Begun, begin};
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Bodies are buffered up to the API's body limit.
const MAX_BODY: usize = crate::MAX_BODY_BYTES;

/// Handlers take the request's ids as an extractor; without the header they are fresh.
impl<S: Send + Sync> FromRequestParts<S> for Allocation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().copied().unwrap_or_else(Self::fresh))
    }
}

/// Whether an answer is final and is replayed, rather than retried.
fn is_final(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && ![StatusCode::UNAUTHORIZED, StatusCode::REQUEST_TIMEOUT, StatusCode::CONFLICT, StatusCode::TOO_MANY_REQUESTS].contains(&status))
}

/// Status, content type and body, framed as one answer to keep.
fn frame(status: StatusCode, content_type: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let ct = content_type.unwrap_or_default();
    let mut answer = Vec::with_capacity(4 + ct.len() + body.len());
    answer.extend(status.as_u16().to_be_bytes());
    answer.extend((ct.len() as u16).to_be_bytes());
    answer.extend(ct);
    answer.extend(body);
    answer
}

/// The response a kept answer replays.
fn replay(answer: &[u8]) -> Option<Response> {
    let status = StatusCode::from_u16(u16::from_be_bytes(answer.get(..2)?.try_into().ok()?)).ok()?;
    let ct_len = usize::from(u16::from_be_bytes(answer.get(2..4)?.try_into().ok()?));
    let content_type = answer.get(4..4 + ct_len)?;
    let body = answer.get(4 + ct_len..)?.to_vec();
    let mut resp = (status, body).into_response();
    if let Ok(ct) = HeaderValue::from_bytes(content_type)
        && !content_type.is_empty()
    {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    Some(resp)
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
    let reject = |e: ApiError| e.into_response();
    let idem = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if idem.is_empty() || idem.len() > 255 {
        return Err(reject(ApiError::BadRequest("bad_header", "Idempotency-Key must be 1-255 visible characters".into())));
    }
    let (mut parts, body) = req.into_parts();
    let who = Principal::from_request_parts(&mut parts, &state).await.map_err(reject)?;
    let body = to_bytes(body, MAX_BODY).await.map_err(|_| reject(ApiError::PayloadTooLarge))?;
    let credential = bearer(&parts.headers).unwrap_or_default();
    let target = parts.uri.to_string();
    let request: [&[u8]; 5] = [parts.method.as_str().as_bytes(), b" ", target.as_bytes(), b"\n", &body];
    let attempt = match begin(&state.app, &who, credential, &idem, &request).await.map_err(|e| reject(e.into()))? {
        Begun::Run(attempt) => attempt,
        Begun::Replay(answer) => return replay(&answer).ok_or_else(|| reject(ApiError::Internal("idempotency record does not open".into()))),
    };
    parts.extensions.insert(attempt.allocation());

    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = resp.into_parts();
    let body = to_bytes(body, usize::MAX).await.map_err(|e| reject(ApiError::Internal(e.to_string())))?;
    let answer = is_final(parts.status).then(|| frame(parts.status, parts.headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes), &body));
    attempt.finish(answer.as_deref()).await;
    Ok(Response::from_parts(parts, Body::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_answers_replay_status_type_and_body() {
        let answer = frame(StatusCode::CREATED, Some(b"application/json"), br#"{"id":"vm_1"}"#);
        let resp = replay(&answer).expect("replays");
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[REPLAYED_HEADER], "true");
        assert_eq!(replay(&frame(StatusCode::NO_CONTENT, None, b"")).expect("replays").status(), StatusCode::NO_CONTENT);
        assert!(replay(b"\x00").is_none());
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
