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

/// The documented routes and their OpenAPI document, built from one list.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(HatchDoc::openapi()).merge(vms::router())
}

/// Hatch's OpenAPI document, as served at `/openapi/hatch.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().split_for_parts().1
}

/// Hatch's routes, with its OpenAPI document at `/openapi/hatch.json` (no auth).
pub fn router() -> Router<AppState> {
    let (routes, doc) = documented().split_for_parts();
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
}
