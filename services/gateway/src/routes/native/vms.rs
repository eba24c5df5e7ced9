//! The native VM API: `/v1/vms`.

use super::error::{ApiError, ApiResult, ErrorBody};
use super::events::{EventView, resume_after, sse, type_filter};
use super::extract::{Json, PathId, Query};
use super::pagination::{Page, PageQuery};
use crate::AppState;
use crate::app::catalog;
use crate::app::events::{self as app_events, FeedFilter};
use crate::app::vms::{self, Action, NewVm};
use crate::app::{Accepted, Allocation, App, Operation, Principal};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::catalog::Plan;
use vmplane_domain::host::HostStatus;
use vmplane_domain::placement::Placement;
use vmplane_domain::spec::{DataDisk, ExposedPort, GpuSpec, NetworkSpec, PortForward, VmSpec, VolumeMount};
use vmplane_domain::template::Field;
use vmplane_domain::vm::{DiskInfo, ResolvedPortForward, Vm, VmStatus};
use vmplane_domain::{HostId, ProjectId, SnapshotId, SshKeyId, VmId, VolumeId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_vm, list_vms))
        .routes(routes!(get_vm, delete_vm))
        .routes(routes!(start_vm))
        .routes(routes!(stop_vm))
        .routes(routes!(restart_vm))
        .routes(routes!(standby_vm))
        .routes(routes!(restore_vm))
        .routes(routes!(vm_events))
        .routes(routes!(resize_memory))
        .routes(routes!(move_vm))
}

/// Request body of `POST /v1/vms`. Only `name` is required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// DNS label, at most 63 characters.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
    /// Image slug or id. Default `debian-minimal`.
    #[schema(value_type = Option<vmplane_domain::catalog::ImageRef>)]
    pub image: Option<String>,
    /// Default 1.
    #[schema(minimum = 1, maximum = 256)]
    pub vcpus: Option<u32>,
    /// Default 512.
    #[schema(minimum = 64, maximum = 4194304)]
    pub memory_mib: Option<u64>,
    /// Hot-pluggable extra memory in MiB. Default 0.
    #[schema(minimum = 0, maximum = 4194304)]
    pub hotplug_memory_mib: Option<u64>,
    /// Root disk size. Default 10.
    #[schema(minimum = 1, maximum = 65536)]
    pub disk_gb: Option<u32>,
    /// Boot from this root disk (a volume kept from a deleted VM) instead of
    /// a new one; the VM runs the image it holds.
    pub root_volume_id: Option<VolumeId>,
    /// Delete the root disk with the VM. Default true.
    pub delete_root_disk: Option<bool>,
    /// Created with the VM, each name once; with `volumes`, at most 8
    /// (JSON Schema can say neither: a generated client must).
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeSet<DataDisk>, max_items = 8)]
    pub data_disks: Vec<DataDisk>,
    /// Attached before the first boot, each volume once and not the root
    /// volume; with `data_disks`, at most 8.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeSet<VolumeMount>, max_items = 8)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    #[schema(value_type = Vec<vmplane_domain::ssh_key::PublicKeyText>, max_items = 10)]
    pub ssh_keys: Vec<String>,
    /// Stored keys (`/v1/ssh-keys`) of the caller's org, added to `ssh_keys`.
    #[serde(default)]
    pub ssh_key_ids: Vec<SshKeyId>,
    /// cloud-init user data: a `#!` script or `#cloud-config`, at most 64 Ki characters.
    #[schema(max_length = 65536)]
    pub user_data: Option<String>,
    #[serde(default)]
    #[schema(value_type = vmplane_domain::spec::Env)]
    pub env: BTreeMap<String, String>,
    #[schema(value_type = Option<vmplane_domain::spec::BootArgs>)]
    pub boot_args: Option<String>,
    /// Default: enabled, user-mode networking.
    pub network: Option<NetworkSpec>,
    /// At most 32, without two for the same guest port and protocol.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeSet<PortForward>, max_items = 32)]
    pub port_forwards: Vec<PortForward>,
    /// At most 10, without duplicates.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeSet<ExposedPort>, max_items = 10)]
    pub exposed_ports: Vec<ExposedPort>,
    pub gpu: Option<GpuSpec>,
    #[schema(value_type = Option<vmplane_domain::catalog::PlanName>)]
    pub plan: Option<String>,
    #[schema(value_type = Option<vmplane_domain::catalog::RegionCode>)]
    pub region: Option<String>,
    /// A template's id or name (`/v1/templates`): its values fill every field
    /// this request leaves out (an empty list or map counts as left out).
    pub template: Option<String>,
    #[serde(default)]
    #[schema(value_type = vmplane_domain::spec::Labels)]
    pub labels: BTreeMap<String, String>,
    /// Resume this snapshot (`/v1/snapshots`, `ready`) instead of booting:
    /// the VM is a clone of the snapshot's machine with its own name, MAC,
    /// address and port forwards, on the snapshot's host. Its image, sizes,
    /// keys, user data and env are the snapshot's: giving others is a 422.
    pub from_snapshot: Option<SnapshotId>,
    /// Where to place the VM: a strategy (`spread`, `binpack`; default the
    /// org's), a host, a region, host labels to match.
    #[serde(default)]
    pub placement: Placement,
}

impl CreateVmRequest {
    /// The fields a template may fill that this request leaves out (a plan
    /// gives the sizes).
    fn unset(&self) -> BTreeSet<Field> {
        let network = self.network.is_none();
        let sized = |size: bool| size || self.plan.is_some();
        let absent = |f: &Field| match f {
            Field::Image => self.image.is_none(),
            Field::Vcpus => !sized(self.vcpus.is_some()),
            Field::MemoryMib => !sized(self.memory_mib.is_some()),
            Field::HotplugMemoryMib => self.hotplug_memory_mib.is_none(),
            Field::DiskGb => !sized(self.disk_gb.is_some()),
            Field::BootArgs => self.boot_args.is_none(),
            Field::UserData => self.user_data.is_none(),
            Field::EnableNetwork | Field::NetworkMode => network,
            Field::PortForwards => self.port_forwards.is_empty(),
            Field::SshKeys => self.ssh_keys.is_empty(),
            Field::Env => self.env.is_empty(),
            Field::Labels => self.labels.is_empty(),
        };
        Field::ALL.into_iter().filter(absent).collect()
    }

    /// The create this request asks for: the spec with defaults filled in
    /// (the named plan's sizes, else vmplane's), and which fields a template
    /// may fill.
    pub fn into_new_vm(mut self, plan: Option<&Plan>) -> NewVm {
        let unset = self.unset();
        let ssh_key_ids = std::mem::take(&mut self.ssh_key_ids);
        let placement = std::mem::take(&mut self.placement);
        NewVm { spec: self.into_spec(plan), unset, ssh_key_ids, placement }
    }

    /// The spec this request asks for, defaults filled in: the named plan's
    /// sizes, else vmplane's.
    pub fn into_spec(self, plan: Option<&Plan>) -> VmSpec {
        let d = VmSpec::named(self.name);
        VmSpec {
            image: self.image.unwrap_or(d.image),
            vcpus: self.vcpus.or(plan.map(|p| p.vcpus)).unwrap_or(d.vcpus),
            memory_mib: self.memory_mib.or(plan.map(|p| p.memory_mib)).unwrap_or(d.memory_mib),
            hotplug_memory_mib: self.hotplug_memory_mib.unwrap_or(d.hotplug_memory_mib),
            disk_gb: self.disk_gb.or(plan.map(|p| p.disk_gb)).unwrap_or(d.disk_gb),
            root_volume: self.root_volume_id,
            delete_root_disk: self.delete_root_disk.unwrap_or(d.delete_root_disk),
            root_disk_name: d.root_disk_name,
            data_disks: self.data_disks,
            volumes: self.volumes,
            ssh_keys: self.ssh_keys,
            user_data: self.user_data,
            env: self.env,
            boot_args: self.boot_args,
            network: self.network.unwrap_or(d.network),
            port_forwards: self.port_forwards,
            exposed_ports: self.exposed_ports,
            gpu: self.gpu.or_else(|| plan.and_then(|p| p.gpu.clone())),
            plan: self.plan,
            region: self.region,
            template: self.template,
            labels: self.labels,
            from_snapshot: self.from_snapshot,
            name: d.name,
        }
    }
}

/// A VM as the native API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmView {
    pub id: VmId,
    pub name: String,
    pub org_id: vmplane_domain::OrgId,
    pub project_id: ProjectId,
    pub host_id: HostId,
    /// The status of its host. While it is `offline`, `status` is the last
    /// one known and commands wait for the host to return (or fail with
    /// `host_unavailable` after the worker's `--host-unavailable-after`).
    pub host_status: HostStatus,
    pub status: VmStatus,
    /// Why the VM failed, or what it is doing.
    pub message: Option<String>,
    pub image: String,
    pub vcpus: u32,
    /// Memory now, including what was hot-plugged since the last cold boot.
    pub memory_mib: u64,
    /// Memory reserved for hot-plug (`POST /v1/vms/{id}/memory`).
    pub hotplug_memory_mib: u64,
    pub disk_gb: u32,
    pub root_volume_id: Option<VolumeId>,
    pub delete_root_disk: bool,
    pub root_disk: Option<DiskInfo>,
    pub data_disks: Vec<DataDisk>,
    /// Volumes attached now.
    pub volumes: Vec<VolumeMount>,
    pub ssh_keys: Vec<String>,
    pub user_data: Option<String>,
    pub env: BTreeMap<String, String>,
    pub boot_args: Option<String>,
    pub network: NetworkSpec,
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// Host port forwarded to the guest's port 22.
    pub ssh_port: Option<u16>,
    /// Requested forwards, with host ports once allocated.
    pub port_forwards: Vec<PortForward>,
    pub exposed_ports: Vec<ExposedPort>,
    pub gpu: Option<GpuSpec>,
    pub plan: Option<String>,
    pub region: Option<String>,
    pub template: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The snapshot it was created from (a clone), if any.
    pub from_snapshot: Option<SnapshotId>,
    /// A clone whose root disk no longer reads its snapshot's (`POST /v1/vms/{id}/flatten`).
    pub flattened: bool,
    /// It is in standby: its memory and devices are saved, to be restored.
    pub has_snapshot: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stopped_at: Option<OffsetDateTime>,
}

impl VmView {
    /// The VM with its host's status as this gateway sees it now.
    pub fn read(app: &App, vm: Vm) -> ApiResult<Self> {
        let host_status = crate::app::hosts::status(app, vm.host)?;
        Ok(Self::new(vm, host_status))
    }

    fn new(vm: Vm, host_status: HostStatus) -> Self {
        let memory_mib = vm.memory_mib();
        let net = vm.network.unwrap_or_default();
        let s = vm.spec;
        let port_forwards = if net.port_forwards.is_empty() {
            s.port_forwards
        } else {
            net.port_forwards
                .into_iter()
                .map(|ResolvedPortForward { guest_port, host_port, protocol }| PortForward { guest_port, host_port: Some(host_port), protocol })
                .collect()
        };
        Self {
            id: vm.id,
            name: s.name,
            org_id: vm.org,
            project_id: vm.project,
            host_id: vm.host,
            host_status,
            status: vm.status,
            message: vm.message,
            image: s.image,
            vcpus: s.vcpus,
            memory_mib,
            hotplug_memory_mib: s.hotplug_memory_mib,
            disk_gb: s.disk_gb,
            root_volume_id: s.root_volume,
            delete_root_disk: s.delete_root_disk,
            root_disk: vm.root_disk,
            data_disks: s.data_disks,
            volumes: vm.volumes,
            ssh_keys: s.ssh_keys,
            user_data: s.user_data,
            env: s.env,
            boot_args: s.boot_args,
            network: s.network,
            ip: net.ip,
            mac: net.mac,
            ssh_port: net.ssh_port,
            port_forwards,
            exposed_ports: s.exposed_ports,
            gpu: s.gpu,
            plan: s.plan,
            region: s.region,
            template: s.template,
            labels: s.labels,
            from_snapshot: s.from_snapshot,
            flattened: vm.flattened,
            has_snapshot: vm.has_snapshot,
            created_at: vm.created_at,
            updated_at: vm.updated_at,
            started_at: vm.started_at,
            stopped_at: vm.stopped_at,
        }
    }
}

/// A VM as the accepted command left it, with that command's operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmAccepted {
    #[serde(flatten)]
    pub vm: VmView,
    pub operation: Operation,
}

/// The answer to a command on a VM: 202 with the VM as the command leaves it.
pub(super) fn accepted(app: &App, a: Accepted<Vm>) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(VmAccepted { vm: VmView::read(app, a.resource)?, operation: a.operation })))
}

/// Filters of `GET /v1/vms`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListVmsQuery {
    /// Page number, from 1.
    #[param(value_type = super::pagination::PageNumber, inline, required = false)]
    pub page: Option<u64>,
    /// Items per page, 1-100 (default 20).
    #[param(value_type = super::pagination::PageLimit, inline, required = false)]
    pub limit: Option<u64>,
    /// Only VMs in this status. Without it, every VM that is not deleted.
    pub status: Option<VmStatus>,
    /// Only VMs of this name (a DNS label), matched whole; with `status`, both.
    #[param(value_type = vmplane_domain::spec::DnsLabel, required = false)]
    pub name: Option<String>,
}

/// Create a VM: 202 with the VM (`pending`) and its operation.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateVmRequest,
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(req): Json<CreateVmRequest>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    let plan = req.plan.as_deref().map(|name| catalog::plan(&state.app, name)).transpose()?;
    accepted(&state.app, vms::create(&state.app, &who, alloc, req.into_new_vm(plan.as_ref())).await?)
}

/// List VMs, oldest first.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(ListVmsQuery),
    responses((status = 200, body = Page<VmView>), (status = "4XX", body = ErrorBody)))]
async fn list_vms(State(state): State<AppState>, who: Principal, Query(q): Query<ListVmsQuery>) -> ApiResult<axum::Json<Page<VmView>>> {
    let pq = PageQuery::new(q.page, q.limit)?;
    let status = q.status;
    if let Some(name) = q.name.as_deref().filter(|n| !vmplane_domain::spec::is_dns_label(n)) {
        return Err(ApiError::BadRequest("invalid_query", format!("name `{name}` is not a VM name (a DNS label of at most 63 characters)")));
    }
    let listed = vms::list(&state.app, &who, vms::Selection { status, name: q.name }, pq.window())?;
    // Hosts are few: look each one's status up once per page.
    let mut statuses = std::collections::HashMap::new();
    let mut items = Vec::with_capacity(listed.items.len());
    for vm in listed.items {
        let status = match statuses.get(&vm.host) {
            Some(s) => *s,
            None => *statuses.entry(vm.host).or_insert(crate::app::hosts::status(&state.app, vm.host)?),
        };
        items.push(VmView::new(vm, status));
    }
    Ok(axum::Json(pq.page(items, listed.total)))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 200, body = VmView), (status = "4XX", body = ErrorBody)))]
async fn get_vm(State(state): State<AppState>, who: Principal, PathId(id): PathId<VmId>) -> ApiResult<axum::Json<VmView>> {
    Ok(axum::Json(VmView::read(&state.app, vms::get(&state.app, &who, id)?)?))
}

/// Delete a VM and, unless `delete_root_disk` is false, its root disk.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::act(&state.app, &who, alloc, id, Action::Delete).await?)
}

/// Start a stopped VM. Starting a running VM is accepted and changes nothing.
#[utoipa::path(post, path = "/v1/vms/{id}/start", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn start_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::act(&state.app, &who, alloc, id, Action::Start).await?)
}

/// Stop a VM: ACPI power-down, then a hard stop. Stopping a stopped VM is accepted and changes nothing.
#[utoipa::path(post, path = "/v1/vms/{id}/stop", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn stop_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::act(&state.app, &who, alloc, id, Action::Stop).await?)
}

/// Reboot a running VM.
#[utoipa::path(post, path = "/v1/vms/{id}/restart", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn restart_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::act(&state.app, &who, alloc, id, Action::Restart).await?)
}

/// Snapshot a running VM's memory and devices to disk and stop it (`standby`).
#[utoipa::path(post, path = "/v1/vms/{id}/standby", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn standby_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::act(&state.app, &who, alloc, id, Action::Standby).await?)
}

/// Resume a VM in standby from its snapshot, memory intact.
#[utoipa::path(post, path = "/v1/vms/{id}/restore", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn restore_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::act(&state.app, &who, alloc, id, Action::Restore).await?)
}

/// `POST /v1/vms/{id}/memory` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeMemoryRequest {
    /// The memory the running VM should have, in MiB: more than now, in steps
    /// of 128 MiB, at most `memory_mib` + `hotplug_memory_mib` given at create.
    pub memory_mib: u64,
}

/// Hot-plug memory into a running VM.
#[utoipa::path(post, path = "/v1/vms/{id}/memory", tag = "vms", request_body = ResizeMemoryRequest, params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn resize_memory(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
    Json(req): Json<ResizeMemoryRequest>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::resize_memory(&state.app, &who, alloc, id, req.memory_mib).await?)
}

/// `POST /v1/vms/{id}/move` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveVmRequest {
    /// The host to move the VM to (online, not cordoned, with room and its image).
    pub host_id: HostId,
}

/// Move a stopped VM and its root disk to another host (admin). The VM must
/// hold no volumes; it gets new addresses and host ports at its next start.
#[utoipa::path(post, path = "/v1/vms/{id}/move", tag = "vms", request_body = MoveVmRequest, params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn move_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
    Json(req): Json<MoveVmRequest>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    accepted(&state.app, vms::move_to(&state.app, &who, alloc, id, req.host_id).await?)
}

/// Query of `GET /v1/vms/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VmEventsQuery {
    /// `true`: Server-Sent Events, the history then live (as `GET /v1/events`);
    /// otherwise the history as a JSON array.
    #[serde(default)]
    pub follow: bool,
    /// Only events after this stream sequence (with `follow`, as `Last-Event-ID`).
    pub last_event_id: Option<u64>,
    /// Only events of these types (the `type` filter of `GET /v1/events`).
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = vmplane_domain::event_filter::TypeFilterText, required = false)]
    pub types: Option<String>,
}

/// A VM's history: every event, oldest first; with `follow=true` as SSE, then live.
#[utoipa::path(get, path = "/v1/vms/{id}/events", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id"), VmEventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "With `follow`: resume right after this stream sequence")),
    responses((status = 200, description = "The history (JSON), or with `follow=true` SSE: `id` = stream sequence, `event` = type, `data` = EventView JSON",
            content((Vec<EventView> = "application/json"), (super::events::EventMessage = "text/event-stream"))),
        (status = "4XX", body = ErrorBody)))]
async fn vm_events(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId<VmId>,
    headers: HeaderMap,
    Query(q): Query<VmEventsQuery>,
) -> ApiResult<Response> {
    let types = type_filter(q.types.as_deref())?;
    if q.follow {
        let after = resume_after(&headers, q.last_event_id)?;
        let events = app_events::feed(&state.app, &who, FeedFilter { after, types, vm: Some(id) }).await?;
        return Ok(sse(events).into_response());
    }
    // Without `follow`, the query alone says where the history starts; a
    // malformed `Last-Event-ID` is refused all the same.
    resume_after(&headers, None)?;
    let after = resume_after(&HeaderMap::new(), q.last_event_id)?;
    let history = vms::history(&state.app, &who, id)?;
    let views: Vec<EventView> = history
        .into_iter()
        .filter(|(seq, env)| *seq > after && types.as_ref().is_none_or(|t| t.matches(&env.event)))
        .map(|(seq, env)| EventView::new(seq, env))
        .collect();
    Ok(axum::Json(views).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_name_is_required_and_defaults_are_documented_ones() {
        let req: CreateVmRequest = serde_json::from_str(r#"{"name":"web"}"#).unwrap();
        let spec = req.into_spec(None);
        assert_eq!(spec, VmSpec::named("web"));
        assert_eq!((spec.vcpus, spec.memory_mib, spec.image.as_str()), (1, 512, "debian-minimal"));
    }

    #[test]
    fn a_template_fills_only_what_the_request_leaves_out() {
        let req: CreateVmRequest = serde_json::from_str(r#"{"name":"web","vcpus":1,"user_data":"x","template":"t"}"#).unwrap();
        let new = req.into_new_vm(None);
        assert!(!new.unset.contains(&Field::Vcpus) && !new.unset.contains(&Field::UserData));
        assert!(new.unset.contains(&Field::MemoryMib) && new.unset.contains(&Field::Image) && new.unset.contains(&Field::EnableNetwork));
        assert_eq!(new.spec.template.as_deref(), Some("t"));
        let req: CreateVmRequest = serde_json::from_str(r#"{"name":"web","plan":"small","template":"t"}"#).unwrap();
        assert!(!req.unset().contains(&Field::MemoryMib), "a plan gives the sizes");
    }

    #[test]
    fn a_plan_gives_the_defaults_and_explicit_sizes_win() {
        let plan = Plan { vcpus: 8, memory_mib: 16384, disk_gb: 320, disk_type: "ssd".into(), dedicated: false, gpu: None };
        let req: CreateVmRequest = serde_json::from_str(r#"{"name":"web","plan":"power","memory_mib":1024}"#).unwrap();
        let spec = req.into_spec(Some(&plan));
        assert_eq!((spec.vcpus, spec.memory_mib, spec.disk_gb, spec.plan.as_deref()), (8, 1024, 320, Some("power")));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<CreateVmRequest>(r#"{"name":"web","cpus":2}"#).is_err());
        assert!(serde_json::from_str::<CreateVmRequest>(r#"{"name":"web","port_forwards":[{"guest_port":80,"bogus":1}]}"#).is_err());
    }

    /// The document states the data disk rules the domain checks, so a
    /// generated client cannot send a disk the server refuses for its shape.
    #[test]
    fn the_document_refuses_the_data_disks_the_domain_refuses() {
        let contract = crate::routes::contract::Contract::new(&super::super::openapi());
        let disk = |d: serde_json::Value| serde_json::json!({"name": "web", "data_disks": [d]});
        let eight: Vec<_> = (0..9).map(|i| serde_json::json!({"name": format!("d{i}"), "size_gb": 1})).collect();
        for refused in [
            disk(serde_json::json!({"name": "", "size_gb": 1})),
            disk(serde_json::json!({"name": "d", "size_gb": 0})),
            disk(serde_json::json!({"name": "d", "size_gb": 65537})),
            disk(serde_json::json!({"name": "d", "size_gb": 1, "mount_path": "/data"})),
            disk(serde_json::json!({"name": "d", "size_gb": 1, "type": "filesystem", "mount_path": "/"})),
            serde_json::json!({"name": "web", "data_disks": eight}),
        ] {
            assert!(contract.decode::<CreateVmRequest>(refused.clone()).is_err(), "{refused}");
        }
        let ok = disk(serde_json::json!({"name": "d", "size_gb": 65536, "type": "filesystem", "mount_path": "/data"}));
        let req = contract.decode::<CreateVmRequest>(ok).unwrap();
        let spec = vmplane_domain::spec::VmSpec { data_disks: req.data_disks, ..vmplane_domain::spec::VmSpec::named("web") };
        assert_eq!(spec.validate(), Ok(()), "and the domain takes what the document allows");
    }
}
