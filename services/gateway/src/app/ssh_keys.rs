//! Stored SSH keys of the caller's org: create, list, read, delete, and
//! resolving key ids to public keys for a create. Another org's key is not
//! found, never shown. Creation and deletion go through the command stream
//! to the control-plane consumer (as tenancy commands do); the accept-and-wait
//! usually sees the worker's event, so the key can be used at once.

use super::accept::{Submission, accepted_before, submit};
use super::{Accepted, Allocation, App, AppError, AppResult, Operation, Principal};
use vmplane_domain::ssh_key::{self, SshKey, SshKeyCommand, SshKeyError};
use vmplane_domain::{Command, SshKeyId};

/// Store `public_key` (an OpenSSH public key) as `name` in the caller's org.
/// Answers the key as it will be stored: canonical form and fingerprint.
pub async fn create(app: &App, who: &Principal, alloc: Allocation, name: String, public_key: String) -> AppResult<Accepted<SshKey>> {
    let id = SshKeyId(alloc.resource());
    let command = SshKeyCommand::Create { id, org: who.org, name: name.clone(), public_key };
    // Refuse early what the worker would refuse; its answer is the key as stored.
    let created = ssh_key::decide(None, &command).map_err(refusal)?;
    let operation = submit_ssh_key(app, who, alloc, command).await?;
    let key = ssh_key::evolve(None, id, operation.created_at, &created).ok_or_else(|| AppError::Internal("a created key folds into a key".into()))?;
    Ok(Accepted { resource: app.proj.ssh_key(who.org, id)?.unwrap_or(key), operation })
}

/// The caller's org's keys, oldest first.
pub fn list(app: &App, who: &Principal) -> AppResult<Vec<SshKey>> {
    Ok(app.proj.ssh_keys(who.org)?)
}

/// A key of the caller's org.
pub fn get(app: &App, who: &Principal, id: SshKeyId) -> AppResult<SshKey> {
    app.proj.ssh_key(who.org, id)?.ok_or_else(|| AppError::NotFound(format!("ssh key {id}")))
}

/// Delete a key of the caller's org; answers the deletion's operation. VMs
/// created with the key keep it.
pub async fn delete(app: &App, who: &Principal, alloc: Allocation, id: SshKeyId) -> AppResult<Operation> {
    // A retry of a deletion carried out already: the key is gone, the answer stands.
    if let Some(operation) = accepted_before(app, alloc.op())?.filter(|o| o.target_id == id.to_string()) {
        return Ok(operation);
    }
    let key = get(app, who, id)?;
    let command = SshKeyCommand::Delete { id, org: who.org };
    ssh_key::decide(Some(&key), &command).map_err(refusal)?;
    submit_ssh_key(app, who, alloc, command).await
}

/// The public keys of `ids`, each a key of the caller's org (another org's
/// key is not found, as if it did not exist), in the order given, each once.
pub fn public_keys(app: &App, who: &Principal, ids: &[SshKeyId]) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        let key = get(app, who, *id)?.public_key;
        if !out.contains(&key) {
            out.push(key);
        }
    }
    Ok(out)
}

fn refusal(e: SshKeyError) -> AppError {
    match e {
        SshKeyError::BadName | SshKeyError::BadKey(_) => AppError::Invalid(e.code(), e.to_string()),
        SshKeyError::NotFound => AppError::NotFound("ssh key".into()),
        SshKeyError::AlreadyExists => AppError::Conflict(e.code(), e.to_string()),
    }
}

async fn submit_ssh_key(app: &App, who: &Principal, alloc: Allocation, command: SshKeyCommand) -> AppResult<Operation> {
    let (org, kind, target) = (command.org(), command.kind(), command.id().to_string());
    submit(app, who, Submission::to_org(alloc, org, who.project_or_default(), kind, target, Command::SshKey { command })).await
}
