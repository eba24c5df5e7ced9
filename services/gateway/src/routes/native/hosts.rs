//! `GET /v1/hosts`: the hosts, their capacity, use and liveness (what the
//! caller may see of them: see `app::hosts`).

use super::error::{ApiResult, ErrorBody};
use super::extract::PathId;
use crate::AppState;
use crate::app::hosts::{self, HostUsage};
use crate::app::{Allocation, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::HostId;
use vmplane_domain::host::{CordonCommand, HostInfo, HostStatus, PortRange, Resources};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_hosts)).routes(routes!(cordon_host)).routes(routes!(uncordon_host))
}

/// A host as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    pub id: HostId,
    #[serde(flatten)]
    pub info: HostInfo,
    /// `online` while heartbeats arrive, `cordoned` when it also takes
    /// nothing new (admin), else `offline`.
    pub status: HostStatus,
    /// Cordoned by an admin: no new VMs or volumes are placed here.
    pub cordoned: bool,
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
            status: HostStatus::of(h.online, h.host.cordoned),
            cordoned: h.host.cordoned,
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

/// Cordon a host: nothing new is placed there; what runs there stays (admin).
#[utoipa::path(post, path = "/v1/hosts/{id}/cordon", tag = "hosts", params(("id" = vmplane_domain::HostId, Path, description = "host id")),
    responses((status = 202, body = Operation), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn cordon_host(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<HostId>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(hosts::cordon(&state.app, &who, alloc, id, CordonCommand::Cordon).await?)))
}

/// Uncordon a host: it takes new VMs and volumes again (admin).
#[utoipa::path(post, path = "/v1/hosts/{id}/uncordon", tag = "hosts", params(("id" = vmplane_domain::HostId, Path, description = "host id")),
    responses((status = 202, body = Operation), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn uncordon_host(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<HostId>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(hosts::cordon(&state.app, &who, alloc, id, CordonCommand::Uncordon).await?)))
}
