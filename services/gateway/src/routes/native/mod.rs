//! The native dialect: the `/v1` API. Each module parses its requests
//! (extractors, request shapes) into use case input, calls `app`, and renders
//! the result (views, status codes); errors take the `/v1` shape once, in
//! `error`.

pub mod auth;
pub mod catalog;
pub mod error;
pub mod events;
pub mod extract;
pub mod hosts;
pub mod idempotency;
pub mod images;
pub mod logs;
pub mod operations;
pub mod pagination;
pub mod snapshots;
pub mod ssh_keys;
pub mod templates;
pub mod tenancy;
pub mod terminal;
pub mod vms;
pub mod volumes;
pub mod webhooks;

use super::shared::BearerAuth;
use crate::AppState;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// The OpenAPI document's root; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "vmplane", description = "Virtual machines on KVM through an event-sourced control plane. Every mutation returns 202 with an operation; reads come from projections of the event stream."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    // Schemas only parameters name, which utoipa does not collect itself.
    components(schemas(error::ErrorBody, vmplane_domain::event_filter::TypeFilterText))
)]
pub struct ApiDoc;

/// The `/v1` routes and the OpenAPI document that describes them.
pub fn split() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, doc) = router().split_for_parts();
    let mut doc = super::shared::name_tagged_variants(super::shared::merge_flattened(doc));
    super::shared::add_keywords(&mut doc, "VolumeMount", vmplane_domain::spec::volume_mount_conditions());
    super::shared::add_keywords(&mut doc, "AttachRequest", vmplane_domain::spec::volume_mount_conditions());
    super::shared::add_keywords(&mut doc, "DataDisk", vmplane_domain::spec::data_disk_conditions());
    super::shared::add_keywords(&mut doc, "NetworkSpec", vmplane_domain::spec::network_conditions());
    super::shared::add_keywords(&mut doc, "UpdateWebhookRequest", webhooks::UpdateWebhookRequest::non_empty());
    super::shared::link_created_ids(&mut doc);
    (api, doc)
}

/// The `/v1` OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

/// The documented `/v1` routes, and their OpenAPI document, built from one
/// list so the two cannot drift apart.
fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(vms::router())
        .merge(volumes::router())
        .merge(snapshots::router())
        .merge(logs::router())
        .merge(terminal::router())
        .merge(operations::router())
        .merge(events::router())
        .merge(hosts::router())
        .merge(images::router())
        .merge(catalog::router())
        .merge(tenancy::router())
        .merge(ssh_keys::router())
        .merge(webhooks::router())
        .merge(templates::router())
}
