//! hypeman's request and response shapes, and how they map onto the domain:
//! `CreateInstanceRequest` onto a [`VmSpec`], a [`Vm`] onto an `Instance`.
//!
//! ## States
//!
//! hypeman's states are Cloud Hypervisor's (`Created`, `Running`, `Paused`,
//! `Shutdown`) plus its own (`Stopped`, `Standby`, `Unknown`). vmplane's
//! [`VmStatus`] maps onto them as [`state_of`] says:
//!
//! | vmplane | hypeman | why |
//! |---|---|---|
//! | `pending`, `provisioning` | `Created` | the VM exists, its hypervisor is not running yet |
//! | `starting`, before the hypervisor runs | `Created` | |
//! | `starting`, hypervisor running (guest booting) | `Running` | vCPUs run, as Cloud Hypervisor's `Running` |
//! | `running`, `restarting` | `Running` | a reboot keeps the hypervisor |
//! | `stopping` for a standby | `Paused` | hypeman pauses, then snapshots |
//! | `stopping` otherwise, `deleting` | `Shutdown` | shutting down, hypervisor still there |
//! | `restoring` | `Paused` | hypeman restores into a paused VM, then resumes it |
//! | `stopped` | `Stopped` | no hypervisor, no snapshot |
//! | `standby` | `Standby` | no hypervisor, a snapshot to restore |
//! | `failed` | `Unknown`, `state_error` = the reason | |
//!
//! A `deleted` VM is not an instance any more: it is not found.

use super::size::{self, GIB, MIB, SizeError};
use crate::app::{App, catalog};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use vmplane_domain::catalog::normalize_oci;
use vmplane_domain::spec::{VmSpec, VolumeMount};
use vmplane_domain::vm::{OpKind, Vm, VmStatus};
use vmplane_domain::{VmId, VolumeId};

use super::error::HypemanError;

/// hypeman's defaults for what a create leaves out.
pub const DEFAULT_VCPUS: u32 = 2;
/// `size` default: 1GB.
pub const DEFAULT_SIZE: u64 = GIB;
/// `hotplug_size` default: 3GB.
pub const DEFAULT_HOTPLUG_SIZE: u64 = 3 * GIB;
/// `overlay_size` default: 10GB.
pub const DEFAULT_OVERLAY_SIZE: u64 = 10 * GIB;

/// Instance state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = InstanceState)]
pub enum InstanceState {
    /// VMM created but not started.
    Created,
    /// VM is actively running.
    Running,
    /// VM is paused.
    Paused,
    /// VM shut down but VMM exists.
    Shutdown,
    /// No VMM running, no snapshot exists.
    Stopped,
    /// No VMM running, snapshot exists (can be restored).
    Standby,
    /// Failed to determine state (see state_error for details).
    Unknown,
}

/// The hypeman state of a VM, and its `state_error` (set only for `Unknown`).
pub fn state_of(vm: &Vm) -> (InstanceState, Option<String>) {
    use InstanceState as S;
    let standby_in_progress = vm.pending_op.as_ref().is_some_and(|p| p.kind == OpKind::Standby);
    let state = match vm.status {
        VmStatus::Pending | VmStatus::Provisioning => S::Created,
        VmStatus::Starting if vm.booted => S::Running,
        VmStatus::Starting => S::Created,
        VmStatus::Running | VmStatus::Restarting => S::Running,
        VmStatus::Stopping if standby_in_progress => S::Paused,
        VmStatus::Stopping | VmStatus::Deleting => S::Shutdown,
        VmStatus::Restoring => S::Paused,
        VmStatus::Stopped | VmStatus::Deleted => S::Stopped,
        VmStatus::Standby => S::Standby,
        VmStatus::Failed => return (S::Unknown, Some(vm.message.clone().unwrap_or_else(|| "the vm failed".into()))),
    };
    (state, None)
}

/// Network settings of a create.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateInstanceNetwork)]
pub struct CreateNetwork {
    /// Whether to attach the instance to the default network. Default true.
    pub enabled: Option<bool>,
}

/// Request body of `POST /instances`. The body is checked against this
/// schema before it is decoded (`extract::Json`); the bounds of the sizes
/// are in their descriptions (JSON Schema has no bound on a size written
/// as text), and the server checks them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceRequest {
    /// Human-readable name (lowercase letters, digits, and dashes only; cannot start or end with a dash), at most 63.
    /// Unique among the org's instances (409 `name_conflict` otherwise).
    #[schema(value_type = vmplane_domain::spec::DnsLabel, example = "my-workload-1")]
    pub name: String,
    /// OCI image reference (or any catalog image name) of an image a host has, at most 200 characters.
    #[schema(value_type = vmplane_domain::catalog::ImageRef, example = "docker.io/library/debian:12")]
    pub image: String,
    /// Base memory size (human-readable format like "1GB", "512MB", "2G"). Default "1GB".
    /// A whole number of MB, between 64MB and 4TB (`MAX_MEMORY_MIB`).
    #[schema(value_type = Option<super::size::SizeText>, example = "2GB")]
    pub size: Option<String>,
    /// Additional memory for hotplug (human-readable format like "3GB", "1G"). Default "3GB".
    /// A whole number of MB, at most 4TB (`MAX_MEMORY_MIB`).
    #[schema(value_type = Option<super::size::SizeText>, example = "2GB")]
    pub hotplug_size: Option<String>,
    /// Writable overlay disk size (human-readable format like "10GB", "50G"): the root disk,
    /// in whole GB (rounded up), at most 65536GB (`MAX_DISK_GB`). Default "10GB".
    #[schema(value_type = Option<super::size::SizeText>, example = "20GB")]
    pub overlay_size: Option<String>,
    /// Number of virtual CPUs, at most 256 (`MAX_VCPUS`). Default 2.
    #[schema(minimum = 1, maximum = 256, example = 2)]
    pub vcpus: Option<u32>,
    /// Environment variables, given to the guest (see docs/dialects/hypeman.md).
    #[schema(value_type = Option<vmplane_domain::spec::Env>)]
    pub env: Option<BTreeMap<String, String>>,
    /// Network configuration for the instance.
    pub network: Option<CreateNetwork>,
    /// Volumes to attach to the instance at creation time.
    pub volumes: Option<Vec<CreateVolumeMount>>,
}

/// A volume mount as a create names it (an instance shows its mounts as
/// `VolumeMount`): an overlay needs `readonly: true` and an `overlay_size`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeMountRequest)]
pub struct CreateVolumeMount {
    /// Volume identifier or name.
    pub volume_id: String,
    /// Path where the volume is mounted in the guest.
    #[schema(value_type = vmplane_domain::spec::MountPath, example = "/mnt/data")]
    pub mount_path: String,
    /// Whether the volume is mounted read-only. Default false.
    pub readonly: Option<bool>,
    /// Create a per-instance overlay for writes (requires readonly=true). Default false.
    pub overlay: Option<bool>,
    /// Max overlay size as human-readable string (e.g. "1GB"). Required if overlay=true
    /// (ignored otherwise).
    #[schema(value_type = Option<super::size::SizeText>, example = "1GB")]
    pub overlay_size: Option<String>,
}

/// The rule between a mount's fields, as JSON Schema (the seed's words:
/// "requires readonly=true", "required if overlay=true"), for
/// `VolumeMountRequest` and `AttachVolumeRequest`.
pub fn mount_conditions() -> serde_json::Value {
    serde_json::json!({"allOf": [{
        "if": {"properties": {"overlay": {"const": true}}, "required": ["overlay"]},
        "then": {"properties": {"readonly": {"const": true}}, "required": ["readonly", "overlay_size"]}
    }]})
}

/// A volume mount: as a create names it, and as an instance shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeMount)]
pub struct VolumeMountBody {
    /// Volume identifier (a create may give the volume's name).
    pub volume_id: String,
    /// Path where the volume is mounted in the guest ("" shown for a volume
    /// another API attached as a bare block device).
    #[schema(example = "/mnt/data")]
    pub mount_path: String,
    /// Whether the volume is mounted read-only. Default false.
    pub readonly: Option<bool>,
    /// Create a per-instance overlay for writes (requires readonly=true). Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<bool>,
    /// Max overlay size as human-readable string (e.g. "1GB"). Required if overlay=true.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "1GB")]
    pub overlay_size: Option<String>,
}

impl From<VolumeMount> for VolumeMountBody {
    fn from(m: VolumeMount) -> Self {
        Self {
            volume_id: m.volume_id.to_string(),
            mount_path: m.mount_path.unwrap_or_default(),
            readonly: Some(m.readonly),
            overlay: m.overlay.then_some(true),
            overlay_size: m.overlay_size_mib.filter(|_| m.overlay).map(|mib| size::format(mib * MIB)),
        }
    }
}

/// Request body of `POST /instances/{id}/volumes/{volumeId}`: hypeman's
/// `mount_path` and `readonly`, and the overlay settings of its `VolumeMount`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolumeRequest {
    /// Path where the volume should be mounted.
    #[schema(value_type = vmplane_domain::spec::MountPath, example = "/mnt/data")]
    pub mount_path: String,
    /// Mount read-only. Default false.
    pub readonly: Option<bool>,
    /// Create a per-instance overlay for writes (requires readonly=true). Default false.
    pub overlay: Option<bool>,
    /// Max overlay size as human-readable string (e.g. "1GB"). Required if overlay=true
    /// (ignored otherwise).
    #[schema(value_type = Option<super::size::SizeText>, example = "1GB")]
    pub overlay_size: Option<String>,
    /// The volume, when given, must be the one in the path (its id or its name; 400 otherwise).
    pub volume_id: Option<String>,
}

/// A mount checked against hypeman's rules, for a volume still to be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_path: String,
    pub readonly: bool,
    pub overlay_size_mib: Option<u64>,
}

impl Mount {
    /// `overlay` needs `readonly: true` and an `overlay_size` (400 otherwise);
    /// an `overlay_size` without `overlay` is ignored, as hypeman ignores it.
    pub fn check(mount_path: &str, readonly: Option<bool>, overlay: Option<bool>, overlay_size: Option<&str>) -> Result<Self, HypemanError> {
        let (readonly, overlay) = (readonly.unwrap_or(false), overlay.unwrap_or(false));
        let bad = |m: &str| HypemanError::BadRequest("invalid_volume_mount", m.to_owned());
        if overlay && !readonly {
            return Err(bad("overlay requires readonly=true"));
        }
        let overlay_size_mib = match (overlay, overlay_size) {
            (false, _) => None,
            (true, None) => return Err(bad("overlay_size is required with overlay=true")),
            (true, Some(s)) => Some(size::ceil_div(parse_size("invalid_overlay_size", "overlay_size", s)?, MIB).max(1)),
        };
        let mount = Self { mount_path: mount_path.to_owned(), readonly, overlay_size_mib };
        // The domain's rules for the path (the volume is resolved later; any id will do here).
        mount.on(VolumeId::new()).validate().map_err(|e| bad(&e.to_string()))?;
        Ok(mount)
    }

    /// The domain mount of volume `id`.
    pub fn on(&self, id: VolumeId) -> VolumeMount {
        VolumeMount {
            volume_id: id,
            mount_path: Some(self.mount_path.clone()),
            readonly: self.readonly,
            overlay: self.overlay_size_mib.is_some(),
            overlay_size_mib: self.overlay_size_mib,
        }
    }
}

/// A size field: 400 `code` naming `field` when it does not parse.
pub fn parse_size(code: &'static str, field: &str, text: &str) -> Result<u64, HypemanError> {
    size::parse(text).map_err(|e: SizeError| HypemanError::BadRequest(code, format!("invalid {field} format: {e}")))
}

/// A memory size in whole MiB.
fn memory_mib(code: &'static str, field: &str, text: Option<&str>, default: u64) -> Result<u64, HypemanError> {
    let bytes = text.map(|t| parse_size(code, field, t)).transpose()?.unwrap_or(default);
    if !bytes.is_multiple_of(MIB) {
        return Err(HypemanError::BadRequest(code, format!("{field} must be a whole number of MB")));
    }
    Ok(bytes / MIB)
}

impl CreateInstanceRequest {
    /// The spec this request asks for, hypeman's defaults filled in, with its
    /// volume mounts still to be resolved (`volume_id` may be a name).
    pub fn into_spec(self) -> Result<(VmSpec, Vec<(String, Mount)>), HypemanError> {
        let mut spec = VmSpec::named(self.name);
        spec.image = self.image;
        spec.vcpus = self.vcpus.unwrap_or(DEFAULT_VCPUS);
        spec.memory_mib = memory_mib("invalid_size", "size", self.size.as_deref(), DEFAULT_SIZE)?;
        spec.hotplug_memory_mib = memory_mib("invalid_hotplug_size", "hotplug_size", self.hotplug_size.as_deref(), DEFAULT_HOTPLUG_SIZE)?;
        let overlay = self.overlay_size.as_deref().map(|t| parse_size("invalid_overlay_size", "overlay_size", t)).transpose()?.unwrap_or(DEFAULT_OVERLAY_SIZE);
        spec.disk_gb = u32::try_from(size::ceil_div(overlay, GIB).max(1))
            .map_err(|_| HypemanError::BadRequest("invalid_overlay_size", "overlay_size is too large".into()))?;
        spec.env = self.env.unwrap_or_default();
        spec.network.enabled = self.network.unwrap_or_default().enabled.unwrap_or(true);
        let mounts = self
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| Ok((v.volume_id, Mount::check(&v.mount_path, v.readonly, v.overlay, v.overlay_size.as_deref())?)))
            .collect::<Result<Vec<_>, HypemanError>>()?;
        Ok((spec, mounts))
    }
}

/// Network configuration of an instance.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = InstanceNetwork)]
pub struct NetworkView {
    /// Whether the instance is attached to the default network.
    pub enabled: bool,
    /// Network name (always "default" when enabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Assigned IP address (null if no network).
    pub ip: Option<String>,
    /// Assigned MAC address (null if no network).
    pub mac: Option<String>,
}

/// An instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Instance {
    /// Unique identifier (vmplane's `vm_` id).
    pub id: VmId,
    /// Human-readable name.
    pub name: String,
    /// OCI image reference of the image the instance runs.
    pub image: String,
    pub state: InstanceState,
    /// Error message if state couldn't be determined (only set when state is Unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
    /// Base memory size (human-readable).
    pub size: String,
    /// Hotplug memory size (human-readable).
    pub hotplug_size: String,
    /// Writable overlay disk size (human-readable): the root disk.
    pub overlay_size: String,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    pub network: NetworkView,
    /// Volumes attached to the instance.
    pub volumes: Vec<VolumeMountBody>,
    /// Creation timestamp (RFC3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the guest last became running (RFC3339).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    /// When the guest last stopped or went to standby (RFC3339).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stopped_at: Option<OffsetDateTime>,
    /// Whether a snapshot exists for this instance (it is in standby).
    pub has_snapshot: bool,
}

impl Instance {
    /// The instance `vm` is.
    pub fn new(app: &App, vm: Vm) -> Self {
        let (state, state_error) = state_of(&vm);
        let net = vm.network.unwrap_or_default();
        let s = vm.spec;
        let enabled = s.network.enabled;
        Self {
            id: vm.id,
            image: image_reference(app, &s.image),
            name: s.name,
            state,
            state_error,
            size: size::format(s.memory_mib * MIB),
            hotplug_size: size::format(s.hotplug_memory_mib * MIB),
            overlay_size: size::format(u64::from(s.disk_gb) * GIB),
            vcpus: s.vcpus,
            env: s.env,
            network: NetworkView { enabled, name: enabled.then(|| "default".to_owned()), ip: net.ip.filter(|_| enabled), mac: net.mac.filter(|_| enabled) },
            volumes: vm.volumes.into_iter().map(VolumeMountBody::from).collect(),
            created_at: vm.created_at,
            started_at: vm.started_at,
            stopped_at: vm.stopped_at,
            has_snapshot: vm.has_snapshot,
        }
    }
}

/// The OCI reference of the installed image `slug`: the first OCI alias its
/// catalog entry lists (`debian-minimal` is `docker.io/library/debian:12`),
/// or the slug for an image the catalog gives none.
pub fn image_reference(app: &App, slug: &str) -> String {
    let entry = catalog::get(app).images().get(slug);
    entry.and_then(|e| e.aliases.iter().filter(|a| a.contains('/')).find_map(|a| normalize_oci(a))).unwrap_or_else(|| slug.to_owned())
}
