//! More than one host: a worker and a second gateway join the control plane
//! of a `vmplane up` through the `join.json` it writes.

mod common;

use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// The hosts `GET /v1/hosts` shows online, by name.
async fn online_hosts(c: &Client) -> Vec<Value> {
    let Some((200, hosts)) = c.try_get("/v1/hosts").await else { return vec![] };
    hosts.as_array().cloned().unwrap_or_default().into_iter().filter(|h| h["status"] == "online").collect()
}

/// `vmplane up` writes `<data-dir>/join.json` (0600: the NATS URLs and the
/// worker's, gateway's and deliverer's credentials, not the admin's); a
/// worker with `--join` and its own data dir becomes a second host that VMs
/// are placed on; a gateway with `--join` serves the same state; and the
/// file stays good when `up` restarts (same NATS port).
#[tokio::test]
async fn a_worker_and_a_gateway_join_through_join_json() {
    let dir = tempfile::Builder::new().prefix("vmplane-fleet-").tempdir().unwrap();
    let data = dir.path().join("up");
    let listen = format!("127.0.0.1:{}", free_port());
    let sim = ["--driver", "sim", "--sim-boot-delay-ms", "20", "--sim-ready-delay-ms", "20"];
    let mut up_args: Vec<String> = ["up", "--data-dir", &data.display().to_string(), "--listen", &listen, "--host-name", "first"].map(str::to_owned).to_vec();
    up_args.extend(sim.map(str::to_owned));
    let mut up = Proc::start("vmplane up", BIN, up_args, vec![], dir.path().join("up.log"));
    let join = data.join("join.json");
    wait_for("join.json", WAIT, async || if join.exists() { Ok(()) } else { Err(up.log_tail(5)) }).await;
    assert_eq!(mode(&join), 0o600);
    let doc: Value = serde_json::from_slice(&std::fs::read(&join).unwrap()).unwrap();
    assert_eq!(doc["version"], 1);
    assert!(doc["nats_urls"][0].as_str().unwrap().starts_with("nats://127.0.0.1:"), "{doc}");
    let roles: Vec<&str> = doc["credentials"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(roles, ["gateway", "webhooks", "worker"], "no admin credentials: {doc}");
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let admin = Client::new(&format!("http://{listen}"), Some(token.trim()));
    wait_for("up's host online", WAIT, async || if online_hosts(&admin).await.len() == 1 { Ok(()) } else { Err(up.log_tail(5)) }).await;

    // A second host, from its own data dir.
    let mut wk_args: Vec<String> =
        ["worker", "--join", &join.display().to_string(), "--data-dir", &dir.path().join("second").display().to_string(), "--host-name", "second"]
            .map(str::to_owned)
            .to_vec();
    wk_args.extend(sim.map(str::to_owned));
    let mut second = Proc::start("joined worker", BIN, wk_args, vec![], dir.path().join("second.log"));
    let hosts = wait_for("two hosts online", WAIT, async || {
        let hosts = online_hosts(&admin).await;
        if hosts.len() == 2 { Ok(hosts) } else { Err(second.log_tail(5)) }
    })
    .await;
    let second_id = hosts.iter().find(|h| h["name"] == "second").map(|h| h["id"].clone()).expect("the joined host by its name");

    // VMs spread over both hosts; the joined one runs its share.
    let mut on_second = None;
    for i in 0..4 {
        let vm = admin.create_running_vm(&format!("f{i}")).await;
        if vm["host_id"] == second_id {
            on_second = Some(vm);
        }
    }
    let on_second = on_second.unwrap_or_else(|| panic!("no VM was placed on the joined host {second_id}"));

    // A second gateway, from its own data dir, serves the same VMs.
    let listen2 = format!("127.0.0.1:{}", free_port());
    let gw_args = ["gateway", "--join", &join.display().to_string(), "--data-dir", &dir.path().join("gw2").display().to_string(), "--listen", &listen2]
        .map(str::to_owned)
        .to_vec();
    let _gw2 = Proc::start("joined gateway", BIN, gw_args, vec![("VMPLANE_ADMIN_TOKEN".into(), token.trim().into())], dir.path().join("gw2.log"));
    let admin2 = Client::new(&format!("http://{listen2}"), Some(token.trim()));
    let id = str_of(&on_second["id"]).to_owned();
    wait_for("the VM through the second gateway", WAIT, async || match admin2.try_get(&format!("/v1/vms/{id}")).await {
        Some((200, vm)) if vm["status"] == "running" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;

    // `up` restarts on the same NATS port: the joined worker comes back online by itself.
    up.terminate().await;
    up.respawn();
    wait_for("both hosts online after up restarted", WAIT, async || {
        let names: Vec<String> = online_hosts(&admin).await.iter().map(|h| h["name"].as_str().unwrap_or_default().to_owned()).collect();
        if names.len() == 2 { Ok(()) } else { Err(format!("{names:?}\n{}", second.log_tail(5))) }
    })
    .await;
    let doc_after: Value = serde_json::from_slice(&std::fs::read(&join).unwrap()).unwrap();
    assert_eq!(doc_after, doc, "join.json is unchanged across a restart");
    // The joined worker is connected again: it runs what is placed on it now.
    let mut ran_on_second = false;
    for i in 0..4 {
        let vm = admin.create_vm(json!({ "name": format!("after{i}") })).await;
        admin.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
        ran_on_second |= admin.vm(str_of(&vm["id"])).await["host_id"] == second_id;
    }
    assert!(ran_on_second, "a VM ran on the joined host after up restarted");
    second.terminate().await;
    up.terminate().await;
}
