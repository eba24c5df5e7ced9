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

/// The documented routes and their OpenAPI document, from one list; the
/// rules JSON Schema states between fields, and the media types this
/// dialect speaks, are added to the document.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(MarketplaceDoc::openapi())
        .routes(path(routes!(hostnodes::list_hostnodes)))
        .routes(path(routes!(hostnodes::get_hostnode)))
        .routes(path(routes!(instances::create_instance, instances::list_instances)))
        .routes(path(routes!(instances::get_instance, instances::delete_instance)))
        .split_for_parts();
    super::shared::add_keywords(&mut doc, "CreateInstanceData", instances::data_rule());
    super::shared::add_keywords(&mut doc, "InstanceAttributes", instances::attributes_rule());
    super::shared::add_keywords(&mut doc, "ResourcesRequest", instances::resources_rule());
    json_api_media_types(&mut doc);
    (routes, doc)
}

/// Every answer is `application/vnd.api+json` (errors too); a request body
/// may be sent as that or as `application/json`.
fn json_api_media_types(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(response) = response
                    && let Some(content) = response.content.shift_remove("application/json")
                {
                    response.content.insert(error::JSON_API.to_owned(), content);
                }
            }
            if let Some(body) = op.request_body.as_mut()
                && let Some(content) = body.content.remove("application/json")
            {
                body.content.insert(error::JSON_API.to_owned(), content.clone());
                body.content.insert("application/json".to_owned(), content);
            }
        }
    }
}

/// The OpenAPI document of this dialect, as served at `/openapi/marketplace.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().1
}

/// Every route of the dialect: the documented ones, its OpenAPI document, and
/// JSON:API 404s for anything else under `/api/v2`.
pub fn router() -> Router<AppState> {
    let (routes, doc) = documented();
    let doc = Arc::new(doc);
    routes
        .route("/openapi/marketplace.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
        .route("/api/v2", any(error::no_route))
        .route("/api/v2/{*rest}", any(error::no_route))
}

#[cfg(test)]
mod tests {
    use super::instances::{COMMAND_PATTERN, CreateInstanceDocument, PACKAGE_PATTERN};
    use super::*;
    use crate::routes::contract::{Contract, Refusal};
    use serde_json::{Value, json};

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";

    fn create(attributes: Value) -> Value {
        let mut a = json!({"name": "web", "image": "debian-minimal", "ssh_key": KEY});
        a.as_object_mut().unwrap().extend(attributes.as_object().unwrap().clone());
        a.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        json!({"data": {"type": "virtualmachine", "attributes": a}})
    }

    #[test]
    fn the_document_is_the_rule_for_a_create() {
        let contract = Contract::new(&openapi());
        let ok = contract.decode::<CreateInstanceDocument>(create(json!({"resources": {"vcpu_count": 2.0, "ram_gb": 4}}))).unwrap();
        assert_eq!(ok.data.attributes.resources.and_then(|r| r.vcpu_count), Some(2));
        assert!(contract.decode::<CreateInstanceDocument>(create(json!({"ssh_key": null, "ssh_key_id": "sshkey_x"}))).is_ok());
        for forbidden in [
            create(json!({"ssh_key_id": "sshkey_x"})),
            create(json!({"ssh_key": null})),
            create(json!({"name": "My Instance"})),
            create(json!({"type": "container"})),
            create(json!({"resources": {"vcpu_count": 0}})),
            create(json!({"resources": {"vcpu_count": 257}})),
            create(json!({"resources": {"ram_gb": 0}})),
            create(json!({"resources": {"storage_gb": 65537}})),
            create(json!({"resources": {"gpus": {"a": {"count": 17}}}})),
            create(json!({"resources": {"gpus": {"a": {"count": 1}, "b": {"count": 1}}}})),
            create(json!({"port_forwards": [{"internal_port": 0}]})),
            create(json!({"cloud_init": {"runcmd": ["echo \u{7}"]}})),
            create(json!({"cloud_init": {"runcmd": [" \t\n"]}})),
            create(json!({"cloud_init": {"packages": ["curl git"]}})),
            json!({"data": {"type": "container", "attributes": {"name": "web", "image": "debian-minimal", "ssh_key": KEY}}}),
        ] {
            assert!(matches!(contract.decode::<CreateInstanceDocument>(forbidden.clone()), Err(Refusal::Rule { .. })), "{forbidden}");
        }
        let doc = serde_json::to_value(openapi()).unwrap();
        let bound = |schema: &str, field: &str| doc["components"]["schemas"][schema]["properties"][field]["maximum"].as_u64();
        assert_eq!(bound("ResourcesRequest", "vcpu_count"), Some(u64::from(vmplane_domain::spec::MAX_VCPUS)));
        assert_eq!(bound("ResourcesRequest", "ram_gb"), Some(vmplane_domain::spec::MAX_MEMORY_MIB / 1024));
        assert_eq!(bound("ResourcesRequest", "storage_gb"), Some(u64::from(vmplane_domain::spec::MAX_DISK_GB)));
        // Every answer is documented as JSON:API, as it is sent.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let types: Vec<&String> = response["content"].as_object().map(|c| c.keys().collect()).unwrap_or_default();
                    assert_eq!(types, [error::JSON_API], "{method} {path} {status}");
                }
            }
        }
    }

    /// The patterns say what `CloudConfig::validate` checks.
    #[test]
    fn the_cloud_init_patterns_are_the_domains_rules() {
        use vmplane_domain::cloud_init::CloudConfig;
        let matches = |pattern: &str, s: &str| jsonschema::validator_for(&json!({"pattern": pattern})).unwrap().is_valid(&json!(s));
        for cmd in
            ["echo hi", "a", " x ", "tab\there", "line\nline", "\u{2028}", "\u{feff}x", "x\u{7}", " ", "\t\n", "", "\r", "é", "\u{a0}", "\u{3000}y", "\u{85}"]
        {
            let domain = CloudConfig { runcmd: vec![cmd.into()], ..Default::default() }.validate().is_ok();
            assert_eq!(matches(COMMAND_PATTERN, cmd), domain, "{cmd:?}");
        }
        for package in ["curl", "g++", "libc6", "nginx=1.2-3ubuntu~1", "a", "Curl", "curl git", "-x", "x=", "x=1 2", "1password"] {
            let domain = CloudConfig { packages: vec![package.into()], ..Default::default() }.validate().is_ok();
            assert_eq!(matches(PACKAGE_PATTERN, package), domain, "{package:?}");
        }
    }
}
