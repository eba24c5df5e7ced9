//! Snapshots: `/v1/snapshots`, and taking one at `/v1/vms/{id}/snapshots`.

use super::error::{ApiResult, ErrorBody};
use super::extract::{Json, PathId, Query};
use super::pagination::{Page, PageQuery};
use super::vms::{VmAccepted, VmView, accepted};
use crate::AppState;
use crate::app::snapshots;
use crate::app::{Accepted, Allocation, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::snapshot::{Snapshot, SnapshotStatus};
use vmplane_domain::{HostId, ProjectId, SnapshotId, VmId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(take_snapshot))
        .routes(routes!(fork_vm))
        .routes(routes!(flatten_vm))
        .routes(routes!(list_snapshots))
        .routes(routes!(get_snapshot, delete_snapshot))
}

/// A snapshot as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotView {
    pub id: SnapshotId,
    pub name: String,
    pub status: SnapshotStatus,
    /// Why it failed.
    pub message: Option<String>,
    /// The VM it was taken of (which may since have been deleted).
    pub source_vm_id: VmId,
    pub org_id: vmplane_domain::OrgId,
    pub project_id: ProjectId,
    /// Where its files are: VMs created from it run there.
    pub host_id: HostId,
    /// The machine its clones are: image, vCPUs, memory and disk size.
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gb: u32,
    /// Bytes its files (memory, device state, disk) take on the host, once ready.
    pub size_bytes: Option<u64>,
    /// How long the source VM was paused to take it, in milliseconds, once
    /// ready (0 for a VM in standby).
    pub pause_ms: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Snapshot> for SnapshotView {
    fn from(s: Snapshot) -> Self {
        Self {
            id: s.id,
            name: s.name,
            status: s.status,
            message: s.message,
            source_vm_id: s.source_vm,
            org_id: s.org,
            project_id: s.project,
            host_id: s.host,
            image: s.spec.image,
            vcpus: s.spec.vcpus,
            memory_mib: s.spec.memory_mib,
            disk_gb: s.spec.disk_gb,
            size_bytes: s.size_bytes,
            pause_ms: s.pause_ms,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A snapshot with the operation that takes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotAccepted {
    #[serde(flatten)]
    pub snapshot: SnapshotView,
    pub operation: Operation,
}

impl From<Accepted<Snapshot>> for SnapshotAccepted {
    fn from(a: Accepted<Snapshot>) -> Self {
        Self { snapshot: a.resource.into(), operation: a.operation }
    }
}

/// `POST /v1/vms/{id}/snapshots` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshotRequest {
    /// DNS label.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
}

/// Snapshot a running or standby VM (memory, devices, root disk): new VMs
/// can then be created `from_snapshot`. A running VM is paused only while
/// its state is copied (`pause_ms`). Refused (409) for a VM with volumes,
/// GPUs, hot-pluggable memory or bridge networking.
#[utoipa::path(post, path = "/v1/vms/{id}/snapshots", tag = "snapshots", request_body = TakeSnapshotRequest,
    params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = SnapshotAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn take_snapshot(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
    Json(req): Json<TakeSnapshotRequest>,
) -> ApiResult<(StatusCode, axum::Json<SnapshotAccepted>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(snapshots::take(&state.app, &who, alloc, id, req.name).await?.into())))
}

/// Paging and filter of `GET /v1/snapshots`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListSnapshotsQuery {
    /// Page number, from 1.
    #[param(value_type = super::pagination::PageNumber, inline, required = false)]
    pub page: Option<u64>,
    /// Items per page, 1-100 (default 20).
    #[param(value_type = super::pagination::PageLimit, inline, required = false)]
    pub limit: Option<u64>,
    /// Only snapshots of this VM.
    pub vm_id: Option<VmId>,
}

/// The caller's snapshots (of the project it names, if any), oldest first.
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", params(ListSnapshotsQuery),
    responses((status = 200, body = Page<SnapshotView>), (status = "4XX", body = ErrorBody)))]
async fn list_snapshots(State(state): State<AppState>, who: Principal, Query(q): Query<ListSnapshotsQuery>) -> ApiResult<axum::Json<Page<SnapshotView>>> {
    let pq = PageQuery::new(q.page, q.limit)?;
    let listed = snapshots::list(&state.app, &who, q.vm_id, pq.window())?;
    Ok(axum::Json(pq.page(listed.items.into_iter().map(SnapshotView::from).collect(), listed.total)))
}

/// One snapshot.
#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "snapshots", params(("id" = vmplane_domain::SnapshotId, Path, description = "Snapshot id")),
    responses((status = 200, body = SnapshotView), (status = "4XX", body = ErrorBody)))]
async fn get_snapshot(State(state): State<AppState>, who: Principal, PathId(id): PathId<SnapshotId>) -> ApiResult<axum::Json<SnapshotView>> {
    Ok(axum::Json(snapshots::get(&state.app, &who, id)?.into()))
}

/// Delete a snapshot and free its files; 409 `snapshot_in_use` while VMs
/// created from it exist.
#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "snapshots", params(("id" = vmplane_domain::SnapshotId, Path, description = "Snapshot id")),
    responses((status = 202, body = SnapshotAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_snapshot(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<SnapshotId>,
) -> ApiResult<(StatusCode, axum::Json<SnapshotAccepted>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(snapshots::delete(&state.app, &who, alloc, id).await?.into())))
}

/// `POST /v1/vms/{id}/fork` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// The snapshot's name, and the clones': `name` for one, `name-1` ...
    /// `name-<count>` for more (each a DNS label).
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
    /// How many VMs to create from the snapshot. Default 1.
    #[schema(minimum = 1, maximum = 16)]
    pub count: Option<u32>,
}

/// A fork: its snapshot, the fork's operation, and the clones, each with
/// its create operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForkAccepted {
    pub snapshot: SnapshotView,
    /// The fork's operation (kind `fork`): it succeeds once the snapshot is
    /// ready and every clone is `running`, and fails as soon as one of them failed.
    pub operation: Operation,
    pub vms: Vec<VmAccepted>,
}

/// Snapshot a running or standby VM and create `count` VMs that resume from
/// it (as `POST /v1/vms/{id}/snapshots`, then `POST /v1/vms` with
/// `from_snapshot` for each, in one request), as one operation that ends
/// when they all have. The clones wait on the snapshot's host until it is ready.
/// A clone refused after the snapshot was accepted fails the request with
/// that refusal; it and the clones after it are cancelled, so the fork's
/// operation fails (its message names it).
#[utoipa::path(post, path = "/v1/vms/{id}/fork", tag = "snapshots", request_body = ForkRequest,
    params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = ForkAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn fork_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
    Json(req): Json<ForkRequest>,
) -> ApiResult<(StatusCode, axum::Json<ForkAccepted>)> {
    let forked = snapshots::fork(&state.app, &who, alloc, id, req.name, req.count.unwrap_or(1)).await?;
    let vms = forked
        .clones
        .into_iter()
        .map(|a| Ok(VmAccepted { vm: VmView::read(&state.app, a.resource)?, operation: a.operation }))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((StatusCode::ACCEPTED, axum::Json(ForkAccepted { snapshot: forked.snapshot.resource.into(), operation: forked.snapshot.operation, vms })))
}

/// Flatten a clone: copy into its own root disk what it still reads from
/// its snapshot's disk (live, while it runs), so that the snapshot can be
/// deleted while the clone lives. For a VM created `from_snapshot` that has
/// run (409 otherwise); a clone already flattened is left as it is. The
/// VM's `flattened` says when it is done.
#[utoipa::path(post, path = "/v1/vms/{id}/flatten", tag = "snapshots", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn flatten_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, snapshots::flatten(&state.app, &who, alloc, id).await?)
}
