//! Webhook delivery end to end: a real deliverer process (`vmplane webhooks`)
//! posting to a real HTTP receiver on 127.0.0.1, which checks every
//! signature with its own implementation of the Standard Webhooks scheme
//! (HMAC-SHA256, compared in constant time).
//!
//! The retry schedule is compressed (`--webhook-retry-schedule`), and the
//! gateway and deliverer run with `--webhook-allow-private` so that the
//! loopback receiver is allowed, except where the test is that it is not.

mod common;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use base64::Engine;
use common::*;
use hmac::Mac;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Attempts come 300 ms apart after the first (twelve in all).
const FAST: &str = "0s,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms";

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    json: Value,
    /// The status it answered.
    answered: u16,
    at: Instant,
}

/// How the receiver answers a request at `path`: status and headers, given
/// the request and everything received before it.
type Script = Box<dyn Fn(&Got, &[Got]) -> (u16, Vec<(&'static str, String)>) + Send + Sync>;

#[derive(Default)]
struct Inbox {
    got: Mutex<Vec<Got>>,
    scripts: Mutex<HashMap<String, Script>>,
}

struct Receiver {
    base: String,
    inbox: Arc<Inbox>,
}

impl Receiver {
    async fn start() -> Self {
        let inbox = Arc::new(Inbox::default());
        let app = axum::Router::new().route("/{*path}", axum::routing::post(receive)).with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the receiver");
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, inbox }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Answer requests at `path` as `script` says (else 200).
    fn script(&self, path: &str, script: Script) {
        self.inbox.scripts.lock().unwrap().insert(path.to_owned(), script);
    }

    /// Everything received at `path`, in order of arrival.
    fn at(&self, path: &str) -> Vec<Got> {
        self.inbox.got.lock().unwrap().iter().filter(|g| g.path == path).cloned().collect()
    }

    /// Wait until `done` holds for what arrived at `path`.
    async fn wait(&self, what: &str, path: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        wait_for(what, WAIT, async || {
            let got = self.at(path);
            if done(&got) { Ok(got) } else { Err(format!("{} received: {:?}", got.len(), got.iter().map(kind).collect::<Vec<_>>())) }
        })
        .await
    }
}

/// Answers as scripted; paths starting with `hang` answer after 5 s, and
/// with `huge` carry an 8 MiB body.
async fn receive(State(inbox): State<Arc<Inbox>>, Path(path): Path<String>, headers: HeaderMap, body: Bytes) -> (StatusCode, HeaderMap, Vec<u8>) {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut got = Got {
        path: path.clone(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        answered: 200,
        at: Instant::now(),
    };
    let (status, extra) = {
        let mut all = inbox.got.lock().unwrap();
        let before: Vec<Got> = all.iter().filter(|g| g.path == path).cloned().collect();
        let (status, extra) = inbox.scripts.lock().unwrap().get(&path).map_or((200, vec![]), |s| s(&got, &before));
        got.answered = status;
        all.push(got);
        (status, extra)
    };
    let mut out = HeaderMap::new();
    for (name, value) in extra {
        out.insert(HeaderName::from_static(name), HeaderValue::from_str(&value).unwrap());
    }
    if path.starts_with("hang") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let body = if path.starts_with("huge") { vec![b'x'; 8 << 20] } else { vec![] };
    (StatusCode::from_u16(status).unwrap(), out, body)
}

/// `<aggregate>:<type>` of a received event, for messages.
fn kind(g: &Got) -> String {
    format!("{}:{}", g.json["aggregate_id"].as_str().unwrap_or("?"), g.json["type"].as_str().unwrap_or("?"))
}

// ---------------------------------------------------------------------------
// An independent verifier of the Standard Webhooks signature
// ---------------------------------------------------------------------------

/// Whether one of the `v1,` signatures in `header` is the HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under `secret` (`whsec_` + base64 key).
fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").expect("a whsec_ secret")).expect("a base64 secret");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    header.split(' ').filter_map(|s| s.strip_prefix("v1,")).filter_map(|s| b64.decode(s).ok()).any(|sig| bool::from(sig.ct_eq(expected.as_slice())))
}

/// Whether the timestamp is within five minutes of now (the tolerance receivers use against replays).
fn fresh(timestamp: &str) -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    timestamp.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300)
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A stack whose deliverer runs with `args` (loopback allowed unless `private` is false).
async fn stack(deliverer_private: bool, args: &[&str]) -> Stack {
    let mut webhooks: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if deliverer_private {
        webhooks.push("--webhook-allow-private".into());
    }
    Stack::start_with(StackOpts {
        gateway_env: vec![("VMPLANE_WEBHOOK_ALLOW_PRIVATE".into(), "true".into()), ("VMPLANE_RATE_LIMIT".into(), "0".into())],
        webhooks: Some(webhooks),
        ..Default::default()
    })
    .await
}

/// A client acting in a new org.
async fn tenant(stack: &Stack, name: &str) -> (String, Client) {
    let org = stack.admin.create_org(name).await;
    let key = stack.admin.create_key(&org, name).await;
    (org, stack.client(&key))
}

/// Create an endpoint; returns its id and secret.
async fn endpoint(c: &Client, url: &str, types: Value) -> (String, String) {
    let (s, b) = c.post("/v1/webhooks", &json!({ "url": url, "event_types": types })).await;
    assert_eq!(s, 201, "{b}");
    (str_of(&b["id"]).to_owned(), str_of(&b["secret"]).to_owned())
}

/// The ids of a VM's events, in stream order.
async fn event_ids(c: &Client, vm: &str) -> Vec<String> {
    c.vm_events(vm).await.iter().map(|e| str_of(&e["id"]).to_owned()).collect()
}

/// Distinct event ids in order of first arrival.
fn first_arrivals<'a>(got: impl IntoIterator<Item = &'a Got>) -> Vec<String> {
    let mut seen = HashSet::new();
    got.into_iter().filter(|g| seen.insert(g.id.clone())).map(|g| g.id.clone()).collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Deliveries are signed (the receiver's own verifier agrees, a tampered
/// body does not), fresh, carry the SSE feed's document with the event id
/// as `webhook-id`, arrive in order, only to the org's own endpoints, only
/// of the types asked for; after a rotation, both secrets sign.
#[tokio::test]
async fn deliveries_are_signed_ordered_and_stay_in_their_org() {
    let stack = stack(true, &["--webhook-retry-schedule", FAST]).await;
    let rx = Receiver::start().await;
    let (org_a, a) = tenant(&stack, "alpha").await;
    let (org_b, b) = tenant(&stack, "beta").await;
    let (_, secret_a) = endpoint(&a, &rx.url("a"), json!(["vm.*"])).await;
    let (_, secret_b) = endpoint(&b, &rx.url("b"), json!([])).await;

    let vm_a = a.create_running_vm("va").await;
    let vm_b = b.create_running_vm("vb").await;
    let (vm_a, vm_b) = (str_of(&vm_a["id"]).to_owned(), str_of(&vm_b["id"]).to_owned());
    let want_a = event_ids(&a, &vm_a).await;
    let want_b = event_ids(&b, &vm_b).await;
    let got_a = rx.wait("org a's VM events at /a", "a", |g| want_a.iter().all(|id| g.iter().any(|x| &x.id == id))).await;
    let got_b = rx.wait("org b's VM events at /b", "b", |g| want_b.iter().all(|id| g.iter().any(|x| &x.id == id))).await;

    for g in &got_a {
        assert!(verify(&secret_a, &g.id, &g.timestamp, &g.body, &g.signature), "signature of {}", kind(g));
        assert!(!verify(&secret_b, &g.id, &g.timestamp, &g.body, &g.signature), "another endpoint's secret does not verify");
        let mut tampered = g.body.clone();
        tampered.extend_from_slice(b" ");
        assert!(!verify(&secret_a, &g.id, &g.timestamp, &tampered, &g.signature), "a tampered body fails");
        assert!(!verify(&secret_a, &g.id, "1", &g.body, &g.signature), "another timestamp fails");
        assert!(fresh(&g.timestamp), "timestamp {}", g.timestamp);
        assert_eq!(g.json["id"], g.id.as_str(), "webhook-id is the event id");
        assert_eq!(g.json["org_id"], org_a.as_str(), "only org a's events at /a: {}", g.json);
        assert!(g.json["event"]["aggregate_type"] == "vm", "the filter vm.* holds: {}", g.json);
        assert!(g.json["seq"].as_u64().is_some() && g.json["time"].is_string(), "the SSE document: {}", g.json);
    }
    assert_eq!(first_arrivals(got_a.iter().filter(|g| g.json["aggregate_id"] == vm_a.as_str())), want_a, "in stream order");
    assert!(got_b.iter().all(|g| g.json["org_id"] == org_b.as_str()), "only org b's events at /b");
    assert!(got_b.iter().all(|g| verify(&secret_b, &g.id, &g.timestamp, &g.body, &g.signature)));

    // The body is the feed's document, as GET /v1/vms/{id}/events shows it.
    let history = a.vm_events(&vm_a).await;
    let created = got_a.iter().find(|g| g.id == want_a[0]).unwrap();
    assert_eq!(created.json, history[0], "the webhook body is the event feed's document");

    // Rotation: the next deliveries carry two signatures, one per secret.
    let wh_a = str_of(&a.get("/v1/webhooks").await.1[0]["id"]).to_owned();
    let (s, rotated) = a.post_empty(&format!("/v1/webhooks/{wh_a}/rotate-secret")).await;
    assert!(s == 200 || s == 202, "{s} {rotated}");
    let new_secret = str_of(&rotated["secret"]).to_owned();
    let before = rx.at("a").len();
    a.act_and_wait(&vm_a, "stop", "stopped").await;
    let after = rx.wait("deliveries after the rotation", "a", |g| g.len() > before).await;
    for g in &after[before..] {
        assert_eq!(g.signature.split(' ').count(), 2, "two signatures during the overlap: {}", g.signature);
        assert!(verify(&new_secret, &g.id, &g.timestamp, &g.body, &g.signature), "the new secret verifies");
        assert!(verify(&secret_a, &g.id, &g.timestamp, &g.body, &g.signature), "the old secret verifies");
    }
}

/// 500, 500, then 200: three requests with the same `webhook-id`, then no
/// more. 410 disables the endpoint. `Retry-After` on 503 is waited out.
#[tokio::test]
async fn failures_are_retried_with_the_same_id_gone_disables_and_retry_after_is_honoured() {
    let stack = stack(true, &["--webhook-retry-schedule", FAST]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "retries").await;
    rx.script("flaky", Box::new(|_, before| (if before.len() < 2 { 500 } else { 200 }, vec![])));
    rx.script("gone", Box::new(|_, _| (410, vec![])));
    rx.script("busy", Box::new(|_, before| if before.is_empty() { (503, vec![("retry-after", "2".into())]) } else { (200, vec![]) }));
    endpoint(&c, &rx.url("flaky"), json!(["vm.created"])).await;
    let (gone, _) = endpoint(&c, &rx.url("gone"), json!(["vm.created"])).await;
    endpoint(&c, &rx.url("busy"), json!(["vm.created"])).await;

    c.create_running_vm("one").await;
    let flaky = rx.wait("three attempts at /flaky", "flaky", |g| g.len() >= 3).await;
    assert_eq!(flaky.iter().map(|g| g.answered).collect::<Vec<_>>(), [500, 500, 200]);
    assert!(flaky.iter().all(|g| g.id == flaky[0].id), "the same webhook-id on every attempt");

    let disabled = wait_for("the 410 endpoint disabled", WAIT, async || {
        let (s, b) = c.get(&format!("/v1/webhooks/{gone}")).await;
        if s == 200 && b["enabled"] == false { Ok(b) } else { Err(b.to_string()) }
    })
    .await;
    assert_eq!(rx.at("gone").len(), 1, "410 is not retried: {disabled}");

    let busy = rx.wait("the retry at /busy", "busy", |g| g.len() >= 2).await;
    let waited = busy[1].at - busy[0].at;
    assert!(waited >= Duration::from_millis(1900), "Retry-After: 2 was honoured (the schedule says 300 ms): waited {waited:?}");

    // Nothing more: another VM's `created` reaches /flaky once and /gone never.
    c.create_running_vm("two").await;
    rx.wait("the second VM at /flaky", "flaky", |g| g.len() >= 4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.at("flaky").len(), 4, "a delivered event is not sent again");
    assert_eq!(rx.at("gone").len(), 1, "a disabled endpoint gets nothing");
}

/// While one VM's deliveries fail, another VM's go through; the failing
/// VM's later events wait for its first, so they arrive in order.
#[tokio::test]
async fn a_failing_vm_holds_back_its_own_events_only() {
    let stack = stack(true, &["--webhook-retry-schedule", &vec!["300ms"; 30].join(",")]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "order").await;
    // Fail every event of the VM named `x` until the VM named `y` is known
    // to have been delivered up to its `ready`.
    rx.script(
        "o",
        Box::new(|got, before| {
            let x_id = before.iter().chain([got]).find(|g| g.json["event"]["data"]["spec"]["name"] == "x").map(|g| g.json["aggregate_id"].clone());
            let y_done = before.iter().any(|g| g.answered == 200 && g.json["type"] == "ready" && !x_id.as_ref().is_some_and(|x| &g.json["aggregate_id"] == x));
            let is_x = x_id.is_some_and(|x| got.json["aggregate_id"] == x);
            (if is_x && !y_done { 500 } else { 200 }, vec![])
        }),
    );
    endpoint(&c, &rx.url("o"), json!(["vm.*"])).await;
    let x = c.create_vm(json!({ "name": "x" })).await;
    let y = c.create_vm(json!({ "name": "y" })).await;
    let (x, y) = (str_of(&x["id"]).to_owned(), str_of(&y["id"]).to_owned());
    c.wait_vm_status(&x, "running").await;
    c.wait_vm_status(&y, "running").await;
    let (want_x, want_y) = (event_ids(&c, &x).await, event_ids(&c, &y).await);
    let got = rx
        .wait("both VMs' events accepted", "o", |g| {
            [&want_x, &want_y].iter().all(|want| want.iter().all(|id| g.iter().any(|r| &r.id == id && r.answered == 200)))
        })
        .await;
    let of = |vm: &str| got.iter().filter(|g| g.json["aggregate_id"] == vm).cloned().collect::<Vec<_>>();
    let (got_x, got_y) = (of(&x), of(&y));
    assert!(got_x.iter().any(|g| g.answered == 500), "x's deliveries failed first");
    assert_eq!(first_arrivals(&got_x), want_x, "x's events in order, none before its failing first one was delivered");
    assert!(
        got_x.iter().all(|g| g.id == want_x[0] || g.at > got_x.iter().find(|f| f.answered == 200).unwrap().at),
        "x's later events only after its first got through"
    );
    assert_eq!(first_arrivals(&got_y), want_y, "y's events in order");
    let y_ready = got_y.iter().find(|g| g.json["type"] == "ready" && g.answered == 200).unwrap().at;
    let x_first_ok = got_x.iter().find(|g| g.answered == 200).unwrap().at;
    assert!(y_ready < x_first_ok, "y was not held back by x");
}

/// kill -9 of the deliverer in the middle of a burst of more than 200
/// events: after a restart every event reaches the receiver; the only
/// duplicates are of deliveries in flight at the kill.
#[tokio::test]
async fn a_killed_deliverer_loses_nothing() {
    let mut stack = stack(true, &["--webhook-retry-schedule", FAST, "--webhook-max-in-flight", "16"]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "burst").await;
    endpoint(&c, &rx.url("all"), json!(["vm.*"])).await;
    // Slow answers keep deliveries in flight when the kill comes.
    rx.script(
        "all",
        Box::new(|_, _| {
            std::thread::sleep(Duration::from_millis(5));
            (200, vec![])
        }),
    );
    // The burst goes on while the deliverer is killed.
    let creator = c.clone();
    let burst = tokio::spawn(async move {
        let mut vms = Vec::new();
        for i in 0..30 {
            let b = creator.create_vm(json!({ "name": format!("b{i}") })).await;
            vms.push(str_of(&b["id"]).to_owned());
        }
        vms
    });
    rx.wait("the burst under way", "all", |g| g.len() >= 20).await;
    let webhooks = stack.webhooks.as_mut().expect("a deliverer");
    webhooks.kill9();
    let killed_at = Instant::now();
    let received_at_kill = first_arrivals(&rx.at("all")).len();
    webhooks.respawn();
    let vms = burst.await.unwrap();
    let mut want = Vec::new();
    for vm in &vms {
        c.wait_vm_status(vm, "running").await;
        want.extend(event_ids(&c, vm).await);
    }
    assert!(want.len() >= 200, "a burst of {} events", want.len());
    assert!(received_at_kill < want.len(), "the kill came in the middle of the burst ({received_at_kill} of {} received)", want.len());
    let got = rx.wait("every event after the restart", "all", |g| want.iter().all(|id| g.iter().any(|r| &r.id == id))).await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for g in &got {
        *count.entry(g.id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    eprintln!("{received_at_kill} of {} events received at the kill; {} sent twice", want.len(), twice.len());
    assert!(twice.len() <= 16, "duplicates only of the (at most 16) deliveries in flight: {}", twice.len());
    // Requests sent before the kill may still be in the receiver's hands for
    // a moment; the restarted deliverer sends nothing before the lease of the
    // killed one ran out (seconds).
    let grace = killed_at + Duration::from_secs(2);
    let first_sent = |id: &str| got.iter().find(|g| g.id == id).unwrap().at;
    assert!(twice.iter().all(|id| first_sent(id) < grace), "a duplicate was first sent before the kill");
    for vm in &vms {
        let ids: Vec<_> = first_arrivals(got.iter().filter(|g| g.json["aggregate_id"] == vm.as_str()));
        assert_eq!(ids, event_ids(&c, vm).await, "each VM's events in order across the restart");
    }
}

/// Without `--webhook-allow-private`, the deliverer refuses a loopback
/// address at delivery time (an endpoint accepted by a gateway that allowed
/// it, as one whose name now resolves elsewhere would be): the attempt is
/// recorded with the reason, and nothing reaches the receiver.
#[tokio::test]
async fn a_private_address_is_refused_at_delivery() {
    let stack = stack(false, &["--webhook-retry-schedule", "0s"]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "private").await;
    endpoint(&c, &format!("http://localhost:{}/p", rx.base.rsplit(':').next().unwrap()), json!(["vm.created"])).await;
    endpoint(&c, &rx.url("q"), json!(["vm.created"])).await;
    c.create_running_vm("p").await;
    let mut feed = c.sse(None).await;
    let attempts = feed
        .read_until(WAIT, {
            let mut n = 0;
            move |e| {
                n += usize::from(e.event == "delivery_attempted");
                n == 2
            }
        })
        .await;
    for a in attempts.iter().filter(|e| e.event == "delivery_attempted") {
        let data = &a.data["event"]["data"];
        assert_eq!(data["outcome"], "failed", "{data}");
        assert!(data["status"].is_null(), "no request was made: {data}");
        assert!(str_of(&data["error"]).contains("private"), "{data}");
    }
    assert!(rx.at("p").is_empty() && rx.at("q").is_empty(), "nothing reached the loopback receiver");
}

/// An endpoint that has failed without a success for the disable period
/// (here `--webhook-disable-after 1s`; 5 days by default) is disabled, with
/// a `webhook.endpoint_disabled` event saying why.
#[tokio::test]
async fn an_endpoint_failing_for_the_disable_period_is_disabled() {
    let stack = stack(true, &["--webhook-retry-schedule", FAST, "--webhook-disable-after", "1s"]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "failing").await;
    rx.script("down", Box::new(|_, _| (500, vec![])));
    let (id, _) = endpoint(&c, &rx.url("down"), json!(["vm.created"])).await;
    let mut feed = c.sse(None).await;
    c.create_running_vm("f").await;
    let disabled = feed.read_until(WAIT, |e| e.event == "endpoint_disabled").await.pop().unwrap();
    assert_eq!(disabled.data["aggregate_id"], id.as_str());
    assert_eq!(disabled.data["event"]["data"]["reason"], "failing", "{}", disabled.data);
    let (_, endpoint) = c.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(endpoint["enabled"], false, "{endpoint}");
    let tries = rx.at("down").len();
    assert!(tries >= 3, "it was retried until the period ran out: {tries}");
    // Its owner enables it again; it is delivered to once more.
    rx.script("down", Box::new(|_, _| (200, vec![])));
    let r = c.send(c.request(Method::PATCH, &format!("/v1/webhooks/{id}")).json(&json!({ "enabled": true }))).await;
    assert!(r.status == 200 || r.status == 202, "{r:?}");
    c.create_running_vm("g").await;
    rx.wait("a delivery after enabling it again", "down", |g| g.iter().any(|r| r.answered == 200)).await;
}

/// A second deliverer beside the stack's own, once it stands by.
async fn standby_deliverer(stack: &Stack) -> Proc {
    let mut args = vec!["webhooks".to_owned()];
    args.extend(stack.nats.args("webhooks"));
    args.extend(["--data-dir".to_owned(), stack.data_dir().display().to_string(), "--webhook-allow-private".to_owned()]);
    let standby = Proc::start("webhooks-2", BIN, args, vec![], stack.root().join("webhooks-2.log"));
    wait_for("the second deliverer standing by", WAIT, async || if standby.log_mentions("standing by") { Ok(()) } else { Err(standby.log_tail(5)) }).await;
    standby
}

/// Stop the stack's deliverer (SIGTERM) and wait until `standby` is active.
async fn hand_over(stack: &mut Stack, standby: &Proc) {
    stack.webhooks.as_mut().unwrap().terminate().await;
    wait_for("the standby active", WAIT, async || if standby.log_mentions("this deliverer is active") { Ok(()) } else { Err(standby.log_tail(5)) }).await;
}

/// Two deliverers: one is active, the other stands by, and nothing is sent
/// twice; when the active one stops, the other takes over.
#[tokio::test]
async fn a_standby_deliverer_takes_over_without_double_delivery() {
    let mut stack = stack(true, &["--webhook-retry-schedule", FAST]).await;
    let mut standby = standby_deliverer(&stack).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "replicas").await;
    endpoint(&c, &rx.url("r"), json!(["vm.*"])).await;

    let one = c.create_running_vm("one").await;
    let want_one = event_ids(&c, str_of(&one["id"])).await;
    rx.wait("the first VM's events", "r", |g| want_one.iter().all(|id| g.iter().any(|r| &r.id == id))).await;

    // A clean stop hands the lease over at once.
    hand_over(&mut stack, &standby).await;
    let two = c.create_running_vm("two").await;
    let want_two = event_ids(&c, str_of(&two["id"])).await;
    let got = rx.wait("the second VM's events", "r", |g| want_two.iter().all(|id| g.iter().any(|r| &r.id == id))).await;
    let mut ids: Vec<&str> = got.iter().map(|g| g.id.as_str()).collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "no event was delivered twice");
    standby.terminate().await;
}

/// A clean stop while a delivery is in progress (the receiver has the
/// request and has not answered yet): the stopping deliverer finishes it and
/// acknowledges it before letting the lease go, so the deliverer that takes
/// over does not send it again.
#[tokio::test]
async fn a_clean_stop_finishes_the_delivery_in_progress() {
    let mut stack = stack(true, &["--webhook-retry-schedule", FAST]).await;
    let mut standby = standby_deliverer(&stack).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "inflight").await;
    // `hang…` paths answer 5 s after the request came.
    endpoint(&c, &rx.url("hang-stop"), json!(["vm.created"])).await;

    let one = c.create_running_vm("one").await;
    rx.wait("the first VM's created, in progress", "hang-stop", |g| g.len() == 1).await;
    hand_over(&mut stack, &standby).await;
    let two = c.create_running_vm("two").await;
    // The standby would send the first event again (it was never
    // acknowledged) before the second VM's.
    let got = rx.wait("the second VM's created", "hang-stop", |g| g.iter().any(|r| r.json["aggregate_id"] == two["id"])).await;
    let kinds: Vec<String> = got.iter().map(kind).collect();
    assert_eq!(kinds, [format!("{}:created", str_of(&one["id"])), format!("{}:created", str_of(&two["id"]))], "each event delivered once");
    standby.terminate().await;
}

/// Deliveries parked behind a failing one live in JetStream: a deliverer
/// killed while they wait is replaced by one that sends them all, in order.
#[tokio::test]
async fn parked_deliveries_survive_a_killed_deliverer() {
    let mut stack = stack(true, &["--webhook-retry-schedule", &vec!["1s"; 30].join(",")]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "parked").await;
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answer = up.clone();
    rx.script("p", Box::new(move |_, _| (if answer.load(std::sync::atomic::Ordering::SeqCst) { 200 } else { 503 }, vec![])));
    endpoint(&c, &rx.url("p"), json!(["vm.*"])).await;
    let vm = c.create_running_vm("parked").await;
    let want = event_ids(&c, str_of(&vm["id"])).await;
    rx.wait("the first attempt refused", "p", |g| !g.is_empty()).await;
    let webhooks = stack.webhooks.as_mut().unwrap();
    webhooks.kill9();
    assert!(rx.at("p").iter().all(|g| g.id == want[0]), "nothing behind the failing head was sent");
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    webhooks.respawn();
    let got = rx.wait("every event after the restart", "p", |g| want.iter().all(|id| g.iter().any(|r| &r.id == id && r.answered == 200))).await;
    assert_eq!(first_arrivals(got.iter().filter(|g| g.answered == 200)), want, "in order");
}

/// An endpoint that never answers in time, or answers with a flood, holds up
/// no other endpoint: attempts end at `--webhook-timeout` and only the start
/// of an answer is read.
#[tokio::test]
async fn a_slow_or_flooding_endpoint_holds_up_no_other() {
    let stack = stack(true, &["--webhook-retry-schedule", "0s,200ms", "--webhook-timeout", "1s"]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "hostile").await;
    for path in ["hang", "huge", "ok"] {
        endpoint(&c, &rx.url(path), json!(["vm.*"])).await;
    }
    let mut feed = c.sse(None).await;
    let vm = c.create_running_vm("h").await;
    let want = event_ids(&c, str_of(&vm["id"])).await;
    rx.wait("every event at /ok", "ok", |g| want.iter().all(|id| g.iter().any(|r| &r.id == id))).await;
    rx.wait("every event at /huge", "huge", |g| want.iter().all(|id| g.iter().any(|r| &r.id == id))).await;
    // The hanging endpoint's first delivery timed out twice and was given up.
    let failed = feed.read_until(WAIT, |e| e.event == "delivery_attempted" && e.data["event"]["data"]["outcome"] == "failed").await.pop().unwrap();
    let attempt = &failed.data["event"]["data"];
    assert_eq!(attempt["attempt"], 2, "{attempt}");
    assert!(str_of(&attempt["error"]).contains("timeout"), "{attempt}");
    assert!(attempt["duration_ms"].as_u64().unwrap() < 4_000, "the attempt ended at the timeout, not the answer: {attempt}");
}

/// `POST /v1/webhooks/{id}/test` reaches the endpoint as a signed
/// `webhook.test`; the deliveries list shows each attempt; a manual retry
/// sends a delivered event again, with the same `webhook-id`.
#[tokio::test]
async fn test_events_the_deliveries_list_and_manual_retries() {
    let stack = stack(true, &["--webhook-retry-schedule", FAST]).await;
    let rx = Receiver::start().await;
    let (_, c) = tenant(&stack, "manual").await;
    let (id, secret) = endpoint(&c, &rx.url("m"), json!(["vm.created"])).await;

    let (s, b) = c.post_empty(&format!("/v1/webhooks/{id}/test")).await;
    assert_eq!(s, 202, "{b}");
    let got = rx.wait("the test event", "m", |g| !g.is_empty()).await;
    assert_eq!(got[0].json["type"], "test", "{}", got[0].json);
    assert_eq!(got[0].json["event"]["aggregate_type"], "webhook");
    assert_eq!(got[0].json["aggregate_id"], id.as_str());
    assert!(verify(&secret, &got[0].id, &got[0].timestamp, &got[0].body, &got[0].signature));

    let vm = c.create_running_vm("m").await;
    let created = event_ids(&c, str_of(&vm["id"])).await[0].clone();
    rx.wait("the VM's created", "m", |g| g.iter().any(|r| r.id == created)).await;
    let delivery = format!("dlv_{}", created.strip_prefix("evt_").unwrap());
    let record = wait_for("the delivery recorded", WAIT, async || {
        let (s, b) = c.get(&format!("/v1/webhooks/{id}/deliveries/{delivery}")).await;
        if s == 200 && b["status"] == "delivered" { Ok(b) } else { Err(format!("{s} {b}")) }
    })
    .await;
    assert_eq!(record["event_id"], created.as_str(), "{record}");
    assert_eq!(record["attempts"][0]["status"], 200, "{record}");
    let (s, list) = c.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2), "the test and the created: {list}");

    // A manual retry sends it again, same webhook-id, and is recorded as manual.
    let (s, b) = c.post_empty(&format!("/v1/webhooks/{id}/deliveries/{delivery}/retry")).await;
    assert_eq!(s, 202, "{b}");
    rx.wait("the retried delivery", "m", |g| g.iter().filter(|r| r.id == created).count() == 2).await;
    wait_for("the manual attempt recorded", WAIT, async || {
        let (_, b) = c.get(&format!("/v1/webhooks/{id}/deliveries/{delivery}")).await;
        let attempts = b["attempts"].as_array().cloned().unwrap_or_default();
        if attempts.iter().any(|a| a["manual"] == true && a["status"] == 200) { Ok(()) } else { Err(b.to_string()) }
    })
    .await;
}
