//! `GET /v1/hosts`: the hosts, their capacity, use and liveness (what the
//! caller may see of them: see `app::hosts`).

use super::error::{ApiResult, ErrorBody};
use crate::AppState;
use crate::app::Principal;
use crate::app::hosts::{self, HostUsage};
use axum::extract::State;
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::HostId;
use vmplane_domain::host::{HostInfo, PortRange, Resources};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_hosts))
}

/// A host as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    pub id: HostId,
    #[serde(flatten)]
    pub info: HostInfo,
    /// `online` while heartbeats arrive, else `offline`.
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat: Option<OffsetDateTime>,
    /// What the host's VMs and volumes take: all of them for the admin, the
    /// caller's org's for an API key.
    pub used: Resources,
    /// What is left for new VMs (every caller sees it): vCPUs not given to
    /// VMs (vmplane may still share vCPUs), memory and disk not taken.
    pub available: Resources,
    /// GPUs not given to VMs, by model.
    pub free_gpus: BTreeMap<String, u32>,
    /// Host ports of `port_range` no VM forwards from, as ranges.
    pub free_ports: Vec<PortRange>,
    /// Percentage of the last 30 days (since registration) the host was up,
    /// as far as this gateway watched; null before a second has passed.
    pub uptime_percentage: Option<f64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub registered_at: OffsetDateTime,
}

impl From<HostUsage> for HostView {
    fn from(h: HostUsage) -> Self {
        Self {
            id: h.host.id,
            status: if h.online { "online" } else { "offline" },
            last_heartbeat: h.last_heartbeat,
            used: h.used,
            available: h.available,
            free_gpus: h.free_gpus,
            free_ports: h.free_ports,
            uptime_percentage: h.uptime_percent.map(|p| (p * 100.0).round() / 100.0),
            registered_at: h.host.registered_at,
            info: h.host.info,
        }
    }
}

/// Every registered host.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = Vec<HostView>), (status = "4XX", body = ErrorBody)))]
async fn list_hosts(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<HostView>>> {
    Ok(axum::Json(hosts::list(&state.app, &who)?.into_iter().map(HostView::from).collect()))
}
