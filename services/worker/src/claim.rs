//! One worker per data dir and per host id, so a VM never gets two
//! hypervisor processes.
//!
//! - The worker's data dir is locked (`flock` on `<dir>/lock`) for the life of
//!   the process: a second worker on the same directory stops at once.
//! - The host id is leased in NATS: the key `lease.<host_id>` of the heartbeat
//!   bucket names the data dir holding it (machine id, device and inode of the
//!   lock file, so a copy of the directory is another holder). It is renewed
//!   with every heartbeat, each write conditional on the revision read before.
//!   A worker restarted on the same data dir (after kill -9, say) takes its
//!   lease back at once: holding the lock proves the previous holder is gone.
//!   Any other holder gets the lease only after it went unrenewed for the
//!   lease TTL; a worker that finds its lease taken by another stops.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use vmplane_bus::async_nats::jetstream::kv;
use vmplane_bus::{Bus, BusError};
use vmplane_domain::{HostId, subjects};

/// Why this worker may not run (or go on running) for its host.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("another worker ({holder}) is using the data dir {dir}; refusing to start")]
    DataDirInUse { dir: PathBuf, holder: String },
    #[error("cannot lock the data dir {dir}: {source}")]
    Lock { dir: PathBuf, source: std::io::Error },
    #[error("host {host} is held by another worker ({holder}), whose lease was renewed {age_secs} s ago; refusing to start (is this a copy of its data dir?)")]
    HostInUse { host: HostId, holder: String, age_secs: i64 },
    #[error("the lease of host {host} was taken by another worker ({holder}); stopping")]
    LeaseLost { host: HostId, holder: String },
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ClaimError {
    /// Whether it only says NATS could not be reached (trying again may do).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Bus(e) if e.is_transient())
    }
}

/// The data dir's lock, held until dropped (the process exits).
pub struct DataDirLock {
    _file: File,
    /// Who holds it, as leases name it: machine, device and inode of the lock file.
    holder: String,
    /// Where it is, for messages.
    place: String,
}

/// Lock `dir` (created if missing) for this process, or say who holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, ClaimError> {
    let io = |source| ClaimError::Lock { dir: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join("lock");
    let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(ClaimError::DataDirInUse { dir: dir.to_owned(), holder: format!("pid {}", pid.trim()) });
        }
        Err(fs4::TryLockError::Error(e)) => return Err(io(e)),
    }
    // The pid, for the message the next contender gets.
    file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id())).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let holder = format!("{}:{}:{}", machine_id(), meta.dev(), meta.ino());
    let place = format!("{} pid {} {}", hostname(), std::process::id(), dir.display());
    Ok(DataDirLock { _file: file, holder, place })
}

fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id").map(|s| s.trim().to_owned()).ok().filter(|s| !s.is_empty()).unwrap_or_else(hostname)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "localhost".into())
}

/// What the lease key holds.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    place: String,
}

/// The host's lease, held by this worker.
pub struct Lease {
    host: HostId,
    key: String,
    holder: String,
    value: bytes::Bytes,
    revision: u64,
    ttl: Duration,
}

/// How many times a claim is retried when another contender writes between our read and our write.
const CLAIM_RACES: usize = 5;

impl Lease {
    /// Take the host's lease for the data dir holding `lock`, unless another
    /// data dir holds it and renewed it within `ttl`.
    pub async fn acquire(bus: &Bus, host: HostId, lock: &DataDirLock, ttl: Duration) -> Result<Self, ClaimError> {
        let value = serde_json::to_vec(&LeaseValue { holder: lock.holder.clone(), place: lock.place.clone() }).expect("a lease value encodes");
        let mut lease = Self { host, key: format!("lease.{host}"), holder: lock.holder.clone(), value: value.into(), revision: 0, ttl };
        let kv = bus.bucket(subjects::HEARTBEAT_BUCKET).await?;
        lease.claim(&kv, true).await?;
        Ok(lease)
    }

    /// Renew the lease; if it expired meanwhile (a long NATS outage), claim it
    /// again. [`ClaimError::LeaseLost`] when another worker holds it now.
    pub async fn renew(&mut self, bus: &Bus) -> Result<(), ClaimError> {
        let kv = bus.bucket(subjects::HEARTBEAT_BUCKET).await?;
        match kv.update(&self.key, self.value.clone(), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => self.claim(&kv, false).await,
            Err(e) => Err(BusError::Unavailable(e.to_string()).into()),
        }
    }

    async fn claim(&mut self, kv: &kv::Store, at_start: bool) -> Result<(), ClaimError> {
        let unavailable = |e: &dyn std::fmt::Display| ClaimError::Bus(BusError::Unavailable(e.to_string()));
        for _ in 0..CLAIM_RACES {
            let current = kv.entry(&self.key).await.map_err(|e| unavailable(&e))?.filter(|e| e.operation == kv::Operation::Put);
            let written = match current {
                None => kv.create(&self.key, self.value.clone()).await.map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())),
                Some(entry) => {
                    let theirs = serde_json::from_slice::<LeaseValue>(&entry.value).ok();
                    let holder = theirs.as_ref().map_or_else(|| "unknown".to_owned(), |v| v.place.clone());
                    let age = OffsetDateTime::now_utc() - entry.created;
                    if theirs.as_ref().is_some_and(|v| v.holder == self.holder) {
                        if at_start {
                            tracing::info!(host = %self.host, "took back this data dir's own lease of its host");
                        }
                    } else if age < self.ttl {
                        return Err(if at_start {
                            ClaimError::HostInUse { host: self.host, holder, age_secs: age.whole_seconds() }
                        } else {
                            ClaimError::LeaseLost { host: self.host, holder }
                        });
                    } else {
                        tracing::warn!(host = %self.host, %holder, age_secs = age.whole_seconds(), "taking over a lease its holder stopped renewing");
                    }
                    kv.update(&self.key, self.value.clone(), entry.revision)
                        .await
                        .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string()))
                }
            };
            match written {
                Ok(revision) => {
                    self.revision = revision;
                    return Ok(());
                }
                // Another contender wrote between our read and our write: look again.
                Err((true, _)) => continue,
                Err((false, e)) => return Err(unavailable(&e)),
            }
        }
        Err(unavailable(&format!("the lease of host {} keeps changing under us", self.host)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_data_dir_is_refused_and_a_copy_is_another_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        match lock_data_dir(dir.path()) {
            Err(ClaimError::DataDirInUse { holder, .. }) => assert_eq!(holder, format!("pid {}", std::process::id())),
            other => panic!("a second lock of the same dir must fail: {:?}", other.err()),
        }
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("lock"), copy.path().join("lock")).unwrap();
        let other = lock_data_dir(copy.path()).unwrap();
        assert_ne!(first.holder, other.holder, "a copied data dir must not pass for the original");
        let holder = first.holder.clone();
        drop(first);
        let again = lock_data_dir(dir.path()).unwrap();
        assert_eq!(again.holder, holder, "the same data dir, locked again after its holder is gone, is the same holder");
    }
}
