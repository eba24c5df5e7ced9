//! `GET /api/v2/hostnodes` and `GET /api/v2/hostnodes/{id}`: the hosts and
//! what they offer (`app::hosts`), in the marketplace's shape. The list shows
//! online hosts; one host is shown whatever its state. Only the single view
//! lists `available_ports`, as in the original.

use super::JsonApi;
use super::auth::Caller;
use super::error::{ErrorDocument, MarketError, MarketResult, PathParam};
use crate::AppState;
use crate::app::hosts::{self, HostUsage};
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use vmplane_domain::HostId;
use vmplane_domain::catalog::Location;
use vmplane_domain::host::HostInfo;

/// `{"data":{"hostnodes":[…]}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct HostnodeList {
    pub data: Hostnodes,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Hostnodes {
    pub hostnodes: Vec<Hostnode>,
}

/// `{"data":{…}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct HostnodeDocument {
    pub data: Hostnode,
}

/// A host node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Hostnode {
    /// The vmplane host id (`host_…`).
    #[schema(value_type = String)]
    pub id: HostId,
    /// The catalog location the host stands in (worker `--location`), or null.
    pub location_id: Option<String>,
    /// Worker `--engine`, default the driver (`qemu`, `sim`).
    pub engine: String,
    /// Percentage of the last 30 days (since the host registered) its heartbeats arrived.
    pub uptime_percentage: f64,
    pub available_resources: AvailableResources,
    pub pricing: HostPricing,
    /// Null when the host names no location.
    pub location: Option<HostLocation>,
}

/// What the host has left for new instances.
#[derive(Debug, Serialize, ToSchema)]
pub struct AvailableResources {
    /// Every GPU model of the host, with how many are free.
    pub gpus: Vec<GpuOffer>,
    /// vCPUs not given to instances.
    pub vcpu_count: u64,
    /// Whole GB of memory free.
    pub ram_gb: u64,
    pub storage_gb: u64,
    /// Host ports of the host's port range no instance forwards from (single host view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_ports: Option<Vec<u16>>,
}

/// One GPU model of a host.
#[derive(Debug, Serialize, ToSchema)]
pub struct GpuOffer {
    #[serde(rename = "v0Name")]
    pub v0_name: String,
    #[serde(rename = "availableCount")]
    pub available_count: u32,
    /// Worker `--price-gpu-hr MODEL=PRICE`; 0 when not set.
    pub price_per_hr: f64,
}

/// Worker `--price-*` flags, per hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostPricing {
    pub per_vcpu_hr: f64,
    pub per_gb_ram_hr: f64,
    pub per_gb_storage_hr: f64,
}

/// The catalog entry of the host's location.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostLocation {
    /// The location's id in the catalog.
    pub uuid: String,
    pub city: String,
    pub stateprovince: Option<String>,
    pub country: String,
    pub has_network_storage: bool,
    pub network_speed_gbps: Option<u32>,
    pub network_speed_upload_gbps: Option<u32>,
    /// The host's label `organization` (worker `--label organization=…`), or null.
    pub organization: Option<String>,
    /// The host's label `organization_name`, or null.
    #[serde(rename = "organizationName")]
    pub organization_name: Option<String>,
    pub tier: Option<u8>,
}

fn price(d: &rust_decimal::Decimal) -> f64 {
    d.to_string().parse().unwrap_or(0.0)
}

fn location(id: &str, l: &Location, info: &HostInfo) -> HostLocation {
    HostLocation {
        uuid: id.to_owned(),
        city: l.city.clone(),
        stateprovince: l.state_province.clone(),
        country: l.country.clone(),
        has_network_storage: l.has_network_storage,
        network_speed_gbps: l.network_speed_gbps,
        network_speed_upload_gbps: l.network_speed_upload_gbps,
        organization: info.labels.get("organization").cloned(),
        organization_name: info.labels.get("organization_name").cloned(),
        tier: l.tier,
    }
}

impl Hostnode {
    /// The view of `h`; with `ports`, its free host ports listed one by one.
    pub fn new(h: HostUsage, ports: bool) -> Self {
        let info = &h.host.info;
        let gpus = info
            .gpus
            .keys()
            .map(|model| GpuOffer {
                v0_name: model.clone(),
                available_count: h.free_gpus.get(model).copied().unwrap_or(0),
                price_per_hr: info.pricing.per_gpu_hr.get(model).map_or(0.0, price),
            })
            .collect();
        let available_ports = ports.then(|| h.free_ports.iter().flat_map(|r| r.first..=r.last).collect());
        // No window yet (the host's or this gateway's first second): up if it beats.
        let uptime = h.uptime_percent.unwrap_or(if h.online { 100.0 } else { 0.0 });
        Self {
            id: h.host.id,
            location_id: info.location_id.clone(),
            engine: info.engine.clone().unwrap_or_else(|| info.driver.clone()),
            uptime_percentage: (uptime * 100.0).round() / 100.0,
            available_resources: AvailableResources {
                gpus,
                vcpu_count: h.available.vcpus,
                ram_gb: h.available.memory_mib / 1024,
                storage_gb: h.available.disk_gb,
                available_ports,
            },
            pricing: HostPricing {
                per_vcpu_hr: price(&info.pricing.per_vcpu_hr),
                per_gb_ram_hr: price(&info.pricing.per_gb_ram_hr),
                per_gb_storage_hr: price(&info.pricing.per_gb_storage_hr),
            },
            location: info.location_id.as_deref().zip(info.location.as_deref()).map(|(id, l)| location(id, l, info)),
        }
    }
}

/// The host ids the marketplace accepts: vmplane's; anything else names no host.
pub(super) fn host_id(raw: &str) -> MarketResult<HostId> {
    raw.parse().map_err(|_| MarketError::not_found(format!("hostnode {raw} not found")))
}

/// The host nodes one can rent on now: online and not cordoned.
#[utoipa::path(get, path = "/api/v2/hostnodes", tag = "hostnodes",
    responses((status = 200, body = HostnodeList), (status = "4XX", body = ErrorDocument)))]
pub(super) async fn list_hostnodes(State(state): State<AppState>, Caller(who): Caller) -> MarketResult<JsonApi<HostnodeList>> {
    let hostnodes = hosts::list(&state.app, &who)?.into_iter().filter(|h| h.online && !h.host.cordoned).map(|h| Hostnode::new(h, false)).collect();
    Ok(JsonApi(HostnodeList { data: Hostnodes { hostnodes } }))
}

/// One host node, with its free host ports.
#[utoipa::path(get, path = "/api/v2/hostnodes/{uuid}", tag = "hostnodes", params(("uuid" = String, Path, description = "Host node id (`host_…`)")),
    responses((status = 200, body = HostnodeDocument), (status = "4XX", body = ErrorDocument)))]
pub(super) async fn get_hostnode(State(state): State<AppState>, Caller(who): Caller, PathParam(uuid): PathParam) -> MarketResult<JsonApi<HostnodeDocument>> {
    let id = host_id(&uuid)?;
    let host = hosts::get(&state.app, &who, id).map_err(|e| match e {
        crate::app::AppError::NotFound(_) => MarketError::not_found(format!("hostnode {uuid} not found")),
        other => other.into(),
    })?;
    Ok(JsonApi(HostnodeDocument { data: Hostnode::new(host, true) }))
}
