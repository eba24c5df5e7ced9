//! `vmplane-bench guests --phases clones`: VMs resumed from a snapshot
//! against cold boots of the same machine, through the API, in one run.
//!
//! * A source VM is booted and snapshotted (`POST /v1/vms/{id}/snapshots`).
//! * Rounds, interleaved: a cold create -> running, then a create
//!   `from_snapshot` -> running (the clone is running once its guest agent
//!   took its new identity), each deleted after.
//! * Fork: `POST /v1/vms/{id}/fork` of the running source into one clone,
//!   POST until its operation succeeded (the snapshot ready and the clone
//!   running), end to end; then the same as a client would do it without
//!   the endpoint (snapshot, wait, create), for comparison.
//! * Where a clone's time goes: the offsets of its events (its history)
//!   from its `created` event.
//! * Memory: the Pss (`/proc/<pid>/smaps_rollup`) of one cold-booted VM's
//!   qemu, then of `--clones` clones running at once (the sum of their Pss
//!   counts the pages they share from the snapshot's memory file once).

use super::{Api, call, op_wait, p, proc_pss_kib, read_pid, secs, stats, vm_action, vm_create};
use anyhow::{Result, ensure};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Take a snapshot of `vm` and wait until it is ready: (snapshot id, POST -> ready, the snapshot).
async fn snapshot(api: &Api, vm: &str, name: &str, limit: Duration) -> Result<(String, Duration, Value)> {
    let t0 = Instant::now();
    let (status, v) = call(api, reqwest::Method::POST, &format!("/v1/vms/{vm}/snapshots"), Some(json!({ "name": name }))).await?;
    ensure!(status == 202, "POST /v1/vms/{vm}/snapshots: HTTP {status}: {v}");
    let (id, op) = (v["id"].as_str().unwrap_or_default().to_owned(), v["operation"]["id"].as_str().unwrap_or_default().to_owned());
    let done = op_wait(api, &op, t0 + limit).await?;
    ensure!(done["status"] == "succeeded", "snapshot of {vm}: {}", done["error"]);
    let took = t0.elapsed();
    let (_, snap) = call(api, reqwest::Method::GET, &format!("/v1/snapshots/{id}"), None).await?;
    Ok((id, took, snap))
}

async fn delete_snapshot(api: &Api, id: &str, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    let (status, v) = call(api, reqwest::Method::DELETE, &format!("/v1/snapshots/{id}"), None).await?;
    ensure!(status == 202, "DELETE /v1/snapshots/{id}: HTTP {status}: {v}");
    let done = op_wait(api, v["operation"]["id"].as_str().unwrap_or_default(), t0 + limit).await?;
    ensure!(done["status"] == "succeeded", "delete of snapshot {id}: {}", done["error"]);
    Ok(())
}

/// A VM's events as `type +ms` from its first, oldest first.
async fn timeline(api: &Api, vm: &str) -> Result<String> {
    let (status, events) = call(api, reqwest::Method::GET, &format!("/v1/vms/{vm}/events"), None).await?;
    ensure!(status == 200, "GET /v1/vms/{vm}/events: HTTP {status}: {events}");
    let at = |e: &Value| e["time"].as_str().and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
    let events = events.as_array().cloned().unwrap_or_default();
    let Some(first) = events.first().and_then(at) else { return Ok(String::new()) };
    Ok(events
        .iter()
        .map(|e| format!("{} +{}", e["type"].as_str().unwrap_or("?"), at(e).map_or(-1, |t| (t - first).whole_milliseconds())))
        .collect::<Vec<_>>()
        .join(", "))
}

fn pss_mib(qemu_dir: &Path, vm: &str) -> Option<f64> {
    let pid = read_pid(&qemu_dir.join("vms").join(vm).join("qemu.pid"))?;
    proc_pss_kib(pid).map(|k| k as f64 / 1024.0)
}

/// Run the phase; the report section it prints.
pub async fn phase(api: &Api, qemu_dir: &Path, memory_mib: u64, disk_gb: u32, rounds: usize, clones: usize, limit: Duration) -> Result<String> {
    let machine = json!({ "memory_mib": memory_mib, "disk_gb": disk_gb });
    let body = |name: String| {
        let mut b = machine.clone();
        b["name"] = json!(name);
        b
    };
    let (source, _, _) = vm_create(api, body("clone-source".into()), limit).await?;
    let (snap, took, info) = snapshot(api, &source, "bench", limit).await?;
    eprintln!("vmplane-bench: snapshot {snap} of {source}: {} s, paused {} ms, {} bytes", secs(took), info["pause_ms"], info["size_bytes"]);

    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (vm, _, total) = vm_create(api, body(format!("cold-{round}")), limit).await?;
        vm_action(api, &vm, "delete", limit).await?;
        cold.push(total);
        let (vm, _, resumed) = vm_create(api, json!({ "name": format!("clone-{round}"), "from_snapshot": snap }), limit).await?;
        if round == 0 {
            eprintln!("vmplane-bench: the first clone's events: {}", timeline(api, &vm).await?);
        }
        vm_action(api, &vm, "delete", limit).await?;
        warm.push(resumed);
        eprintln!("vmplane-bench: round {round}: cold {} s, from snapshot {} s", secs(total), secs(resumed));
    }

    // Fork: the endpoint, then by hand (snapshot, then a create from it).
    let (mut forks, mut by_hand) = (Vec::new(), Vec::new());
    for round in 0..rounds.min(5) {
        let t0 = Instant::now();
        let (status, v) = call(api, reqwest::Method::POST, &format!("/v1/vms/{source}/fork"), Some(json!({ "name": format!("fork-{round}") }))).await?;
        ensure!(status == 202, "POST /v1/vms/{source}/fork: HTTP {status}: {v}");
        let done = op_wait(api, v["operation"]["id"].as_str().unwrap_or_default(), t0 + limit).await?;
        ensure!(done["status"] == "succeeded", "fork of {source}: {}", done["error"]);
        forks.push(t0.elapsed());
        let (vm, fsnap) = (v["vms"][0]["id"].as_str().unwrap_or_default().to_owned(), v["snapshot"]["id"].as_str().unwrap_or_default().to_owned());
        if round == 0 {
            eprintln!("vmplane-bench: fork {round}: {} s; the clone's events: {}", secs(forks[0]), timeline(api, &vm).await?);
        }
        vm_action(api, &vm, "delete", limit).await?;
        delete_snapshot(api, &fsnap, limit).await?;
        let t0 = Instant::now();
        let (fsnap, _, _) = snapshot(api, &source, &format!("by-hand-{round}"), limit).await?;
        let (vm, _, _) = vm_create(api, json!({ "name": format!("by-hand-{round}"), "from_snapshot": fsnap }), limit).await?;
        by_hand.push(t0.elapsed());
        vm_action(api, &vm, "delete", limit).await?;
        delete_snapshot(api, &fsnap, limit).await?;
    }

    // Memory: one cold VM, then `clones` clones running together.
    let (cold_vm, _, _) = vm_create(api, body("pss-cold".into()), limit).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cold_pss = pss_mib(qemu_dir, &cold_vm).unwrap_or(f64::NAN);
    vm_action(api, &cold_vm, "delete", limit).await?;
    let mut running = Vec::new();
    for i in 0..clones {
        let (vm, _, _) = vm_create(api, json!({ "name": format!("pss-clone-{i}"), "from_snapshot": snap }), limit).await?;
        running.push(vm);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let per_clone: Vec<f64> = running.iter().map(|vm| pss_mib(qemu_dir, vm).unwrap_or(f64::NAN)).collect();
    let clones_pss: f64 = per_clone.iter().sum();
    for vm in running.iter().chain([&source]) {
        vm_action(api, vm, "delete", limit).await?;
    }
    delete_snapshot(api, &snap, limit).await?;

    let (c, w, f, h) = (stats(cold), stats(warm), stats(forks), stats(by_hand));
    let mut out = String::new();
    writeln!(out, "\nsnapshots and clones ({memory_mib} MiB, {disk_gb} GB root disk; {rounds} rounds, interleaved)")?;
    writeln!(
        out,
        "  snapshot of the running source: {} s to ready, guest paused {} ms, {} MiB on disk",
        secs(took),
        info["pause_ms"],
        info["size_bytes"].as_u64().unwrap_or(0) >> 20
    )?;
    writeln!(out, "seconds                                        n     min     p50     max")?;
    for (name, s) in [
        ("cold create: POST -> running", &c),
        ("from snapshot: POST -> running", &w),
        ("fork (POST /fork, 1 clone) -> op succeeded", &f),
        ("by hand: snapshot, then create from it", &h),
    ] {
        let sorted = s.sorted();
        writeln!(out, "{name:<45} {:>2} {:>7} {:>7} {:>7}", sorted.len(), secs(p(s, 0.0)), secs(p(s, 50.0)), secs(p(s, 100.0)))?;
    }
    writeln!(out, "  from snapshot / cold create (p50): {:.3}x", p(&w, 50.0).as_secs_f64() / p(&c, 50.0).as_secs_f64())?;
    writeln!(
        out,
        "memory (Pss of each qemu, MiB): one cold-booted VM {cold_pss:.0}; {clones} clones together {clones_pss:.0} ({:.2}x the cold VM)",
        clones_pss / cold_pss
    )?;
    writeln!(out, "  per clone: {}", per_clone.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" "))?;
    Ok(out)
}
