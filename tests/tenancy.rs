//! Orgs and API keys: two orgs never see each other's VMs, operations or
//! events; keys cannot use admin routes or act in another org; bad
//! credentials are refused.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const DEFAULT_ORG: &str = "org_00000000000000000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orgs_are_isolated_and_keys_are_not_admins() {
    let stack = Stack::start().await;
    let admin = &stack.admin;

    let (s, acme) = admin.post("/v1/orgs", &json!({ "name": "acme" })).await;
    assert_eq!(s, 201, "{acme}");
    assert_eq!(acme["name"], "acme");
    assert_eq!(acme["operation"]["status"], "succeeded", "{acme}");
    let org_a = str_of(&acme["id"]).to_owned();
    assert!(org_a.starts_with("org_"), "{org_a}");
    let org_b = admin.create_org("globex").await;
    // The admin polls the operations it started, whichever org they belong to.
    let (s, op) = admin.get(&format!("/v1/operations/{}?wait=10", str_of(&acme["operation"]["id"]))).await;
    assert_eq!(s, 200, "{op}");
    assert_eq!((op["status"].as_str(), op["kind"].as_str(), op["org_id"].as_str()), (Some("succeeded"), Some("create_org"), Some(org_a.as_str())), "{op}");

    let (s, key) = admin.post("/v1/api-keys", &json!({ "name": "k", "org_id": org_a })).await;
    assert_eq!(s, 201, "{key}");
    let secret_a = str_of(&key["secret"]).to_owned();
    let key_op = str_of(&key["operation"]["id"]).to_owned();
    assert!(secret_a.starts_with("vmp_"), "{key}");
    let secret_b = admin.create_key(&org_b, "k").await;
    let (a, b) = (stack.client(&secret_a), stack.client(&secret_b));

    // The secret is never listed again.
    let (s, keys) = admin.with_header("x-vmplane-org", &org_a).get("/v1/api-keys").await;
    assert_eq!(s, 200, "{keys}");
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert!(keys[0].get("secret").is_none() && !keys.to_string().contains(&secret_a), "{keys}");
    let (s, orgs) = admin.get("/v1/orgs").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = orgs.as_array().unwrap().iter().map(|o| str_of(&o["name"])).collect();
    assert_eq!(names.len(), 3, "{orgs}");
    assert!(names.contains(&"default") && names.contains(&"acme") && names.contains(&"globex"), "{orgs}");

    // Org A's key creates a VM in org A.
    let created = a.create_vm(json!({ "name": "secret-vm" })).await;
    assert_eq!(created["org_id"], org_a.as_str(), "{created}");
    let vm_a = str_of(&created["id"]).to_owned();
    let op_a = str_of(&created["operation"]["id"]).to_owned();
    a.wait_op_succeeded(&op_a).await;
    assert_eq!(a.vm(&vm_a).await["status"], "running");
    assert_eq!(a.vm_total("").await, 1);

    // Org B sees none of it, however it asks.
    for path in [format!("/v1/vms/{vm_a}"), format!("/v1/vms/{vm_a}/events"), format!("/v1/operations/{op_a}"), format!("/v1/operations/{key_op}")] {
        let (s, body) = b.get(&path).await;
        assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "B GET {path}: {body}");
    }
    for action in ["start", "stop", "restart", "standby", "restore"] {
        let (s, body) = b.post_empty(&format!("/v1/vms/{vm_a}/{action}")).await;
        assert_eq!(s, 404, "B {action}: {body}");
    }
    let (s, body) = b.delete(&format!("/v1/vms/{vm_a}")).await;
    assert_eq!(s, 404, "B delete: {body}");
    let (s, list) = b.get("/v1/vms?limit=100").await;
    assert_eq!(s, 200);
    assert_eq!(list["data"], json!([]), "{list}");
    assert_eq!(list["pagination"]["total_items"], 0);
    for status in ["running", "pending", "deleted"] {
        assert_eq!(b.vm_total(&format!("?status={status}")).await, 0, "{status}");
    }
    // A sees its own operations.
    assert_eq!(a.get(&format!("/v1/operations/{op_a}")).await.0, 200);
    assert_eq!(a.get(&format!("/v1/operations/{key_op}")).await.0, 200);
    // The admin acting in the default org does not see A's VM; it does when naming org A.
    let (s, _) = admin.get(&format!("/v1/vms/{vm_a}")).await;
    assert_eq!(s, 404);
    let (s, _) = admin.with_header("x-vmplane-org", &org_b).get(&format!("/v1/operations/{op_a}")).await;
    assert_eq!(s, 404, "the admin naming org B sees only B's operations");
    assert_eq!(admin.vm_total("").await, 0);
    let as_a = admin.with_header("x-vmplane-org", &org_a);
    assert_eq!(as_a.vm(&vm_a).await["id"], vm_a.as_str());
    assert_eq!(as_a.vm_total("").await, 1);

    // A's VM still runs: B's refused actions changed nothing.
    assert_eq!(a.vm(&vm_a).await["status"], "running");

    // Keys cannot use admin routes.
    for (method, path, body) in [
        (Method::POST, "/v1/orgs", Some(json!({ "name": "evil" }))),
        (Method::GET, "/v1/orgs", None),
        (Method::POST, "/v1/api-keys", Some(json!({ "name": "k2", "org_id": org_a }))),
        (Method::GET, "/v1/api-keys", None),
        (Method::POST, &format!("/v1/orgs/{org_a}/projects"), Some(json!({ "name": "p" }))),
        (Method::GET, &format!("/v1/orgs/{org_a}/projects"), None),
    ] {
        let mut rb = a.request(method.clone(), path);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let r = a.send(rb).await;
        assert_eq!((r.status, r.body["code"].as_str()), (403, Some("forbidden")), "key {method} {path}: {:?}", r.body);
    }

    // A key acts only in its own org.
    let (s, body) = a.with_header("x-vmplane-org", &org_b).get("/v1/vms").await;
    assert_eq!((s, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (s, body) = a.with_header("x-vmplane-org", DEFAULT_ORG).post("/v1/vms", &json!({ "name": "x" })).await;
    assert_eq!(s, 403, "{body}");
    let (s, _) = a.with_header("x-vmplane-org", &org_a).get("/v1/vms").await;
    assert_eq!(s, 200, "naming its own org is fine");

    // Bad credentials.
    let tampered = format!("{}0", &secret_a[..secret_a.len() - 1]);
    let tampered = if tampered == secret_a { format!("{}1", &secret_a[..secret_a.len() - 1]) } else { tampered };
    for token in ["nope", "", "vmp_nope_nope", tampered.as_str(), &format!("{ADMIN_TOKEN}x")] {
        let (s, body) = stack.client(token).get("/v1/vms").await;
        assert_eq!((s, body["code"].as_str()), (401, Some("unauthorized")), "token {token:?}: {body}");
    }
    let r = stack.anonymous().send(stack.anonymous().request(Method::GET, "/v1/vms").header("authorization", format!("Basic {secret_a}"))).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let (s, body) = stack.anonymous().get("/v1/vms").await;
    assert_eq!((s, body["code"].as_str()), (401, Some("unauthorized")), "{body}");

    // Nothing of the above created anything anywhere.
    assert_eq!(as_a.vm_total("").await, 1);
    assert_eq!(admin.with_header("x-vmplane-org", &org_b).vm_total("").await, 0);
    assert_eq!(admin.get("/v1/orgs").await.1.as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_shows_only_the_callers_org() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let org_a = admin.create_org("acme").await;
    let org_b = admin.create_org("globex").await;
    let a = stack.client(&admin.create_key(&org_a, "a").await);
    let b = stack.client(&admin.create_key(&org_b, "b").await);

    // B listens from the start of the stream while A works.
    let mut feed_b = b.sse(None).await;
    let mut feed_admin_a = admin.with_header("x-vmplane-org", &org_a).sse(None).await;

    let vm_a = a.create_running_vm("a-vm").await;
    let vm_a = str_of(&vm_a["id"]).to_owned();
    a.act_and_wait(&vm_a, "stop", "stopped").await;
    // Then B creates a VM: once its creation finished on B's feed, every
    // earlier event in the stream has been considered for B's feed too.
    let marker = b.create_vm(json!({ "name": "b-vm" })).await;
    let (vm_b, op_b) = (str_of(&marker["id"]).to_owned(), str_of(&marker["operation"]["id"]).to_owned());
    b.wait_op_succeeded(&op_b).await;

    let seen = feed_b.read_until(Duration::from_secs(20), |e| e.event == "operation_finished" && e.data["operation_id"] == op_b.as_str()).await;
    let mut last = 0;
    for e in &seen {
        assert_eq!(e.data["org_id"], org_b.as_str(), "B's feed carried another org's event: {e:?}");
        assert_ne!(e.data["aggregate_id"], vm_a.as_str(), "{e:?}");
        assert!(e.id > last, "ids increase: {e:?}");
        last = e.id;
    }
    let types: Vec<&str> = seen.iter().filter(|e| e.data["aggregate_id"] == vm_b.as_str()).map(|e| e.event.as_str()).collect();
    assert_eq!(types, ["created", "provisioning_started", "network_allocated", "disk_prepared", "booted", "ready", "operation_finished"]);
    assert!(seen.iter().any(|e| e.event == "org_created"), "B sees its own org's tenancy events");
    assert!(!seen.iter().any(|e| e.event == "host_registered"), "host events are system events, not an org's");
    // B's VM events are exactly the ones its history lists.
    let history: Vec<u64> = b.vm_events(&vm_b).await.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let fed: Vec<u64> = seen.iter().filter(|e| e.data["aggregate_id"] == vm_b.as_str()).map(|e| e.id).collect();
    assert_eq!(fed, history);

    // The admin naming org A sees A's VM and nothing of B's.
    let seen_a = feed_admin_a.read_until(Duration::from_secs(20), |e| e.event == "stopped" && e.data["aggregate_id"] == vm_a.as_str()).await;
    assert!(seen_a.iter().all(|e| e.data["org_id"] == org_a.as_str()), "{seen_a:?}");
    assert!(seen_a.iter().any(|e| e.event == "created" && e.data["aggregate_id"] == vm_a.as_str()));

    // The admin without an org sees every org, in stream order.
    let mut all = admin.sse(None).await;
    let seen_all = all.read_until(Duration::from_secs(20), |e| e.event == "operation_finished" && e.data["operation_id"] == op_b.as_str()).await;
    assert!(seen_all.iter().any(|e| e.data["aggregate_id"] == vm_a.as_str()));
    assert!(seen_all.iter().any(|e| e.data["aggregate_id"] == vm_b.as_str()));
    assert!(seen_all.windows(2).all(|w| w[1].id == w[0].id + 1), "the unfiltered feed has no gaps");
}
