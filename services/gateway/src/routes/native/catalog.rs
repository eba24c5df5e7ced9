//! `/v1/plans` and `/v1/regions`: the catalog's names a create may use
//! (`plan`, `region`; `docs/catalog.md`), so clients offer them instead of
//! guessing.

use super::error::ErrorBody;
use crate::AppState;
use crate::app::{Principal, catalog};
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::catalog::Plan;
use vmplane_domain::spec::GpuSpec;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_plans)).routes(routes!(list_regions))
}

/// A plan: the sizes a create that names it gets (sizes the request gives win).
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    /// What a create's `plan` names.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Root disk size.
    pub disk_gb: u32,
    /// The disk's kind as dialects report it (Visor's `diskType`).
    pub disk_type: String,
    /// The VM's vCPUs are meant to be its own.
    pub dedicated: bool,
    /// GPUs passed through to VMs of this plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
}

impl PlanView {
    fn new(name: &str, p: &Plan) -> Self {
        Self {
            name: name.to_owned(),
            vcpus: p.vcpus,
            memory_mib: p.memory_mib,
            disk_gb: p.disk_gb,
            disk_type: p.disk_type.clone(),
            dedicated: p.dedicated,
            gpu: p.gpu.clone(),
        }
    }
}

/// A region: hosts announce its code (`--region`), and a create's `region` names it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegionView {
    pub code: String,
    /// Human-readable name.
    pub name: String,
}

/// Every plan, by name.
#[utoipa::path(get, path = "/v1/plans", tag = "catalog", responses((status = 200, body = Vec<PlanView>), (status = "4XX", body = ErrorBody)))]
async fn list_plans(State(state): State<AppState>, _who: Principal) -> axum::Json<Vec<PlanView>> {
    axum::Json(catalog::get(&state.app).plans().iter().map(|(name, plan)| PlanView::new(name, plan)).collect())
}

/// Every region, by code.
#[utoipa::path(get, path = "/v1/regions", tag = "catalog", responses((status = 200, body = Vec<RegionView>), (status = "4XX", body = ErrorBody)))]
async fn list_regions(State(state): State<AppState>, _who: Principal) -> axum::Json<Vec<RegionView>> {
    axum::Json(catalog::get(&state.app).regions().iter().map(|(code, r)| RegionView { code: code.clone(), name: r.name.clone() }).collect())
}
