//! `vm.volumes`, `vm.attachVolume`, `vm.detachVolume`.

use super::error::{ErrorEnvelope, VisorResult};
use super::extract::{Caller, Input, parse_id, required};
use super::views::{Envelope, VolumeView, envelope};
use super::vms::{VmInput, spec_error, visible};
use crate::AppState;
use crate::app::{Allocation, volumes};
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use vmplane_domain::spec::VolumeMount;
use vmplane_domain::{OrgId, VmId, VolumeId};

/// Input of `vm.attachVolume`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeInput {
    /// Required.
    #[schema(value_type = VmId)]
    pub vm_id: Option<String>,
    /// Required: a volume of the VM's host (`POST /v1/volumes` creates one).
    #[schema(value_type = VolumeId)]
    pub volume_id: Option<String>,
    /// An absolute path where the guest agent mounts the volume (formatting
    /// a blank one); without it the volume is only a block device.
    #[schema(value_type = Option<vmplane_domain::spec::MountPath>)]
    pub mount_path: Option<String>,
    /// Optional (an addition): the org to act in.
    #[schema(value_type = Option<OrgId>)]
    pub organization_id: Option<String>,
}

/// Input of `vm.detachVolume`: which volume of which VM, no mount path.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetachInput {
    /// Required.
    #[schema(value_type = VmId)]
    pub vm_id: Option<String>,
    /// Required.
    #[schema(value_type = VolumeId)]
    pub volume_id: Option<String>,
    /// Optional (an addition): the org to act in.
    #[schema(value_type = Option<OrgId>)]
    pub organization_id: Option<String>,
}

/// The VM and volume ids of an attach or a detach.
fn ids(vm_id: &Option<String>, volume_id: &Option<String>) -> VisorResult<(VmId, VolumeId)> {
    Ok((parse_id("vmId", required("vmId", vm_id)?)?, parse_id("volumeId", required("volumeId", volume_id)?)?))
}

/// The volumes attached to a VM.
#[utoipa::path(get, path = "/api/vm.volumes", tag = "vm",
    params(("vmId" = VmId, Query), ("organizationId" = Option<OrgId>, Query, description = "The org to act in (an addition)")),
    responses((status = 200, body = Envelope<Vec<VolumeView>>), (status = "4XX", body = ErrorEnvelope)))]
pub async fn list(State(state): State<AppState>, caller: Caller, Input(input): Input<VmInput>) -> VisorResult<axum::Json<Envelope<Vec<VolumeView>>>> {
    let (id, who) = input.scoped(&state, caller)?;
    let vm = visible(&state, &who, id)?;
    Ok(envelope(vm.volumes.iter().filter_map(|m| VolumeView::of_mount(&state.app, &who, m)).collect()))
}

/// Attach a volume as a block device, mounted at `mountPath` when given:
/// hot-plugged into a running VM, at the next boot of a stopped one.
#[utoipa::path(post, path = "/api/vm.attachVolume", tag = "vm", request_body = VolumeInput,
    responses((status = 200, body = Envelope<VolumeView>), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn attach(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Input(input): Input<VolumeInput>,
) -> VisorResult<axum::Json<Envelope<VolumeView>>> {
    let (vm_id, volume_id) = ids(&input.vm_id, &input.volume_id)?;
    let who = caller.scope(&state, input.organization_id.as_deref())?;
    visible(&state, &who, vm_id)?;
    let mount = VolumeMount { volume_id, mount_path: input.mount_path, readonly: false, overlay: false, overlay_size_mib: None };
    mount.validate().map_err(spec_error)?;
    let vol = volumes::get(&state.app, &who, volume_id)?;
    volumes::attach(&state.app, &who, alloc, vm_id, mount.clone()).await?;
    Ok(envelope(VolumeView { id: vol.id, name: vol.spec.name, size_gb: vol.spec.size_gb, mount_path: mount.mount_path }))
}

/// Unmount and detach a volume; it is kept.
#[utoipa::path(post, path = "/api/vm.detachVolume", tag = "vm", request_body = DetachInput,
    responses((status = 200, body = Envelope<VolumeView>), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn detach(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Input(input): Input<DetachInput>,
) -> VisorResult<axum::Json<Envelope<VolumeView>>> {
    let (vm_id, volume_id) = ids(&input.vm_id, &input.volume_id)?;
    let who = caller.scope(&state, input.organization_id.as_deref())?;
    visible(&state, &who, vm_id)?;
    let vol = volumes::get(&state.app, &who, volume_id)?;
    volumes::detach(&state.app, &who, alloc, vm_id, volume_id).await?;
    Ok(envelope(VolumeView { id: vol.id, name: vol.spec.name, size_gb: vol.spec.size_gb, mount_path: None }))
}
