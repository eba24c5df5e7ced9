//! `vmplane-bench webhooks`: webhook delivery next to the SSE feed, in one run.
//!
//! For each value of `--webhook-max-per-endpoint` (one row each), on a fresh
//! sim cluster (nats-server, `vmplane gateway --webhook-allow-private`,
//! `vmplane worker --driver sim` with zero delays) plus the deliverer
//! (`vmplane webhooks`):
//!
//! 1. a receiver on 127.0.0.1 (axum) answers every POST with 204 and records
//!    the wall-clock instant it had the whole request, with its headers and body;
//! 2. one endpoint (`POST /v1/webhooks`, `event_types: ["vm.*"]`) points at it;
//! 3. an SSE client reads `GET /v1/events?type=vm.*` (admin token), recording
//!    the instant each event's chunk was read;
//! 4. a few warm-up VMs are created and awaited on both paths (the deliverer
//!    is active, connections are open), then the burst: `--webhook-vms`
//!    creates by `--concurrency` clients;
//! 5. it waits (bounded) until both paths have every burst VM's
//!    `operation_finished`, and the webhook path every event the SSE feed
//!    carried for them, then one more second for late duplicates.
//!
//! Lag = receipt instant - the event's `time` (stamped by the appender just
//! before its JetStream publish); both are this machine's wall clock.
//! Throughput = distinct events / (first append -> last first-receipt).
//! Signatures of every received request are checked afterwards with an HMAC
//! of the bench's own (Standard Webhooks), outside the timed path.

use crate::{Api, Cluster, ClusterSpec, Errors, Proc, Stats, find_vmplane, ms, start_cluster, wait_vmplane};
use anyhow::{Context, Result, bail, ensure};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use hmac::Mac;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// VMs created in the measured burst (about 7 `vm.*` events each).
    #[arg(long, default_value_t = 300)]
    webhook_vms: usize,
    /// VMs created and awaited on both paths before the burst (unmeasured).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Concurrent clients POSTing the burst.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Deliverer `--webhook-max-per-endpoint`: one row, on a fresh cluster, per value (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    webhook_max_per_endpoint: Vec<u32>,
    /// Backlog rows instead of live ones: the deliverer is stopped during the
    /// burst and started once every burst event is appended, so the row shows
    /// how fast it drains a backlog (its capacity), not the append rate.
    #[arg(long)]
    backlog: bool,
    /// Deliverer `--webhook-max-in-flight`.
    #[arg(long, default_value_t = 64)]
    webhook_max_in_flight: u32,
    /// Worker: VM commands run at once (vmplane's default is 32).
    #[arg(long, default_value_t = 32)]
    worker_parallelism: usize,
    /// Upper bound on each phase's wall time, in seconds.
    #[arg(long, default_value_t = 180)]
    phase_timeout_secs: u64,
    /// The vmplane binary (default: `vmplane` next to this binary).
    #[arg(long)]
    vmplane: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// RUST_LOG for the vmplane processes.
    #[arg(long, default_value = "info,async_nats=warn")]
    vmplane_log: String,
    /// Keep the temp dirs (stores and process logs) and print their paths.
    #[arg(long)]
    keep_tmp: bool,
}

// ---------------------------------------------------------------- what arrives

/// The fields of an EventView the bench uses.
#[derive(Clone)]
struct Seen {
    id: String,
    kind: String,
    aggregate: String,
    time: OffsetDateTime,
}

impl Seen {
    fn parse(v: &Value) -> Option<Self> {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let time = OffsetDateTime::parse(v["time"].as_str()?, &time::format_description::well_known::Rfc3339).ok()?;
        Some(Self { id: s("id")?, kind: s("type")?, aggregate: s("aggregate_id")?, time })
    }
}

/// One request the receiver got.
struct Got {
    at: OffsetDateTime,
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
    /// The body as an EventView (`None`: it was not one).
    seen: Option<Seen>,
}

type Inbox = Arc<Mutex<Vec<Got>>>;

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = OffsetDateTime::now_utc();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let seen = serde_json::from_slice::<Value>(&body).ok().as_ref().and_then(Seen::parse);
    let got = Got { at, id: header("webhook-id"), timestamp: header("webhook-timestamp"), signature: header("webhook-signature"), body, seen };
    inbox.lock().expect("inbox lock").push(got);
    StatusCode::NO_CONTENT
}

/// The receiver: its URL, what it got, and its task (aborted when dropped).
struct Receiver {
    url: String,
    inbox: Inbox,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Result<Self> {
        let inbox = Inbox::default();
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the receiver")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, inbox, task })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the SSE client read: the instant each event's chunk was read, and the event.
type Feed = Arc<Mutex<Vec<(OffsetDateTime, Seen)>>>;

/// Read `GET /v1/events?type=vm.*` until aborted; `errors` gets why it stopped, if it did.
async fn read_feed(http: reqwest::Client, base: String, token: String, feed: Feed, errors: Arc<Mutex<Errors>>) {
    let r = match http.get(format!("{base}/v1/events?type=vm.*")).bearer_auth(&token).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return errors.lock().expect("errors lock").add(format!("GET /v1/events: HTTP {}", r.status().as_u16())),
        Err(e) => return errors.lock().expect("errors lock").add(format!("GET /v1/events: {e}")),
    };
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let at = OffsetDateTime::now_utc();
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return errors.lock().expect("errors lock").add(format!("SSE feed: {e}")),
        };
        buf.extend_from_slice(&chunk);
        // Complete events end with a blank line; a partial one stays in `buf`.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let data: String = text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect::<Vec<_>>().join("\n");
            if data.is_empty() {
                continue; // keep-alive comment
            }
            match serde_json::from_str::<Value>(&data).ok().as_ref().and_then(Seen::parse) {
                Some(seen) => feed.lock().expect("feed lock").push((at, seen)),
                None => errors.lock().expect("errors lock").add("SSE feed: an event that is not an EventView"),
            }
        }
    }
    errors.lock().expect("errors lock").add("SSE feed: the stream ended");
}

// ---------------------------------------------------------------- signatures

/// Whether one of the `v1,` signatures in `header` is the HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under `secret` (`whsec_` + base64 key).
fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(key) = secret.strip_prefix("whsec_").and_then(|k| b64.decode(k).ok()) else { return false };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key) else { return false };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    header.split(' ').filter_map(|s| s.strip_prefix("v1,")).filter_map(|s| b64.decode(s).ok()).any(|sig| sig.as_slice() == expected.as_slice())
}

// ---------------------------------------------------------------- CPU time

/// User + system CPU time of a process so far (`/proc/<pid>/stat`).
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// CPU time so far of each process of the cluster, and of the bench itself.
fn cpu_now(c: &Cluster) -> Vec<(&'static str, Option<Duration>)> {
    let pid = |p: &Option<Proc>| p.as_ref().and_then(|p| cpu_of(p.child.id()));
    vec![
        ("nats-server", pid(&c.nats)),
        ("gateway", pid(&c.gateway)),
        ("worker", pid(&c.worker)),
        ("webhooks (deliverer)", pid(&c.webhooks)),
        ("vmplane-bench (clients, receiver, SSE)", cpu_of(std::process::id())),
    ]
}

/// CPU used by each process between two snapshots.
fn cpu_used(before: &[(&'static str, Option<Duration>)], after: &[(&'static str, Option<Duration>)]) -> Vec<(&'static str, Option<Duration>)> {
    before.iter().zip(after).map(|((n, b), (_, a))| (*n, a.zip(*b).map(|(a, b)| a.saturating_sub(b)))).collect()
}

// ---------------------------------------------------------------- one row

/// The figures of one row.
struct Row {
    per_endpoint: u32,
    /// Backlog row: when the deliverer was started again after the burst, and the first burst event it delivered.
    backlog: Option<(OffsetDateTime, OffsetDateTime)>,
    vms: usize,
    events: usize,
    /// First -> last append of the burst's events.
    append_span: Duration,
    post_wall: Duration,
    sse_lag: Stats,
    hook_lag: Stats,
    /// Webhook receipt - SSE receipt of the same event (when the webhook came later).
    hook_minus_sse: Stats,
    /// Of those, how many came by webhook first.
    hook_first: usize,
    /// p50 lags by event type, in the order of a VM's first events: (type, SSE, webhook).
    by_type: Vec<(String, Stats, Stats)>,
    sse_span: Duration,
    hook_span: Duration,
    /// The last first-receipt of a burst event by webhook.
    hook_last: Option<OffsetDateTime>,
    hook_distinct: usize,
    duplicates: usize,
    missing: usize,
    unexpected: usize,
    /// Requests whose signature was checked, and how many failed.
    verified: usize,
    bad_signatures: usize,
    /// Requests whose body was not the EventView of the event in `webhook-id`.
    bad_bodies: usize,
    /// Receipt instants more than 5 minutes from `webhook-timestamp`.
    bad_timestamps: usize,
    load: String,
    /// CPU time per process over the measured window (live: burst start ->
    /// all delivered; backlog: deliverer start -> all delivered), and the window.
    cpu: Vec<(&'static str, Option<Duration>)>,
    cpu_window: Duration,
    errors: Errors,
}

fn since(from: OffsetDateTime, to: OffsetDateTime) -> Duration {
    Duration::try_from(to - from).unwrap_or(Duration::ZERO)
}

async fn create_vms(api: &Arc<Api>, prefix: &str, count: usize, concurrency: usize, deadline: Instant) -> (Vec<String>, Errors) {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency.min(count).max(1))
        .map(|_| {
            let (api, next, prefix) = (api.clone(), next.clone(), prefix.to_owned());
            tokio::spawn(async move {
                let (mut vms, mut errors) = (Vec::new(), Errors::default());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    if Instant::now() > deadline {
                        errors.add("webhooks: POST phase time limit reached");
                        break;
                    }
                    match api.create(&format!("{prefix}-{i}")).await {
                        Ok(a) => vms.push(a.vm),
                        Err(e) => errors.add(e),
                    }
                }
                (vms, errors)
            })
        })
        .collect();
    let (mut vms, mut errors) = (Vec::new(), Errors::default());
    for t in tasks {
        match t.await {
            Ok((v, e)) => {
                vms.extend(v);
                errors.merge(e);
            }
            Err(e) => errors.add(format!("a POST task failed: {e}")),
        }
    }
    (vms, errors)
}

/// Until both paths have `operation_finished` of every VM in `vms`, and the
/// webhook path every event the SSE feed has of them (or the deadline).
async fn wait_both(cluster: &mut Cluster, feed: &Feed, inbox: &Inbox, vms: &HashSet<String>, deadline: Instant) -> Result<bool> {
    loop {
        cluster.check_alive()?;
        let (sse_ids, sse_done) = {
            let f = feed.lock().expect("feed lock");
            let ids: HashSet<String> = f.iter().filter(|(_, s)| vms.contains(&s.aggregate)).map(|(_, s)| s.id.clone()).collect();
            let done =
                f.iter().filter(|(_, s)| vms.contains(&s.aggregate) && s.kind == "operation_finished").map(|(_, s)| &s.aggregate).collect::<HashSet<_>>().len();
            (ids, done)
        };
        let (hook_ids, hook_done) = {
            let g = inbox.lock().expect("inbox lock");
            let ids: HashSet<String> = g.iter().map(|g| g.id.clone()).collect();
            let done = g
                .iter()
                .filter_map(|g| g.seen.as_ref())
                .filter(|s| vms.contains(&s.aggregate) && s.kind == "operation_finished")
                .map(|s| &s.aggregate)
                .collect::<HashSet<_>>()
                .len();
            (ids, done)
        };
        if sse_done == vms.len() && hook_done == vms.len() && sse_ids.is_subset(&hook_ids) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            eprintln!(
                "vmplane-bench: webhooks: at the time limit, {sse_done}/{} VMs finished on the SSE feed, {hook_done} by webhook, {} of {} SSE events not delivered",
                vms.len(),
                sse_ids.difference(&hook_ids).count(),
                sse_ids.len()
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_row(args: &WebhookArgs, per_endpoint: u32) -> Result<Row> {
    let limit = Duration::from_secs(args.phase_timeout_secs);
    let vmplane = find_vmplane(&args.vmplane)?;
    let os = |s: &str| OsString::from(s);
    let worker_args: Vec<OsString> = vec![
        os("--driver"),
        os("sim"),
        os("--host-name"),
        os("bench-sim"),
        os("--parallelism"),
        os(&args.worker_parallelism.to_string()),
        os("--sim-boot-delay-ms"),
        os("0"),
        os("--sim-ready-delay-ms"),
        os("0"),
        os("--sim-memory-mib"),
        os(&(1u64 << 40).to_string()),
        os("--sim-disk-gb"),
        os(&(1u64 << 40).to_string()),
    ];
    let mut cluster = start_cluster(ClusterSpec {
        vmplane: vmplane.clone(),
        nats_server: &args.nats_server,
        keep_tmp: args.keep_tmp,
        accept_wait_ms: None,
        vmplane_log: &args.vmplane_log,
        gateway_args: vec![os("--webhook-allow-private")],
        worker_args,
        worker_env: Vec::new(),
        nats_monitor_port: None,
    })
    .await?;
    let dir = cluster.dir.clone();
    let deliverer_args: Vec<OsString> = vec![
        os("webhooks"),
        os("--nats-url"),
        os(&cluster.nats_url),
        os("--nats-creds"),
        dir.join("nats").join("webhooks.nk").into(),
        os("--data-dir"),
        dir.join("webhooks").into(),
        os("--webhook-allow-private"),
        os("--webhook-max-in-flight"),
        os(&args.webhook_max_in_flight.to_string()),
        os("--webhook-max-per-endpoint"),
        os(&per_endpoint.to_string()),
    ];
    let deliverer = |log: &str| Proc::spawn("vmplane webhooks", &vmplane, &deliverer_args, &[("RUST_LOG", args.vmplane_log.as_str())], dir.join(log));
    cluster.webhooks = Some(deliverer("webhooks.log")?);

    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).tcp_nodelay(true).pool_max_idle_per_host(args.concurrency + 4).build()?;
    let host = wait_vmplane(&mut cluster, &http, Duration::from_secs(30)).await?;
    let api = Arc::new(Api { http: http.clone(), base: cluster.base.clone(), token: cluster.admin_token.clone() });
    let mut errors = Errors::default();

    let receiver = Receiver::start().await?;
    let r = http
        .post(format!("{}/v1/webhooks", cluster.base))
        .bearer_auth(&cluster.admin_token)
        .json(&json!({"url": receiver.url, "event_types": ["vm.*"], "description": "vmplane-bench"}))
        .send()
        .await?;
    let status = r.status();
    let created: Value = r.json().await.unwrap_or(Value::Null);
    ensure!(status == reqwest::StatusCode::CREATED, "POST /v1/webhooks: HTTP {status}: {created}");
    let secret = created["secret"].as_str().context("POST /v1/webhooks: no secret")?.to_owned();

    // The SSE client: its own connection, no overall timeout.
    let feed = Feed::default();
    let feed_errors = Arc::new(Mutex::new(Errors::default()));
    let sse_http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let reader = tokio::spawn(read_feed(sse_http, cluster.base.clone(), cluster.admin_token.clone(), feed.clone(), feed_errors.clone()));

    eprintln!("vmplane-bench: webhooks: host {host} online, deliverer started (--webhook-max-per-endpoint {per_endpoint}); {} warm-up VMs", args.warmup);
    let deadline = Instant::now() + limit;
    let (warm, e) = create_vms(&api, "whwarm", args.warmup, args.concurrency, deadline).await;
    errors.merge(e);
    let warm: HashSet<String> = warm.into_iter().collect();
    if !wait_both(&mut cluster, &feed, &receiver.inbox, &warm, deadline).await? {
        bail!(
            "the warm-up VMs' events did not all arrive by webhook and SSE within {limit:?}; end of the deliverer's log:\n{}",
            crate::tail(&dir.join("webhooks.log"), 25)
        );
    }

    if args.backlog {
        // SIGTERM: it releases its lease, and its consumer keeps the position.
        if let Some(mut p) = cluster.webhooks.take() {
            p.stop(Duration::from_secs(10));
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    eprintln!("vmplane-bench: webhooks: burst of {} VMs by {} clients (load {load})", args.webhook_vms, args.concurrency);
    let deadline = Instant::now() + limit;
    let mut cpu_before = cpu_now(&cluster);
    let mut window = Instant::now();
    let posted = Instant::now();
    let (vms, e) = create_vms(&api, "wh", args.webhook_vms, args.concurrency, deadline).await;
    let post_wall = posted.elapsed();
    errors.merge(e);
    let vms: HashSet<String> = vms.into_iter().collect();
    let mut restarted = None;
    if args.backlog {
        // Every burst VM finished on the SSE feed: the backlog is complete.
        loop {
            cluster.check_alive()?;
            let done = feed.lock().expect("feed lock").iter().filter(|(_, s)| vms.contains(&s.aggregate) && s.kind == "operation_finished").count();
            if done >= vms.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!("the burst's VMs did not all finish on the SSE feed within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(
            receiver.inbox.lock().expect("inbox lock").iter().all(|g| g.seen.as_ref().is_none_or(|s| !vms.contains(&s.aggregate))),
            "a burst event was delivered while the deliverer was stopped"
        );
        eprintln!("vmplane-bench: webhooks: backlog of {} VMs appended; starting the deliverer", vms.len());
        restarted = Some(OffsetDateTime::now_utc());
        window = Instant::now();
        cluster.webhooks = Some(deliverer("webhooks-2.log")?);
        cpu_before = cpu_now(&cluster);
        // The new process's CPU counts from zero.
        cpu_before[3].1 = Some(Duration::ZERO);
    }
    if !wait_both(&mut cluster, &feed, &receiver.inbox, &vms, deadline).await? {
        errors.add("webhooks: not every burst event arrived on both paths within the phase time limit");
    }
    let cpu = cpu_used(&cpu_before, &cpu_now(&cluster));
    let cpu_window = window.elapsed();
    // Late duplicates would come now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.check_alive()?;
    reader.abort();
    errors.merge(std::mem::take(&mut *feed_errors.lock().expect("errors lock")));

    // ------------------------------------------------ figures
    let feed = std::mem::take(&mut *feed.lock().expect("feed lock"));
    let got = std::mem::take(&mut *receiver.inbox.lock().expect("inbox lock"));
    drop(receiver);
    // The burst's events as the SSE feed had them (first receipt of each).
    let mut sse: HashMap<String, (OffsetDateTime, Seen)> = HashMap::new();
    for (at, s) in feed.into_iter().filter(|(_, s)| vms.contains(&s.aggregate)) {
        sse.entry(s.id.clone()).or_insert((at, s));
    }
    let mut hook: HashMap<&str, (OffsetDateTime, &Seen)> = HashMap::new();
    let (mut duplicates, mut verified, mut bad_signatures, mut bad_bodies, mut bad_timestamps) = (0, 0, 0, 0, 0);
    for g in &got {
        verified += 1;
        if !verify(&secret, &g.id, &g.timestamp, &g.body, &g.signature) {
            bad_signatures += 1;
        }
        match g.timestamp.parse::<i64>() {
            Ok(ts) if (g.at.unix_timestamp() - ts).abs() <= 300 => {}
            _ => bad_timestamps += 1,
        }
        let Some(seen) = g.seen.as_ref().filter(|s| s.id == g.id) else {
            bad_bodies += 1;
            continue;
        };
        if !vms.contains(&seen.aggregate) {
            continue; // a warm-up VM's
        }
        // The first receipt counts; a later one is a duplicate.
        match hook.entry(&g.id) {
            std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((g.at, seen));
            }
        }
    }
    let missing = sse.keys().filter(|id| !hook.contains_key(id.as_str())).count();
    let unexpected = hook.keys().filter(|id| !sse.contains_key(**id)).count();
    let first_append = sse.values().map(|(_, s)| s.time).min().unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let last_append = sse.values().map(|(_, s)| s.time).max().unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let last_sse = sse.values().map(|(at, _)| *at).max().unwrap_or(first_append);
    let last_hook = hook.values().map(|(at, _)| *at).max().unwrap_or(first_append);
    // Lags in append order.
    let mut order: Vec<&(OffsetDateTime, Seen)> = sse.values().collect();
    order.sort_by_key(|(_, s)| s.time);
    let (mut sse_lag, mut hook_lag, mut hook_minus_sse, mut hook_first) = (Stats::default(), Stats::default(), Stats::default(), 0);
    let mut by_type: Vec<(String, Stats, Stats)> = Vec::new();
    for (at, s) in order {
        sse_lag.push(since(s.time, *at));
        let t = match by_type.iter().position(|(k, _, _)| *k == s.kind) {
            Some(i) => i,
            None => {
                by_type.push((s.kind.clone(), Stats::default(), Stats::default()));
                by_type.len() - 1
            }
        };
        by_type[t].1.push(since(s.time, *at));
        if let Some((hat, _)) = hook.get(s.id.as_str()) {
            hook_lag.push(since(s.time, *hat));
            by_type[t].2.push(since(s.time, *hat));
            if hat >= at {
                hook_minus_sse.push(since(*at, *hat));
            } else {
                hook_first += 1;
            }
        }
    }
    let first_hook = hook.values().map(|(at, _)| *at).min().unwrap_or(first_append);
    let row = Row {
        per_endpoint,
        backlog: restarted.map(|r| (r, first_hook)),
        vms: vms.len(),
        events: sse.len(),
        append_span: since(first_append, last_append),
        post_wall,
        sse_lag,
        hook_lag,
        hook_minus_sse,
        hook_first,
        by_type,
        sse_span: since(first_append, last_sse),
        hook_span: since(first_append, last_hook),
        hook_last: hook.values().map(|(at, _)| *at).max(),
        hook_distinct: hook.len(),
        duplicates,
        missing,
        unexpected,
        verified,
        bad_signatures,
        bad_bodies,
        bad_timestamps,
        load,
        cpu,
        cpu_window,
        errors,
    };
    drop(api);
    drop(http);
    cluster.stop();
    Ok(row)
}

// ---------------------------------------------------------------- the run

pub async fn run(args: WebhookArgs) -> Result<bool> {
    ensure!(args.webhook_vms > 0 && args.concurrency > 0 && !args.webhook_max_per_endpoint.is_empty(), "counts must be positive");
    ensure!(args.warmup + args.webhook_vms < crate::SIM_PORTS, "the sim driver has {} host ports: keep --warmup + --webhook-vms below that", crate::SIM_PORTS);
    let nats_version = std::process::Command::new(&args.nats_server)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for &pe in &args.webhook_max_per_endpoint {
        rows.push(run_row(&args, pe).await?);
        eprintln!("vmplane-bench: webhooks: row done, cluster stopped");
    }

    let mut o = String::new();
    writeln!(o)?;
    writeln!(
        o,
        "vmplane-bench webhooks: {} VMs per burst by {} POST clients, {} warm-up VMs, sim delays 0/0 ms, worker parallelism {}, deliverer --webhook-max-in-flight {}; {nats_version}",
        args.webhook_vms, args.concurrency, args.warmup, args.worker_parallelism, args.webhook_max_in_flight
    )?;
    let mut ok = true;
    for r in &rows {
        writeln!(o)?;
        writeln!(
            o,
            "{}--webhook-max-per-endpoint {}: {} VMs -> {} vm.* events, POSTs took {:.3} s, appended over {:.3} s ({:.1} events/s appended); load at the burst {}",
            if r.backlog.is_some() { "BACKLOG (deliverer stopped during the burst, then started), " } else { "" },
            r.per_endpoint,
            r.vms,
            r.events,
            r.post_wall.as_secs_f64(),
            r.append_span.as_secs_f64(),
            r.events as f64 / r.append_span.as_secs_f64().max(1e-9),
            r.load
        )?;
        writeln!(o, "{:<44} {:>6} {:>9} {:>9} {:>9} {:>9}", "lag from the event's append (ms)", "count", "mean", "p50", "p99", "max")?;
        let row = |o: &mut String, label: &str, s: &Stats| s.row(o, 44, label);
        row(&mut o, "SSE GET /v1/events?type=vm.* (read)", &r.sse_lag)?;
        if r.backlog.is_none() {
            row(&mut o, "webhook POST (received)", &r.hook_lag)?;
            row(&mut o, "webhook receipt - SSE receipt, same event", &r.hook_minus_sse)?;
            if r.hook_first > 0 {
                writeln!(o, "  ({} events came by webhook before the SSE feed had them)", r.hook_first)?;
            }
            write!(o, "p50 lag by event type, SSE / webhook (ms):")?;
            for (kind, sse, hook) in &r.by_type {
                write!(o, " {kind} {} / {};", ms(sse.p50()), ms(hook.p50()))?;
            }
            writeln!(o)?;
        }
        writeln!(o, "{:<44} {:>6} {:>9} {:>11}", "throughput", "events", "wall s", "per second")?;
        let mut spans = vec![("SSE: first append -> last receipt", r.events, r.sse_span)];
        match r.backlog {
            None => spans.push(("webhooks: first append -> last receipt", r.hook_distinct, r.hook_span)),
            Some((restarted, first)) => {
                spans.push(("webhooks: deliverer start -> last receipt", r.hook_distinct, r.hook_last.map_or(Duration::ZERO, |l| since(restarted, l))));
                spans.push(("webhooks: first -> last receipt", r.hook_distinct, r.hook_last.map_or(Duration::ZERO, |l| since(first, l))));
            }
        }
        for (label, n, span) in spans {
            writeln!(o, "{:<44} {:>6} {:>9.3} {:>11.1}", label, n, span.as_secs_f64(), n as f64 / span.as_secs_f64().max(1e-9))?;
        }
        write!(o, "CPU over the {:.3} s window (s):", r.cpu_window.as_secs_f64())?;
        for (name, used) in &r.cpu {
            match used {
                Some(d) => write!(o, " {name} {:.2};", d.as_secs_f64())?,
                None => write!(o, " {name} -;")?,
            }
        }
        if let Some((_, Some(d))) = r.cpu.get(3) {
            write!(o, " deliverer {:.0} us per delivery", d.as_secs_f64() * 1e6 / r.hook_distinct.max(1) as f64)?;
        }
        writeln!(o)?;
        writeln!(
            o,
            "checks: duplicates {}, missing {}, unexpected {}; signatures verified {} (failed {}), bodies not the event of webhook-id {}, webhook-timestamp off by > 5 min {}",
            r.duplicates, r.missing, r.unexpected, r.verified, r.bad_signatures, r.bad_bodies, r.bad_timestamps
        )?;
        let mut errors = Errors(r.errors.0.clone());
        for (n, what) in [
            (r.duplicates, "duplicate deliveries"),
            (r.missing, "events the SSE feed had but no webhook brought"),
            (r.unexpected, "webhook events the SSE feed did not have"),
            (r.bad_signatures, "signatures that do not verify"),
            (r.bad_bodies, "bodies that are not the event of their webhook-id"),
            (r.bad_timestamps, "webhook-timestamps off by more than 5 minutes"),
        ] {
            if n > 0 {
                *errors.0.entry(what.to_owned()).or_default() += n;
            }
        }
        if errors.total() == 0 {
            writeln!(o, "errors: none")?;
        } else {
            ok = false;
            writeln!(o, "ERRORS:")?;
            for (k, v) in &errors.0 {
                writeln!(o, "  {v:>6}  {k}")?;
            }
        }
    }
    print!("{o}");
    Ok(ok)
}
