//! Stored SSH keys (`/v1/ssh-keys`): create, list, read and delete in the
//! caller's org; every validation rule a 4xx that stores nothing; another
//! org's key is not found, never shown, not even through `ssh_key_ids`; a
//! create naming keys puts them on the VM; and the keys are events, so a
//! projection rebuilt from the stream has them (and not the deleted ones).

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

/// `ssh-keygen -t ed25519 -C user@host`, and what `ssh-keygen -l` says of it.
const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";
const ED25519_FP: &str = "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU";
/// `ssh-keygen -t ecdsa -b 256 -C ec`.
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBD+zGslh3aJqGmGFfKzkdvOYDlGXtaMMyNC0e9qrmVC+NkVNp3lDmW5OJ2x+mrE2ar9sbsnSU1zNO1rxEJfelPs= ec";
/// `ssh-keygen -t rsa -b 1024`: too short.
const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC4d7vbLE+nVSokKm13xi/qVugHIq/r+8acPHU0wbAyQAj69AHhVkyKtFPlE+6yFQsEwJ7QeeqYPhpfsmpXHUVW7BpbUj9ky1eNM8rzq6I3vEVm/RgZB0oUsE09pDc6aFY6+/MTJUvPE97ja3xflrPVDEKAKDQfSFzph2PtYuJ9Jw== small";

async fn list(c: &Client) -> Vec<Value> {
    let (s, b) = c.get("/v1/ssh-keys").await;
    assert_eq!(s, 200, "{b}");
    b.as_array().expect("a list").clone()
}

/// `POST /v1/ssh-keys`, asserting 201; returns the key.
async fn create_key(c: &Client, name: &str, public_key: &str) -> Value {
    let (s, b) = c.post("/v1/ssh-keys", &json!({ "name": name, "public_key": public_key })).await;
    assert_eq!(s, 201, "{b}");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_listed_read_and_deleted() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    assert!(list(c).await.is_empty());

    // Surrounding blanks are not part of the key; the answer is the key as stored.
    let key = create_key(c, "laptop", &format!("  {ED25519}\n")).await;
    let id = str_of(&key["id"]).to_owned();
    assert!(id.starts_with("sshkey_"), "{key}");
    assert_eq!((&key["name"], &key["public_key"], &key["fingerprint"]), (&json!("laptop"), &json!(ED25519), &json!(ED25519_FP)), "{key}");
    assert_eq!((&key["org_id"], &key["operation"]["status"]), (&json!("org_00000000000000000000000000"), &json!("succeeded")), "{key}");
    let ec = create_key(c, "work (ecdsa)", ECDSA).await;
    assert!(str_of(&ec["fingerprint"]).starts_with("SHA256:"), "{ec}");

    let (s, one) = c.get(&format!("/v1/ssh-keys/{id}")).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!((&one["public_key"], &one["fingerprint"], one.get("operation")), (&json!(ED25519), &json!(ED25519_FP), None), "{one}");
    let names: Vec<Value> = list(c).await.iter().map(|k| k["name"].clone()).collect();
    assert_eq!(names, vec![json!("laptop"), json!("work (ecdsa)")], "oldest first");

    let r = c.send(c.request(Method::DELETE, &format!("/v1/ssh-keys/{id}"))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (s, b) = c.get(&format!("/v1/ssh-keys/{id}")).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, b) = c.delete(&format!("/v1/ssh-keys/{id}")).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "deleting twice: {b}");
    assert_eq!(list(c).await.len(), 1);
    let (s, b) = c.get("/v1/ssh-keys/sshkey_nope").await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_id")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_is_a_4xx_that_stores_nothing() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let body = ED25519.split(' ').nth(1).unwrap();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("no public key", json!({ "name": "k" }), 422, "invalid_body"),
        ("no name", json!({ "public_key": ED25519 }), 422, "invalid_body"),
        ("an unknown field", json!({ "name": "k", "public_key": ED25519, "comment": "x" }), 422, "invalid_body"),
        ("a number for a name", json!({ "name": 7, "public_key": ED25519 }), 422, "invalid_body"),
        ("an empty name", json!({ "name": "", "public_key": ED25519 }), 422, "validation_failed"),
        ("a name of 65 characters", json!({ "name": "n".repeat(65), "public_key": ED25519 }), 422, "validation_failed"),
        ("a name with a newline", json!({ "name": "a\nb", "public_key": ED25519 }), 422, "validation_failed"),
        ("an empty key", json!({ "name": "k", "public_key": "" }), 422, "validation_failed"),
        ("only the algorithm", json!({ "name": "k", "public_key": "ssh-ed25519" }), 422, "validation_failed"),
        ("truncated base64", json!({ "name": "k", "public_key": format!("ssh-ed25519 {}", &body[..40]) }), 422, "validation_failed"),
        ("the wrong algorithm for the data", json!({ "name": "k", "public_key": format!("ssh-rsa {body}") }), 422, "validation_failed"),
        ("two keys", json!({ "name": "k", "public_key": format!("{ED25519}\n{ECDSA}") }), 422, "validation_failed"),
        ("authorized_keys options", json!({ "name": "k", "public_key": format!("command=\"/bin/sh\" {ED25519}") }), 422, "validation_failed"),
        ("an RSA key of 1024 bits", json!({ "name": "k", "public_key": RSA_1024 }), 422, "validation_failed"),
        (
            "a private key",
            json!({ "name": "k", "public_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----" }),
            422,
            "validation_failed",
        ),
    ];
    for (case, body, status, code) in cases {
        let (s, b) = c.post("/v1/ssh-keys", &body).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{case}: {b}");
        assert!(b["message"].is_string(), "{case}: {b}");
    }
    let r = c.send(c.request(Method::POST, "/v1/ssh-keys").body("{\"name\":")).await;
    assert_eq!(r.status, 415, "not declared JSON: {}", r.body);
    let r = c.send(c.request(Method::POST, "/v1/ssh-keys").header("content-type", "application/json").body("{\"name\":")).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("malformed_json")), "{}", r.body);
    let (s, b) = stack.anonymous().get("/v1/ssh-keys").await;
    assert_eq!(s, 401, "{b}");
    assert!(list(c).await.is_empty(), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_key_is_not_found_and_never_shown() {
    let stack = Stack::start().await;
    let admin = &stack.admin;
    let (org_a, org_b) = (admin.create_org("alpha").await, admin.create_org("beta").await);
    let a = stack.client(&admin.create_key(&org_a, "a").await);
    let b = stack.client(&admin.create_key(&org_b, "b").await);
    let a_key = create_key(&a, "a's key", ED25519).await;
    let a_id = str_of(&a_key["id"]).to_owned();
    assert_eq!(a_key["org_id"], org_a.as_str());
    let b_key = create_key(&b, "b's key", ECDSA).await;

    for (what, (s, body)) in [
        ("GET", b.get(&format!("/v1/ssh-keys/{a_id}")).await),
        ("DELETE", b.delete(&format!("/v1/ssh-keys/{a_id}")).await),
        ("create with it", b.post("/v1/vms", &json!({ "name": "b-vm", "ssh_key_ids": [a_id] })).await),
    ] {
        assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{what}: {body}");
        assert!(!body.to_string().contains("AAAAC3NzaC1lZDI1NTE5"), "{what} shows nothing of the key: {body}");
    }
    assert_eq!(list(&b).await.iter().map(|k| k["id"].clone()).collect::<Vec<_>>(), vec![b_key["id"].clone()]);
    assert_eq!(list(&a).await.len(), 1, "A's key is still there");
    assert_eq!(admin.vm_total("").await, 0);
    // The admin acting in A's org sees it; in its own (default) org it does not.
    assert_eq!(admin.with_header("x-vmplane-org", &org_a).get(&format!("/v1/ssh-keys/{a_id}")).await.0, 200);
    assert_eq!(admin.get(&format!("/v1/ssh-keys/{a_id}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_naming_keys_puts_them_on_the_vm_and_a_rebuild_keeps_them() {
    let mut stack = Stack::start().await;
    let c = stack.admin.clone();
    let laptop = create_key(&c, "laptop", ED25519).await;
    let work = create_key(&c, "work", ECDSA).await;
    let gone = create_key(&c, "gone", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl gone").await;
    let (laptop_id, work_id, gone_id) = (str_of(&laptop["id"]).to_owned(), str_of(&work["id"]).to_owned(), str_of(&gone["id"]).to_owned());

    // A key given inline and again by id is on the VM once; the ids' keys follow in order.
    let vm = c.create_vm(json!({ "name": "keyed", "ssh_keys": [ED25519], "ssh_key_ids": [laptop_id, work_id] })).await;
    let id = str_of(&vm["id"]).to_owned();
    assert_eq!(vm["ssh_keys"], json!([ED25519, ECDSA]), "{vm}");
    c.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
    assert_eq!(c.vm(&id).await["ssh_keys"], json!([ED25519, ECDSA]));
    let created = c.vm_events(&id).await.into_iter().find(|e| e["type"] == "created").expect("a created event");
    assert_eq!(created["event"]["data"]["spec"]["ssh_keys"], json!([ED25519, ECDSA]), "the event holds the keys themselves: {created}");

    // A deleted key names nothing; a VM created with it keeps it.
    let (s, b) = c.post("/v1/vms", &json!({ "name": "with-gone", "ssh_key_ids": [gone_id] })).await;
    assert_eq!(s, 202, "{b}");
    c.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
    assert_eq!(c.send(c.request(Method::DELETE, &format!("/v1/ssh-keys/{gone_id}"))).await.status, 204);
    let (s, b) = c.post("/v1/vms", &json!({ "name": "too-late", "ssh_key_ids": [gone_id] })).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    assert_eq!(c.vm_total("").await, 2, "nothing was created");
    let before = list(&c).await;
    assert_eq!(before.len(), 2);

    // The projection rebuilt from the event stream has the same keys.
    stack.gateway.terminate().await;
    let out = stack.rebuild_projections();
    assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
    stack.gateway.respawn();
    stack.wait_ready().await;
    assert_eq!(list(&c).await, before, "after `projections rebuild`");
    // And from nothing at all.
    stack.gateway.terminate().await;
    std::fs::remove_dir_all(stack.data_dir().join("projections")).expect("removing the projections");
    stack.gateway.respawn();
    stack.wait_ready().await;
    assert_eq!(list(&c).await, before, "after replaying the stream");
    assert_eq!(c.get(&format!("/v1/ssh-keys/{gone_id}")).await.0, 404);
    // The keys still work after the replay.
    let vm = c.create_vm(json!({ "name": "after-replay", "ssh_key_ids": [work_id] })).await;
    assert_eq!(vm["ssh_keys"], json!([ECDSA]), "{vm}");
}
