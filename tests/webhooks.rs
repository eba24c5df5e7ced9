//! Webhook endpoints (`/v1/webhooks`): create, list, read, change, rotate
//! the secret of and delete in the caller's org; the secret is shown in the
//! creation's and rotation's answers only, is in no event, and both secrets
//! are kept during the overlap; another org's endpoint is not found; a
//! private-address URL is refused unless the gateway runs with
//! `--webhook-allow-private`; every bad input is a 4xx that changes nothing;
//! and the endpoints are events, so a projection rebuilt from the stream has
//! them (and the same delivery history). A test event is a `webhook.test` event; deliveries are the
//! deliverer's `webhook.delivery_attempted` events (appended here as its NATS
//! role does: no deliverer runs in these stacks), listed, read and retried
//! through `/v1/webhooks/{id}/deliveries`.

#[path = "common/mod.rs"]
mod common;

use base64::Engine;
use common::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use vmplane_domain::delivery::{AttemptOutcome, DeliveryAttempt, DisableReason};
use vmplane_domain::webhook::WebhookEvent;
use vmplane_domain::{DeliveryId, Envelope, Event, EventId, OrgId, WebhookId, subjects};

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

/// Append `event` of endpoint `wh` of `org` on `subject` as the deliverer
/// does: with its NATS role.
async fn append_as_deliverer(stack: &Stack, subject: String, org: OrgId, wh: WebhookId, event: WebhookEvent) {
    let client = stack.nats.connect(Some("webhooks")).await.expect("connecting as the deliverer");
    let js = vmplane_bus::async_nats::jetstream::new(client);
    let env = Envelope::new(org, None, wh.to_string(), None, Event::Webhook(event), OffsetDateTime::now_utc());
    let payload = vmplane_domain::event::encode(&env).expect("an envelope encodes");
    js.publish(subject, payload.into()).await.expect("publishing").await.expect("the stream's ack");
}

/// A `webhook.delivery_attempted` of `event` (at stream sequence `seq`) to
/// `wh`, as the deliverer appends it.
async fn append_attempt(stack: &Stack, org: &str, wh: &str, (event, seq): (EventId, u64), n: u32, status: Option<u16>, outcome: AttemptOutcome) {
    let (org, wh): (OrgId, WebhookId) = (org.parse().unwrap(), wh.parse().unwrap());
    let next_retry_at = (outcome == AttemptOutcome::Retrying).then(|| OffsetDateTime::now_utc() + time::Duration::minutes(5));
    let attempt = DeliveryAttempt {
        delivery_id: DeliveryId::of(event),
        event_id: event,
        event_seq: seq,
        event_type: "webhook.test".into(),
        aggregate: wh.to_string(),
        attempt: n,
        attempted_at: OffsetDateTime::now_utc(),
        status,
        error: status.is_none().then(|| "connection refused".to_owned()),
        duration_ms: 7,
        outcome,
        next_retry_at,
        manual: false,
    };
    append_as_deliverer(stack, subjects::webhook_deliveries(org, wh), org, wh, WebhookEvent::DeliveryAttempted(Box::new(attempt))).await;
}

/// The events of `path` (`/v1/events?…`) until one satisfies `done`.
async fn feed_until(c: &Client, path: &str, done: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
    let rb = c.request_untimed(Method::GET, path).header("accept", "text/event-stream");
    SseStream::open(rb).await.read_until(WAIT, done).await
}

/// `GET path` until it answers `status`.
async fn get_until(c: &Client, path: &str, what: &str, mut ok: impl FnMut(u16, &Value) -> bool) -> Value {
    wait_for(what, WAIT, async || {
        let (s, b) = c.get(path).await;
        if ok(s, &b) { Ok(b) } else { Err(format!("{s} {b}")) }
    })
    .await
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
    // Deliveries: two attempts of one event to `kept`, one to `gone` (which goes with it).
    let (org, event) = (str_of(&kept["org_id"]).to_owned(), EventId::new());
    append_attempt(&stack, &org, &kept_id, (event, 3), 1, None, AttemptOutcome::Retrying).await;
    append_attempt(&stack, &org, &kept_id, (event, 3), 2, Some(200), AttemptOutcome::Delivered).await;
    append_attempt(&stack, &org, &gone_id, (event, 3), 1, Some(200), AttemptOutcome::Delivered).await;
    let deliveries = format!("/v1/webhooks/{kept_id}/deliveries");
    let history = get_until(&c, &deliveries, "the deliveries", |_, b| b["data"][0]["attempts"].as_array().is_some_and(|a| a.len() == 2)).await;
    get_until(&c, &format!("/v1/webhooks/{gone_id}/deliveries"), "gone's delivery", |_, b| b["pagination"]["total_items"] == 1).await;
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
    assert_eq!(c.get(&deliveries).await.1, history, "the same delivery history");
    stack.gateway.terminate().await;
    std::fs::remove_dir_all(stack.data_dir().join("projections")).expect("removing the projections");
    stack.gateway.respawn();
    stack.wait_ready().await;
    assert_eq!(list(&c).await, before, "after replaying the stream");
    assert_eq!(c.get(&format!("/v1/webhooks/{gone_id}")).await.0, 404);
    assert_eq!(c.get(&deliveries).await.1, history, "the same delivery history");
    assert_eq!(c.get(&format!("/v1/webhooks/{gone_id}/deliveries")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_events_deliveries_and_retries() {
    let stack = permissive_stack().await;
    let admin = &stack.admin;
    let (org_a, org_b) = (admin.create_org("alpha").await, admin.create_org("beta").await);
    let a = stack.client(&admin.create_key(&org_a, "a").await);
    let b = stack.client(&admin.create_key(&org_b, "b").await);
    let wh = create(&a, json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["vm.*"] })).await;
    let id = str_of(&wh["id"]).to_owned();
    assert_eq!((&wh["enabled"], &wh["disabled_reason"]), (&json!(true), &Value::Null), "{wh}");
    let deliveries = format!("/v1/webhooks/{id}/deliveries");
    let before = a.get(&format!("/v1/webhooks/{id}")).await.1;

    // A new endpoint has no deliveries.
    let (s, page) = a.get(&deliveries).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!((&page["data"], &page["pagination"]["total_items"], &page["pagination"]["current_page"]), (&json!([]), &json!(0), &json!(1)), "{page}");

    // A test: 202 with its operation, which records a `webhook.test` event on the endpoint.
    let (s, op) = a.post_empty(&format!("/v1/webhooks/{id}/test")).await;
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["target_id"], id.as_str(), "{op}");
    a.wait_op_succeeded(str_of(&op["id"])).await;
    let feed = feed_until(&a, "/v1/events?type=webhook.test", |e| e.data["aggregate_id"] == id.as_str()).await;
    let test = feed.last().unwrap();
    assert_eq!((test.event.as_str(), &test.data["event"]["aggregate_type"], &test.data["operation_id"]), ("test", &json!("webhook"), &op["id"]), "{test:?}");
    assert!(feed.iter().all(|e| e.event == "test"), "only webhook.test events: {feed:?}");
    let (test_id, test_seq): (EventId, u64) = (str_of(&test.data["id"]).parse().unwrap(), test.id);

    // The deliverer's attempts: a 500, then a 2xx.
    let dlv = DeliveryId::of(test_id).to_string();
    append_attempt(&stack, &org_a, &id, (test_id, test_seq), 1, Some(500), AttemptOutcome::Retrying).await;
    let one = format!("{deliveries}/{dlv}");
    let d = get_until(&a, &one, "the first attempt", |s, _| s == 200).await;
    assert_eq!((&d["status"], d["next_retry_at"].is_string(), d["attempts"].as_array().map(Vec::len)), (&json!("retrying"), true, Some(1)), "{d}");
    append_attempt(&stack, &org_a, &id, (test_id, test_seq), 2, Some(204), AttemptOutcome::Delivered).await;
    let d = get_until(&a, &one, "the second attempt", |_, b| b["status"] == "delivered").await;
    assert_eq!((&d["id"], &d["webhook_id"], &d["event_id"], &d["event_seq"]), (&json!(dlv), &json!(id), &test.data["id"], &json!(test_seq)), "{d}");
    assert_eq!((&d["event_type"], &d["aggregate"], &d["next_retry_at"]), (&json!("webhook.test"), &json!(id), &Value::Null), "{d}");
    let attempts: Vec<(Value, Value, Value, Value)> =
        d["attempts"].as_array().unwrap().iter().map(|t| (t["attempt"].clone(), t["status"].clone(), t["outcome"].clone(), t["error"].clone())).collect();
    assert_eq!(attempts, vec![(json!(1), json!(500), json!("retrying"), Value::Null), (json!(2), json!(204), json!("delivered"), Value::Null)]);
    assert!(d["attempts"][0]["next_retry_at"].is_string() && d["attempts"][0]["duration_ms"] == 7, "{d}");
    assert_eq!(d["created_at"], d["attempts"][0]["attempted_at"], "{d}");
    // Another delivery, failing without an answer: listed first (its event is newer).
    let later = EventId::new();
    append_attempt(&stack, &org_a, &id, (later, test_seq + 100), 1, None, AttemptOutcome::Failed).await;
    let page = get_until(&a, &deliveries, "two deliveries", |_, b| b["pagination"]["total_items"] == 2).await;
    let listed: Vec<&Value> = page["data"].as_array().unwrap().iter().map(|d| &d["id"]).collect();
    assert_eq!(listed, [&json!(DeliveryId::of(later).to_string()), &json!(dlv)], "newest first: {page}");
    assert_eq!(page["data"][0]["attempts"][0]["error"], "connection refused", "{page}");
    for (query, want) in [("status=delivered", vec![dlv.clone()]), ("status=failed", vec![DeliveryId::of(later).to_string()]), ("status=retrying", vec![])] {
        let (s, p) = a.get(&format!("{deliveries}?{query}")).await;
        assert_eq!(s, 200, "{query}: {p}");
        let got: Vec<&str> = p["data"].as_array().unwrap().iter().map(|d| str_of(&d["id"])).collect();
        assert_eq!((got, &p["pagination"]["total_items"]), (want.iter().map(String::as_str).collect::<Vec<_>>(), &json!(want.len())), "{query}");
    }
    let (s, p) = a.get(&format!("{deliveries}?limit=1&page=2")).await;
    assert_eq!((s, p["data"][0]["id"].as_str(), &p["pagination"]["total_pages"]), (200, Some(dlv.as_str()), &json!(2)), "{p}");
    // The endpoint's own record is not touched by its deliveries.
    assert_eq!(a.get(&format!("/v1/webhooks/{id}")).await.1, before);

    // A retry: 202 with its operation, which asks the deliverer for that event again.
    let (s, op) = a.post_empty(&format!("{one}/retry")).await;
    assert_eq!(s, 202, "{op}");
    a.wait_op_succeeded(str_of(&op["id"])).await;
    let feed = feed_until(&a, "/v1/events?type=webhook.delivery_retry_requested", |e| e.data["operation_id"] == op["id"]).await;
    let asked = &feed.last().unwrap().data["event"]["data"];
    assert_eq!((&asked["delivery"], &asked["event_seq"]), (&json!(dlv), &json!(test_seq)), "{asked}");

    // Unknown and foreign: 404 (nothing shown); bad ids and filters: 400.
    let unknown = format!("{deliveries}/{}", DeliveryId::of(EventId::new()));
    for (who, what, (s, body)) in [
        ("a", "an unknown delivery", a.get(&unknown).await),
        ("a", "a retry of an unknown delivery", a.post_empty(&format!("{unknown}/retry")).await),
        ("b", "A's deliveries", b.get(&deliveries).await),
        ("b", "A's delivery", b.get(&one).await),
        ("b", "a test of A's endpoint", b.post_empty(&format!("/v1/webhooks/{id}/test")).await),
        ("b", "a retry of A's delivery", b.post_empty(&format!("{one}/retry")).await),
        ("admin", "A's delivery, in another org", admin.get(&one).await),
        ("a", "a test of an unknown endpoint", a.post_empty(&format!("/v1/webhooks/{}/test", WebhookId::new())).await),
        ("a", "deliveries of an unknown endpoint", a.get(&format!("/v1/webhooks/{}/deliveries", WebhookId::new())).await),
    ] {
        assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{who}: {what}: {body}");
        assert!(!body.to_string().contains("127.0.0.1:9"), "{what} shows nothing of it: {body}");
    }
    for (what, (s, body), code) in [
        ("a bad delivery id", a.get(&format!("{deliveries}/dlv_nope")).await, "invalid_id"),
        ("a delivery id of another kind", a.get(&format!("{deliveries}/{id}")).await, "invalid_id"),
        ("a bad endpoint id", a.get("/v1/webhooks/wh_nope/deliveries").await, "invalid_id"),
        ("a retry with a bad id", a.post_empty(&format!("{deliveries}/dlv_nope/retry")).await, "invalid_id"),
        ("a test with a bad id", a.post_empty("/v1/webhooks/wh_nope/test").await, "invalid_id"),
        ("an unknown status", a.get(&format!("{deliveries}?status=lost")).await, "invalid_query"),
        ("an unknown parameter", a.get(&format!("{deliveries}?state=failed")).await, "invalid_query"),
        ("a zero limit", a.get(&format!("{deliveries}?limit=0")).await, "invalid_query"),
    ] {
        assert_eq!((s, body["code"].as_str()), (400, Some(code)), "{what}: {body}");
    }
    assert_eq!(
        b.get(&format!("/v1/webhooks/{}/deliveries", str_of(&create(&b, json!({ "url": "http://127.0.0.1:9/b" })).await["id"]))).await.1["data"],
        json!([])
    );

    // Disabled by its deliveries (410): `enabled: false` with the reason, until its owner enables it again.
    let (org, wh_id): (OrgId, WebhookId) = (org_a.parse().unwrap(), id.parse().unwrap());
    append_as_deliverer(&stack, subjects::webhook_events(org, wh_id), org, wh_id, WebhookEvent::EndpointDisabled { reason: DisableReason::Gone }).await;
    let w = get_until(&a, &format!("/v1/webhooks/{id}"), "the endpoint disabled", |_, b| b["enabled"] == false).await;
    assert_eq!(w["disabled_reason"], "gone", "{w}");
    assert_eq!(list(&a).await[0]["disabled_reason"], "gone");
    let (s, w) = patch(&a, &format!("/v1/webhooks/{id}"), &json!({ "enabled": true })).await;
    assert_eq!((s, &w["enabled"], &w["disabled_reason"]), (200, &json!(true), &Value::Null), "{w}");
}
