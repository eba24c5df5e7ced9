//! Orgs, projects and API keys (admin only). Creation goes through the
//! command stream like everything else; the response is 201 once the worker's
//! event is projected (the new key works at once), 202 if that takes longer.

use crate::AppState;
use crate::auth::{Principal, hash_secret, new_secret};
use crate::commands::{Submission, accepted_before, submit};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, PathId};
use crate::idempotency::Allocation;
use crate::projection::operations::{OpStatus, Operation};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::tenancy::{self, ApiKey, Org, Project, TenancyCommand, TenancyError};
use vmplane_domain::{ApiKeyId, Command, OrgId, ProjectId, subjects};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(create_project, list_projects))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

/// `POST /v1/orgs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// DNS label.
    pub name: String,
}

/// `POST /v1/orgs/{org}/projects` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// DNS label.
    pub name: String,
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    /// The org the key acts in; default: the org the admin acts in.
    pub org_id: Option<OrgId>,
}

/// An org.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgView {
    pub id: OrgId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Present on creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// A project.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    pub id: ProjectId,
    pub org_id: OrgId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Present on creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// An API key. `secret` is shown once, on creation, and never stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Present on creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

impl From<Org> for OrgView {
    fn from(o: Org) -> Self {
        Self { id: o.id, name: o.name, created_at: o.created_at, operation: None }
    }
}

impl From<Project> for ProjectView {
    fn from(p: Project) -> Self {
        Self { id: p.id, org_id: p.org, name: p.name, created_at: p.created_at, operation: None }
    }
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        Self { id: k.id, org_id: k.org, name: k.name, secret: None, created_at: k.created_at, operation: None }
    }
}

/// Validate with the same pure rule the worker applies, then submit.
async fn submit_tenancy(state: &AppState, who: &Principal, alloc: Allocation, command: TenancyCommand) -> ApiResult<(StatusCode, Operation)> {
    let org = command.org();
    if let Some(op) = accepted_before(state, alloc.op())? {
        return Ok((if op.status == OpStatus::Succeeded { StatusCode::CREATED } else { StatusCode::ACCEPTED }, op));
    }
    let org_exists = state.proj.org(org)?.is_some();
    // Callers checked that a key to revoke exists; creations make new ids.
    let exists = matches!(command, TenancyCommand::RevokeApiKey { .. });
    tenancy::decide(&command, exists, org_exists).map_err(|e| match e {
        TenancyError::BadName => ApiError::Unprocessable(e.code(), e.to_string()),
        TenancyError::OrgNotFound => ApiError::NotFound(format!("org {org}")),
        TenancyError::KeyNotFound => ApiError::NotFound(e.to_string()),
        TenancyError::AlreadyExists => ApiError::Conflict(e.code(), e.to_string()),
    })?;
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::tenancy_command(org),
        kind: command.kind(),
        target_id: command.target(),
        project: ProjectId::DEFAULT,
        command: Command::Tenancy { command },
    };
    let op = submit(state, who, sub).await?;
    let status = if op.status == OpStatus::Succeeded { StatusCode::CREATED } else { StatusCode::ACCEPTED };
    Ok((status, op))
}

/// Create an org.
#[utoipa::path(post, path = "/v1/orgs", tag = "tenancy", request_body = CreateOrgRequest,
    responses((status = 201, body = OrgView), (status = 202, body = OrgView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_org(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(req): Json<CreateOrgRequest>,
) -> ApiResult<(StatusCode, axum::Json<OrgView>)> {
    who.require_admin()?;
    let id = OrgId(alloc.resource());
    let (status, op) = submit_tenancy(&state, &who, alloc, TenancyCommand::CreateOrg { id, name: req.name.clone() }).await?;
    Ok((status, axum::Json(OrgView { id, name: req.name, created_at: op.created_at, operation: Some(op) })))
}

/// Every org.
#[utoipa::path(get, path = "/v1/orgs", tag = "tenancy", responses((status = 200, body = Vec<OrgView>), (status = "4XX", body = ErrorBody)))]
async fn list_orgs(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<OrgView>>> {
    who.require_admin()?;
    Ok(axum::Json(state.proj.orgs()?.into_iter().map(OrgView::from).collect()))
}

/// Create a project in an org.
#[utoipa::path(post, path = "/v1/orgs/{org}/projects", tag = "tenancy", request_body = CreateProjectRequest, params(("org" = String, Path, description = "Org id")),
    responses((status = 201, body = ProjectView), (status = 202, body = ProjectView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_project(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(org): PathId<OrgId>,
    Json(req): Json<CreateProjectRequest>,
) -> ApiResult<(StatusCode, axum::Json<ProjectView>)> {
    who.require_admin()?;
    let id = ProjectId(alloc.resource());
    let cmd = TenancyCommand::CreateProject { id, org, name: req.name.clone() };
    let (status, op) = submit_tenancy(&state, &who, alloc, cmd).await?;
    Ok((status, axum::Json(ProjectView { id, org_id: org, name: req.name, created_at: op.created_at, operation: Some(op) })))
}

/// Every project of an org.
#[utoipa::path(get, path = "/v1/orgs/{org}/projects", tag = "tenancy", params(("org" = String, Path, description = "Org id")),
    responses((status = 200, body = Vec<ProjectView>), (status = "4XX", body = ErrorBody)))]
async fn list_projects(State(state): State<AppState>, who: Principal, PathId(org): PathId<OrgId>) -> ApiResult<axum::Json<Vec<ProjectView>>> {
    who.require_admin()?;
    state.proj.org(org)?.ok_or_else(|| ApiError::NotFound(format!("org {org}")))?;
    Ok(axum::Json(state.proj.projects(org)?.into_iter().map(ProjectView::from).collect()))
}

/// Create an API key; its secret is in this response only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "tenancy", request_body = CreateApiKeyRequest,
    responses((status = 201, body = ApiKeyView), (status = 202, body = ApiKeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_api_key(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(req): Json<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<ApiKeyView>)> {
    who.require_admin()?;
    let org = req.org_id.unwrap_or(who.org);
    let id = ApiKeyId(alloc.resource());
    // The same secret on a retry under the same Idempotency-Key, which only
    // this caller can reproduce; never stored.
    let secret = new_secret(id, alloc.random());
    let cmd = TenancyCommand::CreateApiKey { id, org, name: req.name.clone(), secret_sha256: hash_secret(&secret) };
    let (status, op) = submit_tenancy(&state, &who, alloc, cmd).await?;
    Ok((status, axum::Json(ApiKeyView { id, org_id: org, name: req.name, secret: Some(secret), created_at: op.created_at, operation: Some(op) })))
}

/// The API keys of the org the admin acts in (never their secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "tenancy", responses((status = 200, body = Vec<ApiKeyView>), (status = "4XX", body = ErrorBody)))]
async fn list_api_keys(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<ApiKeyView>>> {
    who.require_admin()?;
    Ok(axum::Json(state.proj.api_keys(who.org)?.into_iter().map(ApiKeyView::from).collect()))
}

/// Revoke an API key (any org's): once the revocation is projected, which
/// every gateway does as the event arrives, the key gets 401 everywhere and
/// its open event, log and terminal streams end. 200 when this gateway has
/// projected it, 202 if that takes longer.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "tenancy", params(("id" = String, Path, description = "API key id")),
    responses((status = 200, body = ApiKeyView), (status = 202, body = ApiKeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn revoke_api_key(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<ApiKeyId>,
) -> ApiResult<(StatusCode, axum::Json<ApiKeyView>)> {
    who.require_admin()?;
    let key = state.proj.api_key(id)?.ok_or_else(|| ApiError::NotFound(format!("api key {id}")))?;
    let (status, op) = submit_tenancy(&state, &who, alloc, TenancyCommand::RevokeApiKey { id, org: key.org }).await?;
    let status = if status == StatusCode::CREATED { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, axum::Json(ApiKeyView { operation: Some(op), ..key.into() })))
}
