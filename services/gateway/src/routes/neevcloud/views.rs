//! The documented response shapes (`VMResponse`, `DiskResponse`,
//! `RootDiskVolumeResponse`, the paginated lists) and how vmplane's VMs,
//! volumes and root disks are rendered in them.

use super::ids::uuid;
use super::requests::{DataDiskType, ExposedPort, PortProtocol};
use crate::app::volumes::{self, RootDisk};
use crate::app::{App, Principal, catalog, hosts};
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use vmplane_domain::spec::DiskKind;
use vmplane_domain::vm::{Vm, VmStatus, data_disk_id, kept_root_disk_id};
use vmplane_domain::volume::{Volume, VolumeStatus};
use vmplane_domain::{HostId, VolumeId};

/// What a VM created without a plan (through another API) shows as its plan.
pub const NO_PLAN: &str = "custom";

/// Current lifecycle status of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = VMStatus)]
pub enum NeevStatus {
    Pending,
    Provisioning,
    Starting,
    Running,
    Stopping,
    Stopped,
    Restarting,
    Deleting,
    Deleted,
    Failed,
}

impl From<VmStatus> for NeevStatus {
    fn from(s: VmStatus) -> Self {
        match s {
            VmStatus::Pending => Self::Pending,
            VmStatus::Provisioning => Self::Provisioning,
            // Resuming from a memory snapshot (another API's standby) is starting.
            VmStatus::Starting | VmStatus::Restoring => Self::Starting,
            VmStatus::Running => Self::Running,
            VmStatus::Stopping => Self::Stopping,
            // Standby: off, with its memory kept; start resumes it.
            VmStatus::Stopped | VmStatus::Standby => Self::Stopped,
            VmStatus::Restarting => Self::Restarting,
            VmStatus::Deleting => Self::Deleting,
            VmStatus::Deleted => Self::Deleted,
            VmStatus::Failed => Self::Failed,
        }
    }
}

/// Disk attachment as returned by the API (root or data).
#[derive(Debug, Serialize, ToSchema)]
pub struct DiskResponse {
    /// UUID of the disk.
    #[schema(format = "uuid")]
    pub id: String,
    /// Name of the disk.
    pub name: String,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: DataDiskType,
    /// Size in gigabytes.
    pub size_gb: u32,
}

/// Full VM representation as returned by the API.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = VMResponse)]
pub struct VmResponse {
    /// The unique identifier of the VM.
    #[schema(format = "uuid")]
    pub id: String,
    /// The user-defined name of the VM.
    pub name: String,
    /// The region ID where the VM is deployed.
    pub region_id: String,
    /// Whether VM deletion also removes the platform-managed root disk (create_disk_request only).
    pub delete_root_disk: bool,
    pub status: NeevStatus,
    /// Optional detail about the current VM status (e.g. provisioning step or failure reason).
    pub message: Option<String>,
    /// The ID of the VM configuration used for the VM.
    pub vm_config_id: String,
    /// The number of GPU configurations attached to the VM.
    #[schema(required = false)]
    pub gpu_config_count: u32,
    /// The pricing plan ID for billing the VM.
    pub plan_id: String,
    /// The ID of the platform image the root disk was cloned from.
    pub image_id: String,
    /// Root (boot) disk for the VM.
    #[schema(required = false)]
    pub root_disk: DiskResponse,
    /// Additional data disks attached to the VM.
    pub data_disks: Option<Vec<DiskResponse>>,
    /// Public IP allocated for the VM when external networking is enabled and ready.
    pub public_ip: Option<String>,
    /// Ports exposed on the VM public IP for inbound access.
    #[schema(required = false)]
    pub exposed_ports: Vec<ExposedPort>,
    /// When the VM was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the VM was last updated.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Root disk volume managed by the platform for a project (clone or attach source).
#[derive(Debug, Serialize, ToSchema)]
pub struct RootDiskVolumeResponse {
    /// Unique identifier of the root disk volume.
    #[schema(format = "uuid")]
    pub id: String,
    /// Display name of the volume.
    pub name: String,
    /// Owning organization identifier.
    pub org_id: String,
    /// Owning project identifier.
    pub project_id: String,
    /// Region where the volumes cluster resources live.
    pub region: String,
    /// Size of the volume in gigabytes.
    pub size_gb: u32,
    /// Platform OS image this root disk was created from.
    pub image_id: String,
    /// Volume mode (e.g. filesystem or block).
    pub volume_mode: String,
    /// Product plan associated with this volume.
    pub plan_id: String,
    /// Lifecycle status of the volume (pending, provisioning, ready, failed, deleting).
    pub status: String,
    /// Optional detail about the current volume status.
    pub message: Option<String>,
    /// True when this root disk is currently attached to a VM (vm_id is set).
    pub is_attached: bool,
    /// UUID of the VM this root disk is attached to when is_attached is true; otherwise null.
    #[schema(format = "uuid")]
    pub vm_id: Option<String>,
    /// When the volume record was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the volume record was last updated.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Pagination metadata.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PaginationResponse)]
pub struct Pagination {
    /// Total number of items across all pages.
    pub total_items: u64,
    /// Total number of pages.
    pub total_pages: u64,
    /// Current page number.
    pub current_page: u64,
    /// Number of items per page.
    pub items_per_page: u64,
}

/// Paginated list of VMs.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = VMListResponse)]
pub struct VmListResponse {
    pub data: Vec<VmResponse>,
    pub pagination: Pagination,
}

/// Paginated list of root disk volumes.
#[derive(Debug, Serialize, ToSchema)]
pub struct RootDiskVolumeListResponse {
    pub data: Vec<RootDiskVolumeResponse>,
    pub pagination: Pagination,
}

/// Renders domain values for one request, looking up what views need
/// (host regions, attached volumes, image names) through the use cases.
pub struct Render<'a> {
    app: &'a App,
    who: &'a Principal,
    regions: BTreeMap<HostId, String>,
}

impl<'a> Render<'a> {
    pub fn new(app: &'a App, who: &'a Principal) -> Self {
        let regions = hosts::list(app, who).map(|hs| hs.into_iter().map(|h| (h.host.id, h.host.info.region)).collect()).unwrap_or_default();
        Self { app, who, regions }
    }

    /// The region asked for, else the region of the host it is on.
    fn region(&self, asked: Option<&String>, host: HostId) -> String {
        asked.cloned().or_else(|| self.regions.get(&host).cloned()).unwrap_or_default()
    }

    /// The name this API shows for an installed image.
    fn image(&self, slug: &str) -> String {
        catalog::image(self.app, slug).name
    }

    /// A volume as a disk, if the caller may still see it.
    fn volume_disk(&self, id: VolumeId) -> Option<DiskResponse> {
        let v = volumes::get(self.app, self.who, id).ok()?;
        Some(DiskResponse { id: uuid(id.0), name: v.spec.name, kind: v.spec.kind.into(), size_gb: v.spec.size_gb })
    }

    /// A VM as `VMResponse`.
    pub fn vm(&self, vm: Vm) -> VmResponse {
        let s = &vm.spec;
        let root_disk = match s.root_volume {
            Some(id) => self.volume_disk(id).unwrap_or_else(|| DiskResponse {
                id: uuid(id.0),
                name: s.name.clone(),
                kind: DataDiskType::Filesystem,
                size_gb: s.disk_gb,
            }),
            None => DiskResponse {
                id: uuid(kept_root_disk_id(vm.id).0),
                name: s.root_disk_name.clone().unwrap_or_else(|| s.name.clone()),
                kind: DataDiskType::Filesystem,
                size_gb: vm.root_disk.as_ref().map_or(s.disk_gb, |d| d.size_gb),
            },
        };
        // Before its first boot a VM shows the disks it was asked for; then those attached.
        let ids: Vec<VolumeId> = if vm.started_at.is_none() {
            (0..s.data_disks.len()).map(|i| data_disk_id(vm.id, i)).chain(s.volumes.iter().map(|m| m.volume_id)).collect()
        } else {
            vm.volumes.iter().map(|m| m.volume_id).collect()
        };
        let data_disks = ids
            .into_iter()
            .filter(|id| Some(*id) != s.root_volume)
            .filter_map(|id| match (0..s.data_disks.len()).find(|i| data_disk_id(vm.id, *i) == id) {
                Some(i) => {
                    let d = &s.data_disks[i];
                    Some(DiskResponse { id: uuid(id.0), name: d.name.clone(), kind: d.kind.into(), size_gb: d.size_gb })
                }
                None => self.volume_disk(id),
            })
            .collect();
        let plan = s.plan.clone().unwrap_or_else(|| NO_PLAN.to_owned());
        VmResponse {
            id: uuid(vm.id.0),
            name: s.name.clone(),
            region_id: self.region(s.region.as_ref(), vm.host),
            delete_root_disk: s.delete_root_disk && s.root_volume.is_none(),
            status: vm.status.into(),
            message: vm.message.clone(),
            vm_config_id: plan.clone(),
            gpu_config_count: s.gpu.as_ref().map_or(0, |g| g.count),
            plan_id: plan,
            image_id: self.image(&s.image),
            root_disk,
            data_disks: Some(data_disks),
            // vmplane gives a VM no public address: its exposed ports are
            // forwarded from host ports (see GET /v1/vms/{id}).
            public_ip: None,
            exposed_ports: s.exposed_ports.iter().map(|p| ExposedPort { port: i64::from(p.port), protocol: PortProtocol::from(p.protocol) }).collect(),
            created_at: vm.created_at,
            updated_at: vm.updated_at,
        }
    }

    /// A root disk as `RootDiskVolumeResponse`.
    pub fn root_disk(&self, disk: RootDisk) -> RootDiskVolumeResponse {
        let id = uuid(disk.id().0);
        let vm_id = disk.attached_to().map(|v| uuid(v.0));
        match disk {
            RootDisk::OfVm(vm) => {
                let status = match (vm.status, &vm.root_disk) {
                    (VmStatus::Deleting, _) => "deleting",
                    (VmStatus::Pending, None) => "pending",
                    (VmStatus::Failed, None) => "failed",
                    (_, None) => "provisioning",
                    (_, Some(_)) => "ready",
                };
                RootDiskVolumeResponse {
                    id,
                    name: vm.spec.root_disk_name.clone().unwrap_or_else(|| vm.spec.name.clone()),
                    org_id: uuid(vm.org.0),
                    project_id: uuid(vm.project.0),
                    region: self.region(vm.spec.region.as_ref(), vm.host),
                    size_gb: vm.root_disk.as_ref().map_or(vm.spec.disk_gb, |d| d.size_gb),
                    image_id: self.image(&vm.spec.image),
                    volume_mode: "filesystem".into(),
                    plan_id: vm.spec.plan.clone().unwrap_or_else(|| NO_PLAN.to_owned()),
                    status: status.into(),
                    message: None,
                    is_attached: true,
                    vm_id,
                    created_at: vm.created_at,
                    updated_at: vm.updated_at,
                }
            }
            RootDisk::Volume { volume, made_by } => {
                let Volume { spec, status, message, image, org, project, host, created_at, updated_at, .. } = *volume;
                RootDiskVolumeResponse {
                    id,
                    name: spec.name,
                    org_id: uuid(org.0),
                    project_id: uuid(project.0),
                    region: self.region(made_by.as_ref().and_then(|vm| vm.spec.region.as_ref()), host),
                    size_gb: spec.size_gb,
                    image_id: self.image(image.as_deref().unwrap_or_default()),
                    volume_mode: match spec.kind {
                        DiskKind::Block => "block",
                        DiskKind::Filesystem => "filesystem",
                    }
                    .into(),
                    plan_id: made_by.and_then(|vm| vm.spec.plan).unwrap_or_else(|| NO_PLAN.to_owned()),
                    status: match status {
                        VolumeStatus::Creating => "provisioning",
                        VolumeStatus::Available | VolumeStatus::InUse => "ready",
                        VolumeStatus::Deleting => "deleting",
                        VolumeStatus::Deleted => "deleted",
                        VolumeStatus::Failed => "failed",
                    }
                    .into(),
                    message,
                    is_attached: vm_id.is_some(),
                    vm_id,
                    created_at,
                    updated_at,
                }
            }
        }
    }
}
