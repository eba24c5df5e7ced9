//! Hatch's extractors: the caller (bearer token, as everywhere in vmplane),
//! a JSON body, and a VM id in the path; each rejects in Hatch's error shape.

use super::error::HatchError;
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
use vmplane_domain::VmId;

/// Optional headers naming the org and project to act in (the admin token
/// may name any; an API key only its own), shared with `/v1`.
const ORG_HEADER: &str = "x-vmplane-org";
const PROJECT_HEADER: &str = "x-vmplane-project";

/// The authenticated caller: `Authorization: Bearer <token>`.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = HatchError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HatchError> {
        // Authenticated once per request (the Idempotency-Key middleware may have done it).
        if let Some(who) = parts.extensions.get::<Principal>() {
            return Ok(Self(*who));
        }
        let header =
            |name: &str| parts.headers.get(name).map(|v| v.to_str().map_err(|_| HatchError::bad_request(format!("{name} is not valid text")))).transpose();
        let token = header("authorization")?
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| HatchError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token"))?;
        let actor = authenticate(&state.app, token)?;
        let org = header(ORG_HEADER)?.map(|v| v.parse().map_err(|e| HatchError::bad_request(format!("{ORG_HEADER}: {e}")))).transpose()?;
        let project = header(PROJECT_HEADER)?.map(|v| v.parse().map_err(|e| HatchError::bad_request(format!("{PROJECT_HEADER}: {e}")))).transpose()?;
        let who = scope(&state.app, actor, org, project)?;
        parts.extensions.insert(who);
        Ok(Self(who))
    }
}

/// A JSON body, whatever its Content-Type says (as Go's decoder reads it);
/// an empty body is `{}`. The body is checked against Hatch's document
/// (see [`Contract`]): unreadable JSON, wrong types, unknown fields and
/// values the document forbids are a 400; whole-number floats (`1024.0`)
/// are integers.
pub struct Body<T>(pub T);

/// Hatch's document's request bodies, the rule each body is checked by.
static CONTRACT: LazyLock<Contract> = LazyLock::new(|| Contract::new(&super::openapi()));

impl<S: Send + Sync, T: DeserializeOwned + ToSchema> FromRequest<S> for Body<T> {
    type Rejection = HatchError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HatchError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| HatchError::new(r.status(), r.body_text()))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        let value = serde_json::from_slice(bytes).map_err(|e| HatchError::bad_request(format!("invalid request body: {e}")))?;
        CONTRACT.decode(value).map(Self).map_err(|refusal| match refusal {
            Refusal::Shape(why) => HatchError::bad_request(format!("invalid request body: {why}")),
            Refusal::Rule { why, .. } => HatchError::bad_request(why),
        })
    }
}

/// The VM id of the path; one that cannot be a VM id is a VM not found.
pub struct VmPath(pub VmId);

impl<S: Send + Sync> FromRequestParts<S> for VmPath {
    type Rejection = HatchError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HatchError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|r| HatchError::bad_request(r.body_text()))?;
        raw.parse().map(Self).map_err(|_| HatchError::vm_not_found(&raw))
    }
}
