//! Images: those the hosts can boot, merged by name, and importing one onto a
//! host (admin only).

use super::accept::{Submission, accepted_before, submit};
use super::{Accepted, Allocation, App, AppError, AppResult, Principal};
use std::collections::BTreeMap;
use vmplane_domain::host::{HostCommand, ImageFormat, ImageInfo};
use vmplane_domain::placement::{Need, Strategy};
use vmplane_domain::spec::is_dns_label;
use vmplane_domain::{Command, HostId, ImageId, ProjectId, subjects};

/// An image and the hosts that have it.
#[derive(Debug, Clone)]
pub struct Image {
    /// Stable per name: the same image on several hosts is one image.
    pub id: ImageId,
    pub info: ImageInfo,
    pub hosts: Vec<HostId>,
}

/// What to import, from where.
#[derive(Debug, Clone)]
pub struct Import {
    /// The slug VMs will name: a DNS label.
    pub name: String,
    /// Absolute path of the source on the host.
    pub source: String,
    pub format: ImageFormat,
    /// The host to import on; default: the first online host.
    pub host: Option<HostId>,
}

/// An import accepted: the image it makes, and where.
#[derive(Debug, Clone)]
pub struct Importing {
    pub id: ImageId,
    pub name: String,
    pub host: HostId,
}

/// Every image some host announced, by name.
pub fn list(app: &App) -> AppResult<Vec<Image>> {
    let mut by_name: BTreeMap<String, Image> = BTreeMap::new();
    for host in app.proj.hosts()? {
        for image in host.info.images {
            by_name
                .entry(image.name.clone())
                .or_insert_with(|| Image { id: ImageId::for_slug(&image.name), info: image, hosts: Vec::new() })
                .hosts
                .push(host.id);
        }
    }
    Ok(by_name.into_values().collect())
}

/// Import a raw or qcow2 disk holding an ext2/3/4 root filesystem, an OCI
/// image layout directory, or a `docker save` tarball, from a path on a
/// host, as a bootable image. The operation tells the outcome.
pub async fn import(app: &App, who: &Principal, alloc: Allocation, req: Import) -> AppResult<Accepted<Importing>> {
    who.require_admin()?;
    if !is_dns_label(&req.name) {
        return Err(AppError::Invalid("validation_failed", "name: must be a DNS label".into()));
    }
    if !req.source.starts_with('/') || req.source.chars().count() > 4096 || req.source.contains('\0') {
        return Err(AppError::Invalid("validation_failed", "source: must be an absolute path on the host".into()));
    }
    // A retry (same idempotency key) of an import the worker took up already.
    if let Some(operation) = accepted_before(app, alloc.op())?
        && let Ok(host) = operation.target_id.parse::<HostId>()
    {
        return Ok(Accepted { resource: Importing { id: ImageId::for_slug(&req.name), name: req.name, host }, operation });
    }
    let hosts = app.proj.hosts()?;
    if let Some(id) = req.host.filter(|id| !hosts.iter().any(|h| h.id == *id)) {
        return Err(AppError::NotFound(format!("host {id}")));
    }
    let chosen = super::placement::choose(app, &Need { host: req.host, ..Need::default() }, Strategy::Spread)?;
    let host = hosts.into_iter().find(|h| h.id == chosen).ok_or_else(|| AppError::NotFound(format!("host {chosen}")))?;
    if host.info.images.iter().any(|i| i.name == req.name) {
        return Err(AppError::Conflict("conflict", format!("image `{}` already exists on host {}", req.name, host.id)));
    }
    let command = HostCommand::ImportImage { name: req.name.clone(), source: req.source, format: req.format };
    let sub = Submission {
        op: alloc.op(),
        subject: subjects::host_command(host.id),
        kind: "import_image",
        target_id: host.id.to_string(),
        project: ProjectId::DEFAULT,
        command: Command::Host { host: host.id, command },
    };
    let operation = submit(app, who, sub).await?;
    Ok(Accepted { resource: Importing { id: ImageId::for_slug(&req.name), name: req.name, host: host.id }, operation })
}
