//! The marketplace dialect (seed 004): every example of the seed document,
//! verbatim with local ids, against the sim stack, each answer checked
//! against the documented shape; every documented rule as a table of 4xx
//! answers in the JSON:API error shape that change nothing; host nodes whose
//! used ports, vCPUs, memory, disk and GPUs leave what they offer; another
//! org's instance not found; and the OpenAPI document agreeing with the
//! routes.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

/// The seed's `GET /api/v2/hostnodes` response, verbatim.
const HOSTNODES_EXAMPLE: &str = r#"{
"data": {
"hostnodes": [
{
"id": "hostnode-uuid",
"location_id": "location-uuid",
"engine": "Narwhal",
"uptime_percentage": 99.79,
"available_resources": {
"gpus": [
{
"v0Name": "h100-sxm5-80gb",
"availableCount": 8,
"price_per_hr": 2.2
}
],
"vcpu_count": 208,
"ram_gb": 990,
"storage_gb": 14780
},
"pricing": {
"per_vcpu_hr": 0.0015,
"per_gb_ram_hr": 0.0007,
"per_gb_storage_hr": 0.00005
},
"location": {
"uuid": "location-uuid",
"city": "City Name",
"stateprovince": "State/Province Name",
"country": "Country Name",
"has_network_storage": false,
"network_speed_gbps": 10,
"network_speed_upload_gbps": 10,
"organization": "organization-uuid",
"organizationName": "Organization Name",
"tier": 3
}
}
]
}
}"#;

/// The seed's `GET /api/v2/hostnodes/{uuid}` response, verbatim.
const HOSTNODE_EXAMPLE: &str = r#"{
"data": {
"id": "hostnode-uuid",
"location_id": "location-uuid",
"engine": "Narwhal",
"uptime_percentage": 99.79,
"available_resources": {
"gpus": [
{
"v0Name": "h100-sxm5-80gb",
"availableCount": 8,
"price_per_hr": 2.2
}
],
"vcpu_count": 208,
"ram_gb": 990,
"storage_gb": 14780,
"available_ports": [
20000,
20001,
20002,
20003,
20004,
20005,
20006,
20007,
20008
]
},
"pricing": {
"per_vcpu_hr": 0.0015,
"per_gb_ram_hr": 0.0007,
"per_gb_storage_hr": 0.00005
},
"location": {
"uuid": "location-uuid",
"city": "City Name",
"stateprovince": "State/Province Name",
"country": "Country Name",
"has_network_storage": false,
"network_speed_gbps": 10,
"network_speed_upload_gbps": 10,
"organization": "organization-uuid",
"organizationName": "Organization Name",
"tier": 3
}
}
}"#;

/// The seed's `POST /api/v2/instances` request body, verbatim.
const CREATE_EXAMPLE: &str = r#"{
"data": {
"type": "virtualmachine",
"attributes": {
"name": "my-port-forward-instance",
"type": "virtualmachine",
"image": "ubuntu2404",
"hostnode_id": "hn-uuid-12345",
"resources": {
"vcpu_count": 2,
"ram_gb": 4,
"storage_gb": 300,
"gpus": {
"geforcertx4090-pcie-24gb": {
"count": 1
}
}
},
"port_forwards": [
{
"internal_port": 22,
"external_port": 20000
},
{
"internal_port": 80,
"external_port": 20001
}
],
"ssh_key_id": "sshkey-uuid-12345",
"cloud_init": {
"runcmd": [
"echo 'Hello World'",
"apt-get install -y nginx"
],
"packages": [
"curl",
"git"
],
"package_update": true,
"package_upgrade": false
}
}
}
}"#;

/// The seed's `POST /api/v2/instances` response, verbatim.
const CREATED_EXAMPLE: &str = r#"{
"data": {
"type": "virtualmachine",
"id": "instance-uuid",
"name": "my-port-forward-instance",
"status": "running"
}
}"#;

/// The seed's `cloud_init` example, verbatim.
const CLOUD_INIT_EXAMPLE: &str = r#"{ "cloud_init": { "runcmd": [ "echo 'Hello World'", "apt-get update", "apt-get install -y nginx" ], "packages": [ "curl", "git" ], "package_update": true, "package_upgrade": false } }"#;

/// The JSON:API error shape the issue documents.
const ERROR_SHAPE: &str = r#"{"errors":[{"status":"400","code":"c","title":"t","detail":"d"}]}"#;

/// An override with the location the seed describes.
const CATALOG: &str = r#"{"locations": {"ams-1": {"region": "eu-west", "city": "Amsterdam", "state_province": "North Holland", "country": "NL",
  "tier": 3, "network_speed_gbps": 10, "network_speed_upload_gbps": 10, "has_network_storage": false}}}"#;

const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";
const RTX: &str = "geforcertx4090-pcie-24gb";
const H100: &str = "h100-sxm5-80gb";

/// `actual` has the documented shape of `doc`: each field of a documented
/// object is there with a value of the same JSON type, and each item of an
/// array has the shape of the documented first item.
fn assert_shape(doc: &Value, actual: &Value, path: &str) {
    match (doc, actual) {
        (Value::Object(d), Value::Object(a)) => {
            for (k, dv) in d {
                let av = a.get(k).unwrap_or_else(|| panic!("{path}.{k} is missing: {actual}"));
                assert_shape(dv, av, &format!("{path}.{k}"));
            }
        }
        (Value::Array(d), Value::Array(a)) => {
            assert!(!a.is_empty() || d.is_empty(), "{path}: documented with items, got none");
            for (i, av) in a.iter().enumerate() {
                assert_shape(&d[0], av, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => {}
        (d, a) => panic!("{path}: documented as {d}, got {a}"),
    }
}

fn example(text: &str) -> Value {
    serde_json::from_str(text).expect("a seed example is JSON")
}

/// A stack whose host is described as the seed's host nodes are: a location,
/// an engine, GPUs with prices, per-resource prices, and the port range of
/// the example (20000-20008). Returns it and the host node's id.
async fn marketplace_stack() -> (Stack, String) {
    let mut stack = Stack::start().await;
    std::fs::write(stack.data_dir().join("catalog.json"), CATALOG).expect("writing catalog.json");
    stack
        .restart_worker_with(&[
            "--location",
            "ams-1",
            "--engine",
            "Narwhal",
            "--gpu",
            &format!("{RTX}:2"),
            "--gpu",
            &format!("{H100}:8"),
            "--price-gpu-hr",
            &format!("{H100}=2.2"),
            "--price-vcpu-hr",
            "0.0015",
            "--price-gb-ram-hr",
            "0.0007",
            "--price-gb-storage-hr",
            "0.00005",
            "--label",
            "organization=org-7f3a",
            "--label",
            "organization_name=Example Hosting",
            "--port-range",
            "20000-20008",
        ])
        .await;
    let c = stack.admin.clone();
    let node = wait_for("the host node described", WAIT, async || match c.try_get("/api/v2/hostnodes").await {
        Some((200, b)) => b["data"]["hostnodes"].as_array().and_then(|a| a.iter().find(|h| h["engine"] == "Narwhal")).cloned().ok_or_else(|| b.to_string()),
        other => Err(format!("{other:?}")),
    })
    .await;
    (stack, str_of(&node["id"]).to_owned())
}

async fn hostnode(c: &Client, id: &str) -> Value {
    let r = c.send(c.request(Method::GET, &format!("/api/v2/hostnodes/{id}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/vnd.api+json");
    r.body["data"].clone()
}

fn ports(node: &Value) -> Vec<u64> {
    node["available_resources"]["available_ports"].as_array().expect("available_ports").iter().map(|p| p.as_u64().expect("a port")).collect()
}

fn gpu(node: &Value, model: &str) -> u64 {
    node["available_resources"]["gpus"].as_array().and_then(|a| a.iter().find(|g| g["v0Name"] == model)).map_or(0, |g| g["availableCount"].as_u64().unwrap())
}

/// POST a document to `/api/v2/instances`.
async fn post_instance(c: &Client, doc: &Value) -> Resp {
    c.send(c.request(Method::POST, "/api/v2/instances").header("content-type", "application/vnd.api+json").body(doc.to_string())).await
}

async fn wait_instance(c: &Client, id: &str, status: &str) -> Value {
    wait_for(&format!("instance {id} {status}"), WAIT, async || match c.try_get(&format!("/api/v2/instances/{id}")).await {
        Some((200, b)) if b["data"]["status"] == status => Ok(b["data"].clone()),
        other => Err(format!("{other:?}")),
    })
    .await
}

/// An error answer: the status, and the JSON:API shape with that status in it.
fn assert_error(r: &Resp, status: u16, code: &str, case: &str) {
    assert_eq!((r.status, r.body["errors"][0]["code"].as_str()), (status, Some(code)), "{case}: {}", r.body);
    assert_shape(&example(ERROR_SHAPE), &r.body, case);
    assert_eq!(r.body["errors"][0]["status"], status.to_string(), "{case}");
    assert_eq!(r.headers["content-type"], "application/vnd.api+json", "{case}");
}

/// The seed's create example with local ids.
fn create_example(hostnode: &str, ssh_key: &str) -> Value {
    let text = CREATE_EXAMPLE.replace("hn-uuid-12345", hostnode).replace("sshkey-uuid-12345", ssh_key);
    example(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_example_verbatim_and_used_resources_leave_the_host_node() {
    let (stack, node_id) = marketplace_stack().await;
    let c = stack.admin.clone();

    // GET /api/v2/hostnodes
    let r = c.send(c.request(Method::GET, "/api/v2/hostnodes")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/vnd.api+json");
    assert_shape(&example(HOSTNODES_EXAMPLE), &r.body, "GET /api/v2/hostnodes");
    let listed = r.body["data"]["hostnodes"][0].clone();
    assert_eq!(listed.get("available_resources").and_then(|a| a.get("available_ports")), None, "only the single view lists ports, as documented");

    // GET /api/v2/hostnodes/{uuid}
    let r = c.send(c.request(Method::GET, &format!("/api/v2/hostnodes/{node_id}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_shape(&example(HOSTNODE_EXAMPLE), &r.body, "GET /api/v2/hostnodes/{uuid}");
    let node = r.body["data"].clone();
    assert_eq!((&node["id"], &node["location_id"], &node["engine"]), (&json!(node_id), &json!("ams-1"), &json!("Narwhal")), "{node}");
    assert_eq!(node["pricing"], json!({"per_vcpu_hr": 0.0015, "per_gb_ram_hr": 0.0007, "per_gb_storage_hr": 0.00005}));
    assert_eq!(
        node["location"],
        json!({"uuid": "ams-1", "city": "Amsterdam", "stateprovince": "North Holland", "country": "NL", "has_network_storage": false,
               "network_speed_gbps": 10, "network_speed_upload_gbps": 10, "organization": "org-7f3a", "organizationName": "Example Hosting", "tier": 3})
    );
    assert_eq!(
        node["available_resources"]["gpus"],
        json!([{"v0Name": RTX, "availableCount": 2, "price_per_hr": 0.0}, {"v0Name": H100, "availableCount": 8, "price_per_hr": 2.2}])
    );
    let before = node["available_resources"].clone();
    assert_eq!(ports(&node), (20000..=20008).collect::<Vec<_>>(), "the whole port range is free");
    assert_eq!((&before["vcpu_count"], &before["ram_gb"], &before["storage_gb"]), (&json!(64), &json!(1024), &json!(100_000)), "the sim's capacity");
    let uptime = node["uptime_percentage"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&uptime), "{uptime}");

    // POST /api/v2/instances, with a stored key for ssh_key_id.
    let (s, key) = c.post("/v1/ssh-keys", &json!({"name": "laptop", "public_key": ED25519})).await;
    assert_eq!(s, 201, "{key}");
    let r = post_instance(&c, &create_example(&node_id, str_of(&key["id"]))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/vnd.api+json");
    assert_shape(&example(CREATED_EXAMPLE), &r.body, "POST /api/v2/instances");
    let created = &r.body["data"];
    assert_eq!((&created["type"], &created["name"], &created["hostnode_id"]), (&json!("virtualmachine"), &json!("my-port-forward-instance"), &json!(node_id)));
    let id = str_of(&created["id"]).to_owned();
    assert!(id.starts_with("vm_"), "{created}");
    let running = wait_instance(&c, &id, "running").await;
    assert_eq!(running["resources"], json!({"vcpu_count": 2, "ram_gb": 4, "storage_gb": 300, "gpus": {RTX: {"count": 1}}}), "{running}");
    assert_eq!(running["port_forwards"], json!([{"internal_port": 22, "external_port": 20000}, {"internal_port": 80, "external_port": 20001}]));
    assert_eq!(running["image"], "ubuntu-2404", "ubuntu2404 is the catalog's name for the installed ubuntu-2404");

    // The same VM in /v1: the stored key, and cloud_init as #cloud-config user data.
    let vm = c.vm(&id).await;
    assert_eq!(vm["ssh_keys"], json!([ED25519]), "{vm}");
    assert_eq!(
        vm["user_data"], "#cloud-config\npackage_update: true\npackages:\n- curl\n- git\nruncmd:\n- echo 'Hello World'\n- apt-get install -y nginx\n",
        "{vm}"
    );

    // What the instance uses has left the host node: its two ports, the SSH
    // port vmplane gives every VM, 2 vCPUs, 4 GB, 300 GB and one GPU.
    let node = hostnode(&c, &node_id).await;
    let ssh_port = running["ssh_port"].as_u64().expect("an SSH port");
    let left = ports(&node);
    assert!(![20000, 20001, ssh_port].iter().any(|p| left.contains(p)), "{left:?}");
    assert_eq!(left.len(), 9 - 3, "{left:?}");
    let after = &node["available_resources"];
    assert_eq!((&after["vcpu_count"], &after["ram_gb"], &after["storage_gb"]), (&json!(64 - 2), &json!(1024 - 4), &json!(100_000 - 300)), "{after}");
    assert_eq!((gpu(&node, RTX), gpu(&node, H100)), (1, 8));

    // The cloud_init example, verbatim, on an instance vmplane places itself.
    let mut doc = json!({"data": {"type": "virtualmachine", "attributes": {"name": "cloud-init-example", "image": "debian-12", "ssh_key": ED25519}}});
    doc["data"]["attributes"]["cloud_init"] = example(CLOUD_INIT_EXAMPLE)["cloud_init"].clone();
    let r = post_instance(&c, &doc).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let second = str_of(&r.body["data"]["id"]).to_owned();
    assert_eq!(
        c.vm(&second).await["user_data"],
        "#cloud-config\npackage_update: true\npackages:\n- curl\n- git\nruncmd:\n- echo 'Hello World'\n- apt-get update\n- apt-get install -y nginx\n"
    );
    wait_instance(&c, &second, "running").await;

    // List, get, delete.
    let r = c.send(c.request(Method::GET, "/api/v2/instances")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ids: Vec<&str> = r.body["data"].as_array().expect("data").iter().map(|i| str_of(&i["id"])).collect();
    assert_eq!(ids, vec![id.as_str(), second.as_str()]);
    assert_eq!(r.body["meta"]["total"], 2);
    for i in r.body["data"].as_array().unwrap() {
        assert_shape(&example(CREATED_EXAMPLE)["data"], i, "an instance in the list");
    }
    let r = c.send(c.request(Method::DELETE, &format!("/api/v2/instances/{id}"))).await;
    assert_eq!((r.status, &r.body["data"]["status"]), (202, &json!("deleting")), "{}", r.body);
    wait_for("the instance's resources back on the host node", WAIT, async || {
        let node = hostnode(&c, &node_id).await;
        let back = ports(&node).contains(&20000) && gpu(&node, RTX) == 2 && node["available_resources"]["vcpu_count"] == 64 - 1;
        if back { Ok(()) } else { Err(node.to_string()) }
    })
    .await;
    let r = c.send(c.request(Method::GET, &format!("/api/v2/instances/{id}"))).await;
    assert_error(&r, 404, "not_found", "a deleted instance is gone");
    let r = c.send(c.request(Method::DELETE, &format!("/api/v2/instances/{id}"))).await;
    assert_error(&r, 404, "not_found", "deleting it again");
    let r = c.send(c.request(Method::GET, "/api/v2/instances")).await;
    assert_eq!(r.body["meta"]["total"], 1, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_is_a_jsonapi_4xx_that_changes_nothing_and_tenants_see_only_their_own() {
    let (stack, node_id) = marketplace_stack().await;
    let admin = stack.admin.clone();
    let (org_a, org_b) = (admin.create_org("alpha").await, admin.create_org("beta").await);
    let a = stack.client(&admin.create_key(&org_a, "a").await);
    let b = stack.client(&admin.create_key(&org_b, "b").await);
    let (s, a_key) = a.post("/v1/ssh-keys", &json!({"name": "a", "public_key": ED25519})).await;
    assert_eq!(s, 201, "{a_key}");
    let a_key = str_of(&a_key["id"]).to_owned();

    // A's instance holds external port 20000 and one of the two RTX GPUs.
    let base = |name: &str| json!({"data": {"type": "virtualmachine", "attributes": {"name": name, "image": "ubuntu2404", "hostnode_id": node_id, "ssh_key_id": a_key}}});
    let mut first = base("first");
    first["data"]["attributes"]["port_forwards"] = json!([{"internal_port": 22, "external_port": 20000}]);
    first["data"]["attributes"]["resources"] = json!({"vcpu_count": 2, "ram_gb": 4, "storage_gb": 300, "gpus": {RTX: {"count": 1}}});
    let r = post_instance(&a, &first).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let a_vm = str_of(&r.body["data"]["id"]).to_owned();
    wait_instance(&a, &a_vm, "running").await;
    let node_before = hostnode(&a, &node_id).await;

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut d = base("rule");
        edit(&mut d);
        d
    };
    let attr = |key: &'static str, value: Value| move |d: &mut Value| d["data"]["attributes"][key] = value.clone();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("neither ssh_key nor ssh_key_id", with(&|d| drop(d["data"]["attributes"].as_object_mut().unwrap().remove("ssh_key_id"))), 400, "ssh_key_required"),
        ("both ssh_key and ssh_key_id", with(&attr("ssh_key", json!(ED25519))), 400, "ssh_key_required"),
        ("an external port another instance has", with(&attr("port_forwards", json!([{"internal_port": 80, "external_port": 20000}]))), 409, "port_conflict"),
        (
            "an external port outside the host node's",
            with(&attr("port_forwards", json!([{"internal_port": 80, "external_port": 30000}]))),
            400,
            "port_out_of_range",
        ),
        (
            "one internal port twice",
            with(&attr("port_forwards", json!([{"internal_port": 80, "external_port": 20005}, {"internal_port": 80, "external_port": 20006}]))),
            400,
            "validation_failed",
        ),
        ("internal port 0", with(&attr("port_forwards", json!([{"internal_port": 0, "external_port": 20005}]))), 400, "validation_failed"),
        ("external port 70000", with(&attr("port_forwards", json!([{"internal_port": 80, "external_port": 70000}]))), 400, "invalid_document"),
        ("more vCPUs than available", with(&attr("resources", json!({"vcpu_count": 63}))), 409, "insufficient_capacity"),
        ("more memory than available", with(&attr("resources", json!({"ram_gb": 1021}))), 409, "insufficient_capacity"),
        // The host node has 99700 GB free, more than one VM's disk may be
        // (MAX_DISK_GB, the document's maximum): storage over that is refused first.
        ("more storage than a VM may have", with(&attr("resources", json!({"storage_gb": 99_701}))), 400, "validation_failed"),
        ("more GPUs than available", with(&attr("resources", json!({"gpus": {RTX: {"count": 2}}}))), 409, "insufficient_capacity"),
        ("a GPU model the host node lacks", with(&attr("resources", json!({"gpus": {"t4": {"count": 1}}}))), 409, "insufficient_capacity"),
        ("two GPU models", with(&attr("resources", json!({"gpus": {RTX: {"count": 1}, H100: {"count": 1}}}))), 400, "validation_failed"),
        ("zero vCPUs", with(&attr("resources", json!({"vcpu_count": 0}))), 400, "validation_failed"),
        ("a negative size", with(&attr("resources", json!({"ram_gb": -1}))), 400, "invalid_document"),
        ("an unknown host node", with(&attr("hostnode_id", json!("host_01jdx3v9k6m2w8q4r5t7y9z0ab"))), 404, "not_found"),
        ("a host node id of another system", with(&attr("hostnode_id", json!("hn-uuid-12345"))), 404, "not_found"),
        ("an unknown ssh_key_id", with(&attr("ssh_key_id", json!("sshkey_01jdx3v9k6m2w8q4r5t7y9z0ab"))), 404, "not_found"),
        (
            "a bad ssh_key",
            with(&|d| {
                d["data"]["attributes"].as_object_mut().unwrap().remove("ssh_key_id");
                d["data"]["attributes"]["ssh_key"] = json!("ssh-ed25519 AAAA");
            }),
            400,
            "validation_failed",
        ),
        ("a name that is not a DNS label", with(&attr("name", json!("My Instance"))), 400, "validation_failed"),
        ("an image no catalog or host knows", with(&attr("image", json!("windows11"))), 400, "unknown_image"),
        ("no image", with(&|d| drop(d["data"]["attributes"].as_object_mut().unwrap().remove("image"))), 400, "invalid_document"),
        ("an unknown attribute", with(&attr("flavor", json!("large"))), 400, "invalid_document"),
        ("a runcmd with a control character", with(&attr("cloud_init", json!({"runcmd": ["echo \u{7}"]}))), 400, "validation_failed"),
        ("a package name with a space", with(&attr("cloud_init", json!({"packages": ["curl git"]}))), 400, "validation_failed"),
        ("an unknown cloud_init option", with(&attr("cloud_init", json!({"bootcmd": ["x"]}))), 400, "invalid_document"),
        ("package_update as a string", with(&attr("cloud_init", json!({"package_update": "yes"}))), 400, "invalid_document"),
        ("another resource type", with(&|d| d["data"]["type"] = json!("container")), 409, "type_mismatch"),
        ("attributes of another type", with(&attr("type", json!("container"))), 409, "type_mismatch"),
        ("no data", json!({"attributes": {}}), 400, "invalid_document"),
    ];
    for (case, doc, status, code) in &cases {
        assert_error(&post_instance(&a, doc).await, *status, code, case);
    }
    let r = a.send(a.request(Method::POST, "/api/v2/instances").header("content-type", "application/json").body("{\"data\":")).await;
    assert_error(&r, 400, "malformed_json", "malformed JSON");
    let r = a.send(a.request(Method::POST, "/api/v2/instances").body(base("plain").to_string())).await;
    assert_error(&r, 415, "unsupported_media_type", "no content type");
    let r = stack.anonymous().send(stack.anonymous().request(Method::GET, "/api/v2/hostnodes")).await;
    assert_error(&r, 401, "unauthorized", "no token");
    let r = stack.client("vmp_nope").send(stack.client("vmp_nope").request(Method::GET, "/api/v2/instances")).await;
    assert_error(&r, 401, "unauthorized", "a bad token");
    assert_error(&a.send(a.request(Method::GET, "/api/v2/hostnodes/hn-uuid-12345")).await, 404, "not_found", "a host node id of another system");
    assert_error(&a.send(a.request(Method::GET, "/api/v2/nothing-here")).await, 404, "route_not_found", "an unknown route");

    // Nothing changed: one instance, the host node's offer as it was.
    assert_eq!(admin.with_header("x-vmplane-org", &org_a).vm_total("").await, 1);
    assert_eq!(hostnode(&a, &node_id).await["available_resources"], node_before["available_resources"]);

    // Tenancy: B sees none of A's, in the marketplace's own 404.
    for (method, path) in [(Method::GET, format!("/api/v2/instances/{a_vm}")), (Method::DELETE, format!("/api/v2/instances/{a_vm}"))] {
        assert_error(&b.send(b.request(method.clone(), &path)).await, 404, "not_found", &format!("B {method} {path}"));
    }
    let r = b.send(b.request(Method::GET, "/api/v2/instances")).await;
    assert_eq!((r.status, &r.body["data"], &r.body["meta"]["total"]), (200, &json!([]), &json!(0)), "{}", r.body);
    let mut theirs = base("b-with-a-key");
    theirs["data"]["attributes"]["hostnode_id"] = json!(node_id);
    let r = post_instance(&b, &theirs).await;
    assert_error(&r, 404, "not_found", "B naming A's ssh key");
    assert!(!r.body.to_string().contains("AAAAC3NzaC1lZDI1NTE5"), "{}", r.body);
    // B sees the host node's offer like everyone (what A took is not B's to know, what is left is).
    assert_eq!(hostnode(&b, &node_id).await["available_resources"], node_before["available_resources"]);
    // A still has its instance.
    assert_eq!(wait_instance(&a, &a_vm, "running").await["name"], "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_routes_agree() {
    let stack = Stack::start().await;
    let c = stack.admin.clone();
    let anon = stack.anonymous();
    let (s, doc) = anon.get("/openapi/marketplace.json").await;
    assert_eq!(s, 200, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys().filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str())) {
            documented.push((method.to_uppercase(), path.clone()));
            assert!(item[method]["responses"].as_object().unwrap().keys().any(|s| s.starts_with('4')), "{method} {path} documents no 4xx");
        }
    }
    documented.sort();
    let seed = [
        ("DELETE", "/api/v2/instances/{id}"),
        ("GET", "/api/v2/hostnodes"),
        ("GET", "/api/v2/hostnodes/{uuid}"),
        ("GET", "/api/v2/instances"),
        ("GET", "/api/v2/instances/{id}"),
        ("POST", "/api/v2/instances"),
    ];
    assert_eq!(documented, seed.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect::<Vec<_>>(), "the seed's operations, and only them");

    // Every documented operation is served (real ids: no route-not-found, no 405), deleting last.
    let host = stack.wait_host_online().await;
    let vm = c.create_running_vm("probe").await;
    let mut calls = documented.clone();
    calls.sort_by_key(|(m, _)| m == "DELETE");
    for (method, path) in &calls {
        let concrete = path.replace("{uuid}", str_of(&host["id"])).replace("{id}", str_of(&vm["id"]));
        let mut rb = c.request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete);
        if method == "POST" {
            rb = rb.json(&json!({"data": {"type": "virtualmachine", "attributes": {"name": "probe-2", "image": "debian-12", "ssh_key": ED25519}}}));
        }
        let r = c.send(rb).await;
        assert!(r.status < 300, "{method} {path} (as {concrete}): {}", r.body);
    }
    // And nothing else: other methods on those paths are 405, other paths 404, both JSON:API.
    let (host_path, vm_path) = (format!("/api/v2/hostnodes/{}", str_of(&host["id"])), format!("/api/v2/instances/{}", str_of(&vm["id"])));
    for path in ["/api/v2/hostnodes", "/api/v2/instances", &host_path, &vm_path] {
        for method in [Method::PUT, Method::PATCH] {
            assert_error(&c.send(c.request(method.clone(), path)).await, 405, "method_not_allowed", &format!("{method} {path}"));
        }
    }
    for (method, path) in [(Method::POST, "/api/v2/hostnodes"), (Method::DELETE, "/api/v2/hostnodes"), (Method::POST, vm_path.as_str())] {
        assert_error(&c.send(c.request(method.clone(), path)).await, 405, "method_not_allowed", &format!("{method} {path}"));
    }
    for path in ["/api/v2", "/api/v2/hostnodes/x/y", "/api/v2/instances/x/start", "/api/v2/sshkeys"] {
        let r = c.send(c.request(Method::GET, path)).await;
        assert_error(&r, 404, "route_not_found", path);
    }
}
