//! Orgs, projects and API keys (hashes only; a revoked key is removed). The
//! `default` org and project are synthesised, never stored.

use super::{Projections, Txn, key};
use vmplane_domain::event::Envelope;
use vmplane_domain::tenancy::{ApiKey, Org, Project, TenancyEvent, default_org, default_project};
use vmplane_domain::{ApiKeyId, OrgId, ProjectId};

pub(super) fn apply(txn: &mut Txn, env: &Envelope, ev: &TenancyEvent) {
    let at = env.time;
    match ev {
        TenancyEvent::OrgCreated { id, name, placement_strategy } => {
            txn.put(key(&[&"org", id]), Org { id: *id, name: name.clone(), placement_strategy: *placement_strategy, created_at: at })
        }
        TenancyEvent::ProjectCreated { id, org, name } => txn.put(key(&[&"prj", org, id]), Project { id: *id, org: *org, name: name.clone(), created_at: at }),
        TenancyEvent::ApiKeyCreated { id, org, name, secret_sha256 } => {
            txn.put(key(&[&"key", id]), ApiKey { id: *id, org: *org, name: name.clone(), secret_sha256: secret_sha256.clone(), created_at: at })
        }
        // A revoked key is forgotten: authentication finds nothing to match.
        TenancyEvent::ApiKeyRevoked { id, .. } => txn.remove(key(&[&"key", id])),
        TenancyEvent::OrgPlacementStrategySet { id, placement_strategy } => {
            let k = key(&[&"org", id]);
            // The default org is stored only once it changes.
            let stored = txn.get::<Org>(&k).or_else(|| (*id == OrgId::DEFAULT).then(default_org));
            if let Some(org) = stored {
                txn.put(k, Org { placement_strategy: *placement_strategy, ..org });
            }
        }
    }
}

impl Projections {
    /// An org, including the synthesised `default`.
    pub fn org(&self, id: OrgId) -> sled::Result<Option<Org>> {
        let stored = self.get(&key(&[&"org", &id]))?;
        Ok(stored.or_else(|| (id == OrgId::DEFAULT).then(default_org)))
    }

    /// Every org, `default` first.
    pub fn orgs(&self) -> sled::Result<Vec<Org>> {
        let others = self.scan::<Org>(b"org/").filter(|o| o.as_ref().map_or(true, |o| o.id != OrgId::DEFAULT));
        std::iter::once(self.org(OrgId::DEFAULT).map(|o| o.unwrap_or_else(default_org))).chain(others).collect()
    }

    /// A project of an org, including the synthesised `default`.
    pub fn project(&self, org: OrgId, id: ProjectId) -> sled::Result<Option<Project>> {
        if id == ProjectId::DEFAULT {
            return Ok(self.org(org)?.map(|_| default_project(org)));
        }
        self.get(&key(&[&"prj", &org, &id]))
    }

    /// Every project of an org, `default` first.
    pub fn projects(&self, org: OrgId) -> sled::Result<Vec<Project>> {
        std::iter::once(Ok(default_project(org))).chain(self.scan(&key(&[&"prj", &org, &""]))).collect()
    }

    /// An API key record.
    pub fn api_key(&self, id: ApiKeyId) -> sled::Result<Option<ApiKey>> {
        self.get(&key(&[&"key", &id]))
    }

    /// Every API key of an org.
    pub fn api_keys(&self, org: OrgId) -> sled::Result<Vec<ApiKey>> {
        self.scan::<ApiKey>(b"key/").filter(|k| k.as_ref().map_or(true, |k| k.org == org)).collect()
    }
}
