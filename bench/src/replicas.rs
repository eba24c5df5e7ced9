//! `vmplane-bench replicas`: what a replicated stream costs. JetStream
//! publish-with-ack of a command-sized payload (as the gateway publishes a
//! create), sequential and with C tasks on one connection, to a file stream
//! with 1 and with 3 replicas on a three-node nats-server cluster on this
//! machine (loopback routes), and to a single server for reference. Every
//! node runs vmplane's authorization config (`vmplane nats init`); the bench
//! connects as the admin.
//!
//! On one machine the three nodes share its cores and disk, so R3 here pays
//! the replication protocol (a quorum ack per message, two extra copies
//! written) without network latency: between machines add a round trip per
//! acknowledged append (the leader waits for one follower).

use crate::{Errors, Proc, Stats, find_vmplane, representative_command, tail};
use anyhow::{Context, Result, anyhow, ensure};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ReplicaArgs {
    /// Sequential publishes per setup (latency).
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Publishes per setup shared by --concurrency tasks (throughput).
    #[arg(long, default_value_t = 20000)]
    concurrent_count: usize,
    /// Tasks publishing at once on one connection (as a gateway has one).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Unmeasured publishes before each sequential phase.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Upper bound on each phase's wall time, in seconds.
    #[arg(long, default_value_t = 120)]
    phase_timeout_secs: u64,
    /// The vmplane binary (for `vmplane nats init`; default: next to this binary).
    #[arg(long)]
    vmplane: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// Keep the temp dir (stores and logs) and print its path.
    #[arg(long)]
    keep_tmp: bool,
}

/// nats-server nodes started from one `vmplane nats init`; stopped on drop.
struct Nodes {
    procs: Vec<Proc>,
    urls: Vec<String>,
}

/// Start `size` nodes (a cluster when more than one) under `dir/<name>-<i>`.
async fn start_nodes(args: &ReplicaArgs, init: &Path, dir: &Path, name: &str, size: usize) -> Result<Nodes> {
    let base: Value = serde_json::from_slice(&std::fs::read(init.join("nats.conf"))?)?;
    let ports: Vec<(u16, u16)> = (0..size).map(|_| crate::free_ports()).collect::<Result<_>>()?;
    let (mut procs, mut urls) = (Vec::new(), Vec::new());
    for (i, (port, route)) in ports.iter().enumerate() {
        let node = dir.join(format!("{name}-{i}"));
        std::fs::create_dir_all(&node)?;
        let mut config = base.clone();
        config["server_name"] = json!(format!("{name}-{i}"));
        config["listen"] = json!(format!("127.0.0.1:{port}"));
        config["pid_file"] = json!(node.join("nats.pid"));
        config["jetstream"] = json!({ "store_dir": node.join("store") });
        if size > 1 {
            let routes: Vec<String> = ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}")).collect();
            config["cluster"] = json!({ "name": name, "listen": format!("127.0.0.1:{route}"), "routes": routes });
        }
        let conf = node.join("nats.conf");
        std::fs::write(&conf, serde_json::to_vec_pretty(&config)?)?;
        procs.push(Proc::spawn("nats-server", &args.nats_server, &["-c".into(), conf.into()], &[], dir.join(format!("{name}-{i}.log")))?);
        urls.push(format!("nats://127.0.0.1:{port}"));
    }
    Ok(Nodes { procs, urls })
}

/// Connect as the admin and wait (20 s) until JetStream answers (a meta leader is elected).
async fn connect(init: &Path, nodes: &mut Nodes) -> Result<jetstream::Context> {
    let seed = std::fs::read_to_string(init.join("admin.nk")).context("reading the NATS admin seed")?;
    let addrs: Vec<async_nats::ServerAddr> = nodes.urls.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        for p in &mut nodes.procs {
            p.check_alive()?;
        }
        match async_nats::ConnectOptions::with_nkey(seed.trim().to_owned()).custom_inbox_prefix("_INBOX_admin").connect(addrs.clone()).await {
            Ok(c) => break c,
            Err(e) => ensure!(Instant::now() < deadline, "connecting to nats-server: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        if let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(2), client.request("$JS.API.INFO", "".into())).await
            && serde_json::from_slice::<Value>(&msg.payload).is_ok_and(|v| v.get("error").is_none())
        {
            return Ok(jetstream::new(client));
        }
        ensure!(Instant::now() < deadline, "JetStream did not answer within 20 s; end of the first node's log:\n{}", tail(&nodes.procs[0].log, 20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A file stream like vmplane's command stream with `replicas` copies.
async fn bench_stream(js: &jetstream::Context, replicas: usize) -> Result<String> {
    let name = format!("BENCH_R{replicas}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("bench.r{replicas}.>")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("creating stream {name}: {e}"))?;
    Ok(format!("bench.r{replicas}"))
}

async fn publish(js: &jetstream::Context, subject: String, payload: &Bytes) -> Result<()> {
    js.publish(subject, payload.clone()).await?.await?;
    Ok(())
}

struct Measured {
    sequential: Stats,
    concurrent: Stats,
    wall: Duration,
    errors: Errors,
}

async fn measure(args: &ReplicaArgs, js: &jetstream::Context, prefix: &str, payload: &Bytes) -> Measured {
    let limit = Duration::from_secs(args.phase_timeout_secs);
    let (mut sequential, mut errors) = (Stats::default(), Errors::default());
    let deadline = Instant::now() + limit;
    for i in 0..args.warmup + args.count {
        if Instant::now() > deadline {
            errors.add("sequential: phase time limit reached");
            break;
        }
        let t = Instant::now();
        match publish(js, format!("{prefix}.seq.{}", i % 1000), payload).await {
            Ok(()) if i >= args.warmup => sequential.push(t.elapsed()),
            Ok(()) => {}
            Err(e) => errors.add(format!("publish: {e}")),
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (js, payload, next, prefix, count) = (js.clone(), payload.clone(), next.clone(), prefix.to_owned(), args.concurrent_count);
            tokio::spawn(async move {
                let (mut stats, mut errors) = (Stats::default(), Errors::default());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    if Instant::now() > deadline {
                        errors.add("concurrent: phase time limit reached");
                        break;
                    }
                    let t = Instant::now();
                    match publish(&js, format!("{prefix}.con.{}", i % 1000), &payload).await {
                        Ok(()) => stats.push(t.elapsed()),
                        Err(e) => errors.add(format!("publish: {e}")),
                    }
                }
                (stats, errors)
            })
        })
        .collect();
    let mut concurrent = Stats::default();
    for t in tasks {
        match t.await {
            Ok((s, e)) => {
                concurrent.extend(s);
                errors.merge(e);
            }
            Err(e) => errors.add(format!("task: {e}")),
        }
    }
    Measured { sequential, concurrent, wall: started.elapsed(), errors }
}

pub async fn run(args: ReplicaArgs) -> Result<bool> {
    let vmplane = find_vmplane(&args.vmplane)?;
    ensure!(args.nats_server.is_file(), "nats-server not found at {} (Debian: `apt-get install nats-server`)", args.nats_server.display());
    let tmp = tempfile::Builder::new().prefix("vmplane-bench-replicas-").tempdir()?;
    let dir = tmp.path().to_owned();
    let init = dir.join("nats");
    let out = std::process::Command::new(&vmplane)
        .args(["nats", "init", "--listen", "127.0.0.1:4222", "--out-dir"])
        .arg(&init)
        .output()
        .context("running vmplane nats init")?;
    ensure!(out.status.success(), "vmplane nats init: {}", String::from_utf8_lossy(&out.stderr));
    let payload = Bytes::from(representative_command()?);

    let mut results = Vec::new();
    {
        let mut single = start_nodes(&args, &init, &dir, "single", 1).await?;
        let js = connect(&init, &mut single).await?;
        let prefix = bench_stream(&js, 1).await?;
        results.push(("1 server, R1", measure(&args, &js, &prefix, &payload).await));
    }
    {
        let mut cluster = start_nodes(&args, &init, &dir, "cluster", 3).await?;
        let js = connect(&init, &mut cluster).await?;
        for replicas in [1, 3] {
            let prefix = bench_stream(&js, replicas).await?;
            let label = if replicas == 1 { "3-node cluster, R1" } else { "3-node cluster, R3" };
            results.push((label, measure(&args, &js, &prefix, &payload).await));
        }
    }

    let mut o = String::new();
    writeln!(o, "JetStream publish+ack of a {}-byte command, file storage, loopback\n", payload.len())?;
    writeln!(o, "{:<40} {:>6} {:>9} {:>9} {:>9} {:>9}", "latency (ms)", "n", "mean", "p50", "p99", "max")?;
    for (label, m) in &results {
        m.sequential.row(&mut o, 40, &format!("{label}: sequential"))?;
        m.concurrent.row(&mut o, 40, &format!("{label}: {} at once", args.concurrency))?;
    }
    writeln!(o, "\n{:<40} {:>12}", "throughput", "acked/s")?;
    for (label, m) in &results {
        let rate = m.concurrent.samples.len() as f64 / m.wall.as_secs_f64().max(1e-9);
        writeln!(o, "{:<40} {rate:>12.0}", format!("{label}, {} tasks", args.concurrency))?;
    }
    let mut clean = true;
    for (label, m) in &results {
        if m.errors.total() > 0 {
            clean = false;
            writeln!(o, "\nERRORS ({label}): {:?}", m.errors.0)?;
        }
    }
    print!("{o}");
    if args.keep_tmp {
        eprintln!("vmplane-bench: kept {}", tmp.keep().display());
    }
    Ok(clean)
}
