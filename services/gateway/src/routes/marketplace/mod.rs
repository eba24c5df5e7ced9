//! The marketplace dialect (seed 004, "marketplace v2"): host nodes with
//! their free resources, ports, prices, location and uptime, and instances
//! created on them as JSON:API documents (`/api/v2/...`). It parses its own
//! documents into use case input, calls `app` (hosts, vms, ssh keys through
//! `vms::create`), and renders its own documents and JSON:API errors.
//! Its OpenAPI document is served at `/openapi/marketplace.json`.
//! See `docs/dialects/marketplace.md`.

mod auth;
pub mod error;
pub mod hostnodes;
pub mod instances;

use super::shared::BearerAuth;
use crate::AppState;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Serialize;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

/// A 2xx JSON:API document, sent as `application/vnd.api+json`.
pub struct JsonApi<T>(pub T);

impl<T: Serialize> IntoResponse for JsonApi<T> {
    fn into_response(self) -> Response {
        let mut resp = axum::Json(self.0).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(error::JSON_API));
        resp
    }
}

/// The OpenAPI document's root; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmplane marketplace v2",
        description = "Host nodes and instances in the shape of the marketplace v2 API, on vmplane. Documents are JSON:API (application/vnd.api+json); errors are {\"errors\":[{\"status\",\"code\",\"title\",\"detail\"}]}. See docs/dialects/marketplace.md."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::ErrorDocument))
)]
pub struct MarketplaceDoc;

/// A path whose other methods answer 405 as a JSON:API error.
fn path(r: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, method_router) = r;
    (schemas, paths, method_router.fallback(error::method_not_allowed))
}

/// The documented routes and their OpenAPI document, from one list.
pub fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(MarketplaceDoc::openapi())
        .routes(path(routes!(hostnodes::list_hostnodes)))
        .routes(path(routes!(hostnodes::get_hostnode)))
        .routes(path(routes!(instances::create_instance, instances::list_instances)))
        .routes(path(routes!(instances::get_instance, instances::delete_instance)))
}

/// The OpenAPI document of this dialect.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().split_for_parts().1
}

/// Every route of the dialect: the documented ones, its OpenAPI document, and
/// JSON:API 404s for anything else under `/api/v2`.
pub fn router() -> Router<AppState> {
    let (routes, doc) = documented().split_for_parts();
    let doc = Arc::new(doc);
    routes
        .route("/openapi/marketplace.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
        .route("/api/v2", any(error::no_route))
        .route("/api/v2/{*rest}", any(error::no_route))
}
