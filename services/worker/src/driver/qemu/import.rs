//! Importing images: a raw or qcow2 disk holding an ext2/3/4 root
//! filesystem, an OCI image layout, or a `docker save` tarball becomes a
//! bootable image next to the default one.
//!
//! The imported tree is laid over the default image's root filesystem (read
//! with `debugfs rdump`, no mounts), then the vmplane guest payload is put
//! back on top: init, the boot scripts and agent, the network and ACPI
//! helpers, and the kernel modules, so the guest boots with the default
//! image's kernel and initrd, applies cloud-init and reports readiness. The
//! result is written with `mke2fs -d`, like the default image.

use super::image::{self, Image};
use crate::driver::DriverError;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use tokio::process::Command;
use vmplane_domain::host::{ImageFormat, ImageInfo};

/// Paths of the default image that make a tree boot as a vmplane guest; they
/// win over the imported image's own (see `images/debian-minimal/README.md`).
const PAYLOAD: &[&str] = &[
    "bin/busybox",
    "sbin/init",
    "etc/inittab",
    "etc/acpi",
    "etc/vmplane-modules",
    "etc/vmplane-release",
    "usr/lib/vmplane",
    "usr/share/udhcpc",
    "lib/modules",
];

fn fatal(e: impl std::fmt::Display) -> DriverError {
    DriverError::Fatal(e.to_string())
}

/// Import `source` as image `name` into `images_dir`, using `base` (the
/// default image) for the kernel, initrd and guest payload.
pub async fn import(images_dir: &Path, base: &Image, name: &str, source: &Path, format: ImageFormat) -> Result<ImageInfo, DriverError> {
    let dest = images_dir.join(name);
    if dest.exists() {
        return Err(fatal(format!("image `{name}` already exists on this host")));
    }
    if !source.exists() {
        return Err(fatal(format!("{} does not exist on this host", source.display())));
    }
    let work = tempfile::Builder::new().prefix(&format!(".import-{name}-")).tempdir_in(images_dir).map_err(fatal)?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).map_err(fatal)?;
    rdump(&base.rootfs, &root).await?;

    let os = match format {
        ImageFormat::Raw | ImageFormat::Qcow2 => {
            let raw = work.path().join("source.raw");
            let fmt = if format == ImageFormat::Raw { "raw" } else { "qcow2" };
            run(Command::new("qemu-img").args(["convert", "-f", fmt, "-O", "raw"]).arg(source).arg(&raw)).await?;
            let tree = work.path().join("source");
            std::fs::create_dir_all(&tree).map_err(fatal)?;
            rdump(&raw, &tree).await.map_err(|e| fatal(format!("{e}; the disk must hold an ext2/3/4 filesystem without a partition table")))?;
            run(Command::new("cp").arg("-a").arg(format!("{}/.", tree.display())).arg(&root)).await?;
            "linux".to_owned()
        }
        ImageFormat::OciLayout | ImageFormat::DockerArchive => {
            let (src, root2, format2) = (source.to_owned(), root.clone(), format);
            let unpacked = work.path().join("archive");
            tokio::task::spawn_blocking(move || apply_container_image(&src, format2, &unpacked, &root2)).await.map_err(fatal)??
        }
    };
    let base_tree = work.path().join("base");
    std::fs::create_dir_all(&base_tree).map_err(fatal)?;
    rdump(&base.rootfs, &base_tree).await?;
    for p in PAYLOAD {
        let (from, to) = (base_tree.join(p), root.join(p));
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        std::fs::create_dir_all(to.parent().expect("payload paths have parents")).map_err(fatal)?;
        if !inside(&root, &to) {
            return Err(fatal(format!("the image's /{p} leads outside it through a symlink")));
        }
        if std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&to).map_err(fatal)?;
        } else {
            let _ = std::fs::remove_file(&to);
        }
        run(Command::new("cp").arg("-a").arg(&from).arg(&to)).await?;
    }
    link_missing_applets(&root).await?;

    let out = work.path().join("image");
    std::fs::create_dir_all(&out).map_err(fatal)?;
    let used_kib: u64 =
        String::from_utf8_lossy(&run(Command::new("du").args(["-sk"]).arg(&root)).await?).split_whitespace().next().and_then(|k| k.parse().ok()).unwrap_or(0);
    let size_mib = (used_kib / 1024) * 3 / 2 + 256;
    run(Command::new(mke2fs())
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "vmplane-root", "-m", "1", "-d"])
        .arg(&root)
        .arg(out.join("rootfs.ext4"))
        .arg(format!("{size_mib}M")))
    .await?;
    for (from, file) in [(&base.kernel, "vmlinuz"), (&base.initrd, "initrd.img")] {
        std::fs::copy(from, out.join(file)).map_err(fatal)?;
    }
    let manifest = serde_json::json!({
        "name": name, "version": 1, "os": os, "arch": "x86_64", "boot": "kernel+initrd", "cmdline": base.cmdline,
        "imported_from": { "format": format, "source": source.display().to_string() },
        "files": { "kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.ext4" }
    });
    std::fs::write(out.join("manifest.json"), serde_json::to_vec_pretty(&manifest).map_err(fatal)?).map_err(fatal)?;
    std::fs::rename(&out, &dest).map_err(fatal)?;
    image::list(images_dir).into_iter().find(|i| i.name == name).ok_or_else(|| fatal("imported image is unreadable"))
}

/// Point every busybox applet the image lacks (udhcpc, acpid, ...) at the
/// payload's static busybox, which the guest scripts rely on.
async fn link_missing_applets(root: &Path) -> Result<(), DriverError> {
    let list = run(Command::new(root.join("bin/busybox")).arg("--list-full")).await?;
    for applet in String::from_utf8_lossy(&list).lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = root.join(applet);
        if std::fs::symlink_metadata(&path).is_ok() || !path.parent().is_some_and(|d| d.is_dir()) || !inside(root, &path) {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", &path).map_err(fatal)?;
    }
    Ok(())
}

async fn run(cmd: &mut Command) -> Result<Vec<u8>, DriverError> {
    let out = cmd.output().await.map_err(fatal)?;
    if out.status.success() { Ok(out.stdout) } else { Err(fatal(format!("{:?}: {}", cmd.as_std().get_program(), String::from_utf8_lossy(&out.stderr).trim()))) }
}

/// Copy an ext2/3/4 filesystem image's tree into `dir`, without mounting it.
async fn rdump(fs_image: &Path, dir: &Path) -> Result<(), DriverError> {
    let out = Command::new("debugfs").arg("-R").arg(format!("rdump / {}", dir.display())).arg(fs_image).output().await.map_err(fatal)?;
    let err = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 even when it cannot open the image; its banner is the only normal stderr line.
    if !out.status.success() || err.lines().any(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()) {
        return Err(fatal(format!("cannot read {} as an ext2/3/4 filesystem: {}", fs_image.display(), err.trim())));
    }
    Ok(())
}

fn mke2fs() -> &'static str {
    ["/usr/sbin/mke2fs", "/sbin/mke2fs"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("mke2fs")
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    layers: Vec<Descriptor>,
    config: Option<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    os: Option<String>,
}

/// Apply a container image's layers onto `root`; returns its OS.
fn apply_container_image(source: &Path, format: ImageFormat, scratch: &Path, root: &Path) -> Result<String, DriverError> {
    let layout = match format {
        ImageFormat::OciLayout => source.to_owned(),
        _ => {
            std::fs::create_dir_all(scratch).map_err(fatal)?;
            tar::Archive::new(File::open(source).map_err(fatal)?).unpack(scratch).map_err(|e| fatal(format!("reading the docker archive: {e}")))?;
            scratch.to_owned()
        }
    };
    let blob = |digest: &str| -> Result<PathBuf, DriverError> {
        let (algo, hex) = digest.split_once(':').ok_or_else(|| fatal(format!("bad digest {digest}")))?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !algo.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(fatal(format!("bad digest {digest}")));
        }
        Ok(layout.join("blobs").join(algo).join(hex))
    };
    let read_json = |path: &Path| -> Result<serde_json::Value, DriverError> {
        serde_json::from_slice(&std::fs::read(path).map_err(|e| fatal(format!("{}: {e}", path.display())))?)
            .map_err(|e| fatal(format!("{}: {e}", path.display())))
    };
    let (layers, os) = if layout.join("index.json").exists() {
        let index: OciIndex = serde_json::from_value(read_json(&layout.join("index.json"))?).map_err(fatal)?;
        let first = index.manifests.first().ok_or_else(|| fatal("index.json lists no manifest"))?;
        let mut manifest: serde_json::Value = read_json(&blob(&first.digest)?)?;
        // A multi-platform index points at another index: take its first manifest.
        if let Some(inner) = manifest.get("manifests").and_then(|m| m.get(0)).and_then(|d| d.get("digest")).and_then(|d| d.as_str()) {
            manifest = read_json(&blob(inner)?)?;
        }
        let manifest: OciManifest = serde_json::from_value(manifest).map_err(fatal)?;
        let config: ImageConfig = match &manifest.config {
            Some(c) => serde_json::from_value(read_json(&blob(&c.digest)?)?).unwrap_or_default(),
            None => ImageConfig::default(),
        };
        (manifest.layers.iter().map(|l| blob(&l.digest)).collect::<Result<Vec<_>, _>>()?, config.os)
    } else if layout.join("manifest.json").exists() {
        let manifests: Vec<DockerManifest> = serde_json::from_value(read_json(&layout.join("manifest.json"))?).map_err(fatal)?;
        let m = manifests.into_iter().next().ok_or_else(|| fatal("manifest.json lists no image"))?;
        (m.layers.iter().map(|l| layout.join(l)).collect(), None)
    } else {
        return Err(fatal("neither index.json (OCI layout) nor manifest.json (docker save) found"));
    };
    for layer in &layers {
        apply_layer(layer, root)?;
    }
    Ok(os.unwrap_or_else(|| "linux".into()))
}

/// Open a layer, gzip-compressed or not.
fn open_layer(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, DriverError> {
    let mut f = BufReader::new(File::open(path).map_err(|e| fatal(format!("layer {}: {e}", path.display())))?);
    let gz = std::io::BufRead::fill_buf(&mut f).map_err(fatal)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    Ok(tar::Archive::new(reader))
}

/// Apply one layer: first its whiteouts (deletions of lower-layer files,
/// `.wh.<name>` and opaque `.wh..wh..opq`), then its files.
fn apply_layer(path: &Path, root: &Path) -> Result<(), DriverError> {
    for entry in open_layer(path)?.entries().map_err(fatal)? {
        let entry = entry.map_err(fatal)?;
        let p = entry.path().map_err(fatal)?.into_owned();
        let Some(file) = p.file_name().and_then(|f| f.to_str()) else { continue };
        let Some(target) = file.strip_prefix(".wh.") else { continue };
        let dir = safe_join(root, p.parent().unwrap_or(Path::new("")))?;
        if !inside(root, &dir.join(target)) {
            continue;
        }
        if target == ".wh..opq" {
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                remove(&child.path());
            }
        } else {
            remove(&dir.join(target));
        }
    }
    let mut archive = open_layer(path)?;
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(fatal)? {
        let mut entry = entry.map_err(fatal)?;
        let is_whiteout = entry.path().map_err(fatal)?.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(".wh."));
        if is_whiteout {
            continue;
        }
        // A file replacing a directory (or the reverse) must remove the old one first.
        if let Ok(p) = entry.path() {
            let dst = safe_join(root, &p)?;
            let new_is_dir = entry.header().entry_type().is_dir();
            if std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir() != new_is_dir) && inside(root, &dst) {
                remove(&dst);
            }
        }
        entry.unpack_in(root).map_err(|e| fatal(format!("layer {}: {e}: {:?}", path.display(), std::error::Error::source(&e))))?;
    }
    Ok(())
}

/// `root/rel`, refusing anything that would leave `root`.
fn safe_join(root: &Path, rel: &Path) -> Result<PathBuf, DriverError> {
    use std::path::Component;
    let mut out = root.to_owned();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(fatal(format!("layer path {} leaves the image", rel.display()))),
        }
    }
    Ok(out)
}

/// Whether `p`'s parent, with every symlink resolved, is still inside `root`:
/// an image's absolute symlinks must never lead a write or delete to the host.
fn inside(root: &Path, p: &Path) -> bool {
    let (Ok(root), Some(parent)) = (std::fs::canonicalize(root), p.parent()) else { return false };
    std::fs::canonicalize(parent).is_ok_and(|c| c.starts_with(&root))
}

fn remove(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast()));
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("keep")).unwrap();
        std::fs::write(root.join("keep/old"), b"x").unwrap();
        let l1 = layer(d.path(), "l1", &[("etc/a", b"1"), ("etc/b", b"2"), ("opaque/x", b"x")]);
        let l2 = layer(d.path(), "l2", &[("etc/.wh.b", b""), ("etc/a", b"3"), ("opaque/.wh..wh..opq", b""), ("opaque/y", b"y")]);
        apply_layer(&l1, &root).unwrap();
        apply_layer(&l2, &root).unwrap();
        assert_eq!(std::fs::read(root.join("etc/a")).unwrap(), b"3");
        assert!(!root.join("etc/b").exists(), "whiteout removed the lower file");
        assert!(!root.join("etc/.wh.b").exists(), "whiteout markers are not copied");
        assert!(!root.join("opaque/x").exists() && root.join("opaque/y").exists(), "opaque dir hides lower contents");
        assert!(root.join("keep/old").exists());
    }

    #[test]
    fn paths_cannot_escape() {
        assert!(safe_join(Path::new("/r"), Path::new("../etc")).is_err());
        assert_eq!(safe_join(Path::new("/r"), Path::new("/a/./b")).unwrap(), PathBuf::from("/r/a/b"));
    }
}
