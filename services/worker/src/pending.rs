//! The worker's local index of the aggregates (VMs, volumes) of its host that
//! may have an operation in progress, so that a restarted worker finds the
//! operations left pending without scanning the event stream.
//!
//! An entry is noted before a command is decided (so a crash right after the
//! decision still leaves it) and cleared once the aggregate has no operation
//! pending. At start the worker reads every entry, loads only those
//! aggregates, and resumes an operation still pending whose command is no
//! longer in the command stream (one that is still there is resumed by its
//! own delivery).
//!
//! Kept as a journal, `<dir>/pending.log`: one JSON line per change, each
//! appended by one `write` to the page cache, so a killed worker keeps every
//! change it made; the live entries are held in memory. A file per
//! aggregate (the layout before) cost an inode per VM, and on ext4 the inode
//! allocator's walk over recently deleted inodes became the worker's largest
//! cost under VM churn. The journal is rewritten (temp file and rename) when
//! it opens and whenever it has grown to several times its live entries; the
//! per-aggregate files of the old layout are read into it on open and removed.
//! An append cut short (a full disk) is cut off again, so the next change
//! starts a line of its own; a temp file left by a compaction that was
//! interrupted is removed on open.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vmplane_domain::{OrgId, VmId, VolumeId};

/// The aggregate an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Set(Entry),
    Clear(Target),
}

const JOURNAL: &str = "pending.log";
/// The prefix of a compaction's temp file (before the rename).
const COMPACTING: &str = ".pending.log.compacting-";
/// The prefix of the temp files of compactions before [`COMPACTING`] was
/// named (`tempfile`'s default).
const COMPACTING_BEFORE: &str = ".tmp";
/// The journal is compacted once it has this many lines and more than
/// [`GROWTH`] times its live entries.
const COMPACT_AFTER: usize = 4096;
const GROWTH: usize = 4;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct PendingIndex {
    inner: Arc<Mutex<Journal>>,
}

#[derive(Debug)]
struct Journal {
    dir: PathBuf,
    file: File,
    /// The journal's length after the last whole line.
    len: u64,
    /// An append failed part-way and could not be cut off: the next line
    /// starts with a newline so it is not read as the end of the torn one.
    torn: bool,
    live: HashMap<Target, Entry>,
    lines: usize,
}

impl PendingIndex {
    /// The index kept in `dir` (created if missing).
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut live = HashMap::new();
        match std::fs::read(dir.join(JOURNAL)) {
            Ok(bytes) => {
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    match serde_json::from_slice::<Change>(line) {
                        Ok(Change::Set(entry)) => {
                            live.insert(entry.target, entry);
                        }
                        Ok(Change::Clear(target)) => {
                            live.remove(&target);
                        }
                        // Only a torn last line after a power loss: the change it held was not complete.
                        Err(e) => tracing::warn!(error = %e, "skipping an unreadable line of the pending-operation journal"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let legacy = legacy_entries(&dir, &mut live)?;
        remove_interrupted_compactions(&dir)?;
        let (file, len) = compact(&dir, &live)?;
        for path in legacy {
            std::fs::remove_file(path)?;
        }
        let lines = live.len();
        Ok(Self { inner: Arc::new(Mutex::new(Journal { dir, file, len, torn: false, live, lines })) })
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Note that `target` may get an operation in progress; an existing entry
    /// (with its resume count) is kept.
    pub fn note(&self, org: OrgId, target: Target) -> std::io::Result<()> {
        let mut journal = self.journal();
        if journal.live.contains_key(&target) {
            return Ok(());
        }
        journal.append(Change::Set(Entry { org, target, resumes: 0 }))
    }

    /// Write an entry (replacing the target's).
    pub fn write(&self, entry: &Entry) -> std::io::Result<()> {
        self.journal().append(Change::Set(entry.clone()))
    }

    /// Forget `target`: it has no operation pending (or is gone).
    pub fn clear(&self, target: &Target) -> std::io::Result<()> {
        let mut journal = self.journal();
        if !journal.live.contains_key(target) {
            return Ok(());
        }
        journal.append(Change::Clear(*target))
    }

    /// Every entry.
    pub fn entries(&self) -> std::io::Result<Vec<Entry>> {
        Ok(self.journal().live.values().cloned().collect())
    }
}

impl Journal {
    /// Record `change` (one write of one line), then apply it in memory.
    fn append(&mut self, change: Change) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(128);
        if self.torn {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &change).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            // Part of the line may be written: cut it off, or failing that
            // make sure the next line does not continue it.
            self.torn = self.file.set_len(self.len).is_err() || self.torn;
            return Err(e);
        }
        self.len += line.len() as u64;
        self.torn = false;
        self.lines += 1;
        match change {
            Change::Set(entry) => {
                self.live.insert(entry.target, entry);
            }
            Change::Clear(target) => {
                self.live.remove(&target);
            }
        }
        if self.lines > COMPACT_AFTER && self.lines > GROWTH * self.live.len() {
            (self.file, self.len) = compact(&self.dir, &self.live)?;
            self.lines = self.live.len();
        }
        Ok(())
    }
}

/// Rewrite the journal as the live entries only (a temp file renamed over
/// it: a crash leaves the old journal or the new one) and open it to
/// append; returns it with its length.
fn compact(dir: &Path, live: &HashMap<Target, Entry>) -> std::io::Result<(File, u64)> {
    let mut tmp = tempfile::Builder::new().prefix(COMPACTING).tempfile_in(dir)?;
    let mut out = Vec::with_capacity(live.len() * 128);
    for entry in live.values() {
        serde_json::to_writer(&mut out, &Change::Set(entry.clone())).map_err(std::io::Error::other)?;
        out.push(b'\n');
    }
    tmp.write_all(&out)?;
    tmp.as_file().sync_all()?;
    let path = dir.join(JOURNAL);
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok((OpenOptions::new().append(true).open(path)?, out.len() as u64))
}

/// Remove the temp files of compactions a killed worker did not finish
/// (their journal is the one still in place).
fn remove_interrupted_compactions(dir: &Path) -> std::io::Result<()> {
    for file in std::fs::read_dir(dir)? {
        let file = file?;
        let name = file.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with(COMPACTING) || name.starts_with(COMPACTING_BEFORE)) && file.file_type()?.is_file() {
            std::fs::remove_file(file.path())?;
        }
    }
    Ok(())
}

/// The entries of the layout before the journal (`<dir>/<id>.json`, `null`
/// once cleared) added to `live`, and their files, to remove once the
/// journal holds them.
fn legacy_entries(dir: &Path, live: &mut HashMap<Target, Entry>) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for file in std::fs::read_dir(dir)? {
        let path = file?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Option<Entry>>(&b).map_err(|e| e.to_string())) {
            Ok(entry) => {
                if let Some(entry) = entry {
                    live.entry(entry.target).or_insert(entry);
                }
                files.push(path);
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable pending-operation entry"),
        }
    }
    Ok(files)
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
        let mut entries = index.entries().unwrap();
        entries.sort_by_key(|e| e.target.key());
        let mut want = vec![Entry { org, target: vm, resumes: 2 }, Entry { org, target: vol, resumes: 0 }];
        want.sort_by_key(|e| e.target.key());
        assert_eq!(entries, want, "a second note keeps the resume count");
        index.clear(&vm).unwrap();
        index.clear(&vm).unwrap();
        assert_eq!(index.entries().unwrap(), vec![Entry { org, target: vol, resumes: 0 }]);
    }

    /// What a killed worker wrote is what the next one reads: every change
    /// is in the journal when the call returns, a torn last line (a power
    /// loss mid-write) is skipped, and compaction keeps the live entries.
    #[test]
    fn a_reopened_index_holds_the_entries_left_and_compaction_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending");
        let org = OrgId::new();
        let kept: Vec<Target> = (0..3).map(|_| Target::Vm(VmId::new())).collect();
        {
            let index = PendingIndex::open(path.clone()).unwrap();
            for t in &kept {
                index.note(org, *t).unwrap();
            }
            index.write(&Entry { org, target: kept[0], resumes: 3 }).unwrap();
            // Churn past the compaction threshold: noted and cleared.
            for _ in 0..COMPACT_AFTER {
                let t = Target::Volume(VolumeId::new());
                index.note(org, t).unwrap();
                index.clear(&t).unwrap();
            }
            // Dropped without any shutdown, as a killed worker is.
        }
        let lines = std::fs::read(path.join(JOURNAL)).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        assert!(lines < COMPACT_AFTER, "compacted while churning: {lines} lines");
        let mut torn = OpenOptions::new().append(true).open(path.join(JOURNAL)).unwrap();
        torn.write_all(br#"{"clear":{"kind":"vm","#).unwrap();
        // A compaction killed before its rename leaves its temp file (named
        // as now, or as before it was named).
        let left = [path.join(format!("{COMPACTING}x1")), path.join(format!("{COMPACTING_BEFORE}x2"))];
        for f in &left {
            std::fs::write(f, b"{\"set\":").unwrap();
        }
        let index = PendingIndex::open(path.clone()).unwrap();
        assert!(left.iter().all(|f| !f.exists()), "a killed compaction's temp files are removed");
        let mut got = index.entries().unwrap();
        got.sort_by_key(|e| e.target.key());
        let mut want: Vec<Entry> = kept.iter().map(|t| Entry { org, target: *t, resumes: if *t == kept[0] { 3 } else { 0 } }).collect();
        want.sort_by_key(|e| e.target.key());
        assert_eq!(got, want);
        assert_eq!(std::fs::read(path.join(JOURNAL)).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 3, "rewritten on open");
    }

    /// A change whose write failed (a full disk) is not applied, and when
    /// its torn part cannot be cut off, the next change still starts a line
    /// of its own, so a reopened index reads it.
    #[test]
    fn a_failed_append_is_not_applied_and_the_next_line_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending");
        let index = PendingIndex::open(path.clone()).unwrap();
        let (org, vm) = (OrgId::new(), Target::Vm(VmId::new()));
        // `/dev/full` refuses every write, and cannot be truncated either.
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let mut journal = std::mem::replace(&mut index.journal().file, full);
        assert!(index.note(org, vm).is_err());
        assert_eq!(index.entries().unwrap(), vec![], "a change not written is not applied");
        // What a write cut short by a full disk leaves at the end of the journal.
        journal.write_all(br#"{"set":{"org":"#).unwrap();
        index.journal().file = journal;
        index.note(org, vm).unwrap();
        drop(index);
        assert_eq!(PendingIndex::open(path).unwrap().entries().unwrap(), vec![Entry { org, target: vm, resumes: 0 }]);
    }

    /// A data dir of the layout before the journal (a file per aggregate,
    /// `null` once cleared) is read into the journal, and its files removed.
    #[test]
    fn the_files_of_the_layout_before_are_read_in_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending");
        std::fs::create_dir_all(&path).unwrap();
        let (org, vm, gone) = (OrgId::new(), Target::Vm(VmId::new()), Target::Vm(VmId::new()));
        let entry = Entry { org, target: vm, resumes: 1 };
        std::fs::write(path.join(format!("{}.json", vm.key())), serde_json::to_vec(&entry).unwrap()).unwrap();
        std::fs::write(path.join(format!("{}.json", gone.key())), b"null    ").unwrap();
        let index = PendingIndex::open(path.clone()).unwrap();
        assert_eq!(index.entries().unwrap(), vec![entry.clone()]);
        let left: Vec<_> = std::fs::read_dir(&path).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        assert_eq!(left, vec![JOURNAL.to_owned()]);
        assert_eq!(PendingIndex::open(path).unwrap().entries().unwrap(), vec![entry]);
    }
}
