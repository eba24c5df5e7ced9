//! Snapshots: taking one of a running or standby VM, reading them, and the
//! snapshot a create `from_snapshot` resumes. Another org's is not found.

use super::accept::{accepted_before, wait_for};
use super::{Accepted, Allocation, App, AppError, AppResult, Listed, Principal, Window};
use crate::projection::operations::OpStatus;
use time::OffsetDateTime;
use vmplane_domain::snapshot::{self, Snapshot, SnapshotStatus};
use vmplane_domain::spec::is_dns_label;
use vmplane_domain::vm::{VmCommand, VmEvent};

use super::vms::NewVm;
use std::collections::BTreeSet;
use vmplane_domain::placement::Placement;
use vmplane_domain::spec::VmSpec;
use vmplane_domain::template::Field;
use vmplane_domain::vm::Vm;
use vmplane_domain::{OpId, SnapshotId, VmId};

/// A snapshot the caller may see (not deleted).
pub fn get(app: &App, who: &Principal, id: SnapshotId) -> AppResult<Snapshot> {
    app.proj.snapshot(id)?.filter(|s| s.org == who.org && s.status != SnapshotStatus::Deleted).ok_or_else(|| AppError::NotFound(format!("snapshot {id}")))
}

/// The caller's snapshots (of its project, if it named one), of the VM
/// `of` if given, oldest first.
pub fn list(app: &App, who: &Principal, of: Option<VmId>, window: Window) -> AppResult<Listed<Snapshot>> {
    let keep = |s: &Snapshot| s.status != SnapshotStatus::Deleted && who.project.is_none_or(|p| s.project == p) && of.is_none_or(|vm| s.source_vm == vm);
    let (items, total) = app.proj.list_snapshots(who.org, keep, window.offset, window.limit)?;
    Ok(Listed { items, total })
}

/// Snapshot a running or standby VM as `name`; its operation ends when the
/// snapshot is ready (or failed, the VM going on as it was).
pub async fn take(app: &App, who: &Principal, alloc: Allocation, vm: VmId, name: String) -> AppResult<Accepted<Snapshot>> {
    take_for(app, who, alloc, vm, name, Vec::new()).await
}

/// [`take`], for a fork when `clones` names its clones' create operations:
/// the operation then also waits for those.
async fn take_for(app: &App, who: &Principal, alloc: Allocation, vm: VmId, name: String, clones: Vec<OpId>) -> AppResult<Accepted<Snapshot>> {
    if !is_dns_label(&name) {
        return Err(AppError::Invalid("validation_failed", "name: must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'".into()));
    }
    let id = SnapshotId(alloc.resource());
    // A retry (same idempotency key) of a snapshot the worker took up already.
    if let Some(s) = app.proj.snapshot(id)?.filter(|s| s.org == who.org)
        && let Some(operation) = accepted_before(app, alloc.op())?
    {
        return Ok(Accepted { resource: s, operation });
    }
    let before = super::vms::get(app, who, vm)?;
    let command = VmCommand::TakeSnapshot { snapshot: id, name: name.clone(), clones: clones.clone() };
    let accepted = super::vms::command(app, who, alloc, vm, command).await?;
    let requested = VmEvent::SnapshotRequested { snapshot: id, name, clones };
    let fresh = snapshot::evolve(None, &before, Some(accepted.operation.id), OffsetDateTime::now_utc(), &requested);
    let resource = match app.proj.snapshot(id)? {
        Some(s) => s,
        None => fresh.ok_or_else(|| AppError::Internal("a snapshot request made no snapshot".into()))?,
    };
    Ok(Accepted { resource, operation: accepted.operation })
}

/// Delete a snapshot and its files: 409 `snapshot_in_use` while VMs created
/// from it and not flattened exist (they read its disk, and until they first
/// ran its memory file), 409 while it is still
/// being taken. Carried out by the worker of its host, as an operation of
/// the VM it was taken of (deleted or not).
pub async fn delete(app: &App, who: &Principal, alloc: Allocation, id: SnapshotId) -> AppResult<Accepted<Snapshot>> {
    let s = get(app, who, id)?;
    if accepted_before(app, alloc.op())?.is_none() {
        if s.status == SnapshotStatus::Creating {
            return Err(AppError::Conflict("invalid_state", format!("snapshot {id} is still being taken")));
        }
        let clones = app.proj.snapshot_clones(id)?;
        if let Some(first) = clones.first() {
            return Err(AppError::Conflict(
                "snapshot_in_use",
                format!(
                    "{} VM(s) created from snapshot {id} still read it ({first}, ...): flatten them (POST /v1/vms/{{id}}/flatten) or delete them first",
                    clones.len()
                ),
            ));
        }
    }
    let accepted = super::vms::command(app, who, alloc, s.source_vm, VmCommand::DeleteSnapshot { snapshot: id }).await?;
    // As the command leaves it, unless the projection has seen more.
    let requested = VmEvent::SnapshotDeleteRequested { snapshot: id };
    let projected = app.proj.snapshot(id)?.filter(|p| p.status != SnapshotStatus::Ready);
    let resource = projected.or_else(|| snapshot::evolve(Some(s), &accepted.resource, None, OffsetDateTime::now_utc(), &requested));
    Ok(Accepted { resource: resource.ok_or_else(|| AppError::Internal("a snapshot delete left no snapshot".into()))?, operation: accepted.operation })
}

/// Flatten a clone: copy into its own root disk what it reads from its
/// snapshot's, so that the snapshot can be deleted while the clone lives.
/// The clone must have run (its first start resumes the snapshot's memory);
/// a clone already flattened is left as it is.
pub async fn flatten(app: &App, who: &Principal, alloc: Allocation, vm: VmId) -> AppResult<Accepted<Vm>> {
    super::vms::command(app, who, alloc, vm, VmCommand::Flatten).await
}

/// How long a fork waits for its snapshot to be taken up by the source's host.
const FORK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// At most this many clones in one fork.
pub const MAX_FORK: u32 = 16;

/// What a fork accepted: the snapshot with the fork's operation (which ends
/// once the snapshot and every clone's create have ended), and its clones,
/// each with its own create operation.
pub struct Forked {
    pub snapshot: Accepted<Snapshot>,
    pub clones: Vec<Accepted<Vm>>,
}

/// Snapshot a running or standby VM as `name` and create `count` VMs from
/// it at once: `name` for one, `name-1` ... `name-<count>` for more. The
/// clones are accepted before the snapshot is ready and wait for it on its
/// host; each is the source's machine, as for any create `from_snapshot`.
/// Every part is an ordinary command with ids derived from this request's,
/// so a retry with the same idempotency key makes no second snapshot or clone.
/// The snapshot's command names the clones' create operations, which makes
/// its operation the fork's: one operation for the whole.
///
/// A clone refused here once the snapshot was accepted (the host filled up
/// meanwhile, or never took the snapshot up) cannot be taken back from the
/// fork's operation: it and every clone after it are cancelled instead
/// ([`VmCommand::CancelCreate`]), so the fork's operation fails rather than
/// wait for them, and the request fails with the refusal. A retry with the
/// same idempotency key then fails the same way (`fork_failed`).
pub async fn fork(app: &App, who: &Principal, alloc: Allocation, vm: VmId, name: String, count: u32) -> AppResult<Forked> {
    if !(1..=MAX_FORK).contains(&count) {
        return Err(AppError::Invalid("validation_failed", format!("count: 1 to {MAX_FORK}")));
    }
    let names: Vec<String> = if count == 1 { vec![name.clone()] } else { (1..=count).map(|i| format!("{name}-{i}")).collect() };
    if let Some(bad) = names.iter().find(|n| !is_dns_label(n)) {
        return Err(AppError::Invalid(
            "validation_failed",
            format!("name: `{bad}` is not a DNS label (1-63 of a-z, 0-9 and '-', the clones' numbers included)"),
        ));
    }
    let clone_ops = (1..=count).map(|i| alloc.derived(i).op()).collect();
    let snapshot = take_for(app, who, alloc, vm, name, clone_ops).await?;
    let mut clones = Vec::with_capacity(names.len());
    let refusal = match create_clones(app, who, alloc, &snapshot, &names, &mut clones).await {
        Ok(()) => return Ok(Forked { snapshot, clones }),
        Err(e) => e,
    };
    let (op, snap, host) = (snapshot.operation.id, snapshot.resource.id, snapshot.resource.host);
    let reason = format!("the fork's clone was not created: {refusal}");
    for i in (clones.len() as u32 + 1)..=count {
        let part = alloc.derived(i);
        super::vms::cancel_create(app, who, part, VmId(part.resource()), host, reason.clone()).await?;
    }
    tracing::info!(fork = %op, snapshot = %snap, created = clones.len(), count, error = %refusal, "fork refused part-way; its remaining clones are cancelled");
    Err(refusal.adding(&format!(
        "the fork's operation {op} fails: snapshot {snap} was accepted and {} of its {count} clone(s) created; the others are cancelled",
        clones.len()
    )))
}

/// Create a fork's clones in order into `clones`, stopping at the first one
/// refused (or cancelled by an earlier attempt of the same request).
async fn create_clones(
    app: &App,
    who: &Principal,
    alloc: Allocation,
    snapshot: &Accepted<Snapshot>,
    names: &[String],
    clones: &mut Vec<Accepted<Vm>>,
) -> AppResult<()> {
    // The clones' creates look the snapshot up: wait until its host's worker took it up.
    let op = snapshot.operation.id;
    let started = wait_for(app, op, FORK_WAIT, |o| o.status != OpStatus::Pending).await?;
    if app.proj.snapshot(snapshot.resource.id)?.is_none() {
        return Err(match started.filter(|o| o.status == OpStatus::Failed) {
            Some(failed) => {
                AppError::Conflict("snapshot_failed", format!("the fork's snapshot was refused: {}", failed.error.map(|e| e.message).unwrap_or_default()))
            }
            None => AppError::Unavailable(format!("the snapshot's operation {op} is still pending: its host did not take it up")),
        });
    }
    for (i, clone_name) in (1..).zip(names) {
        let part = alloc.derived(i);
        if let Some(earlier) = accepted_before(app, part.op())?.filter(|o| o.status == OpStatus::Failed)
            && app.proj.vm(VmId(part.resource()))?.is_none()
        {
            let why = earlier.error.map(|e| e.message).unwrap_or_default();
            return Err(AppError::Conflict("fork_failed", format!("an earlier attempt of this request cancelled clone `{clone_name}` ({why})")));
        }
        // Everything but the name is unset: the create fits the snapshot's machine.
        let mut spec = VmSpec::named(clone_name.clone());
        spec.from_snapshot = Some(snapshot.resource.id);
        let unset: BTreeSet<Field> = Field::ALL.into_iter().collect();
        let new = NewVm { spec, unset, ssh_key_ids: Vec::new(), placement: Placement::default() };
        clones.push(super::vms::create(app, who, part, new).await?);
    }
    Ok(())
}

/// The snapshot a create resumes from: the caller's, and being taken or
/// ready (a clone of one still being taken waits for it on its host).
pub fn to_resume(app: &App, who: &Principal, id: SnapshotId) -> AppResult<Snapshot> {
    let s = get(app, who, id)?;
    match s.status {
        SnapshotStatus::Ready | SnapshotStatus::Creating => Ok(s),
        SnapshotStatus::Failed => Err(AppError::Conflict("snapshot_failed", format!("snapshot {id} failed: {}", s.message.unwrap_or_default()))),
        SnapshotStatus::Deleting | SnapshotStatus::Deleted => Err(AppError::Conflict("invalid_state", format!("snapshot {id} is being deleted"))),
    }
}
