//! The NeevCloud dialect: the "VM Service API" (seed 002) under
//! `/api/v1/orgs/{org_id}/projects/{project_id}/vms` and `/root_disks`, with
//! its own request, response and error shapes, on the same use cases as
//! `/v1`. Ids are UUIDs (`ids`); the org and project of the path are
//! vmplane's (`auth`); every constraint of `CreateVMRequest` is checked in
//! `requests` (400 `ErrorResponse`, `error`); `views` renders. Its OpenAPI
//! document is served at `/openapi/neevcloud.json`. See docs/dialects/neevcloud.md.

mod auth;
mod error;
mod ids;
mod pagination;
mod requests;
mod root_disks;
mod views;
mod vms;

pub use error::ErrorResponse;

use crate::AppState;
use axum::routing::get;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Where the dialect's OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi/neevcloud.json";

/// The OpenAPI document's root; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "VM Service API", version = "0.1.0",
        description = "NeevCloud's VM Service API, served by vmplane. Ids are UUIDs; org_id and project_id are vmplane's org and project. See docs/dialects/neevcloud.md for every difference from the original."),
    modifiers(&BearerAuth),
    security(("BearerAuth" = [])),
    components(schemas(error::ErrorResponse, requests::DataDiskType, requests::ExposedPort, views::DiskResponse, views::Pagination))
)]
struct NeevDoc;

struct BearerAuth;

/// The original document names the scheme `BearerAuth`.
impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        super::shared::add_bearer_scheme(doc, "BearerAuth");
    }
}

/// The documented routes and their OpenAPI document, from one list.
pub fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(NeevDoc::openapi()).merge(vms::router()).merge(root_disks::router())
}

/// The routes and the OpenAPI document as served, with the rules utoipa's
/// derive cannot write.
fn split() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = documented().split_for_parts();
    super::shared::add_keywords(&mut doc, "CreateVMRequest", requests::root_disk_rule());
    super::shared::add_keywords(&mut doc, "ExposedPort", requests::exposed_port_rule());
    (routes, doc)
}

/// The dialect's OpenAPI document, as served at [`OPENAPI_PATH`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

/// The dialect's routes, with its OpenAPI document at [`OPENAPI_PATH`].
pub fn router() -> axum::Router<AppState> {
    let (routes, doc) = split();
    let doc = Arc::new(doc);
    routes.route(OPENAPI_PATH, get(move || async move { axum::Json(doc.as_ref().clone()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operations of the seed document: method, path, operationId.
    pub const SEED_OPERATIONS: [(&str, &str, &str); 10] = [
        ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/vms", "listVMs"),
        ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms", "createVM"),
        ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}", "getVM"),
        ("delete", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}", "deleteVM"),
        ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks", "listRootDiskVolumes"),
        ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks/{root_disk_id}", "getRootDiskVolume"),
        ("delete", "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks/{root_disk_id}", "deleteRootDiskVolume"),
        ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/start", "startVM"),
        ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/stop", "stopVM"),
        ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/restart", "restartVM"),
    ];

    #[test]
    fn the_document_has_exactly_the_seeds_operations_and_schemas() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let mut documented: Vec<(String, String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                documented.push((method.clone(), path.clone(), op["operationId"].as_str().unwrap_or_default().to_owned()));
            }
        }
        documented.sort();
        let mut seed: Vec<(String, String, String)> = SEED_OPERATIONS.iter().map(|(m, p, o)| (m.to_string(), p.to_string(), o.to_string())).collect();
        seed.sort();
        assert_eq!(documented, seed);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "VMListResponse",
            "VMResponse",
            "VMStatus",
            "DiskResponse",
            "DataDiskType",
            "ExposedPort",
            "PaginationResponse",
            "ErrorResponse",
            "CreateVMRequest",
            "AttachDiskRequest",
            "CreateRootDiskRequest",
            "CreateDataDiskRequest",
            "RootDiskVolumeListResponse",
            "RootDiskVolumeResponse",
        ] {
            assert!(schemas.contains_key(name), "{name} missing: {:?}", schemas.keys().collect::<Vec<_>>());
        }
        assert_eq!(schemas["VMResponse"]["properties"]["id"]["format"], "uuid");
        assert_eq!(doc["components"]["securitySchemes"]["BearerAuth"]["scheme"], "bearer");
    }

    /// The served document is the rule a create's body is checked by: what
    /// it forbids is refused before anything else looks at the body, and a
    /// whole float is the integer it is to JSON Schema.
    #[test]
    fn the_document_is_the_rule_for_a_create() {
        use serde_json::json;
        let contract = crate::routes::contract::Contract::new(&openapi());
        let disk = json!({"name": "web", "size_gb": 20.0, "image_id": "debian-12"});
        let ok = json!({"name": "web", "region_id": "us-east", "vm_config_id": "small", "plan_id": "small",
            "root_disk": {"create_disk_request": disk}, "gpu_config_count": 0.0});
        let req = contract.decode::<requests::CreateVmRequest>(ok.clone()).expect("a valid create");
        assert_eq!(req.gpu_config_count, Some(0));
        let port = |p: u16| json!({"port": p, "protocol": "tcp"});
        for (field, value) in [
            ("root_disk", json!({})),
            ("root_disk", json!({"create_disk_request": disk, "attach_disk_request": {"disk_id": "00000000-0000-0000-0000-000000000001"}})),
            ("exposed_ports", json!([port(22)])),
            ("exposed_ports", json!([port(80), port(80)])),
            ("gpu_config_count", json!(17)),
            ("region_id", json!("")),
            ("ssh_keys", json!(["ssh-ed25519 AAAA"])),
        ] {
            let mut body = ok.clone();
            body[field] = value.clone();
            assert!(contract.decode::<requests::CreateVmRequest>(body).is_err(), "{field}: {value}");
        }
    }
}
