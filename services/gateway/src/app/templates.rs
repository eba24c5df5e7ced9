//! Templates: default values for creating VMs, per org. Control-plane data
//! only: a command goes through the command stream like the tenancy ones and
//! any worker appends its event; the operation has `succeeded` once that
//! event is projected, which the accept-and-wait usually sees. A template of
//! another org is not found. A create naming a template takes its values
//! for the fields it does not give (`vms::create`).

use super::accept::{Submission, accepted_before, submit};
use super::{Accepted, Allocation, App, AppError, AppResult, Listed, Principal, Window};
use time::OffsetDateTime;
use vmplane_domain::template::{self, Template, TemplateCommand, TemplateError, TemplateSpec};
use vmplane_domain::{Command, TemplateId, subjects};

/// A template the caller may see.
pub fn get(app: &App, who: &Principal, id: TemplateId) -> AppResult<Template> {
    app.proj.template(id)?.filter(|t| t.org == who.org).ok_or_else(|| AppError::NotFound(format!("template {id}")))
}

/// The org's templates, oldest first.
pub fn list(app: &App, who: &Principal, window: Window) -> AppResult<Listed<Template>> {
    let (items, total) = app.proj.list_templates(who.org, window.offset, window.limit)?;
    Ok(Listed { items, total })
}

/// The caller's template named by `name_or_id`: its id (`tpl_…`), or its
/// name. What a create's `template` names; unknown is `unknown_template`.
pub fn resolve(app: &App, who: &Principal, name_or_id: &str) -> AppResult<Template> {
    let unknown = || AppError::Invalid("unknown_template", format!("no template `{name_or_id}` (see GET /v1/templates)"));
    if let Ok(id) = name_or_id.parse::<TemplateId>() {
        return get(app, who, id).map_err(|_| unknown());
    }
    by_name(app, who, name_or_id)?.ok_or_else(unknown)
}

/// The org's oldest template called `name`, if any.
fn by_name(app: &App, who: &Principal, name: &str) -> AppResult<Option<Template>> {
    let all = list(app, who, Window { offset: 0, limit: usize::MAX })?;
    Ok(all.items.into_iter().find(|t| t.spec.name == name))
}

/// Create a template in the caller's project. Its name must be free in the
/// org (409 `template_exists`; checked when accepted, so two creates racing
/// with one name can both pass, and the name then means the older one).
pub async fn create(app: &App, who: &Principal, alloc: Allocation, spec: TemplateSpec) -> AppResult<Accepted<Template>> {
    let id = TemplateId(alloc.resource());
    // A retry (same idempotency key) of a create carried out already.
    if let Some(operation) = accepted_before(app, alloc.op())?
        && let Some(t) = app.proj.template(id)?.filter(|t| t.org == who.org)
    {
        return Ok(Accepted { resource: t, operation });
    }
    spec.validate()?;
    if by_name(app, who, &spec.name)?.is_some() {
        return Err(AppError::Conflict("template_exists", format!("the org has a template named `{}` already", spec.name)));
    }
    accept(app, who, alloc, None, id, TemplateCommand::Create { spec: Box::new(spec) }).await
}

/// Delete a template. VMs created from it keep what it gave them.
pub async fn delete(app: &App, who: &Principal, alloc: Allocation, id: TemplateId) -> AppResult<Accepted<Template>> {
    let t = get(app, who, id)?;
    accept(app, who, alloc, Some(t), id, TemplateCommand::Delete).await
}

/// Decide the command against the projected template (refusing early), append
/// it, and answer with the template as the command leaves it.
async fn accept(app: &App, who: &Principal, alloc: Allocation, t: Option<Template>, id: TemplateId, command: TemplateCommand) -> AppResult<Accepted<Template>> {
    let project = t.as_ref().map_or_else(|| who.project_or_default(), |t| t.project);
    let events = template::decide(t.as_ref(), who.org, project, &command).map_err(|e| match e {
        TemplateError::Invalid(e) => e.into(),
        TemplateError::NotFound => AppError::NotFound(format!("template {id}")),
        TemplateError::AlreadyExists => AppError::Conflict(e.code(), e.to_string()),
    })?;
    let now = OffsetDateTime::now_utc();
    let after = events
        .iter()
        .fold(t, |s, e| template::evolve(s, id, Some(alloc.op()), now, e))
        .ok_or_else(|| AppError::Internal("decided events left no template".into()))?;
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::tenancy_command(who.org),
        kind: command.kind(),
        target_id: id.to_string(),
        project,
        command: Command::Template { template: id, command },
    };
    let operation = submit(app, who, sub).await?;
    Ok(Accepted { resource: after, operation })
}
