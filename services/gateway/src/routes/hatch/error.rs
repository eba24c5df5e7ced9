//! Hatch's error shape: `{"error": "<message>"}` with the status its kind
//! calls for (the seed shows none; this is the usual one of Go services).
//! Use case errors ([`AppError`]) are mapped here, once.

use crate::app::AppError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every Hatch error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// A failed Hatch request: a status and a message.
#[derive(Debug)]
pub struct HatchError {
    pub status: StatusCode,
    pub message: String,
    retry_after: Option<u64>,
}

impl HatchError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }

    /// 400: the request will never work as given.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 for a VM the caller cannot see (unknown, malformed id, deleted, another org's).
    pub fn vm_not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("vm {id} not found"))
    }
}

impl From<AppError> for HatchError {
    fn from(e: AppError) -> Self {
        let message = e.to_string();
        match e {
            AppError::Invalid(..) => Self::new(StatusCode::BAD_REQUEST, message),
            AppError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, message),
            AppError::Conflict(..) => Self::new(StatusCode::CONFLICT, message),
            AppError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, message),
            AppError::Unauthenticated => Self::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token"),
            AppError::RateLimited { retry_after_secs } => Self { retry_after: Some(retry_after_secs), ..Self::new(StatusCode::TOO_MANY_REQUESTS, message) },
            AppError::TooManySessions(_) => Self::new(StatusCode::TOO_MANY_REQUESTS, message),
            AppError::Unavailable(_) => Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message) },
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl IntoResponse for HatchError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(ErrorBody { error: self.message })).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Shorthand for handler results.
pub type HatchResult<T> = Result<T, HatchError>;
