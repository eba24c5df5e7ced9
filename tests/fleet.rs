//! More than one host: a worker and a second gateway join the control plane
//! of a `vmplane up` through the `join.json` it writes.

mod common;

use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// The hosts `GET /v1/hosts` shows online, by name.
async fn online_hosts(c: &Client) -> Vec<Value> {
    let Some((200, hosts)) = c.try_get("/v1/hosts").await else { return vec![] };
    hosts.as_array().cloned().unwrap_or_default().into_iter().filter(|h| h["status"] == "online").collect()
}

/// Start another sim worker on the stack's NATS, with its own data dir.
fn sim_worker(stack: &Stack, name: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["worker".to_owned()];
    args.extend(stack.nats.args("worker"));
    let dir = stack.root().join(name).display().to_string();
    args.extend(["--data-dir", &dir, "--driver", "sim", "--host-name", name, "--sim-boot-delay-ms", "20", "--sim-ready-delay-ms", "20"].map(str::to_owned));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Proc::start(name, BIN, args, vec![], stack.root().join(format!("{name}.log")))
}

/// Wait until `n` hosts are online; their ids by name.
async fn hosts_by_name(c: &Client, n: usize, workers: &mut [&mut Proc]) -> std::collections::BTreeMap<String, String> {
    let hosts = wait_for(&format!("{n} hosts online"), WAIT, async || {
        let hosts = online_hosts(c).await;
        if hosts.len() == n { Ok(hosts) } else { Err(workers.iter_mut().map(|w| w.log_tail(3)).collect::<Vec<_>>().join("\n")) }
    })
    .await;
    hosts.iter().map(|h| (str_of(&h["name"]).to_owned(), str_of(&h["id"]).to_owned())).collect()
}

/// `vmplane up` writes `<data-dir>/join.json` (0600: the NATS URLs and the
/// worker's, gateway's and deliverer's credentials, not the admin's); a
/// worker with `--join` and its own data dir becomes a second host that VMs
/// are placed on; a gateway with `--join` serves the same state; and the
/// file stays good when `up` restarts (same NATS port).
#[tokio::test]
async fn a_worker_and_a_gateway_join_through_join_json() {
    let dir = tempfile::Builder::new().prefix("vmplane-fleet-").tempdir().unwrap();
    let data = dir.path().join("up");
    let listen = format!("127.0.0.1:{}", free_port());
    let sim = ["--driver", "sim", "--sim-boot-delay-ms", "20", "--sim-ready-delay-ms", "20"];
    let mut up_args: Vec<String> = ["up", "--data-dir", &data.display().to_string(), "--listen", &listen, "--host-name", "first"].map(str::to_owned).to_vec();
    up_args.extend(sim.map(str::to_owned));
    let mut up = Proc::start("vmplane up", BIN, up_args, vec![], dir.path().join("up.log"));
    let join = data.join("join.json");
    wait_for("join.json", WAIT, async || if join.exists() { Ok(()) } else { Err(up.log_tail(5)) }).await;
    assert_eq!(mode(&join), 0o600);
    let doc: Value = serde_json::from_slice(&std::fs::read(&join).unwrap()).unwrap();
    assert_eq!(doc["version"], 1);
    assert!(doc["nats_urls"][0].as_str().unwrap().starts_with("nats://127.0.0.1:"), "{doc}");
    let roles: Vec<&str> = doc["credentials"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(roles, ["gateway", "webhooks", "worker"], "no admin credentials: {doc}");
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let admin = Client::new(&format!("http://{listen}"), Some(token.trim()));
    wait_for("up's host online", WAIT, async || if online_hosts(&admin).await.len() == 1 { Ok(()) } else { Err(up.log_tail(5)) }).await;

    // A second host, from its own data dir.
    let mut wk_args: Vec<String> =
        ["worker", "--join", &join.display().to_string(), "--data-dir", &dir.path().join("second").display().to_string(), "--host-name", "second"]
            .map(str::to_owned)
            .to_vec();
    wk_args.extend(sim.map(str::to_owned));
    let mut second = Proc::start("joined worker", BIN, wk_args, vec![], dir.path().join("second.log"));
    let hosts = wait_for("two hosts online", WAIT, async || {
        let hosts = online_hosts(&admin).await;
        if hosts.len() == 2 { Ok(hosts) } else { Err(second.log_tail(5)) }
    })
    .await;
    let second_id = hosts.iter().find(|h| h["name"] == "second").map(|h| h["id"].clone()).expect("the joined host by its name");

    // VMs spread over both hosts; the joined one runs its share.
    let mut on_second = None;
    for i in 0..4 {
        let vm = admin.create_running_vm(&format!("f{i}")).await;
        if vm["host_id"] == second_id {
            on_second = Some(vm);
        }
    }
    let on_second = on_second.unwrap_or_else(|| panic!("no VM was placed on the joined host {second_id}"));

    // A second gateway, from its own data dir, serves the same VMs.
    let listen2 = format!("127.0.0.1:{}", free_port());
    let gw_args = ["gateway", "--join", &join.display().to_string(), "--data-dir", &dir.path().join("gw2").display().to_string(), "--listen", &listen2]
        .map(str::to_owned)
        .to_vec();
    let _gw2 = Proc::start("joined gateway", BIN, gw_args, vec![("VMPLANE_ADMIN_TOKEN".into(), token.trim().into())], dir.path().join("gw2.log"));
    let admin2 = Client::new(&format!("http://{listen2}"), Some(token.trim()));
    let id = str_of(&on_second["id"]).to_owned();
    wait_for("the VM through the second gateway", WAIT, async || match admin2.try_get(&format!("/v1/vms/{id}")).await {
        Some((200, vm)) if vm["status"] == "running" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;

    // `up` restarts on the same NATS port: the joined worker comes back online by itself.
    up.terminate().await;
    up.respawn();
    wait_for("both hosts online after up restarted", WAIT, async || {
        let names: Vec<String> = online_hosts(&admin).await.iter().map(|h| h["name"].as_str().unwrap_or_default().to_owned()).collect();
        if names.len() == 2 { Ok(()) } else { Err(format!("{names:?}\n{}", second.log_tail(5))) }
    })
    .await;
    let doc_after: Value = serde_json::from_slice(&std::fs::read(&join).unwrap()).unwrap();
    assert_eq!(doc_after, doc, "join.json is unchanged across a restart");
    // The joined worker is connected again: it runs what is placed on it now.
    let mut ran_on_second = false;
    for i in 0..4 {
        let vm = admin.create_vm(json!({ "name": format!("after{i}") })).await;
        admin.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
        ran_on_second |= admin.vm(str_of(&vm["id"])).await["host_id"] == second_id;
    }
    assert!(ran_on_second, "a VM ran on the joined host after up restarted");
    second.terminate().await;
    up.terminate().await;
}

/// An admin cordons a host: new VMs go elsewhere, its status says
/// `cordoned`, and with every host cordoned a create is a 409 naming why;
/// uncordoned, it takes VMs again. Only the admin may, and only a known host.
#[tokio::test]
async fn a_cordoned_host_takes_no_new_vms() {
    let stack = Stack::start().await;
    let mut args = vec!["worker".to_owned()];
    args.extend(stack.nats.args("worker"));
    args.extend(
        [
            "--data-dir",
            &stack.root().join("second").display().to_string(),
            "--driver",
            "sim",
            "--host-name",
            "second",
            "--sim-boot-delay-ms",
            "20",
            "--sim-ready-delay-ms",
            "20",
        ]
        .map(str::to_owned),
    );
    let mut second = Proc::start("second worker", BIN, args, vec![], stack.root().join("second.log"));
    let c = &stack.admin;
    let hosts = wait_for("two hosts online", WAIT, async || {
        let hosts = online_hosts(c).await;
        if hosts.len() == 2 { Ok(hosts) } else { Err(second.log_tail(5)) }
    })
    .await;
    let second_id = str_of(&hosts.iter().find(|h| h["name"] == "second").unwrap()["id"]).to_owned();
    let first_id = str_of(&hosts.iter().find(|h| h["name"] != "second").unwrap()["id"]).to_owned();

    // Only the admin, only a known host.
    let org = c.create_org("tenant").await;
    let tenant = stack.client(&c.create_key(&org, "k").await);
    let (s, b) = tenant.post_empty(&format!("/v1/hosts/{first_id}/cordon")).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = c.post_empty(&format!("/v1/hosts/{}/cordon", vmplane_domain::HostId::new())).await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = c.post_empty("/v1/hosts/not-a-host/cordon").await;
    assert_eq!(s, 400, "{b}");

    let cordon = async |host: &str, action: &str| {
        let (s, b) = c.post_empty(&format!("/v1/hosts/{host}/{action}")).await;
        assert_eq!(s, 202, "{action}: {b}");
        c.wait_op_succeeded(str_of(&b["id"])).await;
    };
    cordon(&first_id, "cordon").await;
    let (_, hosts) = c.get("/v1/hosts").await;
    let first = hosts.as_array().unwrap().iter().find(|h| h["id"] == first_id.as_str()).unwrap().clone();
    assert_eq!((first["status"].as_str(), first["cordoned"].as_bool()), (Some("cordoned"), Some(true)), "{first}");
    // The marketplace dialect offers only host nodes one can rent on.
    let (s, nodes) = c.get("/api/v2/hostnodes").await;
    assert_eq!((s, nodes["data"]["hostnodes"].as_array().map(Vec::len)), (200, Some(1)), "{nodes}");
    for i in 0..3 {
        let vm = c.create_running_vm(&format!("c{i}")).await;
        assert_eq!(vm["host_id"], second_id.as_str(), "a new VM avoids the cordoned host");
    }

    cordon(&second_id, "cordon").await;
    let (s, b) = c.post("/v1/vms", &json!({ "name": "nowhere" })).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("host_cordoned")), "{b}");

    cordon(&first_id, "uncordon").await;
    let vm = c.create_running_vm("back").await;
    assert_eq!(vm["host_id"], first_id.as_str(), "the uncordoned host takes VMs again");
    second.terminate().await;
}

/// Three hosts of different regions, labels, GPUs and sizes (the stack's own
/// is cordoned): every filter of `placement` and of the spec is followed,
/// `spread` takes the least loaded host and `binpack` the most loaded that
/// fits (per request, or as the org's default), and a create nothing can
/// take is a 409 that names the closest host and the resource it lacks.
#[tokio::test]
async fn placement_follows_filters_and_strategies() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let small = ["--sim-cpus", "4", "--sim-memory-mib", "4096", "--sim-disk-gb", "1000"];
    let mut gold =
        sim_worker(&stack, "gold", &["--region", "eu-west", "--label", "tier=gold", "--gpu", "A100:2", "--sim-memory-mib", "8192", "--sim-disk-gb", "1000"]);
    let mut east1 = sim_worker(&stack, "east1", &[&small[..], &["--label", "tier=silver", "--label", "zone=a"]].concat());
    let mut east2 = sim_worker(&stack, "east2", &[&small[..], &["--label", "tier=silver", "--label", "zone=b"]].concat());
    let ids = hosts_by_name(c, 4, &mut [&mut gold, &mut east1, &mut east2]).await;
    let first = ids.keys().find(|n| !["gold", "east1", "east2"].contains(&n.as_str())).cloned().expect("the stack's own host");
    let (s, b) = c.post_empty(&format!("/v1/hosts/{}/cordon", ids[&first])).await;
    assert_eq!(s, 202, "{b}");
    c.wait_op_succeeded(str_of(&b["id"])).await;
    let host_of = async |body: Value| -> String {
        let vm = c.create_vm(body).await;
        c.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
        let name = ids.iter().find(|(_, id)| **id == str_of(&vm["host_id"])).map(|(n, _)| n.clone());
        name.unwrap_or_else(|| panic!("placed on an unknown host: {vm}"))
    };

    // Filters.
    assert_eq!(host_of(json!({ "name": "r", "region": "eu-west" })).await, "gold");
    assert_eq!(host_of(json!({ "name": "pr", "placement": { "region": "eu-west" } })).await, "gold");
    assert_eq!(host_of(json!({ "name": "l", "placement": { "labels": { "zone": "b" } } })).await, "east2");
    assert_eq!(host_of(json!({ "name": "g", "gpu": { "count": 2, "model": "A100" } })).await, "gold");
    assert_eq!(host_of(json!({ "name": "h", "placement": { "host_id": ids["east1"] } })).await, "east1");
    let (s, b) = c.post("/v1/vms", &json!({ "name": "g2", "gpu": { "count": 1, "model": "A100" } })).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("insufficient_gpus")), "both A100s are taken: {b}");
    let (s, b) = c.post("/v1/vms", &json!({ "name": "l2", "placement": { "labels": { "tier": "platinum" } } })).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("no_matching_host")), "{b}");
    let (s, b) = c.post("/v1/vms", &json!({ "name": "x", "region": "us-east", "placement": { "region": "eu-west" } })).await;
    assert_eq!(s, 422, "contradicting regions: {b}");
    for bad in [json!({ "strategy": "random" }), json!({ "zone": "a" }), json!({ "host_id": "nope" })] {
        let (s, b) = c.post("/v1/vms", &json!({ "name": "bad", "placement": bad })).await;
        assert!((400..500).contains(&s), "placement {bad}: {s} {b}");
    }

    // The closest host's shortfall: east1/east2 have 4 CPUs and 4 GiB.
    let (s, b) = c.post("/v1/vms", &json!({ "name": "big", "region": "us-east", "memory_mib": 6144 })).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("insufficient_capacity")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("short of memory"), "{b}");
    let (s, b) = c.post("/v1/vms", &json!({ "name": "wide", "region": "us-east", "vcpus": 8 })).await;
    assert_eq!(s, 409, "{b}");
    assert!(b["message"].as_str().unwrap().contains("short of vCPUs"), "{b}");

    // Strategies, on east1 (512 MiB used by `h`) and east2 (512 MiB by `l`).
    let mut spread = Vec::new();
    for i in 0..4 {
        spread.push(host_of(json!({ "name": format!("s{i}"), "region": "us-east", "memory_mib": 512 })).await);
    }
    spread.sort();
    assert_eq!(spread, ["east1", "east1", "east2", "east2"], "spread alternates between equally loaded hosts");
    // 1.5 GiB used on each: binpack fills one host until it is full.
    let packed = host_of(json!({ "name": "b0", "region": "us-east", "memory_mib": 1024, "placement": { "strategy": "binpack" } })).await;
    let again = host_of(json!({ "name": "b1", "region": "us-east", "memory_mib": 1024, "placement": { "strategy": "binpack" } })).await;
    assert_eq!(packed, again, "binpack goes back to the fuller host");
    // That host has 512 MiB left: 1 GiB more goes to the other one even under binpack.
    let other = host_of(json!({ "name": "b2", "region": "us-east", "memory_mib": 1024, "placement": { "strategy": "binpack" } })).await;
    assert_ne!(other, packed);
    // An org whose default is binpack: its VMs go to the fuller host (the one `other` went to
    // now has 2.5 GiB used against 3.5 GiB full on `packed`, which has no room for 1 GiB).
    let (s, b) = c.post("/v1/orgs", &json!({ "name": "packer", "placement_strategy": "binpack" })).await;
    assert_eq!((s, b["placement_strategy"].as_str()), (201, Some("binpack")), "{b}");
    let packer = stack.client(&c.create_key(str_of(&b["id"]), "k").await);
    let mut placed = Vec::new();
    for i in 0..2 {
        let vm = packer.create_vm(json!({ "name": format!("o{i}"), "region": "us-east", "memory_mib": 256 })).await;
        packer.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
        placed.push(str_of(&vm["host_id"]).to_owned());
    }
    assert_eq!(placed, [ids[&packed].clone(), ids[&packed].clone()], "the org's binpack fills the fuller host's last 512 MiB");
    let (_, orgs) = c.get("/v1/orgs").await;
    assert!(orgs.as_array().unwrap().iter().any(|o| o["name"] == "packer" && o["placement_strategy"] == "binpack"), "{orgs}");
    // An org's strategy changes (admin only, a known org, a known strategy); the default org's too.
    let packer_id = str_of(&orgs.as_array().unwrap().iter().find(|o| o["name"] == "packer").unwrap()["id"]).to_owned();
    let (s, b) = packer.patch(&format!("/v1/orgs/{packer_id}"), &json!({ "placement_strategy": "spread" })).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = c.patch(&format!("/v1/orgs/{}", vmplane_domain::OrgId::new()), &json!({ "placement_strategy": "spread" })).await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = c.patch(&format!("/v1/orgs/{packer_id}"), &json!({ "placement_strategy": "random" })).await;
    assert!((400..500).contains(&s), "{b}");
    let (s, b) = c.patch(&format!("/v1/orgs/{}", vmplane_domain::OrgId::DEFAULT), &json!({ "placement_strategy": "binpack" })).await;
    assert_eq!((s, b["placement_strategy"].as_str()), (200, Some("binpack")), "{b}");
    let (_, orgs) = c.get("/v1/orgs").await;
    let defaults: Vec<&Value> = orgs.as_array().unwrap().iter().filter(|o| o["name"] == "default").collect();
    assert_eq!((defaults.len(), defaults[0]["placement_strategy"].as_str()), (1, Some("binpack")), "{orgs}");

    // Volumes follow placement too.
    let (s, vol) = c.post("/v1/volumes", &json!({ "name": "data", "size_gb": 1, "placement": { "labels": { "zone": "b" } } })).await;
    assert_eq!(s, 202, "{vol}");
    assert_eq!(vol["host_id"], ids["east2"].as_str(), "{vol}");
    let (s, vol) = c.post("/v1/volumes", &json!({ "name": "nowhere", "size_gb": 1, "placement": { "labels": { "zone": "c" } } })).await;
    assert_eq!((s, vol["code"].as_str()), (409, Some("no_matching_host")), "{vol}");
    for w in [gold, east1, east2] {
        let mut w = w;
        w.terminate().await;
    }
}

/// A worker keeps `--reserve-cpus` and `--reserve-memory-mib` for its host:
/// `GET /v1/hosts` shows the measured capacity (sim: `--sim-cpus`,
/// `--sim-memory-mib`) less the reserve, which is what placement fills. A
/// reserve that leaves nothing stops the worker at start, saying so.
#[tokio::test]
async fn a_worker_announces_its_capacity_less_its_reserve() {
    let stack = Stack::start().await;
    let worker = |name: &str, extra: &[&str]| {
        let mut args = vec!["worker".to_owned()];
        args.extend(stack.nats.args("worker"));
        args.extend(["--data-dir", &stack.root().join(name).display().to_string(), "--driver", "sim", "--host-name", name].map(str::to_owned));
        args.extend(["--sim-cpus", "16", "--sim-memory-mib", "32768"].map(str::to_owned));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };

    let refused = std::process::Command::new(BIN).args(worker("nothing-left", &["--reserve-cpus", "16"])).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("--reserve-cpus 16 leaves no vCPUs for VMs: this host has 16"), "{stderr}");
    let refused = std::process::Command::new(BIN).args(worker("nothing-left", &["--reserve-memory-mib", "40000"])).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--reserve-memory-mib 40000 leaves no memory for VMs: this host has 32768 MiB"), "{stderr}");

    let mut reserved =
        Proc::start("reserved worker", BIN, worker("reserved", &["--reserve-cpus", "4", "--reserve-memory-mib", "8192"]), vec![], stack.root().join("r.log"));
    let c = &stack.admin;
    let host = wait_for("the reserved host online", WAIT, async || match online_hosts(c).await.into_iter().find(|h| h["name"] == "reserved") {
        Some(h) => Ok(h),
        None => Err(reserved.log_tail(5)),
    })
    .await;
    assert_eq!((host["cpus"].as_u64(), host["memory_mib"].as_u64()), (Some(12), Some(24576)), "{host}");
    assert_eq!((host["available"]["vcpus"].as_u64(), host["available"]["memory_mib"].as_u64()), (Some(12), Some(24576)), "{host}");
    reserved.terminate().await;
}

/// A sim guest's file in a worker's data dir: what the "hypervisor" holds.
fn sim_guest(data_dir: &Path, vm: &str) -> Value {
    serde_json::from_slice(&std::fs::read(data_dir.join("worker/sim").join(format!("{vm}.json"))).unwrap()).unwrap()
}

fn set_sim_running(data_dir: &Path, vm: &str, running: bool) {
    let mut g = sim_guest(data_dir, vm);
    g["running"] = json!(running);
    std::fs::write(data_dir.join("worker/sim").join(format!("{vm}.json")), serde_json::to_vec(&g).unwrap()).unwrap();
}

/// kill -9 of a worker holding 20 running VMs: its host goes offline, its
/// VMs say so and keep their last status, a create avoids it (and one that
/// names it is a 409), a stop waits for it, and a command that waits past
/// `--host-unavailable-after` is failed by the other worker. Back, the host
/// reconciles: the stop completes, the overdue command never runs, a guest
/// gone while it was away is recorded stopped, a guest running against its
/// record is powered off, and no guest was booted twice.
#[tokio::test]
async fn a_lost_host_goes_offline_and_reconciles_when_it_returns() {
    let fast = [("VMPLANE_HOST_OFFLINE_AFTER".to_owned(), "3s".to_owned())];
    let mut stack = Stack::start_with(StackOpts { gateway_env: fast.to_vec(), ..StackOpts::default() }).await;
    let lease = ["--host-offline-after", "3s", "--host-unavailable-after", "8s"];
    stack.respawn_worker_with(&lease);
    let mut victim = sim_worker(&stack, "victim", &lease);
    let c = stack.admin.clone();
    let ids = hosts_by_name(&c, 2, &mut [&mut victim]).await;
    let (victim_id, other_id) = (ids["victim"].clone(), ids.iter().find(|(n, _)| *n != "victim").unwrap().1.clone());
    let victim_dir = stack.root().join("victim");

    let mut vms = Vec::new();
    for i in 0..20 {
        let b = c.create_vm(json!({ "name": format!("v{i}"), "placement": { "host_id": victim_id } })).await;
        vms.push(str_of(&b["id"]).to_owned());
    }
    for id in &vms {
        c.wait_vm_status(id, "running").await;
    }
    let zombie = vms[19].clone();
    c.wait_op_succeeded(str_of(&c.act(&zombie, "stop").await["operation"]["id"])).await;

    victim.kill9();
    wait_for("the victim offline", WAIT, async || {
        let (_, hosts) = c.get("/v1/hosts").await;
        let h = hosts.as_array().unwrap().iter().find(|h| h["id"] == victim_id.as_str()).cloned().unwrap();
        if h["status"] == "offline" { Ok(()) } else { Err(h["status"].to_string()) }
    })
    .await;
    let vm = c.vm(&vms[0]).await;
    assert_eq!((vm["host_status"].as_str(), vm["status"].as_str()), (Some("offline"), Some("running")), "{vm}");
    let placed = c.create_running_vm("elsewhere").await;
    assert_eq!(placed["host_id"], other_id.as_str(), "a create avoids the offline host");
    let (s, b) = c.post("/v1/vms", &json!({ "name": "there", "placement": { "host_id": victim_id } })).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("host_offline")), "{b}");

    // A restart waits past --host-unavailable-after, and the other worker fails it.
    let restart = str_of(&c.act(&vms[1], "restart").await["operation"]["id"]).to_owned();
    let failed = c.wait_op(&restart).await;
    assert_eq!((failed["status"].as_str(), failed["error"]["code"].as_str()), (Some("failed"), Some("host_unavailable")), "{failed}");
    assert_eq!(c.vm(&vms[1]).await["status"], "running", "a failed queued command leaves the VM as it was");
    // A stop waits for the host.
    let stop = str_of(&c.act(&vms[0], "stop").await["operation"]["id"]).to_owned();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, op) = c.get(&format!("/v1/operations/{stop}")).await;
    assert_eq!(op["status"], "pending", "{op}");

    // While it was away, one guest died and a stopped one came back to life.
    let gone = vms[2].clone();
    set_sim_running(&victim_dir, &gone, false);
    set_sim_running(&victim_dir, &zombie, true);
    victim.respawn();
    c.wait_op_succeeded(&stop).await;
    assert_eq!(c.vm(&vms[0]).await["status"], "stopped");
    wait_for("the victim online", WAIT, async || match c.vm(&vms[3]).await["host_status"].as_str() {
        Some("online") => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let vm = c.wait_vm_status(&gone, "stopped").await;
    assert!(vm["message"].as_str().unwrap_or_default().contains("not running when"), "{vm}");
    wait_for(
        "the zombie powered off",
        WAIT,
        async || {
            if sim_guest(&victim_dir, &zombie)["running"] == false { Ok(()) } else { Err("still running".to_owned()) }
        },
    )
    .await;
    assert_eq!(c.vm(&zombie).await["status"], "stopped");
    // The overdue restart never ran; nothing booted twice.
    let (_, events) = c.get(&format!("/v1/vms/{}/events", vms[1])).await;
    let types: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(!types.iter().any(|t| t.contains("restart") || t.contains("reboot")), "{types:?}");
    for id in &vms {
        let g = sim_guest(&victim_dir, id);
        assert_eq!(g["boots"], 1, "{id} booted once: {g}");
    }
    for id in vms.iter().skip(3).take(16) {
        assert_eq!(c.vm(id).await["status"], "running", "{id}");
    }
    victim.terminate().await;
}

/// Poll an operation until it ends, restarting any of `workers` that crashed meanwhile.
async fn wait_op_restarting(c: &Client, op: &str, workers: &mut [&mut Proc]) -> (Value, usize) {
    let mut crashes = 0;
    let done = wait_for(&format!("operation {op}"), WAIT, async || {
        for w in workers.iter_mut() {
            if let Some(status) = w.exited() {
                assert!(!status.success(), "a worker exits only by crashing here: {status}");
                crashes += 1;
                w.respawn();
            }
        }
        let (s, o) = c.get(&format!("/v1/operations/{op}")).await;
        match o["status"].as_str() {
            Some("succeeded" | "failed") => Ok(o),
            _ => Err(format!("{s} {o}")),
        }
    })
    .await;
    (done, crashes)
}

/// `POST /v1/vms/{id}/move` (admin, VM stopped): the VM and its root disk go
/// to the other host through the command/step/event machinery (the disk in
/// the moves object store between them), its resources with it; it starts
/// there with new host ports. A crash of the worker it leaves (while
/// exporting) or of the one it moves to (while importing) is resumed after
/// a restart. Refusals change nothing.
#[tokio::test]
async fn a_stopped_vm_moves_to_another_host_and_survives_either_worker_crashing() {
    let stack = Stack::start().await;
    let c = stack.admin.clone();
    // A crashed worker's commands come back after the ack wait: keep it short.
    let mut a = sim_worker(&stack, "a", &["--ack-wait-secs", "3"]);
    let mut b = sim_worker(&stack, "b", &["--ack-wait-secs", "3"]);
    let ids = hosts_by_name(&c, 3, &mut [&mut a, &mut b]).await;
    let (dir_a, dir_b) = (stack.root().join("a"), stack.root().join("b"));

    for (name, crash) in [("plain", None), ("crash-leaving", Some("export_disk")), ("crash-arriving", Some("import_disk"))] {
        let labels = crash.map_or(json!({}), |step| json!({ "sim.crash-once": step }));
        let vm = c.create_vm(json!({ "name": name, "labels": labels, "placement": { "host_id": ids["a"] } })).await;
        let id = str_of(&vm["id"]).to_owned();
        c.wait_vm_status(&id, "running").await;

        // Refusals: running, unknown host, bad body.
        let (s, e) = c.post(&format!("/v1/vms/{id}/move"), &json!({ "host_id": ids["b"] })).await;
        assert_eq!((s, e["code"].as_str()), (409, Some("invalid_state")), "a running VM: {e}");
        c.wait_op_succeeded(str_of(&c.act(&id, "stop").await["operation"]["id"])).await;
        let (s, e) = c.post(&format!("/v1/vms/{id}/move"), &json!({ "host_id": vmplane_domain::HostId::new() })).await;
        assert_eq!(s, 404, "{e}");
        let (s, e) = c.post(&format!("/v1/vms/{id}/move"), &json!({ "host": ids["b"] })).await;
        assert!((400..500).contains(&s), "{e}");
        assert_eq!(c.vm(&id).await["host_id"], ids["a"].as_str(), "refusals changed nothing");

        let moved = c.post(&format!("/v1/vms/{id}/move"), &json!({ "host_id": ids["b"] })).await;
        assert_eq!(moved.0, 202, "{}", moved.1);
        let (done, crashes) = wait_op_restarting(&c, str_of(&moved.1["operation"]["id"]), &mut [&mut a, &mut b]).await;
        assert_eq!(done["status"], "succeeded", "{name}: {done}");
        assert_eq!(crashes, usize::from(crash.is_some()), "{name}: the injected crash happened once");
        let vm = c.vm(&id).await;
        assert_eq!((vm["host_id"].as_str(), vm["status"].as_str()), (Some(ids["b"].as_str()), Some("stopped")), "{vm}");
        assert!(!dir_a.join("worker/sim").join(format!("{id}.json")).exists(), "{name}: the host it left freed its copy");
        assert_eq!(sim_guest(&dir_b, &id)["boots"], 1, "{name}: the disk's history came along");
        let types = c.event_types(&id).await;
        for t in ["move_requested", "disk_exported", "moved", "disk_imported"] {
            assert_eq!(types.iter().filter(|x| *x == t).count(), 1, "{name}: one {t}: {types:?}");
        }
        c.wait_op_succeeded(str_of(&c.act(&id, "start").await["operation"]["id"])).await;
        let vm = c.vm(&id).await;
        assert_eq!((vm["status"].as_str(), vm["host_id"].as_str()), (Some("running"), Some(ids["b"].as_str())), "{vm}");
        let types = c.event_types(&id).await;
        assert_eq!(types.iter().filter(|t| *t == "network_allocated").count(), 2, "{name}: addresses and host ports anew on its new host: {types:?}");
        assert_eq!(sim_guest(&dir_b, &id)["boots"], 2, "{name}: booted once more, on its new host");
    }
    // The resources moved with the VMs.
    let (_, hosts) = c.get("/v1/hosts").await;
    let used = |name: &str| hosts.as_array().unwrap().iter().find(|h| h["id"] == ids[name].as_str()).unwrap()["used"]["memory_mib"].as_u64();
    assert_eq!((used("a"), used("b")), (Some(0), Some(3 * 512)), "{hosts}");
    // Only the admin moves VMs.
    let org = c.create_org("mover").await;
    let tenant = stack.client(&c.create_key(&org, "k").await);
    let vm = tenant.create_vm(json!({ "name": "mine" })).await;
    let (s, e) = tenant.post(&format!("/v1/vms/{}/move", str_of(&vm["id"])), &json!({ "host_id": ids["b"] })).await;
    assert_eq!(s, 403, "{e}");
    a.terminate().await;
    b.terminate().await;
}
