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
use vmplane_domain::{VmId, VolumeId};

/// Input of `vm.attachVolume` and `vm.detachVolume`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeInput {
    /// Required.
    pub vm_id: Option<String>,
    /// Required: a volume of the VM's host (`POST /v1/volumes` creates one).
    pub volume_id: Option<String>,
    /// attachVolume only: an absolute path where the guest agent mounts the
    /// volume (formatting a blank one); without it the volume is only a block device.
    pub mount_path: Option<String>,
    /// Optional (an addition): the org to act in.
    pub organization_id: Option<String>,
}

impl VolumeInput {
    fn ids(&self) -> VisorResult<(VmId, VolumeId)> {
        Ok((parse_id("vmId", required("vmId", &self.vm_id)?)?, parse_id("volumeId", required("volumeId", &self.volume_id)?)?))
    }
}

/// The volumes attached to a VM.
#[utoipa::path(get, path = "/api/vm.volumes", tag = "vm",
    params(("vmId" = String, Query), ("organizationId" = Option<String>, Query, description = "The org to act in (an addition)")),
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
    let (vm_id, volume_id) = input.ids()?;
    let who = caller.scope(&state, input.organization_id.as_deref())?;
    visible(&state, &who, vm_id)?;
    let mount = VolumeMount { volume_id, mount_path: input.mount_path, readonly: false, overlay: false, overlay_size_mib: None };
    mount.validate().map_err(spec_error)?;
    let vol = volumes::get(&state.app, &who, volume_id)?;
    volumes::attach(&state.app, &who, alloc, vm_id, mount.clone()).await?;
    Ok(envelope(VolumeView { id: vol.id, name: vol.spec.name, size_gb: vol.spec.size_gb, mount_path: mount.mount_path }))
}

/// Unmount and detach a volume; it is kept.
#[utoipa::path(post, path = "/api/vm.detachVolume", tag = "vm", request_body = VolumeInput,
    responses((status = 200, body = Envelope<VolumeView>), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn detach(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Input(input): Input<VolumeInput>,
) -> VisorResult<axum::Json<Envelope<VolumeView>>> {
    let (vm_id, volume_id) = input.ids()?;
    if input.mount_path.is_some() {
        return Err(super::error::VisorError::bad_request("mountPath: detachVolume takes none"));
    }
    let who = caller.scope(&state, input.organization_id.as_deref())?;
    visible(&state, &who, vm_id)?;
    let vol = volumes::get(&state.app, &who, volume_id)?;
    volumes::detach(&state.app, &who, alloc, vm_id, volume_id).await?;
    Ok(envelope(VolumeView { id: vol.id, name: vol.spec.name, size_gb: vol.spec.size_gb, mount_path: None }))
}
