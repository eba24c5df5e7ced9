//! Hosts: machines that run a worker and its hypervisor driver.

use crate::ids::HostId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// What a worker announces about its machine when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub name: String,
    /// The hypervisor driver: `sim`, `qemu`, ...
    pub driver: String,
    /// Driver detail a user should see, e.g. the accelerator and why it was chosen.
    #[serde(default)]
    pub driver_detail: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// Images this host can boot.
    #[serde(default)]
    pub images: Vec<ImageInfo>,
    /// The CIDR of the bridge VMs in bridge mode join, when the operator configured one.
    #[serde(default)]
    pub bridge_cidr: Option<String>,
    /// The host ports the operator lets VMs forward from (worker `--port-range`);
    /// a requested host port outside it is refused. Absent from older workers.
    #[serde(default)]
    pub port_range: Option<PortRange>,
}

/// An inclusive range of host ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The range a host that announced none is held to: every unprivileged port.
    pub const UNPRIVILEGED: Self = Self { first: 1024, last: u16::MAX };
}

impl From<(u16, u16)> for PortRange {
    fn from((first, last): (u16, u16)) -> Self {
        Self { first, last }
    }
}

/// A bootable image as a host announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    /// The slug VMs name in `image`.
    pub name: String,
    pub os: String,
    pub arch: String,
    /// Size of the image's files on disk.
    pub size_bytes: u64,
    /// How it boots, e.g. `kernel+initrd`.
    pub boot: String,
    #[serde(default)]
    pub kernel_version: Option<String>,
}

/// Host events. Liveness is not an event: heartbeats go to a key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostEvent {
    /// A worker announced (or re-announced with changes) its host.
    Registered { info: HostInfo },
    /// An image was imported on the host and can boot VMs there.
    ImageImported { image: ImageInfo },
    /// An import failed; nothing was added.
    ImageImportFailed { name: String, message: String },
}

impl HostEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "host_registered",
            Self::ImageImported { .. } => "image_imported",
            Self::ImageImportFailed { .. } => "image_import_failed",
        }
    }
}

/// What an imported image's source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// A raw disk image holding an ext2/3/4 root filesystem (no partition table).
    Raw,
    /// The same, as qcow2.
    Qcow2,
    /// An OCI image layout directory (`index.json`, `blobs/`).
    OciLayout,
    /// A `docker save` tarball.
    DockerArchive,
}

/// Commands executed by the worker of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostCommand {
    /// Turn a file on the host into a bootable image named `name`.
    ImportImage { name: String, source: String, format: ImageFormat },
}

/// Fold a host event into what the host announced.
pub fn evolve(info: &mut HostInfo, event: &HostEvent) {
    match event {
        HostEvent::Registered { info: new } => *info = new.clone(),
        HostEvent::ImageImported { image } => {
            info.images.retain(|i| i.name != image.name);
            info.images.push(image.clone());
            info.images.sort_by(|a, b| a.name.cmp(&b.name));
        }
        HostEvent::ImageImportFailed { .. } => {}
    }
}

/// A host as the read side keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: HostId,
    pub info: HostInfo,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
}

/// Resources a VM takes from its host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
}

impl Resources {
    /// Whether `want` fits in `total` next to `used`. vCPUs may not exceed the
    /// host's count for one VM but are overcommitted across VMs, as every
    /// hypervisor does; memory and disk are not overcommitted.
    pub fn fits(total: &HostInfo, used: &Resources, want: &Resources) -> bool {
        want.vcpus <= u64::from(total.cpus) && used.memory_mib + want.memory_mib <= total.memory_mib && used.disk_gb + want.disk_gb <= total.disk_gb
    }
}

impl std::ops::SubAssign for Resources {
    /// Saturating: usage never goes below zero, even if events were skipped.
    fn sub_assign(&mut self, o: Self) {
        self.vcpus = self.vcpus.saturating_sub(o.vcpus);
        self.memory_mib = self.memory_mib.saturating_sub(o.memory_mib);
        self.disk_gb = self.disk_gb.saturating_sub(o.disk_gb);
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, o: Self) {
        self.vcpus += o.vcpus;
        self.memory_mib += o.memory_mib;
        self.disk_gb += o.disk_gb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_add_or_replace_images_by_name() {
        let mut info = HostInfo {
            name: "h".into(),
            driver: "qemu".into(),
            driver_detail: None,
            cpus: 1,
            memory_mib: 1,
            disk_gb: 1,
            images: vec![],
            bridge_cidr: None,
            port_range: None,
        };
        let img = |name: &str, size| ImageInfo {
            name: name.into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            size_bytes: size,
            boot: "kernel+initrd".into(),
            kernel_version: None,
        };
        evolve(&mut info, &HostEvent::ImageImported { image: img("b", 1) });
        evolve(&mut info, &HostEvent::ImageImported { image: img("a", 1) });
        evolve(&mut info, &HostEvent::ImageImported { image: img("b", 2) });
        evolve(&mut info, &HostEvent::ImageImportFailed { name: "c".into(), message: "x".into() });
        assert_eq!(info.images, vec![img("a", 1), img("b", 2)]);
    }

    #[test]
    fn fits_checks_memory_disk_and_per_vm_cpus() {
        let host = HostInfo {
            name: "h".into(),
            driver: "sim".into(),
            driver_detail: None,
            cpus: 4,
            memory_mib: 1024,
            disk_gb: 100,
            images: vec![],
            bridge_cidr: None,
            port_range: Some((20000, 29999).into()),
        };
        assert!(host.port_range.is_some_and(|r| r.contains(20000) && r.contains(29999) && !r.contains(19999) && !r.contains(30000)));
        assert!(!PortRange::UNPRIVILEGED.contains(1023) && PortRange::UNPRIVILEGED.contains(1024));
        let used = Resources { vcpus: 16, memory_mib: 512, disk_gb: 50 };
        assert!(Resources::fits(&host, &used, &Resources { vcpus: 4, memory_mib: 512, disk_gb: 50 }));
        assert!(!Resources::fits(&host, &used, &Resources { vcpus: 5, memory_mib: 1, disk_gb: 1 }));
        assert!(!Resources::fits(&host, &used, &Resources { vcpus: 1, memory_mib: 513, disk_gb: 1 }));
        assert!(!Resources::fits(&host, &used, &Resources { vcpus: 1, memory_mib: 1, disk_gb: 51 }));
    }
}
