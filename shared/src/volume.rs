//! The volume aggregate: a block device on one host that outlives the VMs it
//! is attached to. A volume is attached to at most one VM; the VM's attach
//! operation claims it (an event on the volume, guarded by its subject
//! sequence) before hot-plugging it, and releases it on detach or VM delete.
//!
//! A VM also makes volumes for itself: its data disks (created attached to
//! it) and, when it is deleted with `delete_root_disk: false`, its root disk
//! (a root-disk volume, which names the image it holds and can boot a VM).

use crate::ids::{HostId, OpId, OrgId, ProjectId, VmId};
use crate::spec::{DiskKind, MAX_DISK_GB, SpecError, is_dns_label};
use crate::vm::Outcome;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// What a volume is asked to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// DNS label.
    pub name: String,
    pub size_gb: u32,
    /// `block` (default) or `filesystem`; a qcow2 file on the host either way.
    #[serde(default, rename = "type")]
    pub kind: DiskKind,
}

impl VolumeSpec {
    /// Every rule a volume spec must satisfy.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.name) {
            return Err(SpecError { field: "name", reason: "must be a DNS label".into() });
        }
        if !(1..=MAX_DISK_GB).contains(&self.size_gb) {
            return Err(SpecError { field: "size_gb", reason: format!("must be between 1 and {MAX_DISK_GB}") });
        }
        Ok(())
    }
}

/// Lifecycle of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeStatus {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Failed,
}

/// Commands on a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VolumeCommand {
    Create { spec: VolumeSpec, host: HostId },
    Delete,
}

/// Everything that can happen to a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VolumeEvent {
    VolumeCreated {
        org: OrgId,
        project: ProjectId,
        spec: VolumeSpec,
        host: HostId,
        /// A data disk: created by this VM for itself, attached to it from the start.
        #[serde(default)]
        attached_to: Option<VmId>,
        /// A root disk: the image it holds, which a VM booting from it runs.
        #[serde(default)]
        image: Option<String>,
    },
    /// The backing file exists.
    VolumeReady {
        location: String,
    },
    /// Claimed by a VM's attach operation.
    VolumeAttached {
        vm: VmId,
    },
    /// Released by a VM (detach, or the VM was deleted).
    VolumeDetached {
        vm: VmId,
    },
    VolumeDeleteRequested,
    VolumeDeleted,
    VolumeFailed {
        message: String,
    },
    VolumeOperationFinished {
        outcome: Outcome,
    },
}

impl VolumeEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::VolumeCreated { .. } => "volume_created",
            Self::VolumeReady { .. } => "volume_ready",
            Self::VolumeAttached { .. } => "volume_attached",
            Self::VolumeDetached { .. } => "volume_detached",
            Self::VolumeDeleteRequested => "volume_delete_requested",
            Self::VolumeDeleted => "volume_deleted",
            Self::VolumeFailed { .. } => "volume_failed",
            Self::VolumeOperationFinished { .. } => "volume_operation_finished",
        }
    }
}

/// A volume's state, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: crate::ids::VolumeId,
    pub org: OrgId,
    pub project: ProjectId,
    pub host: HostId,
    pub spec: VolumeSpec,
    pub status: VolumeStatus,
    pub message: Option<String>,
    pub location: Option<String>,
    pub attached_to: Option<VmId>,
    /// Set for a root disk: the image it holds.
    #[serde(default)]
    pub image: Option<String>,
    pub pending_op: Option<OpId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Why a volume command or claim is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("volume not found")]
    NotFound,
    #[error("volume already exists")]
    AlreadyExists,
    #[error("volume is attached to {0}; detach it first")]
    InUse(VmId),
    #[error("volume is {0:?}, not available")]
    NotAvailable(VolumeStatus),
    #[error("volume is not attached to {0}")]
    NotAttachedTo(VmId),
    #[error("volume lives on another host than the vm")]
    OtherHost,
    #[error("the volumes a vm attaches must all be on one host")]
    HostsDiffer,
    #[error("volume is not a root disk (only a root disk kept from a deleted vm can boot one)")]
    NotRootDisk,
    #[error("root disk holds image `{0}`, not the vm's")]
    OtherImage(String),
}

impl VolumeError {
    /// Machine-readable code, shared by HTTP errors and failed operations.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyExists => "conflict",
            Self::InUse(_) => "volume_in_use",
            Self::NotAvailable(_) | Self::NotAttachedTo(_) => "invalid_state",
            Self::OtherHost | Self::HostsDiffer => "volume_on_other_host",
            Self::NotRootDisk | Self::OtherImage(_) => "not_a_root_disk",
        }
    }
}

/// Decide a volume command.
pub fn decide(state: Option<&Volume>, org: OrgId, project: ProjectId, cmd: &VolumeCommand) -> Result<Vec<VolumeEvent>, VolumeError> {
    match (state, cmd) {
        (None, VolumeCommand::Create { spec, host }) => {
            Ok(vec![VolumeEvent::VolumeCreated { org, project, spec: spec.clone(), host: *host, attached_to: None, image: None }])
        }
        (Some(_), VolumeCommand::Create { .. }) => Err(VolumeError::AlreadyExists),
        (None, VolumeCommand::Delete) => Err(VolumeError::NotFound),
        (Some(v), VolumeCommand::Delete) => match (v.status, v.attached_to) {
            (_, Some(vm)) => Err(VolumeError::InUse(vm)),
            (VolumeStatus::Deleted | VolumeStatus::Deleting, _) => Ok(vec![VolumeEvent::VolumeOperationFinished { outcome: Outcome::Succeeded }]),
            _ => Ok(vec![VolumeEvent::VolumeDeleteRequested]),
        },
    }
}

/// Decide whether `vm` (on `host`) may claim the volume.
pub fn claim(state: Option<&Volume>, vm: VmId, host: HostId) -> Result<Option<VolumeEvent>, VolumeError> {
    let v = state.ok_or(VolumeError::NotFound)?;
    match (v.attached_to, v.status) {
        (Some(owner), _) if owner == vm => Ok(None),
        (Some(owner), _) => Err(VolumeError::InUse(owner)),
        (None, VolumeStatus::Available) if v.host == host => Ok(Some(VolumeEvent::VolumeAttached { vm })),
        (None, VolumeStatus::Available) => Err(VolumeError::OtherHost),
        (None, s) => Err(VolumeError::NotAvailable(s)),
    }
}

/// Decide whether `vm` (on `host`, running `image`) may boot from the volume:
/// a root disk of that image that [`claim`] lets it have.
pub fn claim_root(state: Option<&Volume>, vm: VmId, host: HostId, image: &str) -> Result<Option<VolumeEvent>, VolumeError> {
    match state.ok_or(VolumeError::NotFound)?.image.as_deref() {
        None => Err(VolumeError::NotRootDisk),
        Some(held) if held != image => Err(VolumeError::OtherImage(held.to_owned())),
        Some(_) => claim(state, vm, host),
    }
}

/// The host a new VM must be placed on to attach these volumes at create:
/// each must be free (or already `vm`'s, on a retry) and all on one host.
/// `None` when there are none.
pub fn host_for_create<'a>(vm: VmId, volumes: impl IntoIterator<Item = &'a Volume>) -> Result<Option<HostId>, VolumeError> {
    let mut host = None;
    for v in volumes {
        match (v.attached_to, v.status) {
            (Some(owner), _) if owner == vm => {}
            (Some(owner), _) => return Err(VolumeError::InUse(owner)),
            (None, VolumeStatus::Available) => {}
            (None, s) => return Err(VolumeError::NotAvailable(s)),
        }
        if host.replace(v.host).is_some_and(|h| h != v.host) {
            return Err(VolumeError::HostsDiffer);
        }
    }
    Ok(host)
}

/// The event that starts deleting a volume with the VM that holds it (its
/// own data disk), bypassing the rule that an attached volume cannot be
/// deleted; `None` when `vm` does not hold it or its deletion began already.
pub fn delete_with(state: Option<&Volume>, vm: VmId) -> Option<VolumeEvent> {
    state
        .filter(|v| v.attached_to == Some(vm) && !matches!(v.status, VolumeStatus::Deleting | VolumeStatus::Deleted))
        .map(|_| VolumeEvent::VolumeDeleteRequested)
}

/// The event releasing the volume from `vm`, if it holds it.
pub fn release(state: Option<&Volume>, vm: VmId) -> Option<VolumeEvent> {
    state.filter(|v| v.attached_to == Some(vm)).map(|_| VolumeEvent::VolumeDetached { vm })
}

/// Fold one event into a volume's state.
pub fn evolve(state: Option<Volume>, id: crate::ids::VolumeId, op: Option<OpId>, at: OffsetDateTime, event: &VolumeEvent) -> Option<Volume> {
    if let VolumeEvent::VolumeCreated { org, project, spec, host, attached_to, image } = event {
        return state.or_else(|| {
            Some(Volume {
                id,
                org: *org,
                project: *project,
                host: *host,
                spec: spec.clone(),
                status: VolumeStatus::Creating,
                message: None,
                location: None,
                attached_to: *attached_to,
                image: image.clone(),
                pending_op: op,
                created_at: at,
                updated_at: at,
            })
        });
    }
    let mut v = state?;
    v.updated_at = at;
    match event {
        VolumeEvent::VolumeCreated { .. } => unreachable!("handled above"),
        VolumeEvent::VolumeReady { location } => {
            v.location = Some(location.clone());
            v.status = if v.attached_to.is_some() { VolumeStatus::InUse } else { VolumeStatus::Available };
        }
        VolumeEvent::VolumeAttached { vm } => {
            v.attached_to = Some(*vm);
            v.status = VolumeStatus::InUse;
        }
        VolumeEvent::VolumeDetached { vm } => {
            if v.attached_to == Some(*vm) {
                v.attached_to = None;
                if v.status == VolumeStatus::InUse {
                    v.status = VolumeStatus::Available;
                }
            }
        }
        VolumeEvent::VolumeDeleteRequested => {
            v.status = VolumeStatus::Deleting;
            v.pending_op = op;
        }
        VolumeEvent::VolumeDeleted => {
            v.status = VolumeStatus::Deleted;
            v.location = None;
        }
        VolumeEvent::VolumeFailed { message } => {
            v.status = VolumeStatus::Failed;
            v.message = Some(message.clone());
        }
        VolumeEvent::VolumeOperationFinished { .. } => {
            if v.pending_op == op {
                v.pending_op = None;
            }
        }
    }
    Some(v)
}

/// One unit of volume work for the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeStep {
    /// Create the backing storage.
    Create,
    /// Remove the backing storage.
    Delete,
    Finish(Outcome),
}

/// The next step of the volume's pending operation, if any.
pub fn next_step(v: &Volume) -> Option<VolumeStep> {
    v.pending_op?;
    Some(match v.status {
        VolumeStatus::Creating => VolumeStep::Create,
        VolumeStatus::Deleting => VolumeStep::Delete,
        VolumeStatus::Failed => VolumeStep::Finish(Outcome::Failed { code: "failed".into(), message: v.message.clone().unwrap_or_default() }),
        VolumeStatus::Available | VolumeStatus::InUse | VolumeStatus::Deleted => VolumeStep::Finish(Outcome::Succeeded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VolumeId;

    fn at() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn ready(host: HostId) -> (Option<Volume>, VolumeId) {
        let id = VolumeId::new();
        let spec = VolumeSpec { name: "data".into(), size_gb: 1, kind: DiskKind::Block };
        let mut v = None;
        for e in decide(None, OrgId::DEFAULT, ProjectId::DEFAULT, &VolumeCommand::Create { spec, host }).unwrap() {
            v = evolve(v, id, None, at(), &e);
        }
        v = evolve(v, id, None, at(), &VolumeEvent::VolumeReady { location: "/x".into() });
        (v, id)
    }

    #[test]
    fn spec_rules() {
        VolumeSpec { name: "data".into(), size_gb: 10, kind: DiskKind::Block }.validate().unwrap();
        assert_eq!(VolumeSpec { name: "Data".into(), size_gb: 10, kind: DiskKind::Block }.validate().unwrap_err().field, "name");
        assert_eq!(VolumeSpec { name: "d".into(), size_gb: 0, kind: DiskKind::Block }.validate().unwrap_err().field, "size_gb");
        let parse = |json: &str| serde_json::from_str::<VolumeSpec>(json).map(|s| s.kind);
        assert!(parse(r#"{"name":"d","size_gb":1,"type":"nvme"}"#).is_err());
        assert_eq!(parse(r#"{"name":"d","size_gb":1}"#).unwrap(), DiskKind::Block);
        assert_eq!(parse(r#"{"name":"d","size_gb":1,"type":"filesystem"}"#).unwrap(), DiskKind::Filesystem);
        // Volumes recorded before disk types existed were `standard`: block devices.
        assert_eq!(parse(r#"{"name":"d","size_gb":1,"type":"standard"}"#).unwrap(), DiskKind::Block);
    }

    #[test]
    fn one_vm_at_a_time_and_only_on_its_host() {
        let host = HostId::new();
        let (mut v, id) = ready(host);
        assert_eq!(v.as_ref().unwrap().status, VolumeStatus::Available);
        let (a, b) = (VmId::new(), VmId::new());
        assert_eq!(claim(v.as_ref(), a, HostId::new()), Err(VolumeError::OtherHost));
        let ev = claim(v.as_ref(), a, host).unwrap().unwrap();
        v = evolve(v, id, None, at(), &ev);
        assert_eq!(v.as_ref().unwrap().status, VolumeStatus::InUse);
        assert_eq!(claim(v.as_ref(), a, host), Ok(None), "re-claim by the holder is a no-op");
        assert_eq!(claim(v.as_ref(), b, host), Err(VolumeError::InUse(a)));
        assert_eq!(decide(v.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VolumeCommand::Delete), Err(VolumeError::InUse(a)));
        assert_eq!(release(v.as_ref(), b), None);
        let ev = release(v.as_ref(), a).unwrap();
        v = evolve(v, id, None, at(), &ev);
        assert_eq!(v.as_ref().unwrap().status, VolumeStatus::Available);
        assert_eq!(decide(v.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VolumeCommand::Delete), Ok(vec![VolumeEvent::VolumeDeleteRequested]));
    }

    #[test]
    fn steps_create_then_finish_then_delete() {
        let host = HostId::new();
        let id = VolumeId::new();
        let op = OpId::new();
        let spec = VolumeSpec { name: "d".into(), size_gb: 1, kind: DiskKind::Block };
        let mut v = evolve(
            None,
            id,
            Some(op),
            at(),
            &VolumeEvent::VolumeCreated { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec, host, attached_to: None, image: None },
        );
        assert_eq!(next_step(v.as_ref().unwrap()), Some(VolumeStep::Create));
        v = evolve(v, id, Some(op), at(), &VolumeEvent::VolumeReady { location: "/v".into() });
        assert_eq!(next_step(v.as_ref().unwrap()), Some(VolumeStep::Finish(Outcome::Succeeded)));
        v = evolve(v, id, Some(op), at(), &VolumeEvent::VolumeOperationFinished { outcome: Outcome::Succeeded });
        assert_eq!(next_step(v.as_ref().unwrap()), None);
        let del = OpId::new();
        for e in decide(v.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VolumeCommand::Delete).unwrap() {
            v = evolve(v, id, Some(del), at(), &e);
        }
        assert_eq!(next_step(v.as_ref().unwrap()), Some(VolumeStep::Delete));
        v = evolve(v, id, Some(del), at(), &VolumeEvent::VolumeDeleted);
        assert_eq!(next_step(v.as_ref().unwrap()), Some(VolumeStep::Finish(Outcome::Succeeded)));
    }

    #[test]
    fn creating_volumes_cannot_be_claimed() {
        let id = VolumeId::new();
        let host = HostId::new();
        let spec = VolumeSpec { name: "d".into(), size_gb: 1, kind: DiskKind::Block };
        let v = evolve(
            None,
            id,
            None,
            at(),
            &VolumeEvent::VolumeCreated { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec, host, attached_to: None, image: None },
        );
        assert_eq!(claim(v.as_ref(), VmId::new(), host), Err(VolumeError::NotAvailable(VolumeStatus::Creating)));
        assert_eq!(claim(None, VmId::new(), host), Err(VolumeError::NotFound));
    }

    fn made(attached_to: Option<VmId>, image: Option<&str>, host: HostId) -> Option<Volume> {
        let spec = VolumeSpec { name: "d".into(), size_gb: 1, kind: DiskKind::Filesystem };
        let id = VolumeId::new();
        let created = VolumeEvent::VolumeCreated { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec, host, attached_to, image: image.map(Into::into) };
        let v = evolve(None, id, None, at(), &created);
        evolve(v, id, None, at(), &VolumeEvent::VolumeReady { location: "/v".into() })
    }

    #[test]
    fn a_data_disk_is_its_vms_from_the_start_and_goes_with_it() {
        let (host, vm) = (HostId::new(), VmId::new());
        let mut v = made(Some(vm), None, host);
        let id = v.as_ref().unwrap().id;
        assert_eq!((v.as_ref().unwrap().status, v.as_ref().unwrap().attached_to), (VolumeStatus::InUse, Some(vm)));
        assert_eq!(claim(v.as_ref(), VmId::new(), host), Err(VolumeError::InUse(vm)), "nobody else can take it, not even between creation and readiness");
        assert_eq!(delete_with(v.as_ref(), VmId::new()), None, "another vm cannot delete it");
        assert_eq!(delete_with(v.as_ref(), vm), Some(VolumeEvent::VolumeDeleteRequested));
        v = evolve(v, id, None, at(), &VolumeEvent::VolumeDeleteRequested);
        assert_eq!(delete_with(v.as_ref(), vm), None, "deletion began already");
        assert_eq!(claim(v.as_ref(), VmId::new(), host), Err(VolumeError::InUse(vm)));
        // One that was detached from it is no longer its to delete.
        let (free, _) = ready(host);
        assert_eq!(delete_with(free.as_ref(), vm), None);
    }

    #[test]
    fn only_a_free_root_disk_of_the_vms_image_boots_it() {
        let (host, vm) = (HostId::new(), VmId::new());
        let root = made(None, Some("debian-minimal"), host);
        assert_eq!(claim_root(root.as_ref(), vm, host, "debian-minimal"), Ok(Some(VolumeEvent::VolumeAttached { vm })));
        assert_eq!(claim_root(root.as_ref(), vm, host, "alpine"), Err(VolumeError::OtherImage("debian-minimal".into())));
        let (data, _) = ready(host);
        assert_eq!(claim_root(data.as_ref(), vm, host, "debian-minimal"), Err(VolumeError::NotRootDisk));
        let other = VmId::new();
        let taken = made(Some(other), Some("debian-minimal"), host);
        assert_eq!(claim_root(taken.as_ref(), vm, host, "debian-minimal"), Err(VolumeError::InUse(other)));
        assert_eq!(claim_root(None, vm, host, "debian-minimal"), Err(VolumeError::NotFound));
    }

    #[test]
    fn volumes_attached_at_create_choose_the_host() {
        let (a, b, vm) = (HostId::new(), HostId::new(), VmId::new());
        let (one, _) = ready(a);
        let (two, _) = ready(a);
        let (elsewhere, _) = ready(b);
        let (one, two, elsewhere) = (one.unwrap(), two.unwrap(), elsewhere.unwrap());
        assert_eq!(host_for_create(vm, []), Ok(None));
        assert_eq!(host_for_create(vm, [&one, &two]), Ok(Some(a)));
        assert_eq!(host_for_create(vm, [&one, &elsewhere]), Err(VolumeError::HostsDiffer));
        let other = VmId::new();
        let held = made(Some(other), None, a).unwrap();
        assert_eq!(host_for_create(vm, [&one, &held]), Err(VolumeError::InUse(other)));
        assert_eq!(host_for_create(other, [&one, &held]), Ok(Some(a)), "a retry of the create that holds it");
        let creating = evolve(
            None,
            VolumeId::new(),
            None,
            at(),
            &VolumeEvent::VolumeCreated { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: one.spec.clone(), host: a, attached_to: None, image: None },
        )
        .unwrap();
        assert_eq!(host_for_create(vm, [&creating]), Err(VolumeError::NotAvailable(VolumeStatus::Creating)));
    }
}
