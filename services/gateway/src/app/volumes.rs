//! Volumes: create, delete and read them, and attach them to VMs of their
//! host. A volume of another org, or a deleted one, is not found.

use super::accept::{Submission, accepted_before, submit};
use super::placement::place;
use super::{Accepted, Allocation, App, AppError, AppResult, Listed, Principal, Window, vms};
use time::OffsetDateTime;
use vmplane_domain::host::Resources;
use vmplane_domain::placement::{Need, Placement};
use vmplane_domain::spec::VolumeMount;
use vmplane_domain::vm::{Vm, VmCommand, VmStatus, kept_root_disk_id, root_disk_vm};
use vmplane_domain::volume::{self, Volume, VolumeCommand, VolumeError, VolumeSpec, VolumeStatus};
use vmplane_domain::{Command, HostId, ProjectId, VmId, VolumeId, subjects};

/// A volume the caller may see.
pub fn get(app: &App, who: &Principal, id: VolumeId) -> AppResult<Volume> {
    app.proj.volume(id)?.filter(|v| v.org == who.org && v.status != VolumeStatus::Deleted).ok_or_else(|| AppError::NotFound(format!("volume {id}")))
}

/// The caller's volumes (of its project, if it named one, as VM lists are)
/// that are not deleted, of that name if given, oldest first.
pub fn list(app: &App, who: &Principal, name: Option<&str>, window: Window) -> AppResult<Listed<Volume>> {
    let keep = |v: &Volume| who.project.is_none_or(|p| v.project == p) && name.is_none_or(|n| v.spec.name == n);
    let (items, total) = app.proj.list_volumes(who.org, keep, window.offset, window.limit)?;
    Ok(Listed { items, total })
}

/// Create a volume in the caller's project, on a host chosen by `placement`
/// (its strategy, else the org's).
pub async fn create(app: &App, who: &Principal, alloc: Allocation, spec: VolumeSpec, placement: Placement) -> AppResult<Accepted<Volume>> {
    spec.validate()?;
    placement.validate().map_err(|m| AppError::Invalid("validation_failed", m))?;
    if let Some(host) = placement.host_id
        && app.proj.host(host)?.is_none()
    {
        return Err(AppError::NotFound(format!("host {host}")));
    }
    let id = VolumeId(alloc.resource());
    // A retry (same idempotency key) of a create the worker carried out already.
    if let Some(vol) = app.proj.volume(id)?.filter(|v| v.org == who.org)
        && let Some(operation) = accepted_before(app, alloc.op())?
    {
        return Ok(Accepted { resource: vol, operation });
    }
    let need = Need {
        resources: Resources { disk_gb: u64::from(spec.size_gb), ..Resources::default() },
        host: placement.host_id,
        region: placement.region,
        labels: placement.labels,
        ..Need::default()
    };
    let host = place(app, &id.to_string(), &need, super::tenancy::placement_strategy(app, who.org, placement.strategy)?).await?;
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

/// A root disk: a disk holding a bootable image, which a VM runs from. It is
/// either the disk a VM created from its image (not a volume while the VM
/// lives; its id is the volume it becomes when kept, `vm::kept_root_disk_id`),
/// or a root-disk volume (kept from a deleted VM), free or booting a VM.
#[derive(Debug, Clone)]
pub enum RootDisk {
    /// A live VM's own root disk, created from its image; attached to it.
    OfVm(Box<Vm>),
    /// A root-disk volume, with the VM that created it (for its plan and
    /// region) when the projections still have it.
    Volume { volume: Box<Volume>, made_by: Option<Box<Vm>> },
}

impl RootDisk {
    /// The disk's id: the volume's, or the one the VM's disk becomes when kept.
    pub fn id(&self) -> VolumeId {
        match self {
            Self::OfVm(vm) => kept_root_disk_id(vm.id),
            Self::Volume { volume, .. } => volume.id,
        }
    }

    /// The VM it is attached to (boots), if any.
    pub fn attached_to(&self) -> Option<VmId> {
        match self {
            Self::OfVm(vm) => Some(vm.id),
            Self::Volume { volume, .. } => volume.attached_to,
        }
    }

    fn project(&self) -> ProjectId {
        match self {
            Self::OfVm(vm) => vm.project,
            Self::Volume { volume, .. } => volume.project,
        }
    }
}

/// The VM whose own root disk `id` is, if that VM is the caller's and lives
/// (a deleted VM's kept disk is a volume).
fn root_disk_of_vm(app: &App, who: &Principal, id: VolumeId) -> AppResult<Option<Vm>> {
    let vm = app.proj.vm(root_disk_vm(id))?;
    Ok(vm.filter(|vm| vm.org == who.org && vm.status != VmStatus::Deleted && vm.spec.root_volume.is_none()))
}

/// A root disk the caller may see (of its project, if it named one).
pub fn root_disk(app: &App, who: &Principal, id: VolumeId) -> AppResult<RootDisk> {
    let found = match get(app, who, id) {
        Ok(volume) if volume.image.is_some() => {
            let made_by = app.proj.vm(root_disk_vm(id))?.filter(|vm| vm.org == who.org && kept_root_disk_id(vm.id) == id).map(Box::new);
            Some(RootDisk::Volume { volume: Box::new(volume), made_by })
        }
        Ok(_) => None,
        Err(AppError::NotFound(_)) => root_disk_of_vm(app, who, id)?.map(|vm| RootDisk::OfVm(Box::new(vm))),
        Err(e) => return Err(e),
    };
    found.filter(|d| who.project.is_none_or(|p| d.project() == p)).ok_or_else(|| AppError::NotFound(format!("root disk {id}")))
}

/// The caller's root disks (of its project, if it named one), oldest first:
/// its live VMs' own root disks and its root-disk volumes that are not deleted.
pub fn root_disks(app: &App, who: &Principal, window: Window) -> AppResult<Listed<RootDisk>> {
    let filter = crate::projection::vms::VmFilter { org: who.org, project: who.project, status: None, name: None };
    let (vms, _) = app.proj.list_vms(&filter, 0, usize::MAX)?;
    let (volumes, _) = app.proj.list_volumes(who.org, |_| true, 0, usize::MAX)?;
    let mut disks: Vec<RootDisk> = Vec::new();
    for volume in volumes.into_iter().filter(|v| v.image.is_some() && who.project.is_none_or(|p| v.project == p)) {
        let made_by = app.proj.vm(root_disk_vm(volume.id))?.filter(|vm| vm.org == who.org && kept_root_disk_id(vm.id) == volume.id).map(Box::new);
        disks.push(RootDisk::Volume { volume: Box::new(volume), made_by });
    }
    // A VM being deleted whose disk is already the kept volume shows once, as that volume.
    let own = vms.into_iter().filter(|vm| vm.spec.root_volume.is_none()).map(|vm| RootDisk::OfVm(Box::new(vm))).collect::<Vec<_>>();
    for disk in own {
        if !disks.iter().any(|d| d.id() == disk.id()) {
            disks.push(disk);
        }
    }
    disks.sort_by_key(RootDisk::id);
    let total = disks.len();
    let items = disks.into_iter().skip(window.offset).take(window.limit).collect();
    Ok(Listed { items, total })
}

/// Delete a root disk: a root-disk volume that no VM boots (409 otherwise;
/// a live VM's own root disk goes with the VM, or is kept, when it is deleted).
pub async fn delete_root_disk(app: &App, who: &Principal, alloc: Allocation, id: VolumeId) -> AppResult<Accepted<Volume>> {
    // A retry of a delete the worker took up already.
    if let Some(operation) = accepted_before(app, alloc.op())?
        && let Some(vol) = app.proj.volume(id)?.filter(|v| v.org == who.org && operation.target_id == id.to_string())
    {
        return Ok(Accepted { resource: vol, operation });
    }
    match root_disk(app, who, id)? {
        RootDisk::OfVm(vm) => Err(AppError::Conflict("volume_in_use", VolumeError::InUse(vm.id).to_string())),
        RootDisk::Volume { .. } => delete(app, who, alloc, id).await,
    }
}
