//! The host end of the guest agent's line protocol on the virtio-serial
//! port `org.vmplane.agent` (`images/debian-minimal/README.md`, "Agent
//! channel"): one command, one answer line. The guest writes the answer,
//! so its length and the wait for it are bounded.

use super::layout::VmDir;
use crate::driver::DriverError;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The longest agent answer read.
const MAX_REPLY: u64 = 4096;

/// Send `command` and read its one-line answer: `ok`, or `err <why>`.
/// Waits at most `patience` for the channel (one client at a time) and the
/// answer.
pub async fn call(dir: &VmDir, command: &str, patience: Duration) -> Result<(), DriverError> {
    let talk = async {
        let stream = tokio::net::UnixStream::connect(dir.agent_socket()).await?;
        let (r, mut w) = stream.into_split();
        w.write_all(format!("{command}\n").as_bytes()).await?;
        read_reply(r).await
    };
    match tokio::time::timeout(patience, talk).await {
        Ok(Ok(None)) => Err(DriverError::Fatal(format!("guest agent: no answer line within {MAX_REPLY} bytes"))),
        Ok(Ok(Some(reply))) => outcome(&reply),
        Ok(Err(e)) => Err(DriverError::Retryable(format!("guest agent: {e}"))),
        Err(_) => Err(DriverError::Fatal(format!("guest agent did not answer in {} s (is the agent running?)", patience.as_secs()))),
    }
}

/// The first line, or `None` when none ends within [`MAX_REPLY`] bytes.
async fn read_reply(r: impl tokio::io::AsyncRead + Unpin) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    BufReader::new(r.take(MAX_REPLY)).read_until(b'\n', &mut line).await?;
    Ok(line.ends_with(b"\n").then(|| String::from_utf8_lossy(&line).trim().to_owned()))
}

fn outcome(reply: &str) -> Result<(), DriverError> {
    match reply {
        "ok" => Ok(()),
        reply => Err(DriverError::Fatal(format!("guest agent: {}", reply.strip_prefix("err ").unwrap_or(reply)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_are_read_with_a_bound() {
        assert_eq!(read_reply(&b"ok\nmore"[..]).await.unwrap().as_deref(), Some("ok"));
        let endless = tokio::io::repeat(b'x');
        assert_eq!(read_reply(endless).await.unwrap(), None, "an endless line ends the read after the bound");
        assert_eq!(read_reply(&b"no newline"[..]).await.unwrap(), None);
        assert!(outcome("ok").is_ok());
        assert_eq!(outcome("err not a mount point"), Err(DriverError::Fatal("guest agent: not a mount point".into())));
    }
}
