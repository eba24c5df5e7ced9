//! Ships each running guest's serial console to JetStream, one message per
//! line on `vmplane.log.<org>.vm.<vm>`, so any gateway can serve any VM's
//! logs. The console file is capped: once shipped past the cap it is rotated
//! (kept as `console.log.1`) and truncated; qemu appends, so it carries on.
//!
//! A guest decides what its console prints, so shipping is bounded per VM:
//! each tick reads at most [`READ_PER_TICK`] bytes from where the last one
//! stopped (never the whole file); at most [`LINES_PER_SEC`] lines a second
//! (bursts of [`BURST_LINES`]) are shipped and the excess is dropped, with a
//! marker line saying how many; a backlog past [`MAX_BACKLOG`] is skipped the
//! same way. Message ids are `<vm>-<position>`, where the position counts
//! every byte consumed since the log began, across rotations: JetStream's
//! duplicate window drops a line shipped twice after a crash, never a new one.

use crate::driver::{Console, Driver};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vmplane_bus::Bus;
use vmplane_domain::{VmId, subjects};

/// Console bytes kept on disk before rotating.
pub const CONSOLE_CAP: u64 = 4 << 20;
/// Lines longer than this are split.
pub const MAX_LINE: usize = 4096;
/// Bytes read from one console per tick.
pub const READ_PER_TICK: u64 = 256 << 10;
/// Lines shipped per second and VM, sustained.
pub const LINES_PER_SEC: u32 = 100;
/// Lines a VM may ship at once (a boot's worth) before the rate applies.
pub const BURST_LINES: u32 = 1000;
/// Unread console bytes past which the backlog is skipped rather than read.
pub const MAX_BACKLOG: u64 = 64 << 20;
const TICK: Duration = Duration::from_millis(200);

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Where shipping of one console stands; kept next to the log (`console.shipped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    /// Offset in the current console file.
    offset: u64,
    /// Bytes consumed since the log began, rotations included: the message id.
    position: u64,
}

/// What one tick read.
struct Chunk {
    /// Bytes between the cursor and the data, skipped unread.
    skipped: u64,
    data: Vec<u8>,
    /// The data ends at the end of the file.
    eof: bool,
}

/// Messages to publish and the cursor once they are.
struct Batch {
    messages: Vec<(String, Vec<u8>)>,
    cursor: Cursor,
}

/// One console's shipping state: its cursor and its rate limit.
struct Shipper<C: Clock = DefaultClock> {
    cursor: Cursor,
    limiter: Limiter<C>,
}

impl<C: Clock> Shipper<C> {
    fn new(cursor: Cursor, clock: C) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(LINES_PER_SEC).expect("nonzero")).allow_burst(NonZeroU32::new(BURST_LINES).expect("nonzero"));
        Self { cursor, limiter: RateLimiter::direct_with_clock(quota, clock) }
    }

    /// Read what was appended since the cursor, at most [`READ_PER_TICK`] bytes.
    fn read(&mut self, log: &Path) -> std::io::Result<Option<Chunk>> {
        let mut f = match std::fs::File::open(log) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.cursor.offset {
            // Truncated behind our back: what is there now is new.
            self.cursor.offset = 0;
        }
        let backlog = len - self.cursor.offset;
        let skipped = if backlog > MAX_BACKLOG { backlog - READ_PER_TICK } else { 0 };
        f.seek(SeekFrom::Start(self.cursor.offset + skipped))?;
        let mut data = Vec::new();
        f.take(READ_PER_TICK).read_to_end(&mut data)?;
        let eof = self.cursor.offset + skipped + data.len() as u64 >= len;
        Ok(Some(Chunk { skipped, data, eof }))
    }

    /// Cut the chunk into lines, ship what the rate allows, count the rest.
    /// A trailing partial line stays for the next tick.
    fn batch(&self, vm: VmId, chunk: &Chunk) -> Batch {
        let mut cursor = self.cursor;
        cursor.offset += chunk.skipped;
        cursor.position += chunk.skipped;
        let (mut messages, mut dropped, mut pos) = (Vec::new(), 0u64, 0);
        let data = &chunk.data;
        loop {
            let rest = &data[pos..];
            let (len, consumed) = match rest.iter().take(MAX_LINE + 1).position(|b| *b == b'\n') {
                Some(nl) if nl <= MAX_LINE => (nl, nl + 1),
                _ if rest.len() >= MAX_LINE => (MAX_LINE, MAX_LINE),
                _ => break,
            };
            if self.limiter.check().is_ok() {
                let line: Vec<u8> = rest[..len].iter().copied().filter(|b| *b != b'\r').collect();
                messages.push((format!("{vm}-{}", cursor.position), line));
            } else {
                dropped += 1;
            }
            pos += consumed;
            cursor.offset += consumed as u64;
            cursor.position += consumed as u64;
        }
        if dropped > 0 || chunk.skipped > 0 {
            let mut marker = format!("[vmplane] console over {LINES_PER_SEC} lines/s: {dropped} lines dropped");
            if chunk.skipped > 0 {
                marker.push_str(&format!(", {} unread bytes skipped", chunk.skipped));
            }
            messages.push((format!("{vm}-{}-dropped", cursor.position), marker.into_bytes()));
        }
        Batch { messages, cursor }
    }
}

/// Ship forever.
pub async fn ship(bus: Bus, driver: Arc<dyn Driver>) -> anyhow::Result<()> {
    let mut shippers: HashMap<PathBuf, Shipper> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let consoles = driver.consoles();
        // Only running guests keep state here.
        shippers.retain(|log, _| consoles.iter().any(|c| c.log == *log));
        for console in consoles {
            let shipper = shippers.entry(console.log.clone()).or_insert_with(|| Shipper::new(read_cursor(&console.log), DefaultClock::default()));
            if let Err(e) = ship_one(&bus, &console, shipper).await {
                tracing::debug!(vm = %console.vm, error = %e, "console shipping paused");
            }
        }
    }
}

fn cursor_file(log: &Path) -> PathBuf {
    log.with_extension("shipped")
}

/// `offset position`; an older single number is both.
fn read_cursor(log: &Path) -> Cursor {
    let text = std::fs::read_to_string(cursor_file(log)).unwrap_or_default();
    let mut nums = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    match (nums.next().flatten(), nums.next().flatten()) {
        (Some(offset), Some(position)) => Cursor { offset, position },
        (Some(offset), None) => Cursor { offset, position: offset },
        _ => Cursor::default(),
    }
}

fn write_cursor(log: &Path, c: Cursor) {
    let _ = std::fs::write(cursor_file(log), format!("{} {}", c.offset, c.position));
}

/// Ship one tick's worth of a console; the cursor moves only once every message is stored.
async fn ship_one<C: Clock>(bus: &Bus, console: &Console, shipper: &mut Shipper<C>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Some(chunk) = shipper.read(&console.log)? else { return Ok(()) };
    let batch = shipper.batch(console.vm, &chunk);
    let subject = subjects::vm_logs(console.org, console.vm);
    let mut acks = Vec::with_capacity(batch.messages.len());
    for (id, line) in batch.messages {
        let msg = async_nats::jetstream::message::PublishMessage::build().payload(line.into()).message_id(id);
        acks.push(bus.js.send_publish(subject.clone(), msg).await?);
    }
    for ack in acks {
        ack.await?;
    }
    if batch.cursor != shipper.cursor {
        shipper.cursor = batch.cursor;
        write_cursor(&console.log, shipper.cursor);
    }
    if chunk.eof && shipper.cursor.offset >= CONSOLE_CAP {
        rotate(&console.log);
        shipper.cursor.offset = 0;
        write_cursor(&console.log, shipper.cursor);
    }
    Ok(())
}

/// Keep the last chunk as `.1` and truncate.
fn rotate(log: &Path) {
    let _ = std::fs::copy(log, log.with_extension("log.1"));
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(log) {
        let _ = f.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::io::Write;

    fn append(log: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap().write_all(bytes).unwrap();
    }

    /// One tick without NATS: read, batch, commit.
    fn tick(s: &mut Shipper<FakeRelativeClock>, vm: VmId, log: &Path) -> Vec<(String, String)> {
        let Some(chunk) = s.read(log).unwrap() else { return vec![] };
        let batch = s.batch(vm, &chunk);
        s.cursor = batch.cursor;
        batch.messages.into_iter().map(|(id, l)| (id, String::from_utf8(l).unwrap())).collect()
    }

    fn setup() -> (tempfile::TempDir, PathBuf, VmId, FakeRelativeClock) {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        (d, log, VmId::new(), FakeRelativeClock::default())
    }

    #[test]
    fn ids_keep_growing_across_rotation() {
        let (_d, log, vm, clock) = setup();
        let mut s = Shipper::new(Cursor::default(), clock);
        append(&log, b"one\r\ntwo\npartial");
        let first = tick(&mut s, vm, &log);
        assert_eq!(first, [(format!("{vm}-0"), "one".to_owned()), (format!("{vm}-5"), "two".to_owned())]);
        rotate(&log);
        s.cursor.offset = 0;
        append(&log, b"three\n");
        let after = tick(&mut s, vm, &log);
        assert_eq!(after, [(format!("{vm}-9"), "three".to_owned())], "the new line's id differs from every earlier one");
        assert_eq!(s.cursor, Cursor { offset: 6, position: 15 });
        // The cursor survives a restart of the worker.
        write_cursor(&log, s.cursor);
        assert_eq!(read_cursor(&log), s.cursor);
    }

    #[test]
    fn reads_are_bounded_and_long_lines_split() {
        let (_d, log, vm, clock) = setup();
        let mut s = Shipper::new(Cursor::default(), clock.clone());
        append(&log, &vec![b'x'; 3 * READ_PER_TICK as usize]);
        let chunk = s.read(&log).unwrap().unwrap();
        assert_eq!((chunk.data.len() as u64, chunk.eof, chunk.skipped), (READ_PER_TICK, false, 0));
        let lines = tick(&mut s, vm, &log);
        assert!(lines.iter().all(|(_, l)| l.len() == MAX_LINE), "lines without a newline are cut at MAX_LINE");
        assert_eq!(s.cursor.offset, READ_PER_TICK, "one tick consumed one bounded read");
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_with_a_marker() {
        let (_d, log, vm, clock) = setup();
        let mut s = Shipper::new(Cursor::default(), clock.clone());
        let flood = BURST_LINES as usize + 500;
        append(&log, (0..flood).map(|i| format!("flood-{i}\n")).collect::<String>().as_bytes());
        let lines = tick(&mut s, vm, &log);
        let shipped = lines.iter().filter(|(_, l)| l.starts_with("flood-")).count();
        assert_eq!(shipped, BURST_LINES as usize);
        assert_eq!(lines.last().unwrap().1, format!("[vmplane] console over {LINES_PER_SEC} lines/s: 500 lines dropped"));
        // A second later the rate allows LINES_PER_SEC more.
        clock.advance(Duration::from_secs(1));
        append(&log, (0..LINES_PER_SEC + 10).map(|i| format!("later-{i}\n")).collect::<String>().as_bytes());
        let lines = tick(&mut s, vm, &log);
        assert_eq!(lines.iter().filter(|(_, l)| l.starts_with("later-")).count(), LINES_PER_SEC as usize);
        assert!(lines.last().unwrap().1.contains(": 10 lines dropped"), "{:?}", lines.last());
    }

    #[test]
    fn a_huge_backlog_is_skipped_and_said_so() {
        let (_d, log, vm, clock) = setup();
        let mut s = Shipper::new(Cursor::default(), clock);
        let f = std::fs::File::create(&log).unwrap();
        f.set_len(MAX_BACKLOG + 10).unwrap();
        let lines = tick(&mut s, vm, &log);
        let skipped = MAX_BACKLOG + 10 - READ_PER_TICK;
        assert!(lines.last().unwrap().1.ends_with(&format!("{skipped} unread bytes skipped")), "{:?}", lines.last());
        assert_eq!(s.cursor.position, MAX_BACKLOG + 10, "the whole file is accounted for");
    }
}
