use super::*;
use crate::spec::{DataDisk, DiskKind, VolumeMount};
use proptest::prelude::*;

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

/// Apply a command like the worker does: decide, evolve, then run every step
/// with a driver that always succeeds. Returns the events appended.
fn run(vm: &mut Option<Vm>, id: VmId, cmd: VmCommand) -> Result<Vec<VmEvent>, DecideError> {
    let op = OpId::new();
    let mut log = decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &cmd)?;
    for e in &log {
        *vm = evolve(vm.take(), id, Some(op), t0(), e);
    }
    let mut guard = 0;
    while let Some(step) = vm.as_ref().and_then(next_step) {
        guard += 1;
        assert!(guard < 20, "step loop does not converge: {step:?}");
        let ev = step_event(&step).unwrap_or_else(|| match step {
            Step::AllocateNetwork => VmEvent::NetworkAllocated { network: NetworkRuntime::default() },
            Step::PrepareDisk => VmEvent::DiskPrepared { disk: DiskInfo { location: "d".into(), size_gb: 10 } },
            Step::ImportDisk => VmEvent::DiskImported { disk: DiskInfo { location: "moved".into(), size_gb: 10 } },
            Step::TakeSnapshot(snapshot) => VmEvent::SnapshotTaken { snapshot, taken: SnapshotTaken { size_bytes: 1, pause_ms: 1 } },
            _ => unreachable!(),
        });
        *vm = evolve(vm.take(), id, Some(op), t0(), &ev);
        log.push(ev);
    }
    Ok(log)
}

fn created() -> (Option<Vm>, VmId) {
    let id = VmId::new();
    let mut vm = None;
    let mut spec = VmSpec::named("a");
    spec.hotplug_memory_mib = 512;
    run(&mut vm, id, VmCommand::Create { spec: Box::new(spec), host: HostId::new() }).unwrap();
    (vm, id)
}

#[test]
fn memory_grows_within_the_reserve_and_resets_on_cold_boot() {
    let (mut vm, id) = created();
    let resize = |m| VmCommand::ResizeMemory { memory_mib: m };
    assert!(matches!(run(&mut vm, id, resize(2048)), Err(DecideError::MemoryOutOfRange(_))));
    assert!(matches!(run(&mut vm, id, resize(700)), Err(DecideError::MemoryOutOfRange(_))), "not a whole memory block");
    assert_eq!(types(&run(&mut vm, id, resize(768)).unwrap()), ["memory_resize_requested", "memory_resized", "operation_finished"]);
    assert_eq!(vm.as_ref().unwrap().memory_mib(), 768);
    assert_eq!(types(&run(&mut vm, id, resize(768)).unwrap()), ["operation_finished"]);
    assert!(matches!(run(&mut vm, id, resize(640)), Err(DecideError::MemoryOutOfRange(_))), "cannot shrink");
    assert!(matches!(run(&mut vm, id, VmCommand::Standby), Err(DecideError::InvalidState { .. })));
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert!(matches!(run(&mut vm, id, resize(1024)), Err(DecideError::InvalidState { .. })));
    run(&mut vm, id, VmCommand::Start).unwrap();
    assert_eq!(vm.as_ref().unwrap().memory_mib(), 512);
}

fn types(events: &[VmEvent]) -> Vec<&'static str> {
    events.iter().map(VmEvent::type_name).collect()
}

#[test]
fn create_runs_every_provisioning_step_in_order() {
    let id = VmId::new();
    let mut vm = None;
    let log = run(&mut vm, id, VmCommand::Create { spec: Box::new(VmSpec::named("a")), host: HostId::new() }).unwrap();
    assert_eq!(types(&log), ["created", "provisioning_started", "network_allocated", "disk_prepared", "booted", "ready", "operation_finished"]);
    let vm = vm.unwrap();
    assert_eq!(vm.status, VmStatus::Running);
    assert!(vm.pending_op.is_none());
    assert_eq!(vm.finished_ops.len(), 1);
    assert!(vm.started_at.is_some());
}

#[test]
fn stop_start_restart_delete() {
    let (mut vm, id) = created();
    assert_eq!(types(&run(&mut vm, id, VmCommand::Stop).unwrap()), ["stop_requested", "stopped", "operation_finished"]);
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Stopped);
    assert!(!vm.as_ref().unwrap().booted);
    assert_eq!(types(&run(&mut vm, id, VmCommand::Start).unwrap()), ["start_requested", "booted", "ready", "operation_finished"]);
    assert_eq!(types(&run(&mut vm, id, VmCommand::Restart).unwrap()), ["restart_requested", "rebooted", "ready", "operation_finished"]);
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Running);
    assert_eq!(types(&run(&mut vm, id, VmCommand::Delete).unwrap()), ["delete_requested", "deleted", "operation_finished"]);
    let v = vm.as_ref().unwrap();
    assert_eq!(v.status, VmStatus::Deleted);
    assert!(v.root_disk.is_none() && v.network.is_none());
}

#[test]
fn standby_and_restore_keep_the_snapshot_flag_honest() {
    let (mut vm, id) = created();
    assert_eq!(types(&run(&mut vm, id, VmCommand::Standby).unwrap()), ["standby_requested", "snapshotted", "operation_finished"]);
    assert!(vm.as_ref().unwrap().has_snapshot);
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Standby);
    assert!(matches!(run(&mut vm, id, VmCommand::Start), Err(DecideError::InvalidState { .. })));
    assert_eq!(types(&run(&mut vm, id, VmCommand::Restore).unwrap()), ["restore_requested", "restored", "operation_finished"]);
    assert!(!vm.as_ref().unwrap().has_snapshot);
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Running);
}

#[test]
fn idempotent_commands_change_nothing_but_finish_their_operation() {
    let (mut vm, id) = created();
    let before = vm.clone().unwrap();
    assert_eq!(types(&run(&mut vm, id, VmCommand::Start).unwrap()), ["operation_finished"]);
    let after = vm.clone().unwrap();
    assert_eq!(after.status, before.status);
    assert_eq!(after.finished_ops.len(), before.finished_ops.len() + 1);
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert_eq!(types(&run(&mut vm, id, VmCommand::Stop).unwrap()), ["operation_finished"]);
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Stopped);
}

#[test]
fn forbidden_commands_are_refused() {
    let (mut vm, id) = created();
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert_eq!(run(&mut vm, id, VmCommand::Restart), Err(DecideError::InvalidState { action: "restart", status: "stopped" }));
    assert!(matches!(run(&mut vm, id, VmCommand::Restore), Err(DecideError::InvalidState { .. })));
    assert!(matches!(run(&mut vm, id, VmCommand::Standby), Err(DecideError::InvalidState { .. })));
    assert_eq!(run(&mut vm, id, VmCommand::Create { spec: Box::new(VmSpec::named("a")), host: HostId::new() }), Err(DecideError::AlreadyExists));
    let mut none = None;
    assert_eq!(run(&mut none, id, VmCommand::Start), Err(DecideError::NotFound));
}

#[test]
fn busy_vm_refuses_all_but_delete() {
    let id = VmId::new();
    let op = OpId::new();
    let spec = Box::new(VmSpec::named("a"));
    let vm = evolve(None, id, Some(op), t0(), &VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec, host: HostId::new() });
    assert_eq!(decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VmCommand::Stop), Err(DecideError::Busy(OpKind::Create)));
    assert_eq!(decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VmCommand::Delete), Ok(vec![VmEvent::DeleteRequested]));
}

#[test]
fn deleted_vm_is_gone_except_for_repeat_delete() {
    let (mut vm, id) = created();
    run(&mut vm, id, VmCommand::Delete).unwrap();
    assert_eq!(run(&mut vm, id, VmCommand::Start), Err(DecideError::NotFound));
    assert_eq!(types(&run(&mut vm, id, VmCommand::Delete).unwrap()), ["operation_finished"]);
}

#[test]
fn guest_poweroff_during_boot_fails_the_operation() {
    let id = VmId::new();
    let op = OpId::new();
    let spec = Box::new(VmSpec::named("a"));
    let mut vm = evolve(None, id, Some(op), t0(), &VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec, host: HostId::new() });
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::ProvisioningStarted);
    vm = evolve(vm, id, None, t0(), &VmEvent::Stopped { reason: "guest powered off".into() });
    assert!(matches!(next_step(vm.as_ref().unwrap()), Some(Step::Finish(Outcome::Failed { .. }))));
}

#[test]
fn failure_finishes_the_pending_operation_as_failed() {
    let id = VmId::new();
    let op = OpId::new();
    let spec = Box::new(VmSpec::named("a"));
    let mut vm = evolve(None, id, Some(op), t0(), &VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec, host: HostId::new() });
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::Failed { message: "no disk".into() });
    assert_eq!(next_step(vm.as_ref().unwrap()), Some(Step::Finish(Outcome::Failed { code: "failed".into(), message: "no disk".into() })));
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::OperationFinished { outcome: Outcome::Failed { code: "failed".into(), message: "no disk".into() } });
    let vm = vm.unwrap();
    assert_eq!(vm.status, VmStatus::Failed);
    assert!(vm.pending_op.is_none() && vm.has_finished(op));
    assert_eq!(decide(Some(&vm), OrgId::DEFAULT, ProjectId::DEFAULT, &VmCommand::Start), Ok(vec![VmEvent::StartRequested]));
}

#[test]
fn finished_ops_are_bounded() {
    let (mut vm, id) = created();
    for _ in 0..(REMEMBERED_OPS + 5) {
        run(&mut vm, id, VmCommand::Start).unwrap();
    }
    assert_eq!(vm.unwrap().finished_ops.len(), REMEMBERED_OPS);
}

#[test]
fn events_before_creation_are_ignored() {
    assert_eq!(evolve(None, VmId::new(), None, t0(), &VmEvent::Ready), None);
}

#[test]
fn status_words_roundtrip() {
    for s in VmStatus::ALL {
        assert_eq!(s.as_str().parse::<VmStatus>(), Ok(s));
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
    }
    assert!("bogus".parse::<VmStatus>().is_err());
}

fn any_command() -> impl Strategy<Value = VmCommand> {
    prop_oneof![
        Just(VmCommand::Create { spec: Box::new(VmSpec::named("p")), host: HostId(ulid::Ulid::nil()) }),
        Just(VmCommand::Create { spec: Box::new(with_disks()), host: HostId(ulid::Ulid::nil()) }),
        Just(VmCommand::Start),
        Just(VmCommand::Stop),
        Just(VmCommand::Restart),
        Just(VmCommand::Standby),
        Just(VmCommand::Restore),
        Just(VmCommand::Delete),
        Just(VmCommand::AttachVolume { mount: test_mount() }),
        Just(VmCommand::DetachVolume { volume: test_mount().volume_id }),
        Just(VmCommand::ResizeMemory { memory_mib: 768 }),
        Just(VmCommand::Flatten),
    ]
}

fn test_mount() -> VolumeMount {
    VolumeMount { volume_id: VolumeId(ulid::Ulid::nil()), mount_path: Some("/mnt/data".into()), readonly: false, overlay: false, overlay_size_mib: None }
}

#[test]
fn attach_and_detach_volumes() {
    let (mut vm, id) = created();
    assert_eq!(
        types(&run(&mut vm, id, VmCommand::AttachVolume { mount: test_mount() }).unwrap()),
        ["volume_attach_requested", "vm_volume_attached", "operation_finished"]
    );
    assert_eq!(vm.as_ref().unwrap().volumes, vec![test_mount()]);
    assert_eq!(types(&run(&mut vm, id, VmCommand::AttachVolume { mount: test_mount() }).unwrap()), ["operation_finished"], "same attach again changes nothing");
    let other_path = VolumeMount { volume_id: VolumeId::new(), ..test_mount() };
    assert_eq!(run(&mut vm, id, VmCommand::AttachVolume { mount: other_path }), Err(DecideError::VolumeConflict));
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert_eq!(
        types(&run(&mut vm, id, VmCommand::DetachVolume { volume: test_mount().volume_id }).unwrap()),
        ["volume_detach_requested", "vm_volume_detached", "operation_finished"]
    );
    assert!(vm.as_ref().unwrap().volumes.is_empty());
    assert_eq!(run(&mut vm, id, VmCommand::DetachVolume { volume: test_mount().volume_id }), Err(DecideError::VolumeNotAttached));
}

#[test]
fn a_failed_volume_step_fails_only_its_operation() {
    assert!(!Step::AttachVolume(test_mount()).failure_fails_vm());
    assert!(!Step::DetachVolume(test_mount().volume_id).failure_fails_vm());
    assert!(Step::Boot.failure_fails_vm());
    let (mut vm, id) = created();
    let op = OpId::new();
    for e in decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VmCommand::AttachVolume { mount: test_mount() }).unwrap() {
        vm = evolve(vm, id, Some(op), t0(), &e);
    }
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::OperationFinished { outcome: Outcome::Failed { code: "x".into(), message: "y".into() } });
    let v = vm.unwrap();
    assert_eq!(v.status, VmStatus::Running);
    assert!(v.attaching.is_none() && v.volumes.is_empty() && v.pending_op.is_none());
}

#[test]
fn a_failed_snapshot_fails_the_operation_and_the_vm_runs_on() {
    assert!(!Step::Snapshot.failure_fails_vm());
    let (mut vm, id) = created();
    let op = OpId::new();
    for e in decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VmCommand::Standby).unwrap() {
        vm = evolve(vm, id, Some(op), t0(), &e);
    }
    assert_eq!(vm.as_ref().and_then(next_step), Some(Step::Snapshot));
    let failed = Outcome::Failed { code: "step_failed".into(), message: "snapshot: migration failed".into() };
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::OperationFinished { outcome: failed });
    let v = vm.clone().unwrap();
    assert_eq!((v.status, v.booted, v.has_snapshot, v.message.as_deref()), (VmStatus::Running, true, false, None));
    assert!(v.pending_op.is_none() && v.has_finished(op));
    assert_eq!(next_step(&v), None);
    // It can be put on standby again.
    assert_eq!(types(&run(&mut vm, id, VmCommand::Standby).unwrap()), ["standby_requested", "snapshotted", "operation_finished"]);
}

#[test]
fn only_a_standby_in_progress_goes_back_to_running() {
    let (mut vm, id) = created();
    run(&mut vm, id, VmCommand::Stop).unwrap();
    let op = OpId::new();
    for e in decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &VmCommand::Start).unwrap() {
        vm = evolve(vm, id, Some(op), t0(), &e);
    }
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::Failed { message: "boot: no".into() });
    let finish = VmEvent::OperationFinished { outcome: Outcome::Failed { code: "failed".into(), message: "boot: no".into() } };
    vm = evolve(vm, id, Some(op), t0(), &finish);
    assert_eq!(vm.unwrap().status, VmStatus::Failed);
}

/// Where a simulated step may fail or be interrupted.
#[derive(Debug, Clone)]
enum Fault {
    None,
    /// The driver fails this step: the worker appends `Failed`.
    FailAt(usize),
    /// The guest powers off on its own after this many steps.
    PowerOffAt(usize),
}

fn any_fault() -> impl Strategy<Value = Fault> {
    prop_oneof![Just(Fault::None), (0usize..6).prop_map(Fault::FailAt), (0usize..6).prop_map(Fault::PowerOffAt)]
}

proptest! {
    /// No sequence of commands, failures and spontaneous power-offs breaks the
    /// invariants: every accepted operation finishes exactly once, no
    /// operation is left pending, the status agrees with the runtime flags,
    /// and a deleted VM stays deleted.
    #[test]
    fn no_command_sequence_breaks_invariants(script in proptest::collection::vec((any_command(), any_fault()), 1..40)) {
        let id = VmId::new();
        let mut vm: Option<Vm> = None;
        let mut deleted = false;
        for (cmd, fault) in script {
            let op = OpId::new();
            let decided = decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &cmd);
            let Ok(events) = decided else {
                if let Err(DecideError::NotFound) = decided { prop_assert!(vm.is_none() || deleted); }
                continue;
            };
            prop_assert!(!events.is_empty());
            for e in &events { vm = evolve(vm.take(), id, Some(op), t0(), e); }
            let mut steps = 0;
            while let Some(step) = vm.as_ref().and_then(next_step) {
                steps += 1;
                prop_assert!(steps < 20, "no convergence at {:?}", step);
                let ev = match (&fault, step) {
                    (Fault::FailAt(n), s) if *n + 1 == steps && !matches!(s, Step::Finish(_)) && !s.failure_fails_vm() => VmEvent::OperationFinished { outcome: Outcome::Failed { code: "injected".into(), message: "injected".into() } },
                    (Fault::FailAt(n), s) if *n + 1 == steps && !matches!(s, Step::Finish(_)) => VmEvent::Failed { message: "injected".into() },
                    (Fault::PowerOffAt(n), s) if *n + 1 == steps && !matches!(s, Step::Finish(_)) => VmEvent::Stopped { reason: "guest powered off".into() },
                    (_, Step::AllocateNetwork) => VmEvent::NetworkAllocated { network: NetworkRuntime::default() },
                    (_, Step::PrepareDisk) => VmEvent::DiskPrepared { disk: DiskInfo { location: "d".into(), size_gb: 1 } },
                    (_, s) => step_event(&s).unwrap(),
                };
                let op_for_event = if matches!(ev, VmEvent::Stopped { .. }) && matches!(fault, Fault::PowerOffAt(_)) { None } else { Some(op) };
                vm = evolve(vm.take(), id, op_for_event, t0(), &ev);
            }
            let v = vm.as_ref().unwrap();
            prop_assert!(v.pending_op.is_none(), "operation left pending: {:?}", v);
            prop_assert!(v.has_finished(op), "operation never finished");
            prop_assert_eq!(v.finished_ops.iter().filter(|o| **o == op).count(), 1);
            match v.status {
                VmStatus::Running => prop_assert!(v.booted && !v.has_snapshot),
                VmStatus::Stopped => prop_assert!(!v.booted),
                VmStatus::Standby => prop_assert!(v.has_snapshot && !v.booted),
                VmStatus::Deleted => prop_assert!(v.root_disk.is_none() && !v.booted),
                VmStatus::Failed => prop_assert!(v.message.is_some()),
                other => prop_assert!(false, "transitional status {:?} with no operation pending", other),
            }
            if deleted { prop_assert_eq!(v.status, VmStatus::Deleted); }
            deleted = v.status == VmStatus::Deleted;
        }
    }

    /// Replaying the same events always yields the same state (projections
    /// rebuilt from the stream equal the live ones).
    #[test]
    fn evolve_is_deterministic(cmds in proptest::collection::vec(any_command(), 1..20)) {
        let id = VmId::new();
        let mut vm = None;
        let mut log = Vec::new();
        for cmd in cmds {
            if let Ok(events) = run(&mut vm, id, cmd) { log.extend(events); }
        }
        let replayed = log.iter().fold(None, |s, e| evolve(s, id, None, t0(), e));
        prop_assert_eq!(replayed.map(|v| v.status), vm.map(|v| v.status));
    }
}

/// A spec with a filesystem and a block data disk (the second kept), an
/// existing volume, and a root disk kept at delete.
fn with_disks() -> VmSpec {
    let mut spec = VmSpec::named("disks");
    spec.data_disks = vec![
        DataDisk { name: "logs".into(), size_gb: 10, kind: DiskKind::Filesystem, mount_path: None, delete_with_vm: true },
        DataDisk { name: "raw".into(), size_gb: 20, kind: DiskKind::Block, mount_path: None, delete_with_vm: false },
    ];
    spec.volumes = vec![test_mount()];
    spec.delete_root_disk = false;
    spec
}

#[test]
fn create_makes_and_attaches_its_disks_before_the_first_boot() {
    let id = VmId::new();
    let mut vm = None;
    let log = run(&mut vm, id, VmCommand::Create { spec: Box::new(with_disks()), host: HostId::new() }).unwrap();
    assert_eq!(
        types(&log),
        [
            "created",
            "provisioning_started",
            "network_allocated",
            "disk_prepared",
            "vm_volume_attached",
            "vm_volume_attached",
            "vm_volume_attached",
            "booted",
            "ready",
            "operation_finished"
        ]
    );
    let v = vm.unwrap();
    let mounts: Vec<(VolumeId, Option<&str>)> = v.volumes.iter().map(|m| (m.volume_id, m.mount_path.as_deref())).collect();
    assert_eq!(mounts, [(data_disk_id(id, 0), Some("/mnt/logs")), (data_disk_id(id, 1), None), (test_mount().volume_id, Some("/mnt/data"))]);
    assert_eq!(v.status, VmStatus::Running);
}

#[test]
fn a_disk_detached_after_the_first_boot_stays_detached() {
    let id = VmId::new();
    let mut vm = None;
    run(&mut vm, id, VmCommand::Create { spec: Box::new(with_disks()), host: HostId::new() }).unwrap();
    run(&mut vm, id, VmCommand::DetachVolume { volume: data_disk_id(id, 0) }).unwrap();
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert_eq!(types(&run(&mut vm, id, VmCommand::Start).unwrap()), ["start_requested", "booted", "ready", "operation_finished"]);
    assert_eq!(vm.unwrap().volumes.len(), 2);
}

#[test]
fn a_create_that_failed_at_a_disk_attaches_it_when_started() {
    let id = VmId::new();
    let op = OpId::new();
    let created = VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: Box::new(with_disks()), host: HostId::new() };
    let mut vm = evolve(None, id, Some(op), t0(), &created);
    let network = VmEvent::NetworkAllocated { network: NetworkRuntime::default() };
    let disk = VmEvent::DiskPrepared { disk: DiskInfo { location: "d".into(), size_gb: 10 } };
    for e in [VmEvent::ProvisioningStarted, network, disk] {
        vm = evolve(vm, id, Some(op), t0(), &e);
    }
    for _ in 0..2 {
        let step = vm.as_ref().and_then(next_step).unwrap();
        assert!(matches!(step, Step::CreateDataDisk { .. }) && step.failure_fails_vm(), "{step:?}");
        vm = evolve(vm, id, Some(op), t0(), &step_event(&step).unwrap());
    }
    let step = vm.as_ref().and_then(next_step).unwrap();
    assert_eq!(step, Step::AttachAtCreate(test_mount()));
    assert!(step.failure_fails_vm(), "a volume that cannot be had fails the create");
    // The volume is another VM's: the step fails, and the VM with it.
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::Failed { message: "attach_at_create: volume is attached to another vm".into() });
    let finish = vm.as_ref().and_then(next_step).unwrap();
    vm = evolve(vm, id, Some(op), t0(), &step_event(&finish).unwrap());
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Failed);
    let log = run(&mut vm, id, VmCommand::Start).unwrap();
    assert_eq!(types(&log), ["start_requested", "vm_volume_attached", "booted", "ready", "operation_finished"]);
    assert_eq!(vm.unwrap().volumes.len(), 3);
}

#[test]
fn delete_keeps_the_root_disk_as_a_volume_when_asked() {
    let id = VmId::new();
    let mut vm = None;
    run(&mut vm, id, VmCommand::Create { spec: Box::new(with_disks()), host: HostId::new() }).unwrap();
    assert_eq!(vm.as_ref().unwrap().root_disk_to_keep(), Some(kept_root_disk_id(id)));
    let log = run(&mut vm, id, VmCommand::Delete).unwrap();
    assert_eq!(types(&log), ["delete_requested", "root_disk_kept", "deleted", "operation_finished"]);
    assert_eq!(log[1], VmEvent::RootDiskKept { volume: kept_root_disk_id(id) });

    // Deleted with its root disk (the default), or booted from a root volume: nothing is kept.
    let (mut vm, id) = created();
    assert_eq!(types(&run(&mut vm, id, VmCommand::Delete).unwrap()), ["delete_requested", "deleted", "operation_finished"]);
    let mut spec = VmSpec::named("b");
    spec.delete_root_disk = false;
    spec.root_volume = Some(VolumeId::new());
    let (mut vm, id) = (None, VmId::new());
    run(&mut vm, id, VmCommand::Create { spec: Box::new(spec), host: HostId::new() }).unwrap();
    assert_eq!(vm.as_ref().unwrap().root_disk_to_keep(), None);
    assert_eq!(types(&run(&mut vm, id, VmCommand::Delete).unwrap()), ["delete_requested", "deleted", "operation_finished"]);
}

#[test]
fn deleting_a_vm_deletes_its_own_disks_and_releases_the_rest() {
    let id = VmId::new();
    let mut vm = None;
    let mut spec = with_disks();
    let root = VolumeId::new();
    spec.root_volume = Some(root);
    run(&mut vm, id, VmCommand::Create { spec: Box::new(spec), host: HostId::new() }).unwrap();
    let live = VolumeMount { volume_id: VolumeId::new(), mount_path: Some("/live".into()), ..test_mount() };
    run(&mut vm, id, VmCommand::AttachVolume { mount: live.clone() }).unwrap();
    assert_eq!(
        vm.unwrap().disposal(),
        [
            (data_disk_id(id, 0), Disposal::Delete),
            (data_disk_id(id, 1), Disposal::Release),
            (root, Disposal::Release),
            (test_mount().volume_id, Disposal::Release),
            (live.volume_id, Disposal::Release),
        ]
    );
}

#[test]
fn a_vms_own_volume_ids_are_stable_distinct_and_sort_with_it() {
    let vm = VmId::new();
    let mut ids: Vec<VolumeId> = (0..crate::spec::MAX_DISKS).map(|i| data_disk_id(vm, i)).collect();
    ids.push(kept_root_disk_id(vm));
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), ids.len());
    assert_eq!(data_disk_id(vm, 3), data_disk_id(vm, 3));
    assert!(ids.iter().all(|v| v.0.timestamp_ms() == vm.0.timestamp_ms()));
    assert_ne!(data_disk_id(VmId::new(), 0), data_disk_id(vm, 0));
    assert_eq!(root_disk_vm(kept_root_disk_id(vm)), vm, "a root disk names the vm that made it");
    assert_ne!(root_disk_vm(data_disk_id(vm, 0)), vm);
}

#[test]
fn a_stopped_vm_moves_with_its_disk_and_gets_new_addresses_at_its_next_start() {
    let (mut vm, id) = created();
    let (from, to) = (vm.as_ref().unwrap().host, HostId::new());
    assert!(matches!(run(&mut vm, id, VmCommand::Move { to }), Err(DecideError::InvalidState { .. })), "running");
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert_eq!(types(&run(&mut vm, id, VmCommand::Move { to: from }).unwrap()), ["operation_finished"], "already there");
    assert_eq!(types(&run(&mut vm, id, VmCommand::Move { to }).unwrap()), ["move_requested", "disk_exported", "moved", "disk_imported", "operation_finished"]);
    let v = vm.as_ref().unwrap();
    assert_eq!((v.host, v.status, v.moving, v.message.as_deref()), (to, VmStatus::Stopped, None, None));
    assert_eq!((v.network.as_ref(), v.root_disk.as_ref().map(|d| d.location.as_str())), (None, Some("moved")));
    assert!(matches!(run(&mut vm, id, VmCommand::ResumeMove), Err(DecideError::InvalidState { .. })), "only a resumption");
    assert_eq!(types(&run(&mut vm, id, VmCommand::Start).unwrap())[..2], ["start_requested", "network_allocated"]);
    // A VM holding volumes stays where they are.
    let (mut vm, id) = created();
    run(&mut vm, id, VmCommand::Stop).unwrap();
    vm.as_mut().unwrap().volumes.push(serde_json::from_value::<VolumeMount>(serde_json::json!({ "volume_id": VolumeId::new() })).unwrap());
    assert!(matches!(run(&mut vm, id, VmCommand::Move { to }), Err(DecideError::InvalidState { .. })));
}

#[test]
fn a_snapshot_leaves_the_vm_as_it_was_and_only_machines_it_can_resume_are_taken() {
    let (mut vm, id) = (None, VmId::new());
    run(&mut vm, id, VmCommand::Create { spec: Box::new(VmSpec::named("a")), host: HostId::new() }).unwrap();
    let snap = |name: &str| VmCommand::TakeSnapshot { snapshot: SnapshotId::new(), name: name.into(), clones: Vec::new() };
    assert_eq!(types(&run(&mut vm, id, snap("a")).unwrap()), ["snapshot_requested", "snapshot_taken", "operation_finished"]);
    let v = vm.clone().unwrap();
    assert_eq!((v.status, v.snapshotting), (VmStatus::Running, None));
    // From standby too; never from stopped.
    run(&mut vm, id, VmCommand::Standby).unwrap();
    assert_eq!(types(&run(&mut vm, id, snap("b")).unwrap()), ["snapshot_requested", "snapshot_taken", "operation_finished"]);
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Standby);
    run(&mut vm, id, VmCommand::Restore).unwrap();
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert!(matches!(run(&mut vm, id, snap("c")), Err(DecideError::InvalidState { .. })));
    // A failed snapshot leaves the guest running and ends the snapshotting.
    run(&mut vm, id, VmCommand::Start).unwrap();
    let op = OpId::new();
    for e in decide(vm.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &snap("d")).unwrap() {
        vm = evolve(vm, id, Some(op), t0(), &e);
    }
    assert!(matches!(vm.as_ref().and_then(next_step), Some(Step::TakeSnapshot(_))));
    assert!(!Step::TakeSnapshot(SnapshotId::new()).failure_fails_vm());
    let failed = Outcome::Failed { code: "step_failed".into(), message: "no space".into() };
    vm = evolve(vm, id, Some(op), t0(), &VmEvent::OperationFinished { outcome: failed });
    let v = vm.clone().unwrap();
    assert_eq!((v.status, v.snapshotting, v.pending_op.is_none()), (VmStatus::Running, None, true));
    // Memory that can be hot-plugged is refused: a clone could not map it.
    let mut spec = VmSpec::named("h");
    spec.hotplug_memory_mib = 512;
    let mut hot =
        evolve(None, id, None, t0(), &VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: Box::new(spec), host: HostId::new() });
    hot = evolve(hot, id, None, t0(), &VmEvent::Ready);
    assert!(matches!(decide(hot.as_ref(), OrgId::DEFAULT, ProjectId::DEFAULT, &snap("e")), Err(DecideError::InvalidState { .. })));
}

#[test]
fn a_snapshot_is_deleted_whatever_its_vm_became_and_pins_the_vm_to_its_host() {
    let (mut vm, id) = (None, VmId::new());
    run(&mut vm, id, VmCommand::Create { spec: Box::new(VmSpec::named("a")), host: HostId::new() }).unwrap();
    let snapshot = SnapshotId::new();
    run(&mut vm, id, VmCommand::TakeSnapshot { snapshot, name: "s".into(), clones: Vec::new() }).unwrap();
    assert!(vm.as_ref().unwrap().snapshots.contains(&snapshot));
    run(&mut vm, id, VmCommand::Stop).unwrap();
    assert!(matches!(run(&mut vm, id, VmCommand::Move { to: HostId::new() }), Err(DecideError::InvalidState { .. })), "its snapshot stays here");
    run(&mut vm, id, VmCommand::Delete).unwrap();
    assert_eq!(vm.as_ref().unwrap().status, VmStatus::Deleted);
    let delete = VmCommand::DeleteSnapshot { snapshot };
    assert_eq!(types(&run(&mut vm, id, delete.clone()).unwrap()), ["snapshot_delete_requested", "snapshot_deleted", "operation_finished"]);
    let v = vm.clone().unwrap();
    assert_eq!((v.status, v.snapshots.len(), v.snapshotting), (VmStatus::Deleted, 0, None));
    // Again (or for a snapshot whose taking failed): whatever is left of its files goes.
    assert_eq!(types(&run(&mut vm, id, delete).unwrap()), ["snapshot_delete_requested", "snapshot_deleted", "operation_finished"]);
    assert!(vm.as_ref().unwrap().snapshots.is_empty());
}

#[test]
fn a_cancelled_create_fails_with_its_reason_and_leaves_an_existing_vm_alone() {
    let (mut vm, id) = (None, VmId::new());
    let cancel = VmCommand::CancelCreate { reason: "insufficient capacity".into() };
    assert_eq!(cancel.kind(), OpKind::Create, "it ends a create's operation");
    let refused = run(&mut vm, id, cancel.clone()).unwrap_err();
    assert_eq!((refused.code(), refused.to_string().as_str()), ("create_refused", "insufficient capacity"));
    assert!(vm.is_none(), "no VM comes of it");
    run(&mut vm, id, VmCommand::Create { spec: Box::new(VmSpec::named("a")), host: HostId::new() }).unwrap();
    assert!(matches!(run(&mut vm, id, cancel), Err(DecideError::AlreadyExists)), "a VM that exists is not cancelled");
    assert_eq!(vm.unwrap().status, VmStatus::Running);
}

#[test]
fn a_clone_that_has_run_is_flattened_once_and_nothing_else_is() {
    let (mut vm, id) = (None, VmId::new());
    run(&mut vm, id, VmCommand::Create { spec: Box::new(VmSpec::named("plain")), host: HostId::new() }).unwrap();
    assert!(matches!(run(&mut vm, id, VmCommand::Flatten), Err(DecideError::InvalidState { .. })), "not a clone");

    // A clone whose create failed before it ran: its next start still resumes the snapshot.
    let spec = Box::new(VmSpec { from_snapshot: Some(SnapshotId::new()), ..VmSpec::named("clone") });
    let (op, id) = (Some(OpId::new()), VmId::new());
    let created = VmEvent::Created { org: OrgId::DEFAULT, project: ProjectId::DEFAULT, spec: spec.clone(), host: HostId::new() };
    let mut unstarted = evolve(None, id, op, t0(), &created);
    for e in [
        VmEvent::Failed { message: "no room".into() },
        VmEvent::OperationFinished { outcome: Outcome::Failed { code: "failed".into(), message: "no room".into() } },
    ] {
        unstarted = evolve(unstarted, id, op, t0(), &e);
    }
    assert!(matches!(run(&mut unstarted, id, VmCommand::Flatten), Err(DecideError::InvalidState { .. })), "its first start needs the snapshot");

    let (mut clone, id) = (None, VmId::new());
    run(&mut clone, id, VmCommand::Create { spec, host: HostId::new() }).unwrap();
    assert_eq!(clone.as_ref().unwrap().status, VmStatus::Running);
    assert_eq!(types(&run(&mut clone, id, VmCommand::Flatten).unwrap()), ["flatten_requested", "disk_flattened", "operation_finished"]);
    assert!(clone.as_ref().unwrap().flattened);
    assert_eq!(types(&run(&mut clone, id, VmCommand::Flatten).unwrap()), ["operation_finished"], "a second flatten changes nothing");
    run(&mut clone, id, VmCommand::Stop).unwrap();
    assert_eq!(types(&run(&mut clone, id, VmCommand::Flatten).unwrap()), ["operation_finished"]);
}

#[test]
fn a_clones_disk_kept_at_its_delete_is_flattened_first() {
    let (mut clone, id) = (None, VmId::new());
    let spec = VmSpec { from_snapshot: Some(SnapshotId::new()), delete_root_disk: false, ..VmSpec::named("clone") };
    run(&mut clone, id, VmCommand::Create { spec: Box::new(spec), host: HostId::new() }).unwrap();
    let events = types(&run(&mut clone, id, VmCommand::Delete).unwrap());
    let at = |t: &str| events.iter().position(|e| *e == t).unwrap_or_else(|| panic!("no {t} in {events:?}"));
    assert!(at("disk_flattened") < at("root_disk_kept") && at("root_disk_kept") < at("deleted"), "{events:?}");
    // Its disk deleted with it, or flattened before: nothing to flatten.
    let (mut plain, id) = (None, VmId::new());
    let spec = VmSpec { from_snapshot: Some(SnapshotId::new()), ..VmSpec::named("clone") };
    run(&mut plain, id, VmCommand::Create { spec: Box::new(spec), host: HostId::new() }).unwrap();
    assert!(!types(&run(&mut plain, id, VmCommand::Delete).unwrap()).contains(&"disk_flattened"));
}
