//! Guest images on this host: `<images dir>/<slug>/manifest.json` with a
//! kernel, an initrd and a raw root filesystem (built by `images/<slug>/build.sh`).

use serde::Deserialize;
use std::path::{Path, PathBuf};

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
