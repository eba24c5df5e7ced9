//! The endpoints the deliverer knows, folded from their events in stream
//! order, with the stream sequence each was created at: an endpoint receives
//! the events after its creation, never earlier ones.

use std::collections::HashMap;
use vmplane_domain::WebhookId;
use vmplane_domain::event::{Envelope, Event};
use vmplane_domain::webhook::{self, Webhook, WebhookEvent};

/// An endpoint and where its history stands.
#[derive(Debug, Clone)]
struct Known {
    webhook: Webhook,
    created_seq: u64,
    /// The last of its events folded in: older ones (seen again after a
    /// restart) change nothing.
    last_seq: u64,
}

/// Every live endpoint, by id.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_id: HashMap<WebhookId, Known>,
}

/// Where one event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub webhook: WebhookId,
    pub url: String,
}

impl Endpoints {
    /// Fold an endpoint's event read at `seq` (other events change nothing).
    pub fn apply(&mut self, seq: u64, env: &Envelope) {
        let Event::Webhook(ev) = &env.event else { return };
        if matches!(ev, WebhookEvent::DeliveryAttempted(_)) {
            return;
        }
        let Ok(id) = env.aggregate.parse::<WebhookId>() else { return };
        let known = self.by_id.remove(&id);
        if known.as_ref().is_some_and(|k| seq <= k.last_seq) {
            self.by_id.insert(id, known.expect("checked above"));
            return;
        }
        let created_seq = known.as_ref().map_or(seq, |k| k.created_seq);
        if let Some(webhook) = webhook::evolve(known.map(|k| k.webhook), id, env.time, ev) {
            self.by_id.insert(id, Known { webhook, created_seq, last_seq: seq });
        }
    }

    /// The endpoints that want the event read at `seq`: the enabled endpoints
    /// of its org, created before it, whose filter matches. A `webhook.test`
    /// goes to its own endpoint only; delivery records and retry requests go
    /// nowhere.
    pub fn targets(&self, seq: u64, env: &Envelope) -> Vec<Target> {
        let target = |k: &Known| Target { webhook: k.webhook.id, url: k.webhook.url.clone() };
        match &env.event {
            Event::Webhook(WebhookEvent::DeliveryAttempted(_) | WebhookEvent::DeliveryRetryRequested { .. }) => vec![],
            Event::Webhook(WebhookEvent::Test) => {
                let id = env.aggregate.parse::<WebhookId>().ok();
                id.and_then(|id| self.by_id.get(&id)).filter(|k| k.webhook.enabled).map(target).into_iter().collect()
            }
            ev => self
                .by_id
                .values()
                .filter(|k| {
                    k.webhook.org == env.org
                        && k.webhook.enabled
                        && k.created_seq < seq
                        && webhook::type_matches(&k.webhook.event_types, ev.aggregate_type(), ev.type_name())
                })
                .map(target)
                .collect(),
        }
    }

    /// An endpoint, when it exists and is enabled.
    pub fn enabled(&self, id: WebhookId) -> Option<&Webhook> {
        self.by_id.get(&id).map(|k| &k.webhook).filter(|w| w.enabled)
    }

    /// Stop delivering to an endpoint at once (its `endpoint_disabled` event follows).
    pub fn mark_disabled(&mut self, id: WebhookId) {
        if let Some(k) = self.by_id.get_mut(&id) {
            k.webhook.enabled = false;
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;
    use vmplane_domain::vm::VmEvent;
    use vmplane_domain::{OrgId, VmId};

    fn env(org: OrgId, aggregate: String, event: Event) -> Envelope {
        Envelope::new(org, None, aggregate, None, event, OffsetDateTime::now_utc())
    }

    fn created(org: OrgId, types: &[&str]) -> Event {
        Event::Webhook(WebhookEvent::WebhookEndpointCreated {
            org,
            url: "http://127.0.0.1:9/h".into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            description: None,
        })
    }

    #[test]
    fn events_go_to_the_enabled_matching_endpoints_of_their_org_created_before_them() {
        let (a, b) = (OrgId::new(), OrgId::new());
        let (wa, wb, wf) = (WebhookId::new(), WebhookId::new(), WebhookId::new());
        let mut t = Endpoints::default();
        t.apply(10, &env(a, wa.to_string(), created(a, &[])));
        t.apply(11, &env(b, wb.to_string(), created(b, &[])));
        t.apply(12, &env(a, wf.to_string(), created(a, &["volume.*"])));
        let vm = env(a, VmId::new().to_string(), Event::Vm(VmEvent::Ready));
        assert_eq!(t.targets(13, &vm).iter().map(|x| x.webhook).collect::<Vec<_>>(), vec![wa], "org a, matching filter");
        assert!(t.targets(10, &vm).is_empty(), "not to an endpoint created later");

        let test = env(a, wa.to_string(), Event::Webhook(WebhookEvent::Test));
        assert_eq!(t.targets(14, &test).len(), 1, "a test goes to its endpoint only");
        let off = WebhookEvent::WebhookEndpointUpdated { url: None, event_types: None, description: None, enabled: Some(false) };
        t.apply(15, &env(a, wa.to_string(), Event::Webhook(off)));
        assert!(t.targets(16, &vm).is_empty() && t.targets(16, &test).is_empty(), "disabled");
        // Seen again after a restart: an older event changes nothing.
        t.apply(10, &env(a, wa.to_string(), created(a, &[])));
        assert!(t.enabled(wa).is_none());
        t.apply(17, &env(a, wa.to_string(), Event::Webhook(WebhookEvent::WebhookEndpointDeleted)));
        assert_eq!(t.len(), 2);
    }
}
