//! The hypeman dialect: the instance API of kernel's hypeman (the seed
//! `001`), on vmplane's VMs. `/instances` list and create, one instance's
//! get and delete, `start`, `stop`, `standby`, `restore`, its console `logs`
//! as Server-Sent Events, and volume attach/detach. Each handler parses
//! hypeman's shapes into use case input, calls `crate::app`, and renders
//! hypeman's `Instance` and `Error`; see `docs/dialects/hypeman.md` for what
//! differs from hypeman itself.

pub mod error;
pub mod extract;
pub mod instances;
pub mod logs;
pub mod model;
pub mod size;
pub mod volumes;

use crate::AppState;
use axum::Router;
use axum::routing::get;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Where the OpenAPI document of this dialect is served.
pub const OPENAPI_PATH: &str = "/openapi/hypeman.json";

/// The OpenAPI document's root; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "vmplane: hypeman API", version = "0.2.0",
        description = "hypeman's instance API (VM lifecycle with OCI image references) served by vmplane. See docs/dialects/hypeman.md for the differences."),
    modifiers(&BearerAuth),
    security(("bearerAuth" = [])),
    components(schemas(error::ErrorBody, model::InstanceState, model::VolumeMountBody))
)]
pub struct HypemanDoc;

struct BearerAuth;

/// hypeman's document names the scheme `bearerAuth`.
impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        super::shared::add_bearer_scheme(doc, "bearerAuth");
    }
}

/// The documented routes and their OpenAPI document, built from one list.
pub fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(HypemanDoc::openapi()).merge(instances::router()).merge(logs::router()).merge(volumes::router())
}

/// The dialect's routes, and its OpenAPI document at [`OPENAPI_PATH`] (no auth).
pub fn router() -> Router<AppState> {
    let (routes, doc) = documented().split_for_parts();
    let doc = Arc::new(doc);
    routes.route(OPENAPI_PATH, get(move || async move { axum::Json(doc.as_ref().clone()) }))
}
