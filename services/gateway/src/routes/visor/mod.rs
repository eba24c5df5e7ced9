//! The Visor dialect: Visor's Virtual Machines API, tRPC-style procedures
//! under `/api/vm.*` (`docs/dialects/visor.md`). Each module parses a
//! procedure's input, calls `app`, and renders `{"result":{"data":...}}`;
//! errors take tRPC's shape once, in `error`. Its OpenAPI document is
//! served at `/openapi/visor.json`.

pub mod error;
pub mod extract;
pub mod terminal;
pub mod views;
pub mod vms;
pub mod volumes;

use super::shared::BearerAuth;
use crate::AppState;
use axum::Router;
use axum::routing::get;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

/// The OpenAPI document's root; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "Visor Virtual Machines API (vmplane)", description = "Launch, manage, and destroy Visor VMs: tRPC-style procedures answering {\"result\":{\"data\":...}}, errors as {\"error\":{\"message\",\"code\",\"data\":{\"code\",\"httpStatus\",\"path\"}}}."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::ErrorEnvelope))
)]
pub struct VisorDoc;

/// A procedure whose other HTTP methods answer METHOD_NOT_SUPPORTED in the tRPC shape.
fn procedure(r: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, method_router) = r;
    (schemas, paths, method_router.fallback(error::method_not_supported))
}

/// The documented procedures and their OpenAPI document, from one list.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(VisorDoc::openapi())
        .routes(procedure(routes!(vms::all)))
        .routes(procedure(routes!(vms::one)))
        .routes(procedure(routes!(vms::launch)))
        .routes(procedure(routes!(vms::start)))
        .routes(procedure(routes!(vms::stop)))
        .routes(procedure(routes!(vms::restart)))
        .routes(procedure(routes!(vms::destroy)))
        .routes(procedure(routes!(volumes::list)))
        .routes(procedure(routes!(volumes::attach)))
        .routes(procedure(routes!(volumes::detach)))
        .routes(procedure(routes!(terminal::open)))
}

/// The Visor routes, with `GET /openapi/visor.json` (no auth).
pub fn router() -> Router<AppState> {
    let (api, doc) = api().split_for_parts();
    let doc = Arc::new(doc);
    api.layer(axum::middleware::from_fn(error::fill_path)).route("/openapi/visor.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
}
