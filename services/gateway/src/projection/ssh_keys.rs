//! Stored SSH keys, keyed by org so that listing an org's keys is one scan
//! and looking up another org's key finds nothing. A deleted key is removed.

use super::{Projections, Txn, key};
use vmplane_domain::event::Envelope;
use vmplane_domain::ssh_key::{SshKey, SshKeyEvent, evolve};
use vmplane_domain::{OrgId, SshKeyId};

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &SshKeyEvent) {
    let Ok(id) = env.aggregate.parse::<SshKeyId>() else {
        tracing::error!(aggregate = %env.aggregate, "ssh key event without a key id");
        return;
    };
    let k = key(&[&"sshkey", &env.org, &id]);
    match evolve(txn.get(&k), id, env.time, ev) {
        Some(state) => txn.put(k, state),
        None => txn.remove(k),
    }
}

impl Projections {
    /// A key of `org`; another org's key is not found.
    pub fn ssh_key(&self, org: OrgId, id: SshKeyId) -> sled::Result<Option<SshKey>> {
        self.get(&key(&[&"sshkey", &org, &id]))
    }

    /// Every key of `org`, oldest first.
    pub fn ssh_keys(&self, org: OrgId) -> sled::Result<Vec<SshKey>> {
        self.scan(&key(&[&"sshkey", &org, &""])).collect()
    }
}
