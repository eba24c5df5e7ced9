//! Crashes and outages: projections rebuilt or replayed from the stream equal
//! the live ones; a worker killed mid-provisioning resumes without booting
//! twice; a NATS outage turns writes into quick 503s while reads keep working,
//! and everything resumes by itself when NATS is back.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Map, Value, json};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Projection rebuild
// ---------------------------------------------------------------------------

/// Everything the gateway serves from its projections, for one caller scope.
async fn capture_scope(c: &Client, out: &mut Map<String, Value>, scope: &str) {
    let (s, live) = c.get("/v1/vms?limit=100").await;
    assert_eq!(s, 200, "{live}");
    let (s, deleted) = c.get("/v1/vms?limit=100&status=deleted").await;
    assert_eq!(s, 200, "{deleted}");
    let mut ids: Vec<String> = Vec::new();
    for list in [&live, &deleted] {
        ids.extend(list["data"].as_array().unwrap().iter().map(|v| str_of(&v["id"]).to_owned()));
    }
    out.insert(format!("{scope} GET /v1/vms?limit=100"), live);
    out.insert(format!("{scope} GET /v1/vms?status=deleted"), deleted);
    for id in ids {
        out.insert(format!("{scope} GET /v1/vms/{id}"), c.vm(&id).await);
        out.insert(format!("{scope} GET /v1/vms/{id}/events"), Value::Array(c.vm_events(&id).await));
    }
    let (s, keys) = c.get("/v1/api-keys").await;
    assert_eq!(s, 200, "{keys}");
    out.insert(format!("{scope} GET /v1/api-keys"), keys);
}

/// The views to compare: VMs (lists, each VM, each history) and tenancy for
/// every org, hosts, and the given operations.
async fn capture(stack: &Stack, orgs: &[String], ops: &[(Option<String>, String)]) -> Value {
    let mut out = Map::new();
    capture_scope(&stack.admin, &mut out, "default").await;
    for org in orgs {
        let c = stack.admin.with_header("x-vmplane-org", org);
        capture_scope(&c, &mut out, org).await;
        let (s, projects) = stack.admin.get(&format!("/v1/orgs/{org}/projects")).await;
        assert_eq!(s, 200, "{projects}");
        out.insert(format!("GET /v1/orgs/{org}/projects"), projects);
    }
    let (s, orgs) = stack.admin.get("/v1/orgs").await;
    assert_eq!(s, 200);
    out.insert("GET /v1/orgs".into(), orgs);
    // Hosts: liveness (last heartbeat, uptime) is not history; everything else is.
    let (s, mut hosts) = stack.admin.get("/v1/hosts").await;
    assert_eq!(s, 200);
    for h in hosts.as_array_mut().unwrap() {
        h.as_object_mut().unwrap().remove("last_heartbeat");
        h.as_object_mut().unwrap().remove("uptime_percentage");
    }
    out.insert("GET /v1/hosts (without last_heartbeat and uptime)".into(), hosts);
    for (org, op) in ops {
        let c = match org {
            Some(org) => stack.admin.with_header("x-vmplane-org", org),
            None => stack.admin.clone(),
        };
        let (s, mut b) = c.get(&format!("/v1/operations/{op}")).await;
        assert_eq!(s, 200, "{b}");
        // An operation's `created_at` and `kind` come from the gateway that
        // accepted the command (its accept record); the event stream holds
        // neither (events carry their own times, and a no-op or tenancy
        // command's events do not say what kind of command it was). A rebuilt
        // projection can only derive them from events, so they are compared
        // separately (see `ops_rebuilt_from_events`).
        let obj = b.as_object_mut().unwrap();
        obj.remove("created_at");
        obj.remove("kind");
        out.insert(format!("GET /v1/operations/{op} (without created_at, kind)"), b);
    }
    Value::Object(out)
}

/// The first difference between two JSON values, as a path.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let (va, vb) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                if x.contains_key(k) != y.contains_key(k) {
                    return Some(format!("{path}/{k}: present only on one side ({va} vs {vb})"));
                }
                if let Some(d) = first_difference(va, vb, &format!("{path}/{k}")) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

fn assert_same(live: &Value, other: &Value, what: &str) {
    if let Some(d) = first_difference(live, other, "") {
        panic!("{what} differs from the live projection at {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_and_replayed_projections_equal_the_live_ones() {
    let mut stack = Stack::start().await;
    let c = stack.admin.clone();
    // Operations, each with the org to ask in (`None`: the admin without an
    // org, who sees every org's operations).
    let mut ops: Vec<(Option<String>, String)> = Vec::new();
    let op_of = |b: &Value| str_of(&b["operation"]["id"]).to_owned();

    // A varied workload in the default org.
    let mut vms = Vec::new();
    for i in 1..=5 {
        let b = c.create_vm(json!({ "name": format!("w{i}"), "vcpus": i, "labels": { "n": i.to_string() } })).await;
        ops.push((None, op_of(&b)));
        vms.push(str_of(&b["id"]).to_owned());
    }
    for (_, op) in ops.clone() {
        c.wait_op_succeeded(&op).await;
    }
    for (vm, actions) in
        [(&vms[0], &["stop"][..]), (&vms[1], &["standby"]), (&vms[2], &["delete"]), (&vms[3], &["restart", "start"]), (&vms[4], &["stop", "start", "stop"])]
    {
        for action in actions {
            let b = c.act(vm, action).await;
            ops.push((None, op_of(&b)));
            c.wait_op_succeeded(&op_of(&b)).await;
        }
    }
    let failed = c.create_vm(json!({ "name": "broken", "labels": { "sim.fail": "ready" } })).await;
    ops.push((None, op_of(&failed)));
    assert_eq!(c.wait_op(&op_of(&failed)).await["status"], "failed");
    let (s, refused) = c.post_empty(&format!("/v1/vms/{}/restart", vms[0])).await;
    assert_eq!(s, 409, "{refused}");

    // Another org, with a project and a key.
    let (s, org) = c.post("/v1/orgs", &json!({ "name": "acme" })).await;
    assert_eq!(s, 201, "{org}");
    let org_id = str_of(&org["id"]).to_owned();
    ops.push((None, op_of(&org)));
    let (s, project) = c.post(&format!("/v1/orgs/{org_id}/projects"), &json!({ "name": "web" })).await;
    assert_eq!(s, 201, "{project}");
    assert_eq!(project["operation"]["org_id"], org_id.as_str(), "a tenancy operation belongs to its target org");
    ops.push((None, op_of(&project)));
    ops.push((Some(org_id.clone()), op_of(&project)));
    let key = stack.client(&c.create_key(&org_id, "ci").await);
    let k1 = key.create_running_vm("k1").await;
    key.act_and_wait(str_of(&k1["id"]), "stop", "stopped").await;
    let in_project = c.with_header("x-vmplane-org", &org_id).with_header("x-vmplane-project", str_of(&project["id"])).create_vm(json!({ "name": "p1" })).await;
    assert_eq!(in_project["project_id"], project["id"]);
    ops.push((Some(org_id.clone()), op_of(&in_project)));
    key.wait_op_succeeded(&op_of(&in_project)).await;

    let orgs = vec![org_id.clone()];
    let live = capture(&stack, &orgs, &ops).await;
    let live_ops: Vec<Value> = {
        let mut v = Vec::new();
        for (org, op) in &ops {
            let c = org.as_ref().map_or(c.clone(), |o| c.with_header("x-vmplane-org", o));
            v.push(c.get(&format!("/v1/operations/{op}")).await.1);
        }
        v
    };

    // 1. `vmplane projections rebuild` with the gateway stopped.
    let status = stack.gateway.terminate().await;
    assert!(status.success(), "gateway exit on SIGTERM: {status}");
    let out = stack.rebuild_projections();
    assert!(out.status.success(), "rebuild failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt"), "{}", String::from_utf8_lossy(&out.stdout));
    stack.gateway.respawn();
    stack.wait_ready().await;
    stack.wait_host_online().await;
    let rebuilt = capture(&stack, &orgs, &ops).await;
    assert_same(&live, &rebuilt, "after `projections rebuild`, the gateway's view");
    ops_rebuilt_from_events(&live_ops, &stack, &ops).await;

    // 2. No projections at all: the gateway replays the stream at start.
    stack.gateway.terminate().await;
    let dir = stack.data_dir().join("projections");
    assert!(dir.is_dir(), "{} exists", dir.display());
    std::fs::remove_dir_all(&dir).unwrap();
    stack.gateway.respawn();
    stack.wait_ready().await;
    stack.wait_host_online().await;
    let replayed = capture(&stack, &orgs, &ops).await;
    assert_same(&live, &replayed, "after deleting the projections, the replayed view");

    // And the replayed gateway keeps working.
    let vm = c.create_running_vm("after-replay").await;
    assert_eq!(c.vm_total("").await, live["default GET /v1/vms?limit=100"]["pagination"]["total_items"].as_u64().unwrap() + 1);
    c.act_and_wait(str_of(&vm["id"]), "stop", "stopped").await;
}

/// Operations after a rebuild: what the stream says is identical; `kind` and
/// `created_at`, known only to the accepting gateway, are derived from events
/// where they can be.
async fn ops_rebuilt_from_events(live: &[Value], stack: &Stack, ops: &[(Option<String>, String)]) {
    for ((org, op), before) in ops.iter().zip(live) {
        let c = org.as_ref().map_or(stack.admin.clone(), |o| stack.admin.with_header("x-vmplane-org", o));
        let (_, after) = c.get(&format!("/v1/operations/{op}")).await;
        if !after["kind"].is_null() {
            assert_eq!(after["kind"], before["kind"], "{op}");
        }
        // Commands that changed a VM's state name their kind in its events.
        let changed_vm = before["target_id"].as_str().is_some_and(|t| t.starts_with("vm_"))
            && ["create", "stop", "standby", "restart", "delete"].contains(&before["kind"].as_str().unwrap_or_default());
        if changed_vm {
            assert_eq!(after["kind"], before["kind"], "{op}: {before} vs {after}");
        }
    }
}

// ---------------------------------------------------------------------------
// Worker crash
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_provisioning_resumes_without_booting_twice() {
    let mut stack = Stack::start_with(StackOpts { sim_boot_delay_ms: 3000, ..Default::default() }).await;
    let c = stack.admin.clone();
    let b = c.create_vm(json!({ "name": "crashy" })).await;
    let (id, op) = (str_of(&b["id"]).to_owned(), str_of(&b["operation"]["id"]).to_owned());

    // Wait until the boot step is under way (disk prepared, not yet booted).
    wait_for("the VM to reach its boot step", WAIT, async || {
        let types = c.event_types(&id).await;
        if types.iter().any(|t| t == "booted") {
            panic!("booted before the worker could be killed: {types:?}");
        }
        if types.iter().any(|t| t == "disk_prepared") { Ok(()) } else { Err(format!("{types:?}")) }
    })
    .await;
    let vm = c.vm(&id).await;
    assert_eq!(vm["status"], "provisioning", "{vm}");
    stack.worker.kill9();
    let guest = stack.sim_guest(&id).expect("the guest file exists after network and disk");
    assert_eq!(guest["running"], false, "killed before the boot completed: {guest}");

    stack.worker.respawn();
    let done = c.wait_op(&op).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let vm = c.wait_vm_status(&id, "running").await;
    assert!(vm["ip"].is_string(), "{vm}");

    let guest = stack.sim_guest(&id).expect("sim guest");
    assert_eq!(guest["boots"], 1, "the guest was booted exactly once: {guest}");
    assert_eq!(guest["running"], true);
    let types = c.event_types(&id).await;
    assert_eq!(types, ["created", "provisioning_started", "network_allocated", "disk_prepared", "booted", "ready", "operation_finished"]);

    // The restarted worker keeps serving this VM.
    c.act_and_wait(&id, "stop", "stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_right_after_booting_adopts_the_guest() {
    // Killed after the boot but before `booted` can be recorded (or just
    // after): either way the restarted worker adopts the running guest.
    let mut stack = Stack::start_with(StackOpts { sim_boot_delay_ms: 50, sim_ready_delay_ms: 3000, ..Default::default() }).await;
    let c = stack.admin.clone();
    let b = c.create_vm(json!({ "name": "adopt" })).await;
    let (id, op) = (str_of(&b["id"]).to_owned(), str_of(&b["operation"]["id"]).to_owned());
    wait_for("the guest to be booted", WAIT, async || match stack.sim_guest(&id) {
        Some(g) if g["running"] == true => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    stack.worker.kill9();
    stack.worker.respawn();
    c.wait_op_succeeded(&op).await;
    c.wait_vm_status(&id, "running").await;
    assert_eq!(stack.sim_guest(&id).unwrap()["boots"], 1);
    let types = c.event_types(&id).await;
    assert_eq!(types.iter().filter(|t| *t == "booted").count(), 1, "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "ready").count(), 1, "{types:?}");
}

// ---------------------------------------------------------------------------
// NATS outage
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_gives_quick_503s_reads_keep_working_and_service_resumes() {
    let mut stack = Stack::start().await;
    let c = stack.admin.clone();
    let vm = c.create_running_vm("survivor").await;
    let id = str_of(&vm["id"]).to_owned();
    let org = c.create_org("acme").await;

    stack.nats.stop().await;

    // Writes: 503 + Retry-After + `unavailable`, within a bounded time.
    let quick = c.with_timeout(Duration::from_secs(10));
    let writes = [
        (Method::POST, "/v1/vms".to_owned(), Some(json!({ "name": "during" })), None),
        (Method::POST, "/v1/vms".to_owned(), Some(json!({ "name": "during-idem" })), Some("idem-1")),
        (Method::POST, format!("/v1/vms/{id}/stop"), None, None),
        (Method::DELETE, format!("/v1/vms/{id}"), None, None),
        (Method::POST, "/v1/orgs".to_owned(), Some(json!({ "name": "during" })), None),
    ];
    for (method, path, body, idem) in writes {
        let mut rb = quick.request(method.clone(), &path);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        if let Some(k) = idem {
            rb = rb.header("idempotency-key", k);
        }
        let r = quick.try_send(rb).await.unwrap_or_else(|e| panic!("{method} {path} did not complete during the outage: {e}"));
        assert_eq!(r.status, 503, "{method} {path}: {}", r.body);
        assert_eq!(r.body["code"], "unavailable", "{}", r.body);
        assert!(r.body["message"].is_string());
        let retry: u64 = r.headers.get("retry-after").unwrap_or_else(|| panic!("{method} {path}: no Retry-After")).to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
    }
    let anon = stack.anonymous().with_timeout(Duration::from_secs(10));
    wait_for("/readyz to report the outage", Duration::from_secs(10), async || match anon.get("/readyz").await {
        (503, b) if b["code"] == "unavailable" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let r = quick.send(quick.request(Method::GET, "/v1/events")).await;
    assert_eq!(r.status, 503, "the live feed needs NATS: {}", r.body);

    // Reads come from the projection.
    assert_eq!(quick.vm(&id).await["status"], "running");
    assert_eq!(quick.vm_total("").await, 1);
    assert_eq!(quick.event_types(&id).await.len(), 7);
    assert_eq!(quick.get("/v1/hosts").await.0, 200);
    assert_eq!(quick.get("/v1/orgs").await.0, 200);
    assert_eq!(quick.with_header("x-vmplane-org", &org).vm_total("").await, 0);
    assert_eq!(anon.get("/healthz").await.0, 200);

    // NATS back on the same port and store: everything resumes by itself.
    stack.nats.start().await;
    stack.wait_ready().await;
    stack.wait_host_online().await;
    let vm2 = wait_for("a VM to be accepted again", WAIT, async || match c.post("/v1/vms", &json!({ "name": "after" })).await {
        (202, b) => Ok(b),
        other => Err(format!("{other:?}")),
    })
    .await;
    // Read-your-writes holds again: the gateway follows the stream anew.
    let (s, got) = c.get(&format!("/v1/vms/{}", str_of(&vm2["id"]))).await;
    assert_eq!(s, 200, "the new VM is readable right after its 202: {got}");
    c.wait_op_succeeded(str_of(&vm2["operation"]["id"])).await;
    assert_eq!(c.vm(str_of(&vm2["id"])).await["status"], "running");
    // The refused writes left nothing behind; the old VM is intact and still works.
    assert_eq!(c.vm_total("").await, 2);
    assert_eq!(c.get("/v1/orgs").await.1.as_array().map(Vec::len), Some(2));
    c.act_and_wait(&id, "stop", "stopped").await;
    let mut feed = c.sse(None).await;
    feed.read_until(Duration::from_secs(20), |e| e.event == "stopped" && e.data["aggregate_id"] == id.as_str()).await;
}

/// A reader of the event stream that skips events (an ordered consumer on a
/// replica still catching up after a restart can) does not make the
/// projection skip them: the missing events are read back from the stream's
/// leader, and the views equal those built from every event.
#[tokio::test]
async fn events_a_reader_skipped_are_read_back_from_the_stream() {
    use vmplane_bus::{
        Bus,
        auth::{Credentials, Role},
    };
    use vmplane_gateway::projection::Projections;
    let stack = Stack::start().await;
    let c = &stack.admin;
    let mut ids = Vec::new();
    for name in ["gap-1", "gap-2", "gap-3"] {
        ids.push(str_of(&c.create_running_vm(name).await["id"]).to_owned());
    }
    let creds = Credentials::from_file(&stack.nats.dir.join("gateway.nk")).expect("gateway credentials");
    let bus = Bus::connect(&stack.nats.url(), Role::Gateway, &creds).await.expect("connecting as the gateway");
    let last = bus.events_last_sequence().await.expect("the stream's last sequence");
    let mut every = Vec::new();
    for seq in 1..=last {
        every.push((seq, bus.event_at(seq).await.expect("reading the stream").expect("no gap in the stream")));
    }
    assert_eq!(bus.event_at(last + 1).await.expect("reading the stream"), None, "nothing past the end");
    // All but the first two and the last two events are skipped, in two reads.
    let skipped = |range: std::ops::Range<usize>| every[range].iter().filter(|(seq, _)| *seq <= 2 || *seq > last - 2).cloned().collect::<Vec<_>>();
    let half = every.len() / 2;

    let dir = tempfile::tempdir().unwrap();
    let whole = Projections::open(&dir.path().join("whole")).unwrap();
    whole.apply_read(&bus, every.clone()).await.expect("applying every event");
    let gapped = Projections::open(&dir.path().join("gapped")).unwrap();
    gapped.apply_read(&bus, skipped(0..half)).await.expect("applying the first read");
    gapped.apply_read(&bus, skipped(half..every.len())).await.expect("applying the second read");

    assert_eq!((whole.applied(), gapped.applied()), (last, last));
    for id in &ids {
        let id = id.parse().unwrap();
        let (a, b) = (whole.vm(id).unwrap().expect("the VM in the whole projection"), gapped.vm(id).unwrap());
        assert_eq!(Some(serde_json::to_value(&a).unwrap()), b.map(|b| serde_json::to_value(b).unwrap()), "{id}");
        assert_eq!(a.status.as_str(), "running");
        let events = |p: &Projections| p.vm_events(id).unwrap().into_iter().map(|(seq, _)| seq).collect::<Vec<_>>();
        assert_eq!(events(&whole), events(&gapped), "{id}'s history");
    }
}
