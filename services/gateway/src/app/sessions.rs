//! Caps on a caller's concurrent long-lived sessions: event feeds, log
//! follows and terminals. Each holds a connection and a NATS consumer or
//! subscription for as long as the client likes, so one key must not open
//! them without bound; past its cap a caller is refused. A session also ends
//! when its API key is revoked.

use super::{Actor, App, AppError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What kind of session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// The event feed.
    Events,
    /// Following a VM's console log.
    LogFollow,
    /// A VM's serial terminal.
    Terminal,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Self::Events => "event streams",
            Self::LogFollow => "log follows",
            Self::Terminal => "terminal sessions",
        }
    }
}

/// Most concurrent sessions of each kind per caller (the admin token counts as one caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub events: usize,
    pub log_follows: usize,
    pub terminals: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self { events: 16, log_follows: 16, terminals: 4 }
    }
}

impl Caps {
    fn of(&self, kind: Kind) -> usize {
        match kind {
            Kind::Events => self.events,
            Kind::LogFollow => self.log_follows,
            Kind::Terminal => self.terminals,
        }
    }
}

/// Open sessions per caller and kind.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    caps: Caps,
    open: Mutex<HashMap<(Actor, Kind), usize>>,
}

/// One open session; dropping it (the stream or socket ends) frees its place.
#[derive(Debug)]
pub(super) struct Guard {
    sessions: Arc<Sessions>,
    key: (Actor, Kind),
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut open = self.sessions.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Sessions {
    pub(super) fn new(caps: Caps) -> Self {
        Self { caps, open: Mutex::default() }
    }

    /// Take a place for a session, unless the caller has its cap open.
    pub(super) fn acquire(self: &Arc<Self>, actor: Actor, kind: Kind) -> Result<Guard, AppError> {
        let cap = self.caps.of(kind);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry((actor, kind)).or_insert(0);
        if *n >= cap {
            return Err(AppError::TooManySessions(format!("at most {cap} concurrent {} per caller; close one first", kind.describe())));
        }
        *n += 1;
        Ok(Guard { sessions: self.clone(), key: (actor, kind) })
    }
}

/// Resolves when the caller's API key is revoked (never for the admin).
pub(super) async fn revoked(app: App, actor: Actor) {
    let Actor::Key(id) = actor else { return std::future::pending().await };
    let mut applied = app.proj.subscribe();
    loop {
        if matches!(app.proj.api_key(id), Ok(None)) {
            return;
        }
        if applied.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmplane_domain::ApiKeyId;

    #[test]
    fn caps_are_per_caller_and_kind_and_freed_on_drop() {
        let s = Arc::new(Sessions::new(Caps { events: 2, log_follows: 1, terminals: 1 }));
        let (a, b) = (Actor::Key(ApiKeyId::new()), Actor::Key(ApiKeyId::new()));
        let one = s.acquire(a, Kind::Events).unwrap();
        let _two = s.acquire(a, Kind::Events).unwrap();
        assert!(matches!(s.acquire(a, Kind::Events), Err(AppError::TooManySessions(_))));
        let _other_kind = s.acquire(a, Kind::Terminal).unwrap();
        let _other_caller = s.acquire(b, Kind::Events).unwrap();
        drop(one);
        let _again = s.acquire(a, Kind::Events).unwrap();
        assert!(s.acquire(Actor::Admin, Kind::LogFollow).is_ok());
    }
}
