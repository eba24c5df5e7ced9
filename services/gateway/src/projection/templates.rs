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
        let mut page = Vec::new();
        let mut total = 0;
        for k in self.scan_keys(&key(&[&"tplidx", &org, &""])) {
            let k = k?;
            let Some(id) = std::str::from_utf8(&k).ok().and_then(|s| s.rsplit('/').next()).and_then(|s| s.parse::<TemplateId>().ok()) else { continue };
            let Some(t) = self.template(id)? else { continue };
            if total >= offset && page.len() < limit {
                page.push(t);
            }
            total += 1;
        }
        Ok((page, total))
    }
}
