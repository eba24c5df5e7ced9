//! A tenant must not reach another tenant, or the host, through the gateway:
//! idempotency records after authentication, scoped and sealed; a lost
//! publish acknowledgement never makes two VMs; placement reserves what it
//! accepts; host ports inside the operator's range; unique bridge addresses;
//! per-key session caps and bounded WebSocket messages and metric labels;
//! host usage per tenant; API key revocation on every gateway; and a
//! cross-tenant matrix over every route.

#[path = "common/mod.rs"]
mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;

const IDEMPOTENCY_STREAM: &str = "KV_vmplane_idempotency";

async fn stream_info(nc: &async_nats::Client, name: &str) -> async_nats::jetstream::stream::Info {
    let js = async_nats::jetstream::new(nc.clone());
    js.get_stream(name).await.unwrap_or_else(|e| panic!("stream {name}: {e}")).get_info().await.unwrap_or_else(|e| panic!("stream {name} info: {e}"))
}

/// Every message now in a stream, subject and payload.
async fn stream_messages(nc: &async_nats::Client, name: &str) -> Vec<(String, Vec<u8>)> {
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js.get_stream(name).await.expect("stream");
    let state = stream.get_info().await.expect("info").state;
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push((m.subject.to_string(), m.payload.to_vec()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn post_with_key(c: &Client, path: &str, key: &str, body: &Value) -> Resp {
    c.send(c.request(Method::POST, path).header("idempotency-key", key).json(body)).await
}

/// A WebSocket to a VM's terminal, or the HTTP status that refused it.
async fn terminal(
    base: &str,
    token: &str,
    vm: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, u16> {
    let url = format!("{}/v1/vms/{vm}/terminal", base.replace("http://", "ws://"));
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("terminal websocket: {e}"),
    }
}

/// Two orgs with a key each: (org A, key A, org B, key B).
async fn two_tenants(stack: &Stack) -> (String, String, String, String) {
    let org_a = stack.admin.create_org("acme").await;
    let org_b = stack.admin.create_org("globex").await;
    let key_a = stack.admin.create_key(&org_a, "a").await;
    let key_b = stack.admin.create_key(&org_b, "b").await;
    (org_a, key_a, org_b, key_b)
}

/// Wait until every accepted command has been carried out (the work queue
/// is empty) and this gateway has projected every event.
async fn settle(stack: &Stack, nc: &async_nats::Client) {
    wait_for("the command queue to drain", WAIT, async || {
        let n = stream_info(nc, "VMPLANE_COMMANDS").await.state.messages;
        if n == 0 { Ok(()) } else { Err(format!("{n} commands queued")) }
    })
    .await;
    let anon = stack.anonymous();
    wait_for("projections to catch up", WAIT, async || match anon.try_get("/readyz").await {
        Some((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_runs_after_authentication_is_scoped_sealed_and_bounded() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let nc = stack.nats_client().await;
    let (org_a, key_a, _, _) = two_tenants(&stack).await;
    let a = stack.client(&key_a);

    let info = stream_info(&nc, IDEMPOTENCY_STREAM).await;
    assert!(info.config.max_bytes > 0 && info.config.max_messages > 0, "the bucket is bounded: {:?}", info.config);
    let before = info.state.messages;

    // Unauthenticated or wrongly authenticated floods never touch the bucket.
    let tampered = format!("{}x", &key_a[..key_a.len() - 1]);
    let body = json!({ "name": "flood" });
    for i in 0..60 {
        let key = format!("flood-{i}");
        let anon = stack.anonymous();
        let r = post_with_key(&anon, "/v1/vms", &key, &body).await;
        assert_eq!(r.status, 401, "{:?}", r.body);
        for token in ["nope", "vmp_key_01jdx3v9k6m2w8q4r5t7y9z0ab_00", tampered.as_str()] {
            let r = post_with_key(&stack.client(token), "/v1/vms", &key, &body).await;
            assert_eq!(r.status, 401, "{token}: {:?}", r.body);
        }
        // Authenticated, but acting in an org it may not: refused before the bucket too.
        let r = post_with_key(&a.with_header("x-vmplane-org", "org_00000000000000000000000000"), "/v1/vms", &key, &body).await;
        assert_eq!(r.status, 403, "{:?}", r.body);
    }
    assert_eq!(stream_info(&nc, IDEMPOTENCY_STREAM).await.state.messages, before, "refused requests left idempotency records");

    // An API key's creation answer is replayable, but nothing readable is stored.
    let marker = "idem-marker-7f3a";
    let create = json!({ "name": "ci", "org_id": org_a });
    let first = post_with_key(admin, "/v1/api-keys", marker, &create).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let secret = str_of(&first.body["secret"]).to_owned();
    let again = post_with_key(admin, "/v1/api-keys", marker, &create).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(again.body["secret"], secret.as_str(), "the replay is the first answer");
    assert_eq!(stack.client(&secret).get("/v1/vms").await.0, 200, "the replayed secret works");
    let key_id = str_of(&first.body["id"]);
    for (subject, payload) in stream_messages(&nc, IDEMPOTENCY_STREAM).await {
        assert!(!contains(&payload, secret.as_bytes()) && !contains(&payload, secret.split('_').next_back().unwrap().as_bytes()), "secret stored readable");
        assert!(!contains(&payload, key_id.as_bytes()) && !contains(&payload, b"\"name\""), "answer stored readable: {}", String::from_utf8_lossy(&payload));
        assert!(!subject.contains(marker), "record named by the raw key: {subject}");
    }
    assert_eq!(stream_info(&nc, IDEMPOTENCY_STREAM).await.state.messages, before + 1);
    // The same key with another request is refused; nothing is created.
    let r = post_with_key(admin, "/v1/api-keys", marker, &json!({ "name": "other", "org_id": org_a })).await;
    assert_eq!((r.status, r.body["code"].as_str()), (422, Some("idempotency_key_reused")), "{:?}", r.body);

    // Another caller's same Idempotency-Key is its own: no replay, no 422.
    let mine = post_with_key(&a, "/v1/vms", marker, &json!({ "name": "mine" })).await;
    assert_eq!(mine.status, 202, "{:?}", mine.body);
    assert!(mine.headers.get("idempotent-replayed").is_none());
    assert_eq!(mine.body["org_id"], org_a.as_str());

    // A 409 is not final: after the conflict is gone, the same key runs again.
    let holder = admin.create_vm(json!({ "name": "holder", "port_forwards": [{ "guest_port": 80, "host_port": 25000 }] })).await;
    let want = json!({ "name": "wants-port", "port_forwards": [{ "guest_port": 80, "host_port": 25000 }] });
    let r = post_with_key(admin, "/v1/vms", "port-key", &want).await;
    assert_eq!((r.status, r.body["code"].as_str()), (409, Some("port_conflict")), "{:?}", r.body);
    admin.wait_op_succeeded(str_of(&holder["operation"]["id"])).await;
    let deleted = admin.act(str_of(&holder["id"]), "delete").await;
    admin.wait_op_succeeded(str_of(&deleted["operation"]["id"])).await;
    let r = post_with_key(admin, "/v1/vms", "port-key", &want).await;
    assert_eq!(r.status, 202, "the 409 was stored and replayed: {:?}", r.body);
    assert!(r.headers.get("idempotent-replayed").is_none());
}

/// A TCP proxy in front of nats-server that can lose the server's
/// acknowledgements of command publishes (the publishes themselves arrive):
/// the client cannot know whether its command was stored. It reads the
/// server's protocol frame by frame and drops the messages carrying an
/// acknowledgement from the command stream.
struct AckLosingProxy {
    port: u16,
    /// Drop acknowledgements while this many remain to drop.
    drop: Arc<std::sync::atomic::AtomicUsize>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl AckLosingProxy {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy listener");
        let port = listener.local_addr().unwrap().port();
        let proxy = Self { port, drop: Arc::default(), dropped: Arc::default() };
        let (drop, dropped) = (proxy.drop.clone(), proxy.dropped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let (drop, dropped) = (drop.clone(), dropped.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 64 << 10];
                    while let Ok(n) = sr.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(len) = frame_len(&buf) {
                            let frame: Vec<u8> = buf.drain(..len).collect();
                            let is_ack = frame.starts_with(b"MSG ") || frame.starts_with(b"HMSG ");
                            if is_ack && contains(&frame, b"\"stream\":\"VMPLANE_COMMANDS\"") && take_one(&drop) {
                                dropped.fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                            if cw.write_all(&frame).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Decrement if positive; whether it was.
fn take_one(n: &std::sync::atomic::AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
}

/// The length of the first complete server protocol frame in `buf`: one line,
/// or for `MSG` / `HMSG` the line, the payload its last field sizes, and CRLF.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    let line = std::str::from_utf8(&buf[..eol - 2]).ok()?;
    if !(line.starts_with("MSG ") || line.starts_with("HMSG ")) {
        return Some(eol);
    }
    let size: usize = line.rsplit(' ').next()?.parse().ok()?;
    let len = eol + size + 2;
    (buf.len() >= len).then_some(len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_acknowledgement_is_lost_makes_one_vm() {
    let stack = Stack::start().await;
    let nc = stack.nats_client().await;
    let proxy = AckLosingProxy::start(stack.nats.port).await;
    let (_gw, via_proxy) = stack.start_gateway("gateway-proxied", &proxy.url()).await;
    let body = json!({ "name": "once" });

    // One acknowledgement lost: the gateway publishes again with the same
    // message id, JetStream deduplicates, the client gets its 202.
    proxy.drop.store(1, Ordering::SeqCst);
    let mut answers = Vec::new();
    for _ in 0..5 {
        let r = post_with_key(&via_proxy, "/v1/vms", "make-once", &body).await;
        let done = r.status == 202;
        answers.push((r.status, r.body));
        if done {
            break;
        }
    }
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1, "the proxy lost an acknowledgement");
    let (status, last) = answers.last().unwrap();
    assert_eq!(*status, 202, "{answers:?}");
    let vm = str_of(&last["id"]).to_owned();
    let again = post_with_key(&via_proxy, "/v1/vms", "make-once", &body).await;
    assert_eq!((again.status, again.body["id"].as_str()), (202, Some(vm.as_str())), "{:?}", again.body);

    // Every acknowledgement lost for longer than the gateway retries: a 503,
    // though the command was stored. The client's retry with the same key
    // runs with the same ids and gets that VM, not a second one.
    proxy.drop.store(usize::MAX, Ordering::SeqCst);
    let body = json!({ "name": "twice-asked" });
    let r = post_with_key(&via_proxy.with_timeout(Duration::from_secs(60)), "/v1/vms", "make-once-more", &body).await;
    assert_eq!((r.status, r.body["code"].as_str()), (503, Some("unavailable")), "{:?}", r.body);
    proxy.drop.store(0, Ordering::SeqCst);
    let retry = post_with_key(&via_proxy, "/v1/vms", "make-once-more", &body).await;
    assert_eq!(retry.status, 202, "{:?}", retry.body);
    let second = str_of(&retry.body["id"]).to_owned();

    settle(&stack, &nc).await;
    let (s, list) = stack.admin.get("/v1/vms?limit=100").await;
    assert_eq!(s, 200);
    let mut ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|v| str_of(&v["id"])).collect();
    ids.sort();
    let mut want = [vm.as_str(), second.as_str()];
    want.sort();
    assert_eq!(ids, want, "two creates, two VMs: {list}");
    let guests = std::fs::read_dir(stack.data_dir().join("worker").join("sim"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(guests, 2, "the worker booted exactly one guest per create");
    stack.admin.wait_vm_status(&vm, "running").await;
    stack.admin.wait_vm_status(&second, "running").await;
}

/// POST every body at once, spread over the given gateways in turn.
async fn parallel_creates(gateways: &[&Client], bodies: Vec<Value>) -> Vec<(u16, Value)> {
    futures::future::join_all(bodies.into_iter().enumerate().map(|(i, b)| {
        let c = gateways[i % gateways.len()].clone();
        async move { c.post("/v1/vms", &b).await }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_never_overcommit_a_host() {
    let mut stack = Stack::start().await;
    stack.restart_worker_with(&["--sim-memory-mib", "2048"]).await;
    stack.wait_host("the host to announce 2048 MiB", |h| h["memory_mib"] == 2048).await;
    let admin = &stack.admin;
    // Two gateways accept at once: each sees the other's claims only through NATS.
    let (_gw2, admin2) = stack.start_gateway("gateway-2", &stack.nats.url()).await;
    let both = [admin, &admin2];

    // Six at once asking for one host port: exactly one gets it.
    let bodies =
        (0..6).map(|i| json!({ "name": format!("port-{i}"), "memory_mib": 128, "port_forwards": [{ "guest_port": 80, "host_port": 25000 }] })).collect();
    let answers = parallel_creates(&both, bodies).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    assert_eq!(accepted, 1, "{answers:?}");
    assert!(answers.iter().all(|(s, b)| *s == 202 || (*s == 409 && b["code"] == "port_conflict")), "{answers:?}");

    // Eight at once of 512 MiB where 1920 MiB are left: exactly three fit.
    let bodies = (0..8).map(|i| json!({ "name": format!("mem-{i}"), "memory_mib": 512 })).collect();
    let answers = parallel_creates(&both, bodies).await;
    let accepted: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 202).map(|(_, b)| b).collect();
    assert_eq!(accepted.len(), 3, "{answers:?}");
    assert!(answers.iter().all(|(s, b)| *s == 202 || (*s == 409 && b["code"] == "insufficient_capacity")), "{answers:?}");
    for b in accepted {
        admin.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    }
    assert_eq!(admin.vm_total("?status=running").await, 4);
    let host = stack.wait_host("the host's usage", |h| h["used"]["memory_mib"] == 128 + 3 * 512).await;
    assert!(host["available"]["memory_mib"].as_u64().unwrap() < 512, "{host}");
    // Nothing more fits until something is deleted.
    let (s, b) = admin.post("/v1/vms", &json!({ "name": "one-more", "memory_mib": 512 })).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("insufficient_capacity")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_stay_in_the_operators_range_and_bridge_addresses_are_unique() {
    let mut stack = Stack::start().await;
    let host = stack.wait_host_online().await;
    assert_eq!(host["port_range"], json!({ "first": 20000, "last": 29999 }), "{host}");
    let admin = stack.admin.clone();

    // Privileged, out-of-range and edge ports: 422, nothing created.
    for port in [1, 22, 80, 443, 1023, 1024, 19999, 30000, 65535] {
        let (s, b) = admin.post("/v1/vms", &json!({ "name": "p", "port_forwards": [{ "guest_port": 80, "host_port": port }] })).await;
        assert_eq!((s, b["code"].as_str()), (422, Some("port_out_of_range")), "host port {port}: {b}");
    }
    assert_eq!(admin.vm_total("").await, 0, "refused creates created nothing");
    for port in [20500, 29999] {
        let b = admin.create_vm(json!({ "name": format!("p{port}"), "port_forwards": [{ "guest_port": 80, "host_port": port }] })).await;
        admin.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    }

    // Bridge mode: a guest IP or MAC is one VM's only.
    stack.restart_worker_with(&["--bridge", "br-sim", "--bridge-cidr", "10.99.0.0/24"]).await;
    stack.wait_host("the host to announce its bridge", |h| h["bridge_cidr"] == "10.99.0.0/24").await;
    let net = |ip: &str, mac: &str| json!({ "mode": "bridge", "guest_ip": ip, "guest_mac": mac });
    let first = admin.create_vm(json!({ "name": "b1", "network": net("10.99.0.10", "02:fc:00:00:00:0a") })).await;
    for (what, network) in [
        ("same ip", net("10.99.0.10", "02:fc:00:00:00:0b")),
        ("same mac", net("10.99.0.11", "02:fc:00:00:00:0a")),
        ("same mac, upper case", net("10.99.0.12", "02:FC:00:00:00:0A")),
    ] {
        let (s, b) = admin.post("/v1/vms", &json!({ "name": "dup", "network": network })).await;
        assert_eq!((s, b["code"].as_str()), (409, Some("address_conflict")), "{what}: {b}");
    }
    // An address that is not a guest address of the bridge's network: the network, its gateway, outside it.
    for ip in ["10.99.0.0", "10.99.0.1", "10.99.0.255", "192.0.2.50"] {
        let (s, b) = admin.post("/v1/vms", &json!({ "name": "outside", "network": net(ip, "02:fc:00:00:00:0f") })).await;
        assert_eq!((s, b["code"].as_str()), (422, Some("validation_failed")), "{ip}: {b}");
    }
    admin.wait_op_succeeded(str_of(&first["operation"]["id"])).await;
    // Racing for one address: one wins.
    let bodies = (0..4).map(|i| json!({ "name": format!("race-{i}"), "network": net("10.99.0.20", &format!("02:fc:00:00:01:0{i}")) })).collect();
    let answers = parallel_creates(&[&admin], bodies).await;
    assert_eq!(answers.iter().filter(|(s, _)| *s == 202).count(), 1, "{answers:?}");
    assert!(answers.iter().all(|(s, b)| *s == 202 || b["code"] == "address_conflict"), "{answers:?}");
    let other = admin.create_vm(json!({ "name": "b2", "network": net("10.99.0.30", "02:fc:00:00:00:0c") })).await;
    admin.wait_op_succeeded(str_of(&other["operation"]["id"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_per_key_and_frames_and_metric_labels_are_bounded() {
    let env = [("VMPLANE_MAX_EVENT_STREAMS", "2"), ("VMPLANE_MAX_LOG_FOLLOWS", "2"), ("VMPLANE_MAX_TERMINALS", "1")];
    let stack = Stack::start_with(StackOpts { gateway_env: env.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec(), ..Default::default() }).await;
    let (_, key_a, _, key_b) = two_tenants(&stack).await;
    let (a, b) = (stack.client(&key_a), stack.client(&key_b));

    // Event streams: two for A, then 429; B has its own two.
    let sse = |c: &Client| c.request_untimed(Method::GET, "/v1/events").header("accept", "text/event-stream").send();
    let first = sse(&a).await.unwrap();
    let second = sse(&a).await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = a.send(a.request(Method::GET, "/v1/events")).await;
    assert_eq!((third.status, third.body["code"].as_str()), (429, Some("too_many_sessions")), "{:?}", third.body);
    assert_eq!(sse(&b).await.unwrap().status().as_u16(), 200, "caps are per key");
    drop(first);
    wait_for("a closed stream to free its place", WAIT, async || {
        let r = sse(&a).await.unwrap();
        if r.status() == 200 { Ok(()) } else { Err(r.status().to_string()) }
    })
    .await;

    // Log follows.
    let vm1 = str_of(&a.create_running_vm("one").await["id"]).to_owned();
    let vm2 = str_of(&a.create_running_vm("two").await["id"]).to_owned();
    let follow = format!("/v1/vms/{vm1}/logs?follow=true");
    let f1 = a.request_untimed(Method::GET, &follow).send().await.unwrap();
    let f2 = a.request_untimed(Method::GET, &follow).send().await.unwrap();
    assert_eq!((f1.status().as_u16(), f2.status().as_u16()), (200, 200));
    let f3 = a.send(a.request(Method::GET, &follow)).await;
    assert_eq!((f3.status, f3.body["code"].as_str()), (429, Some("too_many_sessions")), "{:?}", f3.body);
    assert_eq!(a.get(&format!("/v1/vms/{vm1}/logs")).await.0, 200, "reading without follow is not a session");

    // Terminals: one per key; the simulated console echoes.
    let mut ws = terminal(&stack.base, &key_a, &vm1).await.expect("terminal");
    ws.send(tungstenite::Message::binary(b"ping-term".to_vec())).await.unwrap();
    let mut echoed = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            echoed.extend_from_slice(&m.into_data());
            if contains(&echoed, b"ping-term") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "echo: {}", String::from_utf8_lossy(&echoed));
    assert_eq!(terminal(&stack.base, &key_a, &vm2).await.err(), Some(429), "a second terminal is past the cap");
    // A message over the bound closes the session.
    let _ = ws.send(tungstenite::Message::binary(vec![b'x'; 256 << 10])).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(tungstenite::Message::Close(_))) | Some(Err(_)) | None => return true,
                Some(Ok(m)) => {
                    if contains(&m.into_data(), b"xxxxxxxx") {
                        return false;
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the oversized message was relayed instead of closing the session");
    wait_for("the closed terminal to free its place", WAIT, async || match terminal(&stack.base, &key_a, &vm2).await {
        Ok(_) => Ok(()),
        Err(s) => Err(s.to_string()),
    })
    .await;

    // Metric labels: unknown methods and unmatched paths are one label each.
    for (method, path) in [("BREW", "/v1/vms"), ("PROPFIND", "/v1/vms"), ("BREW", "/nope/scan-1"), ("GET", "/nope/scan-2")] {
        let r = stack.anonymous().send(stack.anonymous().request(Method::from_bytes(method.as_bytes()).unwrap(), path)).await;
        assert!(r.status >= 400, "{method} {path}: {}", r.status);
    }
    let (_, metrics) = stack.anonymous().get("/metrics").await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    for leaked in ["BREW", "PROPFIND", "scan-1", "scan-2"] {
        assert!(!metrics.contains(leaked), "label value {leaked} in metrics");
    }
    assert!(metrics.contains("route=\"unmatched\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_gateway() {
    let stack = Stack::start().await;
    let (org_a, key_a, _, key_b) = two_tenants(&stack).await;
    let (_gw2, admin2) = stack.start_gateway("gateway-2", &stack.nats.url()).await;
    let a1 = stack.client(&key_a);
    let a2 = admin2.with_token(&key_a);
    assert_eq!(a1.get("/v1/vms").await.0, 200);
    assert_eq!(a2.get("/v1/vms").await.0, 200);
    let key_id = key_a.trim_start_matches("vmp_").rsplit_once('_').unwrap().0.to_owned();
    // A's open event stream on the second gateway.
    let feed = a2.request_untimed(Method::GET, "/v1/events").send().await.unwrap();
    assert_eq!(feed.status(), 200);

    // Only the admin revokes; unknown keys are 404.
    let (s, body) = stack.client(&key_b).delete(&format!("/v1/api-keys/{key_id}")).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = stack.admin.delete("/v1/api-keys/key_01jdx3v9k6m2w8q4r5t7y9z0ab").await;
    assert_eq!(s, 404, "{body}");

    let (s, body) = stack.admin.delete(&format!("/v1/api-keys/{key_id}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["operation"]["status"], "succeeded", "{body}");
    assert_eq!(body["operation"]["kind"], "revoke_api_key", "{body}");
    // The gateway that answered refuses the key at once; the other as soon as it has the event.
    let (s, body) = a1.get("/v1/vms").await;
    assert_eq!((s, body["code"].as_str()), (401, Some("unauthorized")), "{body}");
    wait_for("the second gateway to refuse the revoked key", WAIT, async || match a2.get("/v1/vms").await {
        (401, _) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(a1.post("/v1/vms", &json!({ "name": "after" })).await.0, 401);
    // Its open stream ends.
    let mut body = feed.bytes_stream();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked key's event stream stayed open");

    // Gone from the list; a second revocation finds nothing; B is untouched.
    let (_, keys) = stack.admin.with_header("x-vmplane-org", &org_a).get("/v1/api-keys").await;
    assert!(keys.as_array().unwrap().iter().all(|k| k["id"] != key_id.as_str()), "{keys}");
    assert_eq!(stack.admin.delete(&format!("/v1/api-keys/{key_id}")).await.0, 404);
    assert_eq!(stack.client(&key_b).get("/v1/vms").await.0, 200);
    // The revocation is an event of A's org, without any secret.
    let mut feed = stack.admin.with_header("x-vmplane-org", &org_a).sse(None).await;
    let seen = feed.read_until(WAIT, |e| e.event == "api_key_revoked").await;
    let revoked = seen.last().unwrap();
    assert_eq!((revoked.data["aggregate_id"].as_str(), revoked.data["org_id"].as_str()), (Some(key_id.as_str()), Some(org_a.as_str())), "{:?}", revoked.data);
    assert!(!revoked.data.to_string().contains(&key_a), "{:?}", revoked.data);
}

/// Everything of org A's that the matrix must leave as it was.
async fn snapshot(as_a: &Client, vm: &str, volumes: &[&str]) -> Value {
    let v = as_a.vm(vm).await;
    let mut vols = Vec::new();
    for id in volumes {
        let (s, vol) = as_a.get(&format!("/v1/volumes/{id}")).await;
        assert_eq!(s, 200, "{vol}");
        vols.push(json!([vol["status"], vol["vm_id"], vol["updated_at"]]));
    }
    json!({
        "vm": [v["status"], v["volumes"], v["memory_mib"], v["updated_at"]],
        "history": as_a.vm_events(vm).await.len(),
        "volumes": vols,
        "vms": as_a.vm_total("").await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_matrix_every_foreign_access_is_404_or_403_and_changes_nothing() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let (org_a, key_a, org_b, key_b) = two_tenants(&stack).await;
    let (a, b) = (stack.client(&key_a), stack.client(&key_b));
    let as_a = admin.with_header("x-vmplane-org", &org_a);

    // A: a running VM with a volume attached, a free volume, a project.
    let vm_a = a.create_vm(json!({ "name": "a-vm", "hotplug_memory_mib": 256 })).await;
    let (vm_a, op_a) = (str_of(&vm_a["id"]).to_owned(), str_of(&vm_a["operation"]["id"]).to_owned());
    a.wait_op_succeeded(&op_a).await;
    let mut vols = Vec::new();
    for name in ["a-attached", "a-free"] {
        let (s, v) = a.post("/v1/volumes", &json!({ "name": name, "size_gb": 1 })).await;
        assert_eq!(s, 202, "{v}");
        a.wait_op_succeeded(str_of(&v["operation"]["id"])).await;
        vols.push(str_of(&v["id"]).to_owned());
    }
    let (vol_a, vol_a_free) = (vols[0].clone(), vols[1].clone());
    let (s, att) = a.post(&format!("/v1/vms/{vm_a}/volumes/{vol_a}"), &json!({ "mount_path": "/mnt/a" })).await;
    assert_eq!(s, 202, "{att}");
    a.wait_op_succeeded(str_of(&att["operation"]["id"])).await;
    let (s, prj) = admin.post(&format!("/v1/orgs/{org_a}/projects"), &json!({ "name": "a-prj" })).await;
    assert_eq!(s, 201, "{prj}");
    let prj_a = str_of(&prj["id"]).to_owned();
    let a_event = a.vm_events(&vm_a).await.last().unwrap()["seq"].as_u64().unwrap();
    let key_a_id = key_a.trim_start_matches("vmp_").rsplit_once('_').unwrap().0.to_owned();

    // B: its own VM and a free volume.
    let vm_b = str_of(&b.create_running_vm("b-vm").await["id"]).to_owned();
    let (s, v) = b.post("/v1/volumes", &json!({ "name": "b-free", "size_gb": 1 })).await;
    assert_eq!(s, 202, "{v}");
    b.wait_op_succeeded(str_of(&v["operation"]["id"])).await;
    let vol_b = str_of(&v["id"]).to_owned();

    let before = snapshot(&as_a, &vm_a, &[&vol_a, &vol_a_free]).await;
    let a_vm_json = a.vm(&vm_a).await;

    // B over every route that names A's things.
    let empty = json!({});
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/vms/{vm_a}"), None),
        (Method::GET, format!("/v1/vms/{vm_a}/events"), None),
        (Method::GET, format!("/v1/vms/{vm_a}/logs"), None),
        (Method::GET, format!("/v1/vms/{vm_a}/logs?follow=true"), None),
        (Method::GET, format!("/v1/vms/{vm_a}/logs?tail=10"), None),
        (Method::POST, format!("/v1/vms/{vm_a}/start"), None),
        (Method::POST, format!("/v1/vms/{vm_a}/stop"), None),
        (Method::POST, format!("/v1/vms/{vm_a}/restart"), None),
        (Method::POST, format!("/v1/vms/{vm_a}/standby"), None),
        (Method::POST, format!("/v1/vms/{vm_a}/restore"), None),
        (Method::POST, format!("/v1/vms/{vm_a}/memory"), Some(json!({ "memory_mib": 640 }))),
        (Method::DELETE, format!("/v1/vms/{vm_a}"), None),
        (Method::GET, format!("/v1/volumes/{vol_a}"), None),
        (Method::GET, format!("/v1/volumes/{vol_a_free}"), None),
        (Method::DELETE, format!("/v1/volumes/{vol_a_free}"), None),
        // A's free volume to B's VM, B's volume to A's VM, and detaching A's volume either way.
        (Method::POST, format!("/v1/vms/{vm_b}/volumes/{vol_a_free}"), Some(json!({ "mount_path": "/mnt/x" }))),
        (Method::POST, format!("/v1/vms/{vm_b}/volumes/{vol_a}"), Some(json!({ "mount_path": "/mnt/x" }))),
        (Method::POST, format!("/v1/vms/{vm_a}/volumes/{vol_b}"), Some(json!({ "mount_path": "/mnt/x" }))),
        (Method::DELETE, format!("/v1/vms/{vm_a}/volumes/{vol_a}"), None),
        (Method::DELETE, format!("/v1/vms/{vm_b}/volumes/{vol_a}"), None),
        (Method::GET, format!("/v1/operations/{op_a}"), None),
        (Method::GET, format!("/v1/operations/{}", str_of(&att["operation"]["id"])), None),
        // Admin routes and acting as A.
        (Method::POST, "/v1/images".into(), Some(json!({ "name": "evil", "source": "/etc/shadow", "format": "raw" }))),
        (Method::GET, "/v1/orgs".into(), None),
        (Method::POST, "/v1/api-keys".into(), Some(json!({ "name": "x", "org_id": org_a }))),
        (Method::DELETE, format!("/v1/api-keys/{key_a_id}"), None),
        (Method::GET, format!("/v1/orgs/{org_a}/projects"), None),
        (Method::POST, format!("/v1/orgs/{org_a}/projects"), Some(json!({ "name": "x" }))),
    ];
    for (method, path, body) in &cases {
        let mut rb = b.request(method.clone(), path);
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let r = b.send(rb).await;
        assert!([403, 404].contains(&r.status), "B {method} {path}: {} {:?}", r.status, r.body);
    }
    for (who, c) in [("B naming A's org", b.with_header("x-vmplane-org", &org_a)), ("B naming A's project", b.with_header("x-vmplane-project", &prj_a))] {
        for (method, path) in [(Method::GET, "/v1/vms".to_owned()), (Method::GET, format!("/v1/vms/{vm_a}")), (Method::POST, "/v1/vms".to_owned())] {
            let r = c.send(c.request(method.clone(), &path).json(&empty)).await;
            assert!([403, 404].contains(&r.status), "{who}: {method} {path}: {} {:?}", r.status, r.body);
        }
    }
    // A's terminal is not there for B.
    assert_eq!(terminal(&stack.base, &key_b, &vm_a).await.err(), Some(404));
    // A reaches none of B's either.
    for (method, path) in
        [(Method::GET, format!("/v1/vms/{vm_b}")), (Method::POST, format!("/v1/vms/{vm_b}/stop")), (Method::GET, format!("/v1/volumes/{vol_b}"))]
    {
        let r = a.send(a.request(method.clone(), &path)).await;
        assert_eq!(r.status, 404, "A {method} {path}: {:?}", r.body);
    }

    // Lists show B only B's.
    let (_, list) = b.get("/v1/vms?limit=100").await;
    assert!(list["data"].as_array().unwrap().iter().all(|v| v["org_id"] == org_b.as_str()), "{list}");
    let (_, list) = b.get("/v1/volumes?limit=100").await;
    assert!(list["data"].as_array().unwrap().iter().all(|v| v["org_id"] == org_b.as_str()), "{list}");
    // Images are the hosts' catalogue, the same for everyone.
    assert_eq!(b.get("/v1/images").await.0, 200);
    // Hosts: B sees its own use only; what the host has left is its offer,
    // the same for everyone (a tenant chooses a host and its ports by it).
    let (s, hosts) = b.get("/v1/hosts").await;
    assert_eq!(s, 200, "{hosts}");
    let host = &hosts[0];
    assert_eq!(host["used"]["memory_mib"], 512, "B's own VM only: {host}");
    let (_, hosts) = admin.get("/v1/hosts").await;
    assert_eq!(hosts[0]["used"]["memory_mib"], 512 + 768, "the admin sees everyone's: {}", hosts[0]);
    assert!(hosts[0]["available"].is_object());
    assert_eq!(host["available"], hosts[0]["available"], "one offer for everyone");

    // B's feed resumed right before one of A's events shows only B's.
    let marker = b.create_vm(json!({ "name": "b-marker" })).await;
    let marker_op = str_of(&marker["operation"]["id"]).to_owned();
    let mut feed = b.sse(Some(a_event - 1)).await;
    let seen = feed.read_until(WAIT, |e| e.event == "operation_finished" && e.data["operation_id"] == marker_op.as_str()).await;
    assert!(seen.iter().all(|e| e.data["org_id"] == org_b.as_str() && e.id != a_event), "{seen:?}");

    // The same Idempotency-Key as A's is B's own.
    let ra = post_with_key(&a, "/v1/vms", "shared-key", &json!({ "name": "same" })).await;
    let rb = post_with_key(&b, "/v1/vms", "shared-key", &json!({ "name": "same" })).await;
    assert_eq!((ra.status, rb.status), (202, 202));
    assert_ne!(ra.body["id"], rb.body["id"]);
    assert_eq!(rb.body["org_id"], org_b.as_str());

    // Nothing of A's changed.
    settle(&stack, &stack.nats_client().await).await;
    let mut after = snapshot(&as_a, &vm_a, &[&vol_a, &vol_a_free]).await;
    after["vms"] = json!(after["vms"].as_u64().unwrap() - 1); // A's own "same" VM above
    assert_eq!(after, before);
    let now = a.vm(&vm_a).await;
    assert_eq!((now["status"].as_str(), &now["volumes"]), (Some("running"), &a_vm_json["volumes"]));
}
