//! The gateway: authenticates and validates requests, appends commands to
//! JetStream, and answers reads from its own sled projections of the event
//! stream. It never changes state itself; the worker does, by events.

pub mod auth;
pub mod commands;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod limiter;
pub mod placement;
pub mod projection;
pub mod routes;
pub mod schemas;
pub mod sessions;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::PrometheusHandle;
use projection::Projections;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
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
    pub session_caps: sessions::Caps,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub bus: Bus,
    pub proj: Projections,
    pub cfg: Arc<GatewayConfig>,
    pub metrics: PrometheusHandle,
    pub limiter: Arc<limiter::Limiter>,
    pub sessions: Arc<sessions::Sessions>,
    /// Placements of this gateway take turns (see `placement`).
    pub placing: Arc<tokio::sync::Mutex<()>>,
}

/// The OpenAPI document's root; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "vmplane", description = "Virtual machines on KVM through an event-sourced control plane. Every mutation returns 202 with an operation; reads come from projections of the event stream."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::ErrorBody))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The documented `/v1` routes, and their OpenAPI document, built from one
/// list so the two cannot drift apart.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::vms::router())
        .merge(routes::volumes::router())
        .merge(routes::logs::router())
        .merge(routes::terminal::router())
        .merge(routes::operations::router())
        .merge(routes::events::router())
        .merge(routes::hosts::router())
        .merge(routes::images::router())
        .merge(routes::tenancy::router())
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (api, doc) = api().split_for_parts();
    let doc = Arc::new(doc);
    api.merge(routes::system::router(doc))
        .fallback(routes::system::not_found)
        .method_not_allowed_fallback(routes::system::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::layer))
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
    let follower = tokio::spawn({
        let (proj, bus) = (proj.clone(), bus.clone());
        async move { proj.follow(bus).await }
    });
    let beats = tokio::spawn({
        let (hb, bus) = (proj.heartbeats.clone(), bus.clone());
        async move { hb.follow(bus).await }
    });
    let state = AppState {
        limiter: Arc::new(limiter::Limiter::new(cfg.rate_limit_per_key)),
        sessions: Arc::new(sessions::Sessions::new(cfg.session_caps)),
        placing: Arc::default(),
        bus,
        proj: proj.clone(),
        cfg: Arc::new(cfg),
        metrics,
    };
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let served = axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await;
    follower.abort();
    beats.abort();
    if let Err(e) = proj.flush().await {
        tracing::warn!(error = %e, "projection flush failed");
    }
    served
}
