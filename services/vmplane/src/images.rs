//! The default guest image, built on first use from the repository's
//! `images/debian-minimal/build.sh` (Debian packages only) into the images dir.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// The image every VM gets unless it names another.
pub const DEFAULT_IMAGE: &str = vmplane_domain::spec::DEFAULT_IMAGE;

/// Build the default image unless it is already there.
pub async fn ensure_default(images_dir: &Path) -> anyhow::Result<()> {
    let out = images_dir.join(DEFAULT_IMAGE);
    let script = find_build_script()?;
    tracing::info!(script = %script.display(), out = %out.display(), "checking the default guest image (first build takes a minute)");
    let status = tokio::process::Command::new(&script).arg(&out).status().await.with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("building the default image with {} failed ({status})", script.display());
    }
    Ok(())
}

/// `$VMPLANE_IMAGES_SRC/<image>/build.sh`, or `images/<image>/build.sh` in the
/// checkout the binary was built in, or below the current directory.
fn find_build_script() -> anyhow::Result<PathBuf> {
    let rel = Path::new(DEFAULT_IMAGE).join("build.sh");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(src) = std::env::var_os("VMPLANE_IMAGES_SRC") {
        candidates.push(PathBuf::from(src).join(&rel));
    }
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|d| d.join("images").join(&rel)));
    }
    candidates.push(Path::new("images").join(&rel));
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!("cannot find images/{DEFAULT_IMAGE}/build.sh to build the default image; set VMPLANE_IMAGES_SRC to the repository's images/ folder")
    })
}
