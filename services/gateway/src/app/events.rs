//! The event feed: every event the caller may see, from a stream sequence
//! on, then live, read from the event stream itself through an ordered
//! consumer filtered to the caller's org subjects.

use super::sessions::{Kind, revoked};
use super::{App, AppError, AppResult, Principal};
use crate::projection::ordered_events;
use futures::StreamExt;
use futures::stream::BoxStream;
use vmplane_domain::event::Envelope;
use vmplane_domain::subjects;

/// The events after stream sequence `after` (0: from the beginning), each
/// with its sequence, then live, until the caller's key is revoked. The
/// admin acting in no named org sees every org's. Counts as one of the
/// caller's sessions while the stream lives.
pub async fn feed(app: &App, who: &Principal, after: u64) -> AppResult<BoxStream<'static, (u64, Envelope)>> {
    let filter = if who.sees_all_orgs() { subjects::EVENTS_ALL.to_owned() } else { subjects::org_events(who.org) };
    let session = app.sessions.acquire(who.actor, Kind::Events)?;
    app.bus.ensure_connected()?;
    let messages = ordered_events(&app.bus, filter, after.saturating_add(1)).await.map_err(|e| AppError::Unavailable(e.to_string()))?;
    let events = messages.take_while(|m| futures::future::ready(m.is_ok())).filter_map(|m| async move {
        let msg = m.ok()?;
        let seq = msg.info().ok()?.stream_sequence;
        Some((seq, Envelope::decode(&msg.payload).ok()?))
    });
    // The session's place is held while the stream lives.
    let events = events.take_until(revoked(app.clone(), who.actor)).map(move |e| {
        let _held = &session;
        e
    });
    Ok(events.boxed())
}
