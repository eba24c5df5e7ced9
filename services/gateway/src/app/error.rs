//! The one error of the use cases. Domain, bus and store errors become an
//! `AppError` here, once; each dialect maps it to its own status and body,
//! once. `code`s are machine-readable reasons shared with failed operations
//! (`validation_failed`, `invalid_state`, `port_conflict`, ...).

use vmplane_bus::BusError;
use vmplane_domain::spec::SpecError;
use vmplane_domain::vm::DecideError;
use vmplane_domain::volume::VolumeError;

/// Everything a use case can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The input breaks a rule: it will never work as given.
    #[error("{1}")]
    Invalid(&'static str, String),
    /// No such thing, or not the caller's to see (another org's VM).
    #[error("{0} not found")]
    NotFound(String),
    /// The current state refuses it; it may work later or elsewhere.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No valid credential.
    #[error("missing or invalid credential")]
    Unauthenticated,
    /// The caller's API key is over its request rate.
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    /// The caller has as many streams or terminals open as it may.
    #[error("{0}")]
    TooManySessions(String),
    /// NATS or a host cannot be reached now; retrying may work.
    #[error("{0}")]
    Unavailable(String),
    /// A bug: logged by whoever renders it, never expected.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// The same error, its message followed by `more`: what else a request
    /// refused part-way did (a fork whose snapshot was already accepted).
    pub fn adding(self, more: &str) -> Self {
        match self {
            Self::Invalid(code, m) => Self::Invalid(code, format!("{m}; {more}")),
            Self::Conflict(code, m) => Self::Conflict(code, format!("{m}; {more}")),
            Self::Forbidden(m) => Self::Forbidden(format!("{m}; {more}")),
            Self::TooManySessions(m) => Self::TooManySessions(format!("{m}; {more}")),
            Self::Unavailable(m) => Self::Unavailable(format!("{m}; {more}")),
            other @ (Self::NotFound(_) | Self::Unauthenticated | Self::RateLimited { .. } | Self::Internal(_)) => other,
        }
    }
}

/// Shorthand for use case results.
pub type AppResult<T> = Result<T, AppError>;

impl From<BusError> for AppError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Unavailable(m) => Self::Unavailable(format!("event store unavailable, retry shortly: {m}")),
            BusError::Conflict { .. } => Self::Conflict("conflict", "concurrent modification; retry".into()),
            BusError::Codec(e) => Self::Internal(e.to_string()),
            BusError::Other(m) => Self::Unavailable(m),
        }
    }
}

impl From<SpecError> for AppError {
    fn from(e: SpecError) -> Self {
        Self::Invalid("validation_failed", e.to_string())
    }
}

impl From<DecideError> for AppError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::NotFound => Self::NotFound("vm".into()),
            DecideError::MemoryOutOfRange(m) => Self::Invalid("memory_out_of_range", m),
            other => Self::Conflict(other.code(), other.to_string()),
        }
    }
}

impl From<VolumeError> for AppError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::NotFound => Self::NotFound("volume".into()),
            other => Self::Conflict(other.code(), other.to_string()),
        }
    }
}

impl From<sled::Error> for AppError {
    fn from(e: sled::Error) -> Self {
        Self::Internal(format!("projection store: {e}"))
    }
}
