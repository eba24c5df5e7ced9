//! VM views: the folded state per VM, an index per org for listing, each
//! VM's event history, and per-host resource usage for placement.

use super::{Projections, Txn, key};
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
    let host_before = before.as_ref().map(|v| v.host);
    let Some(after) = evolve(before, id, env.operation, env.time, ev) else { return };
    let usage_key = key(&[&"hostuse", &after.host]);
    if let Some(from) = host_before.filter(|h| *h != after.host && !was_deleted) {
        // Moved: its resources go with it.
        let from_key = key(&[&"hostuse", &from]);
        let mut used: Resources = txn.get(&from_key).unwrap_or_default();
        used -= after.spec.resources();
        txn.put(from_key, &used);
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used += after.spec.resources();
        txn.put(usage_key.clone(), &used);
    }
    if !existed {
        txn.put(key(&[&"vmidx", &after.org, &id]), &());
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used += after.spec.resources();
        txn.put(usage_key, &used);
    } else if !was_deleted && after.status == VmStatus::Deleted {
        let mut used: Resources = txn.get(&usage_key).unwrap_or_default();
        used -= after.spec.resources();
        txn.put(usage_key, &used);
    }
    txn.put_raw(format!("vmevt/{id}/{seq:020}").into_bytes(), payload.to_vec());
    txn.put(key(&[&"vm", &id]), &after);
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
}

impl Projections {
    /// One VM, whatever org it belongs to (callers check ownership).
    pub fn vm(&self, id: VmId) -> sled::Result<Option<Vm>> {
        self.get(&key(&[&"vm", &id]))
    }

    /// Whether the VM is projected, without reading it.
    pub fn has_vm(&self, id: VmId) -> sled::Result<bool> {
        self.tree.contains_key(key(&[&"vm", &id]))
    }

    /// VMs matching `filter`, oldest first: one page and the total count.
    pub fn list_vms(&self, filter: &VmFilter, offset: usize, limit: usize) -> sled::Result<(Vec<Vm>, usize)> {
        let mut page = Vec::new();
        let mut total = 0;
        for k in self.scan_keys(&key(&[&"vmidx", &filter.org, &""])) {
            let k = k?;
            let Some(id) = std::str::from_utf8(&k).ok().and_then(|s| s.rsplit('/').next()).and_then(|s| s.parse::<VmId>().ok()) else { continue };
            let Some(vm) = self.vm(id)? else { continue };
            let status_ok = match filter.status {
                Some(s) => vm.status == s,
                None => vm.status != VmStatus::Deleted,
            };
            if !status_ok || filter.project.is_some_and(|p| p != vm.project) {
                continue;
            }
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
        let filter = VmFilter { org, project: None, status: None };
        for vm in self.list_vms(&filter, 0, usize::MAX)?.0 {
            if vm.host == host {
                used += vm.spec.resources();
            }
        }
        for vol in self.list_volumes(org, 0, usize::MAX)?.0 {
            if vol.host == host {
                used += Resources { disk_gb: u64::from(vol.spec.size_gb), ..Resources::default() };
            }
        }
        Ok(used)
    }

    /// A VM's events in stream order, with their sequences.
    pub fn vm_events(&self, id: VmId) -> sled::Result<Vec<(u64, Envelope)>> {
        let mut out = Vec::new();
        for r in self.tree.scan_prefix(format!("vmevt/{id}/").as_bytes()) {
            let (k, v) = r?;
            let seq = std::str::from_utf8(&k).ok().and_then(|s| s.rsplit('/').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
            if let Ok(env) = Envelope::decode(&v) {
                out.push((seq, env));
            }
        }
        Ok(out)
    }
}
