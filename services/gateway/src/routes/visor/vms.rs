//! `vm.all`, `vm.one`, `vm.launch`, `vm.start`, `vm.stop`, `vm.restart`, `vm.destroy`.

use super::error::{ErrorEnvelope, VisorError, VisorResult};
use super::extract::{Caller, Input, parse_id, required};
use super::views::{Envelope, Launched, VmDetail, VmSummary, envelope};
use crate::AppState;
use crate::app::vms::{self, Action};
use crate::app::{self, Allocation, Principal, Window};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use vmplane_domain::spec::{SpecError, VmSpec};
use vmplane_domain::vm::{Vm, VmStatus};
use vmplane_domain::{OrgId, VmId};

/// Input of `vm.all`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllInput {
    /// Required: the caller's org (the admin: any org).
    #[schema(value_type = OrgId)]
    pub organization_id: Option<String>,
}

/// Input of the procedures on one VM.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmInput {
    /// Required.
    #[schema(value_type = VmId)]
    pub vm_id: Option<String>,
    /// Optional (an addition): the org to act in; default the caller's
    /// (the admin's: `default`).
    #[schema(value_type = Option<OrgId>)]
    pub organization_id: Option<String>,
}

/// Input of `vm.launch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchInput {
    /// Required.
    #[schema(value_type = OrgId)]
    pub organization_id: Option<String>,
    /// Required: a DNS label, at most 63 characters.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: Option<String>,
    /// Required: a catalog plan (nano, micro, small, medium, power, power-dedicated).
    #[schema(value_type = vmplane_domain::catalog::PlanName)]
    pub plan: Option<String>,
    /// Required: a catalog region a host serves (us-east, us-west, eu-west, ap-south).
    #[schema(value_type = vmplane_domain::catalog::RegionCode)]
    pub region: Option<String>,
    /// Required: a catalog image name (ubuntu-22.04, ubuntu-24.04, debian-12, rocky-9, fedora-40, ...).
    #[schema(value_type = vmplane_domain::catalog::ImageRef)]
    pub os: Option<String>,
    /// OpenSSH public keys for root, at most 10.
    #[schema(value_type = Option<Vec<vmplane_domain::ssh_key::PublicKeyText>>, max_items = 10)]
    pub ssh_keys: Option<Vec<String>>,
    /// cloud-init user data (a `#!` script or `#cloud-config`), run on first boot; at most 64 Ki characters.
    #[schema(max_length = 65536)]
    pub user_data: Option<String>,
}

impl VmInput {
    /// The VM id and the caller scoped to the org named (or its own).
    pub fn scoped(&self, state: &AppState, caller: Caller) -> VisorResult<(VmId, Principal)> {
        let id = parse_id("vmId", required("vmId", &self.vm_id)?)?;
        Ok((id, caller.scope(state, self.organization_id.as_deref())?))
    }
}

/// A VM the caller may see and that is not destroyed.
pub fn visible(state: &AppState, who: &Principal, id: VmId) -> VisorResult<Vm> {
    Some(vms::get(&state.app, who, id)?).filter(|vm| vm.status != VmStatus::Deleted).ok_or_else(|| VisorError::not_found(format!("vm {id} not found")))
}

/// A spec rule broken, named by Visor's field.
pub fn spec_error(e: SpecError) -> VisorError {
    let field = match e.field {
        "image" => "os",
        "vcpus" | "memory_mib" | "disk_gb" | "gpu" => "plan",
        "ssh_keys" => "sshKeys",
        "user_data" => "userData",
        "mount_path" => "mountPath",
        other => other,
    };
    VisorError::bad_request(format!("{field}: {}", e.reason))
}

/// List all VMs of the organization, oldest first.
#[utoipa::path(get, path = "/api/vm.all", tag = "vm",
    params(("organizationId" = OrgId, Query, description = "The caller's organization (the admin: any)")),
    responses((status = 200, body = Envelope<Vec<VmSummary>>), (status = "4XX", body = ErrorEnvelope)))]
pub async fn all(State(state): State<AppState>, caller: Caller, Input(input): Input<AllInput>) -> VisorResult<axum::Json<Envelope<Vec<VmSummary>>>> {
    let org = required("organizationId", &input.organization_id)?;
    let who = caller.scope(&state, Some(org))?;
    let listed = vms::list(&state.app, &who, Default::default(), Window { offset: 0, limit: usize::MAX })?;
    Ok(envelope(listed.items.iter().map(|vm| VmSummary::new(&state.app, vm)).collect()))
}

/// Get VM details.
#[utoipa::path(get, path = "/api/vm.one", tag = "vm",
    params(("vmId" = VmId, Query), ("organizationId" = Option<OrgId>, Query, description = "The org to act in (an addition)")),
    responses((status = 200, body = Envelope<VmDetail>), (status = "4XX", body = ErrorEnvelope)))]
pub async fn one(State(state): State<AppState>, caller: Caller, Input(input): Input<VmInput>) -> VisorResult<axum::Json<Envelope<VmDetail>>> {
    let (id, who) = input.scoped(&state, caller)?;
    let vm = visible(&state, &who, id)?;
    Ok(envelope(VmDetail::new(&state.app, &who, &vm)))
}

/// Launch a new VM: 201, `provisioning`; it runs, with its address, once booted.
#[utoipa::path(post, path = "/api/vm.launch", tag = "vm", request_body = LaunchInput,
    responses((status = 201, body = Envelope<Launched>), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn launch(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Input(input): Input<LaunchInput>,
) -> VisorResult<(StatusCode, axum::Json<Envelope<Launched>>)> {
    let org = required("organizationId", &input.organization_id)?;
    let name = required("name", &input.name)?;
    let plan_name = required("plan", &input.plan)?;
    let region = required("region", &input.region)?;
    let os = required("os", &input.os)?;
    let who = caller.scope(&state, Some(org))?;
    let plan = app::catalog::plan(&state.app, plan_name)?;
    let spec = VmSpec {
        image: os.to_owned(),
        vcpus: plan.vcpus,
        memory_mib: plan.memory_mib,
        disk_gb: plan.disk_gb,
        gpu: plan.gpu.clone(),
        plan: Some(plan_name.to_owned()),
        region: Some(region.to_owned()),
        ssh_keys: input.ssh_keys.unwrap_or_default(),
        user_data: input.user_data,
        ..VmSpec::named(name)
    };
    spec.validate().map_err(spec_error)?;
    let accepted = vms::create(&state.app, &who, alloc, spec).await?;
    Ok((StatusCode::CREATED, envelope(Launched::new(&accepted.resource))))
}

/// Start, stop or restart a VM; answers the VM as the command leaves it.
async fn act(state: AppState, caller: Caller, alloc: Allocation, input: VmInput, action: Action) -> VisorResult<axum::Json<Envelope<VmDetail>>> {
    let (id, who) = input.scoped(&state, caller)?;
    visible(&state, &who, id)?;
    let accepted = vms::act(&state.app, &who, alloc, id, action).await?;
    Ok(envelope(VmDetail::new(&state.app, &who, &accepted.resource)))
}

/// Boot a stopped VM; a running one is left as it is.
#[utoipa::path(post, path = "/api/vm.start", tag = "vm", request_body = VmInput,
    responses((status = 200, body = Envelope<VmDetail>), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Input(input): Input<VmInput>,
) -> VisorResult<axum::Json<Envelope<VmDetail>>> {
    act(state, caller, alloc, input, Action::Start).await
}

/// Gracefully shut a VM down (ACPI, then a hard stop); a stopped one is left as it is.
#[utoipa::path(post, path = "/api/vm.stop", tag = "vm", request_body = VmInput,
    responses((status = 200, body = Envelope<VmDetail>), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Input(input): Input<VmInput>,
) -> VisorResult<axum::Json<Envelope<VmDetail>>> {
    act(state, caller, alloc, input, Action::Stop).await
}

/// Reboot a running VM (CONFLICT when it is not running).
#[utoipa::path(post, path = "/api/vm.restart", tag = "vm", request_body = VmInput,
    responses((status = 200, body = Envelope<VmDetail>), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn restart(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Input(input): Input<VmInput>,
) -> VisorResult<axum::Json<Envelope<VmDetail>>> {
    act(state, caller, alloc, input, Action::Restart).await
}

/// Permanently destroy a VM and its boot disk; attached volumes are detached and kept. 204.
#[utoipa::path(delete, path = "/api/vm.destroy", tag = "vm", request_body = VmInput,
    responses((status = 204, description = "Destroying"), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn destroy(State(state): State<AppState>, caller: Caller, alloc: Allocation, Input(input): Input<VmInput>) -> VisorResult<StatusCode> {
    let (id, who) = input.scoped(&state, caller)?;
    visible(&state, &who, id)?;
    vms::act(&state.app, &who, alloc, id, Action::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}
