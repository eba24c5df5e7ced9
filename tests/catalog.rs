//! The catalog and what a host announces about itself: region, location,
//! engine, labels, GPUs and pricing from the worker's flags and the
//! operator's `<data-dir>/catalog.json`, seen in `GET /v1/hosts`; a malformed
//! catalog or a flag the catalog contradicts stops the worker at start.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

/// An override with a location (the built-in catalog has none) and an image of the operator's.
const CATALOG: &str = r#"{
  "locations": {"ams-1": {"region": "eu-west", "city": "Amsterdam", "country": "NL", "tier": 3, "network_speed_gbps": 10}},
  "images": {"my-app": {"os": "alpine", "version": "3.20", "aliases": ["registry.example/me/app:1"]}}
}"#;

/// The stack's only host, once `done` holds for it.
async fn host_where(stack: &Stack, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, WAIT, async || match stack.admin.try_get("/v1/hosts").await {
        Some((200, hosts)) => hosts.as_array().and_then(|a| a.iter().find(|h| h["status"] == "online" && done(h))).cloned().ok_or_else(|| hosts.to_string()),
        other => Err(format!("{other:?}")),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_announce_region_gpus_labels_location_and_pricing() {
    let mut stack = Stack::start().await;
    let host = stack.wait_host_online().await;
    // Without flags: the default region, the driver as engine, nothing else; every catalog image (sim).
    assert_eq!((&host["region"], &host["engine"], &host["gpus"], &host["labels"]), (&json!("us-east"), &json!("sim"), &json!({}), &json!({})), "{host}");
    assert_eq!(host["pricing"], json!({"per_vcpu_hr": "0", "per_gb_ram_hr": "0", "per_gb_storage_hr": "0", "per_gpu_hr": {}}), "{host}");
    let images: Vec<&str> = host["images"].as_array().expect("images").iter().map(|i| i["name"].as_str().expect("image name")).collect();
    for slug in ["alpine-3", "debian-minimal", "fedora-40", "rocky-9", "ubuntu-2204", "ubuntu-2404"] {
        assert!(images.contains(&slug), "{slug} in {images:?}");
    }

    std::fs::write(stack.data_dir().join("catalog.json"), CATALOG).expect("writing catalog.json");
    stack
        .restart_worker_with(&[
            "--region",
            "eu-west",
            "--gpu",
            "A100:2",
            "--label",
            "tier=gold",
            "--location",
            "ams-1",
            "--engine",
            "Narwhal",
            "--price-vcpu-hr",
            "0.0015",
            "--price-gb-storage-hr",
            "0.00005",
            "--price-gpu-hr",
            "A100=2.2",
        ])
        .await;
    let host = host_where(&stack, "the host re-announced in eu-west", |h| h["region"] == "eu-west").await;
    assert_eq!(host["gpus"], json!({"A100": 2}), "{host}");
    assert_eq!(host["labels"], json!({"tier": "gold"}), "{host}");
    assert_eq!(host["engine"], "Narwhal", "{host}");
    assert_eq!(host["location_id"], "ams-1", "{host}");
    assert_eq!(
        (&host["location"]["city"], &host["location"]["region"], &host["location"]["tier"]),
        (&json!("Amsterdam"), &json!("eu-west"), &json!(3)),
        "{host}"
    );
    assert_eq!(
        host["pricing"],
        json!({"per_vcpu_hr": "0.0015", "per_gb_ram_hr": "0", "per_gb_storage_hr": "0.00005", "per_gpu_hr": {"A100": "2.2"}}),
        "{host}"
    );
    // The operator's image is announced by the simulator too, and listed once in /v1/images.
    assert!(host["images"].as_array().expect("images").iter().any(|i| i["name"] == "my-app" && i["os"] == "alpine"), "{host}");
    let (s, images) = stack.admin.get("/v1/images").await;
    assert_eq!(s, 200, "{images}");
    assert_eq!(images.as_array().expect("images").iter().filter(|i| i["name"] == "my-app").count(), 1, "{images}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_catalog_or_a_contradicting_flag_stops_the_worker() {
    let mut stack = Stack::start().await;
    // The data dir holds one worker at a time: stop the stack's before trying others on it.
    stack.worker.terminate().await;
    let catalog = stack.data_dir().join("catalog.json");
    struct Refusal {
        case: &'static str,
        /// The override file, or none.
        file: Option<&'static str>,
        flags: &'static [&'static str],
        /// What the worker's log must say.
        says: &'static [&'static str],
    }
    let cases = [
        Refusal { case: "truncated file", file: Some(r#"{"plans": {"#), flags: &[], says: &["catalog.json is not a valid catalog", "EOF while parsing"] },
        Refusal {
            case: "unknown field",
            file: Some(r#"{"plans": {"x": {"vcpus": 1, "memory_mib": 512, "disk_gb": 10, "cpus": 2}}}"#),
            flags: &[],
            says: &["unknown field `cpus`"],
        },
        Refusal {
            case: "location in no region",
            file: Some(r#"{"locations": {"x": {"region": "mars", "city": "c", "country": "c"}}}"#),
            flags: &[],
            says: &["location `x`", "region `mars` is not in the catalog"],
        },
        Refusal { case: "region not in the catalog", file: None, flags: &["--region", "mars"], says: &["unknown region `mars`", "us-east"] },
        Refusal { case: "price of a GPU the host lacks", file: None, flags: &["--gpu", "A100:1", "--price-gpu-hr", "H100=3"], says: &["GPU model `H100`"] },
    ];
    for (i, Refusal { case, file, flags, says }) in cases.into_iter().enumerate() {
        match file {
            Some(text) => std::fs::write(&catalog, text).expect("writing catalog.json"),
            None => std::fs::remove_file(&catalog)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .expect("removing catalog.json"),
        }
        let mut args = stack.worker_args();
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let log = stack.root().join(format!("refused-{i}.log"));
        let mut worker = Proc::start(&format!("worker ({case})"), BIN, args, vec![], log);
        let status = wait_for(&format!("the worker to refuse to start: {case}"), WAIT, async || worker.exited().ok_or_else(|| worker.log_tail(5))).await;
        assert!(!status.success(), "{case}: {status}");
        for needle in says {
            assert!(worker.log_mentions(needle), "{case}: the log should say {needle:?}\n{}", worker.log_tail(10));
        }
    }
    // Nothing else was wrong: without the file (the last cases had none) and with good flags it starts.
    assert!(!catalog.exists());
    let mut args = stack.worker_args();
    args.extend(["--region", "ap-south"].map(str::to_owned));
    let _worker = Proc::start("worker (fixed)", BIN, args, vec![], stack.root().join("fixed.log"));
    host_where(&stack, "the host online in ap-south", |h| h["region"] == "ap-south").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_resolve_plans_regions_and_image_names_through_the_catalog() {
    let stack = Stack::start().await;
    stack.wait_host_online().await;
    let c = &stack.admin;

    // A plan gives the sizes; an explicit size wins. Catalog names, aliases and
    // OCI references all boot the installed slug, and the VM says which.
    let vm = c.create_vm(json!({"name": "planned", "plan": "medium", "memory_mib": 2048, "region": "us-east", "image": "ubuntu-24.04"})).await;
    assert_eq!(
        (vm["vcpus"].as_u64(), vm["memory_mib"].as_u64(), vm["disk_gb"].as_u64(), vm["image"].as_str(), vm["plan"].as_str(), vm["region"].as_str()),
        (Some(4), Some(2048), Some(160), Some("ubuntu-2404"), Some("medium"), Some("us-east")),
        "{vm}"
    );
    for (name, slug) in
        [("docker.io/library/debian:12", "debian-minimal"), ("img_default", "debian-minimal"), ("ubuntu2204", "ubuntu-2204"), ("alpine:latest", "alpine-3")]
    {
        let vm = c.create_vm(json!({"name": format!("named-{slug}-{}", name.len()), "image": name})).await;
        assert_eq!(vm["image"], slug, "{name}: {vm}");
    }

    // What does not resolve is a 4xx that says why, and creates nothing.
    let before = c.get("/v1/vms").await.1["data"].as_array().map(Vec::len);
    for (body, code, says) in [
        (json!({"name": "x", "plan": "huge"}), "unknown_plan", "plans: medium, micro, nano, power, power-dedicated, small"),
        (json!({"name": "x", "region": "mars-1"}), "unknown_region", "regions: ap-south, eu-west, us-east, us-west"),
        (json!({"name": "x", "region": "eu-west"}), "region_not_served", "served: us-east"),
        (json!({"name": "x", "image": "windows-11"}), "unknown_image", "POST /v1/images"),
        (json!({"name": "x", "image": "quay.io/acme/tool:2"}), "unknown_image", "catalog.json"),
    ] {
        let (s, b) = c.post("/v1/vms", &body).await;
        assert_eq!((s, b["code"].as_str()), (422, Some(code)), "{body}: {b}");
        assert!(b["message"].as_str().is_some_and(|m| m.contains(says)), "{body}: {b}");
    }
    assert_eq!(c.get("/v1/vms").await.1["data"].as_array().map(Vec::len), before);

    // The names a create may use are listed, as the create resolves them.
    let (s, plans) = c.get("/v1/plans").await;
    assert_eq!(s, 200, "{plans}");
    let names: Vec<&str> = plans.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["medium", "micro", "nano", "power", "power-dedicated", "small"]);
    let medium = plans.as_array().unwrap().iter().find(|p| p["name"] == "medium").unwrap();
    assert_eq!((medium["vcpus"].as_u64(), medium["memory_mib"].as_u64(), medium["disk_gb"].as_u64()), (Some(4), Some(8192), Some(160)), "{medium}");
    assert_eq!(plans.as_array().unwrap().iter().find(|p| p["name"] == "power-dedicated").unwrap()["dedicated"], true);
    let (s, regions) = c.get("/v1/regions").await;
    assert_eq!(s, 200, "{regions}");
    assert_eq!(regions[2], json!({"code": "us-east", "name": "US East"}));
    assert_eq!(regions.as_array().map(Vec::len), Some(4));
    let (s, b) = stack.client("not-a-key").get("/v1/plans").await;
    assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")), "{b}");
}
