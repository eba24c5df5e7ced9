//! Choosing a host for a new VM or volume: among the online hosts that can
//! take it, the one with the most room left by the given measure.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use vmplane_domain::HostId;
use vmplane_domain::host::{Host, Resources};

/// Why a host cannot take the resource, worst first when reporting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    /// Not enough free resources.
    NoRoom,
    /// A requested host port is forwarded to another VM there.
    PortTaken(u16),
    /// Bridge networking was asked for and the host has no bridge.
    NoBridge,
    /// The host does not have the image.
    NoImage(String),
}

/// Pick a host. `check` rules out hosts for reasons of the caller's own;
/// `room` measures what a host has left (higher is better).
pub fn place(
    state: &AppState,
    want: &Resources,
    check: impl Fn(&Host) -> ApiResult<Option<Unfit>>,
    room: impl Fn(&Host, &Resources) -> u64,
) -> ApiResult<HostId> {
    let mut online = false;
    let mut reason: Option<Unfit> = None;
    let mut best: Option<(u64, HostId)> = None;
    for host in state.proj.hosts()? {
        if !state.proj.heartbeats.is_online(host.id) {
            continue;
        }
        online = true;
        let used = state.proj.host_usage(host.id)?;
        let unfit = match check(&host)? {
            Some(u) => Some(u),
            None if !Resources::fits(&host.info, &used, want) => Some(Unfit::NoRoom),
            None => None,
        };
        match unfit {
            // Report the reason of the host that came closest.
            Some(u) => reason = Some(reason.map_or(u.clone(), |r| r.min(u))),
            None => {
                let left = room(&host, &used);
                if best.is_none_or(|(l, _)| left > l) {
                    best = Some((left, host.id));
                }
            }
        }
    }
    match (best, reason) {
        (Some((_, id)), _) => Ok(id),
        _ if !online => Err(ApiError::Unavailable("no worker host is online".into())),
        (None, Some(Unfit::NoImage(image))) => {
            Err(ApiError::Unprocessable("unknown_image", format!("no online host has the image `{image}`; see GET /v1/images")))
        }
        (None, Some(Unfit::NoBridge)) => {
            Err(ApiError::Unprocessable("unsupported", "no online host has a bridge for bridge networking (worker --bridge)".into()))
        }
        (None, Some(Unfit::PortTaken(p))) => Err(ApiError::Conflict("port_conflict", format!("host port {p} is already forwarded to another vm"))),
        (None, _) => Err(ApiError::Conflict("insufficient_capacity", "no online host has room for this".into())),
    }
}
