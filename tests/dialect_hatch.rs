//! The Hatch dialect (`/vms`, seed 003) against a real stack (sim driver):
//! every example of the seed document, verbatim but for ids, with the shape
//! of each answer checked; every validation rule as a 4xx in Hatch's shape
//! that changes nothing; tenancy; `HATCH_DEFAULT_*`; templates; and the
//! OpenAPI document against the router.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const STATES: [&str; 6] = ["starting", "running", "stopping", "stopped", "snapshotted", "error"];

/// A Hatch VM object: only documented fields, each of its documented type;
/// those every VM has are there; timestamps are ISO 8601.
fn assert_vm_shape(vm: &Value) {
    let obj = vm.as_object().unwrap_or_else(|| panic!("a VM is an object: {vm}"));
    for (k, v) in obj {
        let ok = match k.as_str() {
            "id" | "image_id" | "template_id" | "state" | "guest_ip" | "guest_mac" | "tap_name" | "socket_path" | "user_data" | "created_at" | "updated_at" => {
                v.is_string()
            }
            "vcpu_count" | "mem_mib" | "ssh_port" => v.is_u64(),
            "enable_network" => v.is_boolean(),
            other => panic!("undocumented field {other}: {vm}"),
        };
        assert!(ok, "{k} has the wrong type: {vm}");
    }
    for k in ["id", "image_id", "state", "vcpu_count", "mem_mib", "enable_network", "created_at", "updated_at"] {
        assert!(obj.contains_key(k), "{k} missing: {vm}");
    }
    assert!(str_of(&vm["id"]).starts_with("vm_"), "{vm}");
    assert!(STATES.contains(&str_of(&vm["state"])), "{vm}");
    for k in ["created_at", "updated_at"] {
        OffsetDateTime::parse(str_of(&vm[k]), &Rfc3339).unwrap_or_else(|e| panic!("{k} is not ISO 8601 ({e}): {vm}"));
    }
    if vm["enable_network"] == false {
        for k in ["guest_ip", "guest_mac", "tap_name", "ssh_port"] {
            assert!(vm.get(k).is_none(), "no network, no {k}: {vm}");
        }
    }
}

/// A Hatch error: `{"error": "<message>"}` and nothing else.
fn assert_error_shape(status: u16, body: &Value, what: &str) {
    assert!((400..500).contains(&status), "{what}: {status} {body}");
    let obj = body.as_object().unwrap_or_else(|| panic!("{what}: the error is not an object: {body}"));
    assert!(obj.len() == 1 && body["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: not Hatch's error shape: {body}");
}

/// VMs the org has (that are not deleted), through `/v1`.
async fn vm_count(c: &Client) -> u64 {
    c.vm_total("").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_examples_verbatim() {
    let stack = Stack::start().await;
    let c = &stack.admin;

    // Create VM: the example request, verbatim. It answers once the VM runs.
    let r = c
        .send(
            c.request(Method::POST, "/vms")
                .header("content-type", "application/json")
                .body("{\n    \"vcpu_count\": 2,\n    \"mem_mib\": 1024,\n    \"enable_network\": true,\n    \"user_data\": \"#!/bin/bash\\necho 'Hello from Hatch'\"\n  }"),
        )
        .await;
    let vm = r.body;
    assert_eq!(r.status, 201, "{vm}");
    assert_vm_shape(&vm);
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!((vm["vcpu_count"].as_u64(), vm["mem_mib"].as_u64()), (Some(2), Some(1024)), "{vm}");
    assert_eq!(vm["image_id"], "img_default", "{vm}");
    assert_eq!(vm["user_data"], "#!/bin/bash\necho 'Hello from Hatch'", "{vm}");
    assert_eq!(vm["enable_network"], true, "{vm}");
    // User-mode networking: an address, a MAC and an SSH port; no tap on the host.
    assert!(vm["guest_ip"].is_string() && vm["guest_mac"].is_string() && vm["ssh_port"].is_u64(), "{vm}");
    assert!(vm.get("tap_name").is_none() && vm.get("template_id").is_none(), "{vm}");
    let id = str_of(&vm["id"]).to_owned();
    // The same VM through /v1: running the default image, with the user data.
    let native = c.vm(&id).await;
    assert_eq!((native["status"].as_str(), native["image"].as_str()), (Some("running"), Some("debian-minimal")), "{native}");

    // A second VM like the list example's: no network, 1 vCPU, 512 MiB, stopped.
    let (s, quiet) = c.post("/vms", &json!({"vcpu_count": 1, "mem_mib": 512, "enable_network": false})).await;
    assert_eq!(s, 201, "{quiet}");
    assert_vm_shape(&quiet);
    let quiet_id = str_of(&quiet["id"]).to_owned();

    // Stop VM: the example, verbatim; answers the VM stopped.
    let (s, stopped) = c.post_empty(&format!("/vms/{quiet_id}/stop")).await;
    assert_eq!(s, 200, "{stopped}");
    assert_vm_shape(&stopped);
    assert_eq!((stopped["state"].as_str(), stopped["enable_network"].as_bool()), (Some("stopped"), Some(false)), "{stopped}");
    assert_eq!((stopped["vcpu_count"].as_u64(), stopped["mem_mib"].as_u64()), (Some(1), Some(512)), "{stopped}");
    assert_eq!(c.vm(&quiet_id).await["status"], "stopped");

    // List VMs: a bare array, oldest first.
    let (s, list) = c.get("/vms").await;
    assert_eq!(s, 200, "{list}");
    let items = list.as_array().unwrap_or_else(|| panic!("the list is a bare array: {list}"));
    assert_eq!(items.len(), 2, "{list}");
    items.iter().for_each(assert_vm_shape);
    assert_eq!((items[0]["id"].as_str(), items[0]["state"].as_str()), (Some(id.as_str()), Some("running")), "{list}");
    assert_eq!((items[1]["id"].as_str(), items[1]["state"].as_str()), (Some(quiet_id.as_str()), Some("stopped")), "{list}");

    // Get VM.
    let (s, got) = c.get(&format!("/vms/{id}")).await;
    assert_eq!(s, 200, "{got}");
    assert_vm_shape(&got);
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["guest_ip"], vm["guest_ip"], "{got}");

    // Stop the first one too (the stop example keeps guest_ip), then start it again (vmplane's addition).
    let (s, b) = c.post_empty(&format!("/vms/{id}/stop")).await;
    assert_eq!((s, b["state"].as_str(), b["guest_ip"].as_str()), (200, Some("stopped"), vm["guest_ip"].as_str()), "{b}");
    let (s, b) = c.post_empty(&format!("/vms/{id}/start")).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("running")), "{b}");
    assert_vm_shape(&b);

    // Delete VM: {"status": "deleted"} once it is gone; then it is not found, and not listed.
    let (s, b) = c.delete(&format!("/vms/{id}")).await;
    assert_eq!((s, b.clone()), (200, json!({"status": "deleted"})));
    assert_eq!(c.vm(&id).await["status"], "deleted");
    let (s, b) = c.get(&format!("/vms/{id}")).await;
    assert_eq!(s, 404);
    assert_error_shape(s, &b, "a deleted VM");
    let (s, b) = c.delete(&format!("/vms/{id}")).await;
    assert_eq!(s, 404, "deleting twice: {b}");
    let (_, list) = c.get("/vms").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_ip_and_guest_mac_take_the_bridge() {
    let mut stack = Stack::start().await;
    // The sim worker announcing a bridge network, as a qemu worker with --bridge does.
    stack.restart_worker_with(&["--bridge", "br0", "--bridge-cidr", "172.16.0.0/24"]).await;
    wait_for("the host to announce its bridge", WAIT, async || match stack.admin.try_get("/v1/hosts").await {
        Some((200, hosts)) if hosts[0]["bridge_cidr"] == "172.16.0.0/24" && hosts[0]["status"] == "online" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let c = &stack.admin;

    // The example response's addresses, asked for.
    let body = json!({"vcpu_count": 2, "mem_mib": 1024, "enable_network": true, "guest_ip": "172.16.0.10", "guest_mac": "02:FC:00:00:00:0A",
        "user_data": "#!/bin/bash\necho 'Hello from Hatch'"});
    let (s, vm) = c.post("/vms", &body).await;
    assert_eq!(s, 201, "{vm}");
    assert_vm_shape(&vm);
    assert_eq!((vm["guest_ip"].as_str(), vm["guest_mac"].as_str()), (Some("172.16.0.10"), Some("02:FC:00:00:00:0A")), "{vm}");
    let id = str_of(&vm["id"]);
    let tap = format!("vt{}", &id[id.len() - 12..]);
    assert_eq!(vm["tap_name"], tap.as_str(), "the VM's tap on the bridge: {vm}");
    assert!(vm.get("ssh_port").is_none(), "on the bridge, SSH goes to guest_ip:22: {vm}");
    assert_eq!(c.vm(id).await["network"]["mode"], "bridge");

    // The same address or MAC again: taken (409); outside the bridge network: 400; nothing made.
    let before = vm_count(c).await;
    for (body, status) in [
        (json!({"guest_ip": "172.16.0.10"}), 409),
        (json!({"guest_ip": "172.16.0.11", "guest_mac": "02:fc:00:00:00:0a"}), 409),
        (json!({"guest_ip": "10.1.2.3"}), 400),
    ] {
        let (s, b) = c.post("/vms", &body).await;
        assert_eq!(s, status, "{body}: {b}");
        assert_error_shape(s, &b, &body.to_string());
    }
    assert_eq!(vm_count(c).await, before, "refused creates made nothing");

    // Without guest_ip a VM uses user-mode networking, bridge or not ...
    let (s, vm) = c.post("/vms", &json!({})).await;
    assert_eq!(s, 201, "{vm}");
    assert!(vm["ssh_port"].is_u64() && vm.get("tap_name").is_none(), "{vm}");
    // ... unless its template says bridge: then it gets the first free address, as Hatch does.
    let (s, t) = c.post("/v1/templates", &json!({"name": "bridged", "network_mode": "bridge"})).await;
    assert_eq!(s, 201, "{t}");
    let (s, vm) = c.post("/vms", &json!({"template_id": "bridged"})).await;
    assert_eq!(s, 201, "{vm}");
    assert_eq!(vm["guest_ip"], "172.16.0.2", "{vm}");
    assert!(vm["tap_name"].is_string() && vm.get("ssh_port").is_none(), "{vm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_4xx_in_hatchs_shape_and_change_nothing() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let (s, vm) = c.post("/vms", &json!({})).await;
    assert_eq!(s, 201, "{vm}");
    let id = str_of(&vm["id"]).to_owned();
    let unknown = "vm_01jdx3v9k6m2w8q4r5t7y9z0ab";
    let before = vm_count(c).await;

    enum Body {
        Json(Value),
        Raw(&'static str),
        None,
    }
    use Body::*;
    let huge = "x".repeat(65 * 1024);
    let cases: Vec<(&str, Method, String, Body, u16)> = vec![
        ("zero vcpu_count", Method::POST, "/vms".into(), Json(json!({"vcpu_count": 0})), 400),
        ("negative vcpu_count", Method::POST, "/vms".into(), Json(json!({"vcpu_count": -2})), 400),
        ("too many vcpus", Method::POST, "/vms".into(), Json(json!({"vcpu_count": 100000})), 400),
        ("vcpu_count not a number", Method::POST, "/vms".into(), Json(json!({"vcpu_count": "two"})), 400),
        ("fractional vcpu_count", Method::POST, "/vms".into(), Json(json!({"vcpu_count": 1.5})), 400),
        ("zero mem_mib", Method::POST, "/vms".into(), Json(json!({"mem_mib": 0})), 400),
        ("negative mem_mib", Method::POST, "/vms".into(), Json(json!({"mem_mib": -512})), 400),
        ("too little mem_mib", Method::POST, "/vms".into(), Json(json!({"mem_mib": 32})), 400),
        ("guest_mac not a MAC", Method::POST, "/vms".into(), Json(json!({"guest_mac": "zz"})), 400),
        ("guest_mac too short", Method::POST, "/vms".into(), Json(json!({"guest_mac": "02:fc:00:00:00"})), 400),
        ("guest_mac multicast", Method::POST, "/vms".into(), Json(json!({"guest_mac": "03:fc:00:00:00:0a"})), 400),
        ("guest_ip not an address", Method::POST, "/vms".into(), Json(json!({"guest_ip": "abc"})), 400),
        ("guest_ip out of range", Method::POST, "/vms".into(), Json(json!({"guest_ip": "300.1.1.1"})), 400),
        ("guest_ip IPv6", Method::POST, "/vms".into(), Json(json!({"guest_ip": "fe80::1"})), 400),
        ("guest_ip without a bridge", Method::POST, "/vms".into(), Json(json!({"guest_ip": "172.16.0.10"})), 400),
        ("guest_ip without network", Method::POST, "/vms".into(), Json(json!({"enable_network": false, "guest_ip": "172.16.0.10"})), 400),
        ("guest_mac without network", Method::POST, "/vms".into(), Json(json!({"enable_network": false, "guest_mac": "02:fc:00:00:00:0a"})), 400),
        ("enable_network not a boolean", Method::POST, "/vms".into(), Json(json!({"enable_network": "yes"})), 400),
        ("unknown image_id", Method::POST, "/vms".into(), Json(json!({"image_id": "no-such-image"})), 400),
        ("unknown template_id", Method::POST, "/vms".into(), Json(json!({"template_id": "tpl_01jdx3v9k6m2w8q4r5t7y9z0ab"})), 400),
        ("boot_args setting vmplane parameters", Method::POST, "/vms".into(), Json(json!({"boot_args": "vmplane.net=10.0.0.2/24,10.0.0.1"})), 400),
        ("user_data over 64 KiB", Method::POST, "/vms".into(), Json(json!({"user_data": huge})), 400),
        ("unknown field", Method::POST, "/vms".into(), Json(json!({"name": "web"})), 400),
        ("malformed JSON", Method::POST, "/vms".into(), Raw("{\"vcpu_count\": "), 400),
        ("not an object", Method::POST, "/vms".into(), Raw("[]"), 400),
        ("malformed id", Method::GET, "/vms/not-an-id".into(), None, 404),
        ("unknown id", Method::GET, format!("/vms/{unknown}"), None, 404),
        ("stop unknown", Method::POST, format!("/vms/{unknown}/stop"), None, 404),
        ("start unknown", Method::POST, format!("/vms/{unknown}/start"), None, 404),
        ("delete unknown", Method::DELETE, format!("/vms/{unknown}"), None, 404),
        ("delete malformed id", Method::DELETE, "/vms/vm_nope".into(), None, 404),
        ("method not served", Method::PUT, "/vms".into(), None, 405),
        ("method not served on a VM", Method::PATCH, format!("/vms/{id}"), None, 405),
    ];
    for (what, method, path, body, status) in cases {
        let rb = c.request(method, &path);
        let rb = match body {
            Json(v) => rb.json(&v),
            Raw(s) => rb.header("content-type", "application/json").body(s),
            None => rb,
        };
        let r = c.send(rb).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_error_shape(r.status, &r.body, what);
    }
    // Without a credential, or with a wrong one: 401 in Hatch's shape.
    for client in [stack.anonymous(), c.with_token("not-a-token")] {
        let (s, b) = client.get("/vms").await;
        assert_eq!(s, 401, "{b}");
        assert_error_shape(s, &b, "no credential");
        let (s, b) = client.post("/vms", &json!({})).await;
        assert_eq!(s, 401, "{b}");
    }
    assert_eq!(vm_count(c).await, before, "no refused request made a VM");
    let (_, still) = c.get(&format!("/vms/{id}")).await;
    assert_eq!(still["state"], "running", "nor changed one: {still}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_vm_is_not_found() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let (s, vm) = c.post("/vms", &json!({})).await;
    assert_eq!(s, 201, "{vm}");
    let id = str_of(&vm["id"]).to_owned();
    let org = c.create_org("elsewhere").await;
    let other = stack.client(&c.create_key(&org, "k").await);

    for (method, path) in [
        (Method::GET, format!("/vms/{id}")),
        (Method::POST, format!("/vms/{id}/stop")),
        (Method::POST, format!("/vms/{id}/start")),
        (Method::DELETE, format!("/vms/{id}")),
    ] {
        let r = other.send(other.request(method.clone(), &path)).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert_error_shape(r.status, &r.body, &path);
    }
    let (s, list) = other.get("/vms").await;
    assert_eq!((s, list.clone()), (200, json!([])), "{list}");
    // Its own VM is its own, and the admin's list does not show it.
    let (s, mine) = other.post("/vms", &json!({"vcpu_count": 1})).await;
    assert_eq!(s, 201, "{mine}");
    let (_, list) = c.get("/vms").await;
    assert_eq!(list.as_array().map(|a| a.iter().map(|v| v["id"].clone()).collect::<Vec<_>>()), Some(vec![json!(id)]), "{list}");
    let (_, still) = c.get(&format!("/vms/{id}")).await;
    assert_eq!(still["state"], "running", "{still}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_come_from_the_environment_and_templates_fill_what_a_request_leaves_out() {
    let env = vec![("HATCH_DEFAULT_VCPU".to_owned(), "2".to_owned()), ("HATCH_DEFAULT_MEM_MIB".to_owned(), "768".to_owned())];
    let stack = Stack::start_with(StackOpts { gateway_env: env, ..StackOpts::default() }).await;
    let c = &stack.admin;

    let (s, vm) = c.post("/vms", &json!({})).await;
    assert_eq!(s, 201, "{vm}");
    assert_eq!((vm["vcpu_count"].as_u64(), vm["mem_mib"].as_u64()), (Some(2), Some(768)), "HATCH_DEFAULT_*: {vm}");
    let (s, vm) = c.post("/vms", &json!({"vcpu_count": 1, "mem_mib": 512})).await;
    assert_eq!(s, 201, "{vm}");
    assert_eq!((vm["vcpu_count"].as_u64(), vm["mem_mib"].as_u64()), (Some(1), Some(512)), "the request wins: {vm}");

    // A template (/v1/templates): its values beat Hatch's defaults, the request beats both.
    let (s, t) =
        c.post("/v1/templates", &json!({"name": "big", "vcpus": 4, "memory_mib": 2048, "user_data": "#!/bin/sh\necho tpl", "enable_network": false})).await;
    assert_eq!(s, 201, "{t}");
    let tpl = str_of(&t["id"]).to_owned();
    let (s, vm) = c.post("/vms", &json!({"template_id": tpl, "mem_mib": 1024})).await;
    assert_eq!(s, 201, "{vm}");
    assert_vm_shape(&vm);
    assert_eq!((vm["vcpu_count"].as_u64(), vm["mem_mib"].as_u64()), (Some(4), Some(1024)), "{vm}");
    assert_eq!((vm["user_data"].as_str(), vm["enable_network"].as_bool()), (Some("#!/bin/sh\necho tpl"), Some(false)), "{vm}");
    assert_eq!(vm["template_id"], tpl.as_str(), "{vm}");
    assert!(vm.get("guest_ip").is_none() && vm.get("ssh_port").is_none(), "{vm}");
    // By name too; enable_network given wins over the template's.
    let (s, vm) = c.post("/vms", &json!({"template_id": "big", "enable_network": true, "image_id": "ubuntu2404"})).await;
    assert_eq!(s, 201, "{vm}");
    assert_eq!((vm["vcpu_count"].as_u64(), vm["enable_network"].as_bool(), vm["template_id"].as_str()), (Some(4), Some(true), Some(tpl.as_str())), "{vm}");
    assert!(vm["ssh_port"].is_u64(), "{vm}");
    // A catalog name runs its installed image, and the answer says which.
    assert_eq!(vm["image_id"], "ubuntu-2404", "{vm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_router_agree() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let (s, doc) = stack.anonymous().get("/openapi/hatch.json").await;
    assert_eq!(s, 200, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys().filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str())) {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    // Every operation of the seed document (and vmplane's start).
    for (method, path) in
        [("POST", "/vms"), ("GET", "/vms"), ("GET", "/vms/{id}"), ("DELETE", "/vms/{id}"), ("POST", "/vms/{id}/stop"), ("POST", "/vms/{id}/start")]
    {
        assert!(documented.iter().any(|(m, p)| m == method && p == path), "{method} {path} is not documented");
    }
    assert_eq!(documented.len(), 6, "{documented:?}");

    // Every documented operation is served (deletes last, so the VM is there for the rest) ...
    let (_, vm) = c.post("/vms", &json!({})).await;
    let id = str_of(&vm["id"]).to_owned();
    documented.sort_by_key(|(m, _)| m == "DELETE");
    for (method, path) in &documented {
        let concrete = path.replace("{id}", &id);
        let mut rb = c.request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete);
        if method == "POST" && path == "/vms" {
            rb = rb.json(&json!({}));
        }
        let r = c.send(rb).await;
        assert!((200..300).contains(&r.status), "{method} {concrete}: {} {}", r.status, r.body);
    }
    // ... and nothing else under those paths: other methods are 405 in Hatch's shape.
    for path in paths.keys() {
        let concrete = path.replace("{id}", &id);
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if documented.iter().any(|(m, p)| m == method && p == path) {
                continue;
            }
            let r = c.send(c.request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete)).await;
            assert_eq!(r.status, 405, "{method} {concrete}: {}", r.body);
            assert_error_shape(r.status, &r.body, &format!("{method} {concrete}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_does_not_get_there_is_a_409_naming_it_and_shows_as_error() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    // The sim driver fails the step a VM's `sim.fail` label names; a template carries labels to a Hatch create.
    for (name, step) in [("no-boot", "boot"), ("no-stop", "power_off")] {
        let (s, t) = c.post("/v1/templates", &json!({"name": name, "labels": {"sim.fail": step}})).await;
        assert_eq!(s, 201, "{t}");
    }

    // A create whose guest does not boot: 409 naming the VM, which stays in state error until deleted.
    let (s, b) = c.post("/vms", &json!({"template_id": "no-boot"})).await;
    assert_eq!(s, 409, "{b}");
    assert_error_shape(s, &b, "a failed create");
    let (_, list) = c.get("/vms").await;
    let failed = list.as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("the failed VM is listed: {list}"));
    let id = str_of(&failed["id"]).to_owned();
    assert!(str_of(&b["error"]).contains(&id) && str_of(&b["error"]).contains("injected failure at boot"), "{b}");
    assert_vm_shape(&failed);
    assert_eq!(failed["state"], "error", "{failed}");
    let (s, b) = c.delete(&format!("/vms/{id}")).await;
    assert_eq!((s, b), (200, json!({"status": "deleted"})));

    // A stop that fails: 409, and the VM shows what became of it.
    let (s, vm) = c.post("/vms", &json!({"template_id": "no-stop"})).await;
    assert_eq!((s, vm["state"].as_str()), (201, Some("running")), "{vm}");
    let id = str_of(&vm["id"]).to_owned();
    let (s, b) = c.post_empty(&format!("/vms/{id}/stop")).await;
    assert_eq!(s, 409, "{b}");
    assert_error_shape(s, &b, "a failed stop");
    assert!(str_of(&b["error"]).contains("injected failure at power_off"), "{b}");
    let (s, vm) = c.get(&format!("/vms/{id}")).await;
    assert_eq!((s, vm["state"].as_str()), (200, Some("error")), "{vm}");
}
