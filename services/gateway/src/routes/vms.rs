//! The native VM API: `/v1/vms`.

use crate::AppState;
use crate::auth::Principal;
use crate::commands::{Submission, accepted_before, submit};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, PathId, Query};
use crate::idempotency::Allocation;
use crate::placement::{Claim, Taken, Unfit, place};
use crate::projection::operations::Operation;
use crate::projection::vms::VmFilter;
use crate::routes::events::EventView;
use crate::routes::pagination::{Page, PageQuery};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::cidr::Cidr;
use vmplane_domain::host::{Host, PortRange};
use vmplane_domain::spec::{DataDisk, ExposedPort, GpuSpec, NetworkMode, NetworkSpec, PortForward, VmSpec, VolumeMount};
use vmplane_domain::vm::{DiskInfo, ResolvedPortForward, Vm, VmCommand, VmStatus, decide, evolve};
use vmplane_domain::volume::{self, VolumeStatus};
use vmplane_domain::{Command, HostId, ImageId, ProjectId, VmId, VolumeId, subjects};

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
}

/// Request body of `POST /v1/vms`. Only `name` is required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// DNS label, at most 63 characters.
    pub name: String,
    /// Image slug or id. Default `debian-minimal`.
    pub image: Option<String>,
    /// Default 1.
    pub vcpus: Option<u32>,
    /// Default 512.
    pub memory_mib: Option<u64>,
    /// Hot-pluggable extra memory in MiB. Default 0.
    pub hotplug_memory_mib: Option<u64>,
    /// Root disk size. Default 10.
    pub disk_gb: Option<u32>,
    /// Boot from this root disk (a volume kept from a deleted VM) instead of
    /// a new one; the VM runs the image it holds.
    pub root_volume_id: Option<VolumeId>,
    /// Delete the root disk with the VM. Default true.
    pub delete_root_disk: Option<bool>,
    #[serde(default)]
    pub data_disks: Vec<DataDisk>,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data: a `#!` script or `#cloud-config`.
    pub user_data: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub boot_args: Option<String>,
    /// Default: enabled, user-mode networking.
    pub network: Option<NetworkSpec>,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    #[serde(default)]
    pub exposed_ports: Vec<ExposedPort>,
    pub gpu: Option<GpuSpec>,
    pub plan: Option<String>,
    pub region: Option<String>,
    pub template: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl CreateVmRequest {
    /// The spec this request asks for, defaults filled in.
    pub fn into_spec(self) -> VmSpec {
        let d = VmSpec::named(self.name);
        VmSpec {
            image: self.image.unwrap_or(d.image),
            vcpus: self.vcpus.unwrap_or(d.vcpus),
            memory_mib: self.memory_mib.unwrap_or(d.memory_mib),
            hotplug_memory_mib: self.hotplug_memory_mib.unwrap_or(d.hotplug_memory_mib),
            disk_gb: self.disk_gb.unwrap_or(d.disk_gb),
            root_volume: self.root_volume_id,
            delete_root_disk: self.delete_root_disk.unwrap_or(d.delete_root_disk),
            data_disks: self.data_disks,
            volumes: self.volumes,
            ssh_keys: self.ssh_keys,
            user_data: self.user_data,
            env: self.env,
            boot_args: self.boot_args,
            network: self.network.unwrap_or(d.network),
            port_forwards: self.port_forwards,
            exposed_ports: self.exposed_ports,
            gpu: self.gpu,
            plan: self.plan,
            region: self.region,
            template: self.template,
            labels: self.labels,
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

impl From<Vm> for VmView {
    fn from(vm: Vm) -> Self {
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

/// Filters of `GET /v1/vms`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListVmsQuery {
    /// Page number, from 1.
    pub page: Option<u64>,
    /// Items per page, 1-100 (default 20).
    pub limit: Option<u64>,
    /// Only VMs in this status. Without it, every VM that is not deleted.
    pub status: Option<String>,
}

/// Find a VM the caller may see.
pub fn visible_vm(state: &AppState, who: &Principal, id: VmId) -> ApiResult<Vm> {
    state.proj.vm(id)?.filter(|vm| vm.org == who.org).ok_or_else(|| ApiError::NotFound(format!("vm {id}")))
}

/// Pick the online host with the most free memory that has the image, the
/// requested host ports free and inside its port range, and (bridge mode)
/// the requested address free (the host of the volumes it attaches, if
/// any); record the claim there.
async fn place_vm(state: &AppState, id: VmId, spec: &VmSpec, volumes_host: Option<HostId>) -> ApiResult<HostId> {
    let has_image = |i: &vmplane_domain::host::ImageInfo| i.name == spec.image || ImageId::for_slug(&i.name).to_string() == spec.image;
    let bridged = spec.network.enabled && spec.network.mode == NetworkMode::Bridge;
    let claim = Claim {
        resources: spec.resources(),
        ports: spec.port_forwards.iter().filter_map(|pf| pf.host_port).collect(),
        guest_ip: spec.network.guest_ip.filter(|_| bridged),
        guest_mac: spec.network.guest_mac.as_deref().filter(|_| bridged).map(str::to_ascii_lowercase),
        at: 0,
    };
    let check = |host: &Host, taken: &Taken| -> Option<Unfit> {
        if volumes_host.is_some_and(|h| h != host.id) {
            return Some(Unfit::VolumesElsewhere);
        }
        if !host.info.images.iter().any(has_image) {
            return Some(Unfit::NoImage(spec.image.clone()));
        }
        if bridged && host.info.bridge_cidr.is_none() {
            return Some(Unfit::NoBridge);
        }
        let network = host.info.bridge_cidr.as_deref().and_then(|c| c.parse::<Cidr>().ok());
        if let (Some(ip), Some(network)) = (claim.guest_ip, network)
            && !network.is_guest(ip)
        {
            return Some(Unfit::AddressOutsideNetwork(ip));
        }
        let range = host.info.port_range.unwrap_or(PortRange::UNPRIVILEGED);
        if let Some(p) = claim.ports.iter().find(|p| !range.contains(**p)) {
            return Some(Unfit::PortOutOfRange(*p));
        }
        if let Some(p) = claim.ports.iter().find(|p| taken.ports.contains(p)) {
            return Some(Unfit::PortTaken(*p));
        }
        if let Some(ip) = claim.guest_ip.filter(|ip| taken.ips.contains(ip)) {
            return Some(Unfit::AddressTaken(format!("guest_ip {ip}")));
        }
        claim.guest_mac.as_ref().filter(|m| taken.macs.contains(*m)).map(|m| Unfit::AddressTaken(format!("guest_mac {m}")))
    };
    place(state, &id.to_string(), claim.clone(), check, |host, taken| host.info.memory_mib.saturating_sub(taken.used.memory_mib)).await
}

/// What a create that attaches existing volumes (`volumes`, `root_volume_id`)
/// needs checked before placement: each volume is the caller's (404
/// otherwise), free (409 `volume_in_use` when another VM holds it) and on one
/// host with the others (409); a root volume is a root disk (422), and the VM
/// then runs that disk's image at its size. Returns the host the VM must be
/// placed on. The worker claims each volume again when it attaches it, and
/// fails the create if another VM took one meanwhile.
fn check_create_disks(state: &AppState, who: &Principal, id: VmId, spec: &mut VmSpec) -> ApiResult<Option<HostId>> {
    let visible = |vol: VolumeId| {
        state.proj.volume(vol)?.filter(|v| v.org == who.org && v.status != VolumeStatus::Deleted).ok_or_else(|| ApiError::NotFound(format!("volume {vol}")))
    };
    let mut volumes = spec.volumes.iter().map(|m| visible(m.volume_id)).collect::<ApiResult<Vec<_>>>()?;
    if let Some(root) = spec.root_volume {
        let vol = visible(root)?;
        let image = vol.image.clone().ok_or_else(|| ApiError::Unprocessable("not_a_root_disk", volume::VolumeError::NotRootDisk.to_string()))?;
        (spec.image, spec.disk_gb) = (image, vol.spec.size_gb);
        volumes.push(vol);
    }
    volume::host_for_create(id, &volumes).map_err(|e| ApiError::Conflict(e.code(), e.to_string()))
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
    let mut spec = req.into_spec();
    spec.validate()?;

    let id = VmId(alloc.resource());
    // A retry (same Idempotency-Key) of a create the worker carried out already.
    if let Some(vm) = state.proj.vm(id)?.filter(|vm| vm.org == who.org)
        && let Some(operation) = accepted_before(&state, alloc.op())?
    {
        return Ok((StatusCode::ACCEPTED, axum::Json(VmAccepted { vm: vm.into(), operation })));
    }
    let volumes_host = check_create_disks(&state, &who, id, &mut spec)?;
    let project = who.project_or_default();
    let host = place_vm(&state, id, &spec, volumes_host).await?;
    let command = VmCommand::Create { spec: Box::new(spec), host };
    accept(&state, &who, alloc, None, id, project, host, command).await
}

/// Accept a command on an existing VM the caller may see.
pub(crate) async fn act(state: AppState, who: Principal, alloc: Allocation, id: VmId, command: VmCommand) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    let vm = visible_vm(&state, &who, id)?;
    let (project, host) = (vm.project, vm.host);
    accept(&state, &who, alloc, Some(vm), id, project, host, command).await
}

/// Decide the command against the projected VM (refusing early what the state
/// forbids), append it, and answer with the VM as the command leaves it.
#[allow(clippy::too_many_arguments)]
async fn accept(
    state: &AppState,
    who: &Principal,
    alloc: Allocation,
    vm: Option<Vm>,
    id: VmId,
    project: ProjectId,
    host: HostId,
    command: VmCommand,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    // A retry of a command the worker took up already: deciding again would
    // refuse it (the VM moved on), so answer with what it did.
    if let Some(operation) = accepted_before(state, alloc.op())?
        && let Some(vm) = vm.as_ref().filter(|_| operation.target_id == id.to_string())
    {
        return Ok((StatusCode::ACCEPTED, axum::Json(VmAccepted { vm: vm.clone().into(), operation })));
    }
    let events = decide(vm.as_ref(), who.org, project, &command)?;
    let now = OffsetDateTime::now_utc();
    let after = events.iter().fold(vm, |s, e| evolve(s, id, None, now, e)).ok_or_else(|| ApiError::Internal("decided events left no vm".into()))?;
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::vm_command(host, id),
        kind: command.kind().as_str(),
        target_id: id.to_string(),
        project,
        command: Command::Vm { vm: id, command },
    };
    let operation = submit(state, who, sub).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(VmAccepted { vm: after.into(), operation })))
}

/// List VMs, oldest first.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(ListVmsQuery),
    responses((status = 200, body = Page<VmView>), (status = "4XX", body = ErrorBody)))]
async fn list_vms(State(state): State<AppState>, who: Principal, Query(q): Query<ListVmsQuery>) -> ApiResult<axum::Json<Page<VmView>>> {
    let pq = PageQuery::new(q.page, q.limit)?;
    let status = q.status.map(|s| s.parse::<VmStatus>().map_err(|()| ApiError::BadRequest("invalid_query", format!("unknown status `{s}`")))).transpose()?;
    let filter = VmFilter { org: who.org, project: who.project, status };
    let (vms, total) = state.proj.list_vms(&filter, pq.offset(), pq.limit())?;
    Ok(axum::Json(pq.page(vms.into_iter().map(VmView::from).collect(), total)))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = VmView), (status = "4XX", body = ErrorBody)))]
async fn get_vm(State(state): State<AppState>, who: Principal, PathId(id): PathId<VmId>) -> ApiResult<axum::Json<VmView>> {
    Ok(axum::Json(visible_vm(&state, &who, id)?.into()))
}

/// Delete a VM and, unless `delete_root_disk` is false, its root disk.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    act(state, who, alloc, id, VmCommand::Delete).await
}

/// Start a stopped VM. Starting a running VM is accepted and changes nothing.
#[utoipa::path(post, path = "/v1/vms/{id}/start", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn start_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    act(state, who, alloc, id, VmCommand::Start).await
}

/// Stop a VM: ACPI power-down, then a hard stop. Stopping a stopped VM is accepted and changes nothing.
#[utoipa::path(post, path = "/v1/vms/{id}/stop", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn stop_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    act(state, who, alloc, id, VmCommand::Stop).await
}

/// Reboot a running VM.
#[utoipa::path(post, path = "/v1/vms/{id}/restart", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn restart_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    act(state, who, alloc, id, VmCommand::Restart).await
}

/// Snapshot a running VM's memory and devices to disk and stop it (`standby`).
#[utoipa::path(post, path = "/v1/vms/{id}/standby", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn standby_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    act(state, who, alloc, id, VmCommand::Standby).await
}

/// Resume a VM in standby from its snapshot, memory intact.
#[utoipa::path(post, path = "/v1/vms/{id}/restore", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn restore_vm(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    act(state, who, alloc, id, VmCommand::Restore).await
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
#[utoipa::path(post, path = "/v1/vms/{id}/memory", tag = "vms", request_body = ResizeMemoryRequest, params(("id" = String, Path, description = "VM id")),
    responses((status = 202, body = VmAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn resize_memory(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<VmId>,
    Json(req): Json<ResizeMemoryRequest>,
) -> ApiResult<(StatusCode, axum::Json<VmAccepted>)> {
    act(state, who, alloc, id, VmCommand::ResizeMemory { memory_mib: req.memory_mib }).await
}

/// A VM's history: every event, oldest first.
#[utoipa::path(get, path = "/v1/vms/{id}/events", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = Vec<EventView>), (status = "4XX", body = ErrorBody)))]
async fn vm_events(State(state): State<AppState>, who: Principal, PathId(id): PathId<VmId>) -> ApiResult<axum::Json<Vec<EventView>>> {
    visible_vm(&state, &who, id)?;
    Ok(axum::Json(state.proj.vm_events(id)?.into_iter().map(|(seq, env)| EventView::new(seq, env)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_name_is_required_and_defaults_are_documented_ones() {
        let req: CreateVmRequest = serde_json::from_str(r#"{"name":"web"}"#).unwrap();
        let spec = req.into_spec();
        assert_eq!(spec, VmSpec::named("web"));
        assert_eq!((spec.vcpus, spec.memory_mib, spec.image.as_str()), (1, 512, "debian-minimal"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<CreateVmRequest>(r#"{"name":"web","cpus":2}"#).is_err());
        assert!(serde_json::from_str::<CreateVmRequest>(r#"{"name":"web","port_forwards":[{"guest_port":80,"bogus":1}]}"#).is_err());
    }
}
