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
    // A canonical path: no `json:` or protocol prefix for qemu-img to interpret, no symlink games.
    let source = &std::fs::canonicalize(source).map_err(|e| fatal(format!("{}: {e}", source.display())))?;
    let meta = std::fs::metadata(source).map_err(fatal)?;
    match format {
        ImageFormat::OciLayout if !meta.is_dir() => return Err(fatal(format!("{} is not a directory (an OCI image layout)", source.display()))),
        ImageFormat::OciLayout => {}
        _ if !meta.is_file() => return Err(fatal(format!("{} is not a regular file", source.display()))),
        _ => {}
    }
    if format == ImageFormat::Qcow2 {
        standalone_qcow2(source).await?;
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

/// Refuse a qcow2 image that refers to other files (a backing file or an
/// external data file): converting it would read those host files into the image.
async fn standalone_qcow2(source: &Path) -> Result<(), DriverError> {
    let info = super::qcow2_info(source).await?;
    if let Some(backing) = info.get("backing-filename").and_then(|b| b.as_str()) {
        return Err(fatal(format!("{} has a backing file ({backing}): import a standalone image (qemu-img convert)", source.display())));
    }
    if let Some(data) = info.pointer("/format-specific/data/data-file").and_then(|d| d.as_str()) {
        return Err(fatal(format!("{} has an external data file ({data}): import a standalone image (qemu-img convert)", source.display())));
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
            unpack_checked(tar::Archive::new(File::open(source).map_err(fatal)?), scratch).map_err(|e| fatal(format!("the docker archive: {e}")))?;
            scratch.to_owned()
        }
    };
    let blob = |digest: &str| -> Result<PathBuf, DriverError> {
        let (algo, hex) = digest.split_once(':').ok_or_else(|| fatal(format!("bad digest {digest}")))?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !algo.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(fatal(format!("bad digest {digest}")));
        }
        file_inside(&layout, &Path::new("blobs").join(algo).join(hex))
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
        (m.layers.iter().map(|l| file_inside(&layout, Path::new(l))).collect::<Result<Vec<_>, _>>()?, None)
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
    // Every entry is checked before this layer changes anything, including
    // against the symlinks the layer itself makes on the way.
    let mut whiteouts = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in open_layer(path)?.entries().map_err(fatal)? {
        let entry = entry.map_err(fatal)?;
        let p = entry.path().map_err(fatal)?.into_owned();
        let dst = entry_path(root, &p)?;
        let rel = dst.strip_prefix(root).expect("entry_path stays under root").to_owned();
        if let Some((link, target)) = links.iter().find(|(l, _)| rel.starts_with(l) && rel != *l)
            && escapes(link, target)
        {
            return Err(fatal(format!("archive path {} leads outside the image through the symlink /{}", p.display(), link.display())));
        }
        let kind = entry.header().entry_type();
        if let Some(target) = entry.link_name().map_err(fatal)? {
            if kind.is_hard_link() {
                entry_path(root, &target)?;
            } else if kind.is_symlink() {
                links.push((rel.clone(), target.into_owned()));
            }
        }
        let Some(file) = p.file_name().and_then(|f| f.to_str()) else { continue };
        let Some(target) = file.strip_prefix(".wh.") else { continue };
        let dir = dst.parent().unwrap_or(root).to_owned();
        whiteouts.push(if target == ".wh..opq" { (dir, None) } else { (dir.clone(), Some(dir.join(target))) });
    }
    for (dir, one) in whiteouts {
        match one {
            Some(p) => remove(&p),
            None => std::fs::read_dir(&dir).into_iter().flatten().flatten().for_each(|child| remove(&child.path())),
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
        // Checked again: an earlier entry of this layer may have made a symlink on the way.
        let dst = entry_path(root, &entry.path().map_err(fatal)?)?;
        // A file replacing a directory (or the reverse) must remove the old one first.
        let new_is_dir = entry.header().entry_type().is_dir();
        if std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir() != new_is_dir) {
            remove(&dst);
        }
        entry.unpack_in(root).map_err(|e| fatal(format!("layer {}: {e}: {:?}", path.display(), std::error::Error::source(&e))))?;
    }
    Ok(())
}

/// Unpack an archive into `dir`, checking each entry before it is created.
fn unpack_checked<R: Read>(mut archive: tar::Archive<R>, dir: &Path) -> Result<(), DriverError> {
    for entry in archive.entries().map_err(fatal)? {
        let mut entry = entry.map_err(fatal)?;
        entry_path(dir, &entry.path().map_err(fatal)?)?;
        if let Some(link) = entry.link_name().map_err(fatal)?
            && entry.header().entry_type().is_hard_link()
        {
            entry_path(dir, &link)?;
        }
        entry.unpack_in(dir).map_err(fatal)?;
    }
    Ok(())
}

/// Where an archive entry `rel` lands under `root`. Refuses absolute paths,
/// `..`, and a path through an existing symlink that resolves outside `root`
/// (an image's `/etc -> /host/etc` must never lead a write to the host).
fn entry_path(root: &Path, rel: &Path) -> Result<PathBuf, DriverError> {
    use std::path::Component;
    let canon_root = std::fs::canonicalize(root).map_err(fatal)?;
    let parts: Vec<Component> = rel.components().collect();
    let mut out = root.to_owned();
    for (i, c) in parts.iter().enumerate() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => continue,
            Component::RootDir | Component::Prefix(_) => return Err(fatal(format!("archive path {} is absolute", rel.display()))),
            Component::ParentDir => return Err(fatal(format!("archive path {} contains `..`", rel.display()))),
        }
        // The last component is replaced, never followed; the ones before it are followed.
        if i + 1 < parts.len() && std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
            match std::fs::canonicalize(&out) {
                Ok(real) if real.starts_with(&canon_root) => {}
                _ => {
                    let link = out.strip_prefix(root).unwrap_or(&out).display().to_string();
                    return Err(fatal(format!("archive path {} leads outside the image through the symlink /{link}", rel.display())));
                }
            }
        }
    }
    Ok(out)
}

/// Whether the symlink `link` (relative to the image root) pointing at
/// `target` leads out of the image, read lexically: absolute targets do.
fn escapes(link: &Path, target: &Path) -> bool {
    use std::path::Component;
    let mut depth = link.components().count().saturating_sub(1) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// An existing file named by the image (a layer, a blob), which must really lie inside `dir`.
fn file_inside(dir: &Path, rel: &Path) -> Result<PathBuf, DriverError> {
    let path = entry_path(dir, rel)?;
    let (Ok(real), Ok(dir)) = (std::fs::canonicalize(&path), std::fs::canonicalize(dir)) else {
        return Err(fatal(format!("{} is missing from the image", rel.display())));
    };
    if real.starts_with(&dir) { Ok(path) } else { Err(fatal(format!("{} leads outside the image through a symlink", rel.display()))) }
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
            if let Some(target) = p.strip_suffix("@").and(Some(std::str::from_utf8(data).unwrap())) {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_link_name(target).unwrap();
            }
            // Names as given, tricks included (the builder would refuse `..` and absolute paths).
            let name = p.trim_end_matches('@').as_bytes();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            let body: &[u8] = if p.ends_with('@') { &[] } else { data };
            b.append(&h, body).unwrap();
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
    fn entry_paths_cannot_escape() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("dangling")).unwrap();
        assert_eq!(entry_path(&root, Path::new("./a/b")).unwrap(), root.join("a/b"));
        assert_eq!(entry_path(&root, Path::new("lib/x.so")).unwrap(), root.join("lib/x.so"), "a symlink inside the image is fine");
        assert_eq!(entry_path(&root, Path::new("out")).unwrap(), root.join("out"), "the last component is replaced, not followed");
        for (bad, why) in [("../etc/passwd", "`..`"), ("a/../../x", "`..`"), ("/etc/passwd", "absolute"), ("out/x", "outside"), ("dangling/x", "outside")] {
            let e = entry_path(&root, Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_layer_with_a_trick_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        type Files<'a> = Vec<(&'a str, &'a [u8])>;
        let cases: [(&str, Files); 4] = [
            ("abs", vec![("etc/ok", b"1"), ("/etc/abs", b"x")]),
            ("dotdot", vec![("etc/ok", b"1"), ("../dotdot", b"x")]),
            ("link", vec![("etc/ok", b"1"), ("escape/pwned", b"x")]),
            ("own-link", vec![("etc/ok", b"1"), ("mine@", b"/tmp"), ("mine/pwned", b"x")]),
        ];
        for (name, files) in cases {
            let root = d.path().join(format!("root-{name}"));
            std::fs::create_dir_all(&root).unwrap();
            std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
            let l = layer(d.path(), &format!("{name}.tar"), &files);
            let e = apply_layer(&l, &root).unwrap_err().to_string();
            assert!(e.contains("absolute") || e.contains("`..`") || e.contains("outside"), "{name}: {e}");
            assert!(!root.join("etc").exists(), "{name}: the layer changed the image before being refused");
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{name}: something was written outside");
            assert!(!d.path().join("dotdot").exists());
        }
    }
}
