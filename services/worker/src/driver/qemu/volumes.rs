//! Volumes on the qemu driver: qcow2 files under `<qemu dir>/volumes/`,
//! plugged into guests on PCIe root ports (hot-plug over QMP when the guest
//! runs, on the command line at boot otherwise) and, when the mount names a
//! path, mounted by the guest agent over its virtio-serial channel (at boot,
//! from the seed's `volumes` file); the others stay plain block devices.

use super::agent;
use super::layout::VmDir;
use super::process::HOTPLUG_PORTS;
use super::qemu_img;
use super::qmp::Qmp;
use crate::driver::DriverError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmplane_domain::VolumeId;
use vmplane_domain::spec::VolumeMount;

/// How long a mount or unmount may take in the guest (a mount waits up to
/// 10 s for its disk to appear, then may format it).
const AGENT_PATIENCE: Duration = Duration::from_secs(30);

/// A volume plugged into one VM, as recorded in the VM's `volumes.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugged {
    pub volume_id: VolumeId,
    /// The virtio serial the guest finds the disk by (at most 20 bytes).
    pub serial: String,
    /// The file qemu opens: the volume, or the VM's overlay over it.
    pub file: PathBuf,
    /// Where the guest mounts it; `None`: a block device left alone.
    pub mount_path: Option<String>,
    /// The guest mounts read-only (and qemu opens the file read-only).
    pub readonly: bool,
    /// The PCIe root port (`hpN`) it sits on.
    pub port: usize,
}

impl Plugged {
    fn node(&self) -> String {
        format!("vol-{}", self.serial)
    }
    fn device(&self) -> String {
        format!("dev-{}", self.serial)
    }

    /// `-drive`/`-device` arguments for a cold plug at boot.
    pub fn args(&self) -> [String; 4] {
        let ro = if self.readonly { ",readonly=on" } else { "" };
        [
            "-drive".into(),
            format!("if=none,id={},file={},format=qcow2{ro}", self.node(), self.file.display()),
            "-device".into(),
            format!("virtio-blk-pci,drive={},id={},serial={},bus=hp{}", self.node(), self.device(), self.serial, self.port),
        ]
    }

    /// The line of the seed's `volumes` file that mounts it at boot, if it is mounted.
    pub fn seed_line(&self) -> Option<String> {
        Some(format!("{} {} {}\n", self.serial, self.mount_path.as_ref()?, if self.readonly { "ro" } else { "rw" }))
    }
}

/// A volume's virtio serial: the last 20 characters of its id, which hold its randomness.
pub fn serial(id: VolumeId) -> String {
    let s = id.to_string();
    s[s.len() - 20..].to_owned()
}

/// Where a volume's file lives.
pub fn volume_file(root: &Path, id: VolumeId) -> PathBuf {
    root.join("volumes").join(format!("{id}.qcow2"))
}

/// The volumes recorded as plugged into a VM.
pub fn plugged(dir: &VmDir) -> Vec<Plugged> {
    std::fs::read(dir.volumes()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save(dir: &VmDir, list: &[Plugged]) -> Result<(), DriverError> {
    let bytes = serde_json::to_vec(list).map_err(|e| DriverError::Fatal(e.to_string()))?;
    std::fs::write(dir.volumes(), bytes).map_err(|e| DriverError::Retryable(e.to_string()))
}

/// Create the volume's qcow2 file (idempotent).
pub async fn create(root: &Path, id: VolumeId, size_gb: u32) -> Result<PathBuf, DriverError> {
    let path = volume_file(root, id);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().expect("volume files have a parent")).map_err(|e| DriverError::Retryable(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let size = format!("{size_gb}G");
    qemu_img(["create", "-q", "-f", "qcow2"].map(OsStr::new), [tmp.as_os_str(), size.as_ref()]).await?;
    std::fs::rename(&tmp, &path).map_err(|e| DriverError::Retryable(e.to_string()))?;
    Ok(path)
}

/// Record the volume as plugged (choosing its port and, for an overlay, its
/// overlay file) and, if the guest runs, hot-plug and mount it.
pub async fn attach(dir: &VmDir, location: &str, mount: &VolumeMount, running: bool) -> Result<(), DriverError> {
    let mut list = plugged(dir);
    let entry = match list.iter().find(|p| p.volume_id == mount.volume_id) {
        Some(p) => p.clone(),
        None => {
            let port = (0..HOTPLUG_PORTS)
                .find(|i| !list.iter().any(|p| p.port == *i))
                .ok_or_else(|| DriverError::Fatal(format!("no free hot-plug slot ({HOTPLUG_PORTS} volumes at most)")))?;
            let serial = serial(mount.volume_id);
            let file = if mount.overlay {
                let overlay = dir.path().join(format!("overlay-{serial}.qcow2"));
                if !overlay.exists() {
                    let size = format!("{}M", mount.overlay_size_mib.unwrap_or(1024));
                    qemu_img(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", location].map(OsStr::new), [overlay.as_os_str(), size.as_ref()]).await?;
                }
                overlay
            } else {
                PathBuf::from(location)
            };
            let p =
                Plugged { volume_id: mount.volume_id, serial, file, mount_path: mount.mount_path.clone(), readonly: mount.readonly && !mount.overlay, port };
            list.push(p.clone());
            save(dir, &list)?;
            p
        }
    };
    if !running {
        return Ok(());
    }
    let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
    let blocks = q.execute("query-named-block-nodes", Some(json!({"flat": true}))).await.map_err(retry)?;
    let present = blocks.as_array().is_some_and(|a| a.iter().any(|b| b.get("node-name").and_then(|n| n.as_str()) == Some(&entry.node())));
    if !present {
        let file = json!({"driver": "file", "filename": entry.file.display().to_string()});
        q.execute("blockdev-add", Some(json!({"driver": "qcow2", "node-name": entry.node(), "file": file, "read-only": entry.readonly})))
            .await
            .map_err(fatal)?;
    }
    let added = q
        .execute(
            "device_add",
            Some(json!({"driver": "virtio-blk-pci", "id": entry.device(), "drive": entry.node(), "serial": entry.serial, "bus": format!("hp{}", entry.port)})),
        )
        .await;
    if let Err(e) = added
        && !e.to_string().contains("Duplicate")
    {
        return Err(fatal(e));
    }
    drop(q);
    let Some(path) = &entry.mount_path else { return Ok(()) };
    let mounted = agent::call(dir, &format!("mount {} {path} {}", entry.serial, if entry.readonly { "ro" } else { "rw" }), AGENT_PATIENCE).await;
    if let Err(DriverError::Fatal(why)) = &mounted {
        // Leave the guest as it was: the volume goes back out, free for another VM.
        if let Err(e) = unplug(dir, &entry).await {
            return Err(fatal(format!("{why}; unplugging the volume again failed: {e}")));
        }
        let mut list = plugged(dir);
        list.retain(|p| p.volume_id != mount.volume_id);
        save(dir, &list)?;
    }
    mounted
}

/// Take a hot-plugged volume out of the running guest (qemu lets go of its file).
async fn unplug(dir: &VmDir, entry: &Plugged) -> Result<(), DriverError> {
    let mut q = Qmp::connect(&dir.qmp()).await.map_err(retry)?;
    if let Err(e) = q.execute("device_del", Some(json!({"id": entry.device()}))).await
        && !e.to_string().contains("not found")
    {
        return Err(fatal(e));
    }
    // The guest releases the device asynchronously; the node can go once it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match q.execute("blockdev-del", Some(json!({"node-name": entry.node()}))).await {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("not found") || e.to_string().contains("Cannot find") => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(fatal(format!("the guest did not release the disk: {e}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Unmount, unplug and forget a volume.
pub async fn detach(dir: &VmDir, mount: &VolumeMount, running: bool) -> Result<(), DriverError> {
    let mut list = plugged(dir);
    let Some(entry) = list.iter().find(|p| p.volume_id == mount.volume_id).cloned() else { return Ok(()) };
    if running {
        if let Some(path) = &entry.mount_path
            && let Err(e) = agent::call(dir, &format!("umount {path}"), AGENT_PATIENCE).await
            && !e.to_string().contains("not a mount point")
        {
            return Err(e);
        }
        unplug(dir, &entry).await?;
    }
    if entry.file.starts_with(dir.path()) {
        let _ = std::fs::remove_file(&entry.file);
    }
    list.retain(|p| p.volume_id != mount.volume_id);
    save(dir, &list)
}

fn retry(e: impl std::fmt::Display) -> DriverError {
    DriverError::Retryable(e.to_string())
}

fn fatal(e: impl std::fmt::Display) -> DriverError {
    DriverError::Fatal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_fit_virtio_and_differ() {
        let (a, b) = (VolumeId::new(), VolumeId::new());
        assert_eq!(serial(a).len(), 20);
        assert_ne!(serial(a), serial(b));
    }

    #[test]
    fn cold_plug_args_and_seed_line() {
        let p =
            Plugged { volume_id: VolumeId::new(), serial: "abc".into(), file: "/v.qcow2".into(), mount_path: Some("/data".into()), readonly: true, port: 2 };
        assert_eq!(p.args()[1], "if=none,id=vol-abc,file=/v.qcow2,format=qcow2,readonly=on");
        assert_eq!(p.args()[3], "virtio-blk-pci,drive=vol-abc,id=dev-abc,serial=abc,bus=hp2");
        assert_eq!(p.seed_line().as_deref(), Some("abc /data ro\n"));
        let block = Plugged { mount_path: None, ..p };
        assert_eq!(block.seed_line(), None, "a block device is not mounted at boot");
    }
}
