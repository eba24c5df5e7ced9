//! The local nats-server that `vmplane up` runs when no `--nats-url` is given:
//! JetStream on, loopback only, its store under the data dir, stopped with us.

use crate::CommonArgs;
use anyhow::{Context, bail};
use std::path::Path;
use std::time::Duration;
use tokio::process::{Child, Command};

/// A nats-server child; SIGTERMed (so it flushes its store) when dropped.
pub struct NatsChild(Child);

impl Drop for NatsChild {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.start_kill();
        }
    }
}

/// The NATS URL to use, starting a local server when none is configured.
pub async fn resolve(common: &CommonArgs) -> anyhow::Result<(String, Option<NatsChild>)> {
    match &common.nats_url {
        Some(url) => Ok((url.clone(), None)),
        None => {
            let (url, child) = start(&common.data_dir.join("nats")).await?;
            Ok((url, Some(child)))
        }
    }
}

async fn start(store: &Path) -> anyhow::Result<(String, NatsChild)> {
    std::fs::create_dir_all(store).with_context(|| format!("creating {}", store.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new("nats-server");
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "--server_name", "vmplane", "-sd"])
        .arg(store)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    // SAFETY: prctl is async-signal-safe; it makes the child die with us even on SIGKILL.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("nats-server is not installed. Install it (Debian: `apt-get install nats-server`), run `./scripts/up` which does, or pass --nats-url")
        }
        Err(e) => return Err(e).context("starting nats-server"),
    };
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start ({status}); is the store {} in use?", store.display());
        }
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            tracing::info!(%addr, store = %store.display(), "started local nats-server");
            return Ok((format!("nats://{addr}"), NatsChild(child)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nats-server did not start listening on {addr}")
}
