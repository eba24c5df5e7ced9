//! `/v1/ssh-keys`: SSH public keys stored in the caller's org, named by id
//! in `ssh_key_ids` at create. Creation answers 201 once the worker's event
//! is projected (the key can be used at once), 202 if that takes longer.

use super::error::{ApiResult, ErrorBody};
use super::extract::{Json, PathId};
use crate::AppState;
use crate::app::ssh_keys;
use crate::app::{Accepted, Allocation, OpStatus, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::ssh_key::SshKey;
use vmplane_domain::{OrgId, SshKeyId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_ssh_key, list_ssh_keys)).routes(routes!(get_ssh_key, delete_ssh_key))
}

/// `POST /v1/ssh-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSshKeyRequest {
    /// 1-64 characters.
    #[schema(value_type = vmplane_domain::ssh_key::KeyName)]
    pub name: String,
    #[schema(value_type = vmplane_domain::ssh_key::PublicKeyText)]
    pub public_key: String,
}

/// A stored SSH key.
#[derive(Debug, Serialize, ToSchema)]
pub struct SshKeyView {
    pub id: SshKeyId,
    pub org_id: OrgId,
    pub name: String,
    /// Canonical OpenSSH form.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Present on creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

impl From<SshKey> for SshKeyView {
    fn from(k: SshKey) -> Self {
        Self { id: k.id, org_id: k.org, name: k.name, public_key: k.public_key, fingerprint: k.fingerprint, created_at: k.created_at, operation: None }
    }
}

impl From<Accepted<SshKey>> for SshKeyView {
    fn from(a: Accepted<SshKey>) -> Self {
        Self { operation: Some(a.operation), ..a.resource.into() }
    }
}

/// Store an SSH public key in the caller's org.
#[utoipa::path(post, path = "/v1/ssh-keys", tag = "ssh-keys", request_body = CreateSshKeyRequest,
    responses((status = 201, body = SshKeyView), (status = 202, body = SshKeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_ssh_key(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(req): Json<CreateSshKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<SshKeyView>)> {
    let created = ssh_keys::create(&state.app, &who, alloc, req.name, req.public_key).await?;
    let status = if created.operation.status == OpStatus::Succeeded { StatusCode::CREATED } else { StatusCode::ACCEPTED };
    Ok((status, axum::Json(created.into())))
}

/// The SSH keys of the caller's org, oldest first.
#[utoipa::path(get, path = "/v1/ssh-keys", tag = "ssh-keys", responses((status = 200, body = Vec<SshKeyView>), (status = "4XX", body = ErrorBody)))]
async fn list_ssh_keys(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<SshKeyView>>> {
    Ok(axum::Json(ssh_keys::list(&state.app, &who)?.into_iter().map(SshKeyView::from).collect()))
}

/// One SSH key of the caller's org.
#[utoipa::path(get, path = "/v1/ssh-keys/{id}", tag = "ssh-keys", params(("id" = vmplane_domain::SshKeyId, Path, description = "SSH key id")),
    responses((status = 200, body = SshKeyView), (status = "4XX", body = ErrorBody)))]
async fn get_ssh_key(State(state): State<AppState>, who: Principal, PathId(id): PathId<SshKeyId>) -> ApiResult<axum::Json<SshKeyView>> {
    Ok(axum::Json(ssh_keys::get(&state.app, &who, id)?.into()))
}

/// Delete an SSH key of the caller's org (VMs created with it keep it): 204
/// once this gateway has projected the deletion, 202 with the operation if
/// that takes longer.
#[utoipa::path(delete, path = "/v1/ssh-keys/{id}", tag = "ssh-keys", params(("id" = vmplane_domain::SshKeyId, Path, description = "SSH key id")),
    responses((status = 204), (status = 202, body = Operation), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_ssh_key(State(state): State<AppState>, who: Principal, alloc: Allocation, PathId(id): PathId<SshKeyId>) -> ApiResult<Response> {
    let operation = ssh_keys::delete(&state.app, &who, alloc, id).await?;
    Ok(match operation.status {
        OpStatus::Succeeded => StatusCode::NO_CONTENT.into_response(),
        _ => (StatusCode::ACCEPTED, axum::Json(operation)).into_response(),
    })
}
