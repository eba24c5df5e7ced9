//! The gateway: authenticates and validates requests, appends commands to
//! JetStream, and answers reads from its own sled projections of the event
//! stream. It never changes state itself; the worker does, by events.
//!
//! `app` holds the use cases; `routes` the HTTP dialects that call them;
//! `projection` the read models behind `app`.

pub mod app;
pub mod projection;
pub mod routes;
pub mod schemas;

use app::App;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::PrometheusHandle;
use projection::Projections;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;
use vmplane_bus::Bus;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Gateway settings; the CLI fills them from flags and environment.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The bootstrap admin bearer token; `None` disables admin access.
    pub admin_token: Option<String>,
    /// How long a POST waits for its command's first event to be projected,
    /// so that a read right after the 202 sees the change.
    pub accept_wait: Duration,
    /// Requests per second per API key (0 = unlimited).
    pub rate_limit_per_key: u32,
    /// Concurrent event streams, log follows and terminals per caller.
    pub session_caps: app::sessions::Caps,
    /// Plans, regions and image names (built in, with the data dir's
    /// `catalog.json` over them: the same one the worker reads).
    pub catalog: vmplane_domain::catalog::Catalog,
    /// The Hatch dialect's defaults (`HATCH_DEFAULT_VCPU`, `HATCH_DEFAULT_MEM_MIB`).
    pub hatch: routes::hatch::HatchConfig,
    /// Accept webhook URLs whose host is a loopback, private, link-local or
    /// metadata address (`--webhook-allow-private`; local setups and tests).
    pub webhook_allow_private: bool,
    /// A host whose heartbeats stopped this long ago is offline: nothing is
    /// placed there and its VMs show `host_status: offline` (`--host-offline-after`).
    pub host_offline_after: Duration,
}

/// Shared state of every handler: the use cases, and the metrics registry.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub metrics: PrometheusHandle,
}

/// The whole HTTP application: every dialect's routes and the system routes.
pub fn router(state: AppState) -> Router {
    let (api, doc) = routes::native::split();
    let doc = Arc::new(doc);
    api.merge(routes::system::router(doc))
        .merge(routes::hatch::router())
        .merge(routes::hypeman::router())
        .merge(routes::visor::router())
        .merge(routes::neevcloud::router())
        .merge(routes::marketplace::router())
        .merge(routes::console::router())
        .fallback(routes::system::not_found)
        .method_not_allowed_fallback(routes::system::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::native::idempotency::layer))
        .layer(axum::middleware::from_fn(routes::system::track_metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(routes::system::panic_response))
        .with_state(state)
}

/// Open the projections, follow the event stream and heartbeats, and serve
/// HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    bus: Bus,
    proj: Projections,
    cfg: GatewayConfig,
    metrics: PrometheusHandle,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Err(e) = bus.ensure_topology().await {
        tracing::warn!(error = %e, "could not set up streams yet; serving reads and retrying in the background");
    }
    proj.heartbeats.set_offline_after(cfg.host_offline_after);
    let follower = tokio::spawn({
        let (proj, bus) = (proj.clone(), bus.clone());
        async move { proj.follow(bus).await }
    });
    let beats = tokio::spawn({
        let (hb, bus) = (proj.heartbeats.clone(), bus.clone());
        async move { hb.follow(bus).await }
    });
    let state = AppState { app: App::new(bus, proj.clone(), cfg), metrics };
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    follower.abort();
    beats.abort();
    if let Err(e) = proj.flush().await {
        tracing::warn!(error = %e, "projection flush failed");
    }
    served
}
