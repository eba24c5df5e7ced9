//! Templates: `/v1/templates`, default values for `POST /v1/vms` (its
//! `template` names one by id or name; the request's own fields win).

use super::error::{ApiResult, ErrorBody};
use super::extract::{Json, PathId, Query};
use super::pagination::{Page, PageQuery};
use crate::AppState;
use crate::app::templates;
use crate::app::{Accepted, Allocation, OpStatus, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::template::{Template, TemplateSpec};
use vmplane_domain::{OrgId, ProjectId, TemplateId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_template, list_templates)).routes(routes!(get_template, delete_template))
}

/// A template as the API shows it: its values, and who owns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub id: TemplateId,
    #[serde(flatten)]
    pub spec: TemplateSpec,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Present on creation and deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        Self { id: t.id, spec: t.spec, org_id: t.org, project_id: t.project, created_at: t.created_at, operation: None }
    }
}

impl From<Accepted<Template>> for TemplateView {
    fn from(a: Accepted<Template>) -> Self {
        Self { operation: Some(a.operation), ..a.resource.into() }
    }
}

/// Paging of `GET /v1/templates`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListTemplatesQuery {
    /// Page number, from 1.
    #[param(value_type = super::pagination::PageNumber, inline, required = false)]
    pub page: Option<u64>,
    /// Items per page, 1-100 (default 20).
    #[param(value_type = super::pagination::PageLimit, inline, required = false)]
    pub limit: Option<u64>,
}

/// `done` once the worker's event is projected, 202 if that takes longer.
fn answer(a: Accepted<Template>, done: StatusCode) -> (StatusCode, axum::Json<TemplateView>) {
    let status = if a.operation.status == OpStatus::Succeeded { done } else { StatusCode::ACCEPTED };
    (status, axum::Json(a.into()))
}

/// Create a template: 201 once it exists, 202 if that takes longer. Its name
/// is unique in the org (409 `template_exists`); its values are checked as a
/// VM's would be, and host ports cannot be named (each VM gets its own).
#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = TemplateSpec,
    responses((status = 201, body = TemplateView), (status = 202, body = TemplateView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_template(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(spec): Json<TemplateSpec>,
) -> ApiResult<(StatusCode, axum::Json<TemplateView>)> {
    Ok(answer(templates::create(&state.app, &who, alloc, spec).await?, StatusCode::CREATED))
}

/// The org's templates, oldest first.
#[utoipa::path(get, path = "/v1/templates", tag = "templates", params(ListTemplatesQuery),
    responses((status = 200, body = Page<TemplateView>), (status = "4XX", body = ErrorBody)))]
async fn list_templates(State(state): State<AppState>, who: Principal, Query(q): Query<ListTemplatesQuery>) -> ApiResult<axum::Json<Page<TemplateView>>> {
    let pq = PageQuery::new(q.page, q.limit)?;
    let listed = templates::list(&state.app, &who, pq.window())?;
    Ok(axum::Json(pq.page(listed.items.into_iter().map(TemplateView::from).collect(), listed.total)))
}

/// One template.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "templates", params(("id" = vmplane_domain::TemplateId, Path, description = "Template id")),
    responses((status = 200, body = TemplateView), (status = "4XX", body = ErrorBody)))]
async fn get_template(State(state): State<AppState>, who: Principal, PathId(id): PathId<TemplateId>) -> ApiResult<axum::Json<TemplateView>> {
    Ok(axum::Json(templates::get(&state.app, &who, id)?.into()))
}

/// Delete a template: 200 once it is gone, 202 if that takes longer. VMs
/// created from it keep what it gave them.
#[utoipa::path(delete, path = "/v1/templates/{id}", tag = "templates", params(("id" = vmplane_domain::TemplateId, Path, description = "Template id")),
    responses((status = 200, body = TemplateView), (status = 202, body = TemplateView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_template(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<TemplateId>,
) -> ApiResult<(StatusCode, axum::Json<TemplateView>)> {
    Ok(answer(templates::delete(&state.app, &who, alloc, id).await?, StatusCode::OK))
}
