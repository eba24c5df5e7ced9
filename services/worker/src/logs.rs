//! Ships each running guest's serial console to JetStream, one message per
//! line on `vmplane.log.<org>.vm.<vm>`, so any gateway can serve any VM's
//! logs. The console file is capped: once shipped past the cap it is rotated
//! (kept as `console.log.1`) and truncated; qemu appends, so it carries on.

use crate::driver::{Console, Driver};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vmplane_bus::Bus;
use vmplane_domain::subjects;

/// Console bytes kept on disk before rotating.
pub const CONSOLE_CAP: u64 = 4 << 20;
/// Lines longer than this are split.
const MAX_LINE: usize = 4096;

/// Ship forever.
pub async fn ship(bus: Bus, driver: Arc<dyn Driver>) -> anyhow::Result<()> {
    let mut offsets: HashMap<std::path::PathBuf, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        for console in driver.consoles() {
            let offset = offsets.entry(console.log.clone()).or_insert_with(|| read_offset(&console.log));
            match ship_one(&bus, &console, *offset).await {
                Ok(next) => {
                    if next != *offset {
                        *offset = next;
                        let _ = std::fs::write(offset_file(&console.log), next.to_string());
                    }
                    if next >= CONSOLE_CAP {
                        *offset = rotate(&console.log);
                    }
                }
                Err(e) => tracing::debug!(vm = %console.vm, error = %e, "console shipping paused"),
            }
        }
    }
}

fn offset_file(log: &Path) -> std::path::PathBuf {
    log.with_extension("shipped")
}

fn read_offset(log: &Path) -> u64 {
    std::fs::read_to_string(offset_file(log)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Publish every complete line after `offset`; returns the new offset.
async fn ship_one(bus: &Bus, console: &Console, offset: u64) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let data = match std::fs::read(&console.log) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(e.into()),
    };
    let start = if (offset as usize) > data.len() { 0 } else { offset as usize };
    let mut pos = start;
    let subject = subjects::vm_logs(console.org, console.vm);
    while let Some(nl) = data[pos..].iter().position(|b| *b == b'\n').or_else(|| (data.len() - pos > MAX_LINE).then_some(MAX_LINE)) {
        let end = (pos + nl).min(pos + MAX_LINE);
        let line: Vec<u8> = data[pos..end].iter().copied().filter(|b| *b != b'\r').collect();
        let id = format!("{}-{}", console.vm, pos);
        let msg = async_nats::jetstream::message::PublishMessage::build().payload(line.into()).message_id(id);
        bus.js.send_publish(subject.clone(), msg).await?.await?;
        pos = if end < data.len() && data[end] == b'\n' { end + 1 } else { end };
    }
    Ok(pos as u64)
}

/// Keep the last chunk as `.1` and truncate; returns the new offset (0).
fn rotate(log: &Path) -> u64 {
    let _ = std::fs::copy(log, log.with_extension("log.1"));
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(log) {
        let _ = f.set_len(0);
    }
    let _ = std::fs::write(offset_file(log), b"0");
    0
}
