//! Snapshots that new VMs resume from, by QEMU memory templating (see
//! `../shared/notes` and ARCHITECTURE.md, "Snapshots").
//!
//! Taking one pauses the guest only while its full state is streamed to a
//! file and its root disk is copied. A second, network-less qemu then loads
//! that state into guest RAM backed by the shared file `memory` and saves
//! again with `x-ignore-shared`: what remains is the device state alone. A
//! clone maps `memory` privately (`share=off`), so clones share its pages
//! in the host's page cache until they write them, loads the device state
//! and runs; its root disk is a qcow2 overlay on the snapshot's frozen copy.
//! QEMU 7.2 opens the memory file read-write even for a private mapping, so
//! the file stays writable by the worker's user (8.2 adds `readonly=on,rom=off`).

use super::layout::{SnapshotDir, VmDir, write_private};
use super::process::{Start, running_pid};
use super::qmp::Qmp;
use super::{MIGRATION_LIMIT, QemuDriver, agent, fatal, resume, retry, wait_gone};
use crate::driver::{Driver, DriverError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmplane_domain::SnapshotId;
use vmplane_domain::vm::{SnapshotTaken, Vm};

/// How long a clone's agent may take to answer its identity.
const AGENT_PATIENCE: Duration = Duration::from_secs(10);
/// How long a snapshot waits for the source's agent to answer a `ping`
/// (it polls every 0.25 s when no host is connected).
const AGENT_SETTLE: Duration = Duration::from_secs(1);

/// The snapshot a VM resumes from on this start: a clone's first start only;
/// once it has been ready, a clone boots from its own disk like any VM.
pub fn resumes_from(vm: &Vm) -> Option<SnapshotId> {
    vm.spec.from_snapshot.filter(|_| vm.started_at.is_none())
}

impl SnapshotDir {
    /// This snapshot, once it was completed on this host. Until then the
    /// step is retried: a fork's clones are created while it is being taken
    /// (the gateway never lets a clone name a snapshot of another host).
    pub fn ready(self) -> Result<Self, DriverError> {
        if self.info().exists() { Ok(self) } else { Err(retry(format!("snapshot {} is not ready on this host yet", snapshot_name(&self)))) }
    }

    /// [`Self::ready`], watched for a while first: a fork's clone starts as
    /// soon as its snapshot is complete, not at the executor's next backoff
    /// (which grows to seconds while a snapshot takes one or two).
    pub async fn ready_within(self, patience: Duration) -> Result<Self, DriverError> {
        let deadline = Instant::now() + patience;
        while !self.info().exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.ready()
    }
}

/// The name of a templating qemu's tap: `vs` and the end of the snapshot
/// id, within IFNAMSIZ and apart from VMs' taps (`vt...`).
fn template_tap(dir: &SnapshotDir) -> String {
    let name = snapshot_name(dir);
    format!("vs{}", &name[name.len().saturating_sub(12)..])
}

fn snapshot_name(dir: &SnapshotDir) -> String {
    dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_info(dir: &SnapshotDir) -> Option<SnapshotTaken> {
    std::fs::read(dir.info()).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Copy `from` to `to` through a temporary file, so `to` is whole or absent.
fn copy_whole(from: &Path, to: &Path) -> Result<(), DriverError> {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp).map_err(|e| retry(format!("copying {}: {e}", from.display())))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(retry)?;
    std::fs::rename(&tmp, to).map_err(retry)
}

/// A fresh, empty file only the worker's user may read, for the templating
/// qemu to size and fill with guest RAM (a file qemu created would take its
/// umask, 027). Preallocating it was tried: loading was no faster here.
fn create_private(path: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map(drop).map_err(retry)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl QemuDriver {
    pub(super) fn snapshot_dir(&self, snap: SnapshotId) -> SnapshotDir {
        SnapshotDir::new(&self.cfg.dir, snap)
    }

    /// See the module docs. Idempotent: a completed snapshot is returned as
    /// it is; an interrupted one is made again from the start.
    pub(super) async fn snapshot_vm(&self, vm: &Vm, snap: SnapshotId) -> Result<SnapshotTaken, DriverError> {
        let sd = self.snapshot_dir(snap);
        if let Some(done) = read_info(&sd) {
            return Ok(done);
        }
        sd.create().map_err(retry)?;
        self.stop_template(vm, &sd.work()).await;
        let dir = self.dir(vm.id);
        let disk = vm.root_disk.as_ref().map_or_else(|| dir.root_disk(), |d| PathBuf::from(&d.location));
        let captured = async {
            if running_pid(&dir, vm).is_some() {
                self.capture_running(vm, &dir, &sd, &disk).await
            } else if dir.snapshot().exists() {
                // In standby: its saved state is already a full one, its disk idle.
                copy_whole(&dir.snapshot(), &sd.full_state())?;
                copy_whole(&disk, &sd.disk())?;
                Ok(0)
            } else {
                Err(fatal("the vm is neither running nor in standby"))
            }
        };
        // The templating qemu waits for the state while it is being captured.
        let (launched, captured) = tokio::join!(self.launch_template(vm, &dir, &sd), captured);
        let (launch, pause_ms) = match (launched, captured) {
            (Ok(launch), Ok(pause_ms)) => (launch, pause_ms),
            (_, Err(e)) | (Err(e), Ok(_)) => {
                self.stop_template(vm, &sd.work()).await;
                return Err(e);
            }
        };
        self.make_template(vm, &sd, launch).await?;
        let taken = SnapshotTaken { size_bytes: [sd.disk(), sd.memory(), sd.devices()].iter().map(|p| file_size(p)).sum(), pause_ms };
        write_private(&sd.info(), &serde_json::to_vec(&taken).map_err(fatal)?).map_err(retry)?;
        Ok(taken)
    }

    /// Pause the guest, stream its full state to the snapshot and copy its
    /// root disk (QEMU flushed it when the guest stopped), then let it go
    /// on; returns how long it was paused, in ms.
    async fn capture_running(&self, vm: &Vm, dir: &VmDir, sd: &SnapshotDir, disk: &Path) -> Result<u64, DriverError> {
        let partial = sd.full_state().with_extension("partial");
        let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
        // A capture cut short (its worker killed after the save) left the
        // guest paused after a completed migration, which QEMU will not
        // migrate again: let it run first.
        if q.status().await.map_err(retry)? == "postmigrate" {
            tracing::warn!(vm = %vm.id, "resuming a guest an interrupted snapshot left paused");
            q.execute("cont", None).await.map_err(retry)?;
        }
        // The guest agent, caught reading a connected channel, stays so in
        // the saved state: a clone whose channel is connected before its
        // state loads reads its identity at once instead of at its next
        // poll (up to 0.25 s). Best effort: a busy agent is not waited for.
        let agent = match agent::Held::waiting(dir, AGENT_SETTLE).await {
            Ok(held) => Some(held),
            Err(e) => {
                tracing::debug!(vm = %vm.id, error = %e, "the agent was not caught reading; clones will find it polling");
                None
            }
        };
        let paused_at = Instant::now();
        let saved = async {
            q.execute("stop", None).await?;
            q.save_state(&partial, MIGRATION_LIMIT).await
        }
        .await;
        // QEMU serves one QMP client at a time: let go of this one first.
        drop(q);
        drop(agent);
        let copied = match &saved {
            Ok(()) => copy_whole(disk, &sd.disk()).and_then(|()| std::fs::rename(&partial, sd.full_state()).map_err(retry)),
            Err(_) => Ok(()),
        };
        let resumed = resume(dir).await;
        let pause_ms = paused_at.elapsed().as_millis() as u64;
        if let Err(r) = resumed {
            self.halt(vm).await?;
            return Err(DriverError::GuestLost(format!("the guest could not be resumed after its snapshot ({r})")));
        }
        saved.map_err(|e| fatal(format!("saving the guest's state failed ({e}); the guest was resumed")))?;
        copied?;
        tracing::info!(vm = %vm.id, pause_ms, "snapshot captured");
        Ok(pause_ms)
    }

    /// Start the network-less qemu that turns a full state into a template,
    /// paused until the state is loaded; returns how long its start took.
    async fn launch_template(&self, vm: &Vm, dir: &VmDir, sd: &SnapshotDir) -> Result<Duration, DriverError> {
        let work = sd.work();
        work.create().map_err(retry)?;
        copy_whole(&dir.seed(), &work.seed())?;
        create_private(&sd.memory())?;
        let image = self.image(vm)?;
        let network = vm.network.clone().unwrap_or_default();
        // A source on a tap (bridge mode): a detached tap of the template's own.
        let tap = super::allocated(dir).and_then(|a| a.tap).map(|_| template_tap(sd));
        let start = Start::Template { memory: sd.memory(), tap };
        let t0 = Instant::now();
        self.launch(vm, &image, &work, &network, start).await?.spawn().await.map_err(fatal)?;
        Ok(t0.elapsed())
    }

    /// Turn the full state into guest RAM in `memory` plus the device state,
    /// in the templating qemu [`Self::launch_template`] started.
    async fn make_template(&self, vm: &Vm, sd: &SnapshotDir, launch: Duration) -> Result<(), DriverError> {
        let work = sd.work();
        let t0 = Instant::now();
        let devices = sd.devices().with_extension("partial");
        let converted = async {
            let mut q = Qmp::connect(&work.qmp()).await?;
            q.load_state(&sd.full_state(), MIGRATION_LIMIT).await?;
            let loaded = t0.elapsed();
            q.ignore_shared(true).await?;
            q.save_state(&devices, MIGRATION_LIMIT).await.map(|()| loaded)
        }
        .await;
        let converted_at = t0.elapsed();
        self.stop_template(vm, &work).await;
        let loaded = converted.map_err(|e| fatal(format!("turning the saved state into a template failed: {e}")))?;
        let stopped = t0.elapsed();
        for file in [&devices, &sd.memory()] {
            std::fs::File::open(file).and_then(|f| f.sync_all()).map_err(retry)?;
        }
        std::fs::rename(&devices, sd.devices()).map_err(retry)?;
        let _ = std::fs::remove_file(sd.full_state());
        let ms = |d: Duration| d.as_millis() as u64;
        tracing::info!(
            vm = %vm.id,
            launch_ms = ms(launch),
            load_ms = ms(loaded),
            save_ms = ms(converted_at - loaded),
            stop_ms = ms(stopped - converted_at),
            sync_ms = ms(t0.elapsed() - stopped),
            "snapshot template made"
        );
        Ok(())
    }

    /// Stop a templating qemu (of this or an interrupted attempt) and remove its directory.
    async fn stop_template(&self, vm: &Vm, work: &VmDir) {
        if running_pid(work, vm).is_some() {
            if let Ok(mut q) = Qmp::connect(&work.qmp()).await {
                let _ = q.execute("quit", None).await;
            }
            if !wait_gone(work, vm, Duration::from_secs(5)).await
                && let Some(pid) = running_pid(work, vm)
            {
                super::signal(pid, libc::SIGKILL);
                wait_gone(work, vm, Duration::from_secs(5)).await;
            }
        }
        let _ = std::fs::remove_dir_all(work.path());
    }

    /// Flatten a clone's root disk: a running guest's qemu streams the
    /// snapshot's data into the overlay and drops the backing file
    /// (`block-stream`), else `qemu-img rebase` onto nothing does the same.
    /// Its memory needs nothing: a running clone's mapping of the snapshot's
    /// file outlives the file, and any later start boots from the disk.
    pub(super) async fn flatten_clone(&self, vm: &Vm) -> Result<(), DriverError> {
        let dir = self.dir(vm.id);
        let disk = vm.root_disk.as_ref().map_or_else(|| dir.root_disk(), |d| PathBuf::from(&d.location));
        if backing_file(&disk).await?.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        if running_pid(&dir, vm).is_some() {
            let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
            q.stream_disk("root", MIGRATION_LIMIT).await.map_err(|e| fatal(format!("streaming the snapshot's disk into the clone's failed: {e}")))?;
        } else {
            super::qemu_img(["rebase", "-f", "qcow2", "-b", ""].map(std::ffi::OsStr::new), [disk.as_os_str()]).await?;
        }
        match backing_file(&disk).await? {
            None => {
                tracing::info!(vm = %vm.id, ms = started.elapsed().as_millis() as u64, "clone's disk flattened");
                Ok(())
            }
            Some(left) => Err(fatal(format!("the clone's disk still has a backing file ({left}) after flattening"))),
        }
    }

    /// Load a clone's device state (its RAM is the snapshot's file) and run
    /// it; a clone already loaded or running is left as it is.
    pub(super) async fn resume_clone(&self, dir: &VmDir, snap: SnapshotId) -> Result<(), DriverError> {
        let sd = self.snapshot_dir(snap).ready()?;
        let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
        if q.status().await.map_err(retry)? == "inmigrate" {
            q.ignore_shared(true).await.map_err(retry)?;
            q.load_state(&sd.devices(), MIGRATION_LIMIT).await.map_err(|e| fatal(format!("resuming from snapshot {snap} failed: {e}")))?;
            // A standby of the clone later saves all of its (private) RAM.
            q.ignore_shared(false).await.map_err(retry)?;
        }
        if q.status().await.map_err(retry)? != "running" {
            q.execute("cont", None).await.map_err(fatal)?;
        }
        Ok(())
    }
}

/// The backing file a qcow2 image names, if any.
async fn backing_file(image: &Path) -> Result<Option<String>, DriverError> {
    Ok(super::qcow2_info(image).await?.get("backing-filename").and_then(|b| b.as_str()).map(str::to_owned))
}

/// At start, no snapshot is being taken on this host: stop any templating
/// qemu a crashed worker left (by the pid file in its `work` directory,
/// checked against `/proc` to be a vmplane qemu) and remove its directory.
/// The snapshot itself is made again if its operation is retried.
pub fn sweep_templates(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join("snapshots")) else { return };
    for entry in entries.flatten() {
        let work = VmDir::at(entry.path().join("work"));
        if !work.path().exists() {
            continue;
        }
        let pid = std::fs::read_to_string(work.pid()).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|pid| is_vmplane_qemu(*pid)) {
            tracing::warn!(pid, dir = %work.path().display(), "stopping a templating qemu left by an earlier worker");
            super::signal(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(work.path());
    }
}

/// Whether `pid` is a live qemu that vmplane started (its `-name` says so).
fn is_vmplane_qemu(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a.starts_with(b"vmplane-vm_")))
}

/// Tell a clone's guest agent who it is now (instance id, hostname, MAC,
/// fresh entropy, and in bridge mode its static `ADDR/PREFIX,GATEWAY`; else
/// it keeps its source's address, the same on every user-mode guest): the
/// clone is `running` once the agent says it is done. On the channel held
/// since before its state loaded, if there is one.
pub async fn take_identity(vm: &Vm, dir: &VmDir, static_net: Option<&str>, held: Option<agent::Held>, patience: Duration) -> Result<(), DriverError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).map_err(retry)?;
    let seed: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let mac = vm.network.as_ref().and_then(|n| n.mac.clone()).filter(|_| vm.spec.network.enabled).unwrap_or_else(|| "-".into());
    let mut command = format!("identity {} {} {} {seed}", vm.id, vm.spec.name, mac.to_ascii_lowercase());
    if let Some(net) = static_net.filter(|_| vm.spec.network.enabled) {
        command.push(' ');
        command.push_str(net);
    }
    if let Some(held) = held {
        match held.call(&command, AGENT_PATIENCE).await {
            Err(DriverError::Retryable(e)) => tracing::debug!(vm = %vm.id, error = %e, "clone's held agent channel failed; connecting again"),
            done => return done,
        }
    }
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match agent::call(dir, &command, AGENT_PATIENCE).await {
            Err(DriverError::Retryable(e)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(vm = %vm.id, error = %e, "clone's agent not reachable yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_templating_directory_is_removed_and_only_a_vmplane_qemu_is_killed() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("snapshots").join(SnapshotId::new().to_string()).join("work");
        std::fs::create_dir_all(&work).unwrap();
        // Our own pid: alive, but not a vmplane qemu, so it must survive the sweep.
        std::fs::write(work.join("qemu.pid"), std::process::id().to_string()).unwrap();
        assert!(!is_vmplane_qemu(std::process::id() as i32));
        sweep_templates(root.path());
        assert!(!work.exists(), "the work directory is gone");
        assert!(work.parent().unwrap().exists(), "the snapshot's own files stay");
    }

    #[test]
    fn the_memory_file_is_made_private_and_replaces_a_left_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        std::fs::write(&path, b"left by an interrupted attempt").unwrap();
        create_private(&path).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.len(), m.permissions().mode() & 0o777), (0, 0o600));
    }

    #[test]
    fn only_a_clones_first_start_resumes() {
        let created = vmplane_domain::vm::VmEvent::Created {
            org: vmplane_domain::OrgId::DEFAULT,
            project: vmplane_domain::ProjectId::DEFAULT,
            spec: Box::new(vmplane_domain::spec::VmSpec { from_snapshot: Some(SnapshotId::new()), ..vmplane_domain::spec::VmSpec::named("c") }),
            host: vmplane_domain::HostId::new(),
        };
        let now = time::OffsetDateTime::now_utc();
        let vm = vmplane_domain::vm::evolve(None, vmplane_domain::VmId::new(), None, now, &created).unwrap();
        assert!(resumes_from(&vm).is_some());
        let ready = vmplane_domain::vm::evolve(Some(vm), vmplane_domain::VmId::new(), None, now, &vmplane_domain::vm::VmEvent::Ready).unwrap();
        assert_eq!(resumes_from(&ready), None, "once ready, a clone boots from its own disk");
    }
}
