//! Authentication in `/v1`: `Authorization: Bearer <token>`, and the org and
//! project to act in named by `X-Vmplane-Org` / `X-Vmplane-Project`
//! (see `app::caller` for who may act where).

use super::error::ApiError;
use crate::AppState;
use crate::app::Principal;
use crate::app::caller::{authenticate, scope};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use vmplane_domain::{OrgId, ProjectId};

/// Header naming the org to act in.
pub const ORG_HEADER: &str = "x-vmplane-org";
/// Header naming the project to act in.
pub const PROJECT_HEADER: &str = "x-vmplane-project";

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn header<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ApiError> {
    parts.headers.get(name).map(|v| v.to_str().map_err(|_| ApiError::BadRequest("bad_header", format!("{name} is not valid text")))).transpose()
}

/// A typed id named by header `name`, if present.
fn id_header<T: std::str::FromStr<Err = vmplane_domain::ids::IdError>>(parts: &Parts, name: &str) -> Result<Option<T>, ApiError> {
    header(parts, name)?.map(|h| h.parse().map_err(|e| ApiError::BadRequest("invalid_id", format!("{name}: {e}")))).transpose()
}

/// Extracting the caller authenticates the request.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Authenticated once per request: a middleware that needed the caller
        // first (idempotency) left it here, and its rate-limit token is spent.
        if let Some(who) = parts.extensions.get::<Self>() {
            return Ok(*who);
        }
        let token = header(parts, "authorization")?.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or(ApiError::Unauthorized)?;
        let actor = authenticate(&state.app, token)?;
        let org = id_header::<OrgId>(parts, ORG_HEADER)?;
        let project = id_header::<ProjectId>(parts, PROJECT_HEADER)?;
        let who = scope(&state.app, actor, org, project)?;
        parts.extensions.insert(who);
        Ok(who)
    }
}
