//! The NeevCloud dialect (seed 002, "VM Service API") against the real
//! gateway, worker (sim driver) and NATS: every operation of the document
//! with a request built from its schemas (the document has no `example`s;
//! each request below carries every field its schema documents), each
//! answer checked against the documented schema (required fields, types,
//! `format: uuid`, enums); every constraint of `CreateVMRequest` as a 400
//! that changed nothing; start, stop and restart where the document says
//! they have no effect; 404s, the 409 of a root disk attached elsewhere,
//! tenancy, pagination, and the OpenAPI document against the router.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

/// The default org and project (vmplane's nil ids), as UUIDs.
const NIL: &str = "00000000-0000-0000-0000-000000000000";
/// An id nothing has.
const UNKNOWN: &str = "0190a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7vbqajDjI8dTQb2sVb0s2a9x5lQ4c3v4 ops@example";

/// The operations of the seed: method, path, operationId.
const SEED_OPERATIONS: [(&str, &str, &str); 10] = [
    ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/vms", "listVMs"),
    ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms", "createVM"),
    ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}", "getVM"),
    ("delete", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}", "deleteVM"),
    ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks", "listRootDiskVolumes"),
    ("get", "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks/{root_disk_id}", "getRootDiskVolume"),
    ("delete", "/api/v1/orgs/{org_id}/projects/{project_id}/root_disks/{root_disk_id}", "deleteRootDiskVolume"),
    ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/start", "startVM"),
    ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/stop", "stopVM"),
    ("post", "/api/v1/orgs/{org_id}/projects/{project_id}/vms/{vm_id}/restart", "restartVM"),
];

// ---------------------------------------------------------------------------
// Ids and paths
// ---------------------------------------------------------------------------

/// A vmplane id (`vm_...`, `vol_...`, `org_...`) as the UUID this API shows.
fn uuid_of(id: &str) -> String {
    let (_, ulid) = id.split_once('_').unwrap_or_else(|| panic!("not a vmplane id: {id}"));
    let h = format!("{:032x}", ulid::Ulid::from_string(ulid).expect("a ulid").0);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The vmplane id of a UUID this API showed, with `prefix`.
fn vmplane_id(prefix: &str, uuid: &str) -> String {
    let n = u128::from_str_radix(&uuid.replace('-', ""), 16).expect("hex");
    format!("{prefix}_{}", ulid::Ulid(n).to_string().to_ascii_lowercase())
}

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 36 && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() }))
}

fn is_datetime(v: &Value) -> bool {
    v.as_str().is_some_and(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok())
}

/// The API's base path for an org and project.
fn base(org: &str, project: &str) -> String {
    format!("/api/v1/orgs/{org}/projects/{project}")
}

/// The admin's default org and project.
fn home() -> String {
    base(NIL, NIL)
}

// ---------------------------------------------------------------------------
// The documented shapes
// ---------------------------------------------------------------------------

fn check_error(b: &Value) {
    assert!(b["code"].is_string() && b["message"].is_string(), "not an ErrorResponse: {b}");
}

/// An error answer: its status and `ErrorResponse` body.
fn assert_error(got: &(u16, Value), status: u16, what: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    check_error(&got.1);
}

fn check_disk(d: &Value) {
    assert!(is_uuid(&d["id"]), "DiskResponse.id: {d}");
    assert!(d["name"].is_string(), "{d}");
    assert!(["block", "filesystem"].contains(&d["type"].as_str().unwrap_or_default()), "DataDiskType: {d}");
    assert!(d["size_gb"].is_u64(), "{d}");
}

fn check_vm(v: &Value) {
    for f in ["id", "name", "region_id", "status", "vm_config_id", "plan_id", "image_id", "delete_root_disk", "created_at", "updated_at"] {
        assert!(v.get(f).is_some_and(|x| !x.is_null()), "VMResponse without required {f}: {v}");
    }
    assert!(is_uuid(&v["id"]), "{v}");
    for f in ["name", "region_id", "vm_config_id", "plan_id", "image_id"] {
        assert!(v[f].is_string(), "{f}: {v}");
    }
    assert!(v["delete_root_disk"].is_boolean(), "{v}");
    let statuses = ["pending", "provisioning", "starting", "running", "stopping", "stopped", "restarting", "deleting", "deleted", "failed"];
    assert!(statuses.contains(&v["status"].as_str().unwrap_or_default()), "VMStatus: {v}");
    assert!(v["message"].is_null() || v["message"].is_string(), "{v}");
    assert!(v["gpu_config_count"].is_u64(), "{v}");
    check_disk(&v["root_disk"]);
    assert!(v["data_disks"].is_null() || v["data_disks"].is_array(), "{v}");
    v["data_disks"].as_array().into_iter().flatten().for_each(check_disk);
    assert!(v["public_ip"].is_null() || v["public_ip"].is_string(), "{v}");
    for p in v["exposed_ports"].as_array().unwrap_or_else(|| panic!("exposed_ports: {v}")) {
        assert!(p["port"].as_u64().is_some_and(|p| (1..=65535).contains(&p)), "{p}");
        assert!(["tcp", "udp"].contains(&p["protocol"].as_str().unwrap_or_default()), "{p}");
    }
    assert!(is_datetime(&v["created_at"]) && is_datetime(&v["updated_at"]), "{v}");
}

fn check_root_disk(d: &Value) {
    for f in
        ["id", "name", "org_id", "project_id", "region", "size_gb", "image_id", "volume_mode", "plan_id", "status", "is_attached", "created_at", "updated_at"]
    {
        assert!(d.get(f).is_some_and(|x| !x.is_null()), "RootDiskVolumeResponse without required {f}: {d}");
    }
    assert!(is_uuid(&d["id"]), "{d}");
    for f in ["name", "org_id", "project_id", "region", "image_id", "volume_mode", "plan_id", "status"] {
        assert!(d[f].is_string(), "{f}: {d}");
    }
    assert!(["pending", "provisioning", "ready", "failed", "deleting"].contains(&d["status"].as_str().unwrap()), "{d}");
    assert!(d["size_gb"].is_u64() && d["is_attached"].is_boolean(), "{d}");
    assert!(d["message"].is_null() || d["message"].is_string(), "{d}");
    assert_eq!(d["is_attached"].as_bool(), Some(is_uuid(&d["vm_id"])), "vm_id is set exactly when attached: {d}");
    assert!(d["vm_id"].is_null() || is_uuid(&d["vm_id"]), "{d}");
    assert!(is_datetime(&d["created_at"]) && is_datetime(&d["updated_at"]), "{d}");
}

/// A paginated list: its items (checked with `check`) and its pagination.
fn check_list(b: &Value, check: fn(&Value)) -> (Vec<Value>, Value) {
    let items = b["data"].as_array().unwrap_or_else(|| panic!("no data: {b}")).clone();
    items.iter().for_each(check);
    let p = b["pagination"].clone();
    for f in ["total_items", "total_pages", "current_page", "items_per_page"] {
        assert!(p[f].is_u64(), "PaginationResponse.{f}: {b}");
    }
    (items, p)
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A `CreateVMRequest` with every field its schema documents.
fn full_create(name: &str, data_volume: &str) -> Value {
    json!({
        "name": name,
        "region_id": "us-east",
        "vm_config_id": "small",
        "gpu_config_count": 0,
        "plan_id": "small",
        "root_disk": {"create_disk_request": {"name": format!("{name}-boot"), "size_gb": 40, "image_id": "ubuntu-24.04"}},
        "data_disks": {
            "attached_disks": [{"disk_id": data_volume}],
            "create_disks": [{"name": "scratch", "type": "filesystem", "size_gb": 10}]
        },
        "ssh_keys": [KEY, RSA],
        "exposed_ports": [{"port": 80, "protocol": "tcp"}, {"port": 53, "protocol": "udp"}],
        "delete_root_disk": false
    })
}

/// The smallest valid `CreateVMRequest`.
fn minimal(name: &str) -> Value {
    json!({
        "name": name,
        "region_id": "us-east",
        "vm_config_id": "nano",
        "plan_id": "nano",
        "root_disk": {"create_disk_request": {"name": "boot", "size_gb": 20, "image_id": "debian-12"}}
    })
}

/// POST a create; assert 201 and a `VMResponse`.
async fn create(c: &Client, at: &str, body: &Value) -> Value {
    let (s, b) = c.post(&format!("{at}/vms"), body).await;
    assert_eq!(s, 201, "createVM {body}: {b}");
    check_vm(&b);
    b
}

/// GET a VM through this API.
async fn get_vm(c: &Client, at: &str, id: &str) -> (u16, Value) {
    c.get(&format!("{at}/vms/{id}")).await
}

/// Poll the VM through this API until it has `status`.
async fn wait_status(c: &Client, at: &str, id: &str, status: &str) -> Value {
    wait_for(&format!("vm {id} {status}"), WAIT, async || {
        let (s, b) = get_vm(c, at, id).await;
        assert_eq!(s, 200, "getVM: {b}");
        check_vm(&b);
        assert!(b["status"] != "failed", "vm failed: {b}");
        if b["status"] == status { Ok(b) } else { Err(b["status"].to_string()) }
    })
    .await
}

/// Create and wait until it runs.
async fn running(c: &Client, at: &str, body: &Value) -> Value {
    let b = create(c, at, body).await;
    wait_status(c, at, str_of(&b["id"]), "running").await
}

/// The VM's event types, through `/v1`.
async fn events(c: &Client, uuid: &str) -> Vec<String> {
    c.event_types(&vmplane_id("vm", uuid)).await
}

/// Wait until the VM has no operation in flight (its last event ends one).
async fn settled(c: &Client, uuid: &str) -> Vec<String> {
    wait_for("the vm's operation to finish", WAIT, async || {
        let types = events(c, uuid).await;
        if types.last().map(String::as_str) == Some("operation_finished") { Ok(types) } else { Err(format!("{types:?}")) }
    })
    .await
}

async fn volume(c: &Client, name: &str, kind: &str) -> String {
    let (s, b) = c.post("/v1/volumes", &json!({"name": name, "size_gb": 10, "type": kind})).await;
    assert_eq!(s, 202, "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    str_of(&b["id"]).to_owned()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_its_documented_shape_and_drives_the_same_vm() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let at = home();
    let data_vol = volume(c, "shared", "filesystem").await;

    // createVM, with every documented field.
    let body = full_create("web-1", &uuid_of(&data_vol));
    let vm = create(c, &at, &body).await;
    let id = str_of(&vm["id"]).to_owned();
    assert_eq!(
        (vm["name"].as_str(), vm["region_id"].as_str(), vm["vm_config_id"].as_str(), vm["plan_id"].as_str(), vm["image_id"].as_str()),
        (Some("web-1"), Some("us-east"), Some("small"), Some("small"), Some("ubuntu-24.04"))
    );
    assert_eq!((vm["delete_root_disk"].as_bool(), vm["gpu_config_count"].as_u64()), (Some(false), Some(0)));
    assert_eq!(vm["exposed_ports"], body["exposed_ports"]);
    assert_eq!((vm["root_disk"]["name"].as_str(), vm["root_disk"]["size_gb"].as_u64()), (Some("web-1-boot"), Some(40)), "{vm}");

    // getVM once it runs: its disks, as created and attached.
    let vm = wait_status(c, &at, &id, "running").await;
    let disks: Vec<(&str, &str, u64)> =
        vm["data_disks"].as_array().unwrap().iter().map(|d| (str_of(&d["name"]), str_of(&d["type"]), d["size_gb"].as_u64().unwrap())).collect();
    assert_eq!(disks, [("scratch", "filesystem", 10), ("shared", "filesystem", 10)], "{vm}");
    assert!(vm["data_disks"].as_array().unwrap().iter().any(|d| d["id"] == uuid_of(&data_vol).as_str()), "{vm}");
    assert_eq!(vm["public_ip"], Value::Null);

    // The same VM in /v1: its plan's shape, the keys, the ports forwarded, the disks mounted.
    let native = c.vm(&vmplane_id("vm", &id)).await;
    assert_eq!((native["vcpus"].as_u64(), native["memory_mib"].as_u64(), native["disk_gb"].as_u64()), (Some(2), Some(4096), Some(40)), "{native}");
    assert_eq!((native["plan"].as_str(), native["region"].as_str(), native["image"].as_str()), (Some("small"), Some("us-east"), Some("ubuntu-2404")));
    assert_eq!(native["ssh_keys"], json!([KEY, RSA]));
    let forwards: Vec<(u64, &str)> =
        native["port_forwards"].as_array().unwrap().iter().map(|p| (p["guest_port"].as_u64().unwrap(), str_of(&p["protocol"]))).collect();
    assert_eq!(forwards, [(80, "tcp"), (53, "udp")], "{native}");
    assert!(native["port_forwards"].as_array().unwrap().iter().all(|p| p["host_port"].is_u64()), "{native}");
    let guest = stack.sim_guest(&vmplane_id("vm", &id)).unwrap();
    let mut mounts: Vec<&str> = guest["mounts"].as_object().unwrap().values().map(str_of).collect();
    mounts.sort_unstable();
    assert_eq!(mounts, ["/mnt/scratch", "/mnt/shared"], "both filesystem disks are mounted: {guest}");

    // listVMs.
    let (s, b) = c.get(&format!("{at}/vms")).await;
    assert_eq!(s, 200, "{b}");
    let (items, p) = check_list(&b, check_vm);
    assert_eq!((items.len(), &p), (1, &json!({"total_items": 1, "total_pages": 1, "current_page": 1, "items_per_page": 20})));
    assert_eq!(items[0]["id"], id.as_str());

    // stopVM, startVM, restartVM: 202 with the VM.
    for (action, then) in [("stop", "stopped"), ("start", "running"), ("restart", "running")] {
        let (s, b) = c.post_empty(&format!("{at}/vms/{id}/{action}")).await;
        assert_eq!(s, 202, "{action}VM: {b}");
        check_vm(&b);
        assert_eq!(b["id"], id.as_str());
        settled(c, &id).await;
        wait_status(c, &at, &id, then).await;
    }
    assert!(events(c, &id).await.contains(&"rebooted".to_owned()), "restart rebooted the guest");

    // listRootDiskVolumes / getRootDiskVolume: the VM's own root disk, attached to it.
    let root = str_of(&vm["root_disk"]["id"]).to_owned();
    let (s, b) = c.get(&format!("{at}/root_disks")).await;
    assert_eq!(s, 200, "{b}");
    let (disks, p) = check_list(&b, check_root_disk);
    assert_eq!(p["total_items"], 1, "{b}");
    let d = &disks[0];
    assert_eq!((d["id"].as_str(), d["vm_id"].as_str(), d["is_attached"].as_bool()), (Some(root.as_str()), Some(id.as_str()), Some(true)), "{d}");
    assert_eq!(
        (d["name"].as_str(), d["size_gb"].as_u64(), d["image_id"].as_str(), d["plan_id"].as_str(), d["region"].as_str(), d["status"].as_str()),
        (Some("web-1-boot"), Some(40), Some("ubuntu-24.04"), Some("small"), Some("us-east"), Some("ready"))
    );
    assert_eq!((d["org_id"].as_str(), d["project_id"].as_str(), d["volume_mode"].as_str()), (Some(NIL), Some(NIL), Some("filesystem")));
    let (s, one) = c.get(&format!("{at}/root_disks/{root}")).await;
    assert_eq!((s, &one), (200, d), "getRootDiskVolume");

    // deleteRootDiskVolume of an attached disk: 409.
    assert_error(&c.delete(&format!("{at}/root_disks/{root}")).await, 409, "deleting an attached root disk");

    // deleteVM: 202, no body; the root disk (delete_root_disk false) stays, free.
    let (s, b) = c.delete(&format!("{at}/vms/{id}")).await;
    assert_eq!((s, &b), (202, &Value::String(String::new())), "deleteVM");
    settled(c, &id).await;
    let (s, b) = get_vm(c, &at, &id).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("deleted")), "{b}");
    let (_, b) = c.get(&format!("{at}/vms")).await;
    assert_eq!(b["pagination"]["total_items"], 0, "a deleted VM is not listed: {b}");
    let (s, d) = c.get(&format!("{at}/root_disks/{root}")).await;
    assert_eq!(s, 200, "{d}");
    check_root_disk(&d);
    assert_eq!(
        (d["is_attached"].as_bool(), &d["vm_id"], d["status"].as_str(), d["name"].as_str(), d["plan_id"].as_str()),
        (Some(false), &Value::Null, Some("ready"), Some("web-1-boot"), Some("small")),
        "{d}"
    );

    // A VM from that root disk (attach_disk_request) runs its image at its size.
    let mut second = minimal("web-2");
    second["root_disk"] = json!({"attach_disk_request": {"disk_id": root}});
    second["delete_root_disk"] = json!(true);
    let vm2 = running(c, &at, &second).await;
    let id2 = str_of(&vm2["id"]).to_owned();
    assert_eq!(
        (vm2["image_id"].as_str(), vm2["root_disk"]["id"].as_str(), vm2["root_disk"]["size_gb"].as_u64()),
        (Some("ubuntu-24.04"), Some(root.as_str()), Some(40))
    );
    assert_eq!(vm2["delete_root_disk"], false, "ignored for attach_disk_request: {vm2}");
    let (_, d) = c.get(&format!("{at}/root_disks/{root}")).await;
    assert_eq!((d["is_attached"].as_bool(), d["vm_id"].as_str()), (Some(true), Some(id2.as_str())), "{d}");

    // Deleting that VM releases the disk; then the disk can be deleted.
    assert_eq!(c.delete(&format!("{at}/vms/{id2}")).await.0, 202);
    settled(c, &id2).await;
    let (_, d) = c.get(&format!("{at}/root_disks/{root}")).await;
    assert_eq!(d["is_attached"], false, "{d}");
    let (s, b) = c.delete(&format!("{at}/root_disks/{root}")).await;
    assert_eq!((s, &b), (202, &Value::String(String::new())), "deleteRootDiskVolume");
    wait_for("the root disk to go", WAIT, async || match c.get(&format!("{at}/root_disks/{root}")).await {
        (404, b) => {
            check_error(&b);
            Ok(())
        }
        other => Err(format!("{other:?}")),
    })
    .await;
    let (_, b) = c.get(&format!("{at}/root_disks")).await;
    assert_eq!(b["pagination"]["total_items"], 0, "{b}");
}

/// A valid body with `path` (dot-separated, numeric segments index arrays) set to `value`, or removed when `value` is None.
fn with(mut body: Value, path: &str, value: Option<Value>) -> Value {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap();
    let mut at = &mut body;
    for p in parts {
        at = match p.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[p],
        };
    }
    match value {
        Some(v) => match last.parse::<usize>() {
            Ok(i) => at[i] = v,
            Err(_) => at[last] = v,
        },
        None => {
            at.as_object_mut().unwrap().remove(last);
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_constraint_is_a_400_error_response_that_changes_nothing() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let at = home();
    let vol = uuid_of(&volume(c, "extra", "block").await);
    let valid = {
        let mut b = minimal("ok");
        b["data_disks"] = json!({"attached_disks": [{"disk_id": vol}], "create_disks": [{"name": "d0", "type": "block", "size_gb": 10}]});
        b["ssh_keys"] = json!([KEY]);
        b["exposed_ports"] = json!([{"port": 80, "protocol": "tcp"}]);
        b
    };
    let disk = |i: usize| json!({"name": format!("d{i}"), "type": "block", "size_gb": 10});
    let attach = |_: usize| json!({"disk_id": UNKNOWN});
    let port = |p: u64| json!({"port": p, "protocol": "tcp"});
    let key = |i: usize| json!(format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GK{i:02} k"));
    let rule = |path: &str, value: Value| with(valid.clone(), path, Some(value));
    let without = |path: &str| with(valid.clone(), path, None);
    let cases: Vec<(&str, Value)> = vec![
        // name: ResourceName (DNS-1123 label, at most 20)
        ("name missing", without("name")),
        ("name empty", rule("name", json!(""))),
        ("name upper case", rule("name", json!("Web"))),
        ("name leading dash", rule("name", json!("-web"))),
        ("name trailing dash", rule("name", json!("web-"))),
        ("name underscore", rule("name", json!("a_b"))),
        ("name dot", rule("name", json!("a.b"))),
        ("name 21 characters", rule("name", json!("a".repeat(21)))),
        ("name not a string", rule("name", json!(7))),
        // required strings
        ("region_id missing", without("region_id")),
        ("region_id empty", rule("region_id", json!(""))),
        ("vm_config_id missing", without("vm_config_id")),
        ("plan_id missing", without("plan_id")),
        ("plan_id not vm_config_id", rule("plan_id", json!("small"))),
        ("unknown plan", rule("vm_config_id", json!("huge")).pipe(|b| with(b, "plan_id", Some(json!("huge"))))),
        ("gpu_config_count negative", rule("gpu_config_count", json!(-1))),
        ("gpu_config_count not an integer", rule("gpu_config_count", json!("two"))),
        // root_disk: exactly one form
        ("root_disk missing", without("root_disk")),
        ("root_disk with neither form", rule("root_disk", json!({}))),
        (
            "root_disk with both forms",
            rule(
                "root_disk",
                json!({"attach_disk_request": {"disk_id": UNKNOWN}, "create_disk_request": {"name": "b", "size_gb": 20, "image_id": "debian-12"}}),
            ),
        ),
        ("root disk size 19", rule("root_disk.create_disk_request.size_gb", json!(19))),
        ("root disk size 2049", rule("root_disk.create_disk_request.size_gb", json!(2049))),
        ("root disk size not an integer", rule("root_disk.create_disk_request.size_gb", json!(20.5))),
        ("root disk name bad", rule("root_disk.create_disk_request.name", json!("Boot"))),
        ("root disk name 21", rule("root_disk.create_disk_request.name", json!("b".repeat(21)))),
        ("root disk name missing", with(valid.clone(), "root_disk.create_disk_request.name", None)),
        ("root disk image_id missing", with(valid.clone(), "root_disk.create_disk_request.image_id", None)),
        ("root disk size missing", with(valid.clone(), "root_disk.create_disk_request.size_gb", None)),
        ("attach disk_id not a uuid", rule("root_disk", json!({"attach_disk_request": {"disk_id": "disk-1"}}))),
        ("attach disk_id a vmplane id", rule("root_disk", json!({"attach_disk_request": {"disk_id": vmplane_id("vol", UNKNOWN)}}))),
        ("attach disk_id missing", rule("root_disk", json!({"attach_disk_request": {}}))),
        // data_disks: at most 4 of each, 10-2048 GB, names, types, uuids
        ("5 create_disks", rule("data_disks.create_disks", json!((0..5).map(disk).collect::<Vec<_>>()))),
        ("5 attached_disks", rule("data_disks.attached_disks", json!((0..5).map(attach).collect::<Vec<_>>()))),
        ("data disk size 9", rule("data_disks.create_disks.0.size_gb", json!(9))),
        ("data disk size 2049", rule("data_disks.create_disks.0.size_gb", json!(2049))),
        ("data disk name bad", rule("data_disks.create_disks.0.name", json!("D0"))),
        ("data disk name 21", rule("data_disks.create_disks.0.name", json!("d".repeat(21)))),
        ("data disk type nvme", rule("data_disks.create_disks.0.type", json!("nvme"))),
        ("data disk type missing", with(valid.clone(), "data_disks.create_disks.0.type", None)),
        ("data disk names twice", rule("data_disks.create_disks", json!([disk(1), disk(1)]))),
        ("attached disk twice", rule("data_disks.attached_disks", json!([{"disk_id": vol}, {"disk_id": vol}]))),
        ("attached disk not a uuid", rule("data_disks.attached_disks.0.disk_id", json!("vol-1"))),
        (
            "attached disk is the root disk",
            rule("root_disk", json!({"attach_disk_request": {"disk_id": vol}})).pipe(|b| with(b, "data_disks.attached_disks", Some(json!([{"disk_id": vol}])))),
        ),
        // ssh_keys: at most 10, 50-2000 characters, the pattern, unique
        ("11 ssh keys", rule("ssh_keys", json!((0..11).map(key).collect::<Vec<_>>()))),
        ("ssh key under 50", rule("ssh_keys", json!(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA k"]))),
        ("ssh key over 2000", rule("ssh_keys", json!([format!("ssh-rsa {}", "A".repeat(1995))]))),
        ("ssh-dss key", rule("ssh_keys", json!([KEY.replace("ssh-ed25519", "ssh-dss")]))),
        ("ecdsa key", rule("ssh_keys", json!([KEY.replace("ssh-ed25519", "ecdsa-sha2-nistp256")]))),
        ("key without a blank", rule("ssh_keys", json!([KEY.replacen(' ', "", 1)]))),
        ("key with three =", rule("ssh_keys", json!([KEY.replace(" user@host", "=== user@host")]))),
        ("key with a bad character", rule("ssh_keys", json!([KEY.replace("AAAAC3", "AA-AC3")]))),
        ("duplicate ssh keys", rule("ssh_keys", json!([KEY, KEY]))),
        ("ssh key not a string", rule("ssh_keys", json!([1]))),
        // exposed_ports: at most 10, 1-65535, not 22, tcp/udp, unique
        ("11 exposed ports", rule("exposed_ports", json!((1000..1011).map(port).collect::<Vec<_>>()))),
        ("port 0", rule("exposed_ports", json!([port(0)]))),
        ("port 65536", rule("exposed_ports", json!([port(65536)]))),
        ("port -1", rule("exposed_ports", json!([{"port": -1, "protocol": "tcp"}]))),
        ("port 22", rule("exposed_ports", json!([port(22)]))),
        ("port 22 udp", rule("exposed_ports", json!([{"port": 22, "protocol": "udp"}]))),
        ("protocol icmp", rule("exposed_ports", json!([{"port": 80, "protocol": "icmp"}]))),
        ("protocol upper case", rule("exposed_ports", json!([{"port": 80, "protocol": "TCP"}]))),
        ("protocol missing", rule("exposed_ports", json!([{"port": 80}]))),
        ("port missing", rule("exposed_ports", json!([{"protocol": "tcp"}]))),
        ("duplicate port and protocol", rule("exposed_ports", json!([port(80), port(80)]))),
        // types
        ("delete_root_disk not a boolean", rule("delete_root_disk", json!("yes"))),
        ("data_disks not an object", rule("data_disks", json!([]))),
        ("body an array", json!([valid.clone()])),
    ];
    for (what, body) in &cases {
        let got = c.post(&format!("{at}/vms"), body).await;
        assert_error(&got, 400, what);
    }
    // Not JSON at all, and no content type.
    let r = c.send(c.request(Method::POST, &format!("{at}/vms")).header("content-type", "application/json").body("{\"name\":")).await;
    assert_error(&(r.status, r.body), 400, "malformed JSON");
    let r = c.send(c.request(Method::POST, &format!("{at}/vms")).body(valid.to_string())).await;
    assert_error(&(r.status, r.body), 400, "no content type");

    // Nothing was created by any of them.
    assert_eq!(c.vm_total("").await, 0);
    let (_, vols) = c.get("/v1/volumes").await;
    assert_eq!(vols["pagination"]["total_items"], 1, "only the test's own volume: {vols}");

    // The same body is fine; so are (80, tcp) and (80, udp) together, and 10 of everything.
    let mut ok = valid.clone();
    ok["exposed_ports"] = json!((1000..1009).map(port).chain([json!({"port": 1000, "protocol": "udp"})]).collect::<Vec<_>>());
    ok["ssh_keys"] = json!((0..10).map(key).collect::<Vec<_>>());
    ok["data_disks"]["create_disks"] = json!((0..4).map(disk).collect::<Vec<_>>());
    ok["gpu_config_count"] = json!(0);
    create(c, &at, &ok).await;
}

/// Extension to apply a function to a value inline.
trait Pipe: Sized {
    fn pipe(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }
}
impl Pipe for Value {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_of_running_stop_of_stopped_and_restart_of_not_running_have_no_effect() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let at = home();
    let id = str_of(&running(c, &at, &minimal("idem")).await["id"]).to_owned();
    let before = settled(c, &id).await;

    // Start of a running VM: 202, running, nothing appended.
    let (s, b) = c.post_empty(&format!("{at}/vms/{id}/start")).await;
    assert_eq!((s, b["status"].as_str()), (202, Some("running")), "{b}");
    assert_eq!(events(c, &id).await, before, "start of a running vm did something");

    // Stop, then stop again: the second is 202 and does nothing.
    let (s, b) = c.post_empty(&format!("{at}/vms/{id}/stop")).await;
    assert_eq!(s, 202, "{b}");
    check_vm(&b);
    let stopped = settled(c, &id).await;
    wait_status(c, &at, &id, "stopped").await;
    let (s, b) = c.post_empty(&format!("{at}/vms/{id}/stop")).await;
    assert_eq!((s, b["status"].as_str()), (202, Some("stopped")), "{b}");
    assert_eq!(events(c, &id).await, stopped, "stop of a stopped vm did something");

    // Restart of a stopped VM: 202, still stopped, nothing appended.
    let (s, b) = c.post_empty(&format!("{at}/vms/{id}/restart")).await;
    assert_eq!((s, b["status"].as_str()), (202, Some("stopped")), "{b}");
    check_vm(&b);
    assert_eq!(events(c, &id).await, stopped, "restart of a stopped vm did something");
    assert_eq!(wait_status(c, &at, &id, "stopped").await["status"], "stopped");

    // Start works, and a restart of a running VM reboots it.
    c.post_empty(&format!("{at}/vms/{id}/start")).await;
    settled(c, &id).await;
    wait_status(c, &at, &id, "running").await;
    let (s, b) = c.post_empty(&format!("{at}/vms/{id}/restart")).await;
    assert_eq!(s, 202, "{b}");
    let after = settled(c, &id).await;
    assert!(after.ends_with(&["restart_requested".into(), "rebooted".into(), "ready".into(), "operation_finished".into()]), "{after:?}");

    // A VM on standby (through /v1) shows as stopped: stop does nothing, start resumes it.
    c.act_and_wait(&vmplane_id("vm", &id), "standby", "standby").await;
    let (s, b) = c.post_empty(&format!("{at}/vms/{id}/stop")).await;
    assert_eq!((s, b["status"].as_str()), (202, Some("stopped")), "{b}");
    let (s, _) = c.post_empty(&format!("{at}/vms/{id}/start")).await;
    assert_eq!(s, 202);
    settled(c, &id).await;
    wait_status(c, &at, &id, "running").await;
    assert!(events(c, &id).await.contains(&"restored".to_owned()));

    // Deleted: the actions are 404, delete again is 202.
    assert_eq!(c.delete(&format!("{at}/vms/{id}")).await.0, 202);
    settled(c, &id).await;
    for action in ["start", "stop", "restart"] {
        assert_error(&c.post_empty(&format!("{at}/vms/{id}/{action}")).await, 404, action);
    }
    assert_eq!(c.delete(&format!("{at}/vms/{id}")).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_orgs_projects_vms_regions_images_and_disks_are_404_and_bad_ids_400() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let at = home();
    let vm = running(c, &at, &minimal("known")).await;
    let id = str_of(&vm["id"]).to_owned();

    // Unknown org or project, as UUIDs or otherwise: 404 on every operation.
    for prefix in [base(UNKNOWN, NIL), base(NIL, UNKNOWN), base("acme", NIL), base(NIL, "prod")] {
        for (method, path) in [
            (Method::GET, format!("{prefix}/vms")),
            (Method::POST, format!("{prefix}/vms")),
            (Method::GET, format!("{prefix}/vms/{id}")),
            (Method::DELETE, format!("{prefix}/vms/{id}")),
            (Method::POST, format!("{prefix}/vms/{id}/start")),
            (Method::GET, format!("{prefix}/root_disks")),
            (Method::GET, format!("{prefix}/root_disks/{UNKNOWN}")),
            (Method::DELETE, format!("{prefix}/root_disks/{UNKNOWN}")),
        ] {
            let r = c.send(c.request(method.clone(), &path).json(&minimal("x"))).await;
            assert_error(&(r.status, r.body), 404, &format!("{method} {path}"));
        }
    }
    // vmplane's own ids name the same org and project.
    let (s, b) = c.get(&format!("{}/vms/{id}", base(&vmplane_id("org", NIL), &vmplane_id("prj", NIL)))).await;
    assert_eq!((s, b["id"].as_str()), (200, Some(id.as_str())), "{b}");

    // Unknown VM: 404; not a UUID: 400.
    for (method, suffix) in [(Method::GET, ""), (Method::DELETE, ""), (Method::POST, "/start"), (Method::POST, "/stop"), (Method::POST, "/restart")] {
        let r = c.send(c.request(method.clone(), &format!("{at}/vms/{UNKNOWN}{suffix}"))).await;
        assert_error(&(r.status, r.body), 404, &format!("{method} unknown vm{suffix}"));
        let r = c.send(c.request(method.clone(), &format!("{at}/vms/not-a-uuid{suffix}"))).await;
        assert_error(&(r.status, r.body), 400, &format!("{method} bad vm id{suffix}"));
        let r = c.send(c.request(method.clone(), &format!("{at}/vms/{}{suffix}", vmplane_id("vm", &id)))).await;
        assert_error(&(r.status, r.body), 400, &format!("{method} a vm_ id is not a UUID{suffix}"));
    }
    assert_error(&c.get(&format!("{at}/root_disks/{UNKNOWN}")).await, 404, "unknown root disk");
    assert_error(&c.get(&format!("{at}/root_disks/zzz")).await, 400, "bad root disk id");
    assert_error(&c.delete(&format!("{at}/root_disks/{UNKNOWN}")).await, 404, "delete unknown root disk");

    // The VM is not in another project of its org.
    let (s, p) = c.post(&format!("/v1/orgs/{}/projects", vmplane_id("org", NIL)), &json!({"name": "other"})).await;
    assert!(s == 201 || s == 202, "{p}");
    let other = base(NIL, &uuid_of(str_of(&p["id"])));
    wait_for("the project", WAIT, async || match c.get(&format!("{other}/vms")).await {
        (200, b) => Ok(b),
        got => Err(format!("{got:?}")),
    })
    .await;
    assert_error(&get_vm(c, &other, &id).await, 404, "a vm of another project");
    assert_error(&c.post_empty(&format!("{other}/vms/{id}/stop")).await, 404, "stop a vm of another project");
    assert_error(&c.get(&format!("{other}/root_disks/{}", str_of(&vm["root_disk"]["id"]))).await, 404, "a root disk of another project");

    // Unknown region, image, data disk, root disk: 404, nothing created.
    let before = c.vm_total("").await;
    for (what, body) in [
        ("unknown region", with(minimal("r"), "region_id", Some(json!("mars-1")))),
        ("a region no host serves", with(minimal("r"), "region_id", Some(json!("eu-west")))),
        ("unknown image", with(minimal("i"), "root_disk.create_disk_request.image_id", Some(json!("plan9-4")))),
        ("unknown data disk", with(minimal("d"), "data_disks", Some(json!({"attached_disks": [{"disk_id": UNKNOWN}]})))),
        ("unknown root disk", with(minimal("o"), "root_disk", Some(json!({"attach_disk_request": {"disk_id": UNKNOWN}})))),
    ] {
        assert_error(&c.post(&format!("{at}/vms"), &body).await, 404, what);
    }
    assert_eq!(c.vm_total("").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_disk_attached_elsewhere_is_409() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let at = home();
    let mut body = minimal("owner");
    body["delete_root_disk"] = json!(false);
    let owner = running(c, &at, &body).await;
    let root = str_of(&owner["root_disk"]["id"]).to_owned();
    let from = |name: &str, disk: &str| with(minimal(name), "root_disk", Some(json!({"attach_disk_request": {"disk_id": disk}})));

    // A live VM's own root disk is attached to it.
    let refused = c.post(&format!("{at}/vms"), &from("thief", &root)).await;
    assert_error(&refused, 409, "another vm's own root disk");
    assert!(str_of(&refused.1["message"]).contains(str_of(&owner["id"])), "the holder, by its UUID: {}", refused.1);
    assert_error(&c.delete(&format!("{at}/root_disks/{root}")).await, 409, "delete a live vm's root disk");

    // Kept at delete, it boots one VM; a second is 409.
    c.delete(&format!("{at}/vms/{}", str_of(&owner["id"]))).await;
    settled(c, str_of(&owner["id"])).await;
    let first = running(c, &at, &from("first", &root)).await;
    assert_error(&c.post(&format!("{at}/vms"), &from("second", &root)).await, 409, "a root disk booting another vm");
    assert_error(&c.delete(&format!("{at}/root_disks/{root}")).await, 409, "delete a root disk a vm boots");

    // A data volume is no root disk (400), and nothing was created.
    let data = uuid_of(&volume(c, "data", "block").await);
    assert_error(&c.post(&format!("{at}/vms"), &from("third", &data)).await, 400, "a data volume as root disk");
    let (_, list) = c.get(&format!("{at}/vms")).await;
    assert_eq!(list["pagination"]["total_items"], 1, "{list}");
    assert_eq!(list["data"][0]["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_vm_is_404_and_keys_act_only_in_their_org() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let (org_a, org_b) = (admin.create_org("acme").await, admin.create_org("globex").await);
    let (a, b) = (stack.client(&admin.create_key(&org_a, "k").await), stack.client(&admin.create_key(&org_b, "k").await));
    let (at_a, at_b) = (base(&uuid_of(&org_a), NIL), base(&uuid_of(&org_b), NIL));
    let vm = running(&a, &at_a, &minimal("secret")).await;
    let id = str_of(&vm["id"]).to_owned();
    let root = str_of(&vm["root_disk"]["id"]).to_owned();

    // B, in its own org, does not find A's VM or root disk.
    assert_error(&get_vm(&b, &at_b, &id).await, 404, "another org's vm");
    for action in ["start", "stop", "restart"] {
        assert_error(&b.post_empty(&format!("{at_b}/vms/{id}/{action}")).await, 404, action);
    }
    assert_error(&b.delete(&format!("{at_b}/vms/{id}")).await, 404, "delete another org's vm");
    assert_error(&b.get(&format!("{at_b}/root_disks/{root}")).await, 404, "another org's root disk");
    assert_error(
        &b.post(&format!("{at_b}/vms"), &with(minimal("x"), "root_disk", Some(json!({"attach_disk_request": {"disk_id": root}})))).await,
        404,
        "boot another org's disk",
    );
    let (s, l) = b.get(&format!("{at_b}/vms")).await;
    assert_eq!((s, &l["pagination"]["total_items"]), (200, &json!(0)), "{l}");
    let (_, l) = b.get(&format!("{at_b}/root_disks")).await;
    assert_eq!(l["pagination"]["total_items"], 0, "{l}");

    // B naming A's org in the path: that org is not there for B.
    assert_error(&get_vm(&b, &at_a, &id).await, 404, "a key in another org's path");
    assert_error(&b.get(&format!("{at_a}/vms")).await, 404, "list another org");
    assert_error(&b.post(&format!("{at_a}/vms"), &minimal("intruder")).await, 404, "create in another org");

    // The admin may act in any org; A sees its own.
    assert_eq!(get_vm(admin, &at_a, &id).await.0, 200);
    assert_eq!(get_vm(&a, &at_a, &id).await.0, 200);
    assert_eq!(a.vm(&vmplane_id("vm", &id)).await["org_id"], org_a.as_str(), "the same VM in /v1");

    // No token, a bad one: 401 in the dialect's shape.
    assert_error(&stack.anonymous().get(&format!("{at_a}/vms")).await, 401, "no token");
    assert_error(&stack.client("vmp_nope").get(&format!("{at_a}/vms/{id}")).await, 401, "bad token");
    assert_error(&stack.anonymous().post(&format!("{at_a}/vms"), &json!({})).await, 401, "no token on create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate_and_a_limit_over_100_is_400() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let at = home();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(str_of(&create(c, &at, &minimal(&format!("vm-{i}"))).await["id"]).to_owned());
    }
    for id in &ids {
        wait_status(c, &at, id, "running").await;
    }
    for what in ["vms", "root_disks"] {
        let check: fn(&Value) = if what == "vms" { check_vm } else { check_root_disk };
        let at = &at;
        let page = |q: &'static str| async move {
            let (s, b) = c.get(&format!("{at}/{what}{q}")).await;
            assert_eq!(s, 200, "{what}{q}: {b}");
            check_list(&b, check)
        };
        let (items, p) = page("?limit=2").await;
        assert_eq!((items.len(), p), (2, json!({"total_items": 3, "total_pages": 2, "current_page": 1, "items_per_page": 2})), "{what}");
        let (last, p) = page("?limit=2&page=2").await;
        assert_eq!((last.len(), &p["current_page"]), (1, &json!(2)), "{what}");
        let (beyond, _) = page("?limit=2&page=3").await;
        assert!(beyond.is_empty());
        let (all, p) = page("?limit=100").await;
        assert_eq!((all.len(), &p["total_pages"]), (3, &json!(1)));
        let mut paged: Vec<Value> = items.iter().chain(&last).map(|v| v["id"].clone()).collect();
        let mut every: Vec<Value> = all.iter().map(|v| v["id"].clone()).collect();
        paged.sort_by_key(Value::to_string);
        every.sort_by_key(Value::to_string);
        assert_eq!(paged, every, "{what}: the pages hold every item once");
        let (_, p) = page("").await;
        assert_eq!(p["items_per_page"], 20, "default limit");
        for bad in ["?limit=101", "?limit=1000", "?limit=0", "?limit=-5", "?page=0", "?page=-1", "?limit=abc", "?page=1.5"] {
            assert_error(&c.get(&format!("{at}/{what}{bad}")).await, 400, &format!("{what}{bad}"));
        }
    }
    let vms: Vec<String> = {
        let (_, b) = c.get(&format!("{at}/vms")).await;
        b["data"].as_array().unwrap().iter().map(|v| str_of(&v["id"]).to_owned()).collect()
    };
    assert_eq!(vms, ids, "oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_agrees_with_the_router_and_the_seed() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let (s, doc) = stack.anonymous().get("/openapi/neevcloud.json").await;
    assert_eq!(s, 200, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let mut documented: Vec<(String, String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.push((method.clone(), path.clone(), str_of(&op["operationId"]).to_owned()));
        }
    }
    documented.sort();
    let mut seed: Vec<(String, String, String)> = SEED_OPERATIONS.iter().map(|(m, p, o)| (m.to_string(), p.to_string(), o.to_string())).collect();
    seed.sort();
    assert_eq!(documented, seed, "the document's operations are the seed's");

    // The documented schemas say what the seed's do.
    let schemas = &doc["components"]["schemas"];
    let required = |name: &str| {
        let mut r: Vec<String> =
            schemas[name]["required"].as_array().unwrap_or_else(|| panic!("{name}: {}", schemas[name])).iter().map(|v| str_of(v).to_owned()).collect();
        r.sort();
        r
    };
    let sorted = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        required("VMResponse"),
        sorted(&["id", "name", "region_id", "status", "vm_config_id", "plan_id", "image_id", "delete_root_disk", "created_at", "updated_at"])
    );
    assert_eq!(required("DiskResponse"), sorted(&["id", "name", "type", "size_gb"]));
    assert_eq!(required("ErrorResponse"), sorted(&["code", "message"]));
    assert_eq!(
        required("RootDiskVolumeResponse"),
        sorted(&[
            "id",
            "name",
            "org_id",
            "project_id",
            "region",
            "size_gb",
            "image_id",
            "volume_mode",
            "plan_id",
            "status",
            "is_attached",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(required("CreateVMRequest"), sorted(&["name", "region_id", "vm_config_id", "plan_id", "root_disk"]));
    assert_eq!(required("CreateRootDiskRequest"), sorted(&["name", "size_gb", "image_id"]));
    assert_eq!(required("CreateDataDiskRequest"), sorted(&["name", "type", "size_gb"]));
    assert_eq!(
        schemas["VMStatus"]["enum"],
        json!(["pending", "provisioning", "starting", "running", "stopping", "stopped", "restarting", "deleting", "deleted", "failed"])
    );

    // Every documented method on every documented path reaches a handler; every other is 405.
    let vm = create(c, &home(), &minimal("probe")).await;
    let id = str_of(&vm["id"]).to_owned();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{org_id}", NIL).replace("{project_id}", NIL).replace("{vm_id}", &id).replace("{root_disk_id}", UNKNOWN);
        for method in ["get", "post", "put", "patch", "delete"] {
            let r = c.send(c.request(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), &concrete).json(&json!({}))).await;
            let label = format!("{method} {concrete}: {} {}", r.status, r.body);
            check_error_or_ok(&r.body);
            if item.get(method).is_some() {
                assert_ne!(r.status, 405, "{label}");
                assert!(!(r.status == 404 && r.body["message"].as_str().unwrap_or_default().starts_with("route ")), "not routed: {label}");
                assert!(r.status < 500, "{label}");
            } else {
                assert_eq!(r.status, 405, "{label}");
            }
        }
    }
}

/// A body that is either an error in the documented shape or not an error.
fn check_error_or_ok(b: &Value) {
    if b.get("code").is_some() {
        check_error(b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_its_way_to_running_ignores_start_and_refuses_stop_with_400() {
    // Slow boots keep the VM provisioning while we ask.
    let stack = Stack::start_with(StackOpts { sim_boot_delay_ms: 5000, ..StackOpts::default() }).await;
    let c = &stack.admin;
    let at = home();
    let id = str_of(&create(c, &at, &minimal("slow")).await["id"]).to_owned();
    let before = events(c, &id).await;
    let (s, b) = c.post_empty(&format!("{at}/vms/{id}/start")).await;
    assert_eq!(s, 202, "{b}");
    assert!(["pending", "provisioning", "starting"].contains(&str_of(&b["status"])), "{b}");
    let stop = c.post_empty(&format!("{at}/vms/{id}/stop")).await;
    assert_error(&stop, 400, "stop while provisioning");
    assert_eq!(stop.1["code"], "invalid_state");
    let after = settled(c, &id).await;
    assert_eq!(after[..before.len()], before[..], "{after:?}");
    assert_eq!(after.iter().filter(|t| *t == "operation_finished").count(), 1, "only the create's operation: {after:?}");
    wait_status(c, &at, &id, "running").await;
}
