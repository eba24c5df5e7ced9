//! NeevCloud's error shape, `ErrorResponse` `{"code","message"}`, and the
//! one mapping of use case errors onto it. Extractors here reject in that
//! shape too: a malformed body, query or path is a 400, never axum's text.

use crate::app::AppError;
use crate::routes::contract::{Contract, Refusal};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::LazyLock;
use utoipa::ToSchema;

/// Standard format for error responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// Machine-readable error code.
    pub code: String,
    /// Human-readable error message.
    pub message: String,
}

/// A failed request: its status and body.
#[derive(Debug)]
pub struct NeevError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

/// Shorthand for handler results.
pub type NeevResult<T> = Result<T, NeevError>;

impl NeevError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: uuids_in(&message.into()), retry_after: None }
    }

    /// 400: the request breaks a documented rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
    }

    /// 400 with a code of its own.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: no such thing, or not the caller's.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 401: no valid bearer token.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid bearer token")
    }
}

impl IntoResponse for NeevError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(detail = %self.message, "internal error");
        }
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR { "internal error".to_owned() } else { self.message };
        let mut resp = (self.status, axum::Json(ErrorResponse { code: self.code.to_owned(), message })).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<AppError> for NeevError {
    fn from(e: AppError) -> Self {
        match e {
            // The seed answers 404 for a region or an image it does not know.
            AppError::Invalid(code @ ("unknown_image" | "unknown_region" | "region_not_served"), m) => Self::new(StatusCode::NOT_FOUND, code, m),
            AppError::Invalid(code, m) => Self::new(StatusCode::BAD_REQUEST, code, m),
            AppError::NotFound(what) => Self::not_found(what),
            // "The request is invalid or VM is not in a state that allows start."
            AppError::Conflict(code @ "invalid_state", m) => Self::new(StatusCode::BAD_REQUEST, code, m),
            AppError::Conflict(code, m) => Self::new(StatusCode::CONFLICT, code, m),
            AppError::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "forbidden", m),
            AppError::Unauthenticated => Self::unauthorized(),
            AppError::RateLimited { retry_after_secs } => {
                Self { retry_after: Some(retry_after_secs), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests") }
            }
            AppError::TooManySessions(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", m),
            AppError::Unavailable(m) => Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m) },
            AppError::Internal(detail) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail),
        }
    }
}

/// `message` with every vmplane id in it (`vm_…`, `vol_…`, `org_…`, `prj_…`)
/// written as the UUID this API shows for it.
fn uuids_in(message: &str) -> String {
    const PREFIXES: [&str; 4] = ["vm_", "vol_", "org_", "prj_"];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, prefix)) = PREFIXES.iter().filter_map(|p| rest.find(p).map(|i| (i, *p))).min() {
        let start = at + prefix.len();
        let candidate = rest.get(start..start + 26).filter(|_| at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric());
        let ends = rest.as_bytes().get(start + 26).is_none_or(|b| !b.is_ascii_alphanumeric());
        match candidate.and_then(|c| ulid::Ulid::from_string(c).ok()).filter(|_| ends) {
            Some(id) => {
                out.push_str(&rest[..at]);
                out.push_str(&super::ids::uuid(id));
                rest = &rest[start + 26..];
            }
            None => {
                out.push_str(&rest[..start]);
                rest = &rest[start..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A JSON body, checked against the dialect's document before it is
/// decoded: anything the document or `T` does not take (malformed, a wrong
/// type, a missing required field, not JSON) is a 400 `invalid_request`, a
/// broken bound or pattern a 400 `validation_failed`; too large a 413.
pub struct Json<T>(pub T);

/// The document's request bodies, the rule each body is checked by.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| Contract::new(&super::openapi()));

impl<S: Send + Sync, T: DeserializeOwned + ToSchema> FromRequest<S> for Json<T> {
    type Rejection = NeevError;
    async fn from_request(req: Request, state: &S) -> Result<Self, NeevError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await.map_err(|r: JsonRejection| match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => NeevError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is larger than 1 MiB"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => NeevError::bad_request("invalid_request", "expected Content-Type: application/json"),
            _ => NeevError::bad_request("invalid_request", r.body_text()),
        })?;
        CONTRACT.decode(value).map(Self).map_err(|refusal| match refusal {
            Refusal::Shape(why) => NeevError::bad_request("invalid_request", format!("invalid request body: {why}")),
            Refusal::Rule { why, .. } => NeevError::invalid(why),
        })
    }
}

/// A query string: anything unparsable is a 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = NeevError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, NeevError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r: QueryRejection| NeevError::bad_request("invalid_query", r.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmplane_ids_in_messages_are_uuids() {
        let vm = vmplane_domain::VmId::new();
        let text = uuids_in(&format!("volume is attached to {vm}; detach it first"));
        assert_eq!(text, format!("volume is attached to {}; detach it first", super::super::ids::uuid(vm.0)));
        for kept in ["no ids here", "vm_short", "a vm_ alone", "xvm_01jdx3v9k6m2w8q4r5t7y9z0ab", "vm_01jdx3v9k6m2w8q4r5t7y9z0abc"] {
            assert_eq!(uuids_in(kept), kept);
        }
        let vol = vmplane_domain::VolumeId::new();
        assert_eq!(uuids_in(&format!("{vol} not found")), format!("{} not found", super::super::ids::uuid(vol.0)));
    }

    #[test]
    fn use_case_errors_take_the_documented_statuses() {
        let status = |e: AppError| NeevError::from(e).into_response().status().as_u16();
        assert_eq!(status(AppError::Invalid("validation_failed", "x".into())), 400);
        assert_eq!(status(AppError::Invalid("unknown_plan", "x".into())), 400);
        assert_eq!(status(AppError::Invalid("unknown_image", "x".into())), 404);
        assert_eq!(status(AppError::Invalid("unknown_region", "x".into())), 404);
        assert_eq!(status(AppError::Invalid("region_not_served", "x".into())), 404);
        assert_eq!(status(AppError::NotFound("vm".into())), 404);
        assert_eq!(status(AppError::Conflict("invalid_state", "x".into())), 400);
        assert_eq!(status(AppError::Conflict("volume_in_use", "x".into())), 409);
        assert_eq!(status(AppError::Unauthenticated), 401);
        assert_eq!(status(AppError::Internal("x".into())), 500);
    }
}
