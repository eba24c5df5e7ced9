//! Real guests: the qemu driver end to end (TCG here, KVM where the host has
//! a hardware KVM module), through the real gateway, worker and NATS, with
//! the `debian-minimal` image built from Debian packages on first use.
//!
//! These tests need qemu-system-x86_64, qemu-img, mke2fs, ssh and root (the
//! image build installs its packages); `./scripts/test` installs them. Where
//! qemu is missing they fail, unless VMPLANE_SKIP_GUEST_TESTS=1, in which
//! case each prints why it skipped: never silently.

#[path = "common/mod.rs"]
mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// TCG boots take seconds each, more when tests run side by side.
const BOOT: Duration = Duration::from_secs(240);

fn skip_reason() -> Option<String> {
    let missing: Vec<&str> = ["qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen"].into_iter().filter(|b| which(b).is_none()).collect();
    if missing.is_empty() {
        return None;
    }
    let why = format!("missing {}: run ./scripts/test, which installs them", missing.join(", "));
    assert!(std::env::var_os("VMPLANE_SKIP_GUEST_TESTS").is_some(), "{why} (or set VMPLANE_SKIP_GUEST_TESTS=1 to skip guest tests)");
    Some(why)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).map(|d| d.join(bin)).find(|p| p.is_file()))
}

macro_rules! guests_or_skip {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED (guest test): {why}");
            return;
        }
    };
}

/// A network namespace of the test's own with a bridge for bridge-mode
/// guests, reached from the test through a veth pair. All addresses live
/// inside this namespace and the veth: nothing leaves the machine.
struct Netns {
    name: String,
    veth: String,
    /// The namespace's end of the veth, where its gateway listens.
    addr: String,
    /// The bridge's network.
    cidr: String,
}

impl Netns {
    fn create() -> Self {
        let n = std::process::id() % 200 + 20;
        let (name, veth) = (format!("vmpl{}", std::process::id()), format!("vmpv{}", std::process::id()));
        let ip = |args: &str| {
            let out = Command::new("ip").args(args.split_whitespace()).output().expect("ip");
            assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&format!("netns add {name}"));
        let ns = Self { name: name.clone(), veth: veth.clone(), addr: format!("10.231.{n}.2"), cidr: format!("172.30.{n}.0/24") };
        ip(&format!("-n {name} link set lo up"));
        ip(&format!("-n {name} link add br0 type bridge"));
        ip(&format!("-n {name} addr add 172.30.{n}.1/24 dev br0"));
        ip(&format!("-n {name} link set br0 up"));
        ip(&format!("link add {veth} type veth peer name {veth}b"));
        ip(&format!("link set {veth}b netns {name}"));
        ip(&format!("addr add 10.231.{n}.1/30 dev {veth}"));
        ip(&format!("link set {veth} up"));
        ip(&format!("-n {name} addr add 10.231.{n}.2/30 dev {veth}b"));
        ip(&format!("-n {name} link set {veth}b up"));
        ns
    }

    /// `ip netns exec <ns> program args...`
    fn wrap(&self, program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        let mut all = vec!["netns".to_owned(), "exec".to_owned(), self.name.clone(), program.display().to_string()];
        all.extend(args);
        (which("ip").expect("ip (iproute2)"), all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
    }
}

/// nats-server + gateway + a qemu worker, in a temp dir (and, for bridge
/// networking, a network namespace); images are shared between tests.
struct GuestStack {
    worker: Proc,
    gateway: Proc,
    /// Held so the server lives as long as the stack.
    _nats: Proc,
    admin: Client,
    data: PathBuf,
    key: PathBuf,
    netns: Option<Netns>,
    _dir: tempfile::TempDir,
}

impl GuestStack {
    async fn start() -> Self {
        Self::start_in(None).await
    }

    async fn start_in(netns: Option<Netns>) -> Self {
        let dir = tempfile::Builder::new().prefix("vmplane-g-").tempdir_in("/tmp").expect("temp dir");
        let root = dir.path().to_owned();
        let data = root.join("d");
        let s = |v: &str| v.to_owned();
        let spawn = |name: &str, program: PathBuf, args: Vec<String>, env: Vec<(String, String)>| {
            let (program, args) = match &netns {
                Some(ns) => ns.wrap(&program, args),
                None => (program, args),
            };
            Proc::start(name, program, args, env, root.join(format!("{name}.log")))
        };
        // Inside a namespace the ports are ours alone; outside, pick free ones.
        let (nats_port, listen) = match &netns {
            Some(ns) => (4222, format!("{}:8080", ns.addr)),
            None => (free_port(), format!("127.0.0.1:{}", free_port())),
        };
        let nats_args = vec![s("-js"), s("-a"), s("127.0.0.1"), s("-p"), nats_port.to_string(), s("-sd"), root.join("nats").display().to_string()];
        let nats = spawn("nats-server", nats_server_bin(), nats_args, vec![]);
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let admin_env = vec![("VMPLANE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned())];
        let gw = vec![s("gateway"), s("--nats-url"), nats_url.clone(), s("--data-dir"), data.display().to_string(), s("--listen"), listen.clone()];
        let gateway = spawn("gateway", PathBuf::from(BIN), gw, admin_env.clone());
        // A port range of our own, so stacks running side by side do not compete.
        let first = 30000 + (free_port() % 300) * 100;
        let mut wk = vec![
            s("worker"),
            s("--nats-url"),
            nats_url,
            s("--data-dir"),
            data.display().to_string(),
            s("--driver"),
            s("qemu"),
            s("--images-dir"),
            images_dir().display().to_string(),
            s("--ready-timeout-secs"),
            s("200"),
            s("--stop-timeout-secs"),
            s("20"),
            s("--ack-wait-secs"),
            s("5"),
            s("--forward-bind"),
            s("127.0.0.1"),
            s("--port-range"),
            format!("{first}-{}", first + 99),
        ];
        if let Some(ns) = &netns {
            wk.extend([s("--bridge"), s("br0"), s("--bridge-cidr"), ns.cidr.clone()]);
        }
        let worker = spawn("worker", PathBuf::from(BIN), wk, admin_env);
        let admin = Client::new(&format!("http://{listen}"), Some(ADMIN_TOKEN)).with_timeout(Duration::from_secs(60));
        let key = root.join("id_ed25519");
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        let stack = Self { worker, gateway, _nats: nats, admin, data, key, netns, _dir: dir };
        // The first start builds the image, which takes a while.
        let c = &stack.admin;
        wait_for("a qemu host online", BOOT, async || match c.try_get("/v1/hosts").await {
            Some((200, h)) => {
                h.as_array().and_then(|a| a.iter().find(|h| h["status"] == "online" && h["driver"] == "qemu")).cloned().ok_or_else(|| h.to_string())
            }
            other => Err(format!("{other:?}")),
        })
        .await;
        stack
    }

    fn public_key(&self) -> String {
        std::fs::read_to_string(self.key.with_extension("pub")).expect("public key").trim().to_owned()
    }

    /// Create a VM and wait until it runs.
    async fn running_vm(&self, body: Value) -> Value {
        let (s, b) = self.admin.post("/v1/vms", &body).await;
        assert_eq!(s, 202, "{b}");
        let op = str_of(&b["operation"]["id"]).to_owned();
        self.wait_op(&op).await;
        let vm = self.admin.vm(str_of(&b["id"])).await;
        assert_eq!(vm["status"], "running", "{vm}\n{}", self.worker.log_tail(40));
        vm
    }

    /// Wait for an operation to succeed, however long guests take here.
    async fn wait_op(&self, op: &str) -> Value {
        let c = &self.admin;
        let b = wait_for(&format!("operation {op}"), BOOT, async || {
            let (s, b) = c.get(&format!("/v1/operations/{op}?wait=30")).await;
            match b["status"].as_str() {
                Some("succeeded" | "failed") => Ok(b),
                _ => Err(format!("{s} {b}")),
            }
        })
        .await;
        assert_eq!(b["status"], "succeeded", "{b}\n{}", self.worker.log_tail(40));
        b
    }

    async fn act(&self, vm: &str, action: &str) -> Value {
        let (s, b) = match action {
            "delete" => self.admin.delete(&format!("/v1/vms/{vm}")).await,
            _ => self.admin.post_empty(&format!("/v1/vms/{vm}/{action}")).await,
        };
        assert_eq!(s, 202, "{action}: {b}");
        self.wait_op(str_of(&b["operation"]["id"])).await;
        self.admin.vm(vm).await
    }

    /// Run a command in the guest over SSH: through its forwarded port, or in
    /// bridge mode straight to its address from inside the namespace.
    fn ssh(&self, vm: &Value, cmd: &str) -> String {
        let (host, port) = match (&self.netns, vm["network"]["mode"].as_str()) {
            (Some(_), Some("bridge")) => (str_of(&vm["ip"]).to_owned(), "22".to_owned()),
            _ => ("127.0.0.1".to_owned(), vm["ssh_port"].as_u64().expect("ssh_port").to_string()),
        };
        let mut args: Vec<String> =
            ["-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "-i"]
                .map(str::to_owned)
                .to_vec();
        args.extend([self.key.display().to_string(), "-p".into(), port, format!("root@{host}"), cmd.to_owned()]);
        let (program, args) = match &self.netns {
            Some(ns) => ns.wrap(&which("ssh").expect("ssh"), args),
            None => (PathBuf::from("ssh"), args),
        };
        let mut last = String::new();
        for _ in 0..20 {
            let out = Command::new(&program).args(&args).output().expect("running ssh");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            last = format!("{out:?}");
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("ssh `{cmd}` kept failing: {last}");
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.data.join("worker").join("qemu").join("vms").join(vm)
    }
}

impl Drop for GuestStack {
    /// Guests are daemons that outlive the worker by design: stop this stack's.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}\n{}", self.worker.log_tail(80), self.gateway.log_tail(30));
        }
        let marker = self.data.display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) && String::from_utf8_lossy(&cmdline).contains("qemu") {
                let _ = Command::new("kill").arg("-9").arg(e.file_name()).status();
            }
        }
    }
}

/// Where test images are built once and shared.
fn images_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images")
}

/// How many live qemu processes belong to `vm`.
fn qemu_processes(vm: &str) -> usize {
    let needle = format!("vmplane-{vm}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
            !zombie && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .count()
}

fn count(events: &[String], ty: &str) -> usize {
    events.iter().filter(|t| *t == ty).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_runs_user_data_is_reachable_and_takes_hot_plugged_memory() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let user_data = "#!/bin/sh\necho hello-from-guest\nmkdir -p /www && echo guest-http-ok > /www/index.html && httpd -p 8000 -h /www\n";
    let vm = g
        .running_vm(json!({"name": "g1", "memory_mib": 256, "hotplug_memory_mib": 256, "ssh_keys": [g.public_key()], "user_data": user_data, "port_forwards": [{"guest_port": 8000}]}))
        .await;
    let id = str_of(&vm["id"]).to_owned();
    assert_eq!(vm["ip"], "10.0.2.15");
    assert!(vm["mac"].is_string());

    // The SSE log stream shows the user-data output.
    let resp = g.admin.request_untimed(reqwest::Method::GET, &format!("/v1/vms/{id}/logs?follow=true&tail=200")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let streamed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("event: log\ndata: hello-from-guest") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(streamed, Ok(true), "{text}");
    // Lines are shipped shortly after the guest prints them: the readiness line follows the ready event.
    let c = &g.admin;
    wait_for("the readiness line in the log tail", Duration::from_secs(30), async || {
        let (s, tail) = c.get(&format!("/v1/vms/{id}/logs?tail=500")).await;
        let lines: Vec<String> = tail["lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_owned)).collect();
        if s == 200 && lines.iter().any(|l| l.starts_with("VMPLANE-READY")) { Ok(()) } else { Err(format!("{s} {lines:?}")) }
    })
    .await;

    // The port forward reaches the guest's listener.
    let port = vm["port_forwards"][0]["host_port"].as_u64().expect("allocated host port");
    let body = tokio::task::spawn_blocking(move || {
        let mut last = String::new();
        for _ in 0..30 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port as u16)) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.contains("guest-http-ok") {
                    return out;
                }
                last = out;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        last
    })
    .await
    .unwrap();
    assert!(body.contains("guest-http-ok"), "{body}");

    // SSH with the key given at create.
    assert_eq!(g.ssh(&vm, "echo ssh-$((40+2))").trim(), "ssh-42");

    // The web terminal is the serial console, both directions.
    let url = format!("{}/v1/vms/{id}/terminal", g.admin.base.replace("http://", "ws://"));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket");
    // The serial shell starts right after readiness; keystrokes sent before it
    // reads are lost like on any console, so type again until it answers.
    let mut out = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            ws.send(tokio_tungstenite::tungstenite::Message::binary(b"\necho term-$((6*7))\n".to_vec())).await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
                out.extend_from_slice(&m.into_data());
                if String::from_utf8_lossy(&out).contains("term-42") {
                    return true;
                }
            }
        }
    })
    .await;
    assert_eq!(found, Ok(true), "{}", String::from_utf8_lossy(&out));

    // Memory hot-plug within the reserve: the guest sees it online.
    let mem_total = |vm: &Value| g.ssh(vm, "awk '/MemTotal/ {print $2}' /proc/meminfo").trim().parse::<u64>().expect("MemTotal");
    let before = mem_total(&vm);
    let (s, b) = g.admin.post(&format!("/v1/vms/{id}/memory"), &json!({"memory_mib": 384})).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert_eq!(g.admin.vm(&id).await["memory_mib"], 384);
    let grown = wait_for("the guest to online the new memory", Duration::from_secs(60), async || {
        let now = mem_total(&vm);
        if now >= before + 120 * 1024 { Ok(now) } else { Err(format!("{before} -> {now} KiB")) }
    })
    .await;
    assert!(grown > before);
    let (s, b) = g.admin.post(&format!("/v1/vms/{id}/memory"), &json!({"memory_mib": 1024})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("memory_out_of_range")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_attaches_live_detaches_and_carries_data_to_another_guest() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let key = g.public_key();
    let a = g.running_vm(json!({"name": "va", "memory_mib": 256, "ssh_keys": [key]})).await;
    let (s, vol) = g.admin.post("/v1/volumes", &json!({"name": "data", "size_gb": 1})).await;
    assert_eq!(s, 202, "{vol}");
    let vol_id = str_of(&vol["id"]).to_owned();
    g.wait_op(str_of(&vol["operation"]["id"])).await;

    let attach = |vm: &Value| format!("/v1/vms/{}/volumes/{vol_id}", str_of(&vm["id"]));
    let (s, b) = g.admin.post(&attach(&a), &json!({"mount_path": "/mnt/data"})).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert!(g.ssh(&a, "awk '$2 == \"/mnt/data\"' /proc/mounts").contains("/mnt/data"), "not mounted");
    g.ssh(&a, "echo carried-over > /mnt/data/proof && sync");
    let (_, v) = g.admin.get(&format!("/v1/volumes/{vol_id}")).await;
    assert_eq!((v["status"].as_str(), v["vm_id"].as_str()), (Some("in_use"), a["id"].as_str()));
    let (s, b) = g.admin.delete(&format!("/v1/volumes/{vol_id}")).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("volume_in_use")), "{b}");

    let (s, b) = g.admin.delete(&attach(&a)).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert_eq!(g.ssh(&a, "awk '$2 == \"/mnt/data\"' /proc/mounts | wc -l").trim(), "0", "still mounted after detach");

    let b_vm = g.running_vm(json!({"name": "vb", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let (s, b) = g.admin.post(&attach(&b_vm), &json!({"mount_path": "/srv/vol", "readonly": true})).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert_eq!(g.ssh(&b_vm, "cat /srv/vol/proof").trim(), "carried-over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_keeps_memory_and_the_lifecycle_leaves_nothing_behind() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let vm = g.running_vm(json!({"name": "life", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let id = str_of(&vm["id"]).to_owned();
    g.ssh(&vm, "mkdir -p /mem && mount -t tmpfs tmpfs /mem && echo 424242 > /mem/counter");

    let s = g.act(&id, "standby").await;
    assert_eq!((s["status"].as_str(), s["has_snapshot"].as_bool()), (Some("standby"), Some(true)));
    assert_eq!(qemu_processes(&id), 0, "qemu still runs in standby");
    let r = g.act(&id, "restore").await;
    assert_eq!((r["status"].as_str(), r["has_snapshot"].as_bool()), (Some("running"), Some(false)));
    assert_eq!(g.ssh(&r, "cat /mem/counter").trim(), "424242", "the in-memory value did not survive standby");

    assert_eq!(g.act(&id, "stop").await["status"], "stopped");
    assert_eq!(qemu_processes(&id), 0);
    let started = g.act(&id, "start").await;
    assert_eq!(started["status"], "running");
    assert_eq!(g.ssh(&started, "cat /mem/counter 2>/dev/null || echo gone").trim(), "gone", "a cold boot must not keep memory");
    assert_eq!(g.act(&id, "restart").await["status"], "running");
    assert_eq!(qemu_processes(&id), 1);

    let dir = g.vm_dir(&id);
    assert!(dir.join("root.qcow2").exists());
    assert_eq!(g.act(&id, "delete").await["status"], "deleted");
    assert_eq!(qemu_processes(&id), 0, "qemu left behind");
    assert!(!dir.exists(), "{} left behind (socket, disk)", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_adopts_its_running_guests_without_duplicates() {
    guests_or_skip!();
    let mut g = GuestStack::start().await;
    let one = g.running_vm(json!({"name": "one", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let two = g.running_vm(json!({"name": "two", "memory_mib": 256})).await;
    let ids = [str_of(&one["id"]).to_owned(), str_of(&two["id"]).to_owned()];

    g.worker.kill9();
    for id in &ids {
        assert_eq!(qemu_processes(id), 1, "guests must outlive the worker");
    }
    g.worker.respawn();
    let c = &g.admin;
    wait_for("the host back online", BOOT, async || match c.try_get("/v1/hosts").await {
        Some((200, h)) if h[0]["status"] == "online" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    // The adopted guests are still controlled: stop one, use the other.
    assert_eq!(g.act(&ids[1], "stop").await["status"], "stopped");
    assert_eq!(g.ssh(&one, "echo alive").trim(), "alive");
    assert_eq!(qemu_processes(&ids[0]), 1, "no duplicate qemu");
    assert_eq!(qemu_processes(&ids[1]), 0);
    for id in &ids {
        let events = g.admin.event_types(id).await;
        assert_eq!(count(&events, "booted"), 1, "{id}: {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_driver_path_is_refused_or_fails_cleanly() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let c = &g.admin;
    let (s, b) = c.post("/v1/vms", &json!({"name": "huge", "vcpus": 200})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("insufficient_capacity")), "{b}");
    let (s, b) = c.post("/v1/vms", &json!({"name": "huge", "memory_mib": 4 * 1024 * 1024})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("insufficient_capacity")), "{b}");
    let (s, b) = c.post("/v1/vms", &json!({"name": "nope", "image": "no-such-image"})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("unknown_image")), "{b}");
    assert_eq!(c.vm_total("").await, 0, "refused requests created nothing");

    // Requested host ports must lie in the worker's --port-range: take its
    // top end, which automatic allocation (from the bottom) reaches last.
    let (_, hosts) = c.get("/v1/hosts").await;
    let last = hosts[0]["port_range"]["last"].as_u64().unwrap_or_else(|| panic!("no port range announced: {hosts}")) as u16;

    // A host port another VM forwards: 409 before anything runs.
    let port = last;
    let first = c.create_vm(json!({"name": "p1", "memory_mib": 256, "port_forwards": [{"guest_port": 80, "host_port": port}]})).await;
    let (s, b) = c.post("/v1/vms", &json!({"name": "p2", "port_forwards": [{"guest_port": 80, "host_port": port}]})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("port_conflict")), "{b}");
    g.wait_op(str_of(&first["operation"]["id"])).await;

    // A host port some other program holds: the VM fails with the reason, and nothing is left running.
    let holder = (last - 20..last).rev().find_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok()).expect("a free port in the range");
    let held = holder.local_addr().unwrap().port();
    let vm = c.create_vm(json!({"name": "p3", "port_forwards": [{"guest_port": 80, "host_port": held}]})).await;
    let id = str_of(&vm["id"]).to_owned();
    let op = wait_for("the operation to fail", BOOT, async || {
        let (_, b) = c.get(&format!("/v1/operations/{}?wait=30", str_of(&vm["operation"]["id"]))).await;
        if b["status"] == "failed" { Ok(b) } else { Err(b.to_string()) }
    })
    .await;
    let failed = c.vm(&id).await;
    assert_eq!(failed["status"], "failed");
    assert!(str_of(&failed["message"]).contains(&format!("host port {held} is already in use")), "{failed}\n{op}");
    assert_eq!(qemu_processes(&id), 0);
    drop(holder);
    assert_eq!(g.act(&id, "delete").await["status"], "deleted");
    assert!(!Path::new(&g.vm_dir(&id)).exists());
}

/// A gzip'd tar layer of `files` (path, content).
fn layer_tar(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    let raw = b.into_inner().unwrap();
    if !gzip {
        return raw;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

/// Write an OCI image layout with two layers, the second whiting out a file of the first.
fn oci_layout(dir: &Path) {
    use sha2::{Digest, Sha256};
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let hex = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let l1 = put(&layer_tar(&[("etc/oci-motd", b"hello-from-oci\n"), ("etc/doomed", b"x")], true));
    let l2 = put(&layer_tar(&[("etc/.wh.doomed", b""), ("opt/app/run.sh", b"echo app\n")], true));
    let config = put(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 0},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l1, "size": 0},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l2, "size": 0}
        ]
    });
    let m = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": 0}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Write a `docker save` tarball with one uncompressed layer.
fn docker_archive(path: &Path) {
    let layer = layer_tar(&[("etc/docker-proof", b"from-docker\n")], false);
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["t:1"],"Layers":["l1/layer.tar"]}]"#;
    let archive = layer_tar(&[("manifest.json", manifest), ("cfg.json", b"{}"), ("l1/layer.tar", &layer)], false);
    std::fs::write(path, archive).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_import_from_oci_layouts_docker_archives_and_raw_disks_and_boot() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let src = tempfile::tempdir().unwrap();
    let oci = src.path().join("oci");
    oci_layout(&oci);
    let docker = src.path().join("image.tar");
    docker_archive(&docker);
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/raw-proof"), "from-a-raw-disk\n").unwrap();
    let raw = src.path().join("disk.raw");
    let out = Command::new(which("mke2fs").expect("mke2fs")).args(["-q", "-t", "ext4", "-d"]).arg(&tree).arg(&raw).arg("64M").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let qcow = src.path().join("disk.qcow2");
    let out = Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow).output().unwrap();
    assert!(out.status.success(), "{out:?}");

    for (name, source, format) in [("from-oci", &oci, "oci_layout"), ("from-docker", &docker, "docker_archive"), ("from-qcow2", &qcow, "qcow2")] {
        let (s, b) = g.admin.post("/v1/images", &json!({"name": name, "source": source, "format": format})).await;
        assert_eq!(s, 202, "{b}");
        g.wait_op(str_of(&b["operation"]["id"])).await;
    }
    let (_, images) = g.admin.get("/v1/images").await;
    let names: Vec<&str> = images.as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    for n in ["debian-minimal", "from-docker", "from-oci", "from-qcow2"] {
        assert!(names.contains(&n), "{names:?}");
    }
    // A name that exists, a bad format and a missing file are refused or fail with a reason.
    let (s, b) = g.admin.post("/v1/images", &json!({"name": "from-oci", "source": "/x", "format": "raw"})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("conflict")), "{b}");
    let (s, _) = g.admin.post("/v1/images", &json!({"name": "x", "source": "/x", "format": "iso"})).await;
    assert_eq!(s, 422);
    let (s, b) = g.admin.post("/v1/images", &json!({"name": "missing", "source": "/nonexistent/disk.raw", "format": "raw"})).await;
    assert_eq!(s, 202, "{b}");
    let op = wait_for("the import to fail", BOOT, async || {
        let (_, b) = g.admin.get(&format!("/v1/operations/{}?wait=30", str_of(&b["operation"]["id"]))).await;
        if b["status"] == "failed" { Ok(b) } else { Err(b.to_string()) }
    })
    .await;
    assert!(str_of(&op["error"]["message"]).contains("does not exist"), "{op}");

    let oci_vm = g.running_vm(json!({"name": "oci", "image": "from-oci", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    assert_eq!(g.ssh(&oci_vm, "cat /etc/oci-motd; test -e /etc/doomed && echo doomed-still-there; cat /opt/app/run.sh").trim(), "hello-from-oci\necho app");
    let raw_vm = g.running_vm(json!({"name": "raw", "image": "from-qcow2", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    assert_eq!(g.ssh(&raw_vm, "cat /etc/raw-proof").trim(), "from-a-raw-disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mode_guests_get_addresses_from_the_bridge_cidr() {
    guests_or_skip!();
    if which("ip").is_none() || Command::new("ip").args(["netns", "list"]).output().map_or(true, |o| !o.status.success()) {
        panic!("bridge networking tests need iproute2 and network namespaces (root)");
    }
    let g = GuestStack::start_in(Some(Netns::create())).await;
    let cidr = g.netns.as_ref().unwrap().cidr.clone();
    let prefix = cidr.rsplit_once('.').unwrap().0.to_owned();
    let chosen = format!("{prefix}.50");
    let a = g
        .running_vm(json!({"name": "br-a", "memory_mib": 256, "ssh_keys": [g.public_key()], "network": {"mode": "bridge", "guest_ip": chosen, "guest_mac": "02:fc:00:00:00:0a"}}))
        .await;
    assert_eq!((a["ip"].as_str(), a["mac"].as_str(), a["ssh_port"].as_u64()), (Some(chosen.as_str()), Some("02:fc:00:00:00:0a"), None));
    let b = g.running_vm(json!({"name": "br-b", "memory_mib": 256, "ssh_keys": [g.public_key()], "network": {"mode": "bridge"}})).await;
    assert_eq!(b["ip"].as_str(), Some(format!("{prefix}.2").as_str()), "first free address of {cidr}");
    // Each guest has its address, and they reach each other across the bridge.
    assert!(g.ssh(&a, "ip -4 -o addr show").contains(&format!("{chosen}/24")));
    assert_eq!(g.ssh(&b, &format!("ping -c 1 -W 5 {chosen} >/dev/null && echo reached")).trim(), "reached");

    // An address or MAC another guest of the host holds is refused at once.
    for network in [json!({"mode": "bridge", "guest_ip": chosen}), json!({"mode": "bridge", "guest_mac": "02:FC:00:00:00:0A"})] {
        let (s, dup) = g.admin.post("/v1/vms", &json!({"name": "br-c", "network": network})).await;
        assert_eq!((s, dup["code"].as_str()), (409, Some("address_conflict")), "{dup}");
    }
    // An address outside the network fails the VM with the reason.
    let (s, out) = g.admin.post("/v1/vms", &json!({"name": "br-c", "network": {"mode": "bridge", "guest_ip": "192.0.2.50"}})).await;
    assert_eq!(s, 202, "{out}");
    let id = str_of(&out["id"]).to_owned();
    let c = &g.admin;
    let failed = wait_for("the outside address to fail", BOOT, async || {
        let vm = c.vm(&id).await;
        if vm["status"] == "failed" { Ok(vm) } else { Err(vm.to_string()) }
    })
    .await;
    assert!(str_of(&failed["message"]).contains("is not a guest address"), "{failed}");
    let (s, b2) = g.admin.post("/v1/vms", &json!({"name": "br-d", "network": {"mode": "bridge"}, "port_forwards": [{"guest_port": 80}]})).await;
    assert_eq!((s, b2["code"].as_str()), (422, Some("validation_failed")), "{b2}");

    // Deleting the VM removes its tap.
    let tap = format!("vt{}", &str_of(&a["id"])[str_of(&a["id"]).len() - 12..]);
    let links =
        || String::from_utf8_lossy(&Command::new("ip").args(["-n", &g.netns.as_ref().unwrap().name, "-br", "link"]).output().unwrap().stdout).into_owned();
    assert!(links().contains(&tap), "{}", links());
    assert_eq!(g.act(str_of(&a["id"]), "delete").await["status"], "deleted");
    assert!(!links().contains(&tap), "{}", links());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_that_stop_on_their_own_become_events() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let vm = g.running_vm(json!({"name": "selfstop", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let id = str_of(&vm["id"]).to_owned();
    let c = &g.admin;
    let wait_status = async |status: &str| {
        wait_for(&format!("vm {id} to become {status} on its own"), BOOT, async || {
            let v = c.vm(&id).await;
            if v["status"] == status { Ok(v) } else { Err(v.to_string()) }
        })
        .await
    };

    // A power-off inside the guest: `stopped`, saying so.
    let _ = Command::new("ssh")
        .args(["-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-i"])
        .arg(&g.key)
        .args(["-p", &vm["ssh_port"].as_u64().unwrap().to_string(), "root@127.0.0.1", "poweroff"])
        .output();
    let stopped = wait_status("stopped").await;
    assert_eq!(stopped["message"], "guest powered off", "{stopped}");
    assert_eq!(qemu_processes(&id), 0);

    // A crash (qemu killed): `failed`, with the reason.
    assert_eq!(g.act(&id, "start").await["status"], "running");
    let pid: i32 = std::fs::read_to_string(g.vm_dir(&id).join("qemu.pid")).unwrap().trim().parse().unwrap();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let failed = wait_status("failed").await;
    assert!(str_of(&failed["message"]).contains("unexpectedly"), "{failed}");
    // A failed guest starts again.
    assert_eq!(g.act(&id, "start").await["status"], "running");
    assert_eq!(g.act(&id, "delete").await["status"], "deleted");
}
