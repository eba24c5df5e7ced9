//! The API surface: health, metrics, the OpenAPI document (and that every
//! route it lists is really served), pagination arithmetic and filters, and
//! `Idempotency-Key`.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};
use vmplane_domain::delivery::{AttemptOutcome, DeliveryAttempt};
use vmplane_domain::webhook::WebhookEvent;
use vmplane_domain::{DeliveryId, Envelope, Event, EventId, OrgId, WebhookId, subjects};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_every_documented_route_is_served() {
    // Webhook URLs on loopback (no traffic goes anywhere else, now or once
    // endpoints are delivered to).
    let stack = Stack::start_with(StackOpts { gateway_env: vec![("VMPLANE_WEBHOOK_ALLOW_PRIVATE".into(), "true".into())], ..Default::default() }).await;
    let c = &stack.admin;
    let anon = stack.anonymous();

    let (s, b) = anon.get("/healthz").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = anon.get("/readyz").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ready", "{b}");

    // Real ids for the path parameters.
    let vm = c.create_vm(json!({ "name": "probe" })).await;
    let (vm_id, op_id) = (str_of(&vm["id"]).to_owned(), str_of(&vm["operation"]["id"]).to_owned());
    c.wait_op_succeeded(&op_id).await;
    let org_id = c.create_org("probe-org").await;
    let (st, vol) = c.post("/v1/volumes", &json!({ "name": "probe-vol", "size_gb": 1 })).await;
    assert_eq!(st, 202, "{vol}");
    let vol_id = str_of(&vol["id"]).to_owned();
    c.wait_op(str_of(&vol["operation"]["id"])).await;
    let (st, key) = c.post("/v1/api-keys", &json!({ "name": "probe-key", "org_id": org_id })).await;
    assert_eq!(st, 201, "{key}");
    let key_id = str_of(&key["id"]).to_owned();
    let (st, tpl) = c.post("/v1/templates", &json!({ "name": "probe-tpl" })).await;
    assert_eq!(st, 201, "{tpl}");
    let tpl_id = str_of(&tpl["id"]).to_owned();
    let public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl probe";
    let (st, ssh_key) = c.post("/v1/ssh-keys", &json!({ "name": "probe", "public_key": public_key })).await;
    assert_eq!(st, 201, "{ssh_key}");
    let ssh_key_id = str_of(&ssh_key["id"]).to_owned();
    let (st, webhook) = c.post("/v1/webhooks", &json!({ "url": format!("http://127.0.0.1:{}/hook", free_port()) })).await;
    assert_eq!(st, 201, "{webhook}");
    let webhook_id = str_of(&webhook["id"]).to_owned();
    let delivery_id = append_delivery(&stack, str_of(&webhook["org_id"]), &webhook_id).await;
    let delivery_path = format!("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}");
    wait_for("the delivery in the projection", WAIT, async || match c.get(&delivery_path).await {
        (200, _) => Ok(()),
        (s, b) => Err(format!("{s} {b}")),
    })
    .await;
    let (st, snapshot) = c.post(&format!("/v1/vms/{vm_id}/snapshots"), &json!({ "name": "probe-snap" })).await;
    assert_eq!(st, 202, "{snapshot}");
    let snapshot_id = str_of(&snapshot["id"]).to_owned();
    c.wait_op_succeeded(str_of(&snapshot["operation"]["id"])).await;
    let host_id = str_of(&stack.wait_host_online().await["id"]).to_owned();
    let ids = Ids {
        host: &host_id,
        vm: &vm_id,
        op: &op_id,
        org: &org_id,
        volume: &vol_id,
        api_key: &key_id,
        template: &tpl_id,
        ssh_key: &ssh_key_id,
        webhook: &webhook_id,
        delivery: &delivery_id,
        snapshot: &snapshot_id,
    };

    let (s, doc) = anon.get("/openapi.json").await;
    assert_eq!(s, 200, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let mut calls = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let websocket = op["responses"].get("101").is_some();
            calls.push((method.to_uppercase(), path.clone(), op.get("requestBody").is_some(), websocket));
        }
    }
    for (method, path) in [
        ("GET", "/v1/vms"),
        ("POST", "/v1/vms"),
        ("GET", "/v1/vms/{id}"),
        ("DELETE", "/v1/vms/{id}"),
        ("POST", "/v1/vms/{id}/start"),
        ("POST", "/v1/vms/{id}/stop"),
        ("POST", "/v1/vms/{id}/restart"),
        ("POST", "/v1/vms/{id}/standby"),
        ("POST", "/v1/vms/{id}/restore"),
        ("GET", "/v1/vms/{id}/events"),
        ("GET", "/v1/operations/{id}"),
        ("GET", "/v1/events"),
        ("GET", "/v1/hosts"),
        ("POST", "/v1/orgs"),
        ("POST", "/v1/api-keys"),
        ("POST", "/v1/ssh-keys"),
        ("GET", "/v1/ssh-keys/{id}"),
        ("POST", "/v1/webhooks/{id}/test"),
        ("GET", "/v1/webhooks/{id}/deliveries"),
        ("GET", "/v1/webhooks/{id}/deliveries/{delivery_id}"),
        ("POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/retry"),
    ] {
        assert!(calls.iter().any(|(m, p, _, _)| m == method && p == path), "{method} {path} is not documented");
    }
    // Deleting last keeps the VM there for the other calls.
    calls.sort_by_key(|(m, _, _, _)| m == "DELETE");

    for (n, (method, path, has_body, websocket)) in calls.iter().enumerate() {
        let concrete = substitute(path, &ids);
        let mut rb = c.request_untimed(Method::from_bytes(method.as_bytes()).unwrap(), &concrete).timeout(std::time::Duration::from_secs(20));
        if *has_body {
            rb = rb.json(&json!({ "name": format!("probe-{n}") }));
        }
        if *websocket {
            rb = rb
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        // Only the head: `/v1/events` streams forever.
        let resp = rb.send().await.unwrap_or_else(|e| panic!("{method} {concrete}: {e}"));
        let status = resp.status().as_u16();
        let label = format!("{method} {path} (as {concrete}) answered {status}");
        if status == 200 && resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")) {
            continue;
        }
        if (*websocket && status == 101) || status == 204 {
            continue;
        }
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("{label}, not JSON: {e}"));
        assert_ne!(status, 405, "{label}: {body}");
        assert!(!(status == 404 && str_of(&body["message"]).starts_with("route ")), "{label}: the route is not served: {body}");
        assert!(status < 500, "{label}: {body}");
        if method == "GET" && !websocket {
            assert_eq!(status, 200, "{label}: {body}");
        }
    }

    let r = anon.send(anon.request(Method::GET, "/metrics")).await;
    assert_eq!(r.status, 200);
    let text = str_of(&r.body);
    assert!(text.contains("vmplane_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/v1/vms\""), "requests are counted by matched route: {text}");
    assert!(text.contains("vmplane_http_request_seconds"), "{text}");
}

struct Ids<'a> {
    host: &'a str,
    vm: &'a str,
    op: &'a str,
    org: &'a str,
    volume: &'a str,
    api_key: &'a str,
    template: &'a str,
    ssh_key: &'a str,
    webhook: &'a str,
    delivery: &'a str,
    snapshot: &'a str,
}

/// A delivery to endpoint `wh` of `org`, recorded as the deliverer records
/// one (no deliverer runs here): a `webhook.delivery_attempted` event
/// appended with its NATS role. Answers the delivery id.
async fn append_delivery(stack: &Stack, org: &str, wh: &str) -> String {
    let (org, wh): (OrgId, WebhookId) = (org.parse().expect("an org id"), wh.parse().expect("a webhook id"));
    let event = EventId::new();
    let now = time::OffsetDateTime::now_utc();
    let attempt = DeliveryAttempt {
        delivery_id: DeliveryId::of(event),
        event_id: event,
        event_seq: 1,
        event_type: "vm.created".into(),
        aggregate: "vm_probe".into(),
        attempt: 1,
        attempted_at: now,
        status: Some(500),
        error: None,
        duration_ms: 3,
        outcome: AttemptOutcome::Failed,
        next_retry_at: None,
        manual: false,
    };
    let env = Envelope::new(org, None, wh.to_string(), None, Event::Webhook(WebhookEvent::DeliveryAttempted(Box::new(attempt))), now);
    let client = stack.nats.connect(Some("webhooks")).await.expect("connecting as the deliverer");
    let js = vmplane_bus::async_nats::jetstream::new(client);
    let payload = vmplane_domain::event::encode(&env).expect("an envelope encodes");
    js.publish(subjects::webhook_deliveries(org, wh), payload.into()).await.expect("publishing").await.expect("the stream's ack");
    DeliveryId::of(event).to_string()
}

/// `{id}`-style parameters replaced by real ids.
fn substitute(path: &str, ids: &Ids) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            None => seg.to_owned(),
            Some("id") if path.starts_with("/v1/vms/") => ids.vm.to_owned(),
            Some("id") if path.starts_with("/v1/hosts/") => ids.host.to_owned(),
            Some("id") if path.starts_with("/v1/operations/") => ids.op.to_owned(),
            Some("id") if path.starts_with("/v1/volumes/") => ids.volume.to_owned(),
            Some("id") if path.starts_with("/v1/api-keys/") => ids.api_key.to_owned(),
            Some("id") if path.starts_with("/v1/templates/") => ids.template.to_owned(),
            Some("id") if path.starts_with("/v1/ssh-keys/") => ids.ssh_key.to_owned(),
            Some("id") if path.starts_with("/v1/webhooks/") => ids.webhook.to_owned(),
            Some("id") if path.starts_with("/v1/snapshots/") => ids.snapshot.to_owned(),
            Some("volume_id") => ids.volume.to_owned(),
            Some("delivery_id") => ids.delivery.to_owned(),
            Some("org") => ids.org.to_owned(),
            Some(other) => panic!("no real id to substitute for {{{other}}} in {path}; teach the test"),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_arithmetic_and_the_status_and_name_filters() {
    let stack = Stack::start().await;
    let c = &stack.admin;

    let mut created = Vec::new();
    for i in 0..7 {
        let b = c.create_vm(json!({ "name": format!("vm-{i}") })).await;
        created.push((str_of(&b["id"]).to_owned(), str_of(&b["operation"]["id"]).to_owned()));
    }
    for (_, op) in &created {
        c.wait_op_succeeded(op).await;
    }
    let ids: Vec<String> = created.iter().map(|(id, _)| id.clone()).collect();

    let page = |q: &'static str| async move {
        let (s, b) = c.get(&format!("/v1/vms{q}")).await;
        assert_eq!(s, 200, "{q}: {b}");
        b
    };
    let ids_of = |b: &Value| b["data"].as_array().unwrap().iter().map(|v| str_of(&v["id"]).to_owned()).collect::<Vec<_>>();

    let b = page("?limit=3&page=3").await;
    assert_eq!(b["pagination"], json!({ "total_items": 7, "total_pages": 3, "current_page": 3, "items_per_page": 3 }));
    assert_eq!(ids_of(&b), ids[6..], "the last page holds the newest VM");

    // The pages together are every VM once, oldest first.
    let mut all = Vec::new();
    for q in ["?limit=3&page=1", "?limit=3&page=2", "?limit=3&page=3"] {
        all.extend(ids_of(&page(q).await));
    }
    assert_eq!(all, ids);

    let b = page("?limit=3&page=4").await;
    assert_eq!(b["data"], json!([]), "beyond the end: empty");
    assert_eq!(b["pagination"], json!({ "total_items": 7, "total_pages": 3, "current_page": 4, "items_per_page": 3 }));

    let b = page("").await;
    assert_eq!(b["pagination"], json!({ "total_items": 7, "total_pages": 1, "current_page": 1, "items_per_page": 20 }));
    assert_eq!(b["data"][0]["status"], "running", "list items are full VM views: {}", b["data"][0]);
    assert!(b["data"][0].get("operation").is_none());
    let b = page("?limit=100").await;
    assert_eq!(ids_of(&b), ids);
    let b = page("?limit=7").await;
    assert_eq!(b["pagination"]["total_pages"], 1);
    let b = page("?limit=1&page=7").await;
    assert_eq!((ids_of(&b), b["pagination"]["total_pages"].as_u64()), (vec![ids[6].clone()], Some(7)));

    for bad in ["?limit=0", "?limit=101", "?page=0", "?page=abc", "?limit=abc", "?page=-1", "?limit=1.5", "?page=99999999999999999999"] {
        let (s, b) = c.get(&format!("/v1/vms{bad}")).await;
        assert_eq!(s, 400, "{bad}: {b}");
        assert_eq!(b["code"], "invalid_query", "{bad}: {b}");
        assert!(b["message"].is_string());
    }

    // Status filter.
    let b = page("?status=running").await;
    assert_eq!(b["pagination"]["total_items"], 7);
    c.act_and_wait(&ids[2], "stop", "stopped").await;
    c.act_and_wait(&ids[4], "delete", "deleted").await;
    let b = page("?status=running").await;
    assert_eq!(b["pagination"]["total_items"], 5);
    assert!(b["data"].as_array().unwrap().iter().all(|v| v["status"] == "running"));
    let b = page("?status=stopped").await;
    assert_eq!(ids_of(&b), [ids[2].clone()]);
    let b = page("?status=deleted").await;
    assert_eq!(ids_of(&b), [ids[4].clone()], "deleted VMs are listed only when asked for");
    let b = page("").await;
    assert_eq!(b["pagination"]["total_items"], 6, "the default list leaves deleted VMs out");
    assert!(!ids_of(&b).contains(&ids[4]));
    let b = page("?status=running&limit=2&page=3").await;
    assert_eq!(b["pagination"], json!({ "total_items": 5, "total_pages": 3, "current_page": 3, "items_per_page": 2 }));
    assert_eq!(ids_of(&b), [ids[6].clone()]);
    assert_eq!(page("?status=standby").await["pagination"]["total_items"], 0);
    for bad in ["?status=exploded", "?status=RUNNING", "?status="] {
        let (s, b) = c.get(&format!("/v1/vms{bad}")).await;
        assert_eq!((s, b["code"].as_str()), (400, Some("invalid_query")), "{bad}: {b}");
    }

    // Name filter: the whole name, with the status filter too; a deleted
    // VM's name is free again and both are there to ask for.
    assert_eq!(ids_of(&page("?name=vm-3").await), [ids[3].clone()]);
    assert_eq!(page("?name=vm").await["pagination"]["total_items"], 0, "not a prefix match");
    assert_eq!(page("?name=vm-4").await["pagination"]["total_items"], 0, "vm-4 is deleted");
    assert_eq!(ids_of(&page("?name=vm-4&status=deleted").await), [ids[4].clone()]);
    let again = str_of(&c.create_running_vm("vm-4").await["id"]).to_owned();
    assert_eq!(ids_of(&page("?name=vm-4").await), [again]);
    assert_eq!(ids_of(&page("?name=vm-2&status=stopped").await), [ids[2].clone()]);
    assert_eq!(page("?name=vm-2&status=running").await["pagination"]["total_items"], 0);
    let long = format!("?name={}", "a".repeat(64));
    for bad in ["?name=", "?name=Vm-1", "?name=vm_1", "?name=-vm", &long] {
        let (s, b) = c.get(&format!("/v1/vms{bad}")).await;
        assert_eq!((s, b["code"].as_str()), (400, Some("invalid_query")), "{bad}: {b}");
    }
    // Volumes take the same filter.
    for name in ["data", "logs"] {
        let (s, b) = c.post("/v1/volumes", &json!({"name": name, "size_gb": 1})).await;
        assert_eq!(s, 202, "{b}");
        c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    }
    let (s, b) = c.get("/v1/volumes?name=logs").await;
    assert_eq!((s, b["pagination"]["total_items"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(b["data"][0]["name"], "logs");
    let (s, b) = c.get("/v1/volumes?name=Logs").await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_query")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_first_response() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let body = json!({ "name": "once", "vcpus": 2 });
    let send = |key: &'static str, body: Value| async move { c.send(c.request(Method::POST, "/v1/vms").header("idempotency-key", key).json(&body)).await };

    let first = send("create-once", body.clone()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let id = str_of(&first.body["id"]).to_owned();
    c.wait_op_succeeded(str_of(&first.body["operation"]["id"])).await;

    let second = send("create-once", body.clone()).await;
    assert_eq!(second.status, 202, "{}", second.body);
    assert_eq!(second.body, first.body, "the replay is the first response, byte for byte");
    assert_eq!(second.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(c.vm_total("").await, 1, "only one VM exists");
    assert_eq!(c.vm(&id).await["status"], "running");

    // Same key, different request.
    let other = send("create-once", json!({ "name": "twice", "vcpus": 2 })).await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["code"], "idempotency_key_reused");
    assert!(other.body["message"].is_string());
    assert_eq!(c.vm_total("").await, 1);

    // Another key is another request.
    let third = send("create-again", body.clone()).await;
    assert_eq!(third.status, 202);
    assert_ne!(third.body["id"], first.body["id"]);
    c.wait_op_succeeded(str_of(&third.body["operation"]["id"])).await;
    assert_eq!(c.vm_total("").await, 2);

    // Keys are scoped by credential: another caller's same key is its own.
    let org = c.create_org("other").await;
    let k = stack.client(&c.create_key(&org, "k").await);
    let r = k.send(k.request(Method::POST, "/v1/vms").header("idempotency-key", "create-once").json(&body)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["org_id"], org.as_str());
    k.wait_op_succeeded(str_of(&r.body["operation"]["id"])).await;

    // A refused request is remembered as such too, and creates nothing.
    let bad = json!({ "name": "Bad_Name" });
    let r1 = send("bad-once", bad.clone()).await;
    let r2 = send("bad-once", bad).await;
    assert_eq!((r1.status, r2.status), (422, 422));
    assert_eq!(r1.body, r2.body);

    // Actions honour the header as well.
    let path = format!("/v1/vms/{id}/stop");
    let path = path.as_str();
    let stop = |key: &'static str| async move { c.send(c.request(Method::POST, path).header("idempotency-key", key)).await };
    let s1 = stop("stop-once").await;
    assert_eq!(s1.status, 202, "{}", s1.body);
    c.wait_op_succeeded(str_of(&s1.body["operation"]["id"])).await;
    let s2 = stop("stop-once").await;
    assert_eq!(s2.body["operation"]["id"], s1.body["operation"]["id"], "no second stop operation");
    assert_eq!(c.event_types(&id).await.iter().filter(|t| *t == "stop_requested").count(), 1);
    assert_eq!(c.vm_total("").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_narrow_to_the_project_a_caller_names() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let org = c.create_org("narrow").await;
    let (s, project) = c.post(&format!("/v1/orgs/{org}/projects"), &json!({ "name": "web" })).await;
    assert_eq!(s, 201, "{project}");
    let in_org = c.with_header("x-vmplane-org", &org);
    let in_project = in_org.with_header("x-vmplane-project", str_of(&project["id"]));
    // One VM and one volume in the org's default project, one of each in `web`.
    let mut ops = Vec::new();
    for (client, name) in [(&in_org, "outside"), (&in_project, "inside")] {
        let vm = client.create_vm(json!({ "name": name })).await;
        ops.push(str_of(&vm["operation"]["id"]).to_owned());
        let (s, vol) = client.post("/v1/volumes", &json!({ "name": name, "size_gb": 1 })).await;
        assert_eq!(s, 202, "{vol}");
        ops.push(str_of(&vol["operation"]["id"]).to_owned());
    }
    for op in &ops {
        in_org.wait_op_succeeded(op).await;
    }
    let names = |b: &Value| b["data"].as_array().unwrap().iter().map(|v| str_of(&v["name"]).to_owned()).collect::<Vec<_>>();
    for path in ["/v1/vms", "/v1/volumes"] {
        let (s, all) = in_org.get(path).await;
        assert_eq!((s, names(&all)), (200, vec!["outside".to_owned(), "inside".to_owned()]), "{path} across the org");
        let (s, narrowed) = in_project.get(path).await;
        assert_eq!((s, names(&narrowed)), (200, vec!["inside".to_owned()]), "{path} in the named project");
        assert_eq!(narrowed["pagination"]["total_items"], 1, "{path}");
        let (s, by_name) = in_project.get(&format!("{path}?name=outside")).await;
        assert_eq!((s, by_name["pagination"]["total_items"].as_u64()), (200, Some(0)), "{path}: another project's name");
    }
}
