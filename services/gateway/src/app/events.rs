//! The event feed: every event the caller may see, from a stream sequence
//! on, then live, read from the event stream itself through an ordered
//! consumer filtered to the caller's org subjects (or to one VM's subject),
//! optionally narrowed to event types (`vmplane_domain::event_filter`).

use super::sessions::{Kind, revoked};
use super::{App, AppError, AppResult, Principal, vms};
use crate::projection::ordered_events;
use futures::StreamExt;
use futures::stream::BoxStream;
use vmplane_domain::event::Envelope;
use vmplane_domain::event_filter::TypeFilter;
use vmplane_domain::ids::VmId;
use vmplane_domain::subjects;

/// What a feed carries.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Start after this stream sequence (0: from the beginning).
    pub after: u64,
    /// Only events of these types (all when `None`).
    pub types: Option<TypeFilter>,
    /// Only the events of this VM, which the caller must be able to see
    /// (else not found, as another org's VM is).
    pub vm: Option<VmId>,
}

/// The events after stream sequence `filter.after`, each with its sequence,
/// then live, until the caller's key is revoked. The admin acting in no
/// named org sees every org's. Counts as one of the caller's sessions while
/// the stream lives.
pub async fn feed(app: &App, who: &Principal, filter: FeedFilter) -> AppResult<BoxStream<'static, (u64, Envelope)>> {
    let subject = match filter.vm {
        Some(id) => {
            let vm = if who.sees_all_orgs() { app.proj.vm(id)?.ok_or_else(|| AppError::NotFound(format!("vm {id}")))? } else { vms::get(app, who, id)? };
            subjects::vm_events(vm.org, id)
        }
        None if who.sees_all_orgs() => subjects::EVENTS_ALL.to_owned(),
        None => subjects::org_events(who.org),
    };
    let session = app.sessions.acquire(who.actor, Kind::Events)?;
    app.bus.ensure_connected()?;
    let messages = ordered_events(&app.bus, subject, filter.after.saturating_add(1)).await.map_err(|e| AppError::Unavailable(e.to_string()))?;
    let types = filter.types;
    let events = messages.take_while(|m| futures::future::ready(m.is_ok())).filter_map(move |m| {
        let types = types.clone();
        async move {
            let msg = m.ok()?;
            let seq = msg.info().ok()?.stream_sequence;
            let env = Envelope::decode(&msg.payload).ok()?;
            types.as_ref().is_none_or(|t| t.matches(&env.event)).then_some((seq, env))
        }
    });
    // The session's place is held while the stream lives.
    let events = events.take_until(revoked(app.clone(), who.actor)).map(move |e| {
        let _held = &session;
        e
    });
    Ok(events.boxed())
}
