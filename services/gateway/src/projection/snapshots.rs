//! Snapshot views, folded from the events of the VMs they are taken of,
//! indexed per org for listing; a snapshot outlives its VM.

use super::{Projections, Txn, key};
use vmplane_domain::event::Envelope;
use vmplane_domain::snapshot::{self, Snapshot};
use vmplane_domain::vm::{Vm, VmEvent};
use vmplane_domain::{OrgId, SnapshotId, VmId};

/// Fold a VM event into the snapshot it concerns; `vm` is the VM before it.
pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &VmEvent, vm: &Vm) {
    let Some(id) = snapshot::concerned(vm, ev) else { return };
    let k = key(&[&"snap", &id]);
    let before: Option<Snapshot> = txn.get(&k);
    let existed = before.is_some();
    let Some(after) = snapshot::evolve(before, vm, env.operation, env.time, ev) else { return };
    if !existed {
        txn.put(key(&[&"snapidx", &after.org, &id]), ());
    }
    txn.put(k, after);
}

impl Projections {
    /// One snapshot, whatever org it belongs to (callers check ownership).
    pub fn snapshot(&self, id: SnapshotId) -> sled::Result<Option<Snapshot>> {
        self.get(&key(&[&"snap", &id]))
    }

    /// The VMs created from a snapshot that are not deleted: they resume
    /// from its memory file or sit on its disk.
    pub fn snapshot_clones(&self, id: SnapshotId) -> sled::Result<Vec<VmId>> {
        self.indexed(&key(&[&"snapclone", &id, &""])).collect()
    }

    /// An org's snapshots that `keep` keeps, oldest first: one page and the total.
    pub fn list_snapshots(&self, org: OrgId, keep: impl Fn(&Snapshot) -> bool, offset: usize, limit: usize) -> sled::Result<(Vec<Snapshot>, usize)> {
        self.page(&key(&[&"snapidx", &org, &""]), |id: SnapshotId| self.snapshot(id), keep, offset, limit)
    }
}
