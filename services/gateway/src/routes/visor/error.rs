//! The Visor error shape, tRPC's:
//! `{"error":{"message","code","data":{"code","httpStatus","path"}}}`, with
//! the HTTP status its code stands for. Use case errors ([`AppError`]) are
//! mapped here, once.
//!
//! `data.path` is the procedure (`vm.one`); errors are rendered without it
//! and [`fill_path`], a middleware on every Visor route, writes it in.

use crate::app::AppError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// tRPC's error codes, those Visor answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// The body is not JSON.
    ParseError,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotSupported,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
}

impl Code {
    /// The HTTP status tRPC gives this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ParseError | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A failed procedure call.
#[derive(Debug, Clone)]
pub struct VisorError {
    pub code: Code,
    pub message: String,
    /// Seconds to wait before retrying (429, 503), sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl VisorError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
}

/// Shorthand for handler results.
pub type VisorResult<T> = Result<T, VisorError>;

/// The error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// `error` of the error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    pub code: Code,
    pub data: ErrorData,
}

/// `error.data`: the code again, its HTTP status and the procedure.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorData {
    pub code: Code,
    pub http_status: u16,
    /// The procedure called, e.g. `vm.launch`.
    pub path: Option<String>,
}

impl IntoResponse for VisorError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if self.code == Code::InternalServerError {
            tracing::error!(detail = %self.message, "internal error");
        }
        let message = if self.code == Code::InternalServerError { "internal error".to_owned() } else { self.message };
        let envelope =
            ErrorEnvelope { error: ErrorBody { message, code: self.code, data: ErrorData { code: self.code, http_status: status.as_u16(), path: None } } };
        let mut resp = (status, axum::Json(envelope.clone())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(envelope);
        resp
    }
}

impl From<AppError> for VisorError {
    fn from(e: AppError) -> Self {
        let message = e.to_string();
        match e {
            AppError::Invalid(..) => Self::new(Code::BadRequest, message),
            AppError::NotFound(_) => Self::new(Code::NotFound, message),
            AppError::Conflict(..) => Self::new(Code::Conflict, message),
            AppError::Forbidden(_) => Self::new(Code::Forbidden, message),
            AppError::Unauthenticated => Self::new(Code::Unauthorized, "missing or invalid bearer token"),
            AppError::RateLimited { retry_after_secs } => Self { retry_after: Some(retry_after_secs), ..Self::new(Code::TooManyRequests, message) },
            AppError::TooManySessions(_) => Self::new(Code::TooManyRequests, message),
            AppError::Unavailable(_) => Self { retry_after: Some(1), ..Self::new(Code::ServiceUnavailable, message) },
            AppError::Internal(detail) => Self::new(Code::InternalServerError, detail),
        }
    }
}

/// Known route, method not one of its procedure's.
pub async fn method_not_supported() -> VisorError {
    VisorError::new(Code::MethodNotSupported, "this procedure is not served with this HTTP method")
}

/// Write the procedure (the request path after `/api/`) into an error body.
pub async fn fill_path(req: Request, next: Next) -> Response {
    let path = req.uri().path().strip_prefix("/api/").unwrap_or(req.uri().path()).to_owned();
    let mut resp = next.run(req).await;
    let Some(mut envelope) = resp.extensions_mut().remove::<ErrorEnvelope>() else { return resp };
    envelope.error.data.path = Some(path);
    let (mut parts, _) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_trpc_words_with_their_statuses() {
        assert_eq!(serde_json::to_value(Code::BadRequest).unwrap(), "BAD_REQUEST");
        assert_eq!(serde_json::to_value(Code::TooManyRequests).unwrap(), "TOO_MANY_REQUESTS");
        assert_eq!(serde_json::to_value(Code::InternalServerError).unwrap(), "INTERNAL_SERVER_ERROR");
        assert_eq!(Code::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(Code::MethodNotSupported.status(), StatusCode::METHOD_NOT_ALLOWED);
        let e: VisorError = AppError::Invalid("unknown_plan", "no plan `huge`".into()).into();
        assert_eq!((e.code, e.message.as_str()), (Code::BadRequest, "no plan `huge`"));
        let e: VisorError = AppError::RateLimited { retry_after_secs: 3 }.into();
        assert_eq!((e.code, e.retry_after), (Code::TooManyRequests, Some(3)));
    }
}
