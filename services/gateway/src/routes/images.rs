//! `GET /v1/images`: the images the hosts can boot, merged by name.

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiResult, ErrorBody};
use axum::extract::State;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::host::ImageInfo;
use vmplane_domain::{HostId, ImageId};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_images))
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
