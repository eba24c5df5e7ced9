//! Volume views, indexed per org for listing; their disk counts in their host's usage.

use super::{Projections, Txn, key};
use vmplane_domain::event::Envelope;
use vmplane_domain::host::Resources;
use vmplane_domain::volume::{Volume, VolumeEvent, VolumeStatus, evolve};
use vmplane_domain::{OrgId, VolumeId};

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &VolumeEvent) {
    let Ok(id) = env.aggregate.parse::<VolumeId>() else { return };
    let before: Option<Volume> = txn.get(&key(&[&"vol", &id]));
    let existed = before.is_some();
    let was_deleted = before.as_ref().is_some_and(|v| v.status == VolumeStatus::Deleted);
    let Some(after) = evolve(before, id, env.operation, env.time, ev) else { return };
    let usage_key = key(&[&"hostuse", &after.host]);
    let size = Resources { disk_gb: u64::from(after.spec.size_gb), ..Resources::default() };
    if !existed {
        txn.put(key(&[&"volidx", &after.org, &id]), ());
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used += size;
        txn.put(usage_key, used);
    } else if !was_deleted && after.status == VolumeStatus::Deleted {
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used -= size;
        txn.put(usage_key, used);
    }
    txn.put(key(&[&"vol", &id]), after);
}

impl Projections {
    /// One volume, whatever org it belongs to (callers check ownership).
    pub fn volume(&self, id: VolumeId) -> sled::Result<Option<Volume>> {
        self.get(&key(&[&"vol", &id]))
    }

    /// Whether the volume is projected, without reading it.
    pub fn has_volume(&self, id: VolumeId) -> sled::Result<bool> {
        self.tree.contains_key(key(&[&"vol", &id]))
    }

    /// An org's volumes that are not deleted and that `keep` keeps, oldest
    /// first: one page and the total.
    pub fn list_volumes(&self, org: OrgId, keep: impl Fn(&Volume) -> bool, offset: usize, limit: usize) -> sled::Result<(Vec<Volume>, usize)> {
        let live = |v: &Volume| v.status != VolumeStatus::Deleted && keep(v);
        self.page(&key(&[&"volidx", &org, &""]), |id: VolumeId| self.volume(id), live, offset, limit)
    }
}
