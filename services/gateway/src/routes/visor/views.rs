//! What Visor shows: `{"result":{"data":...}}` around camelCase views of a
//! VM and its volumes, built from the domain `Vm`, the catalog (the plan's
//! disk type, the name of the image that booted) and the VM's volumes.

use crate::app::{self, App, Principal};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use vmplane_domain::spec::{NetworkMode, VolumeMount};
use vmplane_domain::vm::{OpKind, Vm, VmStatus};
use vmplane_domain::{VmId, VolumeId};

/// Every successful answer: `{"result":{"data": ...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Inlined: utoipa names every `Data<Vec<_>>` `Data_Vec`, so two lists
    /// of different items would share (and misstate) one schema.
    #[schema(inline)]
    pub result: Data<T>,
}

/// `result` of an answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

/// Wrap `data` as tRPC answers it.
pub fn envelope<T>(data: T) -> axum::Json<Envelope<T>> {
    axum::Json(Envelope { result: Data { data } })
}

/// Visor's status word for a VM status:
///
/// | vmplane | Visor |
/// |---|---|
/// | pending, provisioning | provisioning |
/// | starting (first boot, `vm.start`) | provisioning |
/// | starting (after a reboot), restarting | restarting |
/// | running | running |
/// | stopping | stopping |
/// | stopped, standby | stopped |
/// | restoring | provisioning |
/// | deleting, deleted | destroying |
/// | failed | error |
pub fn status(vm: &Vm) -> &'static str {
    match vm.status {
        VmStatus::Starting if vm.pending_op.as_ref().is_some_and(|p| p.kind == OpKind::Restart) => "restarting",
        VmStatus::Pending | VmStatus::Provisioning | VmStatus::Starting | VmStatus::Restoring => "provisioning",
        VmStatus::Running => "running",
        VmStatus::Stopping => "stopping",
        VmStatus::Stopped | VmStatus::Standby => "stopped",
        VmStatus::Restarting => "restarting",
        VmStatus::Deleting | VmStatus::Deleted => "destroying",
        VmStatus::Failed => "error",
    }
}

/// `2026-01-10T10:00:00Z`: UTC, whole seconds, as Visor shows times.
pub fn timestamp(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t).format(&Rfc3339).unwrap_or_default()
}

/// The guest's own address (`privateIp`), and the address it is reached at
/// from outside its host (`ip`): its bridge address in bridge mode; none in
/// user-mode networking, where it is reached through the host's forwarded
/// ports (`sshPort`).
fn addresses(vm: &Vm) -> (Option<String>, Option<String>) {
    let private = vm.network.as_ref().and_then(|n| n.ip.clone()).filter(|_| vm.spec.network.enabled);
    let public = private.clone().filter(|_| vm.spec.network.mode == NetworkMode::Bridge);
    (public, private)
}

/// The catalog name of the image the VM boots (`ubuntu-22.04` for slug `ubuntu-2204`).
fn os(app: &App, vm: &Vm) -> String {
    app::catalog::image(app, &vm.spec.image).name
}

/// A VM in `vm.all`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmSummary {
    pub id: VmId,
    pub name: String,
    /// The plan it was launched with (null for a VM created without one, e.g. through `/v1`).
    pub plan: Option<String>,
    pub region: Option<String>,
    /// The catalog name of the image it boots.
    pub os: String,
    /// The address the VM is reached at from outside its host: its bridge
    /// address; null with user-mode networking (see `sshPort` in `vm.one`).
    pub ip: Option<String>,
    /// provisioning, running, stopping, stopped, restarting, destroying or error.
    pub status: &'static str,
    pub created_at: String,
}

impl VmSummary {
    pub fn new(app: &App, vm: &Vm) -> Self {
        Self {
            id: vm.id,
            name: vm.spec.name.clone(),
            plan: vm.spec.plan.clone(),
            region: vm.spec.region.clone(),
            os: os(app, vm),
            ip: addresses(vm).0,
            status: status(vm),
            created_at: timestamp(vm.created_at),
        }
    }
}

/// `specs` of a VM: what its plan gave it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Specs {
    pub vcpu: u32,
    /// GiB, fractional for plans under 1 GiB.
    #[schema(value_type = f64)]
    pub memory_gb: Value,
    pub disk_gb: u32,
    /// The plan's disk type (`ssd`); null when the VM has no plan in the catalog.
    pub disk_type: Option<String>,
}

/// A volume attached to a VM.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    pub id: VolumeId,
    pub name: String,
    pub size_gb: u32,
    /// Where the guest mounts it; null for a bare block device.
    pub mount_path: Option<String>,
}

impl VolumeView {
    /// The view of an attached volume the caller may see; `None` if it is gone.
    pub fn of_mount(app: &App, who: &Principal, mount: &VolumeMount) -> Option<Self> {
        let vol = app::volumes::get(app, who, mount.volume_id).ok()?;
        Some(Self { id: vol.id, name: vol.spec.name, size_gb: vol.spec.size_gb, mount_path: mount.mount_path.clone() })
    }
}

/// A VM in `vm.one` (and the answer of `vm.start`, `vm.stop`, `vm.restart`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmDetail {
    pub id: VmId,
    pub name: String,
    pub plan: Option<String>,
    pub region: Option<String>,
    pub os: String,
    pub ip: Option<String>,
    /// The guest's own address on its network (user-mode networking: 10.0.2.15).
    pub private_ip: Option<String>,
    pub status: &'static str,
    pub specs: Specs,
    pub ssh_keys: Vec<String>,
    /// Attached volumes.
    pub volumes: Vec<VolumeView>,
    /// The host port forwarded to the guest's port 22 (user-mode networking):
    /// `ssh -p <sshPort> root@<the host>`. An addition to Visor's shape.
    pub ssh_port: Option<u16>,
    pub created_at: String,
}

impl VmDetail {
    pub fn new(app: &App, who: &Principal, vm: &Vm) -> Self {
        let (ip, private_ip) = addresses(vm);
        let memory_mib = vm.memory_mib();
        let memory_gb = if memory_mib.is_multiple_of(1024) { Value::from(memory_mib / 1024) } else { Value::from(memory_mib as f64 / 1024.0) };
        let disk_type = vm.spec.plan.as_deref().and_then(|p| app::catalog::plan(app, p).ok()).map(|p| p.disk_type);
        Self {
            id: vm.id,
            name: vm.spec.name.clone(),
            plan: vm.spec.plan.clone(),
            region: vm.spec.region.clone(),
            os: os(app, vm),
            ip,
            private_ip,
            status: status(vm),
            specs: Specs { vcpu: vm.spec.vcpus, memory_gb, disk_gb: vm.spec.disk_gb, disk_type },
            ssh_keys: vm.spec.ssh_keys.clone(),
            volumes: vm.volumes.iter().filter_map(|m| VolumeView::of_mount(app, who, m)).collect(),
            ssh_port: vm.network.as_ref().and_then(|n| n.ssh_port),
            created_at: timestamp(vm.created_at),
        }
    }
}

/// The answer of `vm.launch`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Launched {
    pub id: VmId,
    pub name: String,
    /// `provisioning`.
    pub status: &'static str,
    /// null until the VM runs (and with user-mode networking, after).
    pub ip: Option<String>,
    pub created_at: String,
}

impl Launched {
    pub fn new(vm: &Vm) -> Self {
        Self { id: vm.id, name: vm.spec.name.clone(), status: status(vm), ip: addresses(vm).0, created_at: timestamp(vm.created_at) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_whole_seconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_768_039_200_123_456_789).unwrap();
        assert_eq!(timestamp(t), "2026-01-10T10:00:00Z");
    }
}
