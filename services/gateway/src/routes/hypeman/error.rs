//! hypeman's error shape: every failure is `{"code","message"}` (its
//! `Error` schema) with the status its kind calls for. Use case errors
//! ([`AppError`]) are mapped here, once; the rest are this dialect's own
//! (a body that does not decode, a size that does not parse, a state
//! hypeman refuses, a name that matches several instances).

use crate::app::{AppError, OpError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Application-specific error code (machine-readable): `bad_request`,
    /// `invalid_size`, `invalid_hotplug_size`, `invalid_overlay_size`,
    /// `invalid_volume_mount`, `validation_failed`, `unknown_image`,
    /// `name_conflict`, `unauthorized`, `forbidden`, `not_found`, `ambiguous`,
    /// `invalid_state`, `volume_in_use`, `rate_limited`, `unavailable`, ...
    pub code: String,
    /// Human-readable error description.
    pub message: String,
}

/// Everything a hypeman request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HypemanError {
    /// 400: the request will never work as given.
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 401.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("{0} not found")]
    NotFound(String),
    /// 404 `ambiguous`: a name or id prefix that matches several.
    #[error("multiple {0}s match, use the full id")]
    Ambiguous(&'static str),
    /// 409: the current state refuses it.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// 413.
    #[error("request body is larger than 1 MiB")]
    PayloadTooLarge,
    /// 429, with Retry-After when known.
    #[error("{1}")]
    TooMany(&'static str, String, Option<u64>),
    /// 409: the operation was accepted and the worker failed it (hypeman
    /// answers 500; a failure of the guest or its host state is not the
    /// server's, and vmplane answers no request with a 5xx for it).
    #[error("{1}")]
    Failed(String, String),
    /// 503: NATS or a host cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug, logged.
    #[error("internal error")]
    Internal(String),
}

impl HypemanError {
    /// Status and code.
    pub fn parts(&self) -> (StatusCode, String) {
        let (status, code) = match self {
            Self::BadRequest(code, _) => (StatusCode::BAD_REQUEST, *code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Ambiguous(_) => (StatusCode::NOT_FOUND, "ambiguous"),
            Self::Conflict(code, _) => (StatusCode::CONFLICT, *code),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::TooMany(code, _, _) => (StatusCode::TOO_MANY_REQUESTS, *code),
            Self::Failed(code, _) => return (StatusCode::CONFLICT, code.clone()),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        (status, code.to_owned())
    }

    /// An operation the worker failed: its code and reason, and which instance.
    pub fn failed(action: &str, instance: &str, e: Option<OpError>) -> Self {
        let (code, message) = e.map_or_else(|| ("failed".to_owned(), "no reason recorded".to_owned()), |e| (e.code, e.message));
        Self::Failed(code, format!("{action} of instance {instance} failed: {message}"))
    }
}

impl IntoResponse for HypemanError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut resp = (status, axum::Json(ErrorBody { code, message: self.to_string() })).into_response();
        let retry_after = match &self {
            Self::TooMany(_, _, secs) => *secs,
            Self::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The one mapping of use case errors: hypeman answers 400 for every input
/// it refuses (it has no 422), 404 for what the caller cannot see, 409 for
/// what the state refuses.
impl From<AppError> for HypemanError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(code, m) => Self::BadRequest(code, m),
            AppError::NotFound(what) => Self::NotFound(what),
            AppError::Conflict(code, m) => Self::Conflict(code, m),
            AppError::Forbidden(m) => Self::Forbidden(m),
            AppError::Unauthenticated => Self::Unauthorized,
            AppError::RateLimited { retry_after_secs } => Self::TooMany("rate_limited", "too many requests".into(), Some(retry_after_secs)),
            AppError::TooManySessions(m) => Self::TooMany("too_many_sessions", m, None),
            AppError::Unavailable(m) => Self::Unavailable(m),
            AppError::Internal(detail) => Self::Internal(detail),
        }
    }
}

/// Shorthand for handler results.
pub type HypemanResult<T> = Result<T, HypemanError>;
