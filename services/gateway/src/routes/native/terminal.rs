//! `GET /v1/vms/{id}/terminal`: a WebSocket bridged to the guest's serial
//! console, both directions (see `app::terminal`).
//!
//! Two subprotocols: [`SUBPROTOCOL`], bytes both ways (text frames are
//! keystrokes too), and [`SUBPROTOCOL_V2`], selected when offered, where
//! text frames are control messages such as the window size
//! (`routes::shared::Control`) and keystrokes are binary frames only.
//!
//! A browser cannot set `Authorization` on a WebSocket, so the credentials
//! may also come as offered subprotocols, never in the URL: the client offers
//! a terminal subprotocol (the one the server selects) together with
//! `vmplane.bearer.<token, base64url without padding>` and optionally
//! `vmplane.org.<org id>` / `vmplane.project.<project id>`. They are checked
//! exactly as the headers are; the token is never echoed back.

use super::auth::{ORG_HEADER, PROJECT_HEADER};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::PathId;
use crate::AppState;
use crate::app::Principal;
use crate::app::terminal;
use crate::routes::shared::{TextFrames, terminal_upgrade};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use utoipa_axum::{router::OpenApiRouter, routes};
use vmplane_domain::VmId;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(terminal))
}

/// The subprotocol of bytes both ways.
pub const SUBPROTOCOL: &str = "vmplane.terminal";
/// The subprotocol with control messages in text frames (the window size).
pub const SUBPROTOCOL_V2: &str = "vmplane.terminal.v2";
/// Offered subprotocols carrying a browser's credentials, each followed by
/// its value: the bearer token base64url-encoded, the org and project ids as
/// they are.
pub const BEARER_PREFIX: &str = "vmplane.bearer.";
const ORG_PREFIX: &str = "vmplane.org.";
const PROJECT_PREFIX: &str = "vmplane.project.";

/// Credentials a browser offered as subprotocols, moved into the headers the
/// [`Principal`] extractor reads (which runs next and authenticates them as
/// any request's). Only when the request has no `Authorization` of its own
/// and offers a terminal subprotocol; a token that does not decode is a 401.
struct SubprotocolCredentials;

impl<S: Send + Sync> FromRequestParts<S> for SubprotocolCredentials {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(Self);
        }
        let offered: Vec<String> = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .collect();
        if !offered.iter().any(|p| p == SUBPROTOCOL || p == SUBPROTOCOL_V2) {
            return Ok(Self);
        }
        let value = |prefix: &str| offered.iter().find_map(|p| p.strip_prefix(prefix));
        if let Some(encoded) = value(BEARER_PREFIX) {
            let token = URL_SAFE_NO_PAD.decode(encoded).ok().and_then(|t| String::from_utf8(t).ok()).ok_or(ApiError::Unauthorized)?;
            let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ApiError::Unauthorized)?;
            parts.headers.insert(header::AUTHORIZATION, bearer);
        }
        for (prefix, name) in [(ORG_PREFIX, ORG_HEADER), (PROJECT_PREFIX, PROJECT_HEADER)] {
            if let Some(id) = value(prefix).filter(|_| !parts.headers.contains_key(name)) {
                let id = HeaderValue::from_str(id).map_err(|_| ApiError::BadRequest("bad_header", format!("{prefix}: not valid text")))?;
                parts.headers.insert(name, id);
            }
        }
        Ok(Self)
    }
}

/// Open the serial terminal: upgrade to a WebSocket; binary frames are
/// keystrokes, binary frames from the server are console output; text
/// frames are keystrokes or control messages, by subprotocol.
#[utoipa::path(get, path = "/v1/vms/{id}/terminal", tag = "vms", params(("id" = vmplane_domain::VmId, Path, description = "VM id")),
    responses((status = 101, description = "WebSocket to the serial console. Binary frames both ways are console bytes. Subprotocol `vmplane.terminal.v2` (selected when offered): each text frame from the client is one JSON control message, `{\"type\":\"resize\",\"cols\":C,\"rows\":R}` (1 to 1000 each) giving the window size, which the guest's console takes; a frame that is not one closes the socket with code 1007. Subprotocol `vmplane.terminal`, or none: text frames are keystrokes too. A browser, which cannot set `Authorization` on a WebSocket, offers a terminal subprotocol with `vmplane.bearer.<token, base64url without padding>` and optionally `vmplane.org.<id>` / `vmplane.project.<id>` instead."), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn terminal(
    State(state): State<AppState>,
    _browser: SubprotocolCredentials,
    who: Principal,
    PathId(id): PathId<VmId>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let console = terminal::find(&state.app, &who, id)?;
    // In the API's error format, not axum's plain-text rejection.
    let ws = ws.map_err(|r| ApiError::BadRequest("websocket_required", format!("this route is a WebSocket; {}", r.body_text())))?;
    let term = console.open(&state.app).await?;
    let ws = ws.protocols([SUBPROTOCOL_V2, SUBPROTOCOL]);
    let text = if ws.selected_protocol().is_some_and(|p| p == SUBPROTOCOL_V2) { TextFrames::Control } else { TextFrames::Keystrokes };
    Ok(terminal_upgrade(ws, term, text))
}
