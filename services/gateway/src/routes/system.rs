//! Health, readiness, metrics, the OpenAPI document, and the fallbacks that
//! keep even unknown routes in the `/v1` error format.

use super::native::error::ApiError;
use crate::AppState;
use crate::app::health;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;

/// Unversioned operational routes.
pub fn router(doc: Arc<utoipa::openapi::OpenApi>) -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|State(state): State<AppState>| async move { state.metrics.render() }))
        .route("/openapi.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
}

/// 200 only when NATS is connected and the projections hold every event in the stream.
async fn readyz(State(state): State<AppState>) -> Response {
    match health::readiness(&state.app).await {
        Ok(applied) => axum::Json(serde_json::json!({"status": "ready", "applied_sequence": applied})).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Unknown route.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("route {} {}", req.method(), req.uri().path()))
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({"code": "method_not_allowed", "message": "method not allowed on this route"})))
        .into_response()
}

/// A panic in a handler is a bug; answer in the API's format and log it.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// Count and time requests by matched route and status. Every label takes
/// a bounded set of values: a route template (or `unmatched`), a standard
/// method (or `other`), a status code.
pub async fn track_metrics(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("vmplane_http_requests_total", "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("vmplane_http_request_seconds", "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    resp
}

/// The metrics label of a method: a standard one, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(method_label(&Method::TRACE), "other");
    }
}
