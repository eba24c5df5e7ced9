//! Where a VM's files live: `<qemu dir>/vms/<vm_id>/`, a directory only
//! root enters, holding files only root reads.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use vmplane_domain::{SnapshotId, VmId};

/// One VM's directory and the names inside it.
#[derive(Debug, Clone)]
pub struct VmDir(PathBuf);

impl VmDir {
    /// The directory of `vm` under the driver's root.
    pub fn new(root: &Path, vm: VmId) -> Self {
        Self(root.join("vms").join(vm.to_string()))
    }

    /// A directory laid out like a VM's at `path` (a snapshot's template qemu).
    pub fn at(path: PathBuf) -> Self {
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Create the directory (and `vms/`), private to the worker's user.
    pub fn create(&self) -> std::io::Result<()> {
        create_private(&self.0)
    }
    /// The qcow2 overlay over the image's root filesystem.
    pub fn root_disk(&self) -> PathBuf {
        self.0.join("root.qcow2")
    }
    /// The NoCloud seed disk.
    pub fn seed(&self) -> PathBuf {
        self.0.join("seed.img")
    }
    pub fn pid(&self) -> PathBuf {
        self.0.join("qemu.pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }
    /// The serial console, for the web terminal.
    pub fn console_socket(&self) -> PathBuf {
        self.0.join("console.sock")
    }
    /// Everything the serial console printed (qemu appends; the worker rotates).
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
    /// Console log offset from which the next readiness line counts.
    pub fn ready_mark(&self) -> PathBuf {
        self.0.join("ready.from")
    }
    /// Saved memory and device state while in standby.
    pub fn snapshot(&self) -> PathBuf {
        self.0.join("state.vmstate")
    }
    /// The allocated network (host ports), so allocation is idempotent.
    pub fn network(&self) -> PathBuf {
        self.0.join("network.json")
    }
    /// The GPUs (PCI addresses) the VM holds, so no other VM is given them.
    pub fn gpus(&self) -> PathBuf {
        self.0.join("gpus.json")
    }
    /// The volumes plugged into the VM (`volumes::Plugged`).
    pub fn volumes(&self) -> PathBuf {
        self.0.join("volumes.json")
    }
    /// Marks a stop the worker asked for, so the supervisor does not report it.
    pub fn expected_exit(&self) -> PathBuf {
        self.0.join("exit.expected")
    }
}

/// Where a snapshot's files live: `<qemu dir>/snapshots/<snapshot_id>/`,
/// private like a VM's. Apart from the VMs' directories, so that a snapshot
/// outlives the VM it was taken of.
#[derive(Debug, Clone)]
pub struct SnapshotDir(PathBuf);

impl SnapshotDir {
    pub fn new(root: &Path, snapshot: SnapshotId) -> Self {
        Self(root.join("snapshots").join(snapshot.to_string()))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Create the directory (and `snapshots/`), private to the worker's user.
    pub fn create(&self) -> std::io::Result<()> {
        create_private(&self.0)
    }
    /// The root disk as it was at the snapshot (clones' overlays sit on it).
    pub fn disk(&self) -> PathBuf {
        self.0.join("disk.qcow2")
    }
    /// Guest RAM, the file clones map privately.
    pub fn memory(&self) -> PathBuf {
        self.0.join("memory")
    }
    /// Device state alone, saved with `x-ignore-shared`.
    pub fn devices(&self) -> PathBuf {
        self.0.join("devices.vmstate")
    }
    /// The full saved state, until the template turns it into the two above.
    pub fn full_state(&self) -> PathBuf {
        self.0.join("full.vmstate")
    }
    /// Where the templating qemu keeps its sockets and pid file.
    pub fn work(&self) -> VmDir {
        VmDir::at(self.0.join("work"))
    }
    /// Written last: the snapshot is complete (`SnapshotTaken`, as JSON).
    pub fn info(&self) -> PathBuf {
        self.0.join("info.json")
    }
}

/// Create `dir` and its parent (mode 0700); an existing one keeps its
/// mode, so both are tightened.
fn create_private(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Write a file only its owner can read or write, whatever the umask.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}
