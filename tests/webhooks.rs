//! Webhook endpoints (`/v1/webhooks`): create, list, read, change, rotate
//! the secret of and delete in the caller's org; the secret is shown in the
//! creation's and rotation's answers only, is in no event, and both secrets
//! are kept during the overlap; another org's endpoint is not found; a
//! private-address URL is refused unless the gateway runs with
//! `--webhook-allow-private`; every bad input is a 4xx that changes nothing;
//! and the endpoints are events, so a projection rebuilt from the stream has
//! them.

#[path = "common/mod.rs"]
mod common;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

/// A stack whose gateway accepts loopback URLs (`--webhook-allow-private`).
async fn permissive_stack() -> Stack {
    Stack::start_with(StackOpts { gateway_env: vec![("VMPLANE_WEBHOOK_ALLOW_PRIVATE".into(), "true".into())], ..Default::default() }).await
}

async fn list(c: &Client) -> Vec<Value> {
    let (s, b) = c.get("/v1/webhooks").await;
    assert_eq!(s, 200, "{b}");
    b.as_array().expect("a list").clone()
}

/// `POST /v1/webhooks`, asserting 201; returns the endpoint with its secret.
async fn create(c: &Client, body: Value) -> Value {
    let (s, b) = c.post("/v1/webhooks", &body).await;
    assert_eq!(s, 201, "{b}");
    b
}

async fn patch(c: &Client, path: &str, body: &Value) -> (u16, Value) {
    let r = c.send(c.request(Method::PATCH, path).json(body)).await;
    (r.status, r.body)
}

/// A secret as the issue states it: `whsec_` + base64 of at least 24 bytes.
fn assert_secret(v: &Value) -> String {
    let s = str_of(&v["secret"]).to_owned();
    let raw = s.strip_prefix("whsec_").unwrap_or_else(|| panic!("no whsec_ prefix: {s}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).expect("base64");
    assert!(bytes.len() >= 24, "{} bytes", bytes.len());
    s
}

/// The secrets record the gateway keeps for `id`, read as the gateway role.
async fn stored_secrets(stack: &Stack, id: &str) -> Value {
    let client = stack.nats.connect(Some("gateway")).await.expect("connecting as the gateway");
    let kv = vmplane_bus::async_nats::jetstream::new(client).get_key_value("vmplane_webhook_secrets").await.expect("the secrets bucket");
    let entry = kv.get(id).await.expect("reading the bucket").expect("a record for the endpoint");
    serde_json::from_slice(&entry).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_created_read_changed_rotated_and_deleted() {
    let stack = permissive_stack().await;
    let c = &stack.admin;
    assert!(list(c).await.is_empty());

    let wh = create(c, json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["vm.*"], "description": "ci" })).await;
    let id = str_of(&wh["id"]).to_owned();
    assert!(id.starts_with("wh_"), "{wh}");
    let first = assert_secret(&wh);
    assert_eq!(
        (&wh["url"], &wh["event_types"], &wh["enabled"], &wh["description"]),
        (&json!("http://127.0.0.1:9/hook"), &json!(["vm.*"]), &json!(true), &json!("ci")),
        "{wh}"
    );
    assert_eq!(wh["operation"]["status"], "succeeded", "{wh}");
    // Without a filter: every event.
    let all = create(c, json!({ "url": "http://localhost:9/all" })).await;
    assert_eq!((&all["event_types"], &all["description"]), (&json!([]), &Value::Null), "{all}");
    assert_ne!(assert_secret(&all), first, "every endpoint has its own secret");

    // Shown once: never in a read or a list.
    let (s, one) = c.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!((one.get("secret"), one.get("operation"), &one["url"]), (None, None, &json!("http://127.0.0.1:9/hook")), "{one}");
    let listed = list(c).await;
    assert_eq!(listed.iter().map(|w| w["id"].clone()).collect::<Vec<_>>(), vec![wh["id"].clone(), all["id"].clone()], "oldest first");
    assert!(listed.iter().all(|w| w.get("secret").is_none()), "{listed:?}");

    // A change replaces the fields given, and only those.
    let (s, changed) = patch(c, &format!("/v1/webhooks/{id}"), &json!({ "enabled": false, "event_types": ["vm.running", "volume.*"] })).await;
    assert_eq!(s, 200, "{changed}");
    assert_eq!(
        (&changed["enabled"], &changed["event_types"], &changed["url"], &changed["description"]),
        (&json!(false), &json!(["vm.running", "volume.*"]), &json!("http://127.0.0.1:9/hook"), &json!("ci"))
    );
    assert!(changed.get("secret").is_none(), "{changed}");
    let (s, changed) = patch(c, &format!("/v1/webhooks/{id}"), &json!({ "url": "https://127.0.0.1:8443/v2", "enabled": true, "description": "" })).await;
    assert_eq!(s, 200, "{changed}");
    let (_, one) = c.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(
        (&one["url"], &one["enabled"], &one["description"], &one["event_types"]),
        (&json!("https://127.0.0.1:8443/v2"), &json!(true), &Value::Null, &json!(["vm.running", "volume.*"])),
        "{one}"
    );

    // Rotation: a new secret, answered once; the previous one is kept to sign alongside it.
    let (s, rotated) = c.post_empty(&format!("/v1/webhooks/{id}/rotate-secret")).await;
    assert_eq!(s, 200, "{rotated}");
    let second = assert_secret(&rotated);
    assert_ne!(second, first);
    assert!(rotated["previous_secret_expires_at"].is_string(), "{rotated}");
    let (_, one) = c.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!((one.get("secret"), &one["previous_secret_expires_at"]), (None, &rotated["previous_secret_expires_at"]), "{one}");
    let kept = stored_secrets(&stack, &id).await;
    assert_eq!((&kept["current"], &kept["previous"]["secret"]), (&json!(second), &json!(first)), "both secrets are kept");

    // No event carries a secret: the feed is readable by the org's subscribers.
    let mut feed = c.sse(None).await;
    let events = feed.read_until(WAIT, |e| e.event == "webhook_secret_rotated").await;
    let types: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    for ty in ["webhook_endpoint_created", "webhook_endpoint_updated", "webhook_secret_rotated"] {
        assert!(types.contains(&ty), "{ty} in {types:?}");
    }
    for e in &events {
        let text = e.data.to_string();
        assert!(!text.contains("whsec_") && !text.contains(&first[6..]) && !text.contains(&second[6..]), "a secret in {text}");
    }

    let r = c.send(c.request(Method::DELETE, &format!("/v1/webhooks/{id}"))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (s, b) = c.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    for (what, (s, b)) in [
        ("delete", c.delete(&format!("/v1/webhooks/{id}")).await),
        ("rotate", c.post_empty(&format!("/v1/webhooks/{id}/rotate-secret")).await),
        ("change", patch(c, &format!("/v1/webhooks/{id}"), &json!({ "enabled": false })).await),
    ] {
        assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{what} after delete: {b}");
    }
    assert_eq!(list(c).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_endpoint_is_not_found_and_never_shown() {
    let stack = permissive_stack().await;
    let admin = &stack.admin;
    let (org_a, org_b) = (admin.create_org("alpha").await, admin.create_org("beta").await);
    let a = stack.client(&admin.create_key(&org_a, "a").await);
    let b = stack.client(&admin.create_key(&org_b, "b").await);
    let a_wh = create(&a, json!({ "url": "http://127.0.0.1:9/a" })).await;
    let a_id = str_of(&a_wh["id"]).to_owned();
    assert_eq!(a_wh["org_id"], org_a.as_str());
    let b_wh = create(&b, json!({ "url": "http://127.0.0.1:9/b" })).await;

    for (what, (s, body)) in [
        ("GET", b.get(&format!("/v1/webhooks/{a_id}")).await),
        ("PATCH", patch(&b, &format!("/v1/webhooks/{a_id}"), &json!({ "enabled": false })).await),
        ("rotate", b.post_empty(&format!("/v1/webhooks/{a_id}/rotate-secret")).await),
        ("DELETE", b.delete(&format!("/v1/webhooks/{a_id}")).await),
    ] {
        assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{what}: {body}");
        assert!(!body.to_string().contains("127.0.0.1:9/a"), "{what} shows nothing of it: {body}");
    }
    assert_eq!(list(&b).await.iter().map(|w| w["id"].clone()).collect::<Vec<_>>(), vec![b_wh["id"].clone()]);
    let a_list = list(&a).await;
    assert_eq!((a_list.len(), &a_list[0]["enabled"]), (1, &json!(true)), "A's endpoint is unchanged: {a_list:?}");
    assert_eq!(admin.with_header("x-vmplane-org", &org_a).get(&format!("/v1/webhooks/{a_id}")).await.0, 200);
    assert_eq!(admin.get(&format!("/v1/webhooks/{a_id}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_without_the_flag() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:9/",
    ] {
        let (s, b) = c.post("/v1/webhooks", &json!({ "url": url })).await;
        assert_eq!((s, b["code"].as_str()), (422, Some("url_not_allowed")), "{url}: {b}");
    }
    assert!(list(c).await.is_empty(), "nothing was stored");
    // A public address is accepted (nothing is sent at creation); it cannot be changed to a private one.
    // This stack must never run a webhook deliverer: nothing may be sent to that address.
    let wh = create(c, json!({ "url": "https://93.184.215.14/hook" })).await;
    let id = str_of(&wh["id"]).to_owned();
    let (s, b) = patch(c, &format!("/v1/webhooks/{id}"), &json!({ "url": "http://127.0.0.1:9/" })).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("url_not_allowed")), "{b}");
    assert_eq!(c.get(&format!("/v1/webhooks/{id}")).await.1["url"], "https://93.184.215.14/hook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_is_a_4xx_that_changes_nothing() {
    let stack = permissive_stack().await;
    let c = &stack.admin;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("no url", json!({}), 422, "invalid_body"),
        ("an unknown field", json!({ "url": "http://127.0.0.1/", "secret": "whsec_mine" }), 422, "invalid_body"),
        ("a number for a url", json!({ "url": 7 }), 422, "invalid_body"),
        ("a string for event_types", json!({ "url": "http://127.0.0.1/", "event_types": "vm.*" }), 422, "invalid_body"),
        ("a relative url", json!({ "url": "/hook" }), 422, "validation_failed"),
        ("another scheme", json!({ "url": "ftp://127.0.0.1/" }), 422, "validation_failed"),
        ("a file url", json!({ "url": "file:///etc/passwd" }), 422, "validation_failed"),
        ("credentials in the url", json!({ "url": "http://u:p@127.0.0.1/" }), 422, "validation_failed"),
        ("a url of 3000 characters", json!({ "url": format!("http://127.0.0.1/{}", "a".repeat(3000)) }), 422, "validation_failed"),
        ("an uppercase event type", json!({ "url": "http://127.0.0.1/", "event_types": ["VM.*"] }), 422, "validation_failed"),
        ("two dots", json!({ "url": "http://127.0.0.1/", "event_types": ["vm.*.x"] }), 422, "validation_failed"),
        ("an empty event type", json!({ "url": "http://127.0.0.1/", "event_types": [""] }), 422, "validation_failed"),
        ("a long description", json!({ "url": "http://127.0.0.1/", "description": "d".repeat(257) }), 422, "validation_failed"),
    ];
    for (case, body, status, code) in cases {
        let (s, b) = c.post("/v1/webhooks", &body).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{case}: {b}");
        assert!(b["message"].is_string(), "{case}: {b}");
    }
    assert!(list(c).await.is_empty(), "nothing was stored");

    let wh = create(c, json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["vm.*"] })).await;
    let id = str_of(&wh["id"]).to_owned();
    let path = format!("/v1/webhooks/{id}");
    let before = c.get(&path).await.1;
    for (case, body, code) in [
        ("an empty change", json!({}), "validation_failed"),
        ("an unknown field", json!({ "secret": "x" }), "invalid_body"),
        ("a bad url", json!({ "url": "nope" }), "validation_failed"),
        ("a bad filter", json!({ "event_types": ["vm.*.x"], "enabled": false }), "validation_failed"),
        ("a string for enabled", json!({ "enabled": "no" }), "invalid_body"),
    ] {
        let (s, b) = patch(c, &path, &body).await;
        assert_eq!((s, b["code"].as_str()), (422, Some(code)), "{case}: {b}");
    }
    assert_eq!(c.get(&path).await.1, before, "nothing changed");
    let (s, b) = c.get("/v1/webhooks/wh_nope").await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_id")), "{b}");
    let (s, b) = stack.anonymous().get("/v1/webhooks").await;
    assert_eq!(s, 401, "{b}");
    let kept = stored_secrets(&stack, &id).await;
    assert_eq!((&kept["current"], &kept["previous"]), (&wh["secret"], &Value::Null), "the secret is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_projection_has_the_same_endpoints() {
    let mut stack = permissive_stack().await;
    let c = stack.admin.clone();
    let kept = create(&c, json!({ "url": "http://127.0.0.1:9/kept", "event_types": ["vm.*"], "description": "kept" })).await;
    let gone = create(&c, json!({ "url": "http://127.0.0.1:9/gone" })).await;
    let (kept_id, gone_id) = (str_of(&kept["id"]).to_owned(), str_of(&gone["id"]).to_owned());
    assert_eq!(patch(&c, &format!("/v1/webhooks/{kept_id}"), &json!({ "enabled": false })).await.0, 200);
    assert_eq!(c.post_empty(&format!("/v1/webhooks/{kept_id}/rotate-secret")).await.0, 200);
    assert_eq!(c.send(c.request(Method::DELETE, &format!("/v1/webhooks/{gone_id}"))).await.status, 204);
    let before = list(&c).await;
    assert_eq!(before.len(), 1);
    assert_eq!((&before[0]["enabled"], before[0]["previous_secret_expires_at"].is_string()), (&json!(false), true), "{before:?}");

    stack.gateway.terminate().await;
    let out = stack.rebuild_projections();
    assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
    stack.gateway.respawn();
    stack.wait_ready().await;
    assert_eq!(list(&c).await, before, "after `projections rebuild`");
    stack.gateway.terminate().await;
    std::fs::remove_dir_all(stack.data_dir().join("projections")).expect("removing the projections");
    stack.gateway.respawn();
    stack.wait_ready().await;
    assert_eq!(list(&c).await, before, "after replaying the stream");
    assert_eq!(c.get(&format!("/v1/webhooks/{gone_id}")).await.0, 404);
}
