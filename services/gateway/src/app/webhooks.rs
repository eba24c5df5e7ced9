//! Webhook endpoints of the caller's org: create, list, read, change,
//! rotate the secret of, delete, send a test event to; and their deliveries:
//! list, read, retry. Another org's endpoint or delivery is not found, never
//! shown. Commands go through the command stream to the control-plane
//! consumer (as SSH keys do); deliveries are the deliverer's
//! `webhook.delivery_attempted` events, folded by the projection.
//!
//! **Where the secrets live.** Events are readable by the org's subscribers,
//! and commands by every worker, so neither carries a secret. The gateway
//! writes each endpoint's [`SecretRecord`] to the JetStream key-value bucket
//! `vmplane_webhook_secrets` (key: the endpoint id) before appending the
//! command; only the gateway role may read or write that bucket (and the
//! deliverer's role, when it signs). The events record that a rotation took
//! place and until when the previous secret signs. A secret is answered once:
//! in the creation's and the rotation's answer (an `Idempotency-Key` retry of
//! either answers the secret stored by the first attempt).

use super::accept::{Submission, accepted_before, submit};
use super::{Accepted, Allocation, App, AppError, AppResult, Listed, Operation, Principal, Window};
pub use crate::projection::webhooks::{Attempt, Delivery};
use async_nats::jetstream::kv;
use base64::Engine;
use std::net::IpAddr;
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_domain::delivery::AttemptOutcome;
use vmplane_domain::webhook::{self, CheckedUrl, SECRET_PREFIX, SecretRecord, Webhook, WebhookChange, WebhookCommand, WebhookError};
use vmplane_domain::{Command, DeliveryId, WebhookId, subjects};

/// Random bytes in a secret (the issue asks for at least 24).
const SECRET_BYTES: usize = 32;
/// How long resolving a URL's host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint with the secret that signs its deliveries: the answer of a
/// creation or a rotation, and the only place a secret is shown.
pub struct WithSecret {
    pub accepted: Accepted<Webhook>,
    pub secret: String,
}

/// What a creation asks for.
pub struct NewWebhook {
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
}

/// Create an endpoint in the caller's org; answers it with its secret.
pub async fn create(app: &App, who: &Principal, alloc: Allocation, new: NewWebhook) -> AppResult<WithSecret> {
    let id = WebhookId(alloc.resource());
    let store = secrets(app).await?;
    // A retry of a creation carried out already: the secret stored then stands.
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        let secret = load_secret(&store, id).await?.map(|(r, _)| r.current).ok_or_else(|| AppError::Internal(format!("no secret stored for {id}")))?;
        return Ok(WithSecret { accepted: Accepted { resource: get(app, who, id)?, operation }, secret });
    }
    let command = WebhookCommand::Create { id, org: who.org, url: new.url.clone(), event_types: new.event_types, description: new.description };
    let created = webhook::decide(None, &command).map_err(refusal)?;
    check_address(app, &webhook::check_url(&new.url).map_err(refusal)?).await?;
    let secret = new_secret();
    let record = SecretRecord { current: secret.clone(), previous: None };
    store.put(id.to_string(), serde_json::to_vec(&record).map_err(|e| AppError::Internal(e.to_string()))?.into()).await.map_err(kv_error)?;
    let operation = submit_webhook(app, who, alloc, command).await?;
    let folded = webhook::evolve(None, id, operation.created_at, &created).ok_or_else(|| AppError::Internal("a created webhook folds into one".into()))?;
    Ok(WithSecret { accepted: Accepted { resource: app.proj.webhook(who.org, id)?.unwrap_or(folded), operation }, secret })
}

/// The caller's org's endpoints, oldest first.
pub fn list(app: &App, who: &Principal) -> AppResult<Vec<Webhook>> {
    Ok(app.proj.webhooks(who.org)?)
}

/// An endpoint of the caller's org.
pub fn get(app: &App, who: &Principal, id: WebhookId) -> AppResult<Webhook> {
    app.proj.webhook(who.org, id)?.ok_or_else(|| AppError::NotFound(format!("webhook {id}")))
}

/// Change an endpoint's url, filter, description or whether it is enabled.
pub async fn update(app: &App, who: &Principal, alloc: Allocation, id: WebhookId, change: WebhookChange) -> AppResult<Accepted<Webhook>> {
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        return Ok(Accepted { resource: get(app, who, id)?, operation });
    }
    let current = get(app, who, id)?;
    if let Some(url) = &change.url {
        check_address(app, &webhook::check_url(url).map_err(refusal)?).await?;
    }
    let command = WebhookCommand::Update { id, org: who.org, change };
    let event = webhook::decide(Some(&current), &command).map_err(refusal)?;
    let operation = submit_webhook(app, who, alloc, command).await?;
    let folded =
        webhook::evolve(Some(current), id, operation.created_at, &event).ok_or_else(|| AppError::Internal("a changed webhook folds into one".into()))?;
    // Once its operation succeeded, the projection shows the change.
    let projected = app.proj.webhook(who.org, id)?.filter(|_| operation.status == super::OpStatus::Succeeded);
    Ok(Accepted { resource: projected.unwrap_or(folded), operation })
}

/// Give an endpoint a new secret; the previous one keeps signing, alongside
/// it, for 24 hours. Answers the new secret.
pub async fn rotate_secret(app: &App, who: &Principal, alloc: Allocation, id: WebhookId) -> AppResult<WithSecret> {
    let store = secrets(app).await?;
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        let secret = load_secret(&store, id).await?.map(|(r, _)| r.current).ok_or_else(|| AppError::Internal(format!("no secret stored for {id}")))?;
        return Ok(WithSecret { accepted: Accepted { resource: get(app, who, id)?, operation }, secret });
    }
    let current = get(app, who, id)?;
    let now = OffsetDateTime::now_utc();
    let secret = new_secret();
    let (record, revision) = match load_secret(&store, id).await? {
        Some((record, revision)) => (record.rotated(secret.clone(), now), Some(revision)),
        None => (SecretRecord { current: secret.clone(), previous: None }, None),
    };
    let previous_expires_at = record.previous.as_ref().map_or(now, |p| p.expires_at);
    let command = WebhookCommand::RotateSecret { id, org: who.org, previous_expires_at };
    let event = webhook::decide(Some(&current), &command).map_err(refusal)?;
    let value = serde_json::to_vec(&record).map_err(|e| AppError::Internal(e.to_string()))?;
    let written = match revision {
        Some(rev) => {
            store.update(id.to_string(), value.into(), rev).await.map(drop).map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string()))
        }
        None => store.create(id.to_string(), value.into()).await.map(drop).map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
    };
    match written {
        Ok(()) => {}
        Err((true, _)) => return Err(AppError::Conflict("conflict", "the secret was rotated at the same time; retry".into())),
        Err((false, e)) => return Err(AppError::Unavailable(format!("webhook secrets: {e}"))),
    }
    let operation = submit_webhook(app, who, alloc, command).await?;
    let folded =
        webhook::evolve(Some(current), id, operation.created_at, &event).ok_or_else(|| AppError::Internal("a rotated webhook folds into one".into()))?;
    let resource = app.proj.webhook(who.org, id)?.filter(|w| w.previous_secret_expires_at == Some(previous_expires_at)).unwrap_or(folded);
    Ok(WithSecret { accepted: Accepted { resource, operation }, secret })
}

/// Delete an endpoint of the caller's org, and its secrets.
pub async fn delete(app: &App, who: &Principal, alloc: Allocation, id: WebhookId) -> AppResult<Operation> {
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        return Ok(operation);
    }
    let current = get(app, who, id)?;
    let command = WebhookCommand::Delete { id, org: who.org };
    webhook::decide(Some(&current), &command).map_err(refusal)?;
    let operation = submit_webhook(app, who, alloc, command).await?;
    // The endpoint is gone (or going): nothing may be signed for it any more.
    if let Err(e) = secrets(app).await?.purge(id.to_string()).await {
        tracing::warn!(webhook = %id, error = %e, "the deleted webhook's secrets were not removed");
    }
    Ok(operation)
}

/// Send an endpoint of the caller's org a `webhook.test` event (the
/// deliverer delivers it to this endpoint only, whatever its filter).
pub async fn test(app: &App, who: &Principal, alloc: Allocation, id: WebhookId) -> AppResult<Operation> {
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        return Ok(operation);
    }
    let current = get(app, who, id)?;
    let command = WebhookCommand::Test { id, org: who.org };
    webhook::decide(Some(&current), &command).map_err(refusal)?;
    submit_webhook(app, who, alloc, command).await
}

/// The deliveries to an endpoint of the caller's org, newest event first,
/// only those whose last attempt ended with `status` when one is given.
pub fn deliveries(app: &App, who: &Principal, id: WebhookId, status: Option<AttemptOutcome>, window: Window) -> AppResult<Listed<Delivery>> {
    get(app, who, id)?;
    let (items, total) = app.proj.webhook_deliveries(who.org, id, status, window.offset, window.limit)?;
    Ok(Listed { items, total })
}

/// One delivery to an endpoint of the caller's org.
pub fn delivery(app: &App, who: &Principal, id: WebhookId, delivery: DeliveryId) -> AppResult<Delivery> {
    get(app, who, id)?;
    app.proj.webhook_delivery(who.org, id, delivery)?.ok_or_else(|| AppError::NotFound(format!("delivery {delivery} of webhook {id}")))
}

/// Ask the deliverer to attempt a delivery again now, whatever its state
/// (delivered, retrying or failed); it is recorded as a manual attempt.
pub async fn retry_delivery(app: &App, who: &Principal, alloc: Allocation, id: WebhookId, dlv: DeliveryId) -> AppResult<Operation> {
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        return Ok(operation);
    }
    let current = get(app, who, id)?;
    let found = delivery(app, who, id, dlv)?;
    let command = WebhookCommand::RetryDelivery { id, org: who.org, delivery: dlv, event_seq: found.event_seq };
    webhook::decide(Some(&current), &command).map_err(refusal)?;
    submit_webhook(app, who, alloc, command).await
}

/// `whsec_` + base64 of [`SECRET_BYTES`] random bytes.
fn new_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

async fn secrets(app: &App) -> AppResult<kv::Store> {
    Ok(app.bus.bucket(subjects::WEBHOOK_SECRET_BUCKET).await?)
}

async fn load_secret(store: &kv::Store, id: WebhookId) -> AppResult<Option<(SecretRecord, u64)>> {
    let entry = store.entry(id.to_string()).await.map_err(kv_error)?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let record = serde_json::from_slice(&e.value).map_err(|e| AppError::Internal(format!("a webhook secret record is unreadable: {e}")))?;
            Ok(Some((record, e.revision)))
        }
        _ => Ok(None),
    }
}

fn kv_error(e: impl std::fmt::Display) -> AppError {
    AppError::Unavailable(format!("webhook secrets: {e}"))
}

/// Refuse a URL whose host is, or resolves to, a loopback, private,
/// link-local or metadata address, unless the gateway runs with
/// `--webhook-allow-private`. A host that does not resolve is refused too.
async fn check_address(app: &App, url: &CheckedUrl) -> AppResult<()> {
    if app.cfg.webhook_allow_private {
        return Ok(());
    }
    let addrs: Vec<IpAddr> = match url.ip {
        Some(ip) => vec![ip],
        None => match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((url.host.as_str(), url.port))).await {
            Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            Ok(Err(_)) | Err(_) => vec![],
        },
    };
    if addrs.is_empty() {
        return Err(AppError::Invalid("url_not_allowed", format!("url: the host {} does not resolve", url.host)));
    }
    if let Some(ip) = addrs.into_iter().find(|ip| webhook::is_private(*ip)) {
        return Err(AppError::Invalid(
            "url_not_allowed",
            format!("url: {} is {ip}, a loopback, private, link-local or metadata address (allowed only with --webhook-allow-private)", url.host),
        ));
    }
    Ok(())
}

fn refusal(e: WebhookError) -> AppError {
    match e {
        WebhookError::BadUrl(_) | WebhookError::BadEventTypes(_) | WebhookError::BadDescription | WebhookError::EmptyChange => {
            AppError::Invalid(e.code(), e.to_string())
        }
        WebhookError::NotFound => AppError::NotFound("webhook".into()),
        WebhookError::AlreadyExists => AppError::Conflict(e.code(), e.to_string()),
    }
}

async fn submit_webhook(app: &App, who: &Principal, alloc: Allocation, command: WebhookCommand) -> AppResult<Operation> {
    let (org, kind, target) = (command.org(), command.kind(), command.id().to_string());
    submit(app, who, Submission::to_org(alloc, org, who.project_or_default(), kind, target, Command::Webhook { command })).await
}
