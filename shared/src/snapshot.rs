//! Snapshots: a VM's memory, devices and root disk at one instant, which new
//! VMs (`from_snapshot`) resume from instead of booting.
//!
//! Taking one is an operation of its VM (`VmCommand::TakeSnapshot`), so the
//! events that make a snapshot are VM events; a [`Snapshot`] is the read
//! model folded from them, kept after its VM is gone.
//!
//! A fork is a snapshot taken with the create operations of its clones named
//! (`clones` of `snapshot_requested`): its operation, of kind [`FORK_KIND`],
//! ends once the snapshot and every clone's create have ended, so one
//! operation says when the whole fork is done.

use crate::ids::{HostId, OpId, OrgId, ProjectId, SnapshotId, VmId};
use crate::spec::{NetworkSpec, SpecError, VmSpec};
use crate::template::Field;
use crate::vm::{Outcome, Vm, VmEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The kind of a snapshot's operation when it was taken for a fork.
pub const FORK_KIND: &str = "fork";

/// Where a snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// Being taken; VMs cannot be created from it yet.
    Creating,
    /// Complete: VMs can be created from it.
    Ready,
    /// Taking it failed (`message` says why); it holds nothing.
    Failed,
    /// Its files are being removed.
    Deleting,
    /// Gone.
    Deleted,
}

/// A snapshot as it is known from its VM's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub name: String,
    pub org: OrgId,
    pub project: ProjectId,
    /// Where its files are, and so where its clones run.
    pub host: HostId,
    pub source_vm: VmId,
    /// The source VM's spec when it was taken: the machine its clones are.
    pub spec: VmSpec,
    pub status: SnapshotStatus,
    pub message: Option<String>,
    /// Bytes its files take on the host, once ready.
    pub size_bytes: Option<u64>,
    /// How long the source was paused to take it, in ms, once ready.
    pub pause_ms: Option<u64>,
    /// The operation that takes it.
    pub operation: Option<OpId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The snapshot an event of `vm` (as it was before the event) begins or
/// advances, if any.
pub fn concerned(vm: &Vm, ev: &VmEvent) -> Option<SnapshotId> {
    match ev {
        VmEvent::SnapshotRequested { snapshot, .. }
        | VmEvent::SnapshotTaken { snapshot, .. }
        | VmEvent::SnapshotDeleteRequested { snapshot }
        | VmEvent::SnapshotDeleted { snapshot } => Some(*snapshot),
        VmEvent::OperationFinished { .. } => vm.snapshotting,
        _ => None,
    }
}

/// Fold one event of `vm` (as it was before the event) into the snapshot
/// [`concerned`] names; `None` when the event does not make one.
pub fn evolve(state: Option<Snapshot>, vm: &Vm, op: Option<OpId>, at: OffsetDateTime, ev: &VmEvent) -> Option<Snapshot> {
    match (state, ev) {
        (None, VmEvent::SnapshotRequested { snapshot, name, .. }) => Some(Snapshot {
            id: *snapshot,
            name: name.clone(),
            org: vm.org,
            project: vm.project,
            host: vm.host,
            source_vm: vm.id,
            spec: vm.spec.clone(),
            status: SnapshotStatus::Creating,
            message: None,
            size_bytes: None,
            pause_ms: None,
            operation: op,
            created_at: at,
            updated_at: at,
        }),
        (Some(mut s), VmEvent::SnapshotTaken { taken, .. }) => {
            (s.status, s.size_bytes, s.pause_ms, s.updated_at) = (SnapshotStatus::Ready, Some(taken.size_bytes), Some(taken.pause_ms), at);
            Some(s)
        }
        (Some(mut s), VmEvent::OperationFinished { outcome: Outcome::Failed { message, .. } }) if s.status == SnapshotStatus::Creating => {
            (s.status, s.message, s.updated_at) = (SnapshotStatus::Failed, Some(message.clone()), at);
            Some(s)
        }
        (Some(mut s), VmEvent::SnapshotDeleteRequested { .. }) => {
            (s.status, s.updated_at) = (SnapshotStatus::Deleting, at);
            Some(s)
        }
        (Some(mut s), VmEvent::SnapshotDeleted { .. }) => {
            (s.status, s.updated_at) = (SnapshotStatus::Deleted, at);
            Some(s)
        }
        // A delete that failed leaves it as it was.
        (Some(mut s), VmEvent::OperationFinished { outcome: Outcome::Failed { message, .. } }) if s.status == SnapshotStatus::Deleting => {
            (s.status, s.message, s.updated_at) = (SnapshotStatus::Ready, Some(format!("delete failed: {message}")), at);
            Some(s)
        }
        (state, _) => state,
    }
}

/// The fields of a clone's spec that are the snapshot's machine: a clone
/// resumes that guest, whose memory already holds its keys, user data and
/// environment, and whose devices fix its sizes.
const MACHINE: [Field; 10] = [
    Field::Image,
    Field::Vcpus,
    Field::MemoryMib,
    Field::HotplugMemoryMib,
    Field::DiskGb,
    Field::BootArgs,
    Field::UserData,
    Field::SshKeys,
    Field::Env,
    Field::EnableNetwork,
];

/// Make `spec` (a create `from_snapshot`) the snapshot's machine: each
/// machine field the request left out (`unset`) is the source's; one it gave
/// must equal the source's. Name, labels and port forwards are the clone's own.
pub fn fit_clone(source: &VmSpec, spec: &mut VmSpec, unset: &BTreeSet<Field>) -> Result<(), SpecError> {
    for field in MACHINE {
        let (name, same) = match field {
            Field::Image => ("image", spec.image == source.image),
            Field::Vcpus => ("vcpus", spec.vcpus == source.vcpus),
            Field::MemoryMib => ("memory_mib", spec.memory_mib == source.memory_mib),
            Field::HotplugMemoryMib => ("hotplug_memory_mib", spec.hotplug_memory_mib == source.hotplug_memory_mib),
            Field::DiskGb => ("disk_gb", spec.disk_gb == source.disk_gb),
            Field::BootArgs => ("boot_args", spec.boot_args == source.boot_args),
            Field::UserData => ("user_data", spec.user_data == source.user_data),
            Field::SshKeys => ("ssh_keys", spec.ssh_keys == source.ssh_keys),
            Field::Env => ("env", spec.env == source.env),
            // The mode too: a guest on a tap (bridge) may have taken NIC
            // offloads that user networking does not offer, and back.
            _ => ("network", spec.network.enabled == source.network.enabled && spec.network.mode == source.network.mode),
        };
        if !same && !unset.contains(&field) {
            return Err(SpecError::new(name, "must be the snapshot's (or left out): a clone resumes the snapshot's machine"));
        }
    }
    spec.image.clone_from(&source.image);
    (spec.vcpus, spec.memory_mib, spec.hotplug_memory_mib, spec.disk_gb) = (source.vcpus, source.memory_mib, source.hotplug_memory_mib, source.disk_gb);
    spec.boot_args.clone_from(&source.boot_args);
    spec.user_data.clone_from(&source.user_data);
    spec.ssh_keys.clone_from(&source.ssh_keys);
    spec.env.clone_from(&source.env);
    if unset.contains(&Field::EnableNetwork) {
        // The source's mode, not its address or MAC: a clone gets its own.
        spec.network = NetworkSpec { guest_ip: None, guest_mac: None, ..source.network.clone() };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::NetworkMode;
    use crate::vm::SnapshotTaken;

    fn vm() -> Vm {
        let created = VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: Box::new(VmSpec::named("src")), host: HostId::new() };
        crate::vm::evolve(None, VmId::new(), None, OffsetDateTime::now_utc(), &created).unwrap()
    }

    #[test]
    fn a_snapshot_is_creating_then_ready_or_failed() {
        let (mut source, id, now) = (vm(), SnapshotId::new(), OffsetDateTime::now_utc());
        let requested = VmEvent::SnapshotRequested { snapshot: id, name: "base".into(), clones: Vec::new() };
        assert_eq!(concerned(&source, &requested), Some(id));
        let s = evolve(None, &source, None, now, &requested).unwrap();
        assert_eq!((s.status, s.source_vm, s.name.as_str(), s.spec.name.as_str()), (SnapshotStatus::Creating, source.id, "base", "src"));
        source.snapshotting = Some(id);
        let failed = VmEvent::OperationFinished { outcome: Outcome::Failed { code: "driver_error".into(), message: "disk full".into() } };
        assert_eq!(concerned(&source, &failed), Some(id));
        let f = evolve(Some(s.clone()), &source, None, now, &failed).unwrap();
        assert_eq!((f.status, f.message.as_deref()), (SnapshotStatus::Failed, Some("disk full")));
        let taken = VmEvent::SnapshotTaken { snapshot: id, taken: SnapshotTaken { size_bytes: 7, pause_ms: 3 } };
        let r = evolve(Some(s), &source, None, now, &taken).unwrap();
        assert_eq!((r.status, r.size_bytes, r.pause_ms), (SnapshotStatus::Ready, Some(7), Some(3)));
        let done = VmEvent::OperationFinished { outcome: Outcome::Succeeded };
        assert_eq!(evolve(Some(r.clone()), &source, None, now, &done), Some(r), "a ready snapshot stays ready");
        assert_eq!(concerned(&vm(), &done), None, "other operations make no snapshot");
    }

    #[test]
    fn a_clone_is_the_snapshots_machine_with_its_own_name() {
        let mut source = VmSpec::named("src");
        (source.vcpus, source.memory_mib, source.ssh_keys) = (2, 256, vec!["ssh-ed25519 AAAA k".into()]);
        let mut spec = VmSpec::named("clone");
        spec.labels.insert("a".into(), "b".into());
        let unset: BTreeSet<Field> = Field::ALL.into_iter().collect();
        fit_clone(&source, &mut spec, &unset).unwrap();
        assert_eq!((spec.vcpus, spec.memory_mib, spec.ssh_keys.len(), spec.name.as_str()), (2, 256, 1, "clone"));
        assert_eq!(spec.labels.len(), 1);

        // A bridge-mode source's mode is the clone's; its chosen address and MAC are not.
        source.network =
            NetworkSpec { mode: NetworkMode::Bridge, guest_ip: Some([10, 0, 0, 9].into()), guest_mac: Some("02:00:00:00:00:09".into()), ..source.network };
        let mut spec = VmSpec::named("clone");
        fit_clone(&source, &mut spec, &unset).unwrap();
        assert_eq!((spec.network.mode, spec.network.guest_ip, spec.network.guest_mac), (NetworkMode::Bridge, None, None));
        let mut spec = VmSpec::named("clone");
        let given: BTreeSet<Field> = unset.iter().copied().filter(|f| *f != Field::EnableNetwork).collect();
        assert_eq!(fit_clone(&source, &mut spec, &given).unwrap_err().field, "network", "user networking for a bridge-mode snapshot");

        let mut spec = VmSpec::named("clone");
        spec.memory_mib = 1024;
        let given: BTreeSet<Field> = unset.iter().copied().filter(|f| *f != Field::MemoryMib).collect();
        assert_eq!(fit_clone(&source, &mut spec, &given).unwrap_err().field, "memory_mib");
        spec.memory_mib = 256;
        fit_clone(&source, &mut spec, &given).expect("the snapshot's own size may be given");
    }
}
