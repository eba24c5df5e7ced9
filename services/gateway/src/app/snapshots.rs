//! Snapshots: taking one of a running or standby VM, reading them, and the
//! snapshot a create `from_snapshot` resumes. Another org's is not found.

use super::accept::accepted_before;
use super::{Accepted, Allocation, App, AppError, AppResult, Listed, Principal, Window};
use time::OffsetDateTime;
use vmplane_domain::snapshot::{self, Snapshot, SnapshotStatus};
use vmplane_domain::spec::is_dns_label;
use vmplane_domain::vm::{VmCommand, VmEvent};
use vmplane_domain::{SnapshotId, VmId};

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
    let command = VmCommand::TakeSnapshot { snapshot: id, name: name.clone() };
    let accepted = super::vms::command(app, who, alloc, vm, command).await?;
    let requested = VmEvent::SnapshotRequested { snapshot: id, name };
    let fresh = snapshot::evolve(None, &before, Some(accepted.operation.id), OffsetDateTime::now_utc(), &requested);
    let resource = match app.proj.snapshot(id)? {
        Some(s) => s,
        None => fresh.ok_or_else(|| AppError::Internal("a snapshot request made no snapshot".into()))?,
    };
    Ok(Accepted { resource, operation: accepted.operation })
}

/// Delete a snapshot and its files: 409 `snapshot_in_use` while VMs created
/// from it exist (they read its memory file and disk), 409 while it is still
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
                format!("{} VM(s) created from snapshot {id} still exist ({first}, ...): delete them first", clones.len()),
            ));
        }
    }
    let accepted = super::vms::command(app, who, alloc, s.source_vm, VmCommand::DeleteSnapshot { snapshot: id }).await?;
    let now = OffsetDateTime::now_utc();
    let resource = snapshot::evolve(Some(s), &accepted.resource, None, now, &VmEvent::SnapshotDeleteRequested { snapshot: id }).expect("a snapshot stays one");
    Ok(Accepted { resource: app.proj.snapshot(id)?.filter(|p| p.status != SnapshotStatus::Ready).unwrap_or(resource), operation: accepted.operation })
}

/// The snapshot a create resumes from: the caller's, and ready.
pub fn to_resume(app: &App, who: &Principal, id: SnapshotId) -> AppResult<Snapshot> {
    let s = get(app, who, id)?;
    match s.status {
        SnapshotStatus::Ready => Ok(s),
        SnapshotStatus::Creating => Err(AppError::Conflict("snapshot_not_ready", format!("snapshot {id} is still being taken"))),
        SnapshotStatus::Failed => Err(AppError::Conflict("snapshot_failed", format!("snapshot {id} failed: {}", s.message.unwrap_or_default()))),
        SnapshotStatus::Deleting | SnapshotStatus::Deleted => Err(AppError::Conflict("invalid_state", format!("snapshot {id} is being deleted"))),
    }
}
