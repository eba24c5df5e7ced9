//! The fleet phases of `vmplane-bench api` (issue 10): bursts of commands by
//! C clients with their accepted rate over the whole burst and over its first
//! and last tenth, the time until every VM of a burst has settled, a preload
//! that fills the projection before the measured phases, stop/start of
//! existing VMs, reads with the fleet present, resident memory, events per
//! create, and a projection rebuild beside a bare read of the event stream.

use crate::{Accepted, Api, Cluster, Errors, Stats, admin_options};
use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use futures::StreamExt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmplane_domain::subjects;

/// `count` commands shared by C clients, each one answered by a 202.
pub(crate) struct Burst {
    pub post: Stats,
    /// When each 202 arrived, since `started`, sorted.
    pub done_at: Vec<Duration>,
    /// The VMs of the 202s, in no particular order.
    pub vms: Vec<String>,
    pub accepted: usize,
    /// 202s whose operation was still `pending` (the accept wait ran out or is off).
    pub accepted_pending: usize,
    pub started: Instant,
    pub wall: Duration,
    pub errors: Errors,
}

impl Burst {
    /// Accepted per second over the whole burst.
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.wall.as_secs_f64()
    }

    /// Accepted per second over the first and over the last tenth of the 202s
    /// (at least 3 each), and how many a tenth is.
    pub fn tenths(&self) -> Option<(usize, f64, f64)> {
        let n = self.done_at.len() / 10;
        if n < 3 {
            return None;
        }
        let first = n as f64 / self.done_at[n - 1].as_secs_f64();
        let last_span = self.done_at[self.done_at.len() - 1] - self.done_at[self.done_at.len() - n - 1];
        Some((n, first, n as f64 / last_span.as_secs_f64()))
    }

    /// When the last 202 arrived.
    pub fn last_202(&self) -> Instant {
        self.started + self.done_at.last().copied().unwrap_or_default()
    }
}

/// Runs `call(i)` for i in 0..count on `concurrency` tasks, until done or `limit`.
pub(crate) async fn burst<F, Fut>(concurrency: usize, count: usize, limit: Duration, what: &'static str, call: F) -> Result<Burst>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Accepted, String>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, next) = (call.clone(), next.clone());
            tokio::spawn(async move {
                let (mut stats, mut errors, mut pending, mut done, mut vms) = (Stats::default(), Errors::default(), 0, Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    if Instant::now() > deadline {
                        errors.add(format!("{what}: phase time limit reached"));
                        break;
                    }
                    let t = Instant::now();
                    match call(i).await {
                        Ok(a) => {
                            stats.push(t.elapsed());
                            done.push(started.elapsed());
                            pending += usize::from(a.op_status == "pending");
                            vms.push(a.vm);
                        }
                        Err(e) => errors.add(e),
                    }
                }
                (stats, errors, pending, done, vms)
            })
        })
        .collect();
    let mut out = Burst {
        post: Stats::default(),
        done_at: Vec::new(),
        vms: Vec::new(),
        accepted: 0,
        accepted_pending: 0,
        started,
        wall: Duration::ZERO,
        errors: Errors::default(),
    };
    for t in tasks {
        let (s, e, p, d, v) = t.await?;
        out.post.extend(s);
        out.done_at.extend(d);
        out.vms.extend(v);
        out.errors.merge(e);
        out.accepted_pending += p;
    }
    out.wall = started.elapsed();
    out.accepted = out.post.samples.len();
    out.done_at.sort_unstable();
    Ok(out)
}

/// VMs per status that the phases wait on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub running: u64,
    pub stopped: u64,
    pub failed: u64,
}

/// The three counts, asked at once: a poll takes as long as one status-filtered list.
pub(crate) async fn counts(api: &Api) -> Result<Counts> {
    let (running, stopped, failed) = tokio::try_join!(api.count("running"), api.count("stopped"), api.count("failed"))?;
    Ok(Counts { running, stopped, failed })
}

/// Polls the counts until `done` holds (the instant it was seen) or `limit` passes (`None`).
pub(crate) async fn settle(api: &Api, limit: Duration, done: impl Fn(&Counts) -> bool) -> Result<(Option<Instant>, Counts)> {
    let deadline = Instant::now() + limit;
    loop {
        let c = counts(api).await?;
        if done(&c) {
            return Ok((Some(Instant::now()), c));
        }
        if Instant::now() > deadline {
            return Ok((None, c));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A burst of creates and the time until all its VMs are running (or failed).
pub(crate) struct Creates {
    pub burst: Burst,
    /// From the last 202 until every VM of the burst was running; `None`: not within the limit.
    pub settled_after_last_202: Option<Duration>,
    /// From the first POST until every VM of the burst was running.
    pub settled_after_start: Option<Duration>,
}

/// `count` creates named `<prefix>-<i>` by `concurrency` clients, then waits until they run.
pub(crate) async fn creates(api: &Arc<Api>, prefix: &'static str, concurrency: usize, count: usize, limit: Duration) -> Result<Creates> {
    let before = counts(api).await?;
    let a = api.clone();
    let burst = burst(concurrency, count, limit, "vmplane creates", move |i| {
        let a = a.clone();
        async move { a.create(&format!("{prefix}-{i}")).await }
    })
    .await?;
    let expected = before.running + before.failed + burst.accepted as u64;
    let (at, _) = settle(api, limit, |c| c.running + c.failed >= expected).await?;
    Ok(Creates {
        settled_after_last_202: at.map(|t| t.saturating_duration_since(burst.last_202())),
        settled_after_start: at.map(|t| t.saturating_duration_since(burst.started)),
        burst,
    })
}

/// Stops of running VMs, then starts of the same VMs.
pub(crate) struct StartStop {
    pub stop: Burst,
    pub stopped_after_last_202: Option<Duration>,
    pub start: Burst,
    pub running_after_last_202: Option<Duration>,
}

/// Stops every VM of `vms` (running) with `concurrency` clients, waits until
/// all are stopped, then starts them again and waits until all run.
pub(crate) async fn start_stop(api: &Arc<Api>, vms: Vec<String>, concurrency: usize, limit: Duration) -> Result<StartStop> {
    let vms = Arc::new(vms);
    let before = counts(api).await?;
    let action = |what: &'static str| {
        let (a, vms) = (api.clone(), vms.clone());
        move |i: usize| {
            let (a, vms) = (a.clone(), vms.clone());
            async move { a.act(&vms[i], what).await }
        }
    };
    let stop = burst(concurrency, vms.len(), limit, "vmplane stops", action("stop")).await?;
    let want_stopped = before.stopped + stop.accepted as u64;
    let (stopped_at, _) = settle(api, limit, |c| c.stopped + c.failed.saturating_sub(before.failed) >= want_stopped).await?;
    let start = burst(concurrency, vms.len(), limit, "vmplane starts", action("start")).await?;
    let (running_at, _) = settle(api, limit, |c| c.stopped <= before.stopped && c.running + c.failed >= before.running + before.failed).await?;
    Ok(StartStop {
        stopped_after_last_202: stopped_at.map(|t| t.saturating_duration_since(stop.last_202())),
        running_after_last_202: running_at.map(|t| t.saturating_duration_since(start.last_202())),
        stop,
        start,
    })
}

/// Sequential reads with the fleet present: `GET /v1/vms/{id}` over `n` VMs
/// spread across `vms`, and `n` times `GET /v1/vms?status=running&limit=100`.
pub(crate) async fn fleet_reads(api: &Api, vms: &[String], n: usize, limit: Duration) -> (Stats, Stats, Errors) {
    let deadline = Instant::now() + limit;
    let (mut get, mut list, mut errors) = (Stats::default(), Stats::default(), Errors::default());
    if vms.is_empty() {
        return (get, list, errors);
    }
    for i in 0..n {
        if Instant::now() > deadline {
            errors.add("fleet reads: phase time limit reached");
            break;
        }
        let t = Instant::now();
        match api.get_vm(&vms[i * vms.len() / n]).await {
            Ok(_) => get.push(t.elapsed()),
            Err(e) => errors.add(e),
        }
        let t = Instant::now();
        match api.list_running_page().await {
            Ok(()) => list.push(t.elapsed()),
            Err(e) => errors.add(e),
        }
    }
    (get, list, errors)
}

/// The mean length of `GET /v1/vms/{id}/events` over `vms` (VMs that were only created).
pub(crate) async fn events_per_vm(api: &Api, vms: &[String]) -> (Option<f64>, Errors) {
    let (mut total, mut n, mut errors) = (0usize, 0usize, Errors::default());
    for id in vms {
        match api.history_len(id).await {
            Ok(len) => {
                total += len;
                n += 1;
            }
            Err(e) => errors.add(e),
        }
    }
    ((n > 0).then(|| total as f64 / n as f64), errors)
}

/// Messages in the event stream and its last sequence (as the NATS admin).
pub(crate) async fn event_stream_state(js: &jetstream::Context) -> Result<(u64, u64)> {
    let stream = js.get_stream(subjects::EVENT_STREAM).await.map_err(|e| anyhow!("event stream info: {e}"))?;
    let state = &stream.cached_info().state;
    Ok((state.messages, state.last_sequence))
}

/// Resident memory of a process in MiB (`VmRSS` of /proc/<pid>/status).
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// The gateway's and the worker's resident memory, MiB.
pub(crate) fn cluster_rss(c: &Cluster) -> (Option<f64>, Option<f64>) {
    let of = |p: &Option<crate::Proc>| p.as_ref().and_then(|p| rss_mib(p.child.id()));
    (of(&c.gateway), of(&c.worker))
}

/// `vmplane projections rebuild` beside a bare ordered consumer reading the same stream.
pub(crate) struct Rebuild {
    /// Messages in the event stream when both read it.
    pub events: u64,
    pub rebuild_wall: Duration,
    /// What the rebuild printed.
    pub rebuild_said: String,
    pub bare_read: u64,
    pub bare_wall: Duration,
    /// VM counts before the gateway stopped and after it restarted on the rebuilt projection.
    pub before: Counts,
    pub after: Counts,
}

impl Rebuild {
    pub fn rebuild_rate(&self) -> f64 {
        self.events as f64 / self.rebuild_wall.as_secs_f64()
    }
    pub fn bare_rate(&self) -> f64 {
        self.bare_read as f64 / self.bare_wall.as_secs_f64()
    }
}

/// Stops the gateway, times `vmplane projections rebuild` on its data dir,
/// times a bare ordered consumer over the same stream, and starts the gateway
/// again on the rebuilt projection (checking that it shows the same VMs).
pub(crate) async fn rebuild_vs_bare(cluster: &mut Cluster, api: &Api, http: &reqwest::Client, js: &jetstream::Context, limit: Duration) -> Result<Rebuild> {
    let before = counts(api).await?;
    cluster.gateway.take().context("the gateway is not running")?.stop(Duration::from_secs(10));
    let (events, last) = event_stream_state(js).await?;

    let spawn = cluster.gateway_spawn.as_ref().context("the gateway's command line is not known")?;
    let nats_dir = cluster.dir.join("nats");
    let t = Instant::now();
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new(&spawn.program)
            .args(["projections", "rebuild", "--data-dir"])
            .arg(cluster.dir.join("gateway"))
            .args(["--nats-url", &cluster.nats_url, "--nats-creds"])
            .arg(nats_dir.join("gateway.nk"))
            .env("RUST_LOG", &spawn.log)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("vmplane projections rebuild did not finish within {limit:?}"))?
    .context("running vmplane projections rebuild")?;
    let rebuild_wall = t.elapsed();
    anyhow::ensure!(out.status.success(), "vmplane projections rebuild: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let rebuild_said = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let (bare_read, bare_wall) = bare_read(&cluster.dir, &cluster.nats_url, last, limit).await?;

    cluster.restart_gateway()?;
    crate::wait_vmplane(cluster, http, Duration::from_secs(60)).await?;
    let after = counts(api).await?;
    Ok(Rebuild { events, rebuild_wall, rebuild_said, bare_read, bare_wall, before, after })
}

/// Reads the event stream from its start to `last` with an ordered pull
/// consumer (as the NATS admin, on a connection of its own), decoding nothing
/// but each message's stream sequence: how many it read and how long it took.
async fn bare_read(dir: &Path, nats_url: &str, last: u64, limit: Duration) -> Result<(u64, Duration)> {
    let client = admin_options(dir)?.name("vmplane-bench-bare-read").connect(nats_url).await.context("connecting to nats-server")?;
    let js = jetstream::new(client);
    let t = Instant::now();
    let read = tokio::time::timeout(limit, async {
        let stream = js.get_stream(subjects::EVENT_STREAM).await.map_err(|e| anyhow!("event stream: {e}"))?;
        let consumer = stream
            .create_consumer(OrderedConfig { filter_subject: subjects::EVENTS_ALL.into(), deliver_policy: DeliverPolicy::All, ..Default::default() })
            .await
            .map_err(|e| anyhow!("ordered consumer: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| anyhow!("ordered consumer: {e}"))?;
        let mut n = 0u64;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| anyhow!("bare read: {e}"))?;
            n += 1;
            if msg.info().map_err(|e| anyhow!("bare read: {e}"))?.stream_sequence >= last {
                break;
            }
        }
        anyhow::Ok(n)
    })
    .await
    .map_err(|_| anyhow!("the bare read of the event stream did not finish within {limit:?}"))??;
    Ok((read, t.elapsed()))
}
