//! What a host offers VMs: measured (qemu) or configured (sim) capacity less
//! what the operator keeps for the host itself (`--reserve-cpus`,
//! `--reserve-memory-mib`), so placement never fills a machine to the point
//! where its own processes (qemu overhead, the worker, the OS) starve.

use std::path::Path;
use vmplane_domain::host::HostInfo;

/// What the operator keeps for the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// A reserve that would leave VMs nothing: refused at worker start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("--reserve-cpus {reserve} leaves no vCPUs for VMs: this host has {total}")]
    Cpus { reserve: u32, total: u32 },
    #[error("--reserve-memory-mib {reserve} leaves no memory for VMs: this host has {total} MiB")]
    Memory { reserve: u64, total: u64 },
}

impl Reserve {
    /// Take the reserve off what `host` announces.
    pub fn apply(self, host: &mut HostInfo) -> Result<(), ReserveError> {
        let cpus = host.cpus.checked_sub(self.cpus).filter(|n| *n > 0).ok_or(ReserveError::Cpus { reserve: self.cpus, total: host.cpus })?;
        let memory_mib =
            host.memory_mib.checked_sub(self.memory_mib).filter(|n| *n > 0).ok_or(ReserveError::Memory { reserve: self.memory_mib, total: host.memory_mib })?;
        (host.cpus, host.memory_mib) = (cpus, memory_mib);
        Ok(())
    }
}

/// The CPUs this process may run on.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// Physical memory, from /proc/meminfo.
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(1024, |kb| kb / 1024)
}

/// Free space where guest disks live, in GB.
pub fn host_disk_gb(dir: &Path) -> u64 {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return 0;
        }
        (st.f_bavail as u64 * st.f_frsize as u64) >> 30
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpus: u32, memory_mib: u64) -> HostInfo {
        HostInfo { cpus, memory_mib, disk_gb: 100, ..HostInfo::default() }
    }

    #[test]
    fn the_reserve_comes_off_cpus_and_memory_only() {
        let mut h = host(16, 32768);
        Reserve { cpus: 2, memory_mib: 4096 }.apply(&mut h).unwrap();
        assert_eq!((h.cpus, h.memory_mib, h.disk_gb), (14, 28672, 100));
        let mut h = host(16, 32768);
        Reserve::default().apply(&mut h).unwrap();
        assert_eq!((h.cpus, h.memory_mib), (16, 32768), "no reserve, nothing taken");
    }

    #[test]
    fn a_reserve_that_leaves_nothing_is_refused_and_changes_nothing() {
        let mut h = host(4, 8192);
        assert_eq!(Reserve { cpus: 4, memory_mib: 0 }.apply(&mut h), Err(ReserveError::Cpus { reserve: 4, total: 4 }));
        assert_eq!(Reserve { cpus: 9, memory_mib: 0 }.apply(&mut h), Err(ReserveError::Cpus { reserve: 9, total: 4 }));
        assert_eq!(Reserve { cpus: 1, memory_mib: 8192 }.apply(&mut h), Err(ReserveError::Memory { reserve: 8192, total: 8192 }));
        assert_eq!((h.cpus, h.memory_mib), (4, 8192));
        assert!(Reserve { cpus: 4, memory_mib: 0 }.apply(&mut h).unwrap_err().to_string().starts_with("--reserve-cpus 4 leaves no vCPUs"));
    }
}
