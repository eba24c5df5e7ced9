//! The application layer: every use case of the gateway as a plain function
//! over domain input and output, shared by every HTTP dialect.
//!
//! A use case takes the caller ([`Principal`]), domain input and, when it
//! appends a command, the request's [`Allocation`]; it answers domain values
//! (or small views of them, free of any wire format) or one [`AppError`].
//! Everything behind it is reached only from here: NATS, the projections,
//! placement, accepting a command and waiting for it (`accept`), session
//! caps, idempotency records. A dialect parses its request into these inputs
//! and renders these outputs and errors in its own shape.

mod accept;
pub mod caller;
pub mod catalog;
mod error;
pub mod events;
pub mod health;
pub mod hosts;
pub mod idempotency;
pub mod images;
mod limiter;
pub mod logs;
pub mod operations;
mod placement;
pub mod sessions;
pub mod snapshots;
pub mod ssh_keys;
pub mod templates;
pub mod tenancy;
pub mod terminal;
pub mod vms;
pub mod volumes;
pub mod webhooks;

pub use crate::projection::operations::{OpError, OpStatus, Operation};
pub use caller::{Actor, Principal};
pub use error::{AppError, AppResult};
pub use idempotency::Allocation;

use crate::GatewayConfig;
use crate::projection::Projections;
use std::sync::Arc;
use vmplane_bus::Bus;

/// What the use cases run against; cheap to clone.
#[derive(Clone)]
pub struct App {
    bus: Bus,
    proj: Projections,
    cfg: Arc<GatewayConfig>,
    limiter: Arc<limiter::Limiter>,
    sessions: Arc<sessions::Sessions>,
    /// Placements of this gateway take turns over the ledgers it keeps (see `placement`).
    placing: Arc<tokio::sync::Mutex<placement::Ledgers>>,
}

impl App {
    /// The gateway's settings, read once at start; dialects read their own defaults here.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    pub fn new(bus: Bus, proj: Projections, cfg: GatewayConfig) -> Self {
        Self {
            limiter: Arc::new(limiter::Limiter::new(cfg.rate_limit_per_key)),
            sessions: Arc::new(sessions::Sessions::new(cfg.session_caps)),
            placing: Arc::default(),
            bus,
            proj,
            cfg: Arc::new(cfg),
        }
    }
}

/// A command accepted: the resource as the command leaves it (before the
/// worker carries it out), and the command's operation.
#[derive(Debug, Clone)]
pub struct Accepted<T> {
    pub resource: T,
    pub operation: Operation,
}

/// Which part of a list to read: skip `offset` items, take at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub offset: usize,
    pub limit: usize,
}

/// One part of a list, and how long the whole list is.
#[derive(Debug, Clone)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: usize,
}
