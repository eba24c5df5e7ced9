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

/// The documented routes and their OpenAPI document, built from one list;
/// the rules JSON Schema states between fields, and the refusals every
/// operation can answer, are added to the document.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) =
        OpenApiRouter::with_openapi(HypemanDoc::openapi()).merge(instances::router()).merge(logs::router()).merge(volumes::router()).split_for_parts();
    super::shared::add_keywords(&mut doc, "VolumeMountRequest", model::mount_conditions());
    super::shared::add_keywords(&mut doc, "AttachVolumeRequest", model::mount_conditions());
    document_refusals(&mut doc);
    (routes, doc)
}

/// Every operation can be refused before its handler runs, or by what it
/// shares with the others: a bad `X-Vmplane-Org`/`X-Vmplane-Project` header
/// (400), no or a wrong token (401), a key without the permission (403), an
/// org or project not found (404), the rate limit (429), NATS or a host out
/// of reach (503); a mutation by the state (409), a body by its size (413).
/// Each is documented on every operation that lacks it, as an `Error`.
fn document_refusals(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |why: &str| {
        ResponseBuilder::new().description(why).content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build()).build()
    };
    for item in doc.paths.paths.values_mut() {
        for (mutates, op) in [(false, &mut item.get), (true, &mut item.post), (true, &mut item.delete)] {
            let Some(op) = op.as_mut() else { continue };
            let mut statuses = vec![
                ("400", "Malformed request"),
                ("401", "Missing or invalid bearer token"),
                ("403", "The key may not do this"),
                ("404", "Not found"),
                ("429", "Too many requests"),
                ("503", "Unavailable now"),
            ];
            if mutates {
                statuses.push(("409", "The current state refuses it"));
            }
            if op.request_body.is_some() {
                statuses.push(("413", "Request body larger than 1 MiB"));
            }
            for (status, why) in statuses {
                op.responses.responses.entry(status.to_owned()).or_insert_with(|| error(why).into());
            }
        }
    }
}

/// hypeman's OpenAPI document, as served at [`OPENAPI_PATH`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().1
}

/// The dialect's routes, and its OpenAPI document at [`OPENAPI_PATH`] (no auth).
pub fn router() -> Router<AppState> {
    let (routes, doc) = documented();
    let doc = Arc::new(doc);
    routes.route(OPENAPI_PATH, get(move || async move { axum::Json(doc.as_ref().clone()) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::contract::{Contract, Refusal};
    use serde_json::json;

    #[test]
    fn the_document_is_the_rule_for_a_create_and_an_attach() {
        use model::{AttachVolumeRequest, CreateInstanceRequest};
        let contract = Contract::new(&openapi());
        let req = contract.decode::<CreateInstanceRequest>(json!({"name": "a", "image": "debian-minimal", "vcpus": 2.0, "size": "1 GB"})).unwrap();
        assert_eq!((req.vcpus, req.size.as_deref()), (Some(2), Some("1 GB")));
        let create = |extra: serde_json::Value| {
            let mut body = json!({"name": "a", "image": "debian-minimal"});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            body
        };
        for forbidden in [
            create(json!({"vcpus": 0})),
            create(json!({"vcpus": 257})),
            create(json!({"size": "1Gb"})),
            create(json!({"hotplug_size": "1.5GB"})),
            create(json!({"env": {"1BAD": "x"}})),
            create(json!({"image": "no spaces"})),
            json!({"name": "Bad", "image": "debian-minimal"}),
            create(json!({"volumes": [{"volume_id": "v", "mount_path": "relative"}]})),
            create(json!({"volumes": [{"volume_id": "v", "mount_path": "/d", "overlay": true, "overlay_size": "1GB"}]})),
            create(json!({"volumes": [{"volume_id": "v", "mount_path": "/d", "readonly": true, "overlay": true}]})),
        ] {
            assert!(matches!(contract.decode::<CreateInstanceRequest>(forbidden.clone()), Err(Refusal::Rule { .. })), "{forbidden}");
        }
        assert!(matches!(contract.decode::<CreateInstanceRequest>(create(json!({"size": 1024}))), Err(Refusal::Shape(_))));
        assert!(contract.decode::<AttachVolumeRequest>(json!({"mount_path": "/d", "readonly": true, "overlay": true, "overlay_size": "1G"})).is_ok());
        for forbidden in
            [json!({"mount_path": "/"}), json!({"mount_path": "/d", "overlay": true, "overlay_size": "1GB"}), json!({"mount_path": "/d", "overlay_size": "x"})]
        {
            assert!(matches!(contract.decode::<AttachVolumeRequest>(forbidden.clone()), Err(Refusal::Rule { .. })), "{forbidden}");
        }

        let doc = serde_json::to_value(openapi()).unwrap();
        let vcpus = &doc["components"]["schemas"]["CreateInstanceRequest"]["properties"]["vcpus"];
        assert_eq!(vcpus["maximum"].as_u64(), Some(u64::from(vmplane_domain::spec::MAX_VCPUS)));
        assert_eq!(vcpus["minimum"].as_u64(), Some(1));
        let tail = doc["paths"]["/instances/{id}/logs"]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "tail").cloned().unwrap();
        assert_eq!(tail["schema"]["maximum"].as_u64(), Some(crate::app::logs::MAX_TAIL as u64));
        // Every operation documents the refusals every request can meet.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for status in ["400", "401", "404", "429", "503"] {
                    assert!(op["responses"].get(status).is_some(), "{method} {path}: {status}");
                }
            }
        }
    }
}
