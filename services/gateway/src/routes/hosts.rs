//! `GET /v1/hosts`: the hosts, their capacity, use and liveness.
//!
//! The admin sees what every org uses and what is left. An API key sees its
//! own org's use only, and not what is left, from which the others' use
//! would follow.

use crate::AppState;
use crate::auth::{Actor, Principal};
use crate::error::{ApiResult, ErrorBody};
use axum::extract::State;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::HostId;
use vmplane_domain::host::{HostInfo, Resources};

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
    /// What is left for new VMs (admin only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<Resources>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub registered_at: OffsetDateTime,
}

/// Every registered host.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = Vec<HostView>), (status = "4XX", body = ErrorBody)))]
async fn list_hosts(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<HostView>>> {
    let mut out = Vec::new();
    for host in state.proj.hosts()? {
        let (used, available) = match who.actor {
            Actor::Admin => {
                let used = state.proj.host_usage(host.id)?;
                let available = Resources {
                    vcpus: u64::from(host.info.cpus),
                    memory_mib: host.info.memory_mib.saturating_sub(used.memory_mib),
                    disk_gb: host.info.disk_gb.saturating_sub(used.disk_gb),
                };
                (used, Some(available))
            }
            Actor::Key(_) => (state.proj.org_usage_on_host(who.org, host.id)?, None),
        };
        out.push(HostView {
            id: host.id,
            status: if state.proj.heartbeats.is_online(host.id) { "online" } else { "offline" },
            last_heartbeat: state.proj.heartbeats.last(host.id),
            used,
            available,
            registered_at: host.registered_at,
            info: host.info,
        });
    }
    Ok(axum::Json(out))
}
