//! VM views: the folded state per VM, an index per org, listing indexes
//! with their counts, each VM's event history, and per-host resource usage
//! for placement.
//!
//! A list is read from an index of the VMs it selects (per org, and per
//! project, by status or all not deleted) and its total from a counter kept
//! beside the index, so listing a page costs that page whatever the fleet.
//! A list by name reads the org's index of that name (`vmname`), which
//! holds every VM ever given it, so it costs the VMs of that name.

use super::{Projections, Txn, history, key};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use vmplane_domain::event::Envelope;
use vmplane_domain::host::Resources;
use vmplane_domain::spec::{GpuSpec, NetworkMode};
use vmplane_domain::vm::{Vm, VmEvent, VmStatus, evolve};
use vmplane_domain::{HostId, OrgId, ProjectId, VmId};

pub(super) fn apply(txn: &mut Txn, seq: u64, env: &Envelope, ev: &VmEvent, payload: &[u8]) {
    let Ok(id) = env.aggregate.parse::<VmId>() else {
        tracing::error!(aggregate = %env.aggregate, "vm event without a vm id");
        return;
    };
    let before: Option<Vm> = txn.get(&key(&[&"vm", &id]));
    let existed = before.is_some();
    let was_deleted = before.as_ref().is_some_and(|v| v.status == VmStatus::Deleted);
    let was_flattened = before.as_ref().is_some_and(|v| v.flattened);
    let host_before = before.as_ref().map(|v| v.host);
    let listed_before = before.as_ref().map(|v| (v.project, v.status));
    if let Some(vm) = &before {
        super::snapshots::apply(txn, env, ev, vm);
    }
    let Some(after) = evolve(before, id, env.operation, env.time, ev) else { return };
    if listed_before != Some((after.project, after.status)) {
        if let Some((project, status)) = listed_before {
            unlist(txn, after.org, project, status, id);
        }
        list(txn, after.org, after.project, after.status, id);
    }
    if host_before != Some(after.host) {
        txn.put_raw(key(&[&"vmhost", &id]), after.host.to_string().into_bytes());
    }
    let usage_key = key(&[&"hostuse", &after.host]);
    if let Some(from) = host_before.filter(|h| *h != after.host && !was_deleted) {
        // Moved: its resources go with it.
        let from_key = key(&[&"hostuse", &from]);
        let mut used: Resources = txn.get(&from_key).unwrap_or_default();
        used -= after.spec.resources();
        txn.put(from_key, used);
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used += after.spec.resources();
        txn.put(usage_key.clone(), used);
    }
    if let Some(snap) = after.spec.from_snapshot.filter(|_| !existed) {
        txn.put_raw(key(&[&"snapclone", &snap, &id]), Vec::new());
    }
    // Gone, or flattened: either way it no longer reads the snapshot's files.
    if let Some(snap) = after.spec.from_snapshot.filter(|_| !was_deleted && !was_flattened && (after.status == VmStatus::Deleted || after.flattened)) {
        txn.remove(key(&[&"snapclone", &snap, &id]));
    }
    if !existed {
        txn.put(key(&[&"vmidx", &after.org, &id]), ());
        txn.put_raw(key(&[&"vmname", &after.org, &after.spec.name, &id]), Vec::new());
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used += after.spec.resources();
        txn.put(usage_key, used);
    } else if !was_deleted && after.status == VmStatus::Deleted {
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used -= after.spec.resources();
        txn.put(usage_key, used);
    }
    txn.append_history(id.0, seq, payload);
    txn.put(key(&[&"vm", &id]), after);
}

/// The list selections a VM in `status` belongs to: its status, and "all"
/// unless deleted.
fn selections(status: VmStatus) -> impl Iterator<Item = &'static str> {
    std::iter::once(status.as_str()).chain((status != VmStatus::Deleted).then_some(ALL))
}

/// The selection of every VM that is not deleted.
const ALL: &str = "all";

/// The index prefixes and counter keys a VM is listed under, per selection:
/// its org's and its project's.
fn listings(org: OrgId, project: ProjectId, status: VmStatus) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    selections(status).flat_map(move |sel| {
        [(key(&[&"vmls", &org, &sel, &""]), key(&[&"vmlsn", &org, &sel])), (key(&[&"vmls", &org, &project, &sel, &""]), key(&[&"vmlsn", &org, &project, &sel]))]
    })
}

fn list(txn: &mut Txn, org: OrgId, project: ProjectId, status: VmStatus, id: VmId) {
    for (prefix, count) in listings(org, project, status) {
        txn.put_raw([prefix, id.to_string().into_bytes()].concat(), Vec::new());
        let n: u64 = txn.get(&count).unwrap_or(0);
        txn.put(count, n + 1);
    }
}

fn unlist(txn: &mut Txn, org: OrgId, project: ProjectId, status: VmStatus, id: VmId) {
    for (prefix, count) in listings(org, project, status) {
        txn.remove([prefix, id.to_string().into_bytes()].concat());
        let n: u64 = txn.get(&count).unwrap_or(0);
        txn.put(count, n.saturating_sub(1));
    }
}

/// Host ports, bridge addresses and GPUs the VMs of one host hold.
#[derive(Debug, Default)]
pub struct HostAddresses {
    pub ports: BTreeSet<u16>,
    pub ips: BTreeSet<Ipv4Addr>,
    /// Lower case.
    pub macs: BTreeSet<String>,
    pub gpus: Vec<GpuSpec>,
}

/// A filter for listing VMs.
pub struct VmFilter {
    pub org: OrgId,
    pub project: Option<ProjectId>,
    /// `None` lists every VM that is not deleted.
    pub status: Option<VmStatus>,
    /// Only VMs of this name.
    pub name: Option<String>,
}

impl VmFilter {
    fn selects(&self, vm: &Vm) -> bool {
        self.project.is_none_or(|p| p == vm.project)
            && match self.status {
                Some(s) => vm.status == s,
                None => vm.status != VmStatus::Deleted,
            }
    }
}

impl Projections {
    /// One VM, whatever org it belongs to (callers check ownership).
    pub fn vm(&self, id: VmId) -> sled::Result<Option<Vm>> {
        self.get(&key(&[&"vm", &id]))
    }

    /// The host a projected VM is on, without reading the VM (placement asks
    /// this for every claim in flight).
    pub fn vm_host(&self, id: VmId) -> sled::Result<Option<HostId>> {
        Ok(self.tree.get(key(&[&"vmhost", &id]))?.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// Whether the VM is projected, without reading it.
    pub fn has_vm(&self, id: VmId) -> sled::Result<bool> {
        self.tree.contains_key(key(&[&"vm", &id]))
    }

    /// VMs matching `filter`, oldest first: one page and the total count,
    /// read from the filter's index and counter (see the module docs).
    pub fn list_vms(&self, filter: &VmFilter, offset: usize, limit: usize) -> sled::Result<(Vec<Vm>, usize)> {
        if let Some(name) = &filter.name {
            return self.list_vms_named(filter, name, offset, limit);
        }
        let sel = filter.status.map_or(ALL, VmStatus::as_str);
        let (prefix, count) = match filter.project {
            Some(p) => (key(&[&"vmls", &filter.org, &p, &sel, &""]), key(&[&"vmlsn", &filter.org, &p, &sel])),
            None => (key(&[&"vmls", &filter.org, &sel, &""]), key(&[&"vmlsn", &filter.org, &sel])),
        };
        let total: u64 = self.get(&count)?.unwrap_or(0);
        let mut page = Vec::new();
        for k in self.scan_keys(&prefix).skip(offset).take(limit) {
            let k = k?;
            let Some(id) = std::str::from_utf8(&k[prefix.len()..]).ok().and_then(|s| s.parse::<VmId>().ok()) else { continue };
            page.extend(self.vm(id)?);
        }
        Ok((page, usize::try_from(total).unwrap_or(usize::MAX)))
    }

    /// VMs matching `filter` among those ever named `name` (oldest first, as
    /// ids sort by creation).
    fn list_vms_named(&self, filter: &VmFilter, name: &str, offset: usize, limit: usize) -> sled::Result<(Vec<Vm>, usize)> {
        let prefix = key(&[&"vmname", &filter.org, &name, &""]);
        let mut page = Vec::new();
        let mut total = 0;
        for k in self.scan_keys(&prefix) {
            let k = k?;
            let Some(id) = std::str::from_utf8(&k[prefix.len()..]).ok().and_then(|s| s.parse::<VmId>().ok()) else { continue };
            let Some(vm) = self.vm(id)?.filter(|vm| filter.selects(vm)) else { continue };
            if total >= offset && page.len() < limit {
                page.push(vm);
            }
            total += 1;
        }
        Ok((page, total))
    }

    /// Host ports forwarded to VMs on `host` (requested or allocated), the
    /// addresses its bridge-mode VMs hold and the GPUs its VMs were given,
    /// for refusing a conflicting request before it reaches the worker.
    pub fn host_addresses(&self, host: HostId) -> sled::Result<HostAddresses> {
        let mut out = HostAddresses::default();
        for vm in self.scan::<Vm>(b"vm/") {
            let vm = vm?;
            if vm.host != host || vm.status == VmStatus::Deleted {
                continue;
            }
            out.ports.extend(vm.spec.port_forwards.iter().filter_map(|p| p.host_port));
            out.gpus.extend(vm.spec.gpu.clone());
            if let Some(net) = &vm.network {
                out.ports.extend(net.ssh_port);
                out.ports.extend(net.port_forwards.iter().map(|p| p.host_port));
            }
            let spec_net = &vm.spec.network;
            if spec_net.enabled && spec_net.mode == NetworkMode::Bridge {
                out.ips.extend(spec_net.guest_ip);
                out.macs.extend(spec_net.guest_mac.as_deref().map(str::to_ascii_lowercase));
                if let Some(net) = &vm.network {
                    out.ips.extend(net.ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()));
                    out.macs.extend(net.mac.as_deref().map(str::to_ascii_lowercase));
                }
            }
        }
        Ok(out)
    }

    /// What one org's VMs and volumes take on a host (what a tenant may see of it).
    pub fn org_usage_on_host(&self, org: OrgId, host: HostId) -> sled::Result<Resources> {
        let mut used = Resources::default();
        let filter = VmFilter { org, project: None, status: None, name: None };
        for vm in self.list_vms(&filter, 0, usize::MAX)?.0 {
            if vm.host == host {
                used += vm.spec.resources();
            }
        }
        for vol in self.list_volumes(org, |_| true, 0, usize::MAX)?.0 {
            if vol.host == host {
                used += Resources { disk_gb: u64::from(vol.spec.size_gb), ..Resources::default() };
            }
        }
        Ok(used)
    }

    /// A VM's events in stream order, with their sequences.
    pub fn vm_events(&self, id: VmId) -> sled::Result<Vec<(u64, Envelope)>> {
        history::read(&self.history, id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmplane_domain::event::Event;
    use vmplane_domain::spec::VmSpec;

    fn at(secs: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000) + time::Duration::seconds(secs)
    }

    /// Lists come from the listing indexes and their counters: by status, by
    /// project, every VM not deleted; pages in creation order; moves between
    /// statuses and deletion keep every count right.
    #[test]
    fn lists_follow_status_changes_with_their_totals() {
        let dir = std::env::temp_dir().join(format!("vmplane-proj-test-{}", ulid::Ulid::new()));
        let proj = Projections::open(&dir).expect("a projection store");
        let (org, other_org, host) = (OrgId::new(), OrgId::new(), HostId::new());
        let (p1, p2) = (ProjectId::new(), ProjectId::new());
        let mut seq = 0;
        let mut apply = |org: OrgId, vm: VmId, ev: VmEvent| {
            seq += 1;
            let env = Envelope::new(org, None, vm.to_string(), None, Event::Vm(ev), at(i64::try_from(seq).unwrap()));
            proj.apply(seq, &vmplane_domain::event::encode(&env).unwrap()).expect("applied");
        };
        // Ids made in one millisecond need not come in order: list order is id order.
        let mut vms: Vec<VmId> = (0..5).map(|_| VmId::new()).collect();
        vms.sort_by_key(ToString::to_string);
        for (i, vm) in vms.iter().enumerate() {
            let project = if i < 3 { p1 } else { p2 };
            let name = if i == 1 || i == 3 { "twin".to_owned() } else { format!("v{i}") };
            apply(org, *vm, VmEvent::Created { org, project, spec: Box::new(VmSpec::named(name)), host });
        }
        apply(other_org, VmId::new(), VmEvent::Created { org: other_org, project: p1, spec: Box::new(VmSpec::named("twin")), host });
        for vm in &vms[..4] {
            apply(org, *vm, VmEvent::ProvisioningStarted);
            apply(org, *vm, VmEvent::Booted);
            apply(org, *vm, VmEvent::Ready);
        }
        apply(org, vms[1], VmEvent::DeleteRequested);
        apply(org, vms[1], VmEvent::Deleted);

        let ids = |filter: VmFilter, offset, limit| {
            let (page, total) = proj.list_vms(&filter, offset, limit).unwrap();
            (page.into_iter().map(|v| v.id).collect::<Vec<_>>(), total)
        };
        let running = |project| VmFilter { org, project, status: Some(VmStatus::Running), name: None };
        assert_eq!(ids(running(None), 0, 10), (vec![vms[0], vms[2], vms[3]], 3));
        assert_eq!(ids(running(None), 1, 1), (vec![vms[2]], 3), "a page, and the total of every page");
        assert_eq!(ids(running(Some(p1)), 0, 10), (vec![vms[0], vms[2]], 2));
        assert_eq!(ids(VmFilter { org, project: None, status: None, name: None }, 0, 10), (vec![vms[0], vms[2], vms[3], vms[4]], 4), "all but the deleted");
        assert_eq!(ids(VmFilter { org, project: Some(p2), status: Some(VmStatus::Pending), name: None }, 0, 10), (vec![vms[4]], 1));
        assert_eq!(ids(VmFilter { org, project: None, status: Some(VmStatus::Deleted), name: None }, 0, 10), (vec![vms[1]], 1));
        assert_eq!(ids(VmFilter { org: other_org, project: None, status: None, name: None }, 0, 10).1, 1, "another org's VMs are its own");
        // By name: the same selections among the VMs of that name.
        let named = |project, status, name: &str| VmFilter { org, project, status, name: Some(name.to_owned()) };
        assert_eq!(ids(named(None, None, "twin"), 0, 10), (vec![vms[3]], 1), "the deleted twin is not listed");
        assert_eq!(ids(named(None, Some(VmStatus::Deleted), "twin"), 0, 10), (vec![vms[1]], 1));
        assert_eq!(ids(named(Some(p1), None, "twin"), 0, 10), (vec![], 0), "the live twin is in p2");
        assert_eq!(ids(named(None, Some(VmStatus::Running), "v0"), 0, 10), (vec![vms[0]], 1));
        assert_eq!(ids(named(None, None, "v"), 0, 10), (vec![], 0), "a name is matched whole, not as a prefix");
        assert_eq!(ids(named(None, None, "nobody"), 0, 10), (vec![], 0));
        assert_eq!(ids(VmFilter { org: other_org, project: None, status: None, name: Some("twin".into()) }, 0, 10).1, 1);
        assert_eq!(proj.vm_host(vms[0]).unwrap(), Some(host));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
