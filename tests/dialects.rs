//! One VM, six APIs: a VM created through one dialect is the same VM in every
//! other, in `/v1` and in the event feed; a command sent through any of them
//! moves it for all. Each dialect's own tests (`tests/dialect_*.rs`) cover
//! its shapes and rules; this one covers that they share one core.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

/// A well-formed public key.
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBVaWNZ3zwqvP1OL5dHTaM0x5B3xYB8q0W6bZEN4cRy0 all@dialects";

/// NeevCloud names resources by UUID: the same 128 bits as vmplane's id.
fn uuid(prefixed: &str) -> String {
    let (_, ulid) = prefixed.split_once('_').unwrap_or_else(|| panic!("not a prefixed id: {prefixed}"));
    let h = format!("{:032x}", ulid::Ulid::from_string(ulid).unwrap_or_else(|e| panic!("{prefixed}: {e}")).0);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The VM as each API names its state, read through all six.
struct Views {
    native: String,
    visor: String,
    hypeman: String,
    neevcloud: String,
    hatch: String,
    marketplace: String,
}

async fn views(c: &Client, id: &str, org: &str, project: &str) -> Views {
    let get = async |path: String| {
        let (s, b) = c.get(&path).await;
        assert_eq!(s, 200, "GET {path}: {b}");
        b
    };
    let native = get(format!("/v1/vms/{id}")).await;
    let visor = get(format!("/api/vm.one?vmId={id}&organizationId={org}")).await;
    let hypeman = get(format!("/instances/{id}")).await;
    let neev = get(format!("/api/v1/orgs/{}/projects/{}/vms/{}", uuid(org), uuid(project), uuid(id))).await;
    let hatch = get(format!("/vms/{id}")).await;
    let market = get(format!("/api/v2/instances/{id}")).await;

    // The same machine everywhere: id, name, sizes and image.
    let vm = &visor["result"]["data"];
    assert_eq!((vm["id"].as_str(), vm["name"].as_str(), vm["os"].as_str()), (Some(id), Some("everywhere"), Some("debian-12")), "{visor}");
    assert_eq!((vm["specs"]["vcpu"].as_u64(), vm["specs"]["memoryGb"].as_u64()), (Some(1), Some(1)), "{visor}");
    assert_eq!((hypeman["id"].as_str(), hypeman["name"].as_str(), hypeman["vcpus"].as_u64()), (Some(id), Some("everywhere"), Some(1)), "{hypeman}");
    assert_eq!((neev["id"].as_str(), neev["name"].as_str(), neev["plan_id"].as_str()), (Some(uuid(id).as_str()), Some("everywhere"), Some("micro")), "{neev}");
    assert_eq!((hatch["id"].as_str(), hatch["vcpu_count"].as_u64(), hatch["mem_mib"].as_u64()), (Some(id), Some(1), Some(1024)), "{hatch}");
    assert_eq!(native["image"], "debian-minimal", "{native}");
    let m = &market["data"];
    assert_eq!(m["id"].as_str(), Some(id), "{market}");
    Views {
        native: str_of(&native["status"]).to_owned(),
        visor: str_of(&vm["status"]).to_owned(),
        hypeman: str_of(&hypeman["state"]).to_owned(),
        neevcloud: str_of(&neev["status"]).to_owned(),
        hatch: str_of(&hatch["state"]).to_owned(),
        marketplace: str_of(m["attributes"]["status"].as_str().map_or(&m["status"], |_| &m["attributes"]["status"])).to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vm_is_the_same_vm_through_all_six_apis() {
    let stack = Stack::start().await;
    stack.wait_host_online().await;
    let org = stack.admin.create_org("six").await;
    let c = stack.client(&stack.admin.create_key(&org, "k").await);
    let mut feed = c.sse(None).await;

    // Created through Visor, with a plan, a region, an OS and user data.
    let (s, b) = c
        .post(
            "/api/vm.launch",
            &json!({"organizationId": org, "name": "everywhere", "plan": "micro", "region": "us-east", "os": "debian-12",
                "sshKeys": [KEY], "userData": "#!/bin/sh\necho hi"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = str_of(&b["result"]["data"]["id"]).to_owned();
    let native = c.wait_vm_status(&id, "running").await;
    let project = str_of(&native["project_id"]).to_owned();
    assert_eq!(
        (native["plan"].as_str(), native["region"].as_str(), native["user_data"].as_str()),
        (Some("micro"), Some("us-east"), Some("#!/bin/sh\necho hi"))
    );
    assert_eq!(native["ssh_keys"], json!([KEY]));

    let v = views(&c, &id, &org, &project).await;
    assert_eq!(
        [v.native, v.visor, v.hypeman, v.neevcloud, v.hatch, v.marketplace],
        ["running", "running", "Running", "running", "running", "running"].map(String::from)
    );

    // Stopped through NeevCloud (202), seen stopped by every API.
    let neev_vm = format!("/api/v1/orgs/{}/projects/{}/vms/{}", uuid(&org), uuid(&project), uuid(&id));
    let (s, b) = c.post_empty(&format!("{neev_vm}/stop")).await;
    assert_eq!(s, 202, "{b}");
    c.wait_vm_status(&id, "stopped").await;
    let v = views(&c, &id, &org, &project).await;
    assert_eq!(
        [v.native, v.visor, v.hypeman, v.neevcloud, v.hatch, v.marketplace],
        ["stopped", "stopped", "Stopped", "stopped", "stopped", "stopped"].map(String::from)
    );

    // Started through hypeman (it answers once running), restarted through /v1.
    let (s, b) = c.post_empty(&format!("/instances/{id}/start")).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("Running")), "{b}");
    c.act_and_wait(&id, "restart", "running").await;

    // Deleted through Hatch: gone from every API.
    let (s, b) = c.delete(&format!("/vms/{id}")).await;
    assert_eq!((s, &b), (200, &json!({"status": "deleted"})));
    for path in [format!("/api/vm.one?vmId={id}&organizationId={org}"), format!("/instances/{id}"), format!("/vms/{id}"), format!("/api/v2/instances/{id}")] {
        let (s, b) = c.get(&path).await;
        assert_eq!(s, 404, "GET {path}: {b}");
    }
    // NeevCloud's VM has a `deleted` status of its own: it shows it.
    let (s, b) = c.get(&neev_vm).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("deleted")), "{b}");
    assert_eq!(c.vm(&id).await["status"], "deleted");

    // One history in the feed, whichever API moved it: each command once.
    let history = c.event_types(&id).await;
    let mut n = 0;
    let events = feed
        .read_until(WAIT, |e| {
            n += usize::from(e.data["aggregate_id"] == id.as_str());
            n == history.len()
        })
        .await;
    let types: Vec<String> = events.iter().filter(|e| e.data["aggregate_id"] == id.as_str()).map(|e| str_of(&e.data["type"]).to_owned()).collect();
    assert_eq!(types, history, "the feed carries the VM's history");
    for (kind, n) in [("created", 1), ("stop_requested", 1), ("start_requested", 1), ("restart_requested", 1), ("delete_requested", 1), ("deleted", 1)] {
        assert_eq!(types.iter().filter(|t| **t == kind).count(), n, "{kind} in {types:?}");
    }
}

/// Whether an error body has the dialect's own shape.
type Shaped = fn(&Value) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_serves_its_openapi_document_and_answers_unknown_ids_in_its_own_shape() {
    let stack = Stack::start().await;
    stack.wait_host_online().await;
    let c = &stack.admin;
    for d in ["visor", "hypeman", "neevcloud", "hatch", "marketplace"] {
        let (s, doc) = stack.anonymous().get(&format!("/openapi/{d}.json")).await;
        assert_eq!(s, 200, "{d}: {doc}");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{d}: {doc}");
        assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()), "{d}: {doc}");
    }
    let ghost = "vm_01m8nnmg34qycgta7hjapmc6z1";
    let zero = uuid("org_00000000000000000000000000");
    let cases: [(String, Shaped); 5] = [
        (format!("/api/vm.one?vmId={ghost}"), |b| b["error"]["code"] == "NOT_FOUND" && b["error"]["data"]["httpStatus"] == 404),
        (format!("/instances/{ghost}"), |b| b["code"].is_string() && b["message"].is_string()),
        (format!("/api/v1/orgs/{zero}/projects/{}/vms/{}", uuid("prj_00000000000000000000000000"), uuid(ghost)), |b| b.is_object()),
        (format!("/vms/{ghost}"), |b| b.is_object()),
        (format!("/api/v2/instances/{ghost}"), |b| b["errors"][0]["status"] == "404"),
    ];
    for (path, shaped) in cases {
        let (s, b) = c.get(&path).await;
        assert_eq!(s, 404, "{path}: {b}");
        assert!(shaped(&b), "{path}: {b}");
    }
}
