//! A small typed QMP client over the per-VM unix socket.
//!
//! QMP is line-delimited JSON: a greeting, `qmp_capabilities`, then commands
//! answered by `{"return": ...}` or `{"error": {...}}`, interleaved with
//! asynchronous `{"event": ...}` messages, which this client skips. vmplane
//! needs a dozen commands, so a hand-written client beats tracking a generated
//! binding of QEMU's whole schema across QEMU versions.

use serde::Deserialize;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long one QMP exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);

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
}

#[derive(Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
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
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line)).await.map_err(|_| QmpError::Timeout)??;
        if n == 0 {
            return Err(QmpError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP socket closed")));
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line}")))
    }

    /// Run one command and return its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json encodes");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await?;
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

    /// `query-migrate`'s status, if a migration ran.
    pub async fn migration_status(&mut self) -> Result<Option<(String, Option<String>)>, QmpError> {
        let v = self.execute("query-migrate", None).await?;
        Ok(v.get("status").and_then(Value::as_str).map(|s| (s.to_owned(), v.get("error-desc").and_then(Value::as_str).map(str::to_owned))))
    }

    /// Poll until the migration (to or from a file) completes.
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
}
