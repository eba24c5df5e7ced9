//! Volumes: `/v1/volumes`, and attaching them to VMs at
//! `/v1/vms/{id}/volumes/{volume_id}`.

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{Json, Path, PathId, Query};
use super::pagination::{Page, PageQuery};
use super::vms::{VmAccepted, accepted};
use crate::AppState;
use crate::app::volumes;
use crate::app::{Accepted, Allocation, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::placement::Placement;
use vmplane_domain::spec::{DiskKind, VolumeMount};
use vmplane_domain::volume::{Volume, VolumeSpec, VolumeStatus};
use vmplane_domain::{HostId, ProjectId, VmId, VolumeId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_volume, list_volumes)).routes(routes!(get_volume, delete_volume)).routes(routes!(attach_volume, detach_volume))
}

/// A volume as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeView {
    pub id: VolumeId,
    pub name: String,
    pub size_gb: u32,
    #[serde(rename = "type")]
    pub kind: DiskKind,
    /// Set for a root disk (kept from a deleted VM): the image it holds. A
    /// create with `root_volume_id` boots it.
    pub image: Option<String>,
    pub status: VolumeStatus,
    pub message: Option<String>,
    pub org_id: vmplane_domain::OrgId,
    pub project_id: ProjectId,
    pub host_id: HostId,
    /// The VM it is attached to, if any.
    pub vm_id: Option<VmId>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Volume> for VolumeView {
    fn from(v: Volume) -> Self {
        Self {
            id: v.id,
            name: v.spec.name,
            size_gb: v.spec.size_gb,
            kind: v.spec.kind,
            image: v.image,
            status: v.status,
            message: v.message,
            org_id: v.org,
            project_id: v.project,
            host_id: v.host,
            vm_id: v.attached_to,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

/// A volume with the operation that changes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeAccepted {
    #[serde(flatten)]
    pub volume: VolumeView,
    pub operation: Operation,
}

/// `POST /v1/vms/{id}/volumes/{volume_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// Absolute path in the guest.
    #[schema(value_type = vmplane_domain::spec::MountPath)]
    pub mount_path: String,
    #[serde(default)]
    pub readonly: bool,
    /// A per-VM writable overlay over a read-only volume.
    #[serde(default)]
    pub overlay: bool,
    /// Overlay size in MiB, required with `overlay` (which requires
    /// `readonly`), and only then.
    #[schema(minimum = 1)]
    pub overlay_size_mib: Option<u64>,
}

/// Paging and filter of `GET /v1/volumes`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListVolumesQuery {
    /// Page number, from 1.
    #[param(value_type = super::pagination::PageNumber, inline, required = false)]
    pub page: Option<u64>,
    /// Items per page, 1-100 (default 20).
    #[param(value_type = super::pagination::PageLimit, inline, required = false)]
    pub limit: Option<u64>,
    /// Only volumes of this name (a DNS label), matched whole.
    #[param(value_type = vmplane_domain::spec::DnsLabel, required = false)]
    pub name: Option<String>,
}

impl From<Accepted<Volume>> for VolumeAccepted {
    fn from(a: Accepted<Volume>) -> Self {
        Self { volume: a.resource.into(), operation: a.operation }
    }
}

/// `POST /v1/volumes` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// DNS label.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
    #[schema(minimum = 1, maximum = 65536)]
    pub size_gb: u32,
    /// `block` (default) or `filesystem`; a qcow2 file on the host either way.
    #[serde(default, rename = "type")]
    pub kind: DiskKind,
    /// Where to place it (as for a VM): strategy, host, region, host labels.
    #[serde(default)]
    pub placement: Placement,
}

/// Create a volume on a host chosen by its placement (the org's strategy by default).
#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = CreateVolumeRequest,
    responses((status = 202, body = VolumeAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(req): Json<CreateVolumeRequest>,
) -> ApiResult<(StatusCode, axum::Json<VolumeAccepted>)> {
    let spec = VolumeSpec { name: req.name, size_gb: req.size_gb, kind: req.kind };
    Ok((StatusCode::ACCEPTED, axum::Json(volumes::create(&state.app, &who, alloc, spec, req.placement).await?.into())))
}

/// The caller's volumes (of the project it names, if any), oldest first.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", params(ListVolumesQuery),
    responses((status = 200, body = Page<VolumeView>), (status = "4XX", body = ErrorBody)))]
async fn list_volumes(State(state): State<AppState>, who: Principal, Query(q): Query<ListVolumesQuery>) -> ApiResult<axum::Json<Page<VolumeView>>> {
    let pq = PageQuery::new(q.page, q.limit)?;
    if let Some(name) = q.name.as_deref().filter(|n| !vmplane_domain::spec::is_dns_label(n)) {
        return Err(ApiError::BadRequest("invalid_query", format!("name `{name}` is not a volume name (a DNS label of at most 63 characters)")));
    }
    let listed = volumes::list(&state.app, &who, q.name.as_deref(), pq.window())?;
    Ok(axum::Json(pq.page(listed.items.into_iter().map(VolumeView::from).collect(), listed.total)))
}

/// One volume.
#[utoipa::path(get, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = vmplane_domain::VolumeId, Path, description = "Volume id")),
    responses((status = 200, body = VolumeView), (status = "4XX", body = ErrorBody)))]
async fn get_volume(State(state): State<AppState>, who: Principal, PathId(id): PathId<VolumeId>) -> ApiResult<axum::Json<VolumeView>> {
    Ok(axum::Json(volumes::get(&state.app, &who, id)?.into()))
}

/// Delete a volume; 409 while it is attached.
#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = vmplane_domain::VolumeId, Path, description = "Volume id")),
    responses((status = 202, body = VolumeAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VolumeId>,
) -> ApiResult<(StatusCode, axum::Json<VolumeAccepted>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(volumes::delete(&state.app, &who, alloc, id).await?.into())))
}

/// The two path parameters of attach/detach.
#[derive(Debug, Deserialize)]
struct VmVolumePath {
    id: String,
    volume_id: String,
}

fn parse_ids(p: &VmVolumePath) -> ApiResult<(VmId, VolumeId)> {
    let vm = p.id.parse().map_err(|e| ApiError::BadRequest("invalid_id", format!("`{}`: {e}", p.id)))?;
    let vol = p.volume_id.parse().map_err(|e| ApiError::BadRequest("invalid_id", format!("`{}`: {e}", p.volume_id)))?;
    Ok((vm, vol))
}

/// Attach a volume to a VM on the same host and mount it at `mount_path`;
/// hot-plugged when the VM runs, at its next boot when stopped.
#[utoipa::path(post, path = "/v1/vms/{id}/volumes/{volume_id}", tag = "volumes", request_body = AttachRequest,
    params(("id" = vmplane_domain::VmId, Path, description = "VM id"), ("volume_id" = vmplane_domain::VolumeId, Path, description = "Volume id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn attach_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Path(p): Path<VmVolumePath>,
    Json(req): Json<AttachRequest>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    let (vm_id, vol_id) = parse_ids(&p)?;
    let mount = VolumeMount {
        volume_id: vol_id,
        mount_path: Some(req.mount_path),
        readonly: req.readonly,
        overlay: req.overlay,
        overlay_size_mib: req.overlay_size_mib,
    };
    accepted(&state.app, volumes::attach(&state.app, &who, alloc, vm_id, mount).await?)
}

/// Unmount and detach a volume from a VM.
#[utoipa::path(delete, path = "/v1/vms/{id}/volumes/{volume_id}", tag = "volumes",
    params(("id" = vmplane_domain::VmId, Path, description = "VM id"), ("volume_id" = vmplane_domain::VolumeId, Path, description = "Volume id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn detach_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Path(p): Path<VmVolumePath>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    let (vm_id, vol_id) = parse_ids(&p)?;
    accepted(&state.app, volumes::detach(&state.app, &who, alloc, vm_id, vol_id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An attach the document allows is one the domain takes, and the
    /// mounts the domain refuses the document forbids.
    #[test]
    fn the_document_states_the_attach_rules() {
        let contract = crate::routes::contract::Contract::new(&super::super::openapi());
        for refused in [
            json!({"mount_path": "}"}),
            json!({"mount_path": "/"}),
            json!({"mount_path": "/data", "overlay": true, "overlay_size_mib": 64}),
            json!({"mount_path": "/data", "readonly": true, "overlay": true}),
            json!({"mount_path": "/data", "overlay_size_mib": 64}),
            json!({"mount_path": "/data", "readonly": true, "overlay": true, "overlay_size_mib": 0}),
        ] {
            assert!(contract.decode::<AttachRequest>(refused.clone()).is_err(), "{refused}");
        }
        let ok = contract.decode::<AttachRequest>(json!({"mount_path": "/data", "readonly": true, "overlay": true, "overlay_size_mib": 64.0})).unwrap();
        let mount = vmplane_domain::spec::VolumeMount {
            volume_id: vmplane_domain::VolumeId::new(),
            mount_path: Some(ok.mount_path),
            readonly: ok.readonly,
            overlay: ok.overlay,
            overlay_size_mib: ok.overlay_size_mib,
        };
        assert_eq!(mount.validate(), Ok(()));
    }
}
