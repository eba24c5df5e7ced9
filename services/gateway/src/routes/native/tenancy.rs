//! Orgs, projects and API keys (admin only). Creation goes through the
//! command stream like everything else; the response is 201 once the worker's
//! event is projected (the new key works at once), 202 if that takes longer.

use super::error::{ApiResult, ErrorBody};
use super::extract::{Json, PathId};
use super::operations::settled;
use crate::AppState;
use crate::app::tenancy::{self, NewApiKey};
use crate::app::{Accepted, Allocation, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::placement::Strategy;
use vmplane_domain::tenancy::{ApiKey, Org, Project};
use vmplane_domain::{ApiKeyId, OrgId, ProjectId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(update_org))
        .routes(routes!(create_project, list_projects))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

/// `POST /v1/orgs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// DNS label.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
    /// How the org's VMs and volumes are placed when a create does not say
    /// (`placement.strategy`). Default `spread`.
    #[serde(default)]
    pub placement_strategy: Strategy,
}

/// `PATCH /v1/orgs/{org}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrgRequest {
    /// How the org's VMs and volumes are placed when a create does not say.
    pub placement_strategy: Strategy,
}

/// `POST /v1/orgs/{org}/projects` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// DNS label.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[schema(value_type = vmplane_domain::tenancy::ApiKeyName)]
    pub name: String,
    /// The org the key acts in; default: the org the admin acts in.
    pub org_id: Option<OrgId>,
}

/// An org.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgView {
    pub id: OrgId,
    pub name: String,
    pub placement_strategy: Strategy,
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
        Self { id: o.id, name: o.name, placement_strategy: o.placement_strategy, created_at: o.created_at, operation: None }
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

impl From<Accepted<Org>> for OrgView {
    fn from(a: Accepted<Org>) -> Self {
        Self { operation: Some(a.operation), ..a.resource.into() }
    }
}

impl From<Accepted<Project>> for ProjectView {
    fn from(a: Accepted<Project>) -> Self {
        Self { operation: Some(a.operation), ..a.resource.into() }
    }
}

impl From<Accepted<NewApiKey>> for ApiKeyView {
    fn from(a: Accepted<NewApiKey>) -> Self {
        Self { secret: Some(a.resource.secret), operation: Some(a.operation), ..a.resource.key.into() }
    }
}

/// 201 once the worker's event is projected, 202 if that takes longer.
fn created<T: From<Accepted<R>>, R>(a: Accepted<R>) -> (StatusCode, axum::Json<T>) {
    (settled(&a.operation, StatusCode::CREATED), axum::Json(a.into()))
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
    Ok(created(tenancy::create_org(&state.app, &who, alloc, req.name, req.placement_strategy).await?))
}

/// Change an org's default placement strategy (admin): 200 once the
/// worker's event is projected, 202 if that takes longer.
#[utoipa::path(patch, path = "/v1/orgs/{org}", tag = "tenancy", request_body = UpdateOrgRequest, params(("org" = vmplane_domain::OrgId, Path, description = "Org id")),
    responses((status = 200, body = OrgView), (status = 202, body = OrgView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn update_org(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(org): PathId<OrgId>,
    Json(req): Json<UpdateOrgRequest>,
) -> ApiResult<(StatusCode, axum::Json<OrgView>)> {
    let a = tenancy::set_placement_strategy(&state.app, &who, alloc, org, req.placement_strategy).await?;
    Ok((settled(&a.operation, StatusCode::OK), axum::Json(a.into())))
}

/// Every org.
#[utoipa::path(get, path = "/v1/orgs", tag = "tenancy", responses((status = 200, body = Vec<OrgView>), (status = "4XX", body = ErrorBody)))]
async fn list_orgs(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<OrgView>>> {
    Ok(axum::Json(tenancy::orgs(&state.app, &who)?.into_iter().map(OrgView::from).collect()))
}

/// Create a project in an org.
#[utoipa::path(post, path = "/v1/orgs/{org}/projects", tag = "tenancy", request_body = CreateProjectRequest, params(("org" = vmplane_domain::OrgId, Path, description = "Org id")),
    responses((status = 201, body = ProjectView), (status = 202, body = ProjectView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_project(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(org): PathId<OrgId>,
    Json(req): Json<CreateProjectRequest>,
) -> ApiResult<(StatusCode, axum::Json<ProjectView>)> {
    Ok(created(tenancy::create_project(&state.app, &who, alloc, org, req.name).await?))
}

/// Every project of an org.
#[utoipa::path(get, path = "/v1/orgs/{org}/projects", tag = "tenancy", params(("org" = vmplane_domain::OrgId, Path, description = "Org id")),
    responses((status = 200, body = Vec<ProjectView>), (status = "4XX", body = ErrorBody)))]
async fn list_projects(State(state): State<AppState>, who: Principal, PathId(org): PathId<OrgId>) -> ApiResult<axum::Json<Vec<ProjectView>>> {
    Ok(axum::Json(tenancy::projects(&state.app, &who, org)?.into_iter().map(ProjectView::from).collect()))
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
    Ok(created(tenancy::create_api_key(&state.app, &who, alloc, req.org_id, req.name).await?))
}

/// The API keys of the org the admin acts in (never their secrets).
#[utoipa::path(get, path = "/v1/api-keys", tag = "tenancy", responses((status = 200, body = Vec<ApiKeyView>), (status = "4XX", body = ErrorBody)))]
async fn list_api_keys(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<ApiKeyView>>> {
    Ok(axum::Json(tenancy::api_keys(&state.app, &who)?.into_iter().map(ApiKeyView::from).collect()))
}

/// Revoke an API key (any org's): once the revocation is projected, which
/// every gateway does as the event arrives, the key gets 401 everywhere and
/// its open event, log and terminal streams end. 200 when this gateway has
/// projected it, 202 if that takes longer.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "tenancy", params(("id" = vmplane_domain::ApiKeyId, Path, description = "API key id")),
    responses((status = 200, body = ApiKeyView), (status = 202, body = ApiKeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn revoke_api_key(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<ApiKeyId>,
) -> ApiResult<(StatusCode, axum::Json<ApiKeyView>)> {
    let revoked = tenancy::revoke_api_key(&state.app, &who, alloc, id).await?;
    Ok((settled(&revoked.operation, StatusCode::OK), axum::Json(ApiKeyView { operation: Some(revoked.operation), ..revoked.resource.into() })))
}
