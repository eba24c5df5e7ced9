//! The worker's local index of the aggregates (VMs, volumes) of its host that
//! may have an operation in progress, so that a restarted worker finds the
//! operations left pending without scanning the event stream.
//!
//! One small JSON file per aggregate in `<data-dir>/pending/`, written before
//! a command is decided (so a crash right after the decision still leaves it)
//! and set to `null` once the aggregate has no operation pending (rewritten
//! in place rather than deleted: see `record`); a deleted VM's file goes. At start the
//! worker reads every entry, loads only those aggregates, and resumes an
//! operation still pending whose command is no longer in the command stream
//! (one that is still there is resumed by its own delivery).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vmplane_domain::{OrgId, VmId, VolumeId};

/// The aggregate an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Target {
    Vm(VmId),
    Volume(VolumeId),
}

impl Target {
    /// The aggregate id, which is also the last token of its command subject.
    pub fn key(&self) -> String {
        match self {
            Self::Vm(id) => id.to_string(),
            Self::Volume(id) => id.to_string(),
        }
    }
}

/// One aggregate that may have an operation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub org: OrgId,
    pub target: Target,
    /// How many times a starting worker resumed the pending operation without
    /// its command; bounded like deliveries, so a step that crashes the worker
    /// cannot make it crash at every start.
    #[serde(default)]
    pub resumes: i64,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct PendingIndex {
    dir: PathBuf,
}

impl PendingIndex {
    /// The index kept in `dir` (created if missing).
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, target: &Target) -> PathBuf {
        self.dir.join(format!("{}.json", target.key()))
    }

    /// Note that `target` may get an operation in progress; an existing entry
    /// (with its resume count) is kept.
    pub fn note(&self, org: OrgId, target: Target) -> std::io::Result<()> {
        if self.entry(&target).is_some() {
            return Ok(());
        }
        self.write(&Entry { org, target, resumes: 0 })
    }

    /// The entry of `target`, if it has one.
    fn entry(&self, target: &Target) -> Option<Entry> {
        std::fs::read(self.path(target)).ok().and_then(|b| serde_json::from_slice::<Option<Entry>>(&b).ok().flatten())
    }

    /// Write an entry atomically (a crash leaves the old one or the new one).
    pub fn write(&self, entry: &Entry) -> std::io::Result<()> {
        crate::record::write(&self.path(&entry.target), &serde_json::to_vec(entry).map_err(std::io::Error::other)?)
    }

    /// Forget `target`: it has no operation pending.
    pub fn clear(&self, target: &Target) -> std::io::Result<()> {
        let path = self.path(target);
        if !path.exists() {
            return Ok(());
        }
        crate::record::write(&path, b"null")
    }

    /// Forget `target` for good (it was deleted).
    pub fn remove(&self, target: &Target) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(target)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every entry; unreadable files are skipped with a warning.
    pub fn entries(&self) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for file in std::fs::read_dir(&self.dir)? {
            let path = file?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Option<Entry>>(&b).map_err(|e| e.to_string())) {
                Ok(entry) => out.extend(entry),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable pending-operation entry"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_keeps_an_entry_and_clear_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let index = PendingIndex::open(dir.path().join("pending")).unwrap();
        let (org, vm, vol) = (OrgId::new(), Target::Vm(VmId::new()), Target::Volume(VolumeId::new()));
        index.note(org, vm).unwrap();
        index.write(&Entry { org, target: vm, resumes: 2 }).unwrap();
        index.note(org, vm).unwrap();
        index.note(org, vol).unwrap();
        std::fs::write(dir.path().join("pending").join("garbage.json"), b"{").unwrap();
        let mut entries = index.entries().unwrap();
        entries.sort_by_key(|e| e.target.key());
        let mut want = vec![Entry { org, target: vm, resumes: 2 }, Entry { org, target: vol, resumes: 0 }];
        want.sort_by_key(|e| e.target.key());
        assert_eq!(entries, want, "a second note keeps the resume count");
        index.clear(&vm).unwrap();
        index.clear(&vm).unwrap();
        assert_eq!(index.entries().unwrap(), vec![Entry { org, target: vol, resumes: 0 }]);
    }
}
