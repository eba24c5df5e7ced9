//! The VM aggregate: its state, the commands it accepts, the events it emits,
//! and the pure functions between them.
//!
//! - [`decide`] turns a command into events, or refuses it.
//! - [`evolve`] folds one event into the state.
//! - [`next_step`] says which provisioning step the worker must run next; each
//!   step's completion is recorded by an event, so a command redelivered after
//!   a crash resumes exactly where the last recorded step left off.

use crate::ids::{HostId, OpId, OrgId, ProjectId, SnapshotId, VmId, VolumeId};
use crate::spec::{DataDisk, Protocol, VmSpec, VolumeMount};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Lifecycle status, as shown by every API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Pending,
    Provisioning,
    Starting,
    Running,
    Stopping,
    Stopped,
    Restarting,
    Standby,
    Restoring,
    Deleting,
    Deleted,
    Failed,
}

impl VmStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [VmStatus; 12] = [
        Self::Pending,
        Self::Provisioning,
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Restarting,
        Self::Standby,
        Self::Restoring,
        Self::Deleting,
        Self::Deleted,
        Self::Failed,
    ];

    /// The lowercase word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Restarting => "restarting",
            Self::Standby => "standby",
            Self::Restoring => "restoring",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for VmStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or(())
    }
}

/// What kind of operation a command starts; decides which step sequence runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Create,
    Start,
    Stop,
    Restart,
    Standby,
    Restore,
    Delete,
    AttachVolume,
    DetachVolume,
    ResizeMemory,
    Move,
    Snapshot,
    DeleteSnapshot,
    Flatten,
}

impl OpKind {
    /// The lowercase word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Standby => "standby",
            Self::Restore => "restore",
            Self::Delete => "delete",
            Self::AttachVolume => "attach_volume",
            Self::DetachVolume => "detach_volume",
            Self::Move => "move",
            Self::ResizeMemory => "resize_memory",
            Self::Snapshot => "snapshot",
            Self::DeleteSnapshot => "delete_snapshot",
            Self::Flatten => "flatten",
        }
    }
}

/// Commands on a VM, as appended by the gateway to the command stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VmCommand {
    Create {
        spec: Box<VmSpec>,
        host: HostId,
    },
    Start,
    Stop,
    Restart,
    Standby,
    Restore,
    Delete,
    /// Attach (hot-plug when running) a volume of the VM's host and mount it.
    AttachVolume {
        mount: VolumeMount,
    },
    /// Unmount and unplug a volume.
    DetachVolume {
        volume: VolumeId,
    },
    /// Grow a running VM's memory to `memory_mib` by hot-plugging memory,
    /// within the `hotplug_memory_mib` its spec reserved.
    ResizeMemory {
        memory_mib: u64,
    },
    /// Move a stopped VM and its root disk to another host (admin).
    Move {
        to: HostId,
    },
    /// Go on with a move on the host it was handed to: sent by the worker of
    /// the host it leaves, never by a client. Its operation is the move's.
    ResumeMove,
    /// Snapshot a running or standby VM's memory, devices and root disk as
    /// `snapshot`, which new VMs can resume from; a running VM keeps running.
    TakeSnapshot {
        snapshot: SnapshotId,
        name: String,
        /// When taken for a fork: the create operations of its clones, which
        /// the fork's operation (this command's) waits for as well.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clones: Vec<OpId>,
    },
    /// Delete a snapshot of this VM and free its files, or what a failed
    /// one left; allowed whatever the VM's status, deleted included (a
    /// snapshot outlives its VM). The gateway refuses it while VMs created
    /// from the snapshot exist.
    DeleteSnapshot {
        snapshot: SnapshotId,
    },
    /// Copy into a clone's own root disk what it still reads from its
    /// snapshot's disk, so that the snapshot can be deleted while the clone
    /// lives (a clone that has run never needs the snapshot's memory again).
    Flatten,
    /// End a create the gateway promised and then had to refuse: a fork's
    /// clone refused after the fork's snapshot was accepted (its operation
    /// is part of the fork's). Sent under the create's own operation id, so
    /// JetStream keeps whichever of the two came first; it fails that
    /// operation `create_refused` with `reason`, and changes no VM.
    CancelCreate {
        reason: String,
    },
}

impl VmCommand {
    /// The operation kind this command starts.
    pub fn kind(&self) -> OpKind {
        match self {
            Self::Create { .. } | Self::CancelCreate { .. } => OpKind::Create,
            Self::Start => OpKind::Start,
            Self::Stop => OpKind::Stop,
            Self::Restart => OpKind::Restart,
            Self::Standby => OpKind::Standby,
            Self::Restore => OpKind::Restore,
            Self::Delete => OpKind::Delete,
            Self::AttachVolume { .. } => OpKind::AttachVolume,
            Self::DetachVolume { .. } => OpKind::DetachVolume,
            Self::ResizeMemory { .. } => OpKind::ResizeMemory,
            Self::Move { .. } | Self::ResumeMove => OpKind::Move,
            Self::TakeSnapshot { .. } => OpKind::Snapshot,
            Self::DeleteSnapshot { .. } => OpKind::DeleteSnapshot,
            Self::Flatten => OpKind::Flatten,
        }
    }

    /// The kind its operation shows: the step sequence's, but `fork` for a
    /// snapshot taken for clones (its operation waits for them too).
    pub fn operation_kind(&self) -> &'static str {
        match self {
            Self::TakeSnapshot { clones, .. } if !clones.is_empty() => crate::snapshot::FORK_KIND,
            other => other.kind().as_str(),
        }
    }
}

/// Addresses the driver gave the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkRuntime {
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// Host port forwarded to guest port 22.
    pub ssh_port: Option<u16>,
    /// Forwards with their host ports resolved.
    pub port_forwards: Vec<ResolvedPortForward>,
}

/// The host's tap device of a VM in bridge mode (`vt` and the end of its
/// id): at most 15 bytes (IFNAMSIZ). Views show it; the qemu driver makes it.
pub fn tap_name(vm: VmId) -> String {
    let s = vm.to_string();
    format!("vt{}", &s[s.len() - 12..])
}

/// A port forward after the host port has been chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResolvedPortForward {
    pub guest_port: u16,
    pub host_port: u16,
    pub protocol: Protocol,
}

/// The root disk the driver prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskInfo {
    /// Driver-specific location (a path for file-backed drivers).
    pub location: String,
    pub size_gb: u32,
}

/// What a snapshot step made, as the driver measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTaken {
    /// Bytes the snapshot's files take on the host (memory, devices, disk).
    pub size_bytes: u64,
    /// How long the guest was paused while its state was copied, in ms
    /// (0 for a VM in standby).
    pub pause_ms: u64,
}

/// Why an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed { code: String, message: String },
}

/// Everything that can happen to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VmEvent {
    /// The VM exists and is placed on a host.
    Created {
        org: OrgId,
        project: ProjectId,
        spec: Box<VmSpec>,
        host: HostId,
    },
    /// The worker began provisioning.
    ProvisioningStarted,
    /// Provisioning step: addresses and port forwards allocated.
    NetworkAllocated {
        network: NetworkRuntime,
    },
    /// Provisioning step: root disk exists.
    DiskPrepared {
        disk: DiskInfo,
    },
    /// The hypervisor process for the guest is running.
    Booted,
    /// The guest reported readiness.
    Ready,
    StartRequested,
    StopRequested,
    RestartRequested,
    /// The guest rebooted in place.
    Rebooted,
    StandbyRequested,
    /// Memory and device state saved; the hypervisor process is gone.
    Snapshotted,
    RestoreRequested,
    /// The guest resumed from its snapshot with memory intact.
    Restored,
    /// The guest is off, on request or on its own.
    Stopped {
        reason: String,
    },
    DeleteRequested,
    /// The root disk the VM created from its image is now the root-disk
    /// volume `volume` (delete with `delete_root_disk: false`).
    RootDiskKept {
        volume: VolumeId,
    },
    /// Every resource of the VM is released.
    Deleted,
    /// The VM cannot reach its goal.
    Failed {
        message: String,
    },
    VolumeAttachRequested {
        mount: VolumeMount,
    },
    /// The volume is plugged in (and mounted, when the guest runs).
    VolumeAttached {
        mount: VolumeMount,
    },
    VolumeDetachRequested {
        volume: VolumeId,
    },
    VolumeDetached {
        volume: VolumeId,
    },
    MemoryResizeRequested {
        memory_mib: u64,
    },
    /// Memory was hot-plugged; the VM now has `memory_mib` in all.
    MemoryResized {
        memory_mib: u64,
    },
    /// A move to host `to` began.
    MoveRequested {
        to: HostId,
    },
    /// The host it leaves copied its root disk out for the move.
    DiskExported,
    /// The VM now belongs to host `to`; the host it left freed its copy.
    Moved {
        from: HostId,
        to: HostId,
    },
    /// The host it moved to holds its root disk now.
    DiskImported {
        disk: DiskInfo,
    },
    /// A snapshot of the VM named `name` began (`snapshot` is its id).
    SnapshotRequested {
        snapshot: SnapshotId,
        name: String,
        /// Taken for a fork: the create operations of its clones. This
        /// event's operation is then the fork's (kind `fork`), which ends
        /// once the snapshot and every clone's create have ended.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clones: Vec<OpId>,
    },
    /// The snapshot exists: new VMs can resume from it.
    SnapshotTaken {
        snapshot: SnapshotId,
        taken: SnapshotTaken,
    },
    /// Deleting the snapshot began.
    SnapshotDeleteRequested {
        snapshot: SnapshotId,
    },
    /// The snapshot's files are gone.
    SnapshotDeleted {
        snapshot: SnapshotId,
    },
    /// Flattening a clone's root disk began.
    FlattenRequested,
    /// The clone's root disk holds all its data: it no longer depends on its snapshot.
    DiskFlattened,
    /// The operation that the envelope names ended.
    OperationFinished {
        outcome: Outcome,
    },
}

impl VmEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::ProvisioningStarted => "provisioning_started",
            Self::NetworkAllocated { .. } => "network_allocated",
            Self::DiskPrepared { .. } => "disk_prepared",
            Self::Booted => "booted",
            Self::Ready => "ready",
            Self::StartRequested => "start_requested",
            Self::StopRequested => "stop_requested",
            Self::RestartRequested => "restart_requested",
            Self::Rebooted => "rebooted",
            Self::StandbyRequested => "standby_requested",
            Self::Snapshotted => "snapshotted",
            Self::RestoreRequested => "restore_requested",
            Self::Restored => "restored",
            Self::Stopped { .. } => "stopped",
            Self::DeleteRequested => "delete_requested",
            Self::RootDiskKept { .. } => "root_disk_kept",
            Self::Deleted => "deleted",
            Self::Failed { .. } => "failed",
            Self::VolumeAttachRequested { .. } => "volume_attach_requested",
            Self::VolumeAttached { .. } => "vm_volume_attached",
            Self::VolumeDetachRequested { .. } => "volume_detach_requested",
            Self::VolumeDetached { .. } => "vm_volume_detached",
            Self::MemoryResizeRequested { .. } => "memory_resize_requested",
            Self::MemoryResized { .. } => "memory_resized",
            Self::MoveRequested { .. } => "move_requested",
            Self::DiskExported => "disk_exported",
            Self::Moved { .. } => "moved",
            Self::DiskImported { .. } => "disk_imported",
            Self::SnapshotRequested { .. } => "snapshot_requested",
            Self::SnapshotTaken { .. } => "snapshot_taken",
            Self::SnapshotDeleteRequested { .. } => "snapshot_delete_requested",
            Self::SnapshotDeleted { .. } => "snapshot_deleted",
            Self::FlattenRequested => "flatten_requested",
            Self::DiskFlattened => "disk_flattened",
            Self::OperationFinished { .. } => "operation_finished",
        }
    }
}

/// An operation in flight on a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOp {
    pub id: OpId,
    pub kind: OpKind,
}

/// Memory is hot-plugged in whole Linux memory blocks (128 MiB on x86_64),
/// so every plugged MiB can be onlined by the guest.
pub const MEMORY_BLOCK_MIB: u64 = 128;

/// How many finished operation ids a VM remembers, so a command redelivered
/// after its operation finished is recognised and not run twice.
pub const REMEMBERED_OPS: usize = 32;

/// The state of one VM, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: VmId,
    pub org: OrgId,
    pub project: ProjectId,
    pub host: HostId,
    pub spec: VmSpec,
    pub status: VmStatus,
    /// Why the VM failed, or what it is doing.
    pub message: Option<String>,
    pub network: Option<NetworkRuntime>,
    pub root_disk: Option<DiskInfo>,
    /// The hypervisor process is running (or paused) for this VM.
    pub booted: bool,
    pub has_snapshot: bool,
    /// Volumes attached to the VM.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// The volume an attach operation is plugging in.
    #[serde(default)]
    pub attaching: Option<VolumeMount>,
    /// The volume a detach operation is unplugging.
    #[serde(default)]
    pub detaching: Option<VolumeId>,
    /// Memory hot-plugged since the last cold boot, in MiB.
    #[serde(default)]
    pub plugged_memory_mib: u64,
    /// The total a resize operation is growing memory to.
    #[serde(default)]
    pub resizing_to: Option<u64>,
    /// A move in progress.
    #[serde(default)]
    pub moving: Option<Moving>,
    /// The snapshot the operation in progress takes or deletes.
    #[serde(default)]
    pub snapshotting: Option<SnapshotId>,
    /// Its snapshots that exist (taken, not deleted).
    #[serde(default)]
    pub snapshots: BTreeSet<SnapshotId>,
    /// A clone whose root disk no longer reads its snapshot's (`disk_flattened`).
    #[serde(default)]
    pub flattened: bool,
    pub pending_op: Option<PendingOp>,
    pub finished_ops: VecDeque<OpId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub stopped_at: Option<OffsetDateTime>,
}

impl Vm {
    /// Memory the guest has now: the base plus what was hot-plugged.
    pub fn memory_mib(&self) -> u64 {
        self.spec.memory_mib + self.plugged_memory_mib
    }

    /// Whether `op` already ran to completion on this VM.
    pub fn has_finished(&self, op: OpId) -> bool {
        self.finished_ops.contains(&op)
    }
}

/// How far a move has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Moving {
    pub to: HostId,
    /// The root disk was copied out of the host it leaves.
    pub exported: bool,
    /// The host it moves to holds the root disk.
    pub imported: bool,
}

/// What deleting a VM does to a volume it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Given back, free for another VM.
    Release,
    /// Deleted with the VM (its own data disks), if the VM still holds it.
    Delete,
}

impl Vm {
    /// The next disk asked for at create that is not attached yet, as a step.
    /// Only until the VM was first ready: a disk detached later stays detached.
    fn disk_to_attach(&self) -> Option<Step> {
        if self.started_at.is_some() {
            return None;
        }
        let attached = |id: VolumeId| self.volumes.iter().any(|v| v.volume_id == id);
        let mut disks = self.spec.data_disks.iter().enumerate().map(|(i, d)| (data_disk_id(self.id, i), d));
        if let Some((id, disk)) = disks.find(|(id, _)| !attached(*id)) {
            return Some(Step::CreateDataDisk { mount: disk.mount(id), disk: disk.clone() });
        }
        self.spec.volumes.iter().find(|m| !attached(m.volume_id)).map(|m| Step::AttachAtCreate(m.clone()))
    }

    /// The volume the root disk becomes when the VM is deleted, if it is kept:
    /// a root disk the VM created from its image, with `delete_root_disk: false`.
    pub fn root_disk_to_keep(&self) -> Option<VolumeId> {
        (!self.spec.delete_root_disk && self.spec.root_volume.is_none() && self.root_disk.is_some()).then(|| kept_root_disk_id(self.id))
    }

    /// Every volume the VM may hold and what deleting the VM does to it: its
    /// own data disks go with it unless kept, everything else is released.
    pub fn disposal(&self) -> Vec<(VolumeId, Disposal)> {
        let mut out: Vec<(VolumeId, Disposal)> = self
            .spec
            .data_disks
            .iter()
            .enumerate()
            .map(|(i, d)| (data_disk_id(self.id, i), if d.delete_with_vm { Disposal::Delete } else { Disposal::Release }))
            .collect();
        let held = self.spec.root_volume.into_iter().chain(self.spec.volumes.iter().map(|m| m.volume_id)).chain(self.volumes.iter().map(|m| m.volume_id));
        for id in held {
            if !out.iter().any(|(o, _)| *o == id) {
                out.push((id, Disposal::Release));
            }
        }
        out
    }
}

/// The id of a volume a VM makes for itself, derived from the VM's id so that
/// a step run again after a crash finds the volume it made: the timestamp
/// (creation order) is the VM's, the random part the VM's mixed with `slot`.
fn own_volume_id(vm: VmId, slot: u64) -> VolumeId {
    VolumeId(ulid::Ulid(vm.0.0 ^ own_volume_mix(slot)))
}

/// What [`own_volume_id`] mixes into the random part for `slot`.
fn own_volume_mix(slot: u64) -> u128 {
    const RANDOM_BITS: u128 = (1 << 80) - 1;
    (u128::from(slot) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) & RANDOM_BITS
}

/// The volume a VM's root disk becomes when the VM is deleted with `delete_root_disk: false`.
pub fn kept_root_disk_id(vm: VmId) -> VolumeId {
    own_volume_id(vm, 0)
}

/// The VM whose root disk is (or would become) the volume `id`: the inverse
/// of [`kept_root_disk_id`]. For any other id it names a VM that does not exist.
pub fn root_disk_vm(id: VolumeId) -> VmId {
    VmId(ulid::Ulid(id.0.0 ^ own_volume_mix(0)))
}

/// The volume the VM's data disk number `index` (in its spec) is.
pub fn data_disk_id(vm: VmId, index: usize) -> VolumeId {
    own_volume_id(vm, index as u64 + 1)
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("vm not found")]
    NotFound,
    #[error("vm already exists")]
    AlreadyExists,
    #[error("cannot {action} a vm that is {status}")]
    InvalidState { action: &'static str, status: &'static str },
    #[error("vm has an operation in progress ({0:?}); retry when it finishes")]
    Busy(OpKind),
    #[error("that volume or mount path is already attached to this vm")]
    VolumeConflict,
    #[error("that volume is not attached to this vm")]
    VolumeNotAttached,
    #[error("{0}")]
    MemoryOutOfRange(String),
    /// A create cancelled by [`VmCommand::CancelCreate`].
    #[error("{0}")]
    CreateRefused(String),
}

impl DecideError {
    /// Machine-readable code, shared by HTTP errors and failed operations.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyExists => "conflict",
            Self::InvalidState { .. } | Self::Busy(_) => "invalid_state",
            Self::VolumeConflict => "volume_conflict",
            Self::VolumeNotAttached => "volume_not_attached",
            Self::MemoryOutOfRange(_) => "memory_out_of_range",
            Self::CreateRefused(_) => "create_refused",
        }
    }
}

/// Decide what a command does to a VM. `Ok(vec![])` never happens: a command
/// that changes nothing still finishes its operation, so it is recorded.
pub fn decide(state: Option<&Vm>, org: OrgId, project: ProjectId, cmd: &VmCommand) -> Result<Vec<VmEvent>, DecideError> {
    use VmStatus::*;
    let noop = || Ok(vec![VmEvent::OperationFinished { outcome: Outcome::Succeeded }]);
    let Some(vm) = state else {
        return match cmd {
            VmCommand::Create { spec, host } => Ok(vec![VmEvent::Created { org, project, spec: spec.clone(), host: *host }]),
            VmCommand::CancelCreate { reason } => Err(DecideError::CreateRefused(reason.clone())),
            _ => Err(DecideError::NotFound),
        };
    };
    if let VmCommand::Create { .. } | VmCommand::CancelCreate { .. } = cmd {
        return Err(DecideError::AlreadyExists);
    }
    if let VmCommand::DeleteSnapshot { snapshot } = cmd {
        if let Some(p) = &vm.pending_op {
            return Err(DecideError::Busy(p.kind));
        }
        // Also for one whose taking failed (it may have left files) or that
        // is gone already: removing nothing is harmless.
        return Ok(vec![VmEvent::SnapshotDeleteRequested { snapshot: *snapshot }]);
    }
    if vm.status == Deleted {
        return if *cmd == VmCommand::Delete { noop() } else { Err(DecideError::NotFound) };
    }
    if let Some(p) = &vm.pending_op
        && *cmd != VmCommand::Delete
    {
        return Err(DecideError::Busy(p.kind));
    }
    let refuse = |action| Err(DecideError::InvalidState { action, status: vm.status.as_str() });
    match cmd {
        VmCommand::Create { .. } | VmCommand::CancelCreate { .. } => unreachable!("handled above"),
        VmCommand::Start => match vm.status {
            Running | Starting | Pending | Provisioning | Restarting | Restoring => noop(),
            Stopped | Failed => Ok(vec![VmEvent::StartRequested]),
            Standby => refuse("start (restore it instead)"),
            Stopping | Deleting | Deleted => refuse("start"),
        },
        VmCommand::Stop => match vm.status {
            Stopped | Stopping => noop(),
            Running | Failed => Ok(vec![VmEvent::StopRequested]),
            _ => refuse("stop"),
        },
        VmCommand::Restart => match vm.status {
            Running => Ok(vec![VmEvent::RestartRequested]),
            _ => refuse("restart"),
        },
        VmCommand::Standby if vm.plugged_memory_mib > 0 => {
            Err(DecideError::InvalidState { action: "put on standby (memory was hot-plugged; restart it first)", status: vm.status.as_str() })
        }
        VmCommand::Standby => match vm.status {
            Standby => noop(),
            Running => Ok(vec![VmEvent::StandbyRequested]),
            _ => refuse("put on standby"),
        },
        VmCommand::Restore => match vm.status {
            Standby => Ok(vec![VmEvent::RestoreRequested]),
            _ => refuse("restore"),
        },
        VmCommand::Delete => match vm.status {
            Deleting => noop(),
            _ => Ok(vec![VmEvent::DeleteRequested]),
        },
        VmCommand::AttachVolume { mount } => match vm.status {
            Running | Stopped => {
                if vm.volumes.iter().any(|v| v == mount) {
                    return noop();
                }
                if vm.volumes.iter().any(|v| v.volume_id == mount.volume_id || (mount.mount_path.is_some() && v.mount_path == mount.mount_path)) {
                    return Err(DecideError::VolumeConflict);
                }
                Ok(vec![VmEvent::VolumeAttachRequested { mount: mount.clone() }])
            }
            _ => refuse("attach a volume to"),
        },
        VmCommand::ResizeMemory { memory_mib } => {
            let (current, max) = (vm.memory_mib(), vm.spec.memory_mib + vm.spec.hotplug_memory_mib);
            match vm.status {
                Running if *memory_mib == current => noop(),
                Running if *memory_mib < current => Err(DecideError::MemoryOutOfRange(format!("memory can only grow (now {current} MiB)"))),
                Running if *memory_mib > max => {
                    Err(DecideError::MemoryOutOfRange(format!("at most {max} MiB: memory_mib plus the hotplug_memory_mib reserved at create")))
                }
                Running if (*memory_mib - current) % MEMORY_BLOCK_MIB != 0 => {
                    Err(DecideError::MemoryOutOfRange(format!("memory grows in steps of {MEMORY_BLOCK_MIB} MiB (now {current} MiB)")))
                }
                Running => Ok(vec![VmEvent::MemoryResizeRequested { memory_mib: *memory_mib }]),
                _ => refuse("resize the memory of"),
            }
        }
        VmCommand::Move { to } if *to == vm.host => noop(),
        VmCommand::Move { .. } if !vm.volumes.is_empty() => {
            Err(DecideError::InvalidState { action: "move (detach its volumes and data disks first)", status: vm.status.as_str() })
        }
        VmCommand::Move { .. } if !vm.snapshots.is_empty() => {
            Err(DecideError::InvalidState { action: "move (its snapshots stay on this host; delete them first)", status: vm.status.as_str() })
        }
        VmCommand::Move { to } => match vm.status {
            Stopped => Ok(vec![VmEvent::MoveRequested { to: *to }]),
            _ => refuse("move (stop it first)"),
        },
        VmCommand::ResumeMove => refuse("resume a move of"),
        VmCommand::TakeSnapshot { .. } if vm.spec.hotplug_memory_mib > 0 => {
            Err(DecideError::InvalidState { action: "snapshot (a vm with hot-pluggable memory)", status: vm.status.as_str() })
        }
        VmCommand::TakeSnapshot { .. } if !vm.volumes.is_empty() || vm.spec.gpu.is_some() => {
            Err(DecideError::InvalidState { action: "snapshot (a vm with volumes or GPUs; detach its volumes first)", status: vm.status.as_str() })
        }
        VmCommand::DeleteSnapshot { .. } => unreachable!("handled above"),
        VmCommand::Flatten if vm.spec.from_snapshot.is_none() => refuse("flatten (a vm not created from a snapshot)"),
        VmCommand::Flatten if vm.flattened => noop(),
        // Its first start still resumes the snapshot's memory.
        VmCommand::Flatten if vm.started_at.is_none() => refuse("flatten (a clone that has not run yet)"),
        VmCommand::Flatten => match vm.status {
            Running | Stopped | Standby => Ok(vec![VmEvent::FlattenRequested]),
            _ => refuse("flatten"),
        },
        VmCommand::TakeSnapshot { snapshot, name, clones } => match vm.status {
            Running | Standby => Ok(vec![VmEvent::SnapshotRequested { snapshot: *snapshot, name: name.clone(), clones: clones.clone() }]),
            _ => refuse("snapshot"),
        },
        VmCommand::DetachVolume { volume } => match vm.status {
            Running | Stopped if vm.volumes.iter().any(|v| v.volume_id == *volume) => Ok(vec![VmEvent::VolumeDetachRequested { volume: *volume }]),
            Running | Stopped => Err(DecideError::VolumeNotAttached),
            _ => refuse("detach a volume from"),
        },
    }
}

/// Fold one event into a VM's state. `op` is the operation named by the event's
/// envelope; `at` its time. Events that make no sense for the state (which the
/// worker never appends) leave it unchanged rather than corrupting it.
pub fn evolve(state: Option<Vm>, id: VmId, op: Option<OpId>, at: OffsetDateTime, event: &VmEvent) -> Option<Vm> {
    use VmStatus::*;
    if let VmEvent::Created { org, project, spec, host } = event {
        if state.is_some() {
            return state;
        }
        return Some(Vm {
            id,
            org: *org,
            project: *project,
            host: *host,
            spec: (**spec).clone(),
            status: Pending,
            message: None,
            network: None,
            root_disk: None,
            booted: false,
            has_snapshot: false,
            volumes: Vec::new(),
            attaching: None,
            detaching: None,
            plugged_memory_mib: 0,
            resizing_to: None,
            moving: None,
            snapshotting: None,
            snapshots: BTreeSet::new(),
            flattened: false,
            pending_op: op.map(|id| PendingOp { id, kind: OpKind::Create }),
            finished_ops: VecDeque::new(),
            created_at: at,
            updated_at: at,
            started_at: None,
            stopped_at: None,
        });
    }
    let mut vm = state?;
    vm.updated_at = at;
    let begin = |vm: &mut Vm, kind: OpKind, status: VmStatus| {
        vm.status = status;
        vm.message = None;
        if let Some(id) = op {
            vm.pending_op = Some(PendingOp { id, kind });
        }
    };
    match event {
        VmEvent::Created { .. } => unreachable!("handled above"),
        VmEvent::ProvisioningStarted => vm.status = Provisioning,
        VmEvent::NetworkAllocated { network } => vm.network = Some(network.clone()),
        VmEvent::DiskPrepared { disk } => vm.root_disk = Some(disk.clone()),
        VmEvent::MemoryResizeRequested { memory_mib } => {
            if let Some(id) = op {
                vm.pending_op = Some(PendingOp { id, kind: OpKind::ResizeMemory });
            }
            vm.resizing_to = Some(*memory_mib);
        }
        VmEvent::MemoryResized { memory_mib } => {
            vm.plugged_memory_mib = memory_mib.saturating_sub(vm.spec.memory_mib);
            vm.resizing_to = None;
        }
        VmEvent::Booted => {
            // A cold boot starts from the base memory again.
            vm.plugged_memory_mib = 0;
            vm.booted = true;
            vm.status = Starting;
        }
        VmEvent::Ready | VmEvent::Restored => {
            vm.booted = true;
            vm.has_snapshot = false;
            vm.status = Running;
            vm.message = None;
            vm.started_at = Some(at);
        }
        VmEvent::StartRequested => {
            // Boot again; booting is idempotent, so a guest still running is adopted.
            vm.booted = false;
            begin(&mut vm, OpKind::Start, Starting);
        }
        VmEvent::StopRequested => begin(&mut vm, OpKind::Stop, Stopping),
        VmEvent::RestartRequested => begin(&mut vm, OpKind::Restart, Restarting),
        VmEvent::Rebooted => vm.status = Starting,
        VmEvent::StandbyRequested => {
            begin(&mut vm, OpKind::Standby, Stopping);
            vm.message = Some("saving memory and device state".into());
        }
        VmEvent::Snapshotted => {
            vm.booted = false;
            vm.has_snapshot = true;
            vm.status = Standby;
            vm.message = None;
            vm.stopped_at = Some(at);
        }
        VmEvent::RestoreRequested => begin(&mut vm, OpKind::Restore, Restoring),
        VmEvent::Stopped { reason } => {
            vm.booted = false;
            vm.status = Stopped;
            vm.message = Some(reason.clone());
            vm.stopped_at = Some(at);
        }
        VmEvent::DeleteRequested => begin(&mut vm, OpKind::Delete, Deleting),
        VmEvent::RootDiskKept { .. } => vm.root_disk = None,
        VmEvent::Deleted => {
            vm.booted = false;
            vm.has_snapshot = false;
            vm.status = Deleted;
            vm.message = None;
            vm.network = None;
            vm.root_disk = None;
            vm.volumes.clear();
        }
        VmEvent::Failed { message } => {
            vm.status = Failed;
            vm.message = Some(message.clone());
        }
        VmEvent::VolumeAttachRequested { mount } => {
            if let Some(id) = op {
                vm.pending_op = Some(PendingOp { id, kind: OpKind::AttachVolume });
            }
            vm.attaching = Some(mount.clone());
        }
        VmEvent::VolumeAttached { mount } => {
            vm.volumes.retain(|v| v.volume_id != mount.volume_id);
            vm.volumes.push(mount.clone());
            vm.attaching = None;
        }
        VmEvent::VolumeDetachRequested { volume } => {
            if let Some(id) = op {
                vm.pending_op = Some(PendingOp { id, kind: OpKind::DetachVolume });
            }
            vm.detaching = Some(*volume);
        }
        VmEvent::VolumeDetached { volume } => {
            vm.volumes.retain(|v| v.volume_id != *volume);
            vm.detaching = None;
        }
        VmEvent::MoveRequested { to } => {
            if let Some(id) = op {
                vm.pending_op = Some(PendingOp { id, kind: OpKind::Move });
            }
            vm.moving = Some(Moving { to: *to, exported: false, imported: false });
            vm.message = Some(format!("moving to host {to}"));
        }
        VmEvent::DiskExported => {
            if let Some(m) = &mut vm.moving {
                m.exported = true;
            }
        }
        VmEvent::Moved { to, .. } => {
            vm.host = *to;
            // Addresses and host ports were the old host's: the next start allocates new ones.
            vm.network = None;
            vm.root_disk = None;
        }
        VmEvent::DiskImported { disk } => {
            vm.root_disk = Some(disk.clone());
            if let Some(m) = &mut vm.moving {
                m.imported = true;
            }
        }
        VmEvent::SnapshotRequested { snapshot, .. } => {
            if let Some(id) = op {
                vm.pending_op = Some(PendingOp { id, kind: OpKind::Snapshot });
            }
            vm.snapshotting = Some(*snapshot);
        }
        VmEvent::SnapshotTaken { snapshot, .. } => {
            vm.snapshotting = None;
            vm.snapshots.insert(*snapshot);
        }
        VmEvent::SnapshotDeleteRequested { snapshot } => {
            if let Some(id) = op {
                vm.pending_op = Some(PendingOp { id, kind: OpKind::DeleteSnapshot });
            }
            vm.snapshotting = Some(*snapshot);
        }
        VmEvent::SnapshotDeleted { snapshot } => {
            vm.snapshotting = None;
            vm.snapshots.remove(snapshot);
        }
        VmEvent::FlattenRequested => {
            if let Some(id) = op {
                vm.pending_op = Some(PendingOp { id, kind: OpKind::Flatten });
            }
        }
        VmEvent::DiskFlattened => vm.flattened = true,
        VmEvent::OperationFinished { .. } => {
            // A queued command that failed before it began (its host was
            // unavailable) ends its own operation, not the one in progress.
            if op.is_none() || vm.pending_op.as_ref().is_none_or(|p| Some(p.id) == op) {
                vm.resizing_to = None;
                vm.attaching = None;
                vm.detaching = None;
                vm.snapshotting = None;
                if vm.moving.take().is_some() && vm.status != Failed {
                    vm.message = None;
                }
            }
            if let Some(op) = op {
                if let Some(p) = vm.pending_op.take_if(|p| p.id == op)
                    && p.kind == OpKind::Standby
                    && vm.status == Stopping
                {
                    // The snapshot failed and the driver resumed the guest: it runs as before.
                    vm.status = Running;
                    vm.message = None;
                }
                if !vm.finished_ops.contains(&op) {
                    vm.finished_ops.push_back(op);
                    if vm.finished_ops.len() > REMEMBERED_OPS {
                        vm.finished_ops.pop_front();
                    }
                }
            }
        }
    }
    Some(vm)
}

/// One unit of work the worker performs against the hypervisor driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record that provisioning began (no driver call).
    BeginProvisioning,
    AllocateNetwork,
    PrepareDisk,
    /// Start the hypervisor process (cold boot).
    Boot,
    /// Wait for the guest's readiness signal.
    AwaitReady,
    /// Power the guest off: graceful first, then hard.
    PowerOff,
    Reboot,
    Snapshot,
    RestoreSnapshot,
    Destroy,
    /// Create a data disk as a volume of the VM and plug it in (before the first boot).
    CreateDataDisk {
        mount: VolumeMount,
        disk: DataDisk,
    },
    /// Claim a volume named at create and plug it in (before the first boot).
    AttachAtCreate(VolumeMount),
    /// Make the root disk the root-disk volume with this id (a delete that keeps it).
    KeepRootDisk(VolumeId),
    /// Plug in (and mount) a volume.
    AttachVolume(VolumeMount),
    /// Hot-plug memory so the VM has this many MiB in all.
    PlugMemory(u64),
    /// Unmount and unplug a volume.
    DetachVolume(VolumeId),
    /// Copy the root disk out of the host the VM leaves (its worker).
    ExportDisk,
    /// Free the leaving host's copy and give the VM to host `to`.
    HandOver {
        from: HostId,
        to: HostId,
    },
    /// Bring the exported root disk onto the VM's new host (its worker).
    ImportDisk,
    /// Save memory, devices and root disk as this snapshot; the guest goes on.
    TakeSnapshot(SnapshotId),
    /// Remove this snapshot's files.
    DeleteSnapshot(SnapshotId),
    /// Copy what a clone's root disk reads from its snapshot's into it, and
    /// drop the snapshot as its backing file.
    FlattenDisk,
    /// Nothing left to do: finish the operation.
    Finish(Outcome),
}

impl Step {
    /// A stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::BeginProvisioning => "begin_provisioning",
            Self::AllocateNetwork => "allocate_network",
            Self::PrepareDisk => "prepare_disk",
            Self::Boot => "boot",
            Self::AwaitReady => "await_ready",
            Self::PowerOff => "power_off",
            Self::Reboot => "reboot",
            Self::Snapshot => "snapshot",
            Self::RestoreSnapshot => "restore",
            Self::Destroy => "destroy",
            Self::CreateDataDisk { .. } => "create_data_disk",
            Self::AttachAtCreate(_) => "attach_at_create",
            Self::KeepRootDisk(_) => "keep_root_disk",
            Self::AttachVolume(_) => "attach_volume",
            Self::DetachVolume(_) => "detach_volume",
            Self::PlugMemory(_) => "plug_memory",
            Self::ExportDisk => "export_disk",
            Self::HandOver { .. } => "hand_over",
            Self::ImportDisk => "import_disk",
            Self::TakeSnapshot(_) => "take_snapshot",
            Self::DeleteSnapshot(_) => "delete_snapshot",
            Self::FlattenDisk => "flatten_disk",
            Self::Finish(_) => "finish",
        }
    }

    /// Whether the VM itself fails when this step fails. Live volume, memory
    /// and snapshot steps only fail their operation: the driver leaves the
    /// guest as it was (a failed snapshot resumes it), so the VM keeps running.
    /// Disks asked for at create fail the create, and with it the VM.
    pub fn failure_fails_vm(&self) -> bool {
        !matches!(
            self,
            Self::AttachVolume(_)
                | Self::DetachVolume(_)
                | Self::PlugMemory(_)
                | Self::Snapshot
                | Self::TakeSnapshot(_)
                | Self::DeleteSnapshot(_)
                | Self::FlattenDisk
                | Self::ExportDisk
                | Self::HandOver { .. }
        )
    }
}

/// The next step for the VM's pending operation, or `None` when there is none.
/// A failed VM with an operation pending finishes that operation as failed.
pub fn next_step(vm: &Vm) -> Option<Step> {
    use VmStatus::*;
    let op = vm.pending_op.as_ref()?;
    // Whatever the VM's status: a snapshot outlives its VM's troubles.
    if op.kind == OpKind::DeleteSnapshot {
        return Some(vm.snapshotting.map_or(Step::Finish(Outcome::Succeeded), Step::DeleteSnapshot));
    }
    if vm.status == Failed {
        let message = vm.message.clone().unwrap_or_else(|| "failed".into());
        return Some(Step::Finish(Outcome::Failed { code: "failed".into(), message }));
    }
    let bring_up = |vm: &Vm| {
        if vm.network.is_none() {
            Step::AllocateNetwork
        } else if vm.root_disk.is_none() {
            Step::PrepareDisk
        } else if let Some(disk) = vm.disk_to_attach() {
            disk
        } else if !vm.booted {
            Step::Boot
        } else {
            Step::AwaitReady
        }
    };
    Some(match (op.kind, vm.status) {
        (OpKind::Create, Pending) => Step::BeginProvisioning,
        (OpKind::Create | OpKind::Start, Provisioning | Starting) => bring_up(vm),
        (OpKind::Stop, Stopping) => Step::PowerOff,
        (OpKind::Restart, Restarting) => Step::Reboot,
        (OpKind::Restart, Starting) => Step::AwaitReady,
        (OpKind::Standby, Stopping) => Step::Snapshot,
        (OpKind::Restore, Restoring) => Step::RestoreSnapshot,
        // A clone's disk kept as a volume must not read its snapshot's, which may go once the clone has.
        (OpKind::Delete, Deleting) => match vm.root_disk_to_keep() {
            Some(_) if vm.spec.from_snapshot.is_some() && !vm.flattened => Step::FlattenDisk,
            keep => keep.map_or(Step::Destroy, Step::KeepRootDisk),
        },
        (OpKind::AttachVolume, Running | Stopped) => match &vm.attaching {
            Some(mount) => Step::AttachVolume(mount.clone()),
            None => Step::Finish(Outcome::Succeeded),
        },
        (OpKind::ResizeMemory, Running) => match vm.resizing_to {
            Some(total) => Step::PlugMemory(total),
            None => Step::Finish(Outcome::Succeeded),
        },
        (OpKind::Move, Stopped) => match vm.moving {
            Some(Moving { exported: false, .. }) => Step::ExportDisk,
            Some(Moving { to, .. }) if to != vm.host => Step::HandOver { from: vm.host, to },
            Some(Moving { imported: false, .. }) => Step::ImportDisk,
            _ => Step::Finish(Outcome::Succeeded),
        },
        (OpKind::Snapshot, Running | Standby) => match vm.snapshotting {
            Some(snapshot) => Step::TakeSnapshot(snapshot),
            None => Step::Finish(Outcome::Succeeded),
        },
        (OpKind::Flatten, Running | Stopped | Standby) => {
            if vm.flattened {
                Step::Finish(Outcome::Succeeded)
            } else {
                Step::FlattenDisk
            }
        }
        (OpKind::DetachVolume, Running | Stopped) => match vm.detaching {
            Some(volume) => Step::DetachVolume(volume),
            None => Step::Finish(Outcome::Succeeded),
        },
        (OpKind::Create | OpKind::Start | OpKind::Restart | OpKind::Restore, Running)
        | (OpKind::Stop, Stopped)
        | (OpKind::Standby, Standby)
        | (OpKind::Delete, Deleted) => Step::Finish(Outcome::Succeeded),
        (kind, status) => {
            Step::Finish(Outcome::Failed { code: "interrupted".into(), message: format!("{kind:?} operation interrupted: vm became {}", status.as_str()) })
        }
    })
}

/// The event that records a step's success. Steps with a payload
/// (network, disk) take it from the driver instead.
pub fn step_event(step: &Step) -> Option<VmEvent> {
    Some(match step {
        Step::BeginProvisioning => VmEvent::ProvisioningStarted,
        Step::Boot => VmEvent::Booted,
        Step::AwaitReady => VmEvent::Ready,
        Step::PowerOff => VmEvent::Stopped { reason: "stopped on request".into() },
        Step::Reboot => VmEvent::Rebooted,
        Step::Snapshot => VmEvent::Snapshotted,
        Step::RestoreSnapshot => VmEvent::Restored,
        Step::Destroy => VmEvent::Deleted,
        Step::CreateDataDisk { mount, .. } | Step::AttachAtCreate(mount) | Step::AttachVolume(mount) => VmEvent::VolumeAttached { mount: mount.clone() },
        Step::KeepRootDisk(volume) => VmEvent::RootDiskKept { volume: *volume },
        Step::DetachVolume(volume) => VmEvent::VolumeDetached { volume: *volume },
        Step::PlugMemory(total) => VmEvent::MemoryResized { memory_mib: *total },
        Step::ExportDisk => VmEvent::DiskExported,
        Step::HandOver { from, to } => VmEvent::Moved { from: *from, to: *to },
        Step::DeleteSnapshot(snapshot) => VmEvent::SnapshotDeleted { snapshot: *snapshot },
        Step::FlattenDisk => VmEvent::DiskFlattened,
        Step::Finish(outcome) => VmEvent::OperationFinished { outcome: outcome.clone() },
        Step::AllocateNetwork | Step::PrepareDisk | Step::ImportDisk | Step::TakeSnapshot(_) => return None,
    })
}

#[cfg(test)]
mod tests;
