//! Who is calling, and in which org and project they act.
//!
//! `Authorization: Bearer <token>` carries either the bootstrap admin token
//! (`VMPLANE_ADMIN_TOKEN`) or an API key secret `vmp_<key id>_<random>`, of
//! which only the SHA-256 is stored. The admin acts in the `default` org and
//! project unless `X-Vmplane-Org` / `X-Vmplane-Project` say otherwise; a key
//! acts in its own org only.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use vmplane_domain::{ApiKeyId, OrgId, ProjectId};

/// Header naming the org to act in.
pub const ORG_HEADER: &str = "x-vmplane-org";
/// Header naming the project to act in.
pub const PROJECT_HEADER: &str = "x-vmplane-project";
/// Prefix of API key secrets.
pub const KEY_SECRET_PREFIX: &str = "vmp_";

/// The authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    Admin,
    Key(ApiKeyId),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Admin => f.write_str("admin"),
            Self::Key(id) => write!(f, "{id}"),
        }
    }
}

/// The caller and the scope it acts in; extracting it authenticates the request.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub actor: Actor,
    pub org: OrgId,
    /// The project named by header, if any; listing without one spans the org.
    pub project: Option<ProjectId>,
    /// Whether the org was named by header (or by the key) rather than defaulted.
    pub org_explicit: bool,
}

impl Principal {
    /// The project new resources go to.
    pub fn project_or_default(&self) -> ProjectId {
        self.project.unwrap_or(ProjectId::DEFAULT)
    }

    /// Refuse non-admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.actor {
            Actor::Admin => Ok(()),
            Actor::Key(_) => Err(ApiError::Forbidden("this operation needs the admin token".into())),
        }
    }

    /// Whether the caller sees the events of every org: the admin, unless it named one.
    pub fn sees_all_orgs(&self) -> bool {
        self.actor == Actor::Admin && !self.org_explicit
    }
}

/// The hex SHA-256 of a secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// An API key secret embedding the key id, so verification is one lookup;
/// `random` is 256 bits no one else can guess (see `idempotency::Allocation`).
pub fn new_secret(id: ApiKeyId, random: [u8; 32]) -> String {
    format!("{KEY_SECRET_PREFIX}{id}_{}", hex::encode(random))
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn header<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ApiError> {
    parts.headers.get(name).map(|v| v.to_str().map_err(|_| ApiError::BadRequest("bad_header", format!("{name} is not valid text")))).transpose()
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Authenticated once per request: a middleware that needed the caller
        // first (idempotency) left it here, and its rate-limit token is spent.
        if let Some(who) = parts.extensions.get::<Self>() {
            return Ok(*who);
        }
        let token = header(parts, "authorization")?.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or(ApiError::Unauthorized)?;
        let actor = authenticate(state, token)?;
        let org_header = header(parts, ORG_HEADER)?;
        let org = match (actor, org_header) {
            (Actor::Admin, None) => OrgId::DEFAULT,
            (Actor::Admin, Some(h)) => h.parse().map_err(|e| ApiError::BadRequest("invalid_id", format!("{ORG_HEADER}: {e}")))?,
            (Actor::Key(id), given) => {
                let key_org = state.proj.api_key(id)?.map(|k| k.org).ok_or(ApiError::Unauthorized)?;
                if given.is_some_and(|g| g != key_org.to_string()) {
                    return Err(ApiError::Forbidden("an API key acts only in its own org".into()));
                }
                key_org
            }
        };
        if state.proj.org(org)?.is_none() {
            return Err(ApiError::NotFound(format!("org {org}")));
        }
        let project = match header(parts, PROJECT_HEADER)? {
            None => None,
            Some(h) => {
                let id: ProjectId = h.parse().map_err(|e| ApiError::BadRequest("invalid_id", format!("{PROJECT_HEADER}: {e}")))?;
                state.proj.project(org, id)?.ok_or_else(|| ApiError::NotFound(format!("project {id}")))?;
                Some(id)
            }
        };
        if let Actor::Key(id) = actor {
            state.limiter.check(id)?;
        }
        let who = Self { actor, org, project, org_explicit: org_header.is_some() || actor != Actor::Admin };
        parts.extensions.insert(who);
        Ok(who)
    }
}

fn authenticate(state: &AppState, token: &str) -> Result<Actor, ApiError> {
    if let Some(admin) = &state.cfg.admin_token
        && bool::from(admin.as_bytes().ct_eq(token.as_bytes()))
    {
        return Ok(Actor::Admin);
    }
    let id = token
        .strip_prefix(KEY_SECRET_PREFIX)
        .and_then(|rest| rest.rsplit_once('_'))
        .and_then(|(id, _)| id.parse::<ApiKeyId>().ok())
        .ok_or(ApiError::Unauthorized)?;
    let key = state.proj.api_key(id)?.ok_or(ApiError::Unauthorized)?;
    if bool::from(key.secret_sha256.as_bytes().ct_eq(hash_secret(token).as_bytes())) { Ok(Actor::Key(id)) } else { Err(ApiError::Unauthorized) }
}
