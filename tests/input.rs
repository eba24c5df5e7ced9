//! Hostile and malformed input: every bad request is a 4xx with a JSON body
//! carrying string `code` and `message`, never a 5xx, and creates nothing.
//! Also the per-key rate limit.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// One bad request and what it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Body>,
    status: u16,
    code: Option<&'static str>,
    auth: bool,
}

enum Body {
    Bytes(Vec<u8>),
    /// Sent chunked, without a Content-Length.
    Chunked(Vec<u8>),
}

fn case(what: &'static str, method: Method, path: impl Into<String>, status: u16) -> Case {
    Case { what, method, path: path.into(), headers: vec![], body: None, status, code: None, auth: true }
}

impl Case {
    fn json(mut self, v: &Value) -> Self {
        self.body = Some(Body::Bytes(serde_json::to_vec(v).unwrap()));
        self.headers.push(("content-type", "application/json".into()));
        self
    }
    fn raw(mut self, bytes: impl Into<Vec<u8>>, content_type: Option<&str>) -> Self {
        self.body = Some(Body::Bytes(bytes.into()));
        if let Some(ct) = content_type {
            self.headers.push(("content-type", ct.to_owned()));
        }
        self
    }
    fn chunked(mut self, bytes: Vec<u8>) -> Self {
        self.body = Some(Body::Chunked(bytes));
        self.headers.push(("content-type", "application/json".into()));
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    fn anonymous(mut self) -> Self {
        self.auth = false;
        self
    }
}

async fn run(stack: &Stack, c: Case) {
    let client = if c.auth { stack.admin.clone() } else { stack.anonymous() };
    let mut rb = client.request(c.method.clone(), &c.path);
    for (k, v) in &c.headers {
        rb = rb.header(*k, v);
    }
    rb = match c.body {
        Some(Body::Bytes(b)) => rb.body(b),
        Some(Body::Chunked(b)) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = b.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
            rb.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        }
        None => rb,
    };
    let r = client.send(rb).await;
    let label = format!("{} ({} {})", c.what, c.method, c.path.chars().take(80).collect::<String>());
    assert!(r.status < 500, "{label}: server error {} {}", r.status, r.body);
    assert_eq!(r.status, c.status, "{label}: {}", r.body);
    assert!(r.body["code"].is_string() && r.body["message"].is_string(), "{label}: not a JSON error body: {}", r.body);
    assert!(r.headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/json")), "{label}: {:?}", r.headers);
    if let Some(code) = c.code {
        assert_eq!(r.body["code"], code, "{label}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_a_json_4xx_and_creates_nothing() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let vm = c.create_running_vm("keep").await;
    let vm_id = str_of(&vm["id"]).to_owned();
    let (vms_before, events_before) = (c.vm_total("?limit=100").await, c.vm_events(&vm_id).await.len());
    let orgs_before = c.get("/v1/orgs").await.1.as_array().unwrap().len();

    let unknown_vm = vmplane_domain::VmId::new().to_string();
    let unknown_op = vmplane_domain::OpId::new().to_string();
    let unknown_org = vmplane_domain::OrgId::new().to_string();
    let big = json!({ "name": "big", "user_data": "x".repeat((1 << 20) + 1024) });
    let big = serde_json::to_vec(&big).unwrap();
    let post = || Method::POST;
    #[rustfmt::skip]
    let cases = vec![
        // Bodies.
        case("malformed JSON", post(), "/v1/vms", 400).raw(r#"{"name":"#, Some("application/json")).code("malformed_json"),
        case("trailing garbage", post(), "/v1/vms", 400).raw(r#"{"name":"a"} x"#, Some("application/json")),
        case("not UTF-8", post(), "/v1/vms", 400).raw(b"{\"name\":\"\xff\xfe\"}".to_vec(), Some("application/json")),
        case("empty body", post(), "/v1/vms", 400).raw("", Some("application/json")),
        case("unknown field", post(), "/v1/vms", 422).json(&json!({ "name": "a", "cpus": 2 })),
        case("unknown nested field", post(), "/v1/vms", 422).json(&json!({ "name": "a", "network": { "enabled": true, "bogus": 1 } })),
        case("wrong type", post(), "/v1/vms", 422).json(&json!({ "name": "a", "vcpus": "two" })),
        case("name of wrong type", post(), "/v1/vms", 422).json(&json!({ "name": 7 })),
        case("array body", post(), "/v1/vms", 422).json(&json!([{ "name": "a" }])),
        case("null body", post(), "/v1/vms", 422).json(&Value::Null),
        case("missing name", post(), "/v1/vms", 422).json(&json!({ "vcpus": 1 })),
        case("name not a DNS label", post(), "/v1/vms", 422).json(&json!({ "name": "Web_1" })).code("validation_failed"),
        case("name of 64 chars", post(), "/v1/vms", 422).json(&json!({ "name": "a".repeat(64) })).code("validation_failed"),
        case("empty name", post(), "/v1/vms", 422).json(&json!({ "name": "" })).code("validation_failed"),
        case("name with a dot", post(), "/v1/vms", 422).json(&json!({ "name": "a.b" })).code("validation_failed"),
        case("vcpus 0", post(), "/v1/vms", 422).json(&json!({ "name": "a", "vcpus": 0 })).code("validation_failed"),
        case("vcpus too many", post(), "/v1/vms", 422).json(&json!({ "name": "a", "vcpus": 257 })).code("validation_failed"),
        case("vcpus beyond u32", post(), "/v1/vms", 422).json(&json!({ "name": "a", "vcpus": 1u64 << 40 })),
        case("negative vcpus", post(), "/v1/vms", 422).json(&json!({ "name": "a", "vcpus": -1 })),
        case("memory too small", post(), "/v1/vms", 422).json(&json!({ "name": "a", "memory_mib": 1 })).code("validation_failed"),
        case("disk 0", post(), "/v1/vms", 422).json(&json!({ "name": "a", "disk_gb": 0 })).code("validation_failed"),
        case("image no host has", post(), "/v1/vms", 422).json(&json!({ "name": "a", "image": "windows-11" })).code("unknown_image"),
        case("bad ssh key", post(), "/v1/vms", 422).json(&json!({ "name": "a", "ssh_keys": ["not a key"] })).code("validation_failed"),
        case("port 0", post(), "/v1/vms", 422).json(&json!({ "name": "a", "port_forwards": [{ "guest_port": 0 }] })).code("validation_failed"),
        case("guest_ip without bridge", post(), "/v1/vms", 422).json(&json!({ "name": "a", "network": { "guest_ip": "10.0.0.5" } })).code("validation_failed"),
        case("body over 1 MiB", post(), "/v1/vms", 413).raw(big.clone(), Some("application/json")).code("payload_too_large"),
        case("chunked body over 1 MiB", post(), "/v1/vms", 413).chunked(big.clone()).code("payload_too_large"),
        case("body over 1 MiB with Idempotency-Key", post(), "/v1/vms", 413).raw(big, Some("application/json")).header("idempotency-key", "big-1").code("payload_too_large"),
        case("text/plain", post(), "/v1/vms", 415).raw(r#"{"name":"a"}"#, Some("text/plain")).code("unsupported_media_type"),
        case("no content type", post(), "/v1/vms", 415).raw(r#"{"name":"a"}"#, None).code("unsupported_media_type"),
        case("form content type", post(), "/v1/vms", 415).raw("name=a", Some("application/x-www-form-urlencoded")),
        // Ids in paths.
        case("garbage VM id", Method::GET, "/v1/vms/nope", 400).code("invalid_id"),
        case("op id as VM id", Method::GET, format!("/v1/vms/{unknown_op}"), 400).code("invalid_id"),
        case("bad ULID", Method::GET, "/v1/vms/vm_01jdx3v9k6m2w8q4r5t7y9z0aU!", 400).code("invalid_id"),
        case("garbage id on action", post(), "/v1/vms/nope/start", 400).code("invalid_id"),
        case("garbage id on delete", Method::DELETE, "/v1/vms/nope", 400).code("invalid_id"),
        case("garbage id on events", Method::GET, "/v1/vms/nope/events", 400).code("invalid_id"),
        case("VM id as op id", Method::GET, format!("/v1/operations/{vm_id}"), 400).code("invalid_id"),
        case("garbage org id", Method::GET, "/v1/orgs/nope/projects", 400).code("invalid_id"),
        // Unknown things.
        case("unknown VM", Method::GET, format!("/v1/vms/{unknown_vm}"), 404).code("not_found"),
        case("unknown VM events", Method::GET, format!("/v1/vms/{unknown_vm}/events"), 404).code("not_found"),
        case("action on unknown VM", post(), format!("/v1/vms/{unknown_vm}/stop"), 404).code("not_found"),
        case("delete unknown VM", Method::DELETE, format!("/v1/vms/{unknown_vm}"), 404).code("not_found"),
        case("unknown operation", Method::GET, format!("/v1/operations/{unknown_op}"), 404).code("not_found"),
        case("unknown org", Method::GET, format!("/v1/orgs/{unknown_org}/projects"), 404).code("not_found"),
        case("key for unknown org", post(), "/v1/api-keys", 404).json(&json!({ "name": "k", "org_id": unknown_org })).code("not_found"),
        case("unknown route", Method::GET, "/v1/nope", 404).code("not_found"),
        case("unknown route outside /v1", Method::GET, "/nope", 404).code("not_found"),
        case("unknown VM sub-route", post(), format!("/v1/vms/{vm_id}/explode"), 404).code("not_found"),
        case("terminal of unknown VM", Method::GET, format!("/v1/vms/{unknown_vm}/terminal"), 404).code("not_found"),
        case("terminal without WebSocket upgrade", Method::GET, format!("/v1/vms/{vm_id}/terminal"), 400).code("websocket_required"),
        // Wrong methods.
        case("PUT on collection", Method::PUT, "/v1/vms", 405).json(&json!({ "name": "a" })),
        case("DELETE on collection", Method::DELETE, "/v1/vms", 405),
        case("PATCH on a VM", Method::PATCH, format!("/v1/vms/{vm_id}"), 405).json(&json!({ "name": "a" })),
        case("GET on an action", Method::GET, format!("/v1/vms/{vm_id}/start"), 405),
        case("POST on a read", post(), format!("/v1/vms/{vm_id}/events"), 405),
        case("POST on /healthz", post(), "/healthz", 405),
        // Queries.
        case("limit not a number", Method::GET, "/v1/vms?limit=abc", 400).code("invalid_query"),
        case("unknown query parameter", Method::GET, "/v1/vms?colour=red", 400).code("invalid_query"),
        case("unknown status", Method::GET, "/v1/vms?status=exploded", 400).code("invalid_query"),
        case("wait too long", Method::GET, format!("/v1/operations/{unknown_op}?wait=61"), 400).code("invalid_query"),
        case("wait negative", Method::GET, format!("/v1/operations/{unknown_op}?wait=-1"), 400).code("invalid_query"),
        // Headers.
        case("garbage org header", Method::GET, "/v1/vms", 400).header("x-vmplane-org", "acme").code("invalid_id"),
        case("unknown org header", Method::GET, "/v1/vms", 404).header("x-vmplane-org", unknown_org.clone()).code("not_found"),
        case("garbage project header", Method::GET, "/v1/vms", 400).header("x-vmplane-project", "web").code("invalid_id"),
        case("unknown project header", Method::GET, "/v1/vms", 404).header("x-vmplane-project", vmplane_domain::ProjectId::new().to_string()).code("not_found"),
        case("Idempotency-Key too long", post(), "/v1/vms", 400).json(&json!({ "name": "idem" })).header("idempotency-key", "k".repeat(300)).code("bad_header"),
        case("Last-Event-ID garbage", Method::GET, "/v1/events", 400).header("last-event-id", "-1").code("bad_header"),
        // Tenancy bodies.
        case("org name not a DNS label", post(), "/v1/orgs", 422).json(&json!({ "name": "Acme!" })).code("validation_failed"),
        case("org unknown field", post(), "/v1/orgs", 422).json(&json!({ "name": "acme", "plan": "gold" })),
        case("key without name", post(), "/v1/api-keys", 422).json(&json!({})),
        case("key with empty name", post(), "/v1/api-keys", 422).json(&json!({ "name": "" })).code("validation_failed"),
        // Credentials.
        case("no credentials, create", post(), "/v1/vms", 401).json(&json!({ "name": "anon" })).anonymous().code("unauthorized"),
        case("no credentials, list", Method::GET, "/v1/vms", 401).anonymous().code("unauthorized"),
        case("no credentials, feed", Method::GET, "/v1/events", 401).anonymous().code("unauthorized"),
        case("empty bearer", Method::GET, "/v1/vms", 401).anonymous().header("authorization", "Bearer ").code("unauthorized"),
    ];
    for c in cases {
        run(&stack, c).await;
    }

    // Nothing was created or changed by any of it.
    assert_eq!(c.vm_total("?limit=100").await, vms_before);
    for status in ["pending", "provisioning", "failed"] {
        assert_eq!(c.vm_total(&format!("?status={status}")).await, 0, "{status}");
    }
    assert_eq!(c.vm_events(&vm_id).await.len(), events_before);
    assert_eq!(c.get("/v1/orgs").await.1.as_array().unwrap().len(), orgs_before);
    assert_eq!(c.vm(&vm_id).await["status"], "running");
    // And the gateway is still healthy.
    let (s, _) = c.get("/readyz").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after() {
    let opts = StackOpts { gateway_env: vec![("VMPLANE_RATE_LIMIT".into(), "2".into())], ..Default::default() };
    let stack = Stack::start_with(opts).await;
    let org = stack.admin.create_org("busy").await;
    let key = stack.client(&stack.admin.create_key(&org, "hammer").await);

    let mut limited = Vec::new();
    let mut ok = 0;
    for _ in 0..30 {
        let r = key.send(key.request(Method::GET, "/v1/vms")).await;
        match r.status {
            200 => ok += 1,
            429 => limited.push(r),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(ok >= 1, "the burst is served");
    assert!(!limited.is_empty(), "30 quick requests at 2/s must be limited");
    for r in &limited {
        assert_eq!(r.body["code"], "rate_limited", "{}", r.body);
        assert!(r.body["message"].is_string());
        let retry: u64 = r.headers.get("retry-after").expect("Retry-After").to_str().unwrap().parse().expect("Retry-After is seconds");
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Mutations are limited too, and a limited request creates nothing.
    let (s, b) = key.post("/v1/vms", &json!({ "name": "limited" })).await;
    if s == 429 {
        assert_eq!(b["code"], "rate_limited");
    }

    // The admin token is not limited.
    for _ in 0..30 {
        let (s, b) = stack.admin.get("/v1/vms").await;
        assert_eq!(s, 200, "{b}");
    }
    // Another key has its own bucket.
    let other = stack.client(&stack.admin.create_key(&org, "calm").await);
    assert_eq!(other.get("/v1/vms").await.0, 200);

    // The limited key recovers once the bucket refills.
    wait_for("the key to be served again", Duration::from_secs(10), async || match key.get("/v1/vms").await {
        (200, b) => Ok(b),
        (s, b) => Err(format!("{s} {b}")),
    })
    .await;
}
