//! The cloud-init NoCloud seed disk: an ext4 filesystem labelled `cidata`
//! holding `meta-data`, `user-data`, `authorized_keys`, `env` and `volumes`,
//! written with `mke2fs -d` (no root, no mounts). Request data is written to
//! files, never put on a command line or through a shell.

use std::path::Path;
use tokio::process::Command;
use vmplane_domain::vm::Vm;

/// Write the seed image for `vm` at `out`; `volumes` is the `volumes` file
/// (one `<serial> <path> <ro|rw>` line per plugged volume).
pub async fn write(vm: &Vm, out: &Path, volumes: String) -> Result<(), String> {
    let staging = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = staging.path();
    let files = [
        ("meta-data", format!("instance-id: {}\nlocal-hostname: {}\n", vm.id, vm.spec.name)),
        ("user-data", vm.spec.user_data.clone().unwrap_or_default()),
        ("authorized_keys", vm.spec.ssh_keys.iter().map(|k| format!("{k}\n")).collect()),
        ("env", vm.spec.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect()),
        ("volumes", volumes),
    ];
    let mut total = 0;
    for (name, content) in &files {
        total += content.len();
        std::fs::write(root.join(name), content).map_err(|e| format!("seed {name}: {e}"))?;
    }
    let size_kib = (total / 1024 * 2 + 2048).max(4096);
    let _ = std::fs::remove_file(out);
    let status = Command::new(mke2fs())
        .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-b", "1024", "-m", "0", "-L", "cidata", "-E", "root_owner=0:0", "-d"])
        .arg(root)
        .arg(out)
        .arg(format!("{size_kib}k"))
        .output()
        .await
        .map_err(|e| format!("mke2fs: {e} (install e2fsprogs)"))?;
    if status.status.success() { Ok(()) } else { Err(format!("mke2fs failed: {}", String::from_utf8_lossy(&status.stderr).trim())) }
}

fn mke2fs() -> &'static str {
    ["/usr/sbin/mke2fs", "/sbin/mke2fs"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("mke2fs")
}
