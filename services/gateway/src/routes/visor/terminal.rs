//! `vm.terminal`: a WebSocket bridged to the VM's serial console, both
//! directions (the use case is `app::terminal`).

use super::error::{ErrorEnvelope, VisorError, VisorResult};
use super::extract::{Caller, Input};
use super::vms::VmInput;
use crate::AppState;
use crate::app::terminal;
use crate::routes::shared::{TextFrames, terminal_upgrade};
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::Response;

/// Open a web terminal session: a WebSocket to the serial console of a
/// running VM. Text or binary frames are keystrokes; binary frames from the
/// server are console output.
#[utoipa::path(get, path = "/api/vm.terminal", tag = "vm",
    params(("vmId" = vmplane_domain::VmId, Query), ("organizationId" = Option<vmplane_domain::OrgId>, Query, description = "The org to act in (an addition)")),
    responses((status = 101, description = "WebSocket to the serial console"), (status = "4XX", body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    Input(input): Input<VmInput>,
) -> VisorResult<Response> {
    let (id, who) = input.scoped(&state, caller)?;
    let console = terminal::find(&state.app, &who, id)?;
    let ws = ws.map_err(|r| VisorError::bad_request(format!("vm.terminal is a WebSocket; {}", r.body_text())))?;
    let term = console.open(&state.app).await?;
    Ok(terminal_upgrade(ws, term, TextFrames::Keystrokes))
}
