//! Hatch's VMs: `/vms`. Create, stop, start and delete answer when the VM
//! got there (they wait for their operation through `app::vms::wait`).

use super::HatchConfig;
use super::error::{ErrorBody, HatchError, HatchResult};
use super::extract::{Body, Caller, VmPath};
use crate::AppState;
use crate::app::vms::{self, Action, NewVm};
use crate::app::{Accepted, Allocation, App, OpStatus, Principal, Window, catalog};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vmplane_domain::VmId;
use vmplane_domain::placement::Placement;
use vmplane_domain::spec::{MAX_MEMORY_MIB, MAX_VCPUS, NetworkMode, VmSpec};
use vmplane_domain::template::Field;
use vmplane_domain::vm::{Vm, VmStatus, tap_name};

/// The image name Hatch calls its default image: a catalog alias (of
/// `debian-minimal`, unless the operator's catalog maps it elsewhere).
pub const DEFAULT_IMAGE_ID: &str = "img_default";

/// How long create, start, stop and delete wait for their operation before
/// answering 202 with the VM as it is: longer than a guest may take to
/// become ready (the worker's `--ready-timeout-secs`, 180 by default).
pub const WAIT: Duration = Duration::from_secs(240);

/// Routes of this module; a method a path does not serve is a 405 in Hatch's shape.
pub fn router() -> OpenApiRouter<AppState> {
    let (s, p, m) = routes!(create_vm, list_vms);
    let collection = (s, p, m.fallback(method_not_allowed));
    let (s, p, m) = routes!(get_vm, delete_vm);
    let one = (s, p, m.fallback(method_not_allowed));
    let (s, p, m) = routes!(stop_vm);
    let stop = (s, p, m.fallback(method_not_allowed));
    let (s, p, m) = routes!(start_vm);
    let start = (s, p, m.fallback(method_not_allowed));
    OpenApiRouter::new().routes(collection).routes(one).routes(stop).routes(start)
}

async fn method_not_allowed() -> HatchError {
    HatchError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// `POST /vms` body. Every field is optional, and so is the body itself
/// (none is `{}`). The bounds below are the ones `into_new_vm` and the VM
/// spec check; the body is checked against this schema first (`Body`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Image to boot: `img_default` (the default), any catalog name or alias,
    /// an installed image slug or `img_` id. The response says which image ran.
    #[schema(value_type = Option<vmplane_domain::catalog::ImageRef>)]
    pub image_id: Option<String>,
    /// A template (`/v1/templates`) by id or name: its values fill every field
    /// this request leaves out. One that does not exist is a 400.
    pub template_id: Option<String>,
    /// Default: `HATCH_DEFAULT_VCPU` (1). At most `MAX_VCPUS` (256).
    #[schema(minimum = 1, maximum = 256)]
    pub vcpu_count: Option<i64>,
    /// Default: `HATCH_DEFAULT_MEM_MIB` (512); at least 64, at most `MAX_MEMORY_MIB` (4194304).
    #[schema(minimum = 64, maximum = 4194304)]
    pub mem_mib: Option<i64>,
    /// Extra kernel command line arguments.
    #[schema(value_type = Option<vmplane_domain::spec::BootArgs>)]
    pub boot_args: Option<String>,
    /// Default true. Without a network the VM has no address and no SSH port.
    pub enable_network: Option<bool>,
    /// An address on the host's bridge (bridge networking); without it the
    /// VM uses user-mode networking and SSH reaches it through `ssh_port`.
    /// Needs `enable_network` (not false).
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub guest_ip: Option<String>,
    /// Default: generated. A unicast MAC such as `02:fc:00:00:00:0a`. Needs
    /// `enable_network` (not false).
    #[schema(pattern = r"^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$")]
    pub guest_mac: Option<String>,
    /// cloud-init user data: a `#!` script or `#cloud-config`, at most 64 Ki characters.
    #[schema(max_length = 65536)]
    pub user_data: Option<String>,
}

/// The rule between the request's fields, as JSON Schema: an address or a
/// MAC is chosen only for a VM with a network.
pub(super) fn create_conditions() -> serde_json::Value {
    serde_json::json!({"allOf": [{
        "if": {"properties": {"enable_network": {"const": false}}, "required": ["enable_network"]},
        "then": {"properties": {"guest_ip": {"type": "null"}, "guest_mac": {"type": "null"}}}
    }]})
}

impl CreateVmRequest {
    /// The create this request asks for, Hatch's defaults filled in, or why
    /// it is malformed. The VM is named after its id (`vm-<ulid>`): Hatch
    /// VMs have no names.
    fn into_new_vm(self, id: VmId, cfg: &HatchConfig) -> HatchResult<NewVm> {
        let size = |field: &str, v: Option<i64>, lo: u64, hi: u64| -> HatchResult<Option<u64>> {
            v.map(|n| {
                u64::try_from(n).ok().filter(|n| (lo..=hi).contains(n)).ok_or_else(|| HatchError::bad_request(format!("{field} must be between {lo} and {hi}")))
            })
            .transpose()
        };
        let vcpus = size("vcpu_count", self.vcpu_count, 1, u64::from(MAX_VCPUS))?.map(|n| n as u32);
        let memory_mib = size("mem_mib", self.mem_mib, 64, MAX_MEMORY_MIB)?;
        let guest_ip = self
            .guest_ip
            .as_deref()
            .map(|ip| ip.parse::<Ipv4Addr>().map_err(|_| HatchError::bad_request("guest_ip must be an IPv4 address such as 172.16.0.10")))
            .transpose()?;
        if self.enable_network == Some(false) && (guest_ip.is_some() || self.guest_mac.is_some()) {
            return Err(HatchError::bad_request("guest_ip and guest_mac need enable_network"));
        }
        let mut unset: BTreeSet<Field> =
            [Field::HotplugMemoryMib, Field::DiskGb, Field::PortForwards, Field::SshKeys, Field::Env, Field::Labels].into_iter().collect();
        let mut absent = |given: bool, field: Field| {
            if !given {
                unset.insert(field);
            }
        };
        absent(self.image_id.is_some(), Field::Image);
        absent(vcpus.is_some(), Field::Vcpus);
        absent(memory_mib.is_some(), Field::MemoryMib);
        absent(self.boot_args.is_some(), Field::BootArgs);
        absent(self.user_data.is_some(), Field::UserData);
        absent(self.enable_network.is_some(), Field::EnableNetwork);
        absent(guest_ip.is_some(), Field::NetworkMode);
        let mut spec = VmSpec::named(format!("vm-{}", &id.to_string()[VmId::PREFIX.len() + 1..]));
        spec.image = self.image_id.unwrap_or_else(|| DEFAULT_IMAGE_ID.to_owned());
        spec.vcpus = vcpus.unwrap_or(cfg.default_vcpus);
        spec.memory_mib = memory_mib.unwrap_or(cfg.default_memory_mib);
        spec.boot_args = self.boot_args;
        spec.user_data = self.user_data;
        spec.template = self.template_id;
        spec.network.enabled = self.enable_network.unwrap_or(true);
        if guest_ip.is_some() {
            spec.network.mode = NetworkMode::Bridge;
            spec.network.guest_ip = guest_ip;
        }
        spec.network.guest_mac = self.guest_mac;
        Ok(NewVm { spec, unset, ssh_key_ids: Vec::new(), placement: Placement::default() })
    }
}

/// A VM's state in Hatch's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Snapshotted,
    Error,
}

impl From<VmStatus> for VmState {
    fn from(s: VmStatus) -> Self {
        match s {
            VmStatus::Pending | VmStatus::Provisioning | VmStatus::Starting | VmStatus::Restarting | VmStatus::Restoring => Self::Starting,
            VmStatus::Running => Self::Running,
            VmStatus::Stopping | VmStatus::Deleting => Self::Stopping,
            VmStatus::Stopped | VmStatus::Deleted => Self::Stopped,
            VmStatus::Standby => Self::Snapshotted,
            VmStatus::Failed => Self::Error,
        }
    }
}

/// A VM as Hatch shows it. Fields without a value are left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmView {
    /// `vm_` and a ULID.
    pub id: String,
    /// The image that runs: `img_default` for the default image, else its installed slug.
    pub image_id: String,
    /// The template the VM was created from, by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    pub state: VmState,
    pub vcpu_count: u32,
    /// Memory now, including memory hot-plugged through `/v1`.
    pub mem_mib: u64,
    /// The guest's address: on the bridge (bridge networking), or inside its
    /// private user-mode network (reachable through `ssh_port` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// The host's tap device of a bridge-networked VM; user-mode networking has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap_name: Option<String>,
    /// The host port forwarded to the guest's port 22 (user-mode networking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    pub enable_network: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl VmView {
    fn new(app: &App, vm: Vm) -> Self {
        let memory = vm.memory_mib();
        let s = vm.spec;
        let net = vm.network.filter(|_| s.network.enabled).unwrap_or_default();
        let bridged = s.network.enabled && s.network.mode == NetworkMode::Bridge;
        let is_default = catalog::get(app).images().get(&s.image).is_some_and(|e| e.aliases.iter().any(|a| a == DEFAULT_IMAGE_ID));
        Self {
            id: vm.id.to_string(),
            image_id: if is_default { DEFAULT_IMAGE_ID.to_owned() } else { s.image },
            template_id: s.template,
            state: vm.status.into(),
            vcpu_count: s.vcpus,
            mem_mib: memory,
            guest_ip: net.ip,
            guest_mac: net.mac,
            tap_name: bridged.then(|| tap_name(vm.id)),
            ssh_port: net.ssh_port,
            user_data: s.user_data,
            enable_network: s.network.enabled,
            created_at: vm.created_at,
            updated_at: vm.updated_at,
        }
    }
}

/// `DELETE /vms/{id}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteResponse {
    /// `deleted`, or `deleting` (202) when it took longer than the wait.
    pub status: String,
}

/// A VM the caller may see that is not deleted (a deleted VM is gone for Hatch).
fn visible(app: &App, who: &Principal, id: VmId) -> HatchResult<Vm> {
    vms::get(app, who, id).ok().filter(|vm| vm.status != VmStatus::Deleted).ok_or_else(|| HatchError::vm_not_found(&id.to_string()))
}

/// Wait for an accepted command's operation: when it succeeded, `done` and
/// the VM; when it failed (the guest did not boot, did not stop, ...), a 409
/// saying why and naming the VM, which stays (in state `error` when it
/// failed); when it is still under way, 202 and the VM as it is. A guest's
/// failure is never a 5xx.
async fn settle(app: &App, who: &Principal, accepted: Accepted<Vm>, done: StatusCode) -> HatchResult<(StatusCode, Vm)> {
    let a = vms::wait(app, who, accepted, WAIT).await?;
    match a.operation.status {
        OpStatus::Succeeded => Ok((done, a.resource)),
        OpStatus::Failed => {
            let why = a.operation.error.map_or_else(|| "unknown reason".to_owned(), |e| e.message);
            let id = a.resource.id;
            Err(HatchError::new(StatusCode::CONFLICT, format!("vm {id} failed: {why} (GET /vms/{id} shows it; DELETE removes it)")))
        }
        OpStatus::Pending | OpStatus::Running => Ok((StatusCode::ACCEPTED, a.resource)),
    }
}

/// Run a lifecycle action and answer the VM once it is done.
async fn act(state: &AppState, who: &Principal, alloc: Allocation, id: VmId, action: Action) -> HatchResult<(StatusCode, axum::Json<VmView>)> {
    let app = &state.app;
    visible(app, who, id)?;
    let accepted = vms::act(app, who, alloc, id, action).await?;
    let (status, vm) = settle(app, who, accepted, StatusCode::OK).await?;
    Ok((status, axum::Json(VmView::new(app, vm))))
}

/// Create and start a VM; answers 201 once it is running.
#[utoipa::path(post, path = "/vms", tag = "vms",
    request_body(content = CreateVmRequest, description = "Optional: no body is `{}` (every default).", content_type = "application/json"),
    responses((status = 201, description = "Running", body = VmView), (status = 202, description = "Still starting after the wait", body = VmView),
        (status = "4XX", body = ErrorBody), (status = 409, description = "The VM did not start (it stays, in state error)", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_vm(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    Body(req): Body<CreateVmRequest>,
) -> HatchResult<(StatusCode, axum::Json<VmView>)> {
    let app = &state.app;
    let new = req.into_new_vm(VmId(alloc.resource()), &app.config().hatch)?;
    let accepted = vms::create(app, &who, alloc, new).await?;
    let (status, vm) = settle(app, &who, accepted, StatusCode::CREATED).await?;
    Ok((status, axum::Json(VmView::new(app, vm))))
}

/// Every VM of the caller's org, oldest first: a bare array.
#[utoipa::path(get, path = "/vms", tag = "vms", responses((status = 200, body = Vec<VmView>), (status = "4XX", body = ErrorBody)))]
async fn list_vms(State(state): State<AppState>, Caller(who): Caller) -> HatchResult<axum::Json<Vec<VmView>>> {
    let app = &state.app;
    let listed = vms::list(app, &who, Default::default(), Window { offset: 0, limit: usize::MAX })?;
    Ok(axum::Json(listed.items.into_iter().map(|vm| VmView::new(app, vm)).collect()))
}

/// One VM.
#[utoipa::path(get, path = "/vms/{id}", tag = "vms", params(("id" = String, Path, description = "The VM id")),
    responses((status = 200, body = VmView), (status = "4XX", body = ErrorBody)))]
async fn get_vm(State(state): State<AppState>, Caller(who): Caller, VmPath(id): VmPath) -> HatchResult<axum::Json<VmView>> {
    Ok(axum::Json(VmView::new(&state.app, visible(&state.app, &who, id)?)))
}

/// Stop and delete a VM; answers once it is gone.
#[utoipa::path(delete, path = "/vms/{id}", tag = "vms", params(("id" = String, Path, description = "The VM id")),
    responses((status = 200, description = "Deleted", body = DeleteResponse), (status = 202, description = "Still deleting after the wait", body = DeleteResponse),
        (status = "4XX", description = "409 also when the VM did not get there", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_vm(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    VmPath(id): VmPath,
) -> HatchResult<(StatusCode, axum::Json<DeleteResponse>)> {
    let app = &state.app;
    visible(app, &who, id)?;
    let accepted = vms::act(app, &who, alloc, id, Action::Delete).await?;
    let (status, _) = settle(app, &who, accepted, StatusCode::OK).await?;
    let word = if status == StatusCode::OK { "deleted" } else { "deleting" };
    Ok((status, axum::Json(DeleteResponse { status: word.into() })))
}

/// Gracefully stop a running VM (ACPI power-down, then a hard stop); answers the VM once stopped.
#[utoipa::path(post, path = "/vms/{id}/stop", tag = "vms", params(("id" = String, Path, description = "The VM id")),
    responses((status = 200, description = "Stopped", body = VmView), (status = 202, description = "Still stopping after the wait", body = VmView),
        (status = "4XX", description = "409 also when the VM did not get there", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn stop_vm(State(state): State<AppState>, Caller(who): Caller, alloc: Allocation, VmPath(id): VmPath) -> HatchResult<(StatusCode, axum::Json<VmView>)> {
    act(&state, &who, alloc, id, Action::Stop).await
}

/// Start a stopped VM (not in the Hatch document: vmplane's addition); answers the VM once running.
#[utoipa::path(post, path = "/vms/{id}/start", tag = "vms", params(("id" = String, Path, description = "The VM id")),
    responses((status = 200, description = "Running", body = VmView), (status = 202, description = "Still starting after the wait", body = VmView),
        (status = "4XX", description = "409 also when the VM did not get there", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn start_vm(State(state): State<AppState>, Caller(who): Caller, alloc: Allocation, VmPath(id): VmPath) -> HatchResult<(StatusCode, axum::Json<VmView>)> {
    act(&state, &who, alloc, id, Action::Start).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_vm(json: &str) -> HatchResult<NewVm> {
        let req: CreateVmRequest = serde_json::from_str(json).unwrap();
        req.into_new_vm(VmId::new(), &HatchConfig { default_vcpus: 2, default_memory_mib: 768 })
    }

    #[test]
    fn defaults_come_from_the_config_and_the_request_wins() {
        let new = new_vm("{}").unwrap();
        assert_eq!((new.spec.vcpus, new.spec.memory_mib, new.spec.image.as_str()), (2, 768, DEFAULT_IMAGE_ID));
        assert!(new.spec.network.enabled && new.spec.network.mode == NetworkMode::User);
        assert!(new.unset.contains(&Field::Vcpus) && new.unset.contains(&Field::Image) && new.unset.contains(&Field::UserData));
        new.spec.validate().unwrap();
        let new = new_vm(r#"{"vcpu_count":1,"mem_mib":1024,"user_data":"x","guest_ip":"172.16.0.10","guest_mac":"02:FC:00:00:00:0A"}"#).unwrap();
        assert_eq!((new.spec.vcpus, new.spec.memory_mib), (1, 1024));
        assert!(!new.unset.contains(&Field::Vcpus) && !new.unset.contains(&Field::UserData) && !new.unset.contains(&Field::NetworkMode));
        assert_eq!((new.spec.network.mode, new.spec.network.guest_ip), (NetworkMode::Bridge, Some(Ipv4Addr::new(172, 16, 0, 10))));
        new.spec.validate().unwrap();
    }

    #[test]
    fn malformed_sizes_and_addresses() {
        for bad in [
            r#"{"vcpu_count":0}"#,
            r#"{"vcpu_count":-1}"#,
            r#"{"mem_mib":0}"#,
            r#"{"mem_mib":-512}"#,
            r#"{"mem_mib":32}"#,
            r#"{"guest_ip":"300.1.1.1"}"#,
            r#"{"guest_ip":"fe80::1"}"#,
            r#"{"enable_network":false,"guest_ip":"172.16.0.10"}"#,
        ] {
            assert_eq!(new_vm(bad).err().map(|e| e.status), Some(StatusCode::BAD_REQUEST), "{bad}");
        }
    }

    #[test]
    fn states() {
        assert_eq!(VmState::from(VmStatus::Standby), VmState::Snapshotted);
        assert_eq!(VmState::from(VmStatus::Provisioning), VmState::Starting);
        assert_eq!(VmState::from(VmStatus::Failed), VmState::Error);
        assert_eq!(serde_json::to_value(VmState::Snapshotted).unwrap(), "snapshotted");
    }
}
