//! `docker-compose.yml`, the production shape (three NATS nodes in a
//! JetStream cluster, two gateways, two workers, a webhook deliverer):
//! validated by the compose tool, and brought up on the machine's container
//! engine where one runs. This machine reaches no image registry, so the
//! stack runs from one image imported from files of this machine (the
//! `vmplane` under test, Debian's nats-server and the libraries both load),
//! put in place of the file's images by an override file.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose.yml")
}

/// `docker-compose` (Debian's package), else `docker compose` (the plugin); `None` when neither runs.
fn compose_command() -> Option<Vec<String>> {
    let runs = |argv: &[&str]| Command::new(argv[0]).args(&argv[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if runs(&["docker-compose", "version"]) {
        Some(vec!["docker-compose".into()])
    } else if runs(&["docker", "compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else {
        None
    }
}

/// A compose command line on the project's file (and `extra` files), with `env`.
fn compose(tool: &[String], project: Option<&str>, extra: &[&Path], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(&tool[0]);
    cmd.args(&tool[1..]);
    if let Some(p) = project {
        cmd.args(["-p", p]);
    }
    cmd.arg("-f").arg(compose_file());
    for f in extra {
        cmd.arg("-f").arg(f);
    }
    cmd.env_remove("VMPLANE_ADMIN_TOKEN").env_remove("NATS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

const SERVICES: [&str; 9] = ["gateway-1", "gateway-2", "nats-1", "nats-2", "nats-3", "nats-init", "webhooks", "worker-1", "worker-2"];

/// The compose tool accepts the file and finds the production shape in it;
/// it refuses to run it without an admin token.
#[test]
fn compose_file_is_valid() {
    let Some(tool) = compose_command() else {
        eprintln!("SKIPPED: neither docker-compose nor `docker compose` is installed (scripts/test installs Debian's docker-compose)");
        return;
    };
    let out = compose(&tool, None, &[], &[("VMPLANE_ADMIN_TOKEN", "t")]).args(["config", "--services"]).output().expect("running compose config");
    assert!(out.status.success(), "compose config: {}", String::from_utf8_lossy(&out.stderr));
    let mut services: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    services.sort();
    assert_eq!(services, SERVICES);

    let out = compose(&tool, None, &[], &[("VMPLANE_ADMIN_TOKEN", "t")]).arg("config").output().expect("running compose config");
    assert!(out.status.success(), "compose config: {}", String::from_utf8_lossy(&out.stderr));
    let config = String::from_utf8_lossy(&out.stdout);
    // Every vmplane process knows all three nodes and keeps three copies.
    // (Matched per line, loosely: the two compose tools quote values differently.)
    let lines = |key: &str, value: &str| config.lines().filter(|l| l.contains(key) && l.contains(value)).count();
    assert_eq!(lines("NATS_URL", "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"), 5, "{config}");
    assert_eq!(lines("VMPLANE_STREAM_REPLICAS", "3"), 5, "{config}");
    for node in ["nats-1", "nats-2", "nats-3"] {
        assert_eq!(config.matches(&format!("nats://{node}:6222")).count(), 2, "the other two nodes route to {node}: {config}");
    }

    let out = compose(&tool, None, &[], &[]).arg("config").output().expect("running compose config");
    assert!(!out.status.success(), "compose config without VMPLANE_ADMIN_TOKEN must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("VMPLANE_ADMIN_TOKEN"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Copy `binary` to `into` under `root`, with what it loads (its ELF interpreter and libraries, from `ldd`).
fn copy_with_libraries(binary: &Path, into: &Path, root: &Path) {
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    };
    copy(binary, &root.join(into.strip_prefix("/").unwrap()));
    let ldd = Command::new("ldd").arg(binary).output().expect("running ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split("=>").last().unwrap_or(line).split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            copy(Path::new(path), &root.join(path.trim_start_matches('/')));
        }
    }
}

/// `docker-compose down` (containers, network, volumes) and the imported image, however the test ends.
struct Down {
    tool: Vec<String>,
    project: String,
    overrides: PathBuf,
    image: String,
}

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = compose(&self.tool, Some(&self.project), &[&self.overrides], &[("VMPLANE_ADMIN_TOKEN", "t")]).args(["logs", "--tail", "30"]).output();
            if let Ok(out) = logs {
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        let _ = compose(&self.tool, Some(&self.project), &[&self.overrides], &[("VMPLANE_ADMIN_TOKEN", "t")]).args(["down", "-v", "-t", "5"]).output();
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

/// The stack comes up on the container engine: the three nodes form a
/// cluster, both workers' hosts come online, a VM created through one
/// gateway runs and reads back through the other.
#[tokio::test]
async fn compose_stack_serves_a_vm() {
    let Some(tool) = compose_command() else {
        eprintln!("SKIPPED: neither docker-compose nor `docker compose` is installed (scripts/test installs Debian's docker-compose)");
        return;
    };
    if !Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: no container engine answers `docker info` (scripts/test starts dockerd where it can run)");
        return;
    }
    let dir = tempfile::Builder::new().prefix("vmplane-compose-").tempdir().unwrap();
    let root = dir.path().join("rootfs");
    copy_with_libraries(Path::new(BIN), Path::new("/usr/local/bin/vmplane"), &root);
    copy_with_libraries(&nats_server_bin(), Path::new("/usr/sbin/nats-server"), &root);
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let project = format!("vmplaneit{}", std::process::id());
    let image = format!("{project}:local");
    let mut tar = Command::new("tar").arg("-C").arg(&root).args(["-c", "."]).stdout(Stdio::piped()).spawn().expect("running tar");
    let import = Command::new("docker").args(["import", "-", &image]).stdin(tar.stdout.take().unwrap()).output().expect("running docker import");
    assert!(tar.wait().expect("waiting for tar").success(), "tar of the image's files failed");
    assert!(import.status.success(), "docker import: {}", String::from_utf8_lossy(&import.stderr));

    let mut overrides = String::from("services:\n");
    for service in SERVICES {
        let entrypoint = if service.starts_with("nats-") && service != "nats-init" { "/usr/sbin/nats-server" } else { "/usr/local/bin/vmplane" };
        overrides.push_str(&format!("  {service}:\n    image: {image}\n    entrypoint: [\"{entrypoint}\"]\n"));
    }
    let overrides_file = dir.path().join("docker-compose.override.yml");
    std::fs::write(&overrides_file, overrides).unwrap();
    let _down = Down { tool: tool.clone(), project: project.clone(), overrides: overrides_file.clone(), image: image.clone() };

    let (p1, p2) = (free_port().to_string(), free_port().to_string());
    let env = [("VMPLANE_ADMIN_TOKEN", ADMIN_TOKEN), ("VMPLANE_GATEWAY_1_PORT", p1.as_str()), ("VMPLANE_GATEWAY_2_PORT", p2.as_str())];
    let up = compose(&tool, Some(&project), &[&overrides_file], &env).args(["up", "-d", "--no-build"]).output().expect("running compose up");
    assert!(up.status.success(), "compose up: {}", String::from_utf8_lossy(&up.stderr));

    let (g1, g2) = (Client::new(&format!("http://127.0.0.1:{p1}"), Some(ADMIN_TOKEN)), Client::new(&format!("http://127.0.0.1:{p2}"), Some(ADMIN_TOKEN)));
    let slow = Duration::from_secs(120);
    wait_for("both workers' hosts online through gateway-1", slow, async || match g1.try_get("/v1/hosts").await {
        Some((200, hosts)) if hosts.as_array().is_some_and(|h| h.iter().filter(|h| h["status"] == "online").count() == 2) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    // A stream leader may still be in election right after start: a 503 is retried with the same Idempotency-Key.
    let keyed = g1.with_header("Idempotency-Key", "compose-create");
    let vm = wait_for("a create accepted through gateway-1", slow, async || {
        match keyed.try_send(keyed.request(Method::POST, "/v1/vms").json(&json!({ "name": "through-compose" }))).await {
            Ok(r) if r.status == 202 => Ok(r.body),
            Ok(r) if r.status == 503 => Err(format!("503 {}", r.body)),
            Ok(r) => panic!("POST /v1/vms: {} {}", r.status, r.body),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let id = str_of(&vm["id"]).to_owned();
    g1.wait_op_succeeded(str_of(&vm["operation"]["id"])).await;
    let read = wait_for("the VM running through gateway-2", slow, async || match g2.try_get(&format!("/v1/vms/{id}")).await {
        Some((200, vm)) if vm["status"] == "running" => Ok(vm),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(read["name"], "through-compose");

    // The three nodes formed one JetStream cluster.
    let nats = compose(&tool, Some(&project), &[&overrides_file], &env).args(["logs", "nats-1", "nats-2", "nats-3"]).output().expect("compose logs");
    let logs = String::from_utf8_lossy(&nats.stdout);
    assert!(logs.contains("JetStream cluster new metadata leader") || logs.contains("Self is new JetStream cluster metadata leader"), "{logs}");
}
