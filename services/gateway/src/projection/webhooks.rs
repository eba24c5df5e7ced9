//! Webhook endpoints, keyed by org so that listing an org's endpoints is one
//! scan and looking up another org's endpoint finds nothing. A deleted
//! endpoint is removed. Secrets are not here (see `app::webhooks`).
//!
//! **Deliveries.** Each `webhook.delivery_attempted` event (appended by the
//! deliverer on the endpoint's delivery subject, with the endpoint's org and
//! id in its envelope) is folded into the record of its delivery, keyed
//! `whdlv/<org>/<webhook>/<delivery>`: one record per event delivered to the
//! endpoint, with its last [`MAX_ATTEMPTS_KEPT`] attempts. A delivery id is
//! `dlv_` + the delivered event's ulid, so the keys sort by the time of the
//! event, and an endpoint's deliveries are listed newest event first.
//!
//! A deleted endpoint's deliveries go with it: its deletion removes them,
//! and an attempt the deliverer appends after the deletion (one in flight)
//! is not kept. Attempts do not change the endpoint's own record; an
//! `endpoint_disabled` event does (`enabled: false`, `disabled_reason`).

use super::{Projections, Txn, key};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use vmplane_domain::delivery::{AttemptOutcome, DeliveryAttempt};
use vmplane_domain::event::Envelope;
use vmplane_domain::webhook::{Webhook, WebhookEvent, evolve};
use vmplane_domain::{DeliveryId, EventId, OrgId, WebhookId};

/// How many attempts a delivery record keeps (the last ones).
pub const MAX_ATTEMPTS_KEPT: usize = 50;

/// One event's delivery to one endpoint, folded from its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `dlv_` + the delivered event's ulid.
    pub id: DeliveryId,
    pub webhook: WebhookId,
    /// The event delivered (the `webhook-id` header).
    pub event_id: EventId,
    /// Its stream sequence.
    pub event_seq: u64,
    /// Its qualified type (`vm.running`).
    pub event_type: String,
    /// The aggregate whose queue it is in.
    pub aggregate: String,
    /// The outcome of the last attempt.
    pub status: AttemptOutcome,
    /// The last [`MAX_ATTEMPTS_KEPT`] attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// When the next automatic attempt is due (the last attempt's).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_retry_at: Option<OffsetDateTime>,
    /// The first attempt's time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The last attempt's time.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub attempted_at: OffsetDateTime,
    /// The HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// Why there was no usable answer.
    pub error: Option<String>,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_retry_at: Option<OffsetDateTime>,
    /// Asked for with `POST …/deliveries/{id}/retry`.
    pub manual: bool,
}

impl From<&DeliveryAttempt> for Attempt {
    fn from(a: &DeliveryAttempt) -> Self {
        Self {
            attempt: a.attempt,
            attempted_at: a.attempted_at,
            status: a.status,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
            outcome: a.outcome,
            next_retry_at: a.next_retry_at,
            manual: a.manual,
        }
    }
}

/// Fold one attempt into its delivery's record (`None`: its first attempt).
/// An attempt recorded twice (the deliverer appends at least once) counts once.
pub fn fold_attempt(record: Option<Delivery>, webhook: WebhookId, a: &DeliveryAttempt) -> Delivery {
    let attempt = Attempt::from(a);
    let mut d = record.unwrap_or_else(|| Delivery {
        id: a.delivery_id,
        webhook,
        event_id: a.event_id,
        event_seq: a.event_seq,
        event_type: a.event_type.clone(),
        aggregate: a.aggregate.clone(),
        status: a.outcome,
        attempts: Vec::new(),
        next_retry_at: None,
        created_at: a.attempted_at,
        updated_at: a.attempted_at,
    });
    if d.attempts.contains(&attempt) {
        return d;
    }
    d.status = a.outcome;
    d.next_retry_at = a.next_retry_at;
    d.updated_at = a.attempted_at;
    d.attempts.push(attempt);
    if d.attempts.len() > MAX_ATTEMPTS_KEPT {
        d.attempts.drain(..d.attempts.len() - MAX_ATTEMPTS_KEPT);
    }
    d
}

fn endpoint_key(org: OrgId, id: WebhookId) -> Vec<u8> {
    key(&[&"wh", &org, &id])
}

fn delivery_key(org: OrgId, id: WebhookId, delivery: DeliveryId) -> Vec<u8> {
    key(&[&"whdlv", &org, &id, &delivery])
}

fn deliveries_prefix(org: OrgId, id: WebhookId) -> Vec<u8> {
    key(&[&"whdlv", &org, &id, &""])
}

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &WebhookEvent) {
    let Ok(id) = env.aggregate.parse::<WebhookId>() else {
        tracing::error!(aggregate = %env.aggregate, "webhook event without an endpoint id");
        return;
    };
    let k = endpoint_key(env.org, id);
    let endpoint: Option<Webhook> = txn.get(&k);
    if let WebhookEvent::DeliveryAttempted(a) = ev {
        // Attempts of an endpoint that is gone are not kept.
        if endpoint.is_some() {
            let dk = delivery_key(env.org, id, a.delivery_id);
            let folded = fold_attempt(txn.get(&dk), id, a);
            txn.put(dk, folded);
        }
        return;
    }
    match evolve(endpoint, id, env.time, ev) {
        Some(state) => txn.put(k, state),
        None => {
            txn.remove(k);
            txn.remove_prefix(&deliveries_prefix(env.org, id));
        }
    }
}

impl Projections {
    /// An endpoint of `org`; another org's endpoint is not found.
    pub fn webhook(&self, org: OrgId, id: WebhookId) -> sled::Result<Option<Webhook>> {
        self.get(&endpoint_key(org, id))
    }

    /// Every endpoint of `org`, oldest first.
    pub fn webhooks(&self, org: OrgId) -> sled::Result<Vec<Webhook>> {
        self.scan(&key(&[&"wh", &org, &""])).collect()
    }

    /// A delivery to an endpoint of `org`; another org's is not found.
    pub fn webhook_delivery(&self, org: OrgId, id: WebhookId, delivery: DeliveryId) -> sled::Result<Option<Delivery>> {
        self.get(&delivery_key(org, id, delivery))
    }

    /// An endpoint's deliveries, newest event first, whose last attempt
    /// ended with `status` (any, without one): the `limit` after `offset`,
    /// and how many there are.
    pub fn webhook_deliveries(
        &self,
        org: OrgId,
        id: WebhookId,
        status: Option<AttemptOutcome>,
        offset: usize,
        limit: usize,
    ) -> sled::Result<(Vec<Delivery>, usize)> {
        let mut page = Vec::new();
        let mut total = 0;
        for entry in self.tree.scan_prefix(deliveries_prefix(org, id)).values().rev() {
            let Ok(d) = vmplane_domain::event::decode::<Delivery>(&entry?) else { continue };
            if status.is_some_and(|s| s != d.status) {
                continue;
            }
            if total >= offset && page.len() < limit {
                page.push(d);
            }
            total += 1;
        }
        Ok((page, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmplane_domain::event::Event;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000) + time::Duration::seconds(secs)
    }

    fn envelope(org: OrgId, id: WebhookId, ev: WebhookEvent, time: OffsetDateTime) -> Vec<u8> {
        vmplane_domain::event::encode(&Envelope::new(org, None, id.to_string(), None, Event::Webhook(ev), time)).expect("encodes")
    }

    fn attempt(event: EventId, seq: u64, n: u32, secs: i64, status: Option<u16>, outcome: AttemptOutcome, next: Option<i64>) -> WebhookEvent {
        WebhookEvent::DeliveryAttempted(Box::new(DeliveryAttempt {
            delivery_id: DeliveryId::of(event),
            event_id: event,
            event_seq: seq,
            event_type: "vm.running".into(),
            aggregate: "vm_01".into(),
            attempt: n,
            attempted_at: at(secs),
            status,
            error: status.is_none().then(|| "connection refused".to_owned()),
            duration_ms: 12,
            outcome,
            next_retry_at: next.map(at),
            manual: false,
        }))
    }

    #[test]
    fn attempts_fold_into_deliveries_listed_newest_first() {
        let dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        let proj = Projections::open(&dir).expect("a projection store");
        let (org, other_org, id) = (OrgId::new(), OrgId::new(), WebhookId::new());
        let mut seq = 0;
        let mut apply = |ev: WebhookEvent, secs: i64| {
            seq += 1;
            proj.apply(seq, &envelope(org, id, ev, at(secs))).expect("applied");
        };
        let created = WebhookEvent::WebhookEndpointCreated { org, url: "https://example.com/h".into(), event_types: vec![], description: None };
        apply(created, 0);
        let endpoint = proj.webhook(org, id).unwrap().expect("the endpoint");

        // Two events, the older first; the first fails once, then is delivered.
        let (older, newer) = (EventId::new(), EventId::new());
        let (first, second) = if DeliveryId::of(older).to_string() < DeliveryId::of(newer).to_string() { (older, newer) } else { (newer, older) };
        apply(attempt(first, 40, 1, 10, Some(500), AttemptOutcome::Retrying, Some(15)), 10);
        apply(attempt(second, 41, 1, 11, Some(204), AttemptOutcome::Delivered, None), 11);
        let d = proj.webhook_delivery(org, id, DeliveryId::of(first)).unwrap().expect("the delivery");
        assert_eq!((d.status, d.next_retry_at, d.attempts.len()), (AttemptOutcome::Retrying, Some(at(15)), 1));
        apply(attempt(first, 40, 2, 15, Some(200), AttemptOutcome::Delivered, None), 15);
        // The same attempt appended again (at least once) counts once.
        apply(attempt(first, 40, 2, 15, Some(200), AttemptOutcome::Delivered, None), 15);

        let d = proj.webhook_delivery(org, id, DeliveryId::of(first)).unwrap().expect("the delivery");
        assert_eq!((d.id, d.webhook, d.event_id, d.event_seq), (DeliveryId::of(first), id, first, 40));
        assert_eq!((d.event_type.as_str(), d.aggregate.as_str()), ("vm.running", "vm_01"));
        assert_eq!((d.status, d.next_retry_at, d.created_at, d.updated_at), (AttemptOutcome::Delivered, None, at(10), at(15)));
        let seen: Vec<_> = d.attempts.iter().map(|a| (a.attempt, a.status, a.outcome, a.next_retry_at, a.error.is_none())).collect();
        assert_eq!(seen, vec![(1, Some(500), AttemptOutcome::Retrying, Some(at(15)), true), (2, Some(200), AttemptOutcome::Delivered, None, true)]);
        assert_eq!(proj.webhook(org, id).unwrap(), Some(endpoint.clone()), "attempts leave the endpoint as it was");

        // Newest event first; filtered by the last attempt's outcome; paged.
        let ids = |v: (Vec<Delivery>, usize)| (v.0.into_iter().map(|d| d.event_id).collect::<Vec<_>>(), v.1);
        assert_eq!(ids(proj.webhook_deliveries(org, id, None, 0, 10).unwrap()), (vec![second, first], 2));
        assert_eq!(ids(proj.webhook_deliveries(org, id, None, 1, 10).unwrap()), (vec![first], 2));
        assert_eq!(ids(proj.webhook_deliveries(org, id, Some(AttemptOutcome::Delivered), 0, 1).unwrap()), (vec![second], 2));
        assert_eq!(ids(proj.webhook_deliveries(org, id, Some(AttemptOutcome::Failed), 0, 10).unwrap()), (vec![], 0));
        assert_eq!(proj.webhook_delivery(other_org, id, DeliveryId::of(first)).unwrap(), None, "another org's");
        assert_eq!(proj.webhook_deliveries(other_org, id, None, 0, 10).unwrap().1, 0);

        // At most the last 50 attempts are kept.
        for n in 3..=60 {
            apply(attempt(second, 41, n, 100 + i64::from(n), Some(503), AttemptOutcome::Retrying, Some(1000)), 100 + i64::from(n));
        }
        let d = proj.webhook_delivery(org, id, DeliveryId::of(second)).unwrap().unwrap();
        assert_eq!((d.attempts.len(), d.attempts[0].attempt, d.attempts[49].attempt, d.status), (50, 11, 60, AttemptOutcome::Retrying));
        assert_eq!(d.created_at, at(11), "the first attempt's time stays");

        // Disabled by deliveries: shown on the endpoint; enabled again by its owner.
        apply(WebhookEvent::EndpointDisabled { reason: vmplane_domain::delivery::DisableReason::Gone }, 200);
        let w = proj.webhook(org, id).unwrap().unwrap();
        assert_eq!((w.enabled, w.disabled_reason), (false, Some(vmplane_domain::delivery::DisableReason::Gone)));
        apply(WebhookEvent::WebhookEndpointUpdated { url: None, event_types: None, description: None, enabled: Some(true) }, 201);
        let w = proj.webhook(org, id).unwrap().unwrap();
        assert_eq!((w.enabled, w.disabled_reason), (true, None));

        // A deleted endpoint's deliveries go with it, and later attempts are not kept.
        apply(WebhookEvent::WebhookEndpointDeleted, 300);
        assert_eq!(proj.webhook_deliveries(org, id, None, 0, 10).unwrap().1, 0);
        apply(attempt(first, 40, 3, 301, Some(200), AttemptOutcome::Delivered, None), 301);
        assert_eq!(proj.webhook_delivery(org, id, DeliveryId::of(first)).unwrap(), None);
        drop(proj);
        let _ = std::fs::remove_dir_all(dir);
    }
}
