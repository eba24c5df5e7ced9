//! Template views, indexed per org for listing. A deleted template is
//! forgotten: VMs created from it keep its id in their spec and nothing else.

use super::{Projections, Txn, key};
use vmplane_domain::event::Envelope;
use vmplane_domain::template::{Template, TemplateEvent, evolve};
use vmplane_domain::{OrgId, TemplateId};

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &TemplateEvent) {
    let Ok(id) = env.aggregate.parse::<TemplateId>() else { return };
    let before: Option<Template> = txn.get(&key(&[&"tpl", &id]));
    let Some(after) = evolve(before, id, env.operation, env.time, ev) else { return };
    if after.deleted {
        txn.remove(key(&[&"tpl", &id]));
        txn.remove(key(&[&"tplidx", &after.org, &id]));
    } else {
        txn.put(key(&[&"tplidx", &after.org, &id]), ());
        txn.put(key(&[&"tpl", &id]), after);
    }
}

impl Projections {
    /// One template that is not deleted, whatever org it belongs to (callers check ownership).
    pub fn template(&self, id: TemplateId) -> sled::Result<Option<Template>> {
        self.get(&key(&[&"tpl", &id]))
    }

    /// An org's templates, oldest first: one page and the total.
    pub fn list_templates(&self, org: OrgId, offset: usize, limit: usize) -> sled::Result<(Vec<Template>, usize)> {
        self.page(&key(&[&"tplidx", &org, &""]), |id: TemplateId| self.template(id), |_| true, offset, limit)
    }
}
