//! `/v1/webhooks`: the caller's org's webhook endpoints, their test events
//! and their deliveries. The signing secret (`whsec_…`) is in the
//! creation's and the rotation's answer only.

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{Json, Path, PathId, Query};
use super::operations::settled;
use super::pagination::{Page, PageQuery};
use crate::AppState;
use crate::app::webhooks::{self, Attempt, Delivery, NewWebhook, WithSecret};
use crate::app::{Accepted, Allocation, OpStatus, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::delivery::{AttemptOutcome, DisableReason};
use vmplane_domain::webhook::{Webhook, WebhookChange};
use vmplane_domain::{DeliveryId, EventId, OrgId, WebhookId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(test_webhook))
        .routes(routes!(list_webhook_deliveries))
        .routes(routes!(get_webhook_delivery))
        .routes(routes!(retry_webhook_delivery))
}

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    #[schema(value_type = vmplane_domain::webhook::UrlText)]
    pub url: String,
    /// Which events to deliver: `*`, `<type>`, `<aggregate>.<type>` or
    /// `<aggregate>.*` (e.g. `vm.*`); absent or empty: every event.
    #[serde(default)]
    #[schema(value_type = Vec<vmplane_domain::event_filter::TypePattern>, max_items = 32)]
    pub event_types: Vec<String>,
    #[schema(value_type = Option<vmplane_domain::webhook::DescriptionText>)]
    pub description: Option<String>,
}

/// `PATCH /v1/webhooks/{id}` body: each field given replaces the current one;
/// at least one is given, none of them null.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[schema(value_type = vmplane_domain::webhook::UrlText, required = false)]
    pub url: Option<String>,
    #[schema(value_type = Vec<vmplane_domain::event_filter::TypePattern>, required = false, max_items = 32)]
    pub event_types: Option<Vec<String>>,
    /// An empty string removes the description.
    #[schema(value_type = vmplane_domain::webhook::DescriptionText, required = false)]
    pub description: Option<String>,
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
}

impl UpdateWebhookRequest {
    /// At least one field is given, as JSON Schema (added where the document
    /// is built: utoipa's `min_properties` writes `maxProperties`).
    pub fn non_empty() -> serde_json::Value {
        serde_json::json!({ "minProperties": 1 })
    }
}

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: WebhookId,
    pub org_id: OrgId,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    /// False once disabled by its owner, or by deliveries (see `disabled_reason`).
    pub enabled: bool,
    /// Why deliveries disabled the endpoint: `gone` (it answered 410) or
    /// `failing` (it failed for days); null otherwise, and once its owner
    /// enables it again.
    pub disabled_reason: Option<DisableReason>,
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
            disabled_reason: w.disabled_reason,
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

/// One event's delivery to an endpoint: the outcome of its last attempt,
/// and its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `dlv_` + the event's ulid.
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    /// The event delivered: the `webhook-id` header of every attempt.
    pub event_id: EventId,
    /// Its stream sequence (the SSE id).
    pub event_seq: u64,
    /// Its qualified type (`vm.running`).
    pub event_type: String,
    /// The aggregate it belongs to (`vm_…`); an endpoint gets one aggregate's events in order.
    pub aggregate: String,
    /// The last attempt's outcome: `delivered`, `retrying`, `failed` (the
    /// retry schedule is spent) or `endpoint_disabled`.
    pub status: AttemptOutcome,
    /// The last 50 attempts, oldest first.
    pub attempts: Vec<AttemptView>,
    /// When the next automatic attempt is due (with `retrying`).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_retry_at: Option<OffsetDateTime>,
    /// The first attempt's time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// The last attempt's time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub attempted_at: OffsetDateTime,
    /// The HTTP status the endpoint answered; null without an answer.
    pub status: Option<u16>,
    /// Why there was no usable answer (timeout, refused connection, refused address, …).
    pub error: Option<String>,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_retry_at: Option<OffsetDateTime>,
    /// Asked for with `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry`.
    pub manual: bool,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        Self {
            attempt: a.attempt,
            attempted_at: a.attempted_at,
            status: a.status,
            error: a.error,
            duration_ms: a.duration_ms,
            outcome: a.outcome,
            next_retry_at: a.next_retry_at,
            manual: a.manual,
        }
    }
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            webhook_id: d.webhook,
            event_id: d.event_id,
            event_seq: d.event_seq,
            event_type: d.event_type,
            aggregate: d.aggregate,
            status: d.status,
            attempts: d.attempts.into_iter().map(AttemptView::from).collect(),
            next_retry_at: d.next_retry_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// Paging and filter of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListDeliveriesQuery {
    /// Page number, from 1.
    #[param(value_type = super::pagination::PageNumber, inline, required = false)]
    pub page: Option<u64>,
    /// Items per page, 1-100 (default 20).
    #[param(value_type = super::pagination::PageLimit, inline, required = false)]
    pub limit: Option<u64>,
    /// Only deliveries whose last attempt ended so: `delivered`, `retrying`,
    /// `failed` or `endpoint_disabled`.
    pub status: Option<AttemptOutcome>,
}

/// `/v1/webhooks/{id}/deliveries/{delivery_id}`.
#[derive(Debug, Deserialize)]
pub struct DeliveryPath {
    id: String,
    delivery_id: String,
}

fn parse_delivery_path(p: &DeliveryPath) -> ApiResult<(WebhookId, DeliveryId)> {
    let id = p.id.parse().map_err(|e| ApiError::BadRequest("invalid_id", format!("`{}`: {e}", p.id)))?;
    let delivery = p.delivery_id.parse().map_err(|e| ApiError::BadRequest("invalid_id", format!("`{}`: {e}", p.delivery_id)))?;
    Ok((id, delivery))
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
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id")),
    responses((status = 200, body = WebhookView), (status = "4XX", body = ErrorBody)))]
async fn get_webhook(State(state): State<AppState>, who: Principal, PathId(id): PathId<WebhookId>) -> ApiResult<axum::Json<WebhookView>> {
    Ok(axum::Json(webhooks::get(&state.app, &who, id)?.into()))
}

/// Change a webhook endpoint: `url`, `event_types`, `description`, `enabled`.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id")), request_body = UpdateWebhookRequest,
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
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id")),
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
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id")),
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

/// Send the endpoint a `webhook.test` event (delivered to this endpoint
/// only, whatever its `event_types`): 202 with the operation that records it.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id")),
    responses((status = 202, body = Operation), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn test_webhook(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    PathId(id): PathId<WebhookId>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(webhooks::test(&state.app, &who, alloc, id).await?)))
}

/// The endpoint's deliveries, newest event first: each with its attempts
/// (time, HTTP status or error, duration, next retry).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id"), ListDeliveriesQuery),
    responses((status = 200, body = Page<DeliveryView>), (status = "4XX", body = ErrorBody)))]
async fn list_webhook_deliveries(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId<WebhookId>,
    Query(q): Query<ListDeliveriesQuery>,
) -> ApiResult<axum::Json<Page<DeliveryView>>> {
    let pq = PageQuery::new(q.page, q.limit)?;
    let status = q.status;
    let listed = webhooks::deliveries(&state.app, &who, id, status, pq.window())?;
    Ok(axum::Json(pq.page(listed.items.into_iter().map(DeliveryView::from).collect(), listed.total)))
}

/// One delivery to the endpoint, with its attempts.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries/{delivery_id}", tag = "webhooks",
    params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id"), ("delivery_id" = vmplane_domain::DeliveryId, Path, description = "delivery id (`dlv_…`)")),
    responses((status = 200, body = DeliveryView), (status = "4XX", body = ErrorBody)))]
async fn get_webhook_delivery(State(state): State<AppState>, who: Principal, Path(p): Path<DeliveryPath>) -> ApiResult<axum::Json<DeliveryView>> {
    let (id, delivery) = parse_delivery_path(&p)?;
    Ok(axum::Json(webhooks::delivery(&state.app, &who, id, delivery)?.into()))
}

/// Attempt a delivery again now, whatever its state (recorded as a manual
/// attempt): 202 with the operation that asks the deliverer.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = vmplane_domain::WebhookId, Path, description = "webhook id"), ("delivery_id" = vmplane_domain::DeliveryId, Path, description = "delivery id (`dlv_…`)")),
    responses((status = 202, body = Operation), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn retry_webhook_delivery(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Path(p): Path<DeliveryPath>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    let (id, delivery) = parse_delivery_path(&p)?;
    Ok((StatusCode::ACCEPTED, axum::Json(webhooks::retry_delivery(&state.app, &who, alloc, id, delivery).await?)))
}
