//! Volumes: `/v1/volumes`, and attaching them to VMs at
//! `/v1/vms/{id}/volumes/{volume_id}`.

use crate::AppState;
use crate::auth::Principal;
use crate::commands::{Submission, accepted_before, submit};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, PathId, Query};
use crate::idempotency::Allocation;
use crate::placement::{Claim, place};
use crate::projection::operations::Operation;
use crate::routes::pagination::{Page, PageQuery};
use crate::routes::vms::{VmAccepted, act, visible_vm};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::host::Resources;
use vmplane_domain::spec::{DiskKind, VolumeMount};
use vmplane_domain::vm::VmCommand;
use vmplane_domain::volume::{self, Volume, VolumeCommand, VolumeSpec, VolumeStatus};
use vmplane_domain::{Command, HostId, ProjectId, VmId, VolumeId, subjects};

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
    pub mount_path: String,
    #[serde(default)]
    pub readonly: bool,
    /// A per-VM writable overlay over a read-only volume.
    #[serde(default)]
    pub overlay: bool,
    /// Overlay size in MiB, required with `overlay`.
    pub overlay_size_mib: Option<u64>,
}

/// Paging of `GET /v1/volumes`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListVolumesQuery {
    pub page: Option<u64>,
    pub limit: Option<u64>,
}

fn visible_volume(state: &AppState, who: &Principal, id: VolumeId) -> ApiResult<Volume> {
    state.proj.volume(id)?.filter(|v| v.org == who.org && v.status != VolumeStatus::Deleted).ok_or_else(|| ApiError::NotFound(format!("volume {id}")))
}

fn volume_error(e: volume::VolumeError) -> ApiError {
    match e {
        volume::VolumeError::NotFound => ApiError::NotFound("volume".into()),
        other => ApiError::Conflict(other.code(), other.to_string()),
    }
}

/// Create a volume on the online host with the most free disk.
#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = VolumeSpec,
    responses((status = 202, body = VolumeAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(spec): Json<VolumeSpec>,
) -> ApiResult<(StatusCode, axum::Json<VolumeAccepted>)> {
    spec.validate()?;
    let id = VolumeId(alloc.resource());
    // A retry (same Idempotency-Key) of a create the worker carried out already.
    if let Some(vol) = state.proj.volume(id)?.filter(|v| v.org == who.org)
        && let Some(operation) = accepted_before(&state, alloc.op())?
    {
        return Ok((StatusCode::ACCEPTED, axum::Json(VolumeAccepted { volume: vol.into(), operation })));
    }
    let claim = Claim { resources: Resources { disk_gb: u64::from(spec.size_gb), ..Resources::default() }, ..Claim::default() };
    let host = place(&state, &id.to_string(), claim, |_, _| None, |host, taken| host.info.disk_gb.saturating_sub(taken.used.disk_gb)).await?;
    let project = who.project_or_default();
    let command = VolumeCommand::Create { spec, host };
    let events = volume::decide(None, who.org, project, &command).map_err(volume_error)?;
    let now = OffsetDateTime::now_utc();
    let view =
        events.iter().fold(None, |s, e| volume::evolve(s, id, None, now, e)).ok_or_else(|| ApiError::Internal("decided events left no volume".into()))?;
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::volume_command(host, id),
        kind: "create_volume",
        target_id: id.to_string(),
        project,
        command: Command::Volume { volume: id, command },
    };
    let operation = submit(&state, &who, sub).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(VolumeAccepted { volume: view.into(), operation })))
}

/// The org's volumes, oldest first.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", params(ListVolumesQuery),
    responses((status = 200, body = Page<VolumeView>), (status = "4XX", body = ErrorBody)))]
async fn list_volumes(State(state): State<AppState>, who: Principal, Query(q): Query<ListVolumesQuery>) -> ApiResult<axum::Json<Page<VolumeView>>> {
    let pq = PageQuery::new(q.page, q.limit)?;
    let (vols, total) = state.proj.list_volumes(who.org, pq.offset(), pq.limit())?;
    Ok(axum::Json(pq.page(vols.into_iter().map(VolumeView::from).collect(), total)))
}

/// One volume.
#[utoipa::path(get, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path, description = "Volume id")),
    responses((status = 200, body = VolumeView), (status = "4XX", body = ErrorBody)))]
async fn get_volume(State(state): State<AppState>, who: Principal, PathId(id): PathId<VolumeId>) -> ApiResult<axum::Json<VolumeView>> {
    Ok(axum::Json(visible_volume(&state, &who, id)?.into()))
}

/// Delete a volume; 409 while it is attached.
#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path, description = "Volume id")),
    responses((status = 202, body = VolumeAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VolumeId>,
) -> ApiResult<(StatusCode, axum::Json<VolumeAccepted>)> {
    if let Some(operation) = accepted_before(&state, alloc.op())?
        && let Some(vol) = state.proj.volume(id)?.filter(|v| v.org == who.org && operation.target_id == id.to_string())
    {
        return Ok((StatusCode::ACCEPTED, axum::Json(VolumeAccepted { volume: vol.into(), operation })));
    }
    let vol = visible_volume(&state, &who, id)?;
    let command = VolumeCommand::Delete;
    let events = volume::decide(Some(&vol), who.org, vol.project, &command).map_err(volume_error)?;
    let now = OffsetDateTime::now_utc();
    let (host, project) = (vol.host, vol.project);
    let view = events.iter().try_fold(vol, |s, e| volume::evolve(Some(s), id, None, now, e)).ok_or_else(|| ApiError::Internal("volume vanished".into()))?;
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::volume_command(host, id),
        kind: "delete_volume",
        target_id: id.to_string(),
        project,
        command: Command::Volume { volume: id, command },
    };
    let operation = submit(&state, &who, sub).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(VolumeAccepted { volume: view.into(), operation })))
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
    params(("id" = String, Path, description = "VM id"), ("volume_id" = String, Path, description = "Volume id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn attach_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Path(p): Path<VmVolumePath>,
    Json(req): Json<AttachRequest>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    let (vm_id, vol_id) = parse_ids(&p)?;
    let vm = visible_vm(&state, &who, vm_id)?;
    let vol = visible_volume(&state, &who, vol_id)?;
    let mount = VolumeMount {
        volume_id: vol_id,
        mount_path: Some(req.mount_path),
        readonly: req.readonly,
        overlay: req.overlay,
        overlay_size_mib: req.overlay_size_mib,
    };
    mount.validate()?;
    // A retry of an attach carried out already finds the volume claimed by this VM.
    if accepted_before(&state, alloc.op())?.is_none() {
        volume::claim(Some(&vol), vm.id, vm.host).map_err(volume_error)?;
    }
    act(state, who, alloc, vm_id, VmCommand::AttachVolume { mount }).await
}

/// Unmount and detach a volume from a VM.
#[utoipa::path(delete, path = "/v1/vms/{id}/volumes/{volume_id}", tag = "volumes",
    params(("id" = String, Path, description = "VM id"), ("volume_id" = String, Path, description = "Volume id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn detach_volume(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Path(p): Path<VmVolumePath>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    let (vm_id, vol_id) = parse_ids(&p)?;
    // Another org's volume is not there for the caller, attached or not.
    visible_volume(&state, &who, vol_id)?;
    act(state, who, alloc, vm_id, VmCommand::DetachVolume { volume: vol_id }).await
}
