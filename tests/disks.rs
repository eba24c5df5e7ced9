//! Disks given at create, through `POST /v1/vms` with the real gateway,
//! worker (sim driver) and NATS: data disks created as volumes of the VM,
//! existing volumes attached before the first boot, a root disk kept at
//! delete and booted by a later VM, and what deleting a VM does to each.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};
use vmplane_domain::VmId;
use vmplane_domain::vm::{data_disk_id, kept_root_disk_id};

/// Create a volume and wait until it is available; returns its id.
async fn volume(c: &Client, body: Value) -> String {
    let (s, b) = c.post("/v1/volumes", &body).await;
    assert_eq!(s, 202, "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    str_of(&b["id"]).to_owned()
}

/// Create a VM and wait until its create succeeded; returns the VM.
async fn running(c: &Client, body: Value) -> Value {
    let b = c.create_vm(body).await;
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    let vm = c.vm(str_of(&b["id"])).await;
    assert_eq!(vm["status"], "running", "{vm}");
    vm
}

async fn get_volume(c: &Client, id: &str) -> (u16, Value) {
    c.get(&format!("/v1/volumes/{id}")).await
}

/// `(volume_id, mount_path)` of the VM's attached volumes.
fn mounts(vm: &Value) -> Vec<(String, Value)> {
    vm["volumes"].as_array().unwrap().iter().map(|m| (str_of(&m["volume_id"]).to_owned(), m["mount_path"].clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_disks_are_created_attached_before_boot_and_deleted_with_the_vm_unless_kept() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let body = json!({"name": "dd", "data_disks": [
        {"name": "logs", "size_gb": 10, "type": "filesystem"},
        {"name": "raw", "size_gb": 20, "delete_with_vm": false},
    ]});
    let vm = running(c, body).await;
    let id = str_of(&vm["id"]).to_owned();
    let vm_id: VmId = id.parse().unwrap();
    let (logs, raw) = (data_disk_id(vm_id, 0).to_string(), data_disk_id(vm_id, 1).to_string());
    assert_eq!(mounts(&vm), [(logs.clone(), json!("/mnt/logs")), (raw.clone(), Value::Null)], "{vm}");

    // Each is a volume of the VM's org on its host, held by the VM.
    for (disk, kind, size) in [(&logs, "filesystem", 10), (&raw, "block", 20)] {
        let (s, v) = get_volume(c, disk).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["status"].as_str(), v["vm_id"].as_str(), v["type"].as_str(), v["size_gb"].as_u64()),
            (Some("in_use"), Some(id.as_str()), Some(kind), Some(size))
        );
        assert_eq!((&v["host_id"], &v["org_id"], &v["image"]), (&vm["host_id"], &vm["org_id"], &Value::Null));
    }
    // Plugged in before the first boot; only the filesystem is mounted.
    let guest = stack.sim_guest(&id).unwrap();
    // (The sim keeps them as a set, in id order.)
    let mut both = [logs.clone(), raw.clone()];
    both.sort();
    assert_eq!(guest["volumes"], json!(both), "{guest}");
    assert_eq!(guest["mounts"], json!({ logs.clone(): "/mnt/logs" }), "{guest}");
    let types = c.event_types(&id).await;
    let booted = types.iter().position(|t| t == "booted").unwrap();
    assert_eq!(types[..booted].iter().filter(|t| *t == "vm_volume_attached").count(), 2, "{types:?}");

    // Stop and start: the disks stay, and none is made twice.
    c.act_and_wait(&id, "stop", "stopped").await;
    c.act_and_wait(&id, "start", "running").await;
    let (_, list) = c.get("/v1/volumes").await;
    assert_eq!(list["pagination"]["total_items"], 2, "{list}");

    // Deleted with the VM: `logs` goes, `raw` (delete_with_vm: false) stays, free.
    c.act_and_wait(&id, "delete", "deleted").await;
    assert_eq!(get_volume(c, &logs).await.0, 404);
    let (s, v) = get_volume(c, &raw).await;
    assert_eq!((s, v["status"].as_str(), &v["vm_id"]), (200, Some("available"), &Value::Null), "{v}");
    assert!(stack.sim_guest(&id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_volumes_are_claimed_at_create_and_released_at_delete() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let fs = volume(c, json!({"name": "fs", "size_gb": 1, "type": "filesystem"})).await;
    let blk = volume(c, json!({"name": "blk", "size_gb": 1})).await;
    let vm = running(c, json!({"name": "with-vols", "volumes": [{"volume_id": fs, "mount_path": "/data"}, {"volume_id": blk}]})).await;
    let id = str_of(&vm["id"]).to_owned();
    assert_eq!(mounts(&vm), [(fs.clone(), json!("/data")), (blk.clone(), Value::Null)], "{vm}");
    for vol in [&fs, &blk] {
        let (_, v) = get_volume(c, vol).await;
        assert_eq!((v["status"].as_str(), v["vm_id"].as_str()), (Some("in_use"), Some(id.as_str())), "{v}");
    }
    let guest = stack.sim_guest(&id).unwrap();
    assert_eq!(guest["mounts"], json!({ fs.clone(): "/data" }), "{guest}");

    // A volume another VM holds, an unknown one, another org's: refused, nothing created.
    let before = c.vm_total("").await;
    let (s, b) = c.post("/v1/vms", &json!({"name": "second", "volumes": [{"volume_id": fs, "mount_path": "/x"}]})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("volume_in_use")), "{b}");
    let (s, b) = c.post("/v1/vms", &json!({"name": "second", "volumes": [{"volume_id": "vol_01jdx3v9k6m2w8q4r5t7y9z0ab"}]})).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let org = c.create_org("other").await;
    let other = stack.client(&c.create_key(&org, "k").await);
    let theirs = volume(&other, json!({"name": "theirs", "size_gb": 1})).await;
    let (s, b) = c.post("/v1/vms", &json!({"name": "second", "volumes": [{"volume_id": theirs}]})).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "another org's volume is not there: {b}");
    // A data volume is not a root disk.
    let (s, b) = c.post("/v1/vms", &json!({"name": "second", "root_volume_id": theirs})).await;
    assert_eq!(s, 404, "{b}");
    let free = volume(c, json!({"name": "free", "size_gb": 1})).await;
    let (s, b) = c.post("/v1/vms", &json!({"name": "second", "root_volume_id": free})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("not_a_root_disk")), "{b}");
    assert_eq!(c.vm_total("").await, before);
    assert_eq!(get_volume(c, &free).await.1["status"], "available");

    // Deleting the VM releases the volumes it did not make; they stay.
    c.act_and_wait(&id, "delete", "deleted").await;
    for vol in [&fs, &blk] {
        let (s, v) = get_volume(c, vol).await;
        assert_eq!((s, v["status"].as_str(), &v["vm_id"]), (200, Some("available"), &Value::Null), "{v}");
    }
    running(c, json!({"name": "third", "volumes": [{"volume_id": fs, "mount_path": "/again"}]})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_root_disk_becomes_a_volume_that_boots_a_later_vm() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let first = running(c, json!({"name": "first", "disk_gb": 12, "delete_root_disk": false})).await;
    let first_id = str_of(&first["id"]).to_owned();
    let throwaway = running(c, json!({"name": "throwaway"})).await;
    c.act_and_wait(&first_id, "delete", "deleted").await;
    c.act_and_wait(str_of(&throwaway["id"]), "delete", "deleted").await;
    assert_eq!(c.event_types(&first_id).await.iter().rev().take(3).collect::<Vec<_>>(), ["operation_finished", "deleted", "root_disk_kept"]);

    // Only the kept one is left: a root disk of the VM's image, size and name, free.
    let (_, list) = c.get("/v1/volumes").await;
    assert_eq!(list["pagination"]["total_items"], 1, "{list}");
    let root = kept_root_disk_id(first_id.parse().unwrap()).to_string();
    let v = &list["data"][0];
    assert_eq!(str_of(&v["id"]), root, "{v}");
    assert_eq!(
        (v["image"].as_str(), v["size_gb"].as_u64(), v["name"].as_str(), v["status"].as_str(), &v["vm_id"]),
        (Some("debian-minimal"), Some(12), Some("first"), Some("available"), &Value::Null)
    );

    // A later VM boots from it, and runs its image at its size.
    let second = running(c, json!({"name": "second", "root_volume_id": root})).await;
    let second_id = str_of(&second["id"]).to_owned();
    assert_eq!(
        (second["image"].as_str(), second["disk_gb"].as_u64(), second["root_volume_id"].as_str()),
        (Some("debian-minimal"), Some(12), Some(root.as_str()))
    );
    assert_eq!(stack.sim_guest(&second_id).unwrap()["root_disk"], format!("sim://volumes/{root}"));
    assert_eq!(get_volume(c, &root).await.1["vm_id"], second_id.as_str());

    // It boots one VM at a time.
    let (s, b) = c.post("/v1/vms", &json!({"name": "third", "root_volume_id": root})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("volume_in_use")), "{b}");

    // Deleting the VM that booted from it (delete_root_disk defaults to true)
    // releases it: a root disk given at create is never deleted with the VM.
    c.act_and_wait(&second_id, "delete", "deleted").await;
    let (s, v) = get_volume(c, &root).await;
    assert_eq!((s, v["status"].as_str(), &v["vm_id"]), (200, Some("available"), &Value::Null), "{v}");
    running(c, json!({"name": "third", "root_volume_id": root})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_refuses_a_volume_another_create_took_first() {
    let stack = Stack::start().await;
    let c = stack.admin.clone();
    let vol = volume(&c, json!({"name": "contested", "size_gb": 1})).await;
    // With the worker paused, the gateway sees the volume free for both creates.
    let pid = stack.worker.pid().expect("the worker runs") as i32;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the worker this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let a = c.create_vm(json!({"name": "a", "volumes": [{"volume_id": vol}]})).await;
    let b = c.create_vm(json!({"name": "b", "volumes": [{"volume_id": vol}]})).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let mut outcomes = Vec::new();
    for vm in [&a, &b] {
        let op = c.wait_op(str_of(&vm["operation"]["id"])).await;
        outcomes.push((str_of(&vm["id"]).to_owned(), op));
    }
    outcomes.sort_by_key(|(_, op)| op["status"] != "succeeded");
    let [(winner, won), (loser, lost)] = &outcomes[..] else { unreachable!() };
    assert_eq!((won["status"].as_str(), lost["status"].as_str()), (Some("succeeded"), Some("failed")), "{won} {lost}");
    assert!(str_of(&lost["error"]["message"]).contains(&format!("attached to {winner}")), "{lost}");
    assert_eq!(c.vm(loser).await["status"], "failed");
    assert_eq!(get_volume(&c, &vol).await.1["vm_id"], winner.as_str());
    // The loser holds nothing: deleting it leaves the volume with the winner.
    c.act_and_wait(loser, "delete", "deleted").await;
    assert_eq!(get_volume(&c, &vol).await.1["vm_id"], winner.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_disks_are_refused_and_change_nothing() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let disk = |extra: Value| {
        let mut d = json!({"name": "d", "size_gb": 10});
        d.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        d
    };
    let vol = "vol_01jdx3v9k6m2w8q4r5t7y9z0ab";
    for (body, field) in [
        (json!({"data_disks": [disk(json!({"mount_path": "/data"}))]}), "mount_path"),
        (json!({"data_disks": [disk(json!({"type": "filesystem", "mount_path": "data"}))]}), "mount_path"),
        (json!({"data_disks": [disk(json!({})), disk(json!({}))]}), "data_disks"),
        (json!({"data_disks": [disk(json!({"size_gb": 0}))]}), "data_disks"),
        (json!({"data_disks": [disk(json!({"type": "filesystem", "mount_path": "/v"}))], "volumes": [{"volume_id": vol, "mount_path": "/v"}]}), "mount_path"),
        (json!({"volumes": [{"volume_id": vol}, {"volume_id": vol}]}), "volumes"),
        (json!({"volumes": [{"volume_id": vol}], "root_volume_id": vol}), "volumes"),
        (json!({"data_disks": (0..9).map(|i| json!({"name": format!("d{i}"), "size_gb": 1})).collect::<Vec<_>>()}), "data_disks"),
    ] {
        let mut body = body;
        body["name"] = json!("bad");
        let (s, b) = c.post("/v1/vms", &body).await;
        assert_eq!((s, b["code"].as_str()), (422, Some("validation_failed")), "{body}: {b}");
        // Named first: as the field a rule is about, or in the JSON pointer
        // of the value the document refuses (`/data_disks/0/mount_path: ...`).
        let message = str_of(&b["message"]);
        let pointer = message.split(':').next().filter(|at| at.starts_with('/'));
        assert!(message.starts_with(field) || pointer.is_some_and(|at| at.split('/').any(|part| part == field)), "{body}: {b}");
    }
    let (s, b) = c.post("/v1/vms", &json!({"name": "bad", "data_disks": [disk(json!({"type": "nvme"}))]})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("invalid_body")), "{b}");
    assert_eq!(c.vm_total("").await, 0);
    assert_eq!(c.get("/v1/volumes").await.1["pagination"]["total_items"], 0);
}
