//! The marketplace's error shape, JSON:API errors:
//! `{"errors":[{"status":"409","code":"port_conflict","title":"Conflict","detail":"…"}]}`
//! with the matching HTTP status. Use case errors ([`AppError`]) are mapped
//! here, once; so are the dialect's own (bad documents, unknown routes).

use crate::app::AppError;
use crate::routes::contract::{Contract, Refusal};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::LazyLock;
use utoipa::ToSchema;

/// The media type of JSON:API documents, which every answer carries.
pub const JSON_API: &str = "application/vnd.api+json";

/// The body of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDocument {
    pub errors: Vec<ErrorObject>,
}

/// One JSON:API error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// The HTTP status code, as a string (JSON:API).
    pub status: String,
    /// Machine-readable: `bad_request`, `not_found`, `port_conflict`,
    /// `insufficient_capacity`, `unknown_image`, ... (vmplane's codes).
    pub code: String,
    /// The status's reason phrase.
    pub title: String,
    /// What went wrong, for a human.
    pub detail: String,
}

/// Everything a marketplace request can fail with: a status, a code and a detail.
#[derive(Debug)]
pub struct MarketError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds a client should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl MarketError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), retry_after: None }
    }

    /// 400: the request breaks a documented rule.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404: no such thing, or not the caller's.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl IntoResponse for MarketError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, detail = %self.detail, "marketplace request failed");
        }
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let body =
            ErrorDocument { errors: vec![ErrorObject { status: self.status.as_u16().to_string(), code: self.code.to_owned(), title, detail: self.detail }] };
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_API));
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<AppError> for MarketError {
    fn from(e: AppError) -> Self {
        let detail = e.to_string();
        match e {
            AppError::Invalid(code, _) => Self::bad_request(code, detail),
            AppError::NotFound(_) => Self::not_found(detail),
            AppError::Conflict(code, _) => Self::new(StatusCode::CONFLICT, code, detail),
            AppError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", detail),
            AppError::Unauthenticated => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid bearer token"),
            AppError::RateLimited { retry_after_secs } => {
                Self { retry_after: Some(retry_after_secs), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail) }
            }
            AppError::TooManySessions(_) => Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", detail),
            AppError::Unavailable(_) => Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail) },
            AppError::Internal(d) => {
                tracing::error!(detail = %d, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

/// Shorthand for handler results.
pub type MarketResult<T> = Result<T, MarketError>;

/// A JSON body whose rejections speak JSON:API, checked against the
/// marketplace's document (see [`Contract`]): malformed or mistyped
/// documents are 400, a body that is not JSON 415, one over the limit 413;
/// a value the document forbids is 400 `validation_failed`, except a
/// resource type other than `virtualmachine` (409 `type_mismatch`, as
/// JSON:API says) and not exactly one SSH key (400 `ssh_key_required`).
/// Whole-number floats (`2.0`) are integers.
pub struct Json<T>(pub T);

/// The marketplace's document's request bodies, the rule each is checked by.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| Contract::new(&super::openapi()));

impl<S: Send + Sync, T: DeserializeOwned + ToSchema> FromRequest<S> for Json<T> {
    type Rejection = MarketError;
    async fn from_request(req: Request, state: &S) -> Result<Self, MarketError> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(r) => return Err(rejection(r)),
        };
        CONTRACT.decode(value).map(Self).map_err(|refusal| match refusal {
            Refusal::Shape(why) => MarketError::bad_request("invalid_document", why),
            Refusal::Rule { at, why } => rule_refusal(&at, why),
        })
    }
}

/// A body that breaks a rule of the document, by the JSON pointer of its
/// first violation.
fn rule_refusal(at: &str, report: String) -> MarketError {
    match at {
        "/data/type" | "/data/attributes/type" => {
            MarketError::new(StatusCode::CONFLICT, "type_mismatch", format!("this collection holds resources of type `virtualmachine`: {report}"))
        }
        "/data/attributes" => {
            MarketError::bad_request("ssh_key_required", format!("give exactly one of ssh_key (a public key) and ssh_key_id (a stored key): {report}"))
        }
        _ => MarketError::bad_request("validation_failed", report),
    }
}

fn rejection(r: JsonRejection) -> MarketError {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => MarketError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the document is larger than 1 MiB"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            MarketError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", format!("expected Content-Type: {JSON_API} (or application/json)"))
        }
        StatusCode::UNPROCESSABLE_ENTITY => MarketError::bad_request("invalid_document", r.body_text()),
        _ => MarketError::bad_request("malformed_json", r.body_text()),
    }
}

/// The one path parameter of a route, as text; undecodable -> 400.
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = MarketError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, MarketError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|r| MarketError::bad_request("invalid_path", r.body_text()))
    }
}

/// A method the path does not have.
pub async fn method_not_allowed(req: Request) -> MarketError {
    MarketError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{} is not a method of {}", req.method(), req.uri().path()))
}

/// Any route under `/api/v2` that does not exist.
pub async fn no_route(req: Request) -> MarketError {
    MarketError::new(StatusCode::NOT_FOUND, "route_not_found", format!("no route {} {}", req.method(), req.uri().path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_errors_keep_their_code_and_get_a_jsonapi_status() {
        let cases = [
            (AppError::Invalid("unknown_image", "x".into()), 400, "unknown_image"),
            (AppError::NotFound("vm x".into()), 404, "not_found"),
            (AppError::Conflict("port_conflict", "x".into()), 409, "port_conflict"),
            (AppError::Unauthenticated, 401, "unauthorized"),
            (AppError::Unavailable("x".into()), 503, "unavailable"),
        ];
        for (e, status, code) in cases {
            let m = MarketError::from(e);
            assert_eq!((m.status.as_u16(), m.code), (status, code));
        }
    }
}
