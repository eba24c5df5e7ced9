//! Hypervisor drivers: the edge where provisioning steps touch a real (or
//! simulated) hypervisor.
//!
//! Every method must be idempotent: the worker may call it again after a
//! crash, and a method that finds its work already done returns success
//! without doing it twice (a second `boot` of a running guest adopts it).

pub mod capacity;
pub mod qemu;
pub mod sim;

use async_trait::async_trait;
use std::path::PathBuf;
use tokio::sync::mpsc;
use vmplane_domain::host::{HostInfo, ImageFormat, ImageInfo};
use vmplane_domain::spec::VolumeMount;
use vmplane_domain::subjects::WindowSize;
use vmplane_domain::vm::{DiskInfo, NetworkRuntime, SnapshotTaken, Vm};
use vmplane_domain::volume::Volume;
use vmplane_domain::{OrgId, SnapshotId, VmId, VolumeId};

/// A guest that stopped without being asked to: the worker records it as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestExit {
    pub vm: VmId,
    pub org: OrgId,
    /// The guest powered itself off (rather than crashing or being killed).
    pub clean: bool,
    pub detail: String,
}

/// A guest this host holds state for, as the driver finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    pub vm: VmId,
    pub org: OrgId,
    /// Its hypervisor process runs.
    pub running: bool,
}

/// A running guest's serial console log, which the worker ships to JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    pub vm: VmId,
    pub org: OrgId,
    pub log: PathBuf,
}

/// Why a driver call failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// Temporary trouble (a busy socket, a slow process): retried with backoff.
    #[error("{0}")]
    Retryable(String),
    /// The step cannot succeed as asked: it fails with this message (and
    /// with it the VM, unless the step leaves the guest as it was).
    #[error("{0}")]
    Fatal(String),
    /// The step failed and took the guest down with it (a standby whose guest
    /// could not be resumed): the VM fails even where the step alone would not fail it.
    #[error("{0}")]
    GuestLost(String),
}

/// A hypervisor backend for one host.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// What the worker announces about this host.
    fn host_info(&self) -> HostInfo;
    /// Guests that stop on their own; taken once by the worker. Drivers whose
    /// guests cannot stop by themselves return `None`.
    fn take_exits(&self) -> Option<mpsc::UnboundedReceiver<GuestExit>> {
        None
    }
    /// The unix socket of a running guest's serial console, for terminals.
    fn console_socket(&self, _vm: VmId) -> Option<PathBuf> {
        None
    }
    /// Give a running guest's serial console a terminal client's window
    /// size, so programs there lay out for it (a serial line cannot learn
    /// it by itself). Best effort: a terminal works without it.
    async fn resize_console(&self, vm: VmId, size: WindowSize) -> Result<(), DriverError>;
    /// Serial console logs of the running guests.
    fn consoles(&self) -> Vec<Console> {
        Vec::new()
    }
    /// Every guest this host holds state for (running or not), so a worker
    /// that was away can set the record and the hypervisor straight.
    fn guests(&self) -> Vec<Guest> {
        Vec::new()
    }
    /// One guest as [`Driver::guests`] lists it, as it is now.
    fn guest(&self, _vm: VmId) -> Option<Guest> {
        None
    }
    /// Give the VM its addresses and host port forwards.
    async fn allocate_network(&self, vm: &Vm) -> Result<NetworkRuntime, DriverError>;
    /// Create the root disk.
    async fn prepare_disk(&self, vm: &Vm) -> Result<DiskInfo, DriverError>;
    /// Start the hypervisor process; adopt it when it already runs.
    async fn boot(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Wait for the guest's readiness signal.
    async fn wait_ready(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Power off: graceful first, then hard. Already off is success.
    async fn power_off(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Reboot the guest in place.
    async fn reboot(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Save memory and device state to disk and stop the hypervisor process.
    async fn snapshot(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Resume from the saved state with memory intact.
    async fn restore(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Save a running or standby guest's memory, devices and root disk as
    /// `snapshot`, which VMs created `from_snapshot` resume from; a running
    /// guest is paused only while its state is copied. Already taken is success.
    async fn take_snapshot(&self, vm: &Vm, snapshot: SnapshotId) -> Result<SnapshotTaken, DriverError>;
    /// Remove a snapshot's files; already gone is success.
    async fn delete_snapshot(&self, snapshot: SnapshotId) -> Result<(), DriverError>;
    /// Make a clone's root disk hold everything it reads from its snapshot's
    /// disk, running or not; a disk without a backing file is success.
    async fn flatten_disk(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Stop the hypervisor process now, without asking the guest: a VM that
    /// failed keeps none. Saved state and disks stay; already gone is success.
    async fn halt(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Release everything the VM holds; already gone is success.
    async fn destroy(&self, vm: &Vm) -> Result<(), DriverError>;
    /// Create a volume's backing storage; returns where it is.
    async fn create_volume(&self, volume: &Volume) -> Result<String, DriverError>;
    /// Remove a volume's backing storage; already gone is success.
    async fn delete_volume(&self, volume: &Volume) -> Result<(), DriverError>;
    /// Stop the guest and make its root disk the storage of root-disk volume
    /// `volume` (a delete that keeps the disk); returns where it is. Already
    /// done is success.
    async fn keep_root_disk(&self, vm: &Vm, volume: VolumeId) -> Result<String, DriverError>;
    /// Plug a volume into the VM and, when the mount names a path, mount it
    /// (hot-plug when the guest runs; a stopped or new VM gets it at its next
    /// boot). Already attached is success.
    async fn attach_volume(&self, vm: &Vm, location: &str, mount: &VolumeMount) -> Result<(), DriverError>;
    /// Unmount and unplug a volume; already detached is success.
    async fn detach_volume(&self, vm: &Vm, mount: &VolumeMount) -> Result<(), DriverError>;
    /// Turn a file on this host into a bootable image.
    async fn import_image(&self, name: &str, source: &std::path::Path, format: ImageFormat) -> Result<ImageInfo, DriverError>;
    /// Hot-plug memory so the running guest has `total_mib` in all; already there is success.
    async fn plug_memory(&self, vm: &Vm, total_mib: u64) -> Result<(), DriverError>;
    /// Write the stopped VM's root disk as one self-contained file, for a
    /// move to another host; returns the file (the caller removes it).
    async fn export_disk(&self, vm: &Vm) -> Result<PathBuf, DriverError>;
    /// Where a moved root disk is put down on this host before [`Driver::import_disk`].
    fn import_path(&self, vm: VmId) -> PathBuf;
    /// Make the file at [`Driver::import_path`] the VM's root disk here.
    /// Already imported (the file gone, the disk in place) is success.
    async fn import_disk(&self, vm: &Vm) -> Result<DiskInfo, DriverError>;
}
