//! The domain's hot functions without a stack: deciding a command, folding
//! a VM's events, and the codec every event and command goes through. A
//! regression here shows up in `cargo bench -p vmplane-domain` before it
//! shows up in `vmplane-bench api`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use time::OffsetDateTime;
use vmplane_domain::event::{self, Envelope, Event};
use vmplane_domain::spec::VmSpec;
use vmplane_domain::vm::{DiskInfo, NetworkRuntime, Vm, VmCommand, VmEvent, decide, evolve};
use vmplane_domain::{HostId, OpId, OrgId, ProjectId, VmId};

/// The events of a VM created and brought up, as a worker appends them.
fn lifecycle() -> Vec<VmEvent> {
    let spec =
        VmSpec { ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0000000000000000000000000000000000000000 bench".into()], ..VmSpec::named("bench") };
    vec![
        VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: Box::new(spec), host: HostId::new() },
        VmEvent::ProvisioningStarted,
        VmEvent::NetworkAllocated { network: NetworkRuntime::default() },
        VmEvent::DiskPrepared { disk: DiskInfo { location: "/var/lib/vmplane/vms/root.qcow2".into(), size_gb: 10 } },
        VmEvent::Booted,
        VmEvent::Ready,
        VmEvent::OperationFinished { outcome: vmplane_domain::vm::Outcome::Succeeded },
    ]
}

fn fold(id: VmId, op: OpId, events: &[VmEvent]) -> Option<Vm> {
    let at = OffsetDateTime::UNIX_EPOCH;
    events.iter().fold(None, |vm, e| evolve(vm, id, Some(op), at, e))
}

fn benches(c: &mut Criterion) {
    let (id, op) = (VmId::new(), OpId::new());
    let events = lifecycle();
    let running = fold(id, op, &events).expect("a vm");
    let mut stopped = running.clone();
    stopped.status = vmplane_domain::vm::VmStatus::Stopped;
    let create = VmCommand::Create { spec: Box::new(VmSpec::named("bench")), host: HostId::new() };

    c.bench_function("decide create", |b| b.iter(|| decide(None, OrgId::DEFAULT, ProjectId::DEFAULT, black_box(&create))));
    c.bench_function("decide start (stopped vm)", |b| b.iter(|| decide(Some(black_box(&stopped)), OrgId::DEFAULT, ProjectId::DEFAULT, &VmCommand::Start)));
    c.bench_function("evolve: fold a create to running (7 events)", |b| b.iter(|| fold(id, op, black_box(&events))));

    let envelope =
        |e: &VmEvent| Envelope::new(OrgId::DEFAULT, Some(ProjectId::DEFAULT), id.to_string(), Some(op), Event::Vm(e.clone()), OffsetDateTime::UNIX_EPOCH);
    let (created, ready) = (envelope(&events[0]), envelope(&events[5]));
    let (created_bytes, ready_bytes) = (event::encode(&created).unwrap(), event::encode(&ready).unwrap());
    c.bench_function("encode created", |b| b.iter(|| event::encode(black_box(&created))));
    c.bench_function("decode created", |b| b.iter(|| Envelope::decode(black_box(&created_bytes))));
    c.bench_function("encode ready", |b| b.iter(|| event::encode(black_box(&ready))));
    c.bench_function("decode ready", |b| b.iter(|| Envelope::decode(black_box(&ready_bytes))));
}

criterion_group!(domain, benches);
criterion_main!(domain);
