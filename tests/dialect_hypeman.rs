//! The hypeman dialect (seed `001`): every operation its document lists,
//! run against the sim stack and checked against its `Instance` and `Error`
//! shapes; every validation rule as a table of 4xx that change nothing;
//! another org's instance is not found; standby and restore (and restore
//! without a snapshot, 409); console logs as Server-Sent Events; the OpenAPI
//! document against the router.

#[path = "common/mod.rs"]
mod common;

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The image the seed's examples name, resolved through the catalog.
const IMAGE: &str = "docker.io/library/debian:12";

/// The seed's `Instance` fields, and its `state` values.
const INSTANCE_FIELDS: [&str; 16] = [
    "id",
    "created_at",
    "image",
    "name",
    "state",
    "env",
    "has_snapshot",
    "hotplug_size",
    "network",
    "overlay_size",
    "size",
    "started_at",
    "state_error",
    "stopped_at",
    "vcpus",
    "volumes",
];
const STATES: [&str; 7] = ["Created", "Running", "Paused", "Shutdown", "Stopped", "Standby", "Unknown"];

fn is_time(v: &Value) -> bool {
    v.as_str().is_some_and(|s| OffsetDateTime::parse(s, &Rfc3339).is_ok())
}

fn is_size(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && ["B", "KB", "MB", "GB", "TB"].contains(&&s[digits..])
    })
}

/// `i` is an `Instance` as the seed documents it: only its fields, each of its type.
fn check_instance(i: &Value) {
    let o = i.as_object().unwrap_or_else(|| panic!("an instance is an object: {i}"));
    for k in o.keys() {
        assert!(INSTANCE_FIELDS.contains(&k.as_str()), "undocumented field {k}: {i}");
    }
    for k in ["id", "name", "image"] {
        assert!(i[k].as_str().is_some_and(|s| !s.is_empty()), "{k}: {i}");
    }
    assert!(is_time(&i["created_at"]), "created_at: {i}");
    assert!(STATES.contains(&str_of(&i["state"])), "state: {i}");
    assert!(i["env"].as_object().is_some_and(|e| e.values().all(Value::is_string)), "env: {i}");
    assert!(i["has_snapshot"].is_boolean(), "has_snapshot: {i}");
    for k in ["size", "hotplug_size", "overlay_size"] {
        assert!(is_size(&i[k]), "{k}: {i}");
    }
    for k in ["started_at", "stopped_at"] {
        assert!(i[k].is_null() || is_time(&i[k]), "{k}: {i}");
    }
    match i.get("state_error") {
        None => assert_ne!(i["state"], "Unknown", "an Unknown state says why: {i}"),
        Some(e) => assert!(e.is_string() && i["state"] == "Unknown", "state_error only with Unknown: {i}"),
    }
    assert!(i["vcpus"].is_u64(), "vcpus: {i}");
    let net = i["network"].as_object().unwrap_or_else(|| panic!("network: {i}"));
    for k in net.keys() {
        assert!(["enabled", "ip", "mac", "name"].contains(&k.as_str()), "network.{k}: {i}");
    }
    assert!(net["enabled"].is_boolean(), "{i}");
    for k in ["ip", "mac"] {
        assert!(net[k].is_null() || net[k].is_string(), "network.{k}: {i}");
    }
    assert!(net.get("name").is_none_or(|n| n == "default"), "{i}");
    for v in i["volumes"].as_array().unwrap_or_else(|| panic!("volumes: {i}")) {
        check_volume_mount(v);
    }
}

/// `v` is a `VolumeMount`.
fn check_volume_mount(v: &Value) {
    let o = v.as_object().unwrap_or_else(|| panic!("a volume mount is an object: {v}"));
    for k in o.keys() {
        assert!(["mount_path", "volume_id", "overlay", "overlay_size", "readonly"].contains(&k.as_str()), "VolumeMount.{k}: {v}");
    }
    assert!(v["mount_path"].is_string() && v["volume_id"].is_string(), "{v}");
    assert!(v.get("overlay").is_none_or(Value::is_boolean) && v.get("readonly").is_none_or(Value::is_boolean), "{v}");
    assert!(v.get("overlay_size").is_none_or(is_size), "{v}");
}

/// `b` is hypeman's `Error` with `code`.
fn check_error(b: &Value, code: &str) {
    let o = b.as_object().unwrap_or_else(|| panic!("an error is an object: {b}"));
    assert!(o.keys().all(|k| ["code", "message", "details", "inner_error"].contains(&k.as_str())), "{b}");
    assert_eq!(b["code"], code, "{b}");
    assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
}

/// `POST /instances`, asserting 201 and the shape; returns the instance.
async fn create(c: &Client, body: Value) -> Value {
    let (s, i) = c.post("/instances", &body).await;
    assert_eq!(s, 201, "POST /instances {body}: {i}");
    check_instance(&i);
    i
}

/// `POST /instances/{id}/{action}`: status and body.
async fn act(c: &Client, key: &str, action: &str) -> (u16, Value) {
    c.post_empty(&format!("/instances/{key}/{action}")).await
}

/// An action that succeeds: 200, the documented shape, the state it leads to.
async fn act_ok(c: &Client, key: &str, action: &str, state: &str) -> Value {
    let (s, i) = act(c, key, action).await;
    assert_eq!(s, 200, "{action} {key}: {i}");
    check_instance(&i);
    assert_eq!(i["state"], state, "after {action}: {i}");
    i
}

/// A POST /v1 volume, its operation awaited; its id.
async fn volume(c: &Client, name: &str) -> String {
    let (s, v) = c.post("/v1/volumes", &json!({ "name": name, "size_gb": 1 })).await;
    assert_eq!(s, 202, "{v}");
    c.wait_op_succeeded(str_of(&v["operation"]["id"])).await;
    str_of(&v["id"]).to_owned()
}

/// The `data:` values of a hypeman log stream, each decoded from its JSON string.
struct Lines {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buf: String,
}

impl Lines {
    async fn open(c: &Client, path: &str) -> Self {
        let resp = c.request_untimed(Method::GET, path).send().await.expect("GET logs");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/event-stream"), "{path}: {ct}");
        Self { body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))), buf: String::new() }
    }

    /// The next line, `None` when the stream ends or nothing comes `within`.
    async fn next(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
                for l in block.lines().filter(|l| !l.is_empty() && !l.starts_with(':')) {
                    assert!(l.starts_with("data:"), "hypeman's events carry only data: {block:?}");
                }
                if let [one] = data.as_slice() {
                    let v: Value = serde_json::from_str(one).unwrap_or_else(|e| panic!("data is not JSON ({e}): {one}"));
                    return Some(v.as_str().unwrap_or_else(|| panic!("data is a JSON string: {one}")).to_owned());
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk).replace('\r', "")),
                Ok(Some(Err(e))) => panic!("log stream broke: {e}"),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Every line until the stream ends (it must, within `within`).
    async fn all(mut self, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Some(l) = self.next(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            out.push(l);
        }
        assert!(tokio::time::Instant::now() < deadline, "the stream did not end: {out:?}");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_operation_answers_in_hypeman_shapes() {
    let stack = Stack::start().await;
    let c = &stack.admin;

    // Create and start instance: 201 with the instance, running (the sim boots at once).
    let i = create(
        c,
        json!({"name": "web-1", "image": IMAGE, "size": "512MB", "hotplug_size": "512MB", "overlay_size": "5GB", "vcpus": 1,
               "env": {"PORT": "3000", "NODE_ENV": "production"}, "network": {"enabled": true}}),
    )
    .await;
    let id = str_of(&i["id"]).to_owned();
    assert!(id.starts_with("vm_"), "{i}");
    assert_eq!(
        (&i["name"], &i["image"], &i["state"], &i["size"], &i["hotplug_size"], &i["overlay_size"], &i["vcpus"]),
        (&json!("web-1"), &json!(IMAGE), &json!("Running"), &json!("512MB"), &json!("512MB"), &json!("5GB"), &json!(1)),
        "{i}"
    );
    assert_eq!(i["env"], json!({"PORT": "3000", "NODE_ENV": "production"}));
    assert_eq!((&i["network"]["enabled"], &i["network"]["name"]), (&json!(true), &json!("default")), "{i}");
    assert!(i["network"]["ip"].is_string() && i["network"]["mac"].is_string(), "{i}");
    assert!(is_time(&i["started_at"]) && i["stopped_at"].is_null() && i["has_snapshot"] == false, "{i}");
    assert!(i.get("state_error").is_none(), "{i}");
    // The same VM in /v1: the sizes in MiB and GB, the env, the catalog's image.
    let vm = c.vm(&id).await;
    assert_eq!((&vm["memory_mib"], &vm["hotplug_memory_mib"], &vm["disk_gb"], &vm["vcpus"]), (&json!(512), &json!(512), &json!(5), &json!(1)), "{vm}");
    assert_eq!((&vm["env"], &vm["image"], &vm["status"]), (&i["env"], &json!("debian-minimal"), &json!("running")), "{vm}");

    // hypeman's defaults: 1GB + 3GB hot-pluggable, a 10GB overlay, 2 vCPUs, networked.
    let d = create(c, json!({"name": "defaults", "image": "docker.io/library/alpine:latest"})).await;
    assert_eq!((&d["size"], &d["hotplug_size"], &d["overlay_size"], &d["vcpus"]), (&json!("1GB"), &json!("3GB"), &json!("10GB"), &json!(2)), "{d}");
    assert_eq!((&d["image"], &d["network"]["enabled"], &d["env"]), (&json!("docker.io/library/alpine:3"), &json!(true), &json!({})), "{d}");

    // List instances: a bare array of instances, oldest first.
    let (s, list) = c.get("/instances").await;
    assert_eq!(s, 200, "{list}");
    let list = list.as_array().unwrap_or_else(|| panic!("a list is an array: {list}"));
    list.iter().for_each(check_instance);
    assert_eq!(list.iter().map(|i| str_of(&i["name"])).collect::<Vec<_>>(), ["web-1", "defaults"]);

    // Get instance details: by id, by name, by id prefix.
    for key in [id.as_str(), "web-1", &id[..id.len() - 4]] {
        let (s, got) = c.get(&format!("/instances/{key}")).await;
        assert_eq!(s, 200, "{key}: {got}");
        check_instance(&got);
        assert_eq!(got["id"], id.as_str(), "{key}");
    }

    // Stop instance (graceful shutdown), then start it again.
    let stopped = act_ok(c, &id, "stop", "Stopped").await;
    assert!(is_time(&stopped["stopped_at"]) && stopped["has_snapshot"] == false, "{stopped}");
    let started = act_ok(c, "web-1", "start", "Running").await;
    assert!(
        OffsetDateTime::parse(str_of(&started["started_at"]), &Rfc3339).unwrap() >= OffsetDateTime::parse(str_of(&i["started_at"]), &Rfc3339).unwrap(),
        "{started}"
    );

    // Attach volume to instance (both named), read-only with an overlay, then detach it.
    let vol = volume(c, "data").await;
    let (s, att) = c.post("/instances/web-1/volumes/data", &json!({"mount_path": "/mnt/data", "readonly": true, "overlay": true, "overlay_size": "1GB"})).await;
    assert_eq!(s, 200, "{att}");
    check_instance(&att);
    assert_eq!(att["volumes"], json!([{"volume_id": vol, "mount_path": "/mnt/data", "readonly": true, "overlay": true, "overlay_size": "1GB"}]), "{att}");
    let (_, v) = c.get(&format!("/v1/volumes/{vol}")).await;
    assert_eq!((&v["vm_id"], &v["status"]), (&json!(id), &json!("in_use")), "{v}");
    assert_eq!(c.vm(&id).await["volumes"][0]["overlay_size_mib"], 1024);
    let (s, det) = c.delete(&format!("/instances/{id}/volumes/{vol}")).await;
    assert_eq!(s, 200, "{det}");
    check_instance(&det);
    assert_eq!(det["volumes"], json!([]), "{det}");
    // Attached by id with the plain body hypeman's AttachVolumeRequest has.
    let (s, att) = c.post(&format!("/instances/{id}/volumes/{vol}"), &json!({"mount_path": "/mnt/data"})).await;
    assert_eq!(s, 200, "{att}");
    assert_eq!(att["volumes"], json!([{"volume_id": vol, "mount_path": "/mnt/data", "readonly": false}]), "{att}");

    // Stream instance logs (SSE): the sim's guest prints nothing, so the stream just ends.
    assert_eq!(Lines::open(c, &format!("/instances/{id}/logs")).await.all(WAIT).await, Vec::<String>::new());

    // Stop and delete instance: 204 without a body; then it is gone, its volume free.
    let r = c.send(c.request(Method::DELETE, &format!("/instances/{id}"))).await;
    assert_eq!((r.status, &r.body), (204, &json!("")), "{:?}", r.body);
    let (s, b) = c.get(&format!("/instances/{id}")).await;
    assert_eq!(s, 404, "{b}");
    check_error(&b, "not_found");
    let (s, list) = c.get("/instances").await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)), "{list}");
    let (_, v) = c.get(&format!("/v1/volumes/{vol}")).await;
    assert!(v["vm_id"].is_null() && v["status"] == "available", "{v}");
    assert_eq!(c.vm(&id).await["status"], "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_and_restore_round_trip_and_restore_without_a_snapshot_is_409() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let i = create(c, json!({"name": "sleeper", "image": IMAGE, "size": "256MB", "hotplug_size": "0B"})).await;
    let id = str_of(&i["id"]).to_owned();
    assert_eq!((&i["state"], &i["has_snapshot"], &i["hotplug_size"]), (&json!("Running"), &json!(false), &json!("0B")), "{i}");

    let refused = async |action: &str| {
        let (s, b) = act(c, &id, action).await;
        assert_eq!(s, 409, "{action}: {b}");
        check_error(&b, "invalid_state");
    };
    // Nothing to restore from while it runs.
    refused("restore").await;

    let sb = act_ok(c, &id, "standby", "Standby").await;
    assert_eq!(sb["has_snapshot"], true, "{sb}");
    assert!(is_time(&sb["stopped_at"]), "{sb}");
    let (_, got) = c.get("/instances/sleeper").await;
    assert_eq!((&got["state"], &got["has_snapshot"]), (&json!("Standby"), &json!(true)), "{got}");
    // In standby it is restored, not started, and not put on standby twice.
    refused("start").await;
    refused("standby").await;
    refused("stop").await;

    let back = act_ok(c, &id, "restore", "Running").await;
    assert_eq!(back["has_snapshot"], false, "{back}");
    let types = c.event_types(&id).await;
    assert!(types.contains(&"snapshotted".to_owned()) && types.contains(&"restored".to_owned()), "{types:?}");
    // The snapshot is used up.
    refused("restore").await;
    // A stopped instance has no snapshot either.
    act_ok(c, &id, "stop", "Stopped").await;
    refused("restore").await;
    refused("stop").await;
    act_ok(c, &id, "start", "Running").await;
    refused("start").await;
    // The refusals changed nothing: the last operation was the start.
    assert_eq!(c.vm(&id).await["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_is_a_4xx_in_hypeman_shape_and_changes_nothing() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let i = create(c, json!({"name": "keeper", "image": IMAGE, "size": "256MB", "hotplug_size": "0B"})).await;
    let id = str_of(&i["id"]).to_owned();
    let vol = volume(c, "spare").await;
    let events_before = c.event_types(&id).await.len();

    let big = "a".repeat(64);
    let ok = |extra: Value| {
        let mut body = json!({"name": "fresh", "image": IMAGE});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let mount = |m: Value| ok(json!({"volumes": [m]}));
    #[rustfmt::skip]
    let creates: Vec<(Value, u16, &str)> = vec![
        (json!({}), 400, "bad_request"),
        (json!({"name": "fresh"}), 400, "bad_request"),
        (json!({"image": IMAGE}), 400, "bad_request"),
        (json!({"name": "Bad_Name", "image": IMAGE}), 400, "validation_failed"),
        (json!({"name": "-dash", "image": IMAGE}), 400, "validation_failed"),
        (json!({"name": big, "image": IMAGE}), 400, "validation_failed"),
        (json!({"name": 7, "image": IMAGE}), 400, "bad_request"),
        (ok(json!({"size": "lots"})), 400, "invalid_size"),
        (ok(json!({"size": "1.5GB"})), 400, "invalid_size"),
        (ok(json!({"size": "1Gb"})), 400, "invalid_size"),
        (ok(json!({"size": "1000B"})), 400, "invalid_size"),
        (ok(json!({"size": "32MB"})), 400, "validation_failed"),
        (ok(json!({"size": 1024})), 400, "bad_request"),
        (ok(json!({"hotplug_size": "more"})), 400, "invalid_hotplug_size"),
        (ok(json!({"overlay_size": "big"})), 400, "invalid_overlay_size"),
        (ok(json!({"overlay_size": "99999TB"})), 400, "validation_failed"),
        (ok(json!({"overlay_size": "9999999TB"})), 400, "invalid_overlay_size"),
        (ok(json!({"vcpus": 0})), 400, "validation_failed"),
        (ok(json!({"vcpus": -1})), 400, "bad_request"),
        (ok(json!({"vcpus": "two"})), 400, "bad_request"),
        (ok(json!({"vcpus": 1.5})), 400, "bad_request"),
        (ok(json!({"env": {"1BAD": "x"}})), 400, "validation_failed"),
        (ok(json!({"env": {"A": 1}})), 400, "bad_request"),
        (ok(json!({"network": {"enabled": "yes"}})), 400, "bad_request"),
        (ok(json!({"network": {"bandwidth": "1Gbps"}})), 400, "bad_request"),
        (ok(json!({"cpus": 2})), 400, "bad_request"),
        (ok(json!({"image": "docker.io/library/nosuch:1"})), 400, "unknown_image"),
        (ok(json!({"image": "no spaces"})), 400, "validation_failed"),
        (json!({"name": "keeper", "image": IMAGE}), 409, "name_conflict"),
        // VolumeMount: overlay needs readonly and overlay_size; paths are absolute.
        (mount(json!({"volume_id": vol, "mount_path": "/mnt/d", "overlay": true, "overlay_size": "1GB"})), 400, "invalid_volume_mount"),
        (mount(json!({"volume_id": vol, "mount_path": "/mnt/d", "readonly": true, "overlay": true})), 400, "invalid_volume_mount"),
        (mount(json!({"volume_id": vol, "mount_path": "/mnt/d", "readonly": true, "overlay": true, "overlay_size": "x"})), 400, "invalid_overlay_size"),
        (mount(json!({"volume_id": vol, "mount_path": "relative"})), 400, "invalid_volume_mount"),
        (mount(json!({"volume_id": vol})), 400, "bad_request"),
        (mount(json!({"mount_path": "/mnt/d"})), 400, "bad_request"),
        (mount(json!({"volume_id": "nosuch", "mount_path": "/mnt/d"})), 404, "not_found"),
        (mount(json!({"volume_id": "vol_01jd0000000000000000000000", "mount_path": "/mnt/d"})), 404, "not_found"),
    ];
    for (body, status, code) in creates {
        let (s, b) = c.post("/instances", &body).await;
        assert_eq!(s, status, "POST /instances {body}: {b}");
        check_error(&b, code);
    }
    let raw = |method: Method, path: &str, body: &'static str| c.request(method, path).header("content-type", "application/json").body(body);
    for (rb, status, code) in [
        (raw(Method::POST, "/instances", "{not json"), 400, "bad_request"),
        (raw(Method::POST, "/instances", ""), 400, "bad_request"),
        (raw(Method::POST, "/instances", "[]"), 400, "bad_request"),
        (raw(Method::POST, &format!("/instances/{id}/volumes/{vol}"), "{"), 400, "bad_request"),
    ] {
        let r = c.send(rb).await;
        assert_eq!(r.status, status, "{:?}", r.body);
        check_error(&r.body, code);
    }

    let attach = format!("/instances/{id}/volumes/{vol}");
    #[rustfmt::skip]
    let calls: Vec<(Method, String, Option<Value>, u16, &str)> = vec![
        (Method::POST, attach.clone(), Some(json!({"mount_path": "/mnt/d", "overlay": true, "overlay_size": "1GB"})), 400, "invalid_volume_mount"),
        (Method::POST, attach.clone(), Some(json!({"mount_path": "/mnt/d", "readonly": true, "overlay": true})), 400, "invalid_volume_mount"),
        (Method::POST, attach.clone(), Some(json!({"mount_path": "/mnt/d", "readonly": true, "overlay": true, "overlay_size": "1 zillion"})), 400, "invalid_overlay_size"),
        (Method::POST, attach.clone(), Some(json!({"mount_path": "/"})), 400, "invalid_volume_mount"),
        (Method::POST, attach.clone(), Some(json!({"readonly": true})), 400, "bad_request"),
        (Method::POST, attach.clone(), Some(json!({"mount_path": "/mnt/d", "volume_id": "another"})), 400, "bad_request"),
        (Method::POST, attach.clone(), Some(json!({"mount_path": "/mnt/d", "size": "1GB"})), 400, "bad_request"),
        (Method::POST, format!("/instances/{id}/volumes/nosuch"), Some(json!({"mount_path": "/mnt/d"})), 404, "not_found"),
        (Method::POST, format!("/instances/nosuch/volumes/{vol}"), Some(json!({"mount_path": "/mnt/d"})), 404, "not_found"),
        (Method::DELETE, attach.clone(), None, 409, "volume_not_attached"),
        (Method::DELETE, format!("/instances/{id}/volumes/nosuch"), None, 404, "not_found"),
        (Method::GET, format!("/instances/{id}/logs?tail=10001"), None, 400, "bad_request"),
        (Method::GET, format!("/instances/{id}/logs?tail=-1"), None, 400, "bad_request"),
        (Method::GET, format!("/instances/{id}/logs?follow=maybe"), None, 400, "bad_request"),
        (Method::GET, "/instances/nosuch/logs".into(), None, 404, "not_found"),
        (Method::GET, "/instances/nosuch".into(), None, 404, "not_found"),
        (Method::GET, "/instances/vm_01jd0000000000000000000000".into(), None, 404, "not_found"),
        (Method::DELETE, "/instances/nosuch".into(), None, 404, "not_found"),
        (Method::POST, "/instances/nosuch/start".into(), None, 404, "not_found"),
        (Method::POST, "/instances/nosuch/stop".into(), None, 404, "not_found"),
        (Method::POST, "/instances/nosuch/standby".into(), None, 404, "not_found"),
        (Method::POST, "/instances/nosuch/restore".into(), None, 404, "not_found"),
        // hypeman's state rules: a running instance is not started again.
        (Method::POST, format!("/instances/{id}/start"), None, 409, "invalid_state"),
        (Method::POST, format!("/instances/{id}/restore"), None, 409, "invalid_state"),
    ];
    for (method, path, body, status, code) in calls {
        let mut rb = c.request(method.clone(), &path);
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let r = c.send(rb).await;
        assert_eq!(r.status, status, "{method} {path} {body:?}: {:?}", r.body);
        check_error(&r.body, code);
    }

    // Without a valid token: 401 in the same shape.
    for client in [stack.anonymous(), stack.client("vmp_not_a_key")] {
        for (method, path) in
            [(Method::GET, "/instances".to_owned()), (Method::POST, format!("/instances/{id}/stop")), (Method::DELETE, format!("/instances/{id}"))]
        {
            let r = client.send(client.request(method, &path)).await;
            assert_eq!(r.status, 401, "{path}: {:?}", r.body);
            check_error(&r.body, "unauthorized");
        }
    }

    // Nothing changed: one instance, running, no volume, no new event; the volume free.
    let (_, list) = c.get("/instances").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((&list[0]["state"], &list[0]["volumes"]), (&json!("Running"), &json!([])), "{list:?}");
    assert_eq!(c.event_types(&id).await.len(), events_before);
    assert_eq!(c.vm_total("").await, 1);
    let (_, v) = c.get(&format!("/v1/volumes/{vol}")).await;
    assert!(v["vm_id"].is_null() && v["status"] == "available", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_instance_is_not_found_and_names_resolve_within_the_org() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let org = admin.create_org("other").await;
    let key = admin.create_key(&org, "k").await;
    let other = stack.client(&key);

    let theirs = create(admin, json!({"name": "theirs", "image": IMAGE, "size": "256MB", "hotplug_size": "0B"})).await;
    let theirs_id = str_of(&theirs["id"]).to_owned();
    let mine = create(&other, json!({"name": "mine", "image": IMAGE, "size": "256MB", "hotplug_size": "0B"})).await;
    let vol = volume(admin, "admins").await;

    // The key's org cannot see the default org's instance, by id, name or prefix, nor its volume.
    for key in [theirs_id.as_str(), "theirs", &theirs_id[..theirs_id.len() - 2]] {
        for (method, path) in [
            (Method::GET, format!("/instances/{key}")),
            (Method::GET, format!("/instances/{key}/logs")),
            (Method::DELETE, format!("/instances/{key}")),
            (Method::POST, format!("/instances/{key}/stop")),
            (Method::POST, format!("/instances/{key}/standby")),
            (Method::DELETE, format!("/instances/{key}/volumes/{vol}")),
        ] {
            let r = other.send(other.request(method.clone(), &path)).await;
            assert_eq!(r.status, 404, "{method} {path}: {:?}", r.body);
            check_error(&r.body, "not_found");
        }
    }
    let (s, b) = other.post(&format!("/instances/mine/volumes/{vol}"), &json!({"mount_path": "/mnt/x"})).await;
    assert_eq!(s, 404, "another org's volume: {b}");
    check_error(&b, "not_found");
    let (_, list) = other.get("/instances").await;
    assert_eq!(list.as_array().unwrap().iter().map(|i| str_of(&i["name"])).collect::<Vec<_>>(), ["mine"]);
    // The admin, in the default org, sees its own; naming the org, the other's.
    let (_, list) = admin.get("/instances").await;
    assert_eq!(list.as_array().unwrap().iter().map(|i| str_of(&i["name"])).collect::<Vec<_>>(), ["theirs"]);
    let (s, got) = admin.with_header("x-vmplane-org", &org).get("/instances/mine").await;
    assert_eq!((s, &got["id"]), (200, &mine["id"]), "{got}");
    // Untouched by the refusals.
    assert_eq!(admin.vm(&theirs_id).await["status"], "running");

    // A name used twice (through /v1, which allows it) names no one instance.
    for _ in 0..2 {
        admin.create_running_vm("twin").await;
    }
    for key in ["twin", "vm_"] {
        let (s, b) = admin.get(&format!("/instances/{key}")).await;
        assert_eq!(s, 404, "{key}: {b}");
        check_error(&b, "ambiguous");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_as_server_sent_events_with_tail_and_follow() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let i = create(c, json!({"name": "chatty", "image": IMAGE, "size": "256MB", "hotplug_size": "0B"})).await;
    let id = str_of(&i["id"]).to_owned();

    // Console lines as the worker ships them: one message per line on the VM's log subject.
    let js = async_nats::jetstream::new(stack.nats_client().await);
    let subject = vmplane_domain::subjects::vm_logs(vmplane_domain::OrgId::DEFAULT, id.parse().unwrap());
    let publish = async |line: &str| {
        js.publish(subject.clone(), line.as_bytes().to_vec().into()).await.expect("publish").await.expect("stored");
    };
    let lines = ["booting", "say \"hi\" \u{e9}t\u{e9}", "VMPLANE-READY"];
    for l in lines {
        publish(l).await;
    }

    // Without follow: the last `tail` lines (default 100), then the stream ends.
    assert_eq!(Lines::open(c, &format!("/instances/{id}/logs")).await.all(WAIT).await, lines);
    assert_eq!(Lines::open(c, "/instances/chatty/logs?tail=2").await.all(WAIT).await, lines[1..]);
    assert_eq!(Lines::open(c, &format!("/instances/{id}/logs?tail=0")).await.all(WAIT).await, Vec::<String>::new());

    // With follow: the tail, then new lines as they come.
    let mut live = Lines::open(c, &format!("/instances/{id}/logs?follow=true&tail=1")).await;
    assert_eq!(live.next(WAIT).await.as_deref(), Some("VMPLANE-READY"));
    publish("a new line").await;
    assert_eq!(live.next(WAIT).await.as_deref(), Some("a new line"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_router_agree_and_hold_the_seeds_operations() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let (s, doc) = stack.anonymous().get("/openapi/hypeman.json").await;
    assert_eq!(s, 200, "{doc}");
    assert!(str_of(&doc["openapi"]).starts_with("3."), "{doc}");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys().filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str())) {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    // The seed's operations, and create and standby (the issue's), exactly.
    let expected: BTreeSet<(String, String)> = [
        ("GET", "/instances"),
        ("POST", "/instances"),
        ("GET", "/instances/{id}"),
        ("DELETE", "/instances/{id}"),
        ("POST", "/instances/{id}/restore"),
        ("POST", "/instances/{id}/start"),
        ("POST", "/instances/{id}/stop"),
        ("POST", "/instances/{id}/standby"),
        ("GET", "/instances/{id}/logs"),
        ("POST", "/instances/{id}/volumes/{volumeId}"),
        ("DELETE", "/instances/{id}/volumes/{volumeId}"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);

    // The models as the seed lists them.
    let schemas = &doc["components"]["schemas"];
    let props =
        |name: &str| -> BTreeSet<String> { schemas[name]["properties"].as_object().unwrap_or_else(|| panic!("{name}: {schemas}")).keys().cloned().collect() };
    assert_eq!(props("Instance"), INSTANCE_FIELDS.iter().map(|s| s.to_string()).collect());
    let required: BTreeSet<&str> = schemas["Instance"]["required"].as_array().unwrap().iter().map(str_of).collect();
    assert!(["id", "created_at", "image", "name", "state"].iter().all(|f| required.contains(f)), "{required:?}");
    assert_eq!(props("VolumeMount"), ["mount_path", "volume_id", "overlay", "overlay_size", "readonly"].map(String::from).into());
    assert_eq!(props("Error"), ["code", "message"].map(String::from).into());
    let states: Vec<&str> = schemas["InstanceState"]["enum"].as_array().unwrap_or_else(|| panic!("{schemas}")).iter().map(str_of).collect();
    assert_eq!(states, STATES);

    // Every documented operation is routed: called with real ids, none falls
    // through to the unknown-route answer or a 405; everything else is not routed.
    let i = create(c, json!({"name": "probe", "image": IMAGE, "size": "256MB", "hotplug_size": "0B"})).await;
    let vol = volume(c, "probe-vol").await;
    let mut calls: Vec<_> = documented.iter().collect();
    calls.sort_by_key(|(m, _)| m == "DELETE");
    for (method, path) in calls {
        let concrete = path.replace("{id}", str_of(&i["id"])).replace("{volumeId}", &vol);
        let mut rb = c.request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete);
        if method == "POST" {
            rb = rb.json(&json!({"name": "probe-2", "image": IMAGE, "mount_path": "/mnt/p"}));
        }
        let r = c.send(rb).await;
        let fallback = r.status == 404 && r.body["message"].as_str().is_some_and(|m| m.starts_with("route "));
        assert!(!fallback && r.status != 405, "{method} {concrete}: {} {:?}", r.status, r.body);
    }
    for (method, path) in
        [(Method::PUT, "/instances"), (Method::PATCH, "/instances/x"), (Method::GET, "/instances/x/start"), (Method::GET, "/instances/x/volumes/y")]
    {
        let r = c.send(c.request(method.clone(), path)).await;
        assert_eq!(r.status, 405, "{method} {path}: {:?}", r.body);
    }
    let r = c.get("/instances/x/nothing").await;
    assert_eq!(r.0, 404, "{:?}", r.1);
}
