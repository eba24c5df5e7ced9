//! Orgs, projects and API keys (admin only). Creation goes through the
//! command stream like everything else; the operation of an accepted command
//! has `succeeded` once the worker's event is projected (a new key works at
//! once), which the accept-and-wait usually sees.

use super::accept::{Submission, accepted_before, submit};
use super::caller::{hash_secret, new_secret};
use super::{Accepted, Allocation, App, AppError, AppResult, Operation, Principal};
use vmplane_domain::placement::Strategy;
use vmplane_domain::tenancy::{self, ApiKey, Org, Project, TenancyCommand, TenancyError};
use vmplane_domain::{ApiKeyId, Command, OrgId, ProjectId, subjects};

/// A new API key with its secret, which exists only in this answer.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub key: ApiKey,
    pub secret: String,
}

/// Create an org named `name`, whose VMs and volumes are placed by
/// `placement_strategy` when a request does not say.
pub async fn create_org(app: &App, who: &Principal, alloc: Allocation, name: String, placement_strategy: Strategy) -> AppResult<Accepted<Org>> {
    who.require_admin()?;
    let id = OrgId(alloc.resource());
    let operation = submit_tenancy(app, who, alloc, TenancyCommand::CreateOrg { id, name: name.clone(), placement_strategy }).await?;
    Ok(Accepted { resource: Org { id, name, placement_strategy, created_at: operation.created_at }, operation })
}

/// Change how `org` places what a request does not say where to place (admin).
pub async fn set_placement_strategy(app: &App, who: &Principal, alloc: Allocation, org: OrgId, placement_strategy: Strategy) -> AppResult<Accepted<Org>> {
    who.require_admin()?;
    let current = app.proj.org(org)?.ok_or_else(|| AppError::NotFound(format!("org {org}")))?;
    let operation = submit_tenancy(app, who, alloc, TenancyCommand::SetPlacementStrategy { org, placement_strategy }).await?;
    Ok(Accepted { resource: Org { placement_strategy, ..current }, operation })
}

/// The strategy a placement for `org` follows: the one `asked` for, else the org's.
pub fn placement_strategy(app: &App, org: OrgId, asked: Option<Strategy>) -> AppResult<Strategy> {
    match asked {
        Some(s) => Ok(s),
        None => Ok(app.proj.org(org)?.map(|o| o.placement_strategy).unwrap_or_default()),
    }
}

/// Every org.
pub fn orgs(app: &App, who: &Principal) -> AppResult<Vec<Org>> {
    who.require_admin()?;
    Ok(app.proj.orgs()?)
}

/// Create a project named `name` in `org`.
pub async fn create_project(app: &App, who: &Principal, alloc: Allocation, org: OrgId, name: String) -> AppResult<Accepted<Project>> {
    who.require_admin()?;
    let id = ProjectId(alloc.resource());
    let operation = submit_tenancy(app, who, alloc, TenancyCommand::CreateProject { id, org, name: name.clone() }).await?;
    Ok(Accepted { resource: Project { id, org, name, created_at: operation.created_at }, operation })
}

/// Every project of an org.
pub fn projects(app: &App, who: &Principal, org: OrgId) -> AppResult<Vec<Project>> {
    who.require_admin()?;
    app.proj.org(org)?.ok_or_else(|| AppError::NotFound(format!("org {org}")))?;
    Ok(app.proj.projects(org)?)
}

/// Create an API key in `org` (default: the org the admin acts in).
pub async fn create_api_key(app: &App, who: &Principal, alloc: Allocation, org: Option<OrgId>, name: String) -> AppResult<Accepted<NewApiKey>> {
    who.require_admin()?;
    let org = org.unwrap_or(who.org);
    let id = ApiKeyId(alloc.resource());
    // The same secret on a retry under the same idempotency key, which only
    // this caller can reproduce; never stored.
    let secret = new_secret(id, alloc.random());
    let secret_sha256 = hash_secret(&secret);
    let command = TenancyCommand::CreateApiKey { id, org, name: name.clone(), secret_sha256: secret_sha256.clone() };
    let operation = submit_tenancy(app, who, alloc, command).await?;
    let key = ApiKey { id, org, name, secret_sha256, created_at: operation.created_at };
    Ok(Accepted { resource: NewApiKey { key, secret }, operation })
}

/// The API keys of the org the admin acts in.
pub fn api_keys(app: &App, who: &Principal) -> AppResult<Vec<ApiKey>> {
    who.require_admin()?;
    Ok(app.proj.api_keys(who.org)?)
}

/// Revoke an API key (any org's): once the revocation is projected, which
/// every gateway does as the event arrives, the key authenticates nowhere and
/// its open event, log and terminal sessions end. Answers the key as it was.
pub async fn revoke_api_key(app: &App, who: &Principal, alloc: Allocation, id: ApiKeyId) -> AppResult<Accepted<ApiKey>> {
    who.require_admin()?;
    let key = app.proj.api_key(id)?.ok_or_else(|| AppError::NotFound(format!("api key {id}")))?;
    let operation = submit_tenancy(app, who, alloc, TenancyCommand::RevokeApiKey { id, org: key.org }).await?;
    Ok(Accepted { resource: key, operation })
}

/// Validate with the same pure rule the worker applies, then submit.
async fn submit_tenancy(app: &App, who: &Principal, alloc: Allocation, command: TenancyCommand) -> AppResult<Operation> {
    let org = command.org();
    if let Some(op) = accepted_before(app, alloc.op())? {
        return Ok(op);
    }
    let org_exists = app.proj.org(org)?.is_some();
    // Callers checked that a key to revoke, or an org to change, exists; creations make new ids.
    let exists = matches!(command, TenancyCommand::RevokeApiKey { .. } | TenancyCommand::SetPlacementStrategy { .. });
    tenancy::decide(&command, exists, org_exists).map_err(|e| match e {
        TenancyError::BadName | TenancyError::BadKeyName => AppError::Invalid(e.code(), e.to_string()),
        TenancyError::OrgNotFound => AppError::NotFound(format!("org {org}")),
        TenancyError::KeyNotFound => AppError::NotFound(e.to_string()),
        TenancyError::AlreadyExists => AppError::Conflict(e.code(), e.to_string()),
    })?;
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::tenancy_command(org),
        kind: command.kind(),
        target_id: command.target(),
        project: ProjectId::DEFAULT,
        command: Command::Tenancy { command },
    };
    submit(app, who, sub).await
}
