//! Who calls, and in which org and project: `Authorization: Bearer <token>`
//! (the same tokens as `/v1`) and the `{org_id}`/`{project_id}` of the path.
//! The caller must be in that org (the admin may name any); an org the
//! caller is not in, like one that does not exist, is a 404.

use super::error::NeevError;
use super::ids::{parse_org, parse_project, parse_uuid};
use crate::AppState;
use crate::app::caller::{authenticate, scope};
use crate::app::{AppError, Principal};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::collections::HashMap;
use ulid::Ulid;

/// The authenticated caller, scoped to the path's org and project, and the
/// path's other parameters.
pub struct Caller {
    pub who: Principal,
    params: HashMap<String, String>,
}

impl Caller {
    /// The UUID path parameter `name` (400 when it is not a UUID).
    pub fn uuid(&self, name: &str) -> Result<Ulid, NeevError> {
        let raw = self.params.get(name).map(String::as_str).unwrap_or_default();
        parse_uuid(raw).ok_or_else(|| NeevError::invalid(format!("{name}: `{raw}` is not a UUID")))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = NeevError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, NeevError> {
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(NeevError::unauthorized)?;
        let actor = authenticate(&state.app, token)?;
        let axum::extract::Path(params) = axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|r| NeevError::bad_request("invalid_path", r.body_text()))?;
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let org = parse_org(param("org_id")).ok_or_else(|| NeevError::not_found(format!("org {}", param("org_id"))))?;
        let project = parse_project(param("project_id")).ok_or_else(|| NeevError::not_found(format!("project {}", param("project_id"))))?;
        let who = scope(&state.app, actor, Some(org), Some(project)).map_err(|e| match e {
            // A key naming another org: that org is not there for it.
            AppError::Forbidden(_) => NeevError::not_found(format!("org {}", param("org_id"))),
            e => e.into(),
        })?;
        Ok(Self { who, params })
    }
}
