//! `/v1/images`: the images the hosts can boot, merged by name, and importing one.

use super::error::{ApiResult, ErrorBody};
use super::extract::Json;
use crate::AppState;
use crate::app::images::{self, Image, Import, Importing};
use crate::app::{Accepted, Allocation, Operation, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::host::{ImageFormat, ImageInfo};
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

impl From<Image> for ImageView {
    fn from(i: Image) -> Self {
        Self { id: i.id, info: i.info, host_ids: i.hosts }
    }
}

/// Every image some host announced, by name.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<ImageView>), (status = "4XX", body = ErrorBody)))]
async fn list_images(State(state): State<AppState>, _who: Principal) -> ApiResult<axum::Json<Vec<ImageView>>> {
    Ok(axum::Json(images::list(&state.app)?.into_iter().map(ImageView::from).collect()))
}

/// `POST /v1/images` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The slug VMs will name in `image`: a DNS label.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
    /// Absolute path of the source on the host.
    #[schema(pattern = "^/[^\\x00]*$", max_length = 4096)]
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

impl From<Accepted<Importing>> for ImportAccepted {
    fn from(a: Accepted<Importing>) -> Self {
        Self { id: a.resource.id, name: a.resource.name, host_id: a.resource.host, operation: a.operation }
    }
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
    let import = Import { name: req.name, source: req.source, format: req.format, host: req.host_id };
    Ok((StatusCode::ACCEPTED, axum::Json(images::import(&state.app, &who, alloc, import).await?.into())))
}
