//! The Visor dialect (`/api/vm.*`, docs/dialects/visor.md) against a real
//! stack (gateway, sim worker, NATS): every example request of the Visor
//! document verbatim (local ids substituted), checked against its documented
//! response shape; every validation rule as a table-driven 4xx in tRPC's
//! error shape that changes nothing; tenancy; the web terminal; and the
//! OpenAPI document against the router.

#[path = "common/mod.rs"]
mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// A well-formed public key (the seed's `ssh-ed25519 AAAA...` is a placeholder).
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZpc29yLWRpYWxlY3QtdGVzdC1rZXktMDEyMzQ1Njc4OQ visor@test";
/// The seed's launch `userData`.
const USER_DATA: &str = "#!/bin/bash\napt-get update && apt-get install -y docker.io";

/// The procedures of the Visor document, with their methods.
const PROCEDURES: [(&str, &str); 11] = [
    ("GET", "/api/vm.all"),
    ("GET", "/api/vm.one"),
    ("POST", "/api/vm.launch"),
    ("POST", "/api/vm.start"),
    ("POST", "/api/vm.stop"),
    ("POST", "/api/vm.restart"),
    ("DELETE", "/api/vm.destroy"),
    ("GET", "/api/vm.volumes"),
    ("POST", "/api/vm.attachVolume"),
    ("POST", "/api/vm.detachVolume"),
    ("GET", "/api/vm.terminal"),
];

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// `{"result":{"data": X}}` -> X, asserting the envelope has nothing else.
fn data(body: &Value) -> &Value {
    assert_eq!(keys(body), set(&["result"]), "{body}");
    assert_eq!(keys(&body["result"]), set(&["data"]), "{body}");
    &body["result"]["data"]
}

/// A tRPC error body for `procedure` with `code` and `status`.
fn assert_trpc_error(status: u16, body: &Value, want_status: u16, want_code: &str, procedure: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(keys(body), set(&["error"]), "{what}: {body}");
    let e = &body["error"];
    assert_eq!(keys(e), set(&["message", "code", "data"]), "{what}: {body}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    assert_eq!(e["code"], want_code, "{what}: {body}");
    assert_eq!(e["data"], json!({"code": want_code, "httpStatus": want_status, "path": procedure}), "{what}: {body}");
}

/// `2026-01-10T10:00:00Z`.
fn assert_timestamp(v: &Value) {
    let s = str_of(v);
    let b = s.as_bytes();
    assert!(s.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z', "not a Visor timestamp: {s}");
}

async fn delete_json(c: &Client, path: &str, body: &Value) -> Resp {
    c.send(c.request(Method::DELETE, path).json(body)).await
}

/// `vm.one` until the VM has Visor status `status` and its operation has
/// finished (its last event, in `/v1`), so the next command is not refused
/// as busy.
async fn wait_visor_status(c: &Client, vm: &str, status: &str) -> Value {
    wait_for(&format!("{vm} to be {status} in vm.one"), WAIT, async || {
        let (s, b) = c.get(&format!("/api/vm.one?vmId={vm}")).await;
        if s != 200 || b["result"]["data"]["status"] != status {
            return Err(format!("{s} {b}"));
        }
        let types = c.event_types(vm).await;
        if types.last().map(String::as_str) == Some("operation_finished") { Ok(b["result"]["data"].clone()) } else { Err(format!("events {types:?}")) }
    })
    .await
}

/// Wait until the VM's last operation has finished (its last event, in `/v1`).
async fn wait_settled(c: &Client, vm: &str) {
    wait_for(&format!("{vm}'s operation to finish"), WAIT, async || {
        let types = c.event_types(vm).await;
        if types.last().map(String::as_str) == Some("operation_finished") { Ok(()) } else { Err(format!("events {types:?}")) }
    })
    .await
}

/// An org with an API key: (org id, the key's secret, a client acting with it).
async fn tenant(stack: &Stack, name: &str) -> (String, String, Client) {
    let org = stack.admin.create_org(name).await;
    let key = stack.admin.create_key(&org, name).await;
    (org, key.clone(), stack.client(&key))
}

/// Launch a running VM through Visor; returns its id.
async fn launched(c: &Client, org: &str, name: &str) -> String {
    let (s, b) = c.post("/api/vm.launch", &json!({"organizationId": org, "name": name, "plan": "nano", "region": "us-east", "os": "debian-12"})).await;
    assert_eq!(s, 201, "{b}");
    let id = str_of(&data(&b)["id"]).to_owned();
    wait_visor_status(c, &id, "running").await;
    id
}

/// A WebSocket to `vm.terminal`, or the refusal's status and tRPC body.
async fn terminal(
    base: &str,
    token: &str,
    query: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, (u16, Value)> {
    let url = format!("{}/api/vm.terminal?{query}", base.replace("http://", "ws://"));
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().map(|b| serde_json::from_slice(b).unwrap_or(Value::Null)).unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("terminal websocket: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_of_the_visor_document_verbatim() {
    let stack = Stack::start().await;
    // The sim host serves the default region and has room for plan power (8 vCPUs, 16 GiB, 320 GB).
    let host = stack.wait_host_online().await;
    assert_eq!(host["region"], "us-east", "{host}");
    assert!(host["cpus"].as_u64() >= Some(8) && host["memory_mib"].as_u64() >= Some(16384) && host["disk_gb"].as_u64() >= Some(320), "{host}");
    // YOUR_TOKEN: an API key of org_abc123 (here: a real org).
    let (org, secret, c) = tenant(&stack, "abc123").await;

    // Launch VM, verbatim: the document's key is a placeholder, which no
    // guest could use, so it is refused, by its field.
    let mut launch = json!({
        "organizationId": org,
        "name": "ml-training",
        "plan": "power",
        "region": "us-east",
        "os": "ubuntu-22.04",
        "sshKeys": ["ssh-ed25519 AAAA..."],
        "userData": "#!/bin/bash\napt-get update && apt-get install -y docker.io"
    });
    let (s, b) = c.post("/api/vm.launch", &launch).await;
    assert_trpc_error(s, &b, 400, "BAD_REQUEST", "vm.launch", "the placeholder key");
    assert!(str_of(&b["error"]["message"]).starts_with("sshKeys:"), "{b}");
    // With a real key: 201, provisioning, no address yet.
    launch["sshKeys"] = json!([KEY]);
    let (s, b) = c.post("/api/vm.launch", &launch).await;
    assert_eq!(s, 201, "{b}");
    let d = data(&b);
    assert_eq!(keys(d), set(&["id", "name", "status", "ip", "createdAt"]), "{b}");
    assert_eq!((d["name"].as_str(), d["status"].as_str(), &d["ip"]), (Some("ml-training"), Some("provisioning"), &Value::Null), "{b}");
    assert_timestamp(&d["createdAt"]);
    let vm = str_of(&d["id"]).to_owned();
    assert!(vm.starts_with("vm_"), "{vm}");

    // It transitions to running.
    wait_visor_status(&c, &vm, "running").await;
    // The same VM in /v1: the plan filled the spec, the catalog name resolved
    // to the installed image, userData and sshKeys went to the guest's cloud-init.
    let v1 = stack.admin.with_header("x-vmplane-org", &org).vm(&vm).await;
    assert_eq!((v1["vcpus"].as_u64(), v1["memory_mib"].as_u64(), v1["disk_gb"].as_u64()), (Some(8), Some(16384), Some(320)), "{v1}");
    assert_eq!((v1["plan"].as_str(), v1["region"].as_str(), v1["image"].as_str()), (Some("power"), Some("us-east"), Some("ubuntu-2204")), "{v1}");
    assert_eq!((v1["user_data"].as_str(), &v1["ssh_keys"]), (Some(USER_DATA), &json!([KEY])), "{v1}");

    // List VMs.
    let (s, b) = c.get(&format!("/api/vm.all?organizationId={org}")).await;
    assert_eq!(s, 200, "{b}");
    let list = data(&b).as_array().unwrap_or_else(|| panic!("not a list: {b}"));
    assert_eq!(list.len(), 1, "{b}");
    let item = &list[0];
    assert_eq!(keys(item), set(&["id", "name", "plan", "region", "os", "ip", "status", "createdAt"]), "{b}");
    assert_eq!(
        (item["id"].as_str(), item["name"].as_str(), item["plan"].as_str(), item["region"].as_str(), item["os"].as_str(), item["status"].as_str()),
        (Some(vm.as_str()), Some("ml-training"), Some("power"), Some("us-east"), Some("ubuntu-22.04"), Some("running")),
        "{b}"
    );
    // User-mode networking: no address outside the host (docs/dialects/visor.md).
    assert_eq!(item["ip"], Value::Null, "{b}");
    assert_timestamp(&item["createdAt"]);

    // Get VM.
    let (s, b) = c.get(&format!("/api/vm.one?vmId={vm}")).await;
    assert_eq!(s, 200, "{b}");
    let one = data(&b).clone();
    assert_eq!(
        keys(&one),
        set(&["id", "name", "plan", "region", "os", "ip", "privateIp", "status", "specs", "sshKeys", "volumes", "createdAt", "sshPort"]),
        "{one}"
    );
    assert_eq!(one["specs"], json!({"vcpu": 8, "memoryGb": 16, "diskGb": 320, "diskType": "ssd"}), "{one}");
    assert_eq!((one["os"].as_str(), one["status"].as_str(), &one["ip"]), (Some("ubuntu-22.04"), Some("running"), &Value::Null), "{one}");
    assert!(one["privateIp"].as_str().is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()), "{one}");
    assert!(one["sshPort"].as_u64().is_some(), "{one}");
    assert_eq!((&one["sshKeys"], &one["volumes"]), (&json!([KEY]), &json!([])), "{one}");
    assert_eq!(one["createdAt"], item["createdAt"]);
    // tRPC clients send the input as `?input=<JSON>`: the same answer.
    let input = format!("%7B%22vmId%22%3A%22{vm}%22%7D");
    let (s, b2) = c.get(&format!("/api/vm.one?input={input}")).await;
    assert_eq!((s, data(&b2)), (200, &one), "{b2}");

    // Volume management, on a volume of the org (training-data, 500 GB).
    let (s, vol) = c.post("/v1/volumes", &json!({"name": "training-data", "size_gb": 500})).await;
    assert_eq!(s, 202, "{vol}");
    c.wait_op_succeeded(str_of(&vol["operation"]["id"])).await;
    let vol = str_of(&vol["id"]).to_owned();
    // List Volumes: none yet.
    let (s, b) = c.get(&format!("/api/vm.volumes?vmId={vm}")).await;
    assert_eq!((s, data(&b)), (200, &json!([])), "{b}");
    // Attach Volume.
    let (s, b) = c.post("/api/vm.attachVolume", &json!({"vmId": vm, "volumeId": vol, "mountPath": "/mnt/data"})).await;
    assert_eq!(s, 200, "{b}");
    let shown = json!({"id": vol, "name": "training-data", "sizeGb": 500, "mountPath": "/mnt/data"});
    assert_eq!(data(&b), &shown, "{b}");
    wait_for("the volume listed", WAIT, async || {
        let (s, b) = c.get(&format!("/api/vm.volumes?vmId={vm}")).await;
        if s == 200 && data(&b) == &json!([shown]) { Ok(()) } else { Err(format!("{s} {b}")) }
    })
    .await;
    wait_settled(&c, &vm).await;
    let (_, b) = c.get(&format!("/api/vm.one?vmId={vm}")).await;
    assert_eq!(data(&b)["volumes"], json!([shown]), "{b}");
    // Detach Volume.
    let (s, b) = c.post("/api/vm.detachVolume", &json!({"vmId": vm, "volumeId": vol})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(data(&b), &json!({"id": vol, "name": "training-data", "sizeGb": 500, "mountPath": null}), "{b}");
    wait_for("the volume gone from the list", WAIT, async || {
        let (s, b) = c.get(&format!("/api/vm.volumes?vmId={vm}")).await;
        if s == 200 && data(&b) == &json!([]) { Ok(()) } else { Err(format!("{s} {b}")) }
    })
    .await;
    wait_settled(&c, &vm).await;
    // ... and attached again, to see destroy keep it.
    let (s, b) = c.post("/api/vm.attachVolume", &json!({"vmId": vm, "volumeId": vol, "mountPath": "/mnt/data"})).await;
    assert_eq!(s, 200, "{b}");
    wait_for("the volume listed again", WAIT, async || {
        let (s, b) = c.get(&format!("/api/vm.volumes?vmId={vm}")).await;
        if s == 200 && data(&b) == &json!([shown]) { Ok(()) } else { Err(format!("{s} {b}")) }
    })
    .await;
    wait_settled(&c, &vm).await;

    // Web Terminal: the simulated console echoes.
    let mut ws = terminal(&stack.base, &secret, &format!("vmId={vm}")).await.expect("vm.terminal");
    ws.send(tungstenite::Message::binary(b"visor-term".to_vec())).await.unwrap();
    let mut echoed = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            echoed.extend_from_slice(&m.into_data());
            if echoed.windows(10).any(|w| w == b"visor-term") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "echo: {}", String::from_utf8_lossy(&echoed));
    drop(ws);

    // Stop VM: stopping, then stopped.
    let (s, b) = c.post("/api/vm.stop", &json!({ "vmId": vm })).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((data(&b)["id"].as_str(), data(&b)["status"].as_str()), (Some(vm.as_str()), Some("stopping")), "{b}");
    wait_visor_status(&c, &vm, "stopped").await;
    // The terminal needs a running VM.
    let (s, b) = terminal(&stack.base, &secret, &format!("vmId={vm}")).await.expect_err("refused");
    assert_trpc_error(s, &b, 409, "CONFLICT", "vm.terminal", "terminal of a stopped VM");

    // Start VM.
    let (s, b) = c.post("/api/vm.start", &json!({ "vmId": vm })).await;
    assert_eq!((s, data(&b)["status"].as_str()), (200, Some("provisioning")), "{b}");
    wait_visor_status(&c, &vm, "running").await;

    // Restart VM.
    let (s, b) = c.post("/api/vm.restart", &json!({ "vmId": vm })).await;
    assert_eq!((s, data(&b)["status"].as_str()), (200, Some("restarting")), "{b}");
    wait_visor_status(&c, &vm, "running").await;

    // Destroy VM: 204 No Content; the VM is gone, its volume detached and kept.
    let r = delete_json(&c, "/api/vm.destroy", &json!({ "vmId": vm })).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(r.body, Value::String(String::new()), "204 has no body");
    wait_for("the destroyed VM gone", WAIT, async || {
        let (s, b) = c.get(&format!("/api/vm.one?vmId={vm}")).await;
        if s == 404 { Ok(b) } else { Err(format!("{s} {b}")) }
    })
    .await;
    let (s, b) = c.get(&format!("/api/vm.one?vmId={vm}")).await;
    assert_trpc_error(s, &b, 404, "NOT_FOUND", "vm.one", "a destroyed VM");
    let (s, b) = c.get(&format!("/api/vm.all?organizationId={org}")).await;
    assert_eq!((s, data(&b)), (200, &json!([])), "{b}");
    let (s, v) = c.get(&format!("/v1/volumes/{vol}")).await;
    assert_eq!((s, v["status"].as_str(), &v["vm_id"]), (200, Some("available"), &Value::Null), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_is_a_trpc_4xx_that_changes_nothing() {
    let stack = Stack::start().await;
    let (org, _, c) = tenant(&stack, "acme").await;
    let vm = launched(&c, &org, "keep").await;
    let (s, vol) = c.post("/v1/volumes", &json!({"name": "data", "size_gb": 1})).await;
    assert_eq!(s, 202, "{vol}");
    c.wait_op_succeeded(str_of(&vol["operation"]["id"])).await;
    let vol = str_of(&vol["id"]).to_owned();
    let unknown_vm = "vm_01arz3ndektsv4rrffq69g5fav";
    let unknown_vol = "vol_01arz3ndektsv4rrffq69g5fav";
    let base = json!({"organizationId": org, "name": "web", "plan": "small", "region": "us-east", "os": "debian-12"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };

    // (what, method, path, body (JSON) or None, status, tRPC code, message fragment)
    type Row = (&'static str, Method, String, Option<Value>, u16, &'static str, &'static str);
    let mut rows: Vec<Row> = vec![];
    let launch = |what, body, code, fragment| -> Row { (what, Method::POST, "/api/vm.launch".into(), Some(body), 400, code, fragment) };
    for field in ["organizationId", "name", "plan", "region", "os"] {
        rows.push(launch("launch without a required field", without(field), "BAD_REQUEST", field));
        rows.push(launch("launch with an empty required field", with(field, json!("")), "BAD_REQUEST", field));
        rows.push(launch("launch with a required field not a string", with(field, json!(7)), "BAD_REQUEST", "not of type"));
    }
    rows.extend([
        launch("unknown plan", with("plan", json!("huge")), "BAD_REQUEST", "plan `huge`"),
        launch("unknown region", with("region", json!("mars-1")), "BAD_REQUEST", "region `mars-1`"),
        launch("a region no host serves", with("region", json!("eu-west")), "BAD_REQUEST", "eu-west"),
        launch("unknown os", with("os", json!("windows-11")), "BAD_REQUEST", "windows-11"),
        launch("a name that is not a DNS label", with("name", json!("ML_Training!")), "BAD_REQUEST", "name:"),
        launch("a malformed organizationId", with("organizationId", json!("org_abc123")), "BAD_REQUEST", "organizationId"),
        launch("sshKeys not an array", with("sshKeys", json!(KEY)), "BAD_REQUEST", "not of type"),
        launch("an sshKeys entry that is no key", with("sshKeys", json!(["not a key"])), "BAD_REQUEST", "sshKeys:"),
        launch("more than 10 sshKeys", with("sshKeys", json!(vec![KEY; 11])), "BAD_REQUEST", "sshKeys:"),
        launch("userData not a string", with("userData", json!(42)), "BAD_REQUEST", "userData"),
        launch("userData over 64 KiB", with("userData", json!("x".repeat(65 * 1024))), "BAD_REQUEST", "userData:"),
        launch("an unknown field", with("image", json!("debian-12")), "BAD_REQUEST", "image"),
        launch("not an object", json!(["web"]), "BAD_REQUEST", "object"),
    ]);
    let post = |path: &str, what, body: Value, status, code, fragment| -> Row { (what, Method::POST, path.to_owned(), Some(body), status, code, fragment) };
    for path in ["/api/vm.start", "/api/vm.stop", "/api/vm.restart"] {
        rows.push(post(path, "no vmId", json!({}), 400, "BAD_REQUEST", "vmId"));
        rows.push(post(path, "a malformed vmId", json!({"vmId": "abc123"}), 400, "BAD_REQUEST", "vmId"));
        rows.push(post(path, "an unknown vmId", json!({"vmId": unknown_vm}), 404, "NOT_FOUND", unknown_vm));
    }
    rows.extend([
        ("destroy without vmId", Method::DELETE, "/api/vm.destroy".to_owned(), Some(json!({})), 400, "BAD_REQUEST", "vmId"),
        ("destroy an unknown VM", Method::DELETE, "/api/vm.destroy".into(), Some(json!({"vmId": unknown_vm})), 404, "NOT_FOUND", unknown_vm),
        ("one without vmId", Method::GET, "/api/vm.one".into(), None, 400, "BAD_REQUEST", "vmId"),
        ("one with a malformed vmId", Method::GET, "/api/vm.one?vmId=vm_abc123".into(), None, 400, "BAD_REQUEST", "vmId"),
        ("one of an unknown VM", Method::GET, format!("/api/vm.one?vmId={unknown_vm}"), None, 404, "NOT_FOUND", unknown_vm),
        ("one with an unknown parameter", Method::GET, format!("/api/vm.one?vmId={vm}&verbose=1"), None, 400, "BAD_REQUEST", "verbose"),
        ("one with input that is not JSON", Method::GET, "/api/vm.one?input=%7Bnope".into(), None, 400, "PARSE_ERROR", "input"),
        ("all without organizationId", Method::GET, "/api/vm.all".into(), None, 400, "BAD_REQUEST", "organizationId"),
        ("volumes without vmId", Method::GET, "/api/vm.volumes".into(), None, 400, "BAD_REQUEST", "vmId"),
        ("volumes of an unknown VM", Method::GET, format!("/api/vm.volumes?vmId={unknown_vm}"), None, 404, "NOT_FOUND", unknown_vm),
        ("terminal without vmId", Method::GET, "/api/vm.terminal".into(), None, 400, "BAD_REQUEST", "vmId"),
        ("terminal of an unknown VM", Method::GET, format!("/api/vm.terminal?vmId={unknown_vm}"), None, 404, "NOT_FOUND", unknown_vm),
        ("terminal without a WebSocket upgrade", Method::GET, format!("/api/vm.terminal?vmId={vm}"), None, 400, "BAD_REQUEST", "WebSocket"),
        post("/api/vm.attachVolume", "attach without volumeId", json!({"vmId": vm}), 400, "BAD_REQUEST", "volumeId"),
        post("/api/vm.attachVolume", "attach without vmId", json!({"volumeId": vol}), 400, "BAD_REQUEST", "vmId"),
        post(
            "/api/vm.attachVolume",
            "attach with a relative mountPath",
            json!({"vmId": vm, "volumeId": vol, "mountPath": "mnt"}),
            400,
            "BAD_REQUEST",
            "mountPath",
        ),
        post("/api/vm.attachVolume", "attach an unknown volume", json!({"vmId": vm, "volumeId": unknown_vol}), 404, "NOT_FOUND", unknown_vol),
        post("/api/vm.attachVolume", "attach to an unknown VM", json!({"vmId": unknown_vm, "volumeId": vol}), 404, "NOT_FOUND", unknown_vm),
        post("/api/vm.detachVolume", "detach a volume not attached", json!({"vmId": vm, "volumeId": vol}), 409, "CONFLICT", "not attached"),
        post(
            "/api/vm.detachVolume",
            "detach with a mountPath",
            json!({"vmId": vm, "volumeId": vol, "mountPath": "/mnt/data"}),
            400,
            "BAD_REQUEST",
            "mountPath",
        ),
        post("/api/vm.detachVolume", "detach without volumeId", json!({"vmId": vm}), 400, "BAD_REQUEST", "volumeId"),
        ("launch with GET", Method::GET, "/api/vm.launch".into(), None, 405, "METHOD_NOT_SUPPORTED", "method"),
        ("destroy with POST", Method::POST, "/api/vm.destroy".into(), Some(json!({"vmId": vm})), 405, "METHOD_NOT_SUPPORTED", "method"),
        ("all with POST", Method::POST, "/api/vm.all".into(), Some(json!({"organizationId": org})), 405, "METHOD_NOT_SUPPORTED", "method"),
    ]);
    for (what, method, path, body, status, code, fragment) in rows {
        let mut rb = c.request(method.clone(), &path);
        if let Some(body) = &body {
            rb = rb.json(body);
        }
        let r = c.send(rb).await;
        let procedure = path.trim_start_matches("/api/").split('?').next().unwrap();
        assert_trpc_error(r.status, &r.body, status, code, procedure, what);
        assert!(str_of(&r.body["error"]["message"]).contains(fragment), "{what}: the message should name `{fragment}`: {}", r.body);
    }

    // Bodies that are not JSON, or not said to be, and callers without a key.
    let raw = |ct: Option<&str>, body: &'static str| {
        let mut rb = c.request(Method::POST, "/api/vm.stop").body(body);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        rb
    };
    let r = c.send(raw(Some("application/json"), "{\"vmId\":")).await;
    assert_trpc_error(r.status, &r.body, 400, "PARSE_ERROR", "vm.stop", "malformed JSON");
    let r = c.send(raw(Some("text/plain"), "{}")).await;
    assert_trpc_error(r.status, &r.body, 415, "UNSUPPORTED_MEDIA_TYPE", "vm.stop", "not JSON");
    let r = c.send(raw(None, "vmId=x")).await;
    assert_trpc_error(r.status, &r.body, 415, "UNSUPPORTED_MEDIA_TYPE", "vm.stop", "no content type");
    let r = c.send(raw(Some("application/json"), "")).await;
    assert_trpc_error(r.status, &r.body, 400, "BAD_REQUEST", "vm.stop", "an empty body is {}");
    let big = format!("{{\"vmId\":\"{}\"}}", "x".repeat(2 << 20));
    let r = c.send(c.request(Method::POST, "/api/vm.stop").header("content-type", "application/json").body(big)).await;
    assert_trpc_error(r.status, &r.body, 413, "PAYLOAD_TOO_LARGE", "vm.stop", "over 1 MiB");
    for (what, client) in [("no token", stack.anonymous()), ("a wrong token", stack.client("vmp_nope_123"))] {
        let (s, b) = client.get(&format!("/api/vm.all?organizationId={org}")).await;
        assert_trpc_error(s, &b, 401, "UNAUTHORIZED", "vm.all", what);
        let (s, b) = client.post("/api/vm.launch", &base).await;
        assert_trpc_error(s, &b, 401, "UNAUTHORIZED", "vm.launch", what);
    }
    // Restart needs a running VM.
    let (s, b) = c.post("/api/vm.stop", &json!({"vmId": vm})).await;
    assert_eq!(s, 200, "{b}");
    wait_visor_status(&c, &vm, "stopped").await;
    let (s, b) = c.post("/api/vm.restart", &json!({"vmId": vm})).await;
    assert_trpc_error(s, &b, 409, "CONFLICT", "vm.restart", "restart of a stopped VM");

    // Nothing was created or changed: the one VM, stopped, no volume attached.
    let (s, b) = c.get(&format!("/api/vm.all?organizationId={org}")).await;
    assert_eq!(s, 200, "{b}");
    let all = data(&b).as_array().unwrap();
    assert_eq!((all.len(), all[0]["id"].as_str(), all[0]["status"].as_str()), (1, Some(vm.as_str()), Some("stopped")), "{b}");
    assert_eq!(stack.admin.vm_total("").await, 0, "the admin's default org has no VM");
    let (_, v) = c.get(&format!("/v1/volumes/{vol}")).await;
    assert_eq!(v["vm_id"], Value::Null, "{v}");

    // An Idempotency-Key makes a retried launch the same VM.
    let body = with("name", json!("once"));
    let first = c.send(c.request(Method::POST, "/api/vm.launch").header("idempotency-key", "visor-1").json(&body)).await;
    let again = c.send(c.request(Method::POST, "/api/vm.launch").header("idempotency-key", "visor-1").json(&body)).await;
    assert_eq!((first.status, again.status), (201, 201), "{:?} {:?}", first.body, again.body);
    assert_eq!(data(&first.body)["id"], data(&again.body)["id"]);
    let (_, b) = c.get(&format!("/api/vm.all?organizationId={org}")).await;
    assert_eq!(data(&b).as_array().unwrap().len(), 2, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_vms_are_not_found_and_its_id_is_forbidden() {
    let stack = Stack::start().await;
    let (org_a, _, a) = tenant(&stack, "acme").await;
    let (org_b, b_secret, b) = tenant(&stack, "globex").await;
    let vm = launched(&a, &org_a, "secret").await;
    let (s, vol) = a.post("/v1/volumes", &json!({"name": "a-data", "size_gb": 1})).await;
    assert_eq!(s, 202, "{vol}");
    a.wait_op_succeeded(str_of(&vol["operation"]["id"])).await;
    let vol = str_of(&vol["id"]).to_owned();

    // B does not see A's VM: NOT_FOUND on every procedure naming it.
    let (s, body) = b.get(&format!("/api/vm.one?vmId={vm}")).await;
    assert_trpc_error(s, &body, 404, "NOT_FOUND", "vm.one", "B reads A's VM");
    let (s, body) = b.get(&format!("/api/vm.volumes?vmId={vm}")).await;
    assert_trpc_error(s, &body, 404, "NOT_FOUND", "vm.volumes", "B lists A's VM's volumes");
    for p in ["vm.start", "vm.stop", "vm.restart"] {
        let (s, body) = b.post(&format!("/api/{p}"), &json!({"vmId": vm})).await;
        assert_trpc_error(s, &body, 404, "NOT_FOUND", p, "B acts on A's VM");
    }
    let (s, body) = b.post("/api/vm.attachVolume", &json!({"vmId": vm, "volumeId": vol})).await;
    assert_trpc_error(s, &body, 404, "NOT_FOUND", "vm.attachVolume", "B attaches to A's VM");
    let r = delete_json(&b, "/api/vm.destroy", &json!({"vmId": vm})).await;
    assert_trpc_error(r.status, &r.body, 404, "NOT_FOUND", "vm.destroy", "B destroys A's VM");
    let (s, body) = terminal(&stack.base, &b_secret, &format!("vmId={vm}")).await.expect_err("refused");
    assert_trpc_error(s, &body, 404, "NOT_FOUND", "vm.terminal", "B opens A's terminal");
    // B's list is its own org's: empty.
    let (s, body) = b.get(&format!("/api/vm.all?organizationId={org_b}")).await;
    assert_eq!((s, data(&body)), (200, &json!([])), "{body}");

    // Naming A's org is FORBIDDEN for B's key; so is naming it in vm.one.
    let (s, body) = b.get(&format!("/api/vm.all?organizationId={org_a}")).await;
    assert_trpc_error(s, &body, 403, "FORBIDDEN", "vm.all", "B lists A's org");
    let (s, body) = b.post("/api/vm.launch", &json!({"organizationId": org_a, "name": "x", "plan": "nano", "region": "us-east", "os": "debian-12"})).await;
    assert_trpc_error(s, &body, 403, "FORBIDDEN", "vm.launch", "B launches in A's org");
    let (s, body) = b.get(&format!("/api/vm.one?vmId={vm}&organizationId={org_a}")).await;
    assert_trpc_error(s, &body, 403, "FORBIDDEN", "vm.one", "B names A's org");

    // The admin acts in whichever org it names; without one, in `default`.
    let admin = &stack.admin;
    let (s, body) = admin.get(&format!("/api/vm.all?organizationId={org_a}")).await;
    assert_eq!((s, data(&body).as_array().map(Vec::len)), (200, Some(1)), "{body}");
    let (s, body) = admin.get(&format!("/api/vm.one?vmId={vm}")).await;
    assert_trpc_error(s, &body, 404, "NOT_FOUND", "vm.one", "the admin in its default org");
    let (s, body) = admin.get(&format!("/api/vm.one?vmId={vm}&organizationId={org_a}")).await;
    assert_eq!((s, data(&body)["id"].as_str()), (200, Some(vm.as_str())), "{body}");
    let (s, body) = admin.get("/api/vm.all?organizationId=org_01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_trpc_error(s, &body, 404, "NOT_FOUND", "vm.all", "an org that does not exist");
    // An admin launch lands in the org it names.
    let (s, body) =
        admin.post("/api/vm.launch", &json!({"organizationId": org_b, "name": "for-b", "plan": "nano", "region": "us-east", "os": "debian-12"})).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = b.get(&format!("/api/vm.one?vmId={}", str_of(&data(&body)["id"]))).await;
    assert_eq!((s, data(&body)["name"].as_str()), (200, Some("for-b")), "{body}");

    // A's VM is untouched.
    let one = wait_visor_status(&a, &vm, "running").await;
    assert_eq!(one["volumes"], json!([]), "{one}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_router_agree() {
    let stack = Stack::start().await;
    let (org, secret, c) = tenant(&stack, "docs").await;
    let vm = launched(&c, &org, "probe").await;
    let (s, vol) = c.post("/v1/volumes", &json!({"name": "probe", "size_gb": 1})).await;
    assert_eq!(s, 202, "{vol}");
    c.wait_op_succeeded(str_of(&vol["operation"]["id"])).await;
    let vol = str_of(&vol["id"]).to_owned();

    let (s, doc) = stack.anonymous().get("/openapi/visor.json").await;
    assert_eq!(s, 200, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete", "head", "options", "trace"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone(), op.get("requestBody").is_some(), op["responses"].get("101").is_some()));
            }
        }
    }
    let ops: BTreeSet<(String, String)> = documented.iter().map(|(m, p, _, _)| (m.clone(), p.clone())).collect();
    let seed: BTreeSet<(String, String)> = PROCEDURES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(ops, seed, "the document's operations are the Visor document's procedures");

    // Every documented operation is routed (answered by its procedure, in
    // Visor's shapes), and every other method on its path is METHOD_NOT_SUPPORTED.
    let inputs = json!({"vmId": vm, "volumeId": vol, "organizationId": org});
    // Reads first, destroy last, so each call has a VM to act on.
    let mut calls: Vec<_> = documented.iter().collect();
    calls.sort_by_key(|(m, p, _, _)| (m == "DELETE", m == "POST", p.clone()));
    for (method, path, has_body, websocket) in calls {
        let procedure = path.trim_start_matches("/api/");
        let query = match procedure {
            "vm.all" => format!("?organizationId={org}"),
            _ if method == "GET" => format!("?vmId={vm}"),
            _ => String::new(),
        };
        if *websocket {
            // Opened, then closed at once (a key holds few terminals).
            let ws = terminal(&stack.base, &secret, &query[1..]).await.unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
            drop(ws);
            continue;
        }
        let mut rb = c.request(Method::from_bytes(method.as_bytes()).unwrap(), &format!("{path}{query}"));
        if *has_body {
            let body = match procedure {
                "vm.launch" => json!({"organizationId": org, "name": "probe-2", "plan": "nano", "region": "us-east", "os": "debian-12"}),
                "vm.attachVolume" | "vm.detachVolume" => json!({"vmId": inputs["vmId"], "volumeId": inputs["volumeId"]}),
                _ => json!({"vmId": inputs["vmId"]}),
            };
            rb = rb.json(&body);
        }
        let r = c.send(rb).await;
        let label = format!("{method} {path}{query} answered {}", r.status);
        assert!(r.status < 500, "{label}: {:?}", r.body);
        if r.status >= 400 {
            // Refused by the procedure itself (a state conflict), not by the router.
            assert_eq!(r.body["error"]["data"]["path"], procedure, "{label}: {:?}", r.body);
            assert_ne!(r.status, 405, "{label}: {:?}", r.body);
            assert_eq!(r.status, 409, "{label}: {:?}", r.body);
        } else if r.status != 204 {
            data(&r.body);
        }
        for other in ["GET", "POST", "PUT", "PATCH", "DELETE"].into_iter().filter(|m| m != method) {
            let r = c.send(c.request(Method::from_bytes(other.as_bytes()).unwrap(), path)).await;
            assert_trpc_error(r.status, &r.body, 405, "METHOD_NOT_SUPPORTED", procedure, &format!("{other} {path}"));
        }
    }
}
