//! Carries out one VM command: decide it against the VM's current events, then
//! run the provisioning steps the domain asks for, recording each with an
//! event. Safe to run again for the same command after a crash: a decided
//! command is recognised by its pending operation and resumed; a finished one
//! is recognised by the VM's finished operations and skipped.

use crate::aggregate::{HostAggregate, VmAggregate, VolumeAggregate, record_operation_failed};
use crate::driver::{Driver, DriverError, GuestExit};
use backoff::ExponentialBackoff;
use std::sync::Arc;
use std::time::Duration;
use vmplane_bus::{Bus, BusError};
use vmplane_domain::host::{HostCommand, HostEvent};
use vmplane_domain::spec::{DataDisk, DiskKind, VolumeMount};
use vmplane_domain::vm::{DiskInfo, Disposal, Outcome, Step, Vm, VmCommand, VmEvent, decide, next_step, step_event};
use vmplane_domain::volume::{self, VolumeCommand, VolumeEvent, VolumeSpec, VolumeStatus, VolumeStep};
use vmplane_domain::{Command, CommandEnvelope, HostId, OpId, OrgId, ProjectId, VmId, VolumeId, subjects};

/// How many times a command is decided again after losing an append race.
const MAX_CONFLICT_RETRIES: usize = 5;

/// Runs VM commands against one driver.
#[derive(Clone)]
pub struct Executor {
    pub bus: Bus,
    /// This worker's host: steps of a VM that belongs to another run there.
    pub host: HostId,
    pub driver: Arc<dyn Driver>,
    /// How long a step keeps retrying retryable driver errors before the VM fails.
    pub step_retry_for: Duration,
}

/// A volume command with its addressing.
pub struct VolumeJob {
    pub op: OpId,
    pub org: OrgId,
    pub project: ProjectId,
    pub volume: VolumeId,
    pub command: VolumeCommand,
}

/// A VM command with its addressing.
pub struct VmJob {
    pub op: OpId,
    pub org: OrgId,
    pub project: ProjectId,
    pub vm: VmId,
    pub command: VmCommand,
}

/// What [`Executor::on_vm`] does to a VM.
enum VmAction<'a> {
    Execute(&'a VmJob),
    Resume,
    Fail { op: OpId, code: &'a str, message: &'a str },
}

impl Executor {
    /// Execute `job` to completion. `agg` is the VM's cached state, reloaded on conflicts.
    /// Only bus errors escape: everything the VM itself can suffer is recorded as events.
    pub async fn execute(&self, agg: &mut Option<VmAggregate>, job: &VmJob) -> Result<(), BusError> {
        self.on_vm(agg, job.org, job.vm, &VmAction::Execute(job)).await.map(drop)
    }

    /// Record that the guest stopped on its own, unless an operation in
    /// progress owns the stop (its step notices) or the VM is already down.
    pub async fn record_exit(&self, agg: &mut Option<VmAggregate>, exit: &GuestExit) -> Result<(), BusError> {
        if agg.is_none() {
            *agg = Some(VmAggregate::load(&self.bus, exit.org, exit.vm).await?);
        }
        let a = agg.as_mut().expect("loaded above");
        let Some(vm) = &a.state else { return Ok(()) };
        if !vm.booted || vm.pending_op.is_some() {
            return Ok(());
        }
        let project = vm.project;
        let event = if exit.clean { VmEvent::Stopped { reason: exit.detail.clone() } } else { VmEvent::Failed { message: exit.detail.clone() } };
        let result = a.append(&self.bus, project, None, event).await;
        if result.is_err() {
            *agg = None;
        }
        result
    }

    /// Set straight a guest found at start against its VM's record, unless an
    /// operation is pending on the VM (its resumption decides): recorded
    /// running with the guest gone, record it stopped; running while recorded
    /// down (stopped, failed, deleted), power it off.
    pub async fn reconcile_guest(&self, agg: &mut Option<VmAggregate>, vm: VmId) -> Result<(), BusError> {
        // As it is now: jobs queued before this one (a resumed operation) may have booted it.
        let Some(guest) = self.driver.guest(vm) else { return Ok(()) };
        if agg.is_none() {
            *agg = Some(VmAggregate::load(&self.bus, guest.org, guest.vm).await?);
        }
        let Some(vm) = agg.as_ref().and_then(|a| a.state.clone()) else { return Ok(()) };
        if vm.pending_op.is_some() {
            return Ok(());
        }
        match (vm.booted, guest.running) {
            (true, false) => {
                tracing::info!(vm = %vm.id, "recorded running, but its guest is gone: recording it stopped");
                let detail = "the guest was not running when its host's worker came back".to_owned();
                self.record_exit(agg, &GuestExit { vm: vm.id, org: vm.org, clean: true, detail }).await
            }
            (false, true) => {
                tracing::warn!(vm = %vm.id, status = ?vm.status, "a guest runs that its record says is down: powering it off");
                if let Err(e) = self.driver.power_off(&vm).await {
                    tracing::error!(vm = %vm.id, error = %e, "could not power off a guest its record says is down");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn decide_and_run(&self, agg: &mut VmAggregate, job: &VmJob) -> Result<(), BusError> {
        if agg.state.as_ref().is_some_and(|v| v.has_finished(job.op)) {
            tracing::debug!(op = %job.op, "operation already finished; redelivery ignored");
            return Ok(());
        }
        let resuming = agg.state.as_ref().and_then(|v| v.pending_op.as_ref()).is_some_and(|p| p.id == job.op);
        if !resuming {
            match decide(agg.state.as_ref(), job.org, job.project, &job.command) {
                Ok(events) => {
                    for ev in events {
                        agg.append(&self.bus, job.project, Some(job.op), ev).await?;
                    }
                }
                Err(e) => {
                    let outcome = Outcome::Failed { code: e.code().into(), message: e.to_string() };
                    agg.append(&self.bus, job.project, Some(job.op), VmEvent::OperationFinished { outcome }).await?;
                    return Ok(());
                }
            }
        }
        self.run_steps(agg, job.project).await
    }

    /// Drive the VM's pending operation (whichever it is) to its end.
    async fn run_steps(&self, agg: &mut VmAggregate, project: ProjectId) -> Result<(), BusError> {
        while let Some(vm) = agg.state.clone() {
            let Some(step) = next_step(&vm) else { break };
            let op = vm.pending_op.as_ref().map(|p| p.id);
            if vm.host != self.host {
                // Handed over mid-operation (a move): the worker of its new host goes on.
                if let Some(op) = op {
                    self.resume_elsewhere(&vm, op).await?;
                }
                break;
            }
            let started = std::time::Instant::now();
            let event = match self.run_step(&vm, &step).await {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(vm = %vm.id, ?step, error = %e, "step failed");
                    metrics::counter!("vmplane_worker_step_failures_total").increment(1);
                    let message = format!("{}: {e}", step.name());
                    if step.failure_fails_vm() || matches!(e, DriverError::GuestLost(_)) {
                        // A failed VM keeps no hypervisor process; stopping it again is harmless.
                        if let Err(halt) = self.driver.halt(&vm).await {
                            tracing::warn!(vm = %vm.id, error = %halt, "could not stop the failed guest's hypervisor process");
                        }
                        VmEvent::Failed { message }
                    } else {
                        VmEvent::OperationFinished { outcome: Outcome::Failed { code: "step_failed".into(), message } }
                    }
                }
            };
            metrics::histogram!("vmplane_worker_step_seconds", "step" => step.name()).record(started.elapsed().as_secs_f64());
            agg.append(&self.bus, project, op, event).await?;
        }
        Ok(())
    }

    /// Ask the worker of the VM's (new) host to go on with operation `op`.
    async fn resume_elsewhere(&self, vm: &Vm, op: OpId) -> Result<(), BusError> {
        let cmd = CommandEnvelope {
            op,
            org: vm.org,
            project: vm.project,
            actor: format!("worker of {}", self.host),
            issued_at: time::OffsetDateTime::now_utc(),
            command: Command::Vm { vm: vm.id, command: VmCommand::ResumeMove },
        };
        tracing::info!(vm = %vm.id, to = %vm.host, %op, "handing the operation to the VM's new host");
        self.bus.publish_command_as(subjects::vm_command(vm.host, vm.id), &cmd, &format!("{op}.resume")).await.map(drop)
    }

    /// Run one step against the driver, retrying retryable errors with backoff.
    async fn run_step(&self, vm: &Vm, step: &Step) -> Result<VmEvent, DriverError> {
        let policy = ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(5),
            max_elapsed_time: Some(self.step_retry_for),
            ..Default::default()
        };
        backoff::future::retry(policy, || async {
            self.call_driver(vm, step).await.map_err(|e| match e {
                DriverError::Retryable(_) => backoff::Error::transient(e),
                DriverError::Fatal(_) | DriverError::GuestLost(_) => backoff::Error::permanent(e),
            })
        })
        .await
    }

    async fn call_driver(&self, vm: &Vm, step: &Step) -> Result<VmEvent, DriverError> {
        let d = &self.driver;
        match step {
            Step::AllocateNetwork => return Ok(VmEvent::NetworkAllocated { network: d.allocate_network(vm).await? }),
            Step::PrepareDisk => {
                let disk = match vm.spec.root_volume {
                    Some(root) => self.claim_root_volume(vm, root).await?,
                    None => d.prepare_disk(vm).await?,
                };
                return Ok(VmEvent::DiskPrepared { disk });
            }
            Step::Boot => d.boot(vm).await?,
            Step::AwaitReady => d.wait_ready(vm).await?,
            Step::PowerOff => d.power_off(vm).await?,
            Step::Reboot => d.reboot(vm).await?,
            Step::Snapshot => d.snapshot(vm).await?,
            Step::RestoreSnapshot => d.restore(vm).await?,
            Step::DeleteSnapshot(snapshot) => d.delete_snapshot(*snapshot).await?,
            Step::FlattenDisk => d.flatten_disk(vm).await?,
            Step::TakeSnapshot(snapshot) => return Ok(VmEvent::SnapshotTaken { snapshot: *snapshot, taken: d.take_snapshot(vm, *snapshot).await? }),
            Step::Destroy => {
                d.destroy(vm).await?;
                for (id, disposal) in vm.disposal() {
                    match disposal {
                        Disposal::Release => self.release_volume(vm, id).await?,
                        Disposal::Delete => self.delete_with_vm(vm, id).await?,
                    }
                }
            }
            Step::CreateDataDisk { mount, disk } => self.create_data_disk(vm, mount, disk).await?,
            Step::KeepRootDisk(id) => self.keep_root_disk(vm, *id).await?,
            Step::AttachAtCreate(mount) | Step::AttachVolume(mount) => self.attach_volume(vm, mount).await?,
            Step::PlugMemory(total) => d.plug_memory(vm, *total).await?,
            Step::DetachVolume(volume) => {
                if let Some(mount) = vm.volumes.iter().find(|m| m.volume_id == *volume) {
                    d.detach_volume(vm, mount).await?;
                }
                self.release_volume(vm, *volume).await?;
            }
            Step::ExportDisk => {
                let file = d.export_disk(vm).await?;
                self.bus.put_moving_disk(&vm.id.to_string(), &file).await.map_err(|e| DriverError::Retryable(e.to_string()))?;
                let _ = tokio::fs::remove_file(&file).await;
            }
            // The disk is in the moves bucket: this host's copy and addresses go.
            Step::HandOver { .. } => d.destroy(vm).await?,
            Step::ImportDisk => {
                let name = vm.id.to_string();
                let retry = |e: BusError| DriverError::Retryable(e.to_string());
                let incoming = d.import_path(vm.id);
                if let Some(dir) = incoming.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| DriverError::Retryable(e.to_string()))?;
                }
                self.bus.get_moving_disk(&name, &incoming).await.map_err(retry)?;
                let disk = d.import_disk(vm).await?;
                self.bus.delete_moving_disk(&name).await.map_err(retry)?;
                return Ok(VmEvent::DiskImported { disk });
            }
            Step::BeginProvisioning | Step::Finish(_) => {}
        }
        Ok(step_event(step).expect("every step without a driver payload has a fixed event"))
    }

    /// Claim the volume for the VM (an event on the volume, so two VMs cannot
    /// both hold it), then plug it in; give the claim back if plugging fails.
    async fn attach_volume(&self, vm: &Vm, mount: &VolumeMount) -> Result<(), DriverError> {
        let bus_err = |e: BusError| DriverError::Retryable(e.to_string());
        let mut vol = VolumeAggregate::load(&self.bus, vm.org, mount.volume_id).await.map_err(bus_err)?;
        if let Some(claim) = volume::claim(vol.state.as_ref(), vm.id, vm.host).map_err(|e| DriverError::Fatal(e.to_string()))? {
            vol.append(&self.bus, vm.project, None, claim).await.map_err(bus_err)?;
        }
        let location = vol.state.as_ref().and_then(|v| v.location.clone()).ok_or_else(|| DriverError::Fatal("volume has no storage".into()))?;
        if let Err(e) = self.driver.attach_volume(vm, &location, mount).await {
            if matches!(e, DriverError::Fatal(_)) {
                self.release_volume(vm, mount.volume_id).await?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Claim the root volume the VM boots from; it is the VM's root disk.
    async fn claim_root_volume(&self, vm: &Vm, id: VolumeId) -> Result<DiskInfo, DriverError> {
        let bus_err = |e: BusError| DriverError::Retryable(e.to_string());
        let mut vol = VolumeAggregate::load(&self.bus, vm.org, id).await.map_err(bus_err)?;
        if let Some(claim) = volume::claim_root(vol.state.as_ref(), vm.id, vm.host, &vm.spec.image).map_err(|e| DriverError::Fatal(e.to_string()))? {
            vol.append(&self.bus, vm.project, None, claim).await.map_err(bus_err)?;
        }
        let v = vol.state.as_ref().expect("claimed above");
        let location = v.location.clone().ok_or_else(|| DriverError::Fatal("root volume has no storage".into()))?;
        Ok(DiskInfo { location, size_gb: v.spec.size_gb })
    }

    /// Create a data disk as a volume of the VM, attached to it from the
    /// start (so no one else can claim it), and plug it in.
    async fn create_data_disk(&self, vm: &Vm, mount: &VolumeMount, disk: &DataDisk) -> Result<(), DriverError> {
        let spec = VolumeSpec { name: disk.name.clone(), size_gb: disk.size_gb, kind: disk.kind };
        let location = self.make_volume(vm, mount.volume_id, spec, Some(vm.id), None).await?;
        self.driver.attach_volume(vm, &location, mount).await
    }

    /// Make the VM's root disk the root-disk volume `id`: free, holding the VM's image.
    async fn keep_root_disk(&self, vm: &Vm, id: VolumeId) -> Result<(), DriverError> {
        let size_gb = vm.root_disk.as_ref().map_or(vm.spec.disk_gb, |d| d.size_gb);
        let name = vm.spec.root_disk_name.clone().unwrap_or_else(|| vm.spec.name.clone());
        let spec = VolumeSpec { name, size_gb, kind: DiskKind::Filesystem };
        self.make_volume(vm, id, spec, None, Some(vm.spec.image.clone())).await.map(drop)
    }

    /// Create volume `id` for the VM unless it exists, then its storage
    /// unless it has some: for a root disk (`image`), the VM's root disk moved
    /// there. Returns where the storage is.
    async fn make_volume(&self, vm: &Vm, id: VolumeId, spec: VolumeSpec, attached_to: Option<VmId>, image: Option<String>) -> Result<String, DriverError> {
        let bus_err = |e: BusError| DriverError::Retryable(e.to_string());
        let mut vol = VolumeAggregate::load(&self.bus, vm.org, id).await.map_err(bus_err)?;
        if vol.state.is_none() {
            let created = VolumeEvent::VolumeCreated { org: vm.org, project: vm.project, spec, host: vm.host, attached_to, image };
            vol.append(&self.bus, vm.project, None, created).await.map_err(bus_err)?;
        }
        let v = vol.state.clone().expect("created above");
        if let Some(location) = v.location {
            return Ok(location);
        }
        let location = match v.image {
            Some(_) => self.driver.keep_root_disk(vm, id).await?,
            None => self.driver.create_volume(&v).await?,
        };
        vol.append(&self.bus, vm.project, None, VolumeEvent::VolumeReady { location: location.clone() }).await.map_err(bus_err)?;
        Ok(location)
    }

    /// Delete the VM's own data disk with it, if the VM still holds it.
    async fn delete_with_vm(&self, vm: &Vm, id: VolumeId) -> Result<(), DriverError> {
        let bus_err = |e: BusError| DriverError::Retryable(e.to_string());
        let mut vol = VolumeAggregate::load(&self.bus, vm.org, id).await.map_err(bus_err)?;
        if let Some(ev) = volume::delete_with(vol.state.as_ref(), vm.id) {
            vol.append(&self.bus, vm.project, None, ev).await.map_err(bus_err)?;
        }
        match vol.state.clone() {
            Some(v) if v.attached_to == Some(vm.id) && v.status == VolumeStatus::Deleting => {
                self.driver.delete_volume(&v).await?;
                vol.append(&self.bus, vm.project, None, VolumeEvent::VolumeDeleted).await.map_err(bus_err)
            }
            _ => Ok(()),
        }
    }

    /// Give a volume's claim back, if the VM holds it.
    async fn release_volume(&self, vm: &Vm, id: VolumeId) -> Result<(), DriverError> {
        let bus_err = |e: BusError| DriverError::Retryable(e.to_string());
        let mut vol = VolumeAggregate::load(&self.bus, vm.org, id).await.map_err(bus_err)?;
        if let Some(ev) = volume::release(vol.state.as_ref(), vm.id) {
            vol.append(&self.bus, vm.project, None, ev).await.map_err(bus_err)?;
        }
        Ok(())
    }

    /// Execute a host command: import an image and record the outcome on the host.
    pub async fn execute_host(&self, op: OpId, host: HostId, command: &HostCommand) -> Result<(), BusError> {
        let HostCommand::ImportImage { name, source, format } = command;
        let mut agg = HostAggregate::load(&self.bus, OrgId::DEFAULT, host).await?;
        let already = agg.state.as_ref().is_some_and(|h| h.images.iter().any(|i| i.name == *name));
        if already && self.driver.host_info().images.iter().any(|i| i.name == *name) {
            // A redelivered import that already succeeded.
            return Ok(());
        }
        let event = match self.driver.import_image(name, std::path::Path::new(source), *format).await {
            Ok(image) => HostEvent::ImageImported { image },
            Err(e) => HostEvent::ImageImportFailed { name: name.clone(), message: e.to_string() },
        };
        agg.append(&self.bus, ProjectId::DEFAULT, Some(op), event).await
    }

    /// Execute a volume command: decide it, then create or delete the storage.
    pub async fn execute_volume(&self, job: &VolumeJob) -> Result<(), BusError> {
        let mut agg = VolumeAggregate::load(&self.bus, job.org, job.volume).await?;
        let resuming = agg.state.as_ref().is_some_and(|v| v.pending_op == Some(job.op));
        if !resuming {
            match volume::decide(agg.state.as_ref(), job.org, job.project, &job.command) {
                Ok(events) => {
                    for ev in events {
                        agg.append(&self.bus, job.project, Some(job.op), ev).await?;
                    }
                }
                Err(e) => {
                    let outcome = Outcome::Failed { code: e.code().into(), message: e.to_string() };
                    return agg.append(&self.bus, job.project, Some(job.op), VolumeEvent::VolumeOperationFinished { outcome }).await;
                }
            }
        }
        self.run_volume_steps(&mut agg).await
    }

    /// Drive the volume's pending operation (whichever it is) to its end.
    async fn run_volume_steps(&self, agg: &mut VolumeAggregate) -> Result<(), BusError> {
        while let Some(v) = agg.state.clone() {
            let Some(step) = volume::next_step(&v) else { break };
            let op = v.pending_op;
            let event = match step {
                VolumeStep::Create => match self.driver.create_volume(&v).await {
                    Ok(location) => VolumeEvent::VolumeReady { location },
                    Err(e) => VolumeEvent::VolumeFailed { message: format!("create: {e}") },
                },
                VolumeStep::Delete => match self.driver.delete_volume(&v).await {
                    Ok(()) => VolumeEvent::VolumeDeleted,
                    Err(e) => VolumeEvent::VolumeFailed { message: format!("delete: {e}") },
                },
                VolumeStep::Finish(outcome) => VolumeEvent::VolumeOperationFinished { outcome },
            };
            agg.append(&self.bus, v.project, op, event).await?;
        }
        Ok(())
    }

    /// Drive an operation left pending on a VM to its end, as a redelivered
    /// command would (used when its command is gone).
    pub async fn resume_vm(&self, agg: &mut Option<VmAggregate>, org: OrgId, vm: VmId) -> Result<(), BusError> {
        self.on_vm(agg, org, vm, &VmAction::Resume).await.map(drop)
    }

    /// Drive an operation left pending on a volume to its end.
    pub async fn resume_volume(&self, org: OrgId, volume: VolumeId) -> Result<(), BusError> {
        let mut agg = VolumeAggregate::load(&self.bus, org, volume).await?;
        self.run_volume_steps(&mut agg).await
    }

    /// Give up on a VM operation: it ends as failed with `code` and `message`.
    /// When it is the VM's operation in progress and its next step would have
    /// touched the guest, the VM fails too (so it is not left busy), and its
    /// guest is powered off, best effort, once the failure is recorded.
    /// Never runs the step the operation was stuck at: that step may be what
    /// keeps crashing the worker.
    pub async fn fail_vm_op(&self, agg: &mut Option<VmAggregate>, org: OrgId, vm: VmId, op: OpId, code: &str, message: &str) -> Result<(), BusError> {
        let failed_vm = self.on_vm(agg, org, vm, &VmAction::Fail { op, code, message }).await?;
        if let Some(vm) = failed_vm
            && let Err(e) = self.driver.power_off(&vm).await
        {
            tracing::warn!(vm = %vm.id, error = %e, "could not power off the guest of a vm failed by giving up on its command");
        }
        Ok(())
    }

    /// Run `action` against the VM, reloading and retrying when another writer
    /// got there first. Returns the VM when the action failed it.
    async fn on_vm(&self, agg: &mut Option<VmAggregate>, org: OrgId, vm: VmId, action: &VmAction<'_>) -> Result<Option<Vm>, BusError> {
        for attempt in 0..MAX_CONFLICT_RETRIES {
            if agg.is_none() {
                // A create's VM is new unless the command is redelivered, which
                // its first append finds out (a conflict): skip the read then.
                let creates = matches!(action, VmAction::Execute(VmJob { command: VmCommand::Create { .. }, .. }));
                *agg = Some(if attempt == 0 && creates { VmAggregate::presumed_new(org, vm) } else { VmAggregate::load(&self.bus, org, vm).await? });
            }
            let a = agg.as_mut().expect("loaded above");
            let result = match action {
                VmAction::Execute(job) => self.decide_and_run(a, job).await.map(|()| None),
                VmAction::Resume => match a.state.as_ref().map(|v| v.project) {
                    Some(project) => self.run_steps(a, project).await.map(|()| None),
                    None => Ok(None),
                },
                VmAction::Fail { op, code, message } => self.fail_pending(a, *op, code, message).await,
            };
            match result {
                Err(BusError::Conflict { subject }) => {
                    tracing::info!(%subject, "append conflict; reloading");
                    *agg = None;
                }
                Err(e) => {
                    *agg = None;
                    return Err(e);
                }
                Ok(failed) => return Ok(failed),
            }
        }
        Err(BusError::Other(format!("{vm}: too many concurrent writers")))
    }

    /// See [`Self::fail_vm_op`]; returns the VM if it failed it.
    async fn fail_pending(&self, a: &mut VmAggregate, op: OpId, code: &str, message: &str) -> Result<Option<Vm>, BusError> {
        let Some(vm) = a.state.clone() else {
            record_operation_failed(&self.bus, Some(a.org), op, &a.id.to_string(), code, message.to_owned()).await?;
            return Ok(None);
        };
        if vm.has_finished(op) {
            return Ok(None);
        }
        let stuck_step = vm.pending_op.as_ref().filter(|p| p.id == op).and_then(|_| next_step(&vm));
        let mut failed = None;
        if stuck_step.is_some_and(|s| s.failure_fails_vm() && !matches!(s, Step::Finish(_))) {
            a.append(&self.bus, vm.project, Some(op), VmEvent::Failed { message: message.to_owned() }).await?;
            failed = a.state.clone();
        }
        let outcome = Outcome::Failed { code: code.to_owned(), message: message.to_owned() };
        a.append(&self.bus, vm.project, Some(op), VmEvent::OperationFinished { outcome }).await?;
        Ok(failed)
    }

    /// End a queued command's operation as failed before it began (its host
    /// was unavailable too long): nothing happens to the VM, and a later
    /// delivery of the command finds the operation finished. One the VM has
    /// begun (its pending operation) is left to finish; so is one already
    /// finished. A create has no VM yet: its operation ends on its own subject.
    pub async fn fail_queued(&self, org: OrgId, vm: VmId, op: OpId, code: &str, message: &str) -> Result<(), BusError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let mut a = VmAggregate::load(&self.bus, org, vm).await?;
            let Some(state) = a.state.clone() else {
                return record_operation_failed(&self.bus, Some(org), op, &vm.to_string(), code, message.to_owned()).await;
            };
            if state.has_finished(op) || state.pending_op.as_ref().is_some_and(|p| p.id == op) {
                return Ok(());
            }
            let outcome = Outcome::Failed { code: code.to_owned(), message: message.to_owned() };
            match a.append(&self.bus, state.project, Some(op), VmEvent::OperationFinished { outcome }).await {
                Err(BusError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(BusError::Other(format!("{vm}: too many concurrent writers")))
    }

    /// Give up on a volume operation: it ends as failed (and the volume with it,
    /// when the operation was creating or deleting its storage).
    pub async fn fail_volume_op(&self, org: OrgId, volume: VolumeId, op: OpId, code: &str, message: &str) -> Result<(), BusError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let mut agg = VolumeAggregate::load(&self.bus, org, volume).await?;
            let Some(state) = agg.state.clone() else {
                return record_operation_failed(&self.bus, Some(org), op, &volume.to_string(), code, message.to_owned()).await;
            };
            let outcome = Outcome::Failed { code: code.to_owned(), message: message.to_owned() };
            let result = async {
                if state.pending_op == Some(op) {
                    agg.append(&self.bus, state.project, Some(op), VolumeEvent::VolumeFailed { message: message.to_owned() }).await?;
                }
                agg.append(&self.bus, state.project, Some(op), VolumeEvent::VolumeOperationFinished { outcome }).await
            };
            match result.await {
                Err(BusError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(BusError::Other(format!("{volume}: too many concurrent writers")))
    }

    /// Give up on an image import: the host records it as failed.
    pub async fn fail_host_op(&self, host: HostId, op: OpId, command: &HostCommand, message: &str) -> Result<(), BusError> {
        let HostCommand::ImportImage { name, .. } = command;
        let mut agg = HostAggregate::load(&self.bus, OrgId::DEFAULT, host).await?;
        agg.append(&self.bus, ProjectId::DEFAULT, Some(op), HostEvent::ImageImportFailed { name: name.clone(), message: message.to_owned() }).await
    }
}
