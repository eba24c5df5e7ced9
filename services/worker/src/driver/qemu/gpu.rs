//! GPUs on this host: the NVIDIA and AMD PCI display devices sysfs lists,
//! merged with the ones the operator declares (`--gpu MODEL:COUNT`).
//!
//! A found device's model is its vendor and PCI device id, `nvidia-2330` or
//! `amd-740f` (lower-case hex, as `lspci -nn` prints it): stable, needs no
//! table of product names, and is a catalog GPU model. An operator who wants
//! another name, or fewer devices offered, declares the model with `--gpu`:
//! for a model both found and declared, the declared count is announced.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A PCI address, `DDDD:BB:DD.F` (domain, bus, device, function; lower-case
/// hex), checked so that only a well-formed address ever reaches QEMU.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Bdf(String);

/// Not a `DDDD:BB:DD.F` PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a PCI address DDDD:BB:DD.F")]
pub struct BadBdf(String);

impl std::str::FromStr for Bdf {
    type Err = BadBdf;

    fn from_str(s: &str) -> Result<Self, BadBdf> {
        let bad = || BadBdf(s.chars().take(32).collect());
        let hex = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        if !(hex(domain, 4) && hex(bus, 2) && hex(device, 2) && hex(function, 1)) {
            return Err(bad());
        }
        // 32 devices per bus, 8 functions per device.
        if u8::from_str_radix(device, 16).map_err(|_| bad())? > 0x1f || u8::from_str_radix(function, 16).map_err(|_| bad())? > 7 {
            return Err(bad());
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for Bdf {
    type Error = BadBdf;
    fn try_from(s: String) -> Result<Self, BadBdf> {
        s.parse()
    }
}

impl From<Bdf> for String {
    fn from(b: Bdf) -> String {
        b.0
    }
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kernel driver a device must be bound to for passthrough.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// A GPU found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciGpu {
    pub bdf: Bdf,
    /// See the module docs.
    pub model: String,
    /// The kernel driver bound to it (`vfio-pci`, `nvidia`, `amdgpu`, ...), if any.
    pub driver: Option<String>,
}

impl PciGpu {
    /// Whether QEMU can be given the device.
    pub fn passthrough_ready(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_DRIVER)
    }
}

/// The NVIDIA and AMD display devices (PCI class 0x03) under
/// `<sysfs>/bus/pci/devices`, by address. A missing or unreadable tree is no GPUs.
pub fn discover(sysfs: &Path) -> Vec<PciGpu> {
    let Ok(entries) = std::fs::read_dir(sysfs.join("bus/pci/devices")) else { return Vec::new() };
    let mut found: Vec<PciGpu> = entries
        .flatten()
        .filter_map(|entry| {
            let bdf: Bdf = entry.file_name().to_str()?.parse().ok()?;
            let path = entry.path();
            let read = |name: &str| std::fs::read_to_string(path.join(name)).ok().and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok());
            if read("class")? >> 16 != 0x03 {
                return None;
            }
            let vendor = match read("vendor")? {
                0x10de => "nvidia",
                0x1002 => "amd",
                _ => return None,
            };
            let device = read("device")?;
            let driver = std::fs::read_link(path.join("driver")).ok().and_then(|l| l.file_name().and_then(|n| n.to_str()).map(str::to_owned));
            Some(PciGpu { bdf, model: format!("{vendor}-{device:04x}"), driver })
        })
        .collect();
    found.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    found
}

/// What the host announces: the found devices counted by model, with the
/// declared count in place of the found one for every declared model.
pub fn merge(declared: &BTreeMap<String, u32>, found: &[PciGpu]) -> BTreeMap<String, u32> {
    let mut gpus = BTreeMap::new();
    for g in found {
        *gpus.entry(g.model.clone()).or_insert(0) += 1;
    }
    gpus.extend(declared.iter().map(|(m, n)| (m.clone(), *n)));
    gpus
}

/// Why a VM cannot be given its GPUs here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("this host has no {model} device in sysfs to pass through (a model declared with --gpu but not installed cannot be attached)")]
    NoDevice { model: String },
    #[error(
        "the VM asks for {want} {model} device(s) but {ready} free one(s) are bound to {VFIO_DRIVER}; bind the device(s) to {VFIO_DRIVER} (see the README, GPUs): {unbound}"
    )]
    NotBound { model: String, want: u32, ready: usize, unbound: String },
    #[error("the VM asks for {want} {model} device(s) but {free} are free (bound to {VFIO_DRIVER} and held by no other VM)")]
    Taken { model: String, want: u32, free: usize },
}

/// The devices a VM asking for `count` GPUs (of `model`, or of any one
/// model: the first by name with enough, as placement counts them) is
/// given: free ones (not in `held`) bound to `vfio-pci`, by address.
pub fn pick(found: &[PciGpu], count: u32, model: Option<&str>, held: &BTreeSet<Bdf>) -> Result<Vec<Bdf>, PickError> {
    let want = count as usize;
    let models: BTreeSet<&str> = found.iter().map(|g| g.model.as_str()).filter(|m| model.is_none_or(|w| w == *m)).collect();
    let mut first_error = None;
    for m in &models {
        let free: Vec<&PciGpu> = found.iter().filter(|g| g.model == *m && !held.contains(&g.bdf)).collect();
        let ready: Vec<Bdf> = free.iter().filter(|g| g.passthrough_ready()).map(|g| g.bdf.clone()).collect();
        if ready.len() >= want {
            return Ok(ready.into_iter().take(want).collect());
        }
        let unbound: Vec<String> =
            free.iter().filter(|g| !g.passthrough_ready()).map(|g| format!("{} ({})", g.bdf, g.driver.as_deref().unwrap_or("no driver"))).collect();
        let error = if free.len() >= want {
            PickError::NotBound { model: (*m).to_owned(), want: count, ready: ready.len(), unbound: unbound.join(", ") }
        } else {
            PickError::Taken { model: (*m).to_owned(), want: count, free: ready.len() }
        };
        first_error.get_or_insert(error);
    }
    Err(first_error.unwrap_or_else(|| PickError::NoDevice { model: model.unwrap_or("GPU").to_owned() }))
}

/// One line for the host's `driver_detail`.
pub fn describe(found: &[PciGpu]) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let list: Vec<String> = found.iter().map(|g| format!("{} {} ({})", g.model, g.bdf, g.driver.as_deref().unwrap_or("no driver"))).collect();
    Some(format!("GPUs: {}; passthrough needs {VFIO_DRIVER}", list.join(", ")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use vmplane_domain::catalog::is_gpu_model;

    /// A PCI device in a fake sysfs tree, its driver a symlink as the kernel makes it.
    pub(crate) fn device(sysfs: &Path, bdf: &str, vendor: u16, device: u16, class: u32, driver: Option<&str>) {
        let dir = sysfs.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), format!("0x{vendor:04x}\n")).unwrap();
        std::fs::write(dir.join("device"), format!("0x{device:04x}\n")).unwrap();
        std::fs::write(dir.join("class"), format!("0x{class:06x}\n")).unwrap();
        if let Some(d) = driver {
            let target: PathBuf = sysfs.join("bus/pci/drivers").join(d);
            std::fs::create_dir_all(&target).unwrap();
            std::os::unix::fs::symlink(&target, dir.join("driver")).unwrap();
        }
    }

    #[test]
    fn pci_addresses_are_checked() {
        assert_eq!("0000:17:00.0".parse::<Bdf>().unwrap().to_string(), "0000:17:00.0");
        assert_eq!("0000:AF:1f.7".parse::<Bdf>().unwrap().to_string(), "0000:af:1f.7");
        for bad in ["", "17:00.0", "0000:17:00.8", "0000:17:20.0", "0000:17:00.0,x-vga=on", "0000:17:00.0 ", "000g:17:00.0", "0000:17:00:0", "0000:+1:00.0"] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Bdf>("\"0000:17:00.0,id=x\"").is_err(), "a stored address is checked when read back too");
    }

    #[test]
    fn nvidia_and_amd_display_devices_are_found_with_their_driver() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        device(sys, "0000:17:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        device(sys, "0000:65:00.0", 0x10de, 0x2330, 0x030200, Some("nvidia"));
        device(sys, "0000:03:00.0", 0x1002, 0x740f, 0x038000, None);
        // Not GPUs: the NVIDIA card's audio function, an Intel GPU, a NIC.
        device(sys, "0000:17:00.1", 0x10de, 0x22a3, 0x040300, Some("vfio-pci"));
        device(sys, "0000:00:02.0", 0x8086, 0x4680, 0x030000, Some("i915"));
        device(sys, "0000:04:00.0", 0x10de, 0x1234, 0x020000, None);
        std::fs::create_dir_all(sys.join("bus/pci/devices/not-an-address")).unwrap();
        let found = discover(sys);
        let summary: Vec<(String, &str, Option<&str>)> = found.iter().map(|g| (g.bdf.to_string(), g.model.as_str(), g.driver.as_deref())).collect();
        assert_eq!(
            summary,
            [
                ("0000:03:00.0".into(), "amd-740f", None),
                ("0000:17:00.0".into(), "nvidia-2330", Some("vfio-pci")),
                ("0000:65:00.0".into(), "nvidia-2330", Some("nvidia")),
            ]
        );
        assert!(found.iter().all(|g| is_gpu_model(&g.model)));
        assert_eq!(found.iter().filter(|g| g.passthrough_ready()).count(), 1);
        assert!(discover(&sys.join("missing")).is_empty());
    }

    #[test]
    fn a_vm_gets_free_devices_of_its_model_bound_to_vfio_pci() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        device(sys, "0000:17:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        device(sys, "0000:18:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        device(sys, "0000:65:00.0", 0x10de, 0x2330, 0x030200, Some("nvidia"));
        device(sys, "0000:03:00.0", 0x1002, 0x740f, 0x030000, None);
        let found = discover(sys);
        let bdf = |s: &str| s.parse::<Bdf>().unwrap();
        let none = BTreeSet::new();
        assert_eq!(pick(&found, 2, Some("nvidia-2330"), &none), Ok(vec![bdf("0000:17:00.0"), bdf("0000:18:00.0")]));
        // Held by another VM: the next free one.
        let held = BTreeSet::from([bdf("0000:17:00.0")]);
        assert_eq!(pick(&found, 1, Some("nvidia-2330"), &held), Ok(vec![bdf("0000:18:00.0")]));
        // Enough devices, but one is still bound to its vendor driver.
        let err = pick(&found, 2, Some("nvidia-2330"), &held).unwrap_err();
        assert_eq!(err, PickError::NotBound { model: "nvidia-2330".into(), want: 2, ready: 1, unbound: "0000:65:00.0 (nvidia)".into() });
        assert!(err.to_string().contains("bind the device(s) to vfio-pci"), "{err}");
        assert_eq!(pick(&found, 4, Some("nvidia-2330"), &none), Err(PickError::Taken { model: "nvidia-2330".into(), want: 4, free: 2 }));
        assert_eq!(pick(&found, 1, Some("A100"), &none), Err(PickError::NoDevice { model: "A100".into() }));
        assert!(matches!(pick(&found, 1, Some("amd-740f"), &none), Err(PickError::NotBound { .. })));
        // No model named: the first model (by name) that has enough.
        assert_eq!(pick(&found, 2, None, &none), Ok(vec![bdf("0000:17:00.0"), bdf("0000:18:00.0")]));
        assert!(matches!(pick(&found, 1, None, &BTreeSet::from([bdf("0000:17:00.0"), bdf("0000:18:00.0")])), Err(PickError::NotBound { .. })));
    }

    #[test]
    fn a_declared_model_wins_over_what_was_found() {
        let d = tempfile::tempdir().unwrap();
        device(d.path(), "0000:17:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        device(d.path(), "0000:65:00.0", 0x10de, 0x2330, 0x030200, Some("vfio-pci"));
        device(d.path(), "0000:03:00.0", 0x1002, 0x740f, 0x030000, None);
        let found = discover(d.path());
        let declared = BTreeMap::from([("nvidia-2330".to_owned(), 1), ("A100".to_owned(), 2)]);
        assert_eq!(merge(&declared, &found), BTreeMap::from([("A100".into(), 2), ("amd-740f".into(), 1), ("nvidia-2330".into(), 1)]));
        assert_eq!(merge(&BTreeMap::new(), &found), BTreeMap::from([("amd-740f".into(), 1), ("nvidia-2330".into(), 2)]));
    }
}
