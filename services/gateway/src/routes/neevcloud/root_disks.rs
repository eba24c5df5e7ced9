//! `/api/v1/orgs/{org_id}/projects/{project_id}/root_disks`: list, get,
//! delete. A root disk is a live VM's own disk (attached to it) or a
//! root-disk volume kept from a deleted VM (free, or booting a VM that
//! named it in `attach_disk_request`); see `app::volumes::RootDisk`.

use super::auth::Caller;
use super::error::{ErrorResponse, NeevResult, Query};
use super::pagination::{Page, PageParams};
use super::views::{Render, RootDiskVolumeListResponse, RootDiskVolumeResponse};
use crate::AppState;
use crate::app::Allocation;
use crate::app::volumes;
use axum::extract::State;
use axum::http::StatusCode;
use vmplane_domain::VolumeId;

/// List root disk volumes
///
/// Returns a paginated list of root disk volumes for the project that are not deleted.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks", tag = "VM", operation_id = "listRootDiskVolumes",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("page" = Option<i64>, Query, minimum = 1, description = "Page number for pagination (starts from 1)."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Number of items to return per page (default 20, maximum 100)."),
    ),
    responses(
        (status = 200, description = "Paginated list of root disk volumes.", body = RootDiskVolumeListResponse),
        (status = 400, description = "The request is invalid (page or limit).", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "The org or project was not found.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn list_root_disks(State(state): State<AppState>, caller: Caller, Query(q): Query<PageParams>) -> NeevResult<axum::Json<RootDiskVolumeListResponse>> {
    let page = Page::new(&q)?;
    let listed = volumes::root_disks(&state.app, &caller.who, page.window())?;
    let render = Render::new(&state.app, &caller.who);
    Ok(axum::Json(RootDiskVolumeListResponse {
        data: listed.items.into_iter().map(|d| render.root_disk(d)).collect(),
        pagination: page.pagination(listed.total),
    }))
}

/// Get root disk volume by ID
///
/// Returns details for a single root disk volume in the project.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks/{root_disk_id}", tag = "VM", operation_id = "getRootDiskVolume",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("root_disk_id" = String, Path, format = "uuid", description = "The unique identifier of the root disk."),
    ),
    responses(
        (status = 200, description = "Root disk volume details.", body = RootDiskVolumeResponse),
        (status = 400, description = "The root disk id is not a UUID.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "The root disk volume was not found in this project.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn get_root_disk(State(state): State<AppState>, caller: Caller) -> NeevResult<axum::Json<RootDiskVolumeResponse>> {
    let disk = volumes::root_disk(&state.app, &caller.who, VolumeId(caller.uuid("root_disk_id")?))?;
    Ok(axum::Json(Render::new(&state.app, &caller.who).root_disk(disk)))
}

/// Delete a root disk volume
///
/// Queues deletion for an unattached root disk; completion is asynchronous.
#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks/{root_disk_id}", tag = "VM", operation_id = "deleteRootDiskVolume",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("root_disk_id" = String, Path, format = "uuid", description = "The unique identifier of the root disk to delete."),
    ),
    responses(
        (status = 202, description = "Root disk deletion request accepted."),
        (status = 400, description = "The request is invalid.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "The root disk volume was not found in this project.", body = ErrorResponse),
        (status = 409, description = "The root disk volume is still attached to a VM.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn delete_root_disk(State(state): State<AppState>, caller: Caller, alloc: Allocation) -> NeevResult<StatusCode> {
    volumes::delete_root_disk(&state.app, &caller.who, alloc, VolumeId(caller.uuid("root_disk_id")?)).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Routes of this module.
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new().routes(routes!(list_root_disks)).routes(routes!(get_root_disk, delete_root_disk))
}
