//! Volumes: create, delete and read them, and attach them to VMs of their
//! host. A volume of another org, or a deleted one, is not found.

use super::accept::{Submission, accepted_before, submit};
use super::placement::{Claim, place};
use super::{Accepted, Allocation, App, AppError, AppResult, Listed, Principal, Window, vms};
use time::OffsetDateTime;
use vmplane_domain::host::Resources;
use vmplane_domain::spec::VolumeMount;
use vmplane_domain::vm::{Vm, VmCommand};
use vmplane_domain::volume::{self, Volume, VolumeCommand, VolumeSpec, VolumeStatus};
use vmplane_domain::{Command, HostId, ProjectId, VmId, VolumeId, subjects};

/// A volume the caller may see.
pub fn get(app: &App, who: &Principal, id: VolumeId) -> AppResult<Volume> {
    app.proj.volume(id)?.filter(|v| v.org == who.org && v.status != VolumeStatus::Deleted).ok_or_else(|| AppError::NotFound(format!("volume {id}")))
}

/// The org's volumes that are not deleted, oldest first.
pub fn list(app: &App, who: &Principal, window: Window) -> AppResult<Listed<Volume>> {
    let (items, total) = app.proj.list_volumes(who.org, window.offset, window.limit)?;
    Ok(Listed { items, total })
}

/// Create a volume in the caller's project, on the online host with the most free disk.
pub async fn create(app: &App, who: &Principal, alloc: Allocation, spec: VolumeSpec) -> AppResult<Accepted<Volume>> {
    spec.validate()?;
    let id = VolumeId(alloc.resource());
    // A retry (same idempotency key) of a create the worker carried out already.
    if let Some(vol) = app.proj.volume(id)?.filter(|v| v.org == who.org)
        && let Some(operation) = accepted_before(app, alloc.op())?
    {
        return Ok(Accepted { resource: vol, operation });
    }
    let claim = Claim { resources: Resources { disk_gb: u64::from(spec.size_gb), ..Resources::default() }, ..Claim::default() };
    let host = place(app, &id.to_string(), claim, |_, _| None, |host, taken| host.info.disk_gb.saturating_sub(taken.used.disk_gb)).await?;
    accept(app, who, alloc, None, id, who.project_or_default(), host, VolumeCommand::Create { spec, host }).await
}

/// Delete a volume; refused while it is attached.
pub async fn delete(app: &App, who: &Principal, alloc: Allocation, id: VolumeId) -> AppResult<Accepted<Volume>> {
    // A retry of a delete the worker took up already.
    if let Some(operation) = accepted_before(app, alloc.op())?
        && let Some(vol) = app.proj.volume(id)?.filter(|v| v.org == who.org && operation.target_id == id.to_string())
    {
        return Ok(Accepted { resource: vol, operation });
    }
    let vol = get(app, who, id)?;
    let (project, host) = (vol.project, vol.host);
    accept(app, who, alloc, Some(vol), id, project, host, VolumeCommand::Delete).await
}

/// Decide the command against the projected volume, append it, and answer
/// with the volume as the command leaves it.
#[allow(clippy::too_many_arguments)]
async fn accept(
    app: &App,
    who: &Principal,
    alloc: Allocation,
    vol: Option<Volume>,
    id: VolumeId,
    project: ProjectId,
    host: HostId,
    command: VolumeCommand,
) -> AppResult<Accepted<Volume>> {
    let events = volume::decide(vol.as_ref(), who.org, project, &command)?;
    let now = OffsetDateTime::now_utc();
    let after =
        events.iter().fold(vol, |s, e| volume::evolve(s, id, None, now, e)).ok_or_else(|| AppError::Internal("decided events left no volume".into()))?;
    let kind = match command {
        VolumeCommand::Create { .. } => "create_volume",
        VolumeCommand::Delete => "delete_volume",
    };
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::volume_command(host, id),
        kind,
        target_id: id.to_string(),
        project,
        command: Command::Volume { volume: id, command },
    };
    let operation = submit(app, who, sub).await?;
    Ok(Accepted { resource: after, operation })
}

/// Attach a volume to a VM on the same host and mount it as `mount` says;
/// hot-plugged when the VM runs, at its next boot when stopped.
pub async fn attach(app: &App, who: &Principal, alloc: Allocation, vm: VmId, mount: VolumeMount) -> AppResult<Accepted<Vm>> {
    let target = vms::get(app, who, vm)?;
    let vol = get(app, who, mount.volume_id)?;
    mount.validate()?;
    // A retry of an attach carried out already finds the volume claimed by this VM.
    if accepted_before(app, alloc.op())?.is_none() {
        volume::claim(Some(&vol), target.id, target.host)?;
    }
    vms::command(app, who, alloc, vm, VmCommand::AttachVolume { mount }).await
}

/// Unmount and detach a volume from a VM.
pub async fn detach(app: &App, who: &Principal, alloc: Allocation, vm: VmId, volume: VolumeId) -> AppResult<Accepted<Vm>> {
    // Another org's volume is not there for the caller, attached or not.
    get(app, who, volume)?;
    vms::command(app, who, alloc, vm, VmCommand::DetachVolume { volume }).await
}
