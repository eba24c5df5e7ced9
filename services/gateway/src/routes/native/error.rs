//! The `/v1` error shape: every failure is `{"code","message"}` with the
//! status its kind calls for. Use case errors ([`AppError`]) are mapped here,
//! once; the rest are the HTTP layer's own (bad JSON, unknown routes, ...).

use crate::app::AppError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The error body of every non-2xx response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `invalid_state`, `payload_too_large`, `unsupported_media_type`,
    /// `validation_failed`, `idempotency_key_reused`, `rate_limited`, `too_many_sessions`,
    /// `port_conflict`, `port_out_of_range`, `address_conflict`, `insufficient_capacity`, `unavailable`, ...
    pub code: String,
    pub message: String,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("request body is larger than 1 MiB")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    /// The caller has as many streams or terminals open as it may.
    #[error("{0}")]
    TooManySessions(String),
    #[error("{0}")]
    Unavailable(String),
    /// A bug: logged, never expected.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// Status and code of this error.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(code, _) => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(code, _) => (StatusCode::CONFLICT, code),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::Unprocessable(code, _) => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::TooManySessions(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = ErrorBody { code: code.to_owned(), message: self.to_string() };
        let mut resp = (status, axum::Json(body)).into_response();
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(code, m) => Self::Unprocessable(code, m),
            AppError::NotFound(what) => Self::NotFound(what),
            AppError::Conflict(code, m) => Self::Conflict(code, m),
            AppError::Forbidden(m) => Self::Forbidden(m),
            AppError::Unauthenticated => Self::Unauthorized,
            AppError::RateLimited { retry_after_secs } => Self::RateLimited { retry_after_secs },
            AppError::TooManySessions(m) => Self::TooManySessions(m),
            AppError::Unavailable(m) => Self::Unavailable(m),
            AppError::Internal(detail) => Self::Internal(detail),
        }
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
