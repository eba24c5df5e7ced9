//! The Hatch dialect (seed 003): `/vms`, a Firecracker manager's API, served
//! by vmplane's QEMU VMs. It parses Hatch's requests into use case input,
//! calls `app`, and renders Hatch's VM objects and `{"error": ...}` bodies;
//! its OpenAPI document is at `/openapi/hatch.json`. See `docs/dialects/hatch.md`.

mod error;
mod extract;
mod vms;

use super::shared::BearerAuth;
use crate::AppState;
use axum::Router;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Hatch's defaults, read once when the gateway starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HatchConfig {
    /// vCPUs of a VM created without `vcpu_count` (`HATCH_DEFAULT_VCPU`).
    pub default_vcpus: u32,
    /// Memory of a VM created without `mem_mib` (`HATCH_DEFAULT_MEM_MIB`).
    pub default_memory_mib: u64,
}

impl Default for HatchConfig {
    /// Hatch's documented defaults: 1 vCPU, 512 MiB.
    fn default() -> Self {
        Self { default_vcpus: 1, default_memory_mib: 512 }
    }
}

/// The OpenAPI document's root; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmplane: the Hatch dialect",
        description = "Hatch's VM API on vmplane. Create, start, stop and delete answer once the VM got there. Errors are {\"error\": \"...\"}. See docs/dialects/hatch.md for every difference from Hatch."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::ErrorBody))
)]
struct HatchDoc;

/// The documented routes and their OpenAPI document, built from one list;
/// the rules JSON Schema states between fields are added to the document.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(HatchDoc::openapi()).merge(vms::router()).split_for_parts();
    super::shared::add_keywords(&mut doc, "CreateVmRequest", vms::create_conditions());
    // No body at all is a create with every default (`Body` reads it as `{}`).
    let create = doc.paths.paths.get_mut("/vms").and_then(|p| p.post.as_mut()).and_then(|op| op.request_body.as_mut());
    create.expect("POST /vms takes a body").required = Some(utoipa::openapi::Required::False);
    (routes, doc)
}

/// Hatch's OpenAPI document, as served at `/openapi/hatch.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().1
}

/// Hatch's routes, with its OpenAPI document at `/openapi/hatch.json` (no auth).
pub fn router() -> Router<AppState> {
    let (routes, doc) = documented();
    routes.route("/openapi/hatch.json", get(move || async move { axum::Json(doc) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_the_seeds_operations() {
        let doc = openapi();
        let has = |path: &str, method: fn(&utoipa::openapi::PathItem) -> bool| doc.paths.paths.get(path).is_some_and(method);
        assert!(has("/vms", |p| p.get.is_some() && p.post.is_some()));
        assert!(has("/vms/{id}", |p| p.get.is_some() && p.delete.is_some()));
        assert!(has("/vms/{id}/stop", |p| p.post.is_some()));
        assert!(has("/vms/{id}/start", |p| p.post.is_some()));
    }

    #[test]
    fn the_document_is_the_rule_for_a_create() {
        use super::vms::CreateVmRequest;
        use crate::routes::contract::{Contract, Refusal};
        use serde_json::json;
        let contract = Contract::new(&openapi());
        let req = contract.decode::<CreateVmRequest>(json!({"mem_mib": 1024.0, "vcpu_count": 2.0})).unwrap();
        assert_eq!((req.mem_mib, req.vcpu_count), (Some(1024), Some(2)));
        for forbidden in [
            json!({"mem_mib": 32}),
            json!({"vcpu_count": 257}),
            json!({"guest_mac": "03:fc:00:00:00:0a"}),
            json!({"boot_args": "a\nb"}),
            json!({"enable_network": false, "guest_mac": "02:fc:00:00:00:0a"}),
        ] {
            assert!(matches!(contract.decode::<CreateVmRequest>(forbidden.clone()), Err(Refusal::Rule { .. })), "{forbidden}");
        }
        assert!(matches!(contract.decode::<CreateVmRequest>(json!({"mem_mib": "1024"})), Err(Refusal::Shape(_))));
        let doc = serde_json::to_value(openapi()).unwrap();
        assert_ne!(doc["paths"]["/vms"]["post"]["requestBody"]["required"], json!(true));
        let bound = |field: &str, k: &str| doc["components"]["schemas"]["CreateVmRequest"]["properties"][field][k].as_u64();
        assert_eq!(bound("vcpu_count", "maximum"), Some(u64::from(vmplane_domain::spec::MAX_VCPUS)));
        assert_eq!(bound("mem_mib", "maximum"), Some(vmplane_domain::spec::MAX_MEMORY_MIB));
    }
}
