//! Guest images on this host: `<images dir>/<slug>/manifest.json` with a
//! kernel, an initrd and a raw root filesystem (built by `images/<slug>/build.sh`).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use vmplane_domain::host::ImageInfo;

/// A bootable image.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub cmdline: String,
}

#[derive(Deserialize)]
struct Manifest {
    name: String,
    cmdline: String,
    files: Files,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    boot: Option<String>,
    #[serde(default)]
    kernel_version: Option<String>,
}

#[derive(Deserialize)]
struct Files {
    kernel: String,
    initrd: String,
    rootfs: String,
}

/// Load the image named `slug`, or say why it cannot be used.
pub fn load(images_dir: &Path, slug: &str) -> Result<Image, String> {
    if slug.is_empty() || slug.contains(['/', '\\']) || slug.starts_with('.') {
        return Err(format!("unknown image `{slug}`"));
    }
    let dir = images_dir.join(slug);
    let bytes = std::fs::read(dir.join("manifest.json")).map_err(|_| format!("unknown image `{slug}`"))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("image `{slug}` has a bad manifest: {e}"))?;
    let abs = |f: &str| std::fs::canonicalize(dir.join(f)).map_err(|e| format!("image `{slug}`: {f}: {e}"));
    Ok(Image { name: m.name, kernel: abs(&m.files.kernel)?, initrd: abs(&m.files.initrd)?, rootfs: abs(&m.files.rootfs)?, cmdline: m.cmdline })
}

/// Every usable image under `images_dir`, as the host announces them.
pub fn list(images_dir: &Path) -> Vec<ImageInfo> {
    let Ok(entries) = std::fs::read_dir(images_dir) else { return Vec::new() };
    let mut out: Vec<ImageInfo> = entries
        .flatten()
        .filter_map(|e| {
            let slug = e.file_name().to_str()?.to_owned();
            let m: Manifest = serde_json::from_slice(&std::fs::read(e.path().join("manifest.json")).ok()?).ok()?;
            let image = load(images_dir, &slug).ok()?;
            let size = [&image.kernel, &image.initrd, &image.rootfs].iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
            Some(ImageInfo {
                name: slug,
                os: m.os.unwrap_or_else(|| "linux".into()),
                arch: m.arch.unwrap_or_else(|| "x86_64".into()),
                size_bytes: size,
                boot: m.boot.unwrap_or_else(|| "kernel+initrd".into()),
                kernel_version: m.kernel_version,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
