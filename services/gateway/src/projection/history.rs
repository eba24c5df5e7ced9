//! VM histories: each VM's events, for `GET /v1/vms/{id}/events`.
//!
//! They live in their own sled tree (large values that only that read
//! wants, kept out of the views' nodes). One key per VM and applied batch:
//! the VM's ULID bytes, then the stream sequence of the batch's first event
//! of that VM (big endian), so keys sort by VM, then stream order. The value
//! holds that batch's events of the VM, each framed as its sequence (8 bytes,
//! big endian), its length (4 bytes, big endian) and its payload.
//!
//! sled's cost is per key written, so a replay (8,192 events a batch)
//! writes a VM's created-to-running events under one key instead of seven.
//! A replay after a crash may group events differently from the run that
//! crashed and leave a group overlapping a later one: reads skip a sequence
//! they have already read.

use std::collections::HashMap;
use ulid::Ulid;
use vmplane_domain::event::Envelope;

/// The history writes of one batch, grouped per VM.
#[derive(Default)]
pub(crate) struct Appended(HashMap<Ulid, (u64, Vec<u8>)>);

impl Appended {
    /// Add event `seq` of VM `id`; a batch adds its events in stream order.
    pub(crate) fn push(&mut self, id: Ulid, seq: u64, payload: &[u8]) {
        let (_, frames) = self.0.entry(id).or_insert_with(|| (seq, Vec::new()));
        frames.extend_from_slice(&seq.to_be_bytes());
        frames.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frames.extend_from_slice(payload);
    }

    /// Write each VM's group under its key. Plain inserts, not an atomic
    /// batch: see [`super::Txn`]'s commit.
    pub(crate) fn write(self, tree: &sled::Tree) -> sled::Result<()> {
        for (id, (first, frames)) in self.0 {
            tree.insert(key(id, first), frames)?;
        }
        Ok(())
    }
}

/// A VM's events in stream order, with their sequences; events that do not
/// decode are left out.
pub(crate) fn read(tree: &sled::Tree, id: Ulid) -> sled::Result<Vec<(u64, Envelope)>> {
    let mut out = Vec::new();
    let mut last = 0;
    for group in tree.scan_prefix(id.to_bytes()) {
        let (_, frames) = group?;
        for (seq, payload) in Frames(&frames) {
            if seq <= last {
                continue;
            }
            last = seq;
            if let Ok(env) = Envelope::decode(payload) {
                out.push((seq, env));
            }
        }
    }
    Ok(out)
}

fn key(id: Ulid, first: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&id.to_bytes());
    k[16..].copy_from_slice(&first.to_be_bytes());
    k
}

/// The events framed in a group's value; a truncated frame ends it.
struct Frames<'a>(&'a [u8]);

impl<'a> Iterator for Frames<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let seq = u64::from_be_bytes(self.0.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(self.0.get(8..12)?.try_into().ok()?) as usize;
        let payload = self.0.get(12..12 + len)?;
        self.0 = &self.0[12 + len..];
        Some((seq, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmplane_domain::event::{self, Event};
    use vmplane_domain::vm::VmEvent;
    use vmplane_domain::{OrgId, VmId};

    fn event(vm: VmId) -> Vec<u8> {
        let env = Envelope::new(OrgId::new(), None, vm.to_string(), None, Event::Vm(VmEvent::Booted), time::OffsetDateTime::now_utc());
        event::encode(&env).unwrap()
    }

    /// Groups written by a run that crashed before its views were committed,
    /// then by a replay that batched the same events differently: each event
    /// is read once, in stream order, and another VM's events never.
    #[test]
    fn events_are_read_once_in_stream_order_whatever_the_grouping() {
        let tree = sled::Config::new().temporary(true).open().unwrap().open_tree("history").unwrap();
        let (a, b) = (VmId::new(), VmId::new());
        // The run that crashed: one batch of 105..=110.
        let mut crashed = Appended::default();
        for seq in [105, 107, 110] {
            crashed.push(a.0, seq, &event(a));
        }
        crashed.push(b.0, 106, &event(b));
        crashed.write(&tree).unwrap();
        // The replay: batches 105..=106 and 107..=112.
        let mut first = Appended::default();
        first.push(a.0, 105, &event(a));
        first.push(b.0, 106, &event(b));
        first.write(&tree).unwrap();
        let mut second = Appended::default();
        for seq in [107, 110, 112] {
            second.push(a.0, seq, &event(a));
        }
        second.write(&tree).unwrap();
        let seqs = |id: VmId| read(&tree, id.0).unwrap().into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(a), [105, 107, 110, 112]);
        assert_eq!(seqs(b), [106]);
        assert_eq!(seqs(VmId::new()), Vec::<u64>::new());
    }

    #[test]
    fn a_truncated_frame_ends_the_group() {
        let mut appended = Appended::default();
        let id = Ulid::new();
        appended.push(id, 1, b"one");
        appended.push(id, 2, b"two");
        let (_, frames) = appended.0.remove(&id).unwrap();
        assert_eq!(Frames(&frames).collect::<Vec<_>>(), [(1, &b"one"[..]), (2, &b"two"[..])]);
        assert_eq!(Frames(&frames[..frames.len() - 1]).collect::<Vec<_>>(), [(1, &b"one"[..])]);
    }
}
