//! `/instances`: list, create, get, delete, start, stop, standby, restore.
//!
//! hypeman answers a lifecycle call when the change is done; vmplane accepts
//! a command and a worker carries it out. So each call here waits for its
//! operation to end (at most [`SETTLE`]) and answers the instance as it is
//! then; a failed operation is a 409 with the operation's code and reason.

use super::error::{ErrorBody, HypemanError, HypemanResult};
use super::extract::{Caller, Json, Path};
use super::model::{CreateInstanceRequest, Instance, InstanceState, state_of};
use super::volumes::resolve_volume;
use crate::AppState;
use crate::app::vms::{self, Action};
use crate::app::{Accepted, Allocation, App, AppError, OpStatus, Principal, Window, operations};
use axum::extract::State;
use axum::http::StatusCode;
use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::VmId;
use vmplane_domain::vm::{Vm, VmStatus};

/// The longest a call waits for its operation to end before answering the
/// instance as it is (a guest under TCG takes longer to boot; GET shows the rest).
pub const SETTLE: Duration = Duration::from_secs(30);

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_instances, create_instance))
        .routes(routes!(get_instance, delete_instance))
        .routes(routes!(start_instance))
        .routes(routes!(stop_instance))
        .routes(routes!(standby_instance))
        .routes(routes!(restore_instance))
}

/// The caller's instances (its org; its project when it names one) that
/// `selection` selects, oldest first.
fn all(app: &App, who: &Principal, selection: vms::Selection) -> HypemanResult<Vec<Vm>> {
    Ok(vms::list(app, who, selection, Window { offset: 0, limit: usize::MAX })?.items)
}

/// The instance `key` names, as hypeman resolves it: a full id, else an
/// exact name, else an id prefix; several matches are 404 `ambiguous`. A
/// deleted VM, or one of another org, is not found.
pub(super) fn resolve(app: &App, who: &Principal, key: &str) -> HypemanResult<Vm> {
    let not_found = || HypemanError::NotFound(format!("instance {key}"));
    if let Ok(id) = key.parse::<VmId>() {
        return match vms::get(app, who, id) {
            Ok(vm) if vm.status != VmStatus::Deleted => Ok(vm),
            Ok(_) | Err(AppError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e.into()),
        };
    }
    let mut found = all(app, who, vms::Selection { name: Some(key.to_owned()), ..Default::default() })?;
    if found.is_empty() && !key.is_empty() {
        found = all(app, who, Default::default())?.into_iter().filter(|vm| vm.id.to_string().starts_with(key)).collect();
    }
    match <[Vm; 1]>::try_from(found) {
        Ok([one]) => Ok(one),
        Err(found) if found.is_empty() => Err(not_found()),
        Err(_) => Err(HypemanError::Ambiguous("instance")),
    }
}

/// Wait for the accepted command's operation to end (at most [`SETTLE`]);
/// the VM as it is then, or the operation's failure.
pub(super) async fn settle(app: &App, who: &Principal, accepted: Accepted<Vm>, action: &str) -> HypemanResult<Vm> {
    let id = accepted.resource.id;
    let op = operations::get(app, who, accepted.operation.id, SETTLE).await?;
    if op.status == OpStatus::Failed {
        return Err(HypemanError::failed(action, &id.to_string(), op.error));
    }
    Ok(vms::get(app, who, id)?)
}

/// List instances.
#[utoipa::path(get, path = "/instances", tag = "instances", operation_id = "listInstances",
    responses((status = 200, body = Vec<Instance>, description = "List of instances"), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn list_instances(State(state): State<AppState>, Caller(who): Caller) -> HypemanResult<axum::Json<Vec<Instance>>> {
    Ok(axum::Json(all(&state.app, &who, Default::default())?.into_iter().map(|vm| Instance::new(&state.app, vm)).collect()))
}

/// Create and start instance.
#[utoipa::path(post, path = "/instances", tag = "instances", operation_id = "createInstance", request_body = CreateInstanceRequest,
    responses((status = 201, body = Instance, description = "Instance created"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "A volume to attach is not found"), (status = 409, body = ErrorBody, description = "The name is in use (`name_conflict`), or the fleet cannot run it"), (status = 500, body = ErrorBody)))]
async fn create_instance(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    Json(req): Json<CreateInstanceRequest>,
) -> HypemanResult<(StatusCode, axum::Json<Instance>)> {
    let app = &state.app;
    let (mut spec, mounts) = req.into_spec()?;
    for (volume, mount) in mounts {
        spec.volumes.push(mount.on(resolve_volume(app, &who, &volume)?.id));
    }
    // Names resolve instances in every path: hypeman keeps them unique.
    if all(app, &who, vms::Selection { name: Some(spec.name.clone()), ..Default::default() })?.iter().any(|vm| vm.id != VmId(alloc.resource())) {
        return Err(HypemanError::Conflict("name_conflict", format!("an instance named {} already exists", spec.name)));
    }
    let accepted = vms::create(app, &who, alloc, spec).await?;
    let vm = settle(app, &who, accepted, "create").await?;
    Ok((StatusCode::CREATED, axum::Json(Instance::new(app, vm))))
}

/// Get instance details.
#[utoipa::path(get, path = "/instances/{id}", tag = "instances", operation_id = "getInstance", params(("id" = String, Path, description = "Instance ID, name or ID prefix")),
    responses((status = 200, body = Instance, description = "Instance details"), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn get_instance(State(state): State<AppState>, Caller(who): Caller, Path(key): Path<String>) -> HypemanResult<axum::Json<Instance>> {
    Ok(axum::Json(Instance::new(&state.app, resolve(&state.app, &who, &key)?)))
}

/// Stop and delete instance.
#[utoipa::path(delete, path = "/instances/{id}", tag = "instances", operation_id = "deleteInstance", params(("id" = String, Path, description = "Instance ID, name or ID prefix")),
    responses((status = 204, description = "Instance deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 500, body = ErrorBody)))]
async fn delete_instance(State(state): State<AppState>, Caller(who): Caller, alloc: Allocation, Path(key): Path<String>) -> HypemanResult<StatusCode> {
    let app = &state.app;
    let vm = resolve(app, &who, &key)?;
    let accepted = vms::act(app, &who, alloc, vm.id, Action::Delete).await?;
    settle(app, &who, accepted, "delete").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The states from which hypeman allows each action: hypeman refuses with
/// 409 where vmplane would accept and change nothing (start of a running
/// instance, stop of a stopped one, standby of one in standby).
fn allowed(action: Action, state: InstanceState) -> bool {
    use InstanceState as S;
    match action {
        // A failed VM (Unknown) can be started or stopped again, as in /v1.
        Action::Start => matches!(state, S::Stopped | S::Unknown),
        Action::Stop => matches!(state, S::Running | S::Unknown),
        Action::Standby => state == S::Running,
        Action::Restore => state == S::Standby,
        Action::Restart | Action::Delete => true,
    }
}

/// Run a lifecycle action on the instance `key` names and answer it when done.
async fn lifecycle(state: &AppState, who: &Principal, alloc: Allocation, key: &str, action: Action, word: &str) -> HypemanResult<axum::Json<Instance>> {
    let app = &state.app;
    let vm = resolve(app, who, key)?;
    let (current, _) = state_of(&vm);
    if !allowed(action, current) {
        let why = if action == Action::Restore { " (no snapshot to restore)" } else { "" };
        return Err(HypemanError::Conflict("invalid_state", format!("cannot {word} instance {}: it is {current:?}{why}", vm.id)));
    }
    let accepted = vms::act(app, who, alloc, vm.id, action).await?;
    Ok(axum::Json(Instance::new(app, settle(app, who, accepted, word).await?)))
}

/// Start a stopped instance.
#[utoipa::path(post, path = "/instances/{id}/start", tag = "instances", operation_id = "startInstance", params(("id" = String, Path, description = "Instance ID, name or ID prefix")),
    responses((status = 200, body = Instance, description = "Instance started"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Instance not in stopped state"), (status = 500, body = ErrorBody)))]
async fn start_instance(State(state): State<AppState>, Caller(who): Caller, alloc: Allocation, Path(key): Path<String>) -> HypemanResult<axum::Json<Instance>> {
    lifecycle(&state, &who, alloc, &key, Action::Start, "start").await
}

/// Stop instance (graceful shutdown).
#[utoipa::path(post, path = "/instances/{id}/stop", tag = "instances", operation_id = "stopInstance", params(("id" = String, Path, description = "Instance ID, name or ID prefix")),
    responses((status = 200, body = Instance, description = "Instance stopped"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Instance not running"), (status = 500, body = ErrorBody)))]
async fn stop_instance(State(state): State<AppState>, Caller(who): Caller, alloc: Allocation, Path(key): Path<String>) -> HypemanResult<axum::Json<Instance>> {
    lifecycle(&state, &who, alloc, &key, Action::Stop, "stop").await
}

/// Put instance in standby (pause, snapshot, stop the VMM).
#[utoipa::path(post, path = "/instances/{id}/standby", tag = "instances", operation_id = "standbyInstance", params(("id" = String, Path, description = "Instance ID, name or ID prefix")),
    responses((status = 200, body = Instance, description = "Instance in standby"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Instance not running"), (status = 500, body = ErrorBody)))]
async fn standby_instance(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    Path(key): Path<String>,
) -> HypemanResult<axum::Json<Instance>> {
    lifecycle(&state, &who, alloc, &key, Action::Standby, "standby").await
}

/// Restore instance from standby.
#[utoipa::path(post, path = "/instances/{id}/restore", tag = "instances", operation_id = "restoreInstance", params(("id" = String, Path, description = "Instance ID, name or ID prefix")),
    responses((status = 200, body = Instance, description = "Instance restored"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Instance not in standby, no snapshot"), (status = 500, body = ErrorBody)))]
async fn restore_instance(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    Path(key): Path<String>,
) -> HypemanResult<axum::Json<Instance>> {
    lifecycle(&state, &who, alloc, &key, Action::Restore, "restore").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypeman_refuses_what_vmplane_would_let_pass() {
        use InstanceState as S;
        assert!(!allowed(Action::Start, S::Running));
        assert!(allowed(Action::Start, S::Stopped));
        assert!(!allowed(Action::Start, S::Standby), "restore it instead");
        assert!(!allowed(Action::Stop, S::Stopped));
        assert!(allowed(Action::Stop, S::Running));
        assert!(!allowed(Action::Standby, S::Standby));
        assert!(!allowed(Action::Restore, S::Stopped), "no snapshot");
        assert!(!allowed(Action::Restore, S::Running), "no snapshot");
        assert!(allowed(Action::Restore, S::Standby));
    }
}
