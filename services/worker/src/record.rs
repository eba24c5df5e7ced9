//! Small JSON records the worker keeps in files (the sim driver's guests),
//! rewritten at every step of every operation.
//!
//! A rewrite must survive the process being killed at any instant, and must
//! not create a file each time: a temp file renamed over the old one costs
//! an inode allocation and a deletion per write, which on ext4 became the
//! worker's main cost at a few hundred creates a second. So a record is
//! created once through a temp file and a rename, and after that rewritten
//! in place by one positioned write that covers the whole old content (the
//! new JSON padded with spaces, which JSON ignores): a killed process leaves
//! the old record or the new one, never a mix.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Write `json` as the record at `path` (see the module docs).
pub fn write(path: &Path, json: &[u8]) -> std::io::Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            let old = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
            let mut bytes = json.to_vec();
            if bytes.len() < old {
                bytes.resize(old, b' ');
            }
            file.write_all_at(&bytes, 0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(json)?;
            tmp.persist(path).map(drop).map_err(|e| e.error)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_record_replaces_a_longer_one_in_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        write(&path, br#"{"a":"a long value"}"#).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        write(&path, br#"{"a":1}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()), inode, "rewritten in place");
        write(&path, b"null").unwrap();
        assert_eq!(serde_json::from_slice::<Option<serde_json::Value>>(&std::fs::read(&path).unwrap()).unwrap(), None);
    }
}
