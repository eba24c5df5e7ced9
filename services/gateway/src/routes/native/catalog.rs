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

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_plans)).routes(routes!(list_regions))
}

/// A plan: the sizes a create that names it gets (sizes the request gives win).
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    /// What a create's `plan` names.
    pub name: String,
    #[serde(flatten)]
    pub plan: Plan,
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
    axum::Json(catalog::get(&state.app).plans().iter().map(|(name, plan)| PlanView { name: name.clone(), plan: plan.clone() }).collect())
}

/// Every region, by code.
#[utoipa::path(get, path = "/v1/regions", tag = "catalog", responses((status = 200, body = Vec<RegionView>), (status = "4XX", body = ErrorBody)))]
async fn list_regions(State(state): State<AppState>, _who: Principal) -> axum::Json<Vec<RegionView>> {
    axum::Json(catalog::get(&state.app).regions().iter().map(|(code, r)| RegionView { code: code.clone(), name: r.name.clone() }).collect())
}
