//! Webhook endpoints, keyed by org so that listing an org's endpoints is one
//! scan and looking up another org's endpoint finds nothing. A deleted
//! endpoint is removed. Secrets are not here (see `app::webhooks`).

use super::{Projections, Txn, key};
use vmplane_domain::event::Envelope;
use vmplane_domain::webhook::{Webhook, WebhookEvent, evolve};
use vmplane_domain::{OrgId, WebhookId};

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &WebhookEvent) {
    let Ok(id) = env.aggregate.parse::<WebhookId>() else {
        tracing::error!(aggregate = %env.aggregate, "webhook event without an endpoint id");
        return;
    };
    let k = key(&[&"wh", &env.org, &id]);
    match evolve(txn.get(&k), id, env.time, ev) {
        Some(state) => txn.put(k, &state),
        None => txn.remove(k),
    }
}

impl Projections {
    /// An endpoint of `org`; another org's endpoint is not found.
    pub fn webhook(&self, org: OrgId, id: WebhookId) -> sled::Result<Option<Webhook>> {
        self.get(&key(&[&"wh", &org, &id]))
    }

    /// Every endpoint of `org`, oldest first.
    pub fn webhooks(&self, org: OrgId) -> sled::Result<Vec<Webhook>> {
        self.scan(&key(&[&"wh", &org, &""])).collect()
    }
}
