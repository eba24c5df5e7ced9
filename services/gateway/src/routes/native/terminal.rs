//! `GET /v1/vms/{id}/terminal`: a WebSocket bridged to the guest's serial
//! console, both directions (see `app::terminal`).

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::PathId;
use crate::AppState;
use crate::app::Principal;
use crate::app::terminal;
use crate::routes::shared::terminal_upgrade;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::Response;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::VmId;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(terminal))
}

/// Open the serial terminal: upgrade to a WebSocket; binary or text frames
/// are keystrokes, binary frames from the server are console output.
#[utoipa::path(get, path = "/v1/vms/{id}/terminal", tag = "vms", params(("id" = String, Path, description = "VM id")),
    responses((status = 101, description = "WebSocket to the serial console"), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn terminal(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId<VmId>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let console = terminal::find(&state.app, &who, id)?;
    // In the API's error format, not axum's plain-text rejection.
    let ws = ws.map_err(|r| ApiError::BadRequest("websocket_required", format!("this route is a WebSocket; {}", r.body_text())))?;
    let term = console.open(&state.app).await?;
    Ok(terminal_upgrade(ws, term))
}
