//! The host end of the guest agent's line protocol on the virtio-serial
//! port `org.vmplane.agent` (`images/debian-minimal/README.md`, "Agent
//! channel"): one command, one answer line. The guest writes the answer,
//! so its length and the wait for it are bounded.

use super::layout::VmDir;
use crate::driver::DriverError;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest agent answer read.
const MAX_REPLY: u64 = 4096;

/// Send `command` and read its one-line answer: `ok`, or `err <why>`.
/// Waits at most `patience` for the channel (one client at a time) and the
/// answer.
pub async fn call(dir: &VmDir, command: &str, patience: Duration) -> Result<(), DriverError> {
    let talk = async { exchange(&mut UnixStream::connect(dir.agent_socket()).await?, command).await };
    answered(tokio::time::timeout(patience, talk).await, patience)
}

/// A connection to a guest's agent channel kept open. While the host side
/// is connected the agent blocks reading it, instead of polling every
/// 0.25 s for a host; and QEMU carries "connected" in a snapshot's device
/// state, so a clone resumed with its channel already connected reads its
/// first command at once (see `snapshot.rs`).
pub struct Held(UnixStream);

impl Held {
    /// Connect to the channel; nothing is sent.
    pub async fn open(dir: &VmDir) -> std::io::Result<Self> {
        UnixStream::connect(dir.agent_socket()).await.map(Self)
    }

    /// Connect and exchange a `ping`: once it is answered, the agent is
    /// reading this connection.
    pub async fn waiting(dir: &VmDir, patience: Duration) -> Result<Self, DriverError> {
        let talk = async {
            let mut held = Self::open(dir).await?;
            let reply = exchange(&mut held.0, "ping").await?;
            Ok::<_, std::io::Error>((held, reply))
        };
        match tokio::time::timeout(patience, talk).await {
            Ok(Ok((held, Some(reply)))) if reply == "pong" => Ok(held),
            Ok(Ok((_, reply))) => Err(DriverError::Fatal(format!("guest agent: unexpected answer to ping: {reply:?}"))),
            Ok(Err(e)) => Err(DriverError::Retryable(format!("guest agent: {e}"))),
            Err(_) => Err(DriverError::Retryable(format!("guest agent did not answer a ping in {} ms", patience.as_millis()))),
        }
    }

    /// [`call`] on this connection.
    pub async fn call(mut self, command: &str, patience: Duration) -> Result<(), DriverError> {
        answered(tokio::time::timeout(patience, exchange(&mut self.0, command)).await, patience)
    }
}

/// Write `command` and read the answer line ([`read_reply`]).
async fn exchange(stream: &mut UnixStream, command: &str) -> std::io::Result<Option<String>> {
    let (r, mut w) = stream.split();
    w.write_all(format!("{command}\n").as_bytes()).await?;
    read_reply(r, command).await
}

fn answered(r: Result<std::io::Result<Option<String>>, tokio::time::error::Elapsed>, patience: Duration) -> Result<(), DriverError> {
    match r {
        Ok(Ok(None)) => Err(DriverError::Fatal(format!("guest agent: no answer line within {MAX_REPLY} bytes"))),
        Ok(Ok(Some(reply))) => outcome(&reply),
        Ok(Err(e)) => Err(DriverError::Retryable(format!("guest agent: {e}"))),
        Err(_) => Err(DriverError::Fatal(format!("guest agent did not answer in {} s (is the agent running?)", patience.as_secs()))),
    }
}

/// The answer line to `command`, or `None` when none ends within
/// [`MAX_REPLY`] bytes. A `pong` before the answer to anything but a
/// `ping` answers a ping sent earlier and is skipped: a worker killed
/// before it read one leaves it, and a snapshot can carry it to a clone.
async fn read_reply(r: impl tokio::io::AsyncRead + Unpin, command: &str) -> std::io::Result<Option<String>> {
    let mut reader = BufReader::new(r.take(MAX_REPLY));
    loop {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await?;
        if !line.ends_with(b"\n") {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(&line).trim().to_owned();
        if line != "pong" || command == "ping" {
            return Ok(Some(line));
        }
    }
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
        assert_eq!(read_reply(&b"ok\nmore"[..], "mount a /b rw").await.unwrap().as_deref(), Some("ok"));
        let endless = tokio::io::repeat(b'x');
        assert_eq!(read_reply(endless, "ping").await.unwrap(), None, "an endless line ends the read after the bound");
        assert_eq!(read_reply(&b"no newline"[..], "ping").await.unwrap(), None);
        assert_eq!(read_reply(&b"pong\npong\nok\n"[..], "identity a b - 00").await.unwrap().as_deref(), Some("ok"), "earlier pings' answers");
        assert_eq!(read_reply(&b"pong\nok\n"[..], "ping").await.unwrap().as_deref(), Some("pong"));
        let pongs = b"pong\n".repeat(2000);
        assert_eq!(read_reply(&pongs[..], "winsize 80 24").await.unwrap(), None, "the bound holds across skipped lines");
        assert!(outcome("ok").is_ok());
        assert_eq!(outcome("err not a mount point"), Err(DriverError::Fatal("guest agent: not a mount point".into())));
    }

    /// An agent channel at `dir` that answers each connection's lines from
    /// `answers` in turn and reports the lines each connection carried.
    fn fake_agent(dir: &VmDir, answers: &'static [&'static str]) -> tokio::sync::mpsc::UnboundedReceiver<Vec<String>> {
        let listener = tokio::net::UnixListener::bind(dir.agent_socket()).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                let mut seen = Vec::new();
                for answer in answers {
                    let Ok(Some(line)) = lines.next_line().await else { break };
                    seen.push(line);
                    w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
                }
                let _ = tx.send(seen);
            }
        });
        rx
    }

    #[tokio::test]
    async fn a_held_channel_carries_the_ping_and_the_later_command_on_one_connection() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::at(tmp.path().to_path_buf());
        let mut connections = fake_agent(&dir, &["pong", "ok"]);
        let held = Held::waiting(&dir, Duration::from_secs(5)).await.unwrap();
        held.call("identity vm_1 c1 - 00", Duration::from_secs(5)).await.unwrap();
        assert_eq!(connections.recv().await.unwrap(), ["ping", "identity vm_1 c1 - 00"]);
    }

    #[tokio::test]
    async fn a_channel_that_does_not_answer_pong_is_not_held() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::at(tmp.path().to_path_buf());
        let _connections = fake_agent(&dir, &["err unknown command: ping"]);
        assert!(matches!(Held::waiting(&dir, Duration::from_secs(5)).await, Err(DriverError::Fatal(_))));
        let nobody = VmDir::at(tmp.path().join("absent"));
        assert!(matches!(Held::waiting(&nobody, Duration::from_secs(5)).await, Err(DriverError::Retryable(_))));
    }
}
