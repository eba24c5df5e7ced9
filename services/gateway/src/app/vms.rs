//! VMs: create (from a template, if named), the lifecycle actions, memory
//! resize, reads (one VM, a list, a VM's history), and waiting for an
//! accepted command to end. A VM of another org is not found.

use super::accept::{Submission, accepted_before, submit, wait_for};
use super::placement::place;
use super::{Accepted, Allocation, App, AppError, AppResult, Listed, Principal, Window};
use crate::projection::operations::Operation;
use crate::projection::vms::VmFilter;
use std::collections::BTreeSet;
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_domain::event::Envelope;
use vmplane_domain::host::Host;
use vmplane_domain::placement::{Need, Placement, Strategy};
use vmplane_domain::spec::{NetworkMode, VmSpec};
use vmplane_domain::template::Field;
use vmplane_domain::vm::{Vm, VmCommand, VmStatus, decide, evolve};
use vmplane_domain::volume;
use vmplane_domain::{Command, HostId, ProjectId, SshKeyId, VmId, subjects};

/// What can be done to an existing VM without more input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a stopped VM; a running one is left as it is.
    Start,
    /// ACPI power-down, then a hard stop; a stopped one is left as it is.
    Stop,
    /// Reboot a running VM.
    Restart,
    /// Snapshot a running VM's memory and devices to disk and stop it.
    Standby,
    /// Resume a VM in standby from its snapshot, memory intact.
    Restore,
    /// Delete the VM and, unless its spec keeps it, its root disk.
    Delete,
}

impl Action {
    fn command(self) -> VmCommand {
        match self {
            Self::Start => VmCommand::Start,
            Self::Stop => VmCommand::Stop,
            Self::Restart => VmCommand::Restart,
            Self::Standby => VmCommand::Standby,
            Self::Restore => VmCommand::Restore,
            Self::Delete => VmCommand::Delete,
        }
    }
}

/// A VM the caller may see.
pub fn get(app: &App, who: &Principal, id: VmId) -> AppResult<Vm> {
    app.proj.vm(id)?.filter(|vm| vm.org == who.org).ok_or_else(|| AppError::NotFound(format!("vm {id}")))
}

/// Which of the caller's VMs a list shows.
#[derive(Debug, Default)]
pub struct Selection {
    /// Those in this status; without it every VM that is not deleted.
    pub status: Option<VmStatus>,
    /// Only those of this name.
    pub name: Option<String>,
}

/// The caller's VMs (of its project, if it named one) that `selection`
/// selects, oldest first.
pub fn list(app: &App, who: &Principal, selection: Selection, window: Window) -> AppResult<Listed<Vm>> {
    let filter = VmFilter { org: who.org, project: who.project, status: selection.status, name: selection.name };
    let (items, total) = app.proj.list_vms(&filter, window.offset, window.limit)?;
    Ok(Listed { items, total })
}

/// A VM's history: every event with its stream sequence, oldest first.
pub fn history(app: &App, who: &Principal, id: VmId) -> AppResult<Vec<(u64, Envelope)>> {
    get(app, who, id)?;
    Ok(app.proj.vm_events(id)?)
}

/// What a create asks for: the spec with the dialect's defaults filled in,
/// and the fields the request left to those defaults. When the spec names a
/// template (`spec.template`), the template's values go into those fields
/// first: what the request gave wins, then the template, then the defaults.
#[derive(Debug, Clone)]
pub struct NewVm {
    pub spec: VmSpec,
    /// Fields the request did not give.
    pub unset: BTreeSet<Field>,
    /// Stored SSH keys of the caller's org (`app::ssh_keys`) whose public
    /// keys join `spec.ssh_keys`; another org's key id is not found.
    pub ssh_key_ids: Vec<SshKeyId>,
    /// Where to place it: a host it names must exist (else not found), be
    /// online and pass every check placement makes of any host.
    pub placement: Placement,
}

/// A bare spec: the fields that hold no value (no user data, no port
/// forwards, ...) count as not given; every other one as given.
impl From<VmSpec> for NewVm {
    fn from(spec: VmSpec) -> Self {
        Self { unset: Field::empty_in(&spec), spec, ssh_key_ids: Vec::new(), placement: Placement::default() }
    }
}

/// Create a VM in the caller's project, on a host chosen by the request's
/// placement (its strategy, else the org's, else `spread`). A template named by
/// `spec.template` (id or name, see `templates::resolve`) fills the fields
/// the request left unset, and the VM's spec then names the template by its
/// id; the public keys of the stored SSH keys named are added to its keys.
pub async fn create(app: &App, who: &Principal, alloc: Allocation, new: impl Into<NewVm>) -> AppResult<Accepted<Vm>> {
    let NewVm { mut spec, unset, ssh_key_ids, placement } = new.into();
    let id = VmId(alloc.resource());
    // A retry (same idempotency key) of a create the worker carried out already.
    if let Some(vm) = app.proj.vm(id)?.filter(|vm| vm.org == who.org)
        && let Some(operation) = accepted_before(app, alloc.op())?
    {
        return Ok(Accepted { resource: vm, operation });
    }
    // A clone is the snapshot's machine, on the snapshot's host.
    let snapshot_host = match spec.from_snapshot {
        Some(snap) => {
            let snapshot = super::snapshots::to_resume(app, who, snap)?;
            if !ssh_key_ids.is_empty() {
                return Err(AppError::Invalid("validation_failed", "ssh_key_ids: cannot be given with from_snapshot: a clone has the snapshot's keys".into()));
            }
            vmplane_domain::snapshot::fit_clone(&snapshot.spec, &mut spec, &unset)?;
            Some(snapshot.host)
        }
        None => None,
    };
    if let Some(name) = spec.template.clone() {
        let template = super::templates::resolve(app, who, &name)?;
        template.spec.fill(&mut spec, &unset);
        spec.template = Some(template.id.to_string());
    }
    for key in super::ssh_keys::public_keys(app, who, &ssh_key_ids)? {
        if !spec.ssh_keys.contains(&key) {
            spec.ssh_keys.push(key);
        }
    }
    spec.validate()?;
    placement.validate().map_err(|m| AppError::Invalid("validation_failed", m))?;
    match (&spec.region, &placement.region) {
        (Some(a), Some(b)) if a != b => return Err(AppError::Invalid("validation_failed", format!("region `{a}` and placement.region `{b}` differ"))),
        (None, Some(b)) => spec.region = Some(b.clone()),
        _ => {}
    }
    if let Some(host) = placement.host_id
        && !app.proj.hosts()?.iter().any(|h| h.id == host)
    {
        return Err(AppError::NotFound(format!("host {host}")));
    }
    let volumes_host = check_create_disks(app, who, id, &mut spec)?.or(snapshot_host);
    resolve_names(app, &mut spec)?;
    let project = who.project_or_default();
    let strategy = super::tenancy::placement_strategy(app, who.org, placement.strategy)?;
    let host = place_vm(app, id, &spec, volumes_host, &placement, strategy).await?;
    let command = VmCommand::Create { spec: Box::new(spec), host };
    accept(app, who, alloc, None, id, project, host, command).await
}

/// Fail the create operation of VM `id` on `host` that was promised and
/// then refused (a fork's clone: see [`VmCommand::CancelCreate`]), with
/// `reason`. Not decided here: the VM does not exist, which is the point.
pub(super) async fn cancel_create(app: &App, who: &Principal, alloc: Allocation, id: VmId, host: HostId, reason: String) -> AppResult<Operation> {
    let command = VmCommand::CancelCreate { reason };
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::vm_command(host, id),
        kind: command.operation_kind(),
        target_id: id.to_string(),
        project: who.project_or_default(),
        command: Command::Vm { vm: id, command },
    };
    submit(app, who, sub).await
}

/// Start, stop, restart, standby, restore or delete a VM.
pub async fn act(app: &App, who: &Principal, alloc: Allocation, id: VmId, action: Action) -> AppResult<Accepted<Vm>> {
    command(app, who, alloc, id, action.command()).await
}

/// Wait, at most `timeout`, until the operation of an accepted VM command has
/// ended (`succeeded` or `failed`), and answer the VM as it then is with the
/// operation as it then stands (still `pending` or `running` when the time
/// ran out). A create's operation ends when the guest is running (or could
/// not get there), a stop's when it is stopped, a delete's when it is gone.
pub async fn wait(app: &App, who: &Principal, accepted: Accepted<Vm>, timeout: Duration) -> AppResult<Accepted<Vm>> {
    let op = accepted.operation.id;
    let operation = wait_for(app, op, timeout, |o| o.status.is_terminal()).await?.unwrap_or(accepted.operation);
    let resource = get(app, who, accepted.resource.id).unwrap_or(accepted.resource);
    Ok(Accepted { resource, operation })
}

/// Move a stopped VM and its root disk to host `to` (admin). The host must
/// be online and able to take it (its resources are claimed there now, as
/// for a create); the VM gets new addresses and host ports at its next start.
pub async fn move_to(app: &App, who: &Principal, alloc: Allocation, id: VmId, to: HostId) -> AppResult<Accepted<Vm>> {
    who.require_admin()?;
    let vm = get(app, who, id)?;
    if accepted_before(app, alloc.op())?.is_none() && vm.host != to {
        if app.proj.host(to)?.is_none() {
            return Err(AppError::NotFound(format!("host {to}")));
        }
        decide(Some(&vm), who.org, vm.project, &VmCommand::Move { to })?;
        place(app, &id.to_string(), &Need { host: Some(to), ..need_of(&vm.spec) }, Strategy::Spread).await?;
    }
    command(app, who, alloc, id, VmCommand::Move { to }).await
}

/// Hot-plug memory into a running VM, up to `memory_mib` in all.
pub async fn resize_memory(app: &App, who: &Principal, alloc: Allocation, id: VmId, memory_mib: u64) -> AppResult<Accepted<Vm>> {
    command(app, who, alloc, id, VmCommand::ResizeMemory { memory_mib }).await
}

/// Accept a command on an existing VM the caller may see.
pub(super) async fn command(app: &App, who: &Principal, alloc: Allocation, id: VmId, command: VmCommand) -> AppResult<Accepted<Vm>> {
    let vm = get(app, who, id)?;
    let (project, host) = (vm.project, vm.host);
    accept(app, who, alloc, Some(vm), id, project, host, command).await
}

/// Decide the command against the projected VM (refusing early what the state
/// forbids), append it, and answer with the VM as the command leaves it.
#[allow(clippy::too_many_arguments)]
async fn accept(
    app: &App,
    who: &Principal,
    alloc: Allocation,
    vm: Option<Vm>,
    id: VmId,
    project: ProjectId,
    host: HostId,
    command: VmCommand,
) -> AppResult<Accepted<Vm>> {
    // A retry of a command the worker took up already: deciding again would
    // refuse it (the VM moved on), so answer with what it did.
    if let Some(operation) = accepted_before(app, alloc.op())?
        && let Some(vm) = vm.as_ref().filter(|_| operation.target_id == id.to_string())
    {
        return Ok(Accepted { resource: vm.clone(), operation });
    }
    let events = decide(vm.as_ref(), who.org, project, &command)?;
    let now = OffsetDateTime::now_utc();
    let after = events.iter().fold(vm, |s, e| evolve(s, id, None, now, e)).ok_or_else(|| AppError::Internal("decided events left no vm".into()))?;
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::vm_command(host, id),
        kind: command.operation_kind(),
        target_id: id.to_string(),
        project,
        command: Command::Vm { vm: id, command },
    };
    let operation = submit(app, who, sub).await?;
    Ok(Accepted { resource: after, operation })
}

/// Place the VM: on a host that has the image, the requested host ports
/// free and inside its port range, (bridge mode) the requested address free,
/// the GPUs asked for free, the region and labels asked for, and the host of
/// the volumes it attaches; record the claim there.
async fn place_vm(app: &App, id: VmId, spec: &VmSpec, volumes_host: Option<HostId>, placement: &Placement, strategy: Strategy) -> AppResult<HostId> {
    let need = Need { host: placement.host_id, volumes_host, region: spec.region.clone(), labels: placement.labels.clone(), ..need_of(spec) };
    place(app, &id.to_string(), &need, strategy).await
}

/// What a VM of `spec` asks of any host it is placed on.
fn need_of(spec: &VmSpec) -> Need {
    let bridged = spec.network.enabled && spec.network.mode == NetworkMode::Bridge;
    Need {
        resources: spec.resources(),
        ports: spec.port_forwards.iter().filter_map(|pf| pf.host_port).collect(),
        guest_ip: spec.network.guest_ip.filter(|_| bridged),
        guest_mac: spec.network.guest_mac.as_deref().filter(|_| bridged).map(str::to_ascii_lowercase),
        gpu: spec.gpu.clone(),
        image: Some(spec.image.clone()),
        bridged,
        ..Need::default()
    }
}

/// What a create that attaches existing volumes (`volumes`, `root_volume_id`)
/// needs checked before placement: each volume is the caller's (404
/// otherwise), free (409 `volume_in_use` when another VM holds it) and on one
/// host with the others (409); a root volume is a root disk (422; the own
/// root disk of a live VM is one, held by that VM: 409), and the VM then runs
/// that disk's image at its size. Returns the host the VM must be placed on.
/// The worker claims each volume again when it attaches it, and fails the
/// create if another VM took one meanwhile.
fn check_create_disks(app: &App, who: &Principal, id: VmId, spec: &mut VmSpec) -> AppResult<Option<HostId>> {
    let mut volumes = spec.volumes.iter().map(|m| super::volumes::get(app, who, m.volume_id)).collect::<AppResult<Vec<_>>>()?;
    if let Some(root) = spec.root_volume {
        let vol = match super::volumes::get(app, who, root) {
            Err(AppError::NotFound(what)) => {
                let anywhere = Principal { project: None, ..*who };
                return match super::volumes::root_disk(app, &anywhere, root) {
                    Ok(super::volumes::RootDisk::OfVm(vm)) => Err(AppError::Conflict("volume_in_use", volume::VolumeError::InUse(vm.id).to_string())),
                    _ => Err(AppError::NotFound(what)),
                };
            }
            other => other?,
        };
        let image = vol.image.clone().ok_or_else(|| AppError::Invalid("not_a_root_disk", volume::VolumeError::NotRootDisk.to_string()))?;
        (spec.image, spec.disk_gb) = (image, vol.spec.size_gb);
        volumes.push(vol);
    }
    volume::host_for_create(id, &volumes).map_err(|e| AppError::Conflict(e.code(), e.to_string()))
}

/// Check the catalog names a create uses against the online hosts: the plan
/// exists, the region is one some online host serves, and the image name (a
/// catalog name or alias, an OCI reference, an installed slug or an `img_`
/// id) resolves to an image a host of that region has; `spec.image` becomes
/// that installed slug, so the VM's views say which image really runs. With
/// no host online there is nothing to resolve against, and placement answers.
fn resolve_names(app: &App, spec: &mut VmSpec) -> AppResult<()> {
    let catalog = super::catalog::get(app);
    if let Some(plan) = &spec.plan {
        catalog.plan(plan)?;
    }
    let online: Vec<Host> = app.proj.hosts()?.into_iter().filter(|h| app.proj.heartbeats.is_online(h.id)).collect();
    if online.is_empty() {
        return Ok(());
    }
    if let Some(code) = &spec.region {
        catalog.served_region(code, online.iter().map(|h| h.info.region.as_str()))?;
    }
    let candidates = online.iter().filter(|h| spec.region.as_ref().is_none_or(|r| *r == h.info.region));
    spec.image = catalog.resolve_image(&spec.image, candidates.flat_map(|h| &h.info.images))?.slug;
    Ok(())
}
