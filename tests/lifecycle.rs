//! VM lifecycle through the real gateway, worker (sim driver) and NATS:
//! creation contract, read-your-writes, every transition, idempotent no-op
//! transitions, refused transitions, and the VM's event history.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_returns_the_vm_flattened_with_its_operation_and_defaults() {
    let stack = Stack::start().await;
    let c = &stack.admin;

    let (s, b) = c.post("/v1/vms", &json!({ "name": "web-1" })).await;
    assert_eq!(s, 202, "{b}");
    // Read-your-writes: the VM is readable right after the 202, before anything else.
    let id = str_of(&b["id"]).to_owned();
    let (s_get, got) = c.get(&format!("/v1/vms/{id}")).await;
    assert_eq!(s_get, 200, "GET right after the 202: {got}");
    assert_eq!(got["id"], b["id"]);
    assert_eq!(got["name"], "web-1");

    assert!(id.starts_with("vm_") && id.len() == 29, "{id}");
    assert_eq!(b["status"], "pending", "{b}");
    assert_eq!(b["name"], "web-1");
    assert_eq!(b["image"], "debian-minimal");
    assert_eq!(b["vcpus"], 1);
    assert_eq!(b["memory_mib"], 512);
    assert_eq!(b["disk_gb"], 10);
    assert_eq!(b["org_id"], "org_00000000000000000000000000");
    assert_eq!(b["project_id"], "prj_00000000000000000000000000");
    assert_eq!(b["has_snapshot"], false);
    assert!(str_of(&b["host_id"]).starts_with("host_"), "{b}");
    assert!(b["created_at"].is_string() && b["updated_at"].is_string(), "{b}");
    let op = &b["operation"];
    assert!(str_of(&op["id"]).starts_with("op_"), "{op}");
    assert!(["pending", "running", "succeeded"].contains(&str_of(&op["status"])), "{op}");
    assert_eq!(op["kind"], "create");
    assert_eq!(op["target_id"], b["id"]);
    assert_eq!(op["org_id"], b["org_id"]);
    assert!(op["error"].is_null());

    let done = c.wait_op_succeeded(str_of(&op["id"])).await;
    assert_eq!(done["kind"], "create");
    let vm = c.vm(&id).await;
    assert_eq!(vm["status"], "running", "{vm}");
    assert!(vm["ip"].is_string() && vm["mac"].is_string() && vm["ssh_port"].is_u64(), "network not reported: {vm}");
    assert!(vm["root_disk"]["location"].is_string(), "{vm}");
    assert!(vm["started_at"].is_string(), "{vm}");
    assert!(vm.get("operation").is_none(), "GET shows the VM only: {vm}");

    // Explicit values are kept, not replaced by the defaults.
    let b = c
        .create_vm(json!({
            "name": "db", "image": "debian-minimal", "vcpus": 2, "memory_mib": 1024, "disk_gb": 20,
            "labels": {"tier": "db"}, "port_forwards": [{"guest_port": 5432}]
        }))
        .await;
    assert_eq!(
        (b["image"].as_str(), b["vcpus"].as_u64(), b["memory_mib"].as_u64(), b["disk_gb"].as_u64()),
        (Some("debian-minimal"), Some(2), Some(1024), Some(20))
    );
    assert_eq!(b["labels"], json!({"tier": "db"}));
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    let vm = c.vm(str_of(&b["id"])).await;
    assert!(vm["port_forwards"][0]["host_port"].is_u64(), "forward got a host port: {vm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_with_no_ops_and_refusals() {
    let stack = Stack::start().await;
    let c = &stack.admin;

    let vm = c.create_running_vm("life").await;
    let id = str_of(&vm["id"]).to_owned();
    assert_eq!(stack.sim_guest(&id).expect("sim guest exists")["boots"], 1);

    let stopped = c.act_and_wait(&id, "stop", "stopped").await;
    assert!(stopped["stopped_at"].is_string(), "{stopped}");

    // Stopping a stopped VM: accepted, succeeds, changes nothing.
    let before = c.vm_events(&id).await.len();
    let b = c.act(&id, "stop").await;
    assert_eq!(b["status"], "stopped", "{b}");
    assert_eq!(b["operation"]["kind"], "stop");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    assert_eq!(c.vm(&id).await["status"], "stopped");
    assert_eq!(c.event_types(&id).await[before..], ["operation_finished"], "a no-op stop only finishes its operation");

    // Restarting a stopped VM is refused up front, and nothing is appended.
    let (s, b) = c.post_empty(&format!("/v1/vms/{id}/restart")).await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["code"], "invalid_state", "{b}");
    assert!(b["message"].is_string(), "{b}");
    assert_eq!(c.vm_events(&id).await.len(), before + 1);
    // So are standby and restore in this state.
    for action in ["standby", "restore"] {
        let (s, b) = c.post_empty(&format!("/v1/vms/{id}/{action}")).await;
        assert_eq!((s, b["code"].as_str()), (409, Some("invalid_state")), "{action}: {b}");
    }

    c.act_and_wait(&id, "start", "running").await;
    assert_eq!(stack.sim_guest(&id).unwrap()["boots"], 2, "start boots the guest again");

    // Starting a running VM: accepted, succeeds, changes nothing.
    let before = c.vm_events(&id).await.len();
    let b = c.act(&id, "start").await;
    assert_eq!(b["status"], "running", "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    assert_eq!(c.vm(&id).await["status"], "running");
    assert_eq!(c.event_types(&id).await[before..], ["operation_finished"]);

    c.act_and_wait(&id, "restart", "running").await;
    let guest = stack.sim_guest(&id).unwrap();
    assert_eq!((guest["boots"].as_u64(), guest["reboots"].as_u64()), (Some(2), Some(1)), "{guest}");

    let standby = c.act_and_wait(&id, "standby", "standby").await;
    assert_eq!(standby["has_snapshot"], true, "{standby}");
    // A VM in standby is restored, not started.
    let (s, b) = c.post_empty(&format!("/v1/vms/{id}/start")).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("invalid_state")), "{b}");

    let restored = c.act_and_wait(&id, "restore", "running").await;
    assert_eq!(restored["has_snapshot"], false, "{restored}");
    assert_eq!(stack.sim_guest(&id).unwrap()["boots"], 2, "restore resumes, it does not boot");

    let b = c.act(&id, "delete").await;
    assert_eq!(b["status"], "deleting", "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    let gone = c.wait_vm_status(&id, "deleted").await;
    assert!(gone["ip"].is_null() && gone["root_disk"].is_null(), "resources released: {gone}");
    assert!(stack.sim_guest(&id).is_none(), "the sim guest was destroyed");
    assert_eq!(c.vm_total("").await, 0, "deleted VMs are not listed");
    // A deleted VM accepts no more actions; deleting again changes nothing.
    let (s, b) = c.post_empty(&format!("/v1/vms/{id}/start")).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let again = c.act(&id, "delete").await;
    c.wait_op_succeeded(str_of(&again["operation"]["id"])).await;

    let events = c.vm_events(&id).await;
    let types: Vec<&str> = events.iter().map(|e| str_of(&e["type"])).collect();
    #[rustfmt::skip]
    let expected = [
        "created", "provisioning_started", "network_allocated", "disk_prepared", "booted", "ready", "operation_finished",
        "stop_requested", "stopped", "operation_finished",
        "operation_finished", // no-op stop
        "start_requested", "booted", "ready", "operation_finished",
        "operation_finished", // no-op start
        "restart_requested", "rebooted", "ready", "operation_finished",
        "standby_requested", "snapshotted", "operation_finished",
        "restore_requested", "restored", "operation_finished",
        "delete_requested", "deleted", "operation_finished",
        "operation_finished", // second delete
    ];
    assert_eq!(types, expected);
    let mut last_seq = 0;
    for e in &events {
        let seq = e["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "history is in stream order: {e}");
        last_seq = seq;
        assert_eq!(e["aggregate_id"], id.as_str());
        assert_eq!(e["org_id"], "org_00000000000000000000000000");
        assert!(str_of(&e["id"]).starts_with("evt_"), "{e}");
        assert!(str_of(&e["operation_id"]).starts_with("op_"), "every VM event here has an operation: {e}");
        assert_eq!(e["event"]["aggregate_type"], "vm");
        assert_eq!(e["event"]["data"]["type"], e["type"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_vm_and_its_operation() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let b = c.create_vm(json!({ "name": "doomed", "labels": { "sim.fail": "boot" } })).await;
    let op = c.wait_op(str_of(&b["operation"]["id"])).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(op["error"]["code"], "failed", "{op}");
    assert!(str_of(&op["error"]["message"]).contains("injected failure"), "{op}");
    let vm = c.vm(str_of(&b["id"])).await;
    assert_eq!(vm["status"], "failed", "{vm}");
    assert!(str_of(&vm["message"]).contains("boot"), "{vm}");
    // A failed VM can still be deleted.
    c.act_and_wait(str_of(&b["id"]), "delete", "deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_taken_of_running_vms_and_clones_resume_them_on_their_host() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let vm = c.create_running_vm("src").await;
    let id = str_of(&vm["id"]).to_owned();

    for bad in [json!({"name": "Not A Label"}), json!({}), json!({"name": "x", "extra": 1})] {
        let (s, b) = c.post(&format!("/v1/vms/{id}/snapshots"), &bad).await;
        assert!((400..500).contains(&s) && b["code"].is_string(), "{bad}: {s} {b}");
    }
    let (s, b) = c.post(&format!("/v1/vms/{id}/snapshots"), &json!({"name": "base"})).await;
    assert_eq!((s, b["operation"]["kind"].as_str()), (202, Some("snapshot")), "{b}");
    assert!(["creating", "ready"].contains(&str_of(&b["status"])), "the sim driver may be done already: {b}");
    let snap = str_of(&b["id"]).to_owned();
    // Read-your-writes, as for a VM.
    assert_eq!(c.get(&format!("/v1/snapshots/{snap}")).await.0, 200);
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    let (_, got) = c.get(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!(
        (got["status"].as_str(), got["name"].as_str(), got["source_vm_id"].as_str(), got["memory_mib"].as_u64(), got["host_id"].as_str()),
        (Some("ready"), Some("base"), Some(id.as_str()), Some(512), vm["host_id"].as_str()),
        "{got}"
    );
    assert_eq!(got["size_bytes"], 512u64 << 20, "{got}");
    assert_eq!(c.vm(&id).await["status"], "running", "the source keeps running");
    let (_, list) = c.get(&format!("/v1/snapshots?vm_id={id}")).await;
    assert_eq!((list["pagination"]["total_items"].as_u64(), list["data"][0]["id"].as_str()), (Some(1), Some(snap.as_str())), "{list}");
    assert_eq!(c.get("/v1/snapshots?vm_id=nope").await.0, 400);

    // What a clone may not be: another machine, or one with disks or GPUs of its own.
    for (body, status) in [
        (json!({"name": "c", "from_snapshot": snap, "vcpus": 4}), 422),
        (json!({"name": "c", "from_snapshot": snap, "user_data": "#!/bin/sh\n"}), 422),
        (json!({"name": "c", "from_snapshot": snap, "data_disks": [{"name": "d", "size_gb": 1}]}), 422),
        (json!({"name": "c", "from_snapshot": snap, "hotplug_memory_mib": 512}), 422),
        (json!({"name": "c", "from_snapshot": "snap_01jz3k0000000000000000000a"}), 404),
        (json!({"name": "c", "from_snapshot": "vm_01jz3k0000000000000000000a"}), 422),
    ] {
        let (s, b) = c.post("/v1/vms", &body).await;
        assert_eq!(s, status, "{body}: {b}");
        assert!(b["code"].is_string(), "{b}");
    }
    // Another org sees neither the snapshot nor can it clone it.
    let other = stack.client(&c.create_key(&c.create_org("other").await, "k").await);
    assert_eq!(other.get(&format!("/v1/snapshots/{snap}")).await.0, 404);
    assert_eq!(other.get("/v1/snapshots").await.1["pagination"]["total_items"], 0);
    assert_eq!(other.post("/v1/vms", &json!({"name": "c", "from_snapshot": snap})).await.0, 404);

    let (s, clone) = c.post("/v1/vms", &json!({"name": "clone", "from_snapshot": snap, "memory_mib": 512, "labels": {"k": "v"}})).await;
    assert_eq!(s, 202, "{clone}");
    c.wait_op_succeeded(str_of(&clone["operation"]["id"])).await;
    let clone_id = str_of(&clone["id"]);
    let running = c.vm(clone_id).await;
    assert_eq!(
        (running["status"].as_str(), running["from_snapshot"].as_str(), running["host_id"].as_str()),
        (Some("running"), Some(snap.as_str()), vm["host_id"].as_str())
    );
    assert_eq!(stack.sim_guest(clone_id).expect("sim guest")["resumed_from"], snap.as_str(), "the clone resumed instead of booting");

    // Neither a stopped VM nor a VM with volumes can be snapshotted.
    c.act_and_wait(&id, "stop", "stopped").await;
    let (s, b) = c.post(&format!("/v1/vms/{id}/snapshots"), &json!({"name": "again"})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("invalid_state")), "{b}");
    // The snapshot outlives its VM.
    c.act_and_wait(&id, "delete", "deleted").await;
    assert_eq!(c.get(&format!("/v1/snapshots/{snap}")).await.1["status"], "ready");

    // Deleting it waits for its clones to go or be flattened; then its files go.
    let (s, b) = c.delete(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("snapshot_in_use")), "{b}");
    assert!(str_of(&b["message"]).contains(clone_id), "{b}");
    assert_eq!(other.delete(&format!("/v1/snapshots/{snap}")).await.0, 404);
    assert_eq!(other.post(&format!("/v1/vms/{clone_id}/flatten"), &json!({})).await.0, 404, "another org's clone");
    assert_eq!(c.post(&format!("/v1/vms/{id}/flatten"), &json!({})).await.0, 404, "a deleted VM");
    assert_eq!(running["flattened"], false, "{running}");
    let (s, b) = c.post(&format!("/v1/vms/{clone_id}/flatten"), &json!({})).await;
    assert_eq!((s, b["operation"]["kind"].as_str()), (202, Some("flatten")), "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    let flat = c.vm(clone_id).await;
    assert_eq!((flat["status"].as_str(), flat["flattened"].as_bool()), (Some("running"), Some(true)), "{flat}");
    assert_eq!(stack.sim_guest(clone_id).expect("sim guest")["flattened"], true, "the driver flattened its disk");
    let (s, b) = c.post(&format!("/v1/vms/{clone_id}/flatten"), &json!({})).await;
    assert_eq!(s, 202, "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    // A clone deleted keeping its disk as a volume: that disk is flattened first.
    let (s, keeper) = c.post("/v1/vms", &json!({"name": "keeper", "from_snapshot": snap, "delete_root_disk": false})).await;
    assert_eq!(s, 202, "{keeper}");
    c.wait_op_succeeded(str_of(&keeper["operation"]["id"])).await;
    let keeper_id = str_of(&keeper["id"]);
    c.act_and_wait(keeper_id, "delete", "deleted").await;
    let types = c.event_types(keeper_id).await;
    let at = |t: &str| types.iter().position(|x| x == t).unwrap_or_else(|| panic!("no {t}: {types:?}"));
    assert!(at("disk_flattened") < at("root_disk_kept"), "{types:?}");
    let file = stack.data_dir().join("worker").join("sim").join(format!("{snap}.snapshot"));
    assert!(file.exists(), "{}", file.display());
    let (s, b) = c.delete(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!((s, b["status"].as_str(), b["operation"]["kind"].as_str()), (202, Some("deleting"), Some("delete_snapshot")), "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    assert_eq!(c.get(&format!("/v1/snapshots/{snap}")).await.0, 404);
    assert_eq!(c.get("/v1/snapshots").await.1["pagination"]["total_items"], 0);
    assert!(!file.exists(), "the snapshot's files were not freed");
    let (s, b) = c.post("/v1/vms", &json!({"name": "late", "from_snapshot": snap})).await;
    assert_eq!(s, 404, "{b}");
    // The flattened clone lives on without it.
    assert_eq!(c.vm(clone_id).await["status"], "running");
    c.act_and_wait(clone_id, "delete", "deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_snapshots_a_vm_and_creates_its_clones_in_one_request() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let vm = c.create_running_vm("src").await;
    let id = str_of(&vm["id"]).to_owned();
    for (bad, status) in [(json!({"name": "f", "count": 0}), 422), (json!({"name": "f", "count": 17}), 422), (json!({"name": "x".repeat(62), "count": 2}), 422)]
    {
        let (s, b) = c.post(&format!("/v1/vms/{id}/fork"), &bad).await;
        assert_eq!(s, status, "{bad}: {b}");
    }
    assert_eq!(c.get("/v1/snapshots").await.1["pagination"]["total_items"], 0, "refusals made nothing");

    let body = json!({"name": "f", "count": 3});
    let (s, b) = c.with_header("Idempotency-Key", "fork-1").post(&format!("/v1/vms/{id}/fork"), &body).await;
    assert_eq!(s, 202, "{b}");
    let snap = str_of(&b["snapshot"]["id"]).to_owned();
    let names: Vec<&str> = b["vms"].as_array().unwrap().iter().map(|v| str_of(&v["name"])).collect();
    assert_eq!(names, ["f-1", "f-2", "f-3"], "{b}");
    // A retry with the same key answers the same fork and makes nothing more.
    let (s, again) = c.with_header("Idempotency-Key", "fork-1").post(&format!("/v1/vms/{id}/fork"), &body).await;
    assert_eq!((s, &again["snapshot"]["id"], &again["vms"][2]["id"]), (202, &b["snapshot"]["id"], &b["vms"][2]["id"]), "{again}");
    // The fork is one operation: once it succeeded, every clone runs.
    assert_eq!(b["operation"]["kind"], "fork", "{b}");
    let fork = c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    assert_eq!(fork["kind"], "fork", "{fork}");
    for clone in b["vms"].as_array().unwrap() {
        let (_, op) = c.get(&format!("/v1/operations/{}", str_of(&clone["operation"]["id"]))).await;
        assert_eq!(op["status"], "succeeded", "the fork ended before its clone {clone}: {op}");
        let id = str_of(&clone["id"]);
        let running = c.vm(id).await;
        assert_eq!((running["status"].as_str(), running["from_snapshot"].as_str()), (Some("running"), Some(snap.as_str())), "{running}");
        assert_eq!(stack.sim_guest(id).expect("sim guest")["resumed_from"], snap.as_str());
    }
    assert_eq!(c.get("/v1/snapshots").await.1["pagination"]["total_items"], 1);
    assert_eq!(c.vm_total("?name=f-2").await, 1);
    assert_eq!(c.vm(&id).await["status"], "running", "the source runs on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_refused_part_way_cancels_its_remaining_clones_and_fails_its_operation() {
    let mut stack = Stack::start().await;
    stack.restart_worker_with(&["--sim-memory-mib", "2048"]).await;
    stack.wait_host("the host to announce 2048 MiB", |h| h["memory_mib"] == 2048).await;
    let c = &stack.admin;
    let vm = c.create_vm(json!({"name": "src", "memory_mib": 512})).await;
    let id = str_of(&vm["id"]).to_owned();
    c.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;

    // The snapshot is accepted, then three clones of 512 MiB fill the host and the fourth is refused.
    let body = json!({"name": "f", "count": 4});
    let (s, b) = c.with_header("Idempotency-Key", "fork-full").post(&format!("/v1/vms/{id}/fork"), &body).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("insufficient_capacity")), "{b}");
    let message = str_of(&b["message"]);
    let fork_op = message.split("the fork's operation ").nth(1).and_then(|m| m.split_whitespace().next()).expect("the message names the fork's operation");
    assert!(message.contains("3 of its 4 clone(s) created"), "{b}");

    // Nothing waits for the refused clone: the fork's operation fails on it.
    let fork = c.wait_op(fork_op).await;
    assert_eq!(
        (fork["kind"].as_str(), fork["status"].as_str(), fork["error"]["code"].as_str()),
        (Some("fork"), Some("failed"), Some("create_refused")),
        "{fork}"
    );
    assert!(str_of(&fork["error"]["message"]).contains("short of memory"), "the refusal is the reason: {fork}");
    let clone_op =
        str_of(&fork["error"]["message"]).split("(operation ").nth(1).and_then(|m| m.split(')').next()).expect("names the clone's operation").to_owned();
    let cancelled = c.wait_op(&clone_op).await;
    assert_eq!((cancelled["kind"].as_str(), cancelled["status"].as_str()), (Some("create"), Some("failed")), "{cancelled}");
    for name in ["f-1", "f-2", "f-3"] {
        let (_, list) = c.get(&format!("/v1/vms?name={name}")).await;
        let clone = str_of(&list["data"][0]["id"]).to_owned();
        c.wait_vm_status(&clone, "running").await;
    }
    assert_eq!(c.vm_total("?name=f-4").await, 0, "the cancelled clone was never created");

    // A retry with the same key fails the same way and creates nothing more.
    let (s, again) = c.with_header("Idempotency-Key", "fork-full").post(&format!("/v1/vms/{id}/fork"), &body).await;
    assert_eq!((s, again["code"].as_str()), (409, Some("fork_failed")), "{again}");
    assert_eq!(c.vm_total("?name=f-4").await, 0);
    assert_eq!(c.get("/v1/snapshots").await.1["pagination"]["total_items"], 1, "one snapshot, taken once");
    let cancelled_again = c.get(&format!("/v1/operations/{clone_op}")).await.1;
    assert_eq!(cancelled_again["status"], "failed", "{cancelled_again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_failed_leaves_its_vm_running_cannot_be_cloned_and_can_be_deleted() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let vm = c.create_vm(json!({"name": "src", "labels": {"sim.fail": "take_snapshot"}})).await;
    let id = str_of(&vm["id"]).to_owned();
    c.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
    let (s, b) = c.post(&format!("/v1/vms/{id}/snapshots"), &json!({"name": "doomed"})).await;
    assert_eq!(s, 202, "{b}");
    let snap = str_of(&b["id"]).to_owned();
    let op = c.wait_op(str_of(&b["operation"]["id"])).await;
    assert_eq!(op["status"], "failed", "{op}");
    let (_, got) = c.get(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!(got["status"], "failed", "{got}");
    assert!(str_of(&got["message"]).contains("injected failure"), "{got}");
    assert_eq!(c.vm(&id).await["status"], "running", "a failed snapshot leaves the guest as it was");
    let (s, b) = c.post("/v1/vms", &json!({"name": "clone", "from_snapshot": snap})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("snapshot_failed")), "{b}");
    let (s, b) = c.delete(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!(s, 202, "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    assert_eq!(c.get(&format!("/v1/snapshots/{snap}")).await.0, 404);
}
