//! `/v1/webhooks`: the caller's org's webhook endpoints. The signing secret
//! (`whsec_…`) is in the creation's and the rotation's answer only.

use super::error::{ApiResult, ErrorBody};
use super::extract::{Json, PathId};
use crate::AppState;
use crate::app::webhooks::{self, NewWebhook, WithSecret};
use crate::app::{Accepted, Allocation, OpStatus, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::webhook::{Webhook, WebhookChange};
use vmplane_domain::{OrgId, WebhookId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_webhook_secret))
}

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `http` or `https`; a host that is or resolves to a loopback, private,
    /// link-local or metadata address is refused unless the gateway runs
    /// with `--webhook-allow-private`.
    pub url: String,
    /// Which events to deliver: `*`, `<type>`, `<aggregate>.<type>` or
    /// `<aggregate>.*` (e.g. `vm.*`); absent or empty: every event.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// At most 256 characters.
    pub description: Option<String>,
}

/// `PATCH /v1/webhooks/{id}` body: each field given replaces the current one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// An empty string removes the description.
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: WebhookId,
    pub org_id: OrgId,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// After a rotation: until when the previous secret signs as well.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// The signing secret (`whsec_` + base64): only in the creation's and the
    /// rotation's answer, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Present on creation, change and rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id,
            org_id: w.org,
            url: w.url,
            event_types: w.event_types,
            description: w.description,
            enabled: w.enabled,
            created_at: w.created_at,
            updated_at: w.updated_at,
            previous_secret_expires_at: w.previous_secret_expires_at,
            secret: None,
            operation: None,
        }
    }
}

impl From<Accepted<Webhook>> for WebhookView {
    fn from(a: Accepted<Webhook>) -> Self {
        Self { operation: Some(a.operation), ..a.resource.into() }
    }
}

impl From<WithSecret> for WebhookView {
    fn from(w: WithSecret) -> Self {
        Self { secret: Some(w.secret), ..w.accepted.into() }
    }
}

fn settled(operation: &Operation, done: StatusCode) -> StatusCode {
    if operation.status == OpStatus::Succeeded { done } else { StatusCode::ACCEPTED }
}

/// Create a webhook endpoint in the caller's org: 201 with its secret (shown
/// once), 202 if the worker has not recorded it yet.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    responses((status = 201, body = WebhookView), (status = 202, body = WebhookView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_webhook(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(req): Json<CreateWebhookRequest>,
) -> ApiResult<(StatusCode, axum::Json<WebhookView>)> {
    let new = NewWebhook { url: req.url, event_types: req.event_types, description: req.description };
    let created = webhooks::create(&state.app, &who, alloc, new).await?;
    Ok((settled(&created.accepted.operation, StatusCode::CREATED), axum::Json(created.into())))
}

/// The webhook endpoints of the caller's org, oldest first (without secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, body = Vec<WebhookView>), (status = "4XX", body = ErrorBody)))]
async fn list_webhooks(State(state): State<AppState>, who: Principal) -> ApiResult<axum::Json<Vec<WebhookView>>> {
    Ok(axum::Json(webhooks::list(&state.app, &who)?.into_iter().map(WebhookView::from).collect()))
}

/// One webhook endpoint of the caller's org (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = WebhookView), (status = "4XX", body = ErrorBody)))]
async fn get_webhook(State(state): State<AppState>, who: Principal, PathId(id): PathId<WebhookId>) -> ApiResult<axum::Json<WebhookView>> {
    Ok(axum::Json(webhooks::get(&state.app, &who, id)?.into()))
}

/// Change a webhook endpoint: `url`, `event_types`, `description`, `enabled`.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")), request_body = UpdateWebhookRequest,
    responses((status = 200, body = WebhookView), (status = 202, body = WebhookView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn update_webhook(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<WebhookId>,
    Json(req): Json<UpdateWebhookRequest>,
) -> ApiResult<(StatusCode, axum::Json<WebhookView>)> {
    let change = WebhookChange { url: req.url, event_types: req.event_types, description: req.description, enabled: req.enabled };
    let changed = webhooks::update(&state.app, &who, alloc, id, change).await?;
    Ok((settled(&changed.operation, StatusCode::OK), axum::Json(changed.into())))
}

/// Delete a webhook endpoint and its secrets: 204, or 202 with the operation
/// if the worker has not recorded it yet.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    responses((status = 204), (status = 202, body = Operation), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_webhook(State(state): State<AppState>, who: Principal, alloc: Allocation, PathId(id): PathId<WebhookId>) -> ApiResult<Response> {
    let operation = webhooks::delete(&state.app, &who, alloc, id).await?;
    Ok(match operation.status {
        OpStatus::Succeeded => StatusCode::NO_CONTENT.into_response(),
        _ => (StatusCode::ACCEPTED, axum::Json(operation)).into_response(),
    })
}

/// Give a webhook endpoint a new signing secret (in this answer only); the
/// previous one keeps signing, alongside it, for 24 hours.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = WebhookView), (status = 202, body = WebhookView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn rotate_webhook_secret(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<WebhookId>,
) -> ApiResult<(StatusCode, axum::Json<WebhookView>)> {
    let rotated = webhooks::rotate_secret(&state.app, &who, alloc, id).await?;
    Ok((settled(&rotated.accepted.operation, StatusCode::OK), axum::Json(rotated.into())))
}
