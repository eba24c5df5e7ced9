//! Who calls: `Authorization: Bearer <token>` (the admin token or an API key
//! secret, as in `/v1`), acting in the key's org; the admin acts in the
//! `default` org unless it names another with `X-Vmplane-Org` (and a
//! project with `X-Vmplane-Project`), as in `/v1`. Rejections speak JSON:API.

use super::error::MarketError;
use crate::AppState;
use crate::app::Principal;
use crate::app::caller::{authenticate, scope};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use vmplane_domain::{OrgId, ProjectId};

/// The authenticated caller of a marketplace request.
pub struct Caller(pub Principal);

/// A typed id from header `name`, if present.
fn id_header<T: std::str::FromStr<Err = vmplane_domain::ids::IdError>>(parts: &Parts, name: &str) -> Result<Option<T>, MarketError> {
    let Some(value) = parts.headers.get(name) else { return Ok(None) };
    let text = value.to_str().map_err(|_| MarketError::bad_request("bad_header", format!("{name} is not valid text")))?;
    text.parse().map(Some).map_err(|e| MarketError::bad_request("bad_header", format!("{name}: {e}")))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = MarketError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, MarketError> {
        // Authenticated already by the idempotency layer (its rate token is spent).
        if let Some(who) = parts.extensions.get::<Principal>() {
            return Ok(Self(*who));
        }
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| MarketError::from(crate::app::AppError::Unauthenticated))?;
        let actor = authenticate(&state.app, token)?;
        let org = id_header::<OrgId>(parts, "x-vmplane-org")?;
        let project = id_header::<ProjectId>(parts, "x-vmplane-project")?;
        let who = scope(&state.app, actor, org, project)?;
        parts.extensions.insert(who);
        Ok(Self(who))
    }
}
