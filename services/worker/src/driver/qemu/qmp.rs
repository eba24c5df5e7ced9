//! A small typed QMP client over the per-VM unix socket.
//!
//! QMP is line-delimited JSON: a greeting, `qmp_capabilities`, then commands
//! answered by `{"return": ...}` or `{"error": {...}}`, interleaved with
//! asynchronous `{"event": ...}` messages, which this client skips. vmplane
//! needs a dozen commands, so a hand-written client beats tracking a generated
//! binding of QEMU's whole schema across QEMU versions.
//!
//! Guest state is saved to and loaded from files by migration. QEMU 8.2 and
//! later open the file themselves (`file:` URIs); older ones (Debian 12 has
//! 7.2) get an open descriptor over this socket with SCM_RIGHTS and `getfd`,
//! then migrate through `fd:NAME`, as libvirt does. No shell is involved.

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long one QMP exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The longest QMP message accepted; replies vmplane reads are a few KiB.
const MAX_MESSAGE: u64 = 1 << 20;
/// `max-bandwidth` for saves to a local file: no cap (QEMU 7.2 defaults to 128 MiB/s).
const UNCAPPED: u64 = i64::MAX as u64;
/// The name a passed descriptor gets inside QEMU.
const STATE_FD: &str = "vmplane-state";

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QMP {class}: {desc}")]
    Command { class: String, desc: String },
    #[error("QMP timed out")]
    Timeout,
    #[error("state file {path}: {source}")]
    StateFile { path: String, source: std::io::Error },
}

#[derive(Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

/// How a migration stream reaches its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `file:PATH`: QEMU opens the file (8.2 and later).
    File,
    /// A descriptor passed over QMP with `getfd`, then `fd:NAME` (any version).
    Fd,
}

impl Channel {
    /// The channel for a QEMU `major.minor`: `file:` where it exists.
    pub fn for_version(major: u64, minor: u64) -> Self {
        if (major, minor) >= (8, 2) { Self::File } else { Self::Fd }
    }
}

/// A connected, negotiated QMP session.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connect and leave capabilities negotiation mode.
    pub async fn connect(socket: &Path) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(socket)).await.map_err(|_| QmpError::Timeout)??;
        let (r, writer) = stream.into_split();
        let mut qmp = Self { reader: BufReader::new(r), writer };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("unexpected greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let mut bounded = (&mut self.reader).take(MAX_MESSAGE);
        let n = tokio::time::timeout(TIMEOUT, bounded.read_until(b'\n', &mut line)).await.map_err(|_| QmpError::Timeout)??;
        if n == 0 {
            return Err(QmpError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP socket closed")));
        }
        if !line.ends_with(b"\n") {
            return Err(QmpError::Protocol(format!("a QMP message longer than {MAX_MESSAGE} bytes")));
        }
        serde_json::from_slice(&line).map_err(|e| QmpError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&line))))
    }

    /// Run one command and return its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.send(command, arguments, None).await?;
        self.reply().await
    }

    /// Run one command with an open file descriptor attached (SCM_RIGHTS), as `getfd` wants.
    pub async fn execute_with_fd(&mut self, command: &str, arguments: Value, fd: BorrowedFd<'_>) -> Result<Value, QmpError> {
        self.send(command, Some(arguments), Some(fd)).await?;
        self.reply().await
    }

    async fn send(&mut self, command: &str, arguments: Option<Value>, fd: Option<BorrowedFd<'_>>) -> Result<(), QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json encodes");
        bytes.push(b'\n');
        let write = async {
            let mut rest = &bytes[..];
            if let Some(fd) = fd {
                // The descriptor rides on the first bytes of the command; the rest follows normally.
                let stream: &UnixStream = self.writer.as_ref();
                let sent = stream
                    .async_io(Interest::WRITABLE, || {
                        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
                        let mut control = SendAncillaryBuffer::new(&mut space);
                        let fds = [fd];
                        control.push(SendAncillaryMessage::ScmRights(&fds));
                        rustix::net::sendmsg(stream.as_fd(), &[IoSlice::new(rest)], &mut control, SendFlags::NOSIGNAL).map_err(std::io::Error::from)
                    })
                    .await?;
                rest = &rest[sent..];
            }
            self.writer.write_all(rest).await
        };
        tokio::time::timeout(TIMEOUT, write).await.map_err(|_| QmpError::Timeout)??;
        Ok(())
    }

    async fn reply(&mut self) -> Result<Value, QmpError> {
        loop {
            let mut reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(ret) = reply.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = reply.get("error") {
                let e: ErrorBody = serde_json::from_value(err.clone()).map_err(|e| QmpError::Protocol(e.to_string()))?;
                return Err(QmpError::Command { class: e.class, desc: e.desc });
            }
            return Err(QmpError::Protocol(format!("unexpected reply: {reply}")));
        }
    }

    /// `query-status`: `running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`, ...
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        v.get("status").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| QmpError::Protocol(format!("query-status: {v}")))
    }

    /// `query-version`: QEMU's major and minor version.
    pub async fn version(&mut self) -> Result<(u64, u64), QmpError> {
        let v = self.execute("query-version", None).await?;
        let part = |k: &str| v["qemu"][k].as_u64().ok_or_else(|| QmpError::Protocol(format!("query-version: {v}")));
        Ok((part("major")?, part("minor")?))
    }

    /// `query-migrate`'s status, if a migration ran.
    pub async fn migration_status(&mut self) -> Result<Option<(String, Option<String>)>, QmpError> {
        let v = self.execute("query-migrate", None).await?;
        Ok(v.get("status").and_then(Value::as_str).map(|s| (s.to_owned(), v.get("error-desc").and_then(Value::as_str).map(str::to_owned))))
    }

    /// Poll until the outgoing migration completes.
    pub async fn wait_migration(&mut self, limit: Duration) -> Result<(), QmpError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.migration_status().await? {
                Some((s, _)) if s == "completed" => return Ok(()),
                Some((s, err)) if s == "failed" || s == "cancelled" => {
                    return Err(QmpError::Command { class: "MigrationFailed".into(), desc: err.unwrap_or(s) });
                }
                _ if tokio::time::Instant::now() > deadline => return Err(QmpError::Timeout),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The migration URI for `path`, passing QEMU an open descriptor where it cannot open files itself.
    async fn channel_to(&mut self, path: &Path, write: bool) -> Result<String, QmpError> {
        let (major, minor) = self.version().await?;
        if Channel::for_version(major, minor) == Channel::File {
            return Ok(format!("file:{}", path.display()));
        }
        let file = if write { std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path) } else { std::fs::File::open(path) };
        let file = file.map_err(|source| QmpError::StateFile { path: path.display().to_string(), source })?;
        // QEMU keeps its own copy of the descriptor; ours closes when `file` drops.
        self.execute_with_fd("getfd", json!({ "fdname": STATE_FD }), file.as_fd()).await?;
        Ok(format!("fd:{STATE_FD}"))
    }

    /// Copy into the top image of drive `device` everything it reads from
    /// its backing chain, while the guest runs, and drop the chain
    /// (`block-stream`); returns once the job has ended. A job of an earlier
    /// call (a retried step) is waited for instead of started again.
    pub async fn stream_disk(&mut self, device: &str, limit: Duration) -> Result<(), QmpError> {
        const JOB: &str = "vmplane-flatten";
        let job = async |q: &mut Self| -> Result<Option<Value>, QmpError> {
            let jobs = q.execute("query-jobs", None).await?;
            Ok(jobs.as_array().and_then(|a| a.iter().find(|j| j["id"] == JOB)).cloned())
        };
        if job(self).await?.is_none() {
            // Kept once concluded (auto-dismiss off), so that its error can be read.
            self.execute("block-stream", Some(json!({ "job-id": JOB, "device": device, "auto-dismiss": false }))).await?;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match job(self).await? {
                Some(j) if j["status"] == "concluded" => {
                    self.execute("job-dismiss", Some(json!({ "id": JOB }))).await?;
                    return match j.get("error").and_then(Value::as_str) {
                        Some(e) => Err(QmpError::Command { class: "BlockJobFailed".into(), desc: e.to_owned() }),
                        None => Ok(()),
                    };
                }
                Some(_) if tokio::time::Instant::now() > deadline => return Err(QmpError::Timeout),
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                None => return Err(QmpError::Protocol(format!("block job {JOB} vanished"))),
            }
        }
    }

    /// Whether saving and loading skip guest RAM that lives in a shared file
    /// (`x-ignore-shared`, QEMU 4.0 and later): set on both ends, the state
    /// is the devices alone, the memory being the file itself.
    pub async fn ignore_shared(&mut self, on: bool) -> Result<(), QmpError> {
        let caps = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] });
        self.execute("migrate-set-capabilities", Some(caps)).await.map(drop)
    }

    /// Save the (paused) guest's memory and device state into `path`, without a bandwidth cap.
    pub async fn save_state(&mut self, path: &Path, limit: Duration) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": UNCAPPED }))).await?;
        let uri = self.channel_to(path, true).await?;
        self.execute("migrate", Some(json!({ "uri": uri }))).await?;
        self.wait_migration(limit).await
    }

    /// Load state saved by [`Self::save_state`] into a qemu started with
    /// `-incoming defer`; returns once it left `inmigrate` (the guest is
    /// then paused, as it was when saved). A qemu whose load fails exits.
    pub async fn load_state(&mut self, path: &Path, limit: Duration) -> Result<(), QmpError> {
        if self.migration_status().await?.is_none() {
            let uri = self.channel_to(path, false).await?;
            self.execute("migrate-incoming", Some(json!({ "uri": uri }))).await?;
        }
        let deadline = tokio::time::Instant::now() + limit;
        while self.status().await? == "inmigrate" {
            if let Some((s, err)) = self.migration_status().await?
                && (s == "failed" || s == "cancelled")
            {
                return Err(QmpError::Command { class: "MigrationFailed".into(), desc: err.unwrap_or(s) });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(QmpError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_from_qemu_8_2_descriptors_before() {
        assert_eq!(Channel::for_version(7, 2), Channel::Fd);
        assert_eq!(Channel::for_version(8, 1), Channel::Fd);
        assert_eq!(Channel::for_version(8, 2), Channel::File);
        assert_eq!(Channel::for_version(9, 0), Channel::File);
        assert_eq!(Channel::for_version(10, 1), Channel::File);
    }
}
