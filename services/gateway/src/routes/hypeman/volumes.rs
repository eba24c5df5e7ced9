//! `POST/DELETE /instances/{id}/volumes/{volumeId}`: attach a volume to an
//! instance with a mount (hot-plugged into a running guest, at the next boot
//! of a stopped one), and detach it. Both answer the instance when done.

use super::error::{ErrorBody, HypemanError, HypemanResult};
use super::extract::{Caller, Json, Path};
use super::instances::{resolve, settle};
use super::model::{AttachVolumeRequest, Instance, Mount};
use crate::AppState;
use crate::app::{Allocation, App, Principal, Window, volumes};
use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::VolumeId;
use vmplane_domain::volume::Volume;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(attach_volume, detach_volume))
}

/// The volume `key` names: its id, else its exact name (several: 404
/// `ambiguous`). Another org's volume, or a deleted one, is not found.
pub(super) fn resolve_volume(app: &App, who: &Principal, key: &str) -> HypemanResult<Volume> {
    if let Ok(id) = key.parse::<VolumeId>() {
        return Ok(volumes::get(app, who, id)?);
    }
    let mut named = volumes::list(app, who, Some(key), Window { offset: 0, limit: usize::MAX })?.items.into_iter();
    match (named.next(), named.next()) {
        (Some(one), None) => Ok(one),
        (Some(_), Some(_)) => Err(HypemanError::Ambiguous("volume")),
        (None, _) => Err(HypemanError::NotFound(format!("volume {key}"))),
    }
}

/// Attach volume to instance.
#[utoipa::path(post, path = "/instances/{id}/volumes/{volumeId}", tag = "volumes", operation_id = "attachVolume", request_body = AttachVolumeRequest,
    params(("id" = String, Path, description = "Instance ID, name or ID prefix"), ("volumeId" = String, Path, description = "Volume ID or name")),
    responses((status = 200, body = Instance, description = "Volume attached"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "Instance or volume not found"),
        (status = 409, body = ErrorBody, description = "Volume already attached, or the instance's state refuses it"), (status = 500, body = ErrorBody)))]
async fn attach_volume(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    Path((key, volume)): Path<(String, String)>,
    Json(req): Json<AttachVolumeRequest>,
) -> HypemanResult<axum::Json<Instance>> {
    let app = &state.app;
    let mount = Mount::check(&req.mount_path, req.readonly, req.overlay, req.overlay_size.as_deref())?;
    let vm = resolve(app, &who, &key)?;
    let vol = resolve_volume(app, &who, &volume)?;
    if let Some(named) = req.volume_id.filter(|v| *v != volume && *v != vol.id.to_string()) {
        return Err(HypemanError::BadRequest("bad_request", format!("volume_id {named} is not the volume in the path ({volume})")));
    }
    let accepted = volumes::attach(app, &who, alloc, vm.id, mount.on(vol.id)).await?;
    Ok(axum::Json(Instance::new(app, settle(app, &who, accepted, "attach volume").await?)))
}

/// Detach volume from instance.
#[utoipa::path(delete, path = "/instances/{id}/volumes/{volumeId}", tag = "volumes", operation_id = "detachVolume",
    params(("id" = String, Path, description = "Instance ID, name or ID prefix"), ("volumeId" = String, Path, description = "Volume ID or name")),
    responses((status = 200, body = Instance, description = "Volume detached"), (status = 404, body = ErrorBody, description = "Instance or volume not found"),
        (status = 409, body = ErrorBody, description = "Volume not attached to this instance, or the instance's state refuses it"), (status = 500, body = ErrorBody)))]
async fn detach_volume(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    Path((key, volume)): Path<(String, String)>,
) -> HypemanResult<axum::Json<Instance>> {
    let app = &state.app;
    let vm = resolve(app, &who, &key)?;
    let vol = resolve_volume(app, &who, &volume)?;
    let accepted = volumes::detach(app, &who, alloc, vm.id, vol.id).await?;
    Ok(axum::Json(Instance::new(app, settle(app, &who, accepted, "detach volume").await?)))
}
