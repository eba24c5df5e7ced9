//! Templates (`/v1/templates`): create, list, get and delete; the org they
//! belong to; a create that names one takes its values for what it does not
//! give itself; and they are rebuilt from the event stream like everything else.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

/// `POST /v1/templates`, asserting 201; returns the template.
async fn create_template(c: &Client, body: Value) -> Value {
    let (s, b) = c.post("/v1/templates", &body).await;
    assert_eq!(s, 201, "POST /v1/templates {body}: {b}");
    b
}

fn names(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap_or_else(|| panic!("no data: {page}")).iter().map(|t| str_of(&t["name"]).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_get_delete_and_tenancy() {
    let stack = Stack::start().await;
    let c = &stack.admin;

    let body = json!({
        "name": "web",
        "image": "debian-minimal",
        "vcpus": 2,
        "memory_mib": 1024,
        "disk_gb": 20,
        "boot_args": "quiet",
        "user_data": "#!/bin/sh\necho from-template",
        "enable_network": true,
        "port_forwards": [{"guest_port": 80}],
        "labels": {"tier": "web"}
    });
    let t = create_template(c, body.clone()).await;
    let id = str_of(&t["id"]).to_owned();
    assert!(id.starts_with("tpl_"), "{t}");
    assert_eq!(t["operation"]["status"], "succeeded", "{t}");
    assert_eq!(t["operation"]["kind"], "create_template", "{t}");
    for field in ["name", "image", "vcpus", "memory_mib", "disk_gb", "boot_args", "user_data", "enable_network", "labels"] {
        assert_eq!(t[field], body[field], "{field}: {t}");
    }
    assert_eq!(t["port_forwards"][0]["guest_port"], 80, "{t}");
    assert_eq!(t["org_id"], "org_00000000000000000000000000", "{t}");

    // Read back, alone and in the list.
    let (s, got) = c.get(&format!("/v1/templates/{id}")).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["user_data"], body["user_data"], "{got}");
    assert!(got.get("operation").is_none(), "{got}");
    create_template(c, json!({"name": "tiny", "vcpus": 1, "memory_mib": 256})).await;
    let (s, page) = c.get("/v1/templates").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(names(&page), ["web", "tiny"], "oldest first: {page}");
    assert_eq!(page["pagination"]["total_items"], 2, "{page}");

    // A name is the org's once; invalid values are refused like a VM's; nothing is made.
    for (bad, status, code) in [
        (json!({"name": "web"}), 409, "template_exists"),
        (json!({"name": "Web!"}), 422, "validation_failed"),
        (json!({"name": "x", "vcpus": 0}), 422, "validation_failed"),
        (json!({"name": "x", "memory_mib": 1}), 422, "validation_failed"),
        (json!({"name": "x", "boot_args": "vmplane.net=1.2.3.4/8,1.1.1.1"}), 422, "validation_failed"),
        (json!({"name": "x", "port_forwards": [{"guest_port": 80, "host_port": 20080}]}), 422, "validation_failed"),
        (json!({"name": "x", "cpus": 2}), 422, "invalid_body"),
        (json!({"vcpus": 2}), 422, "invalid_body"),
    ] {
        let (s, b) = c.post("/v1/templates", &bad).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{bad}: {b}");
    }
    let (_, page) = c.get("/v1/templates").await;
    assert_eq!(page["pagination"]["total_items"], 2, "refused creates made nothing: {page}");

    // Another org's key sees none of them, and cannot delete one.
    let org = c.create_org("other").await;
    let other = stack.client(&c.create_key(&org, "k").await);
    let (s, b) = other.get(&format!("/v1/templates/{id}")).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, b) = other.delete(&format!("/v1/templates/{id}")).await;
    assert_eq!(s, 404, "{b}");
    let (s, page) = other.get("/v1/templates").await;
    assert_eq!((s, page["pagination"]["total_items"].as_u64()), (200, Some(0)), "{page}");
    // Nor can it create a VM from it, by id or by name.
    for template in [id.as_str(), "web"] {
        let (s, b) = other.post("/v1/vms", &json!({"name": "x", "template": template})).await;
        assert_eq!((s, b["code"].as_str()), (422, Some("unknown_template")), "{template}: {b}");
    }
    // Its own template of the same name is fine.
    let mine = create_template(&other, json!({"name": "web", "vcpus": 3})).await;
    assert_eq!(mine["org_id"], org.as_str(), "{mine}");

    // Delete: 200, then gone; a second delete is a 404.
    let (s, b) = c.delete(&format!("/v1/templates/{id}")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["operation"]["kind"], "delete_template", "{b}");
    let (s, _) = c.get(&format!("/v1/templates/{id}")).await;
    assert_eq!(s, 404);
    let (s, _) = c.delete(&format!("/v1/templates/{id}")).await;
    assert_eq!(s, 404);
    let (_, page) = c.get("/v1/templates").await;
    assert_eq!(names(&page), ["tiny"], "{page}");
    let (s, b) = c.post("/v1/vms", &json!({"name": "x", "template": id})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("unknown_template")), "a deleted template: {b}");
    // The name is free again.
    create_template(c, json!({"name": "web"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_takes_the_templates_values_for_what_it_does_not_give() {
    let stack = Stack::start().await;
    let c = &stack.admin;
    let t = create_template(
        c,
        json!({
            "name": "base",
            "vcpus": 2,
            "memory_mib": 1024,
            "disk_gb": 20,
            "user_data": "#!/bin/sh\necho from-template",
            "boot_args": "quiet",
            "port_forwards": [{"guest_port": 80}],
            "labels": {"from": "template"}
        }),
    )
    .await;
    let id = str_of(&t["id"]).to_owned();

    // Nothing given: everything the template has, the defaults for the rest.
    let vm = c.create_vm(json!({"name": "all-template", "template": id})).await;
    assert_eq!((vm["vcpus"].as_u64(), vm["memory_mib"].as_u64(), vm["disk_gb"].as_u64()), (Some(2), Some(1024), Some(20)), "{vm}");
    assert_eq!(vm["user_data"], "#!/bin/sh\necho from-template", "{vm}");
    assert_eq!(vm["boot_args"], "quiet", "{vm}");
    assert_eq!(vm["labels"]["from"], "template", "{vm}");
    assert_eq!(vm["port_forwards"][0]["guest_port"], 80, "{vm}");
    assert_eq!((vm["image"].as_str(), vm["hotplug_memory_mib"].as_u64()), (Some("debian-minimal"), Some(0)), "defaults: {vm}");
    assert_eq!(vm["template"], id.as_str(), "the VM names the template by id: {vm}");
    c.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
    let running = c.vm(str_of(&vm["id"])).await;
    assert_eq!((running["status"].as_str(), running["vcpus"].as_u64()), (Some("running"), Some(2)), "{running}");

    // The request wins over the template, field by field, even with a default value;
    // by name as well as by id.
    let vm = c
        .create_vm(json!({
            "name": "overrides",
            "template": "base",
            "vcpus": 1,
            "user_data": "#!/bin/sh\necho mine",
            "labels": {"from": "request"},
            "network": {"enabled": false}
        }))
        .await;
    assert_eq!((vm["vcpus"].as_u64(), vm["memory_mib"].as_u64(), vm["disk_gb"].as_u64()), (Some(1), Some(1024), Some(20)), "{vm}");
    assert_eq!(vm["user_data"], "#!/bin/sh\necho mine", "{vm}");
    assert_eq!(vm["labels"], json!({"from": "request"}), "{vm}");
    assert_eq!(vm["network"]["enabled"], false, "{vm}");
    assert_eq!(vm["template"], id.as_str(), "{vm}");

    // The merged spec is checked as a whole: the template's forwards with bridge networking are refused.
    let (s, b) = c.post("/v1/vms", &json!({"name": "bad", "template": id, "network": {"mode": "bridge"}})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("validation_failed")), "{b}");
    let (s, b) = c.post("/v1/vms", &json!({"name": "bad", "template": "nope"})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("unknown_template")), "{b}");
    assert_eq!(c.vm_total("").await, 2, "refused creates made nothing");

    // Deleting the template leaves its VMs as they are.
    let (s, _) = c.delete(&format!("/v1/templates/{id}")).await;
    assert_eq!(s, 200);
    let vm = c.vm(str_of(&running["id"])).await;
    assert_eq!((vm["vcpus"].as_u64(), vm["template"].as_str()), (Some(2), Some(id.as_str())), "{vm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_rebuilt_from_the_event_stream() {
    let mut stack = Stack::start().await;
    let kept = create_template(&stack.admin, json!({"name": "kept", "vcpus": 2, "user_data": "#!/bin/sh\necho kept"})).await;
    let gone = create_template(&stack.admin, json!({"name": "gone"})).await;
    let (s, _) = stack.admin.delete(&format!("/v1/templates/{}", str_of(&gone["id"]))).await;
    assert_eq!(s, 200);
    let (_, before) = stack.admin.get("/v1/templates").await;

    // `vmplane projections rebuild`, then a gateway with no projections at all.
    stack.gateway.terminate().await;
    let out = stack.rebuild_projections();
    assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
    stack.gateway.respawn();
    stack.wait_ready().await;
    let (_, rebuilt) = stack.admin.get("/v1/templates").await;
    assert_eq!(rebuilt, before, "after projections rebuild");

    stack.gateway.terminate().await;
    std::fs::remove_dir_all(stack.data_dir().join("projections")).unwrap();
    stack.gateway.respawn();
    stack.wait_ready().await;
    let (_, replayed) = stack.admin.get("/v1/templates").await;
    assert_eq!(replayed, before, "after replaying the stream from scratch");
    assert_eq!(names(&replayed), ["kept"], "{replayed}");
    let (s, _) = stack.admin.get(&format!("/v1/templates/{}", str_of(&gone["id"]))).await;
    assert_eq!(s, 404, "a deleted template stays deleted");

    // And the replayed template still fills a create.
    stack.wait_host_online().await;
    let vm = stack.admin.create_vm(json!({"name": "from-kept", "template": "kept"})).await;
    assert_eq!((vm["vcpus"].as_u64(), vm["user_data"].as_str()), (Some(2), Some("#!/bin/sh\necho kept")), "{vm}");
    assert_eq!(vm["template"], kept["id"], "{vm}");
}
