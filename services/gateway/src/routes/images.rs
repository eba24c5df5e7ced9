//! `GET /v1/images`: the images the hosts can boot, merged by name.

use crate::AppState;
use crate::auth::Principal;
use crate::commands::{Submission, accepted_before, submit};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Json;
use crate::idempotency::Allocation;
use crate::projection::operations::Operation;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::host::ImageInfo;
use vmplane_domain::host::{HostCommand, ImageFormat};
use vmplane_domain::spec::is_dns_label;
use vmplane_domain::{Command, ProjectId, subjects};
use vmplane_domain::{HostId, ImageId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_images, import_image))
}

/// An image and the hosts that have it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageView {
    /// Stable per name: the same image on several hosts is one image.
    pub id: ImageId,
    #[serde(flatten)]
    pub info: ImageInfo,
    pub host_ids: Vec<HostId>,
}

/// Every image some host announced, by name.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<ImageView>), (status = "4XX", body = ErrorBody)))]
async fn list_images(State(state): State<AppState>, _who: Principal) -> ApiResult<axum::Json<Vec<ImageView>>> {
    let mut by_name: BTreeMap<String, ImageView> = BTreeMap::new();
    for host in state.proj.hosts()? {
        for image in host.info.images {
            by_name
                .entry(image.name.clone())
                .or_insert_with(|| ImageView { id: ImageId::for_slug(&image.name), info: image, host_ids: Vec::new() })
                .host_ids
                .push(host.id);
        }
    }
    Ok(axum::Json(by_name.into_values().collect()))
}

/// `POST /v1/images` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The slug VMs will name in `image`: a DNS label.
    pub name: String,
    /// Absolute path of the source on the host.
    pub source: String,
    pub format: ImageFormat,
    /// The host to import on; default: the first online host.
    pub host_id: Option<HostId>,
}

/// An accepted import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportAccepted {
    pub id: ImageId,
    pub name: String,
    pub host_id: HostId,
    pub operation: Operation,
}

/// Import a raw or qcow2 disk holding an ext2/3/4 root filesystem, an OCI
/// image layout directory, or a `docker save` tarball, from a path on a host,
/// as a bootable image (admin only). Watch the operation for the outcome.
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImportRequest,
    responses((status = 202, body = ImportAccepted), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn import_image(
    State(state): State<AppState>,
    who: Principal,
    alloc: Allocation,
    Json(req): Json<ImportRequest>,
) -> ApiResult<(StatusCode, axum::Json<ImportAccepted>)> {
    who.require_admin()?;
    if !is_dns_label(&req.name) {
        return Err(ApiError::Unprocessable("validation_failed", "name: must be a DNS label".into()));
    }
    if !req.source.starts_with('/') || req.source.len() > 4096 || req.source.contains('\0') {
        return Err(ApiError::Unprocessable("validation_failed", "source: must be an absolute path on the host".into()));
    }
    // A retry (same Idempotency-Key) of an import the worker took up already.
    if let Some(operation) = accepted_before(&state, alloc.op())?
        && let Ok(host_id) = operation.target_id.parse::<HostId>()
    {
        return Ok((StatusCode::ACCEPTED, axum::Json(ImportAccepted { id: ImageId::for_slug(&req.name), name: req.name, host_id, operation })));
    }
    let hosts = state.proj.hosts()?;
    let host = match req.host_id {
        Some(id) => hosts.into_iter().find(|h| h.id == id).ok_or_else(|| ApiError::NotFound(format!("host {id}")))?,
        None => hosts
            .into_iter()
            .filter(|h| state.proj.heartbeats.is_online(h.id))
            .min_by_key(|h| h.id)
            .ok_or_else(|| ApiError::Unavailable("no worker host is online".into()))?,
    };
    if host.info.images.iter().any(|i| i.name == req.name) {
        return Err(ApiError::Conflict("conflict", format!("image `{}` already exists on host {}", req.name, host.id)));
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
    let operation = submit(&state, &who, sub).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(ImportAccepted { id: ImageId::for_slug(&req.name), name: req.name, host_id: host.id, operation })))
}
