//! The caller, the body, the query and the path, each refusing in hypeman's
//! error shape rather than axum's plain-text rejections.
//!
//! Authentication is `/v1`'s: `Authorization: Bearer <token>` (the admin
//! token or an API key), acting in the key's org (the admin: in `default`).
//! hypeman has no orgs; the optional `X-Vmplane-Org` / `X-Vmplane-Project`
//! headers name them as in `/v1`.

use super::error::HypemanError;
use crate::AppState;
use crate::app::Principal;
use crate::app::caller::{authenticate, scope};
use crate::routes::contract::{Contract, Refusal};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::sync::LazyLock;
use utoipa::ToSchema;

const ORG_HEADER: &str = "x-vmplane-org";
const PROJECT_HEADER: &str = "x-vmplane-project";

/// The authenticated caller, in the org and project it acts in.
pub struct Caller(pub Principal);

fn header<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, HypemanError> {
    parts.headers.get(name).map(|v| v.to_str().map_err(|_| HypemanError::BadRequest("bad_request", format!("{name} is not valid text")))).transpose()
}

fn id_header<T: std::str::FromStr<Err = vmplane_domain::ids::IdError>>(parts: &Parts, name: &str) -> Result<Option<T>, HypemanError> {
    header(parts, name)?.map(|h| h.parse().map_err(|e| HypemanError::BadRequest("bad_request", format!("{name}: {e}")))).transpose()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = HypemanError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HypemanError> {
        // Authenticated once per request: a middleware that needed the caller
        // first (idempotency) left it here, its rate-limit token spent.
        if let Some(who) = parts.extensions.get::<Principal>() {
            return Ok(Self(*who));
        }
        let token = header(parts, "authorization")?.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or(HypemanError::Unauthorized)?;
        let actor = authenticate(&state.app, token)?;
        let who = scope(&state.app, actor, id_header(parts, ORG_HEADER)?, id_header(parts, PROJECT_HEADER)?)?;
        parts.extensions.insert(who);
        Ok(Self(who))
    }
}

/// A JSON body, whatever the Content-Type says (hypeman's clients send
/// JSON), checked against hypeman's document (see [`Contract`]): anything
/// that does not decode into the request shape (malformed, a missing or
/// unknown field, a wrong type) is 400 `bad_request`; a value the document
/// forbids is 400 with the code of the field it is in ([`rule_code`]);
/// over the body limit, 413. Whole-number floats (`2.0`) are integers.
pub struct Json<T>(pub T);

/// hypeman's document's request bodies, the rule each body is checked by.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| Contract::new(&super::openapi()));

impl<S: Send + Sync, T: DeserializeOwned + ToSchema> FromRequest<S> for Json<T> {
    type Rejection = HypemanError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HypemanError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => HypemanError::PayloadTooLarge,
            _ => HypemanError::BadRequest("bad_request", r.body_text()),
        })?;
        let value = serde_json::from_slice(&bytes).map_err(|e| HypemanError::BadRequest("bad_request", format!("invalid request body: {e}")))?;
        CONTRACT.decode(value).map(Self).map_err(|refusal| match refusal {
            Refusal::Shape(why) => HypemanError::BadRequest("bad_request", format!("invalid request body: {why}")),
            Refusal::Rule { at, why } => HypemanError::BadRequest(rule_code(&at), why),
        })
    }
}

/// The code of a body that breaks a rule of the document, by the JSON
/// pointer of its first violation: the same codes the handlers give for
/// the same rules. A mount's rules (an attach's fields, a create's
/// `volumes`) are `invalid_volume_mount`, except its `overlay_size`.
pub fn rule_code(at: &str) -> &'static str {
    match at {
        "/size" => "invalid_size",
        "/hotplug_size" => "invalid_hotplug_size",
        p if p.ends_with("/overlay_size") => "invalid_overlay_size",
        "" | "/mount_path" | "/readonly" | "/overlay" => "invalid_volume_mount",
        p if p.starts_with("/volumes/") => "invalid_volume_mount",
        _ => "validation_failed",
    }
}

/// Query parameters: anything unparsable is 400 `bad_request`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = HypemanError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HypemanError> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|q| Self(q.0)).map_err(|r| HypemanError::BadRequest("bad_request", r.body_text()))
    }
}

/// Path parameters: anything undecodable is 400 `bad_request`.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = HypemanError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HypemanError> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|p| Self(p.0)).map_err(|r| HypemanError::BadRequest("bad_request", r.body_text()))
    }
}
