//! Who is calling, and in which org and project they act.
//!
//! A caller presents a token: the bootstrap admin token
//! (`VMPLANE_ADMIN_TOKEN`) or an API key secret `vmp_<key id>_<random>`, of
//! which only the SHA-256 is stored. The admin acts in the `default` org and
//! project unless it names others; a key acts in its own org only. How a
//! dialect carries the token and the names (headers, path) is its own affair.

use super::{App, AppError, AppResult};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use vmplane_domain::{ApiKeyId, OrgId, ProjectId};

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

/// The caller and the scope it acts in, as [`scope`] established them.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub actor: Actor,
    pub org: OrgId,
    /// The project named, if any; listing without one spans the org.
    pub project: Option<ProjectId>,
    /// Whether the org was named (or given by the key) rather than defaulted.
    pub org_explicit: bool,
}

impl Principal {
    /// The project new resources go to.
    pub fn project_or_default(&self) -> ProjectId {
        self.project.unwrap_or(ProjectId::DEFAULT)
    }

    /// Refuse non-admins.
    pub fn require_admin(&self) -> AppResult<()> {
        match self.actor {
            Actor::Admin => Ok(()),
            Actor::Key(_) => Err(AppError::Forbidden("this operation needs the admin token".into())),
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
/// `random` is 256 bits no one else can guess (see [`super::Allocation`]).
pub fn new_secret(id: ApiKeyId, random: [u8; 32]) -> String {
    format!("{KEY_SECRET_PREFIX}{id}_{}", hex::encode(random))
}

/// Who presents `token`: the admin, or an API key that is not revoked.
pub fn authenticate(app: &App, token: &str) -> AppResult<Actor> {
    if let Some(admin) = &app.cfg.admin_token
        && bool::from(admin.as_bytes().ct_eq(token.as_bytes()))
    {
        return Ok(Actor::Admin);
    }
    let id = token
        .strip_prefix(KEY_SECRET_PREFIX)
        .and_then(|rest| rest.rsplit_once('_'))
        .and_then(|(id, _)| id.parse::<ApiKeyId>().ok())
        .ok_or(AppError::Unauthenticated)?;
    let key = app.proj.api_key(id)?.ok_or(AppError::Unauthenticated)?;
    if bool::from(key.secret_sha256.as_bytes().ct_eq(hash_secret(token).as_bytes())) { Ok(Actor::Key(id)) } else { Err(AppError::Unauthenticated) }
}

/// The scope `actor` acts in: the org and project it names, which must
/// exist (a key may name only its own org), and it is charged one request
/// of its rate. Called once per request.
pub fn scope(app: &App, actor: Actor, org: Option<OrgId>, project: Option<ProjectId>) -> AppResult<Principal> {
    let acting_in = match (actor, org) {
        (Actor::Admin, named) => named.unwrap_or(OrgId::DEFAULT),
        (Actor::Key(id), named) => {
            let key_org = app.proj.api_key(id)?.map(|k| k.org).ok_or(AppError::Unauthenticated)?;
            if named.is_some_and(|o| o != key_org) {
                return Err(AppError::Forbidden("an API key acts only in its own org".into()));
            }
            key_org
        }
    };
    if app.proj.org(acting_in)?.is_none() {
        return Err(AppError::NotFound(format!("org {acting_in}")));
    }
    if let Some(id) = project {
        app.proj.project(acting_in, id)?.ok_or_else(|| AppError::NotFound(format!("project {id}")))?;
    }
    if let Actor::Key(id) = actor {
        app.limiter.check(id)?;
    }
    Ok(Principal { actor, org: acting_in, project, org_explicit: org.is_some() || actor != Actor::Admin })
}
