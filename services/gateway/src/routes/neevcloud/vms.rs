//! `/api/v1/orgs/{org_id}/projects/{project_id}/vms`: list, create, get,
//! delete, start, stop, restart.

use super::auth::Caller;
use super::error::{ErrorResponse, Json, NeevError, NeevResult, Query};
use super::pagination::{Page, PageParams};
use super::requests::CreateVmRequest;
use super::views::{Render, VmListResponse, VmResponse};
use crate::AppState;
use crate::app::vms::{self, Action};
use crate::app::{Allocation, App, Principal, catalog};
use axum::extract::State;
use axum::http::StatusCode;
use vmplane_domain::VmId;
use vmplane_domain::vm::{Vm, VmStatus};

/// A VM of the caller's org in the path's project (404 otherwise).
fn vm_in_project(app: &App, who: &Principal, id: VmId) -> NeevResult<Vm> {
    vms::get(app, who, id).ok().filter(|vm| Some(vm.project) == who.project).ok_or_else(|| NeevError::not_found(format!("vm {}", super::ids::uuid(id.0))))
}

/// List VMs
///
/// Retrieves a paginated list of virtual machines for a specific project.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/projects/{project_id}/vms", tag = "VM", operation_id = "listVMs",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("page" = Option<i64>, Query, minimum = 1, description = "Page number for pagination (starts from 1)."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Number of items to return per page (default 20, maximum 100)."),
    ),
    responses(
        (status = 200, description = "A paginated list of VMs.", body = VmListResponse),
        (status = 400, description = "The request is invalid.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "The project was not found.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn list_vms(State(state): State<AppState>, caller: Caller, Query(q): Query<PageParams>) -> NeevResult<axum::Json<VmListResponse>> {
    let page = Page::new(&q)?;
    let listed = vms::list(&state.app, &caller.who, Default::default(), page.window())?;
    let render = Render::new(&state.app, &caller.who);
    Ok(axum::Json(VmListResponse { data: listed.items.into_iter().map(|vm| render.vm(vm)).collect(), pagination: page.pagination(listed.total) }))
}

/// Create a VM
///
/// Creates a new virtual machine with the specified compute, root disk, optional GPU, and network configuration.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/projects/{project_id}/vms", tag = "VM", operation_id = "createVM", request_body = CreateVmRequest,
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
    ),
    responses(
        (status = 201, description = "The VM was created successfully.", body = VmResponse),
        (status = 400, description = "The request payload is invalid.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "The project, region ID, or image was not found.", body = ErrorResponse),
        (status = 409, description = "The root disk is already attached to another VM.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn create_vm(
    State(state): State<AppState>,
    caller: Caller,
    alloc: Allocation,
    Json(req): Json<CreateVmRequest>,
) -> NeevResult<(StatusCode, axum::Json<VmResponse>)> {
    let (app, who) = (&state.app, &caller.who);
    let checked = req.check()?;
    let plan = catalog::plan(app, &checked.plan)?;
    let spec = checked.into_spec(app, who, &plan)?;
    let created = vms::create(app, who, alloc, spec).await?;
    Ok((StatusCode::CREATED, axum::Json(Render::new(app, who).vm(created.resource))))
}

/// Get VM by ID
///
/// Fetches the details of a specific VM by its unique identifier.
#[utoipa::path(get, path = "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}", tag = "VM", operation_id = "getVM",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("vm_id" = String, Path, format = "uuid", description = "The unique identifier of the VM."),
    ),
    responses(
        (status = 200, description = "Detailed information about the VM.", body = VmResponse),
        (status = 400, description = "The request is invalid.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "A VM with the specified ID was not found.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn get_vm(State(state): State<AppState>, caller: Caller) -> NeevResult<axum::Json<VmResponse>> {
    let vm = vm_in_project(&state.app, &caller.who, VmId(caller.uuid("vm_id")?))?;
    Ok(axum::Json(Render::new(&state.app, &caller.who).vm(vm)))
}

/// Delete a VM
///
/// Permanently deletes a specific VM by its unique ID.
#[utoipa::path(delete, path = "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}", tag = "VM", operation_id = "deleteVM",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("vm_id" = String, Path, format = "uuid", description = "The unique identifier of the VM to delete."),
    ),
    responses(
        (status = 202, description = "The VM deletion request was accepted."),
        (status = 400, description = "The request is invalid.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "A VM with the specified ID was not found.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn delete_vm(State(state): State<AppState>, caller: Caller, alloc: Allocation) -> NeevResult<StatusCode> {
    let id = VmId(caller.uuid("vm_id")?);
    vm_in_project(&state.app, &caller.who, id)?;
    vms::act(&state.app, &caller.who, alloc, id, Action::Delete).await?;
    Ok(StatusCode::ACCEPTED)
}

/// The three actions of this API.
#[derive(Debug, Clone, Copy)]
enum Power {
    Start,
    Stop,
    Restart,
}

/// Start, stop or restart; a start of a running VM (or one on its way to
/// running), a stop of a stopped one (or one stopping) and a restart of one
/// that is not running have no effect (202, nothing appended). A start of a
/// VM on standby (another API's) resumes it.
async fn power(state: &AppState, caller: &Caller, alloc: Allocation, power: Power) -> NeevResult<(StatusCode, axum::Json<VmResponse>)> {
    let (app, who) = (&state.app, &caller.who);
    let id = VmId(caller.uuid("vm_id")?);
    let vm = vm_in_project(app, who, id)?;
    let action = match (power, vm.status) {
        (_, VmStatus::Deleted) => return Err(NeevError::not_found(format!("vm {}", super::ids::uuid(id.0)))),
        (Power::Start, VmStatus::Running | VmStatus::Pending | VmStatus::Provisioning | VmStatus::Starting | VmStatus::Restarting | VmStatus::Restoring)
        | (Power::Stop, VmStatus::Stopped | VmStatus::Standby | VmStatus::Stopping) => None,
        (Power::Restart, s) if s != VmStatus::Running => None,
        (Power::Start, VmStatus::Standby) => Some(Action::Restore),
        (Power::Start, _) => Some(Action::Start),
        (Power::Stop, _) => Some(Action::Stop),
        (Power::Restart, _) => Some(Action::Restart),
    };
    let vm = match action {
        Some(action) => vms::act(app, who, alloc, id, action).await?.resource,
        None => vm,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(Render::new(app, who).vm(vm))))
}

/// Start a VM
///
/// Starts a stopped VM. Has no effect if the VM is already running.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/start", tag = "VM", operation_id = "startVM",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("vm_id" = String, Path, format = "uuid", description = "The unique identifier of the VM to start."),
    ),
    responses(
        (status = 202, description = "The start request was accepted. Returns the VM with its current status (may still be transitioning to running).", body = VmResponse),
        (status = 400, description = "The request is invalid or VM is not in a state that allows start.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "A VM with the specified ID was not found.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn start_vm(State(state): State<AppState>, caller: Caller, alloc: Allocation) -> NeevResult<(StatusCode, axum::Json<VmResponse>)> {
    power(&state, &caller, alloc, Power::Start).await
}

/// Stop a VM
///
/// Stops a running VM. Has no effect if the VM is already stopped.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/stop", tag = "VM", operation_id = "stopVM",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("vm_id" = String, Path, format = "uuid", description = "The unique identifier of the VM to stop."),
    ),
    responses(
        (status = 202, description = "The stop request was accepted. Returns the VM with its current status (may still be transitioning to stopped).", body = VmResponse),
        (status = 400, description = "The request is invalid or VM is not in a state that allows stop.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "A VM with the specified ID was not found.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn stop_vm(State(state): State<AppState>, caller: Caller, alloc: Allocation) -> NeevResult<(StatusCode, axum::Json<VmResponse>)> {
    power(&state, &caller, alloc, Power::Stop).await
}

/// Restart a VM
///
/// Restarts a running VM. Has no effect if the VM is not running.
#[utoipa::path(post, path = "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/restart", tag = "VM", operation_id = "restartVM",
    params(
        ("org_id" = String, Path, description = "The organization identifier."),
        ("project_id" = String, Path, description = "The project identifier."),
        ("vm_id" = String, Path, format = "uuid", description = "The unique identifier of the VM to restart."),
    ),
    responses(
        (status = 202, description = "The restart request was accepted. Returns the VM with its current status (may still be transitioning).", body = VmResponse),
        (status = 400, description = "The request is invalid or VM is not in a state that allows restart.", body = ErrorResponse),
        (status = 401, description = "Unauthorized access.", body = ErrorResponse),
        (status = 404, description = "A VM with the specified ID was not found.", body = ErrorResponse),
        (status = 500, description = "An unexpected internal server error occurred.", body = ErrorResponse),
    ))]
async fn restart_vm(State(state): State<AppState>, caller: Caller, alloc: Allocation) -> NeevResult<(StatusCode, axum::Json<VmResponse>)> {
    power(&state, &caller, alloc, Power::Restart).await
}

/// Routes of this module.
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list_vms, create_vm))
        .routes(routes!(get_vm, delete_vm))
        .routes(routes!(start_vm))
        .routes(routes!(stop_vm))
        .routes(routes!(restart_vm))
}
