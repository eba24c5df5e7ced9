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

use common::browser::{Browser, text_of};
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
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
    /// The test's end of the veth (an address of this machine).
    host: String,
    /// The bridge's network.
    cidr: String,
    /// A link-local address of the test's own, on one end of the veth.
    link_local: String,
}

impl Netns {
    fn create() -> Self {
        // One per test; `cargo test` runs several tests in one process.
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let (pid, k) = (std::process::id(), CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10);
        let n = (pid + 23 * k) % 200 + 20;
        let (name, veth) = (format!("vmpl{pid}{k}"), format!("vmpv{pid}{k}"));
        run_ip(&format!("netns add {name}"));
        let ns = Self {
            name: name.clone(),
            veth: veth.clone(),
            addr: format!("10.231.{n}.2"),
            host: format!("10.231.{n}.1"),
            cidr: format!("172.30.{n}.0/24"),
            link_local: format!("169.254.{n}.1"),
        };
        run_ip(&format!("-n {name} link set lo up"));
        run_ip(&format!("-n {name} link add br0 type bridge"));
        run_ip(&format!("-n {name} addr add 172.30.{n}.1/24 dev br0"));
        run_ip(&format!("-n {name} link set br0 up"));
        run_ip(&format!("link add {veth} type veth peer name {veth}b"));
        run_ip(&format!("link set {veth}b netns {name}"));
        run_ip(&format!("addr add 10.231.{n}.1/30 dev {veth}"));
        run_ip(&format!("link set {veth} up"));
        run_ip(&format!("-n {name} addr add 10.231.{n}.2/30 dev {veth}b"));
        run_ip(&format!("-n {name} link set {veth}b up"));
        ns
    }

    /// Run `f` on a thread inside the namespace: sockets it opens live there.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("namespace file");
                // SAFETY: setns(2) on a descriptor we own; it changes this thread's namespace only.
                assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in the namespace")
        })
    }

    /// Put the link-local address inside the namespace, routed from this machine through the veth.
    fn link_local_inside(&self) {
        run_ip(&format!("-n {} addr add {}/32 dev {}b", self.name, self.link_local, self.veth));
        run_ip(&format!("route add {}/32 dev {}", self.link_local, self.veth));
    }

    /// Let the namespace route its bridge's guests out through the veth, to
    /// this machine's end of it and to the link-local address put there.
    fn route_bridge_out(&self) {
        run_ip(&format!("addr add {}/32 dev {}", self.link_local, self.veth));
        run_ip(&format!("-n {} route add {}/32 dev {}b", self.name, self.link_local, self.veth));
        run_ip(&format!("route add {} via {} dev {}", self.cidr, self.addr, self.veth));
        let out = Command::new("ip").args(["netns", "exec", &self.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"]).output().expect("sysctl");
        assert!(out.status.success(), "{out:?}");
    }

    /// `ip netns exec <ns> program args...`
    fn wrap(&self, program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        let mut all = vec!["netns".to_owned(), "exec".to_owned(), self.name.clone(), program.display().to_string()];
        all.extend(args);
        (which("ip").expect("ip (iproute2)"), all)
    }
}

fn run_ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Answer every connection on `listener` with `token`, from a thread, for the rest of the test.
///
/// It reads the request before it answers and closes only after the client
/// did: a socket closed with unread data sends a reset, and a reset can
/// discard the answer while passt still holds it in the kernel's buffer
/// for a guest slow to acknowledge it (under TCG and load, a clone's probe
/// read nothing in 2 of 6 runs when this server closed at once; in none of
/// 6 since).
fn serve(listener: TcpListener, token: &'static str) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let (mut buf, mut request) = ([0u8; 512], Vec::new());
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(token.as_bytes());
                let _ = c.shutdown(std::net::Shutdown::Write);
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
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
    /// The worker's command line, to start it again with more flags.
    worker_args: Vec<String>,
    gateway: Proc,
    /// Held so the server lives as long as the stack.
    _nats: Proc,
    admin: Client,
    data: PathBuf,
    key: PathBuf,
    netns: Option<Netns>,
    /// Where nats-server and the gateway listen (their ports).
    nats_port: u16,
    gateway_port: u16,
    _dir: tempfile::TempDir,
}

impl GuestStack {
    async fn start() -> Self {
        Self::start_in(None).await
    }

    async fn start_in(netns: Option<Netns>) -> Self {
        Self::start_with(netns, false).await
    }

    /// `everywhere`: nats-server and the gateway listen on every address of
    /// their host (a guest must still not reach them); else on one.
    async fn start_with(netns: Option<Netns>, everywhere: bool) -> Self {
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
        let (nats_port, gateway_port, reach) = match &netns {
            Some(ns) => (4222, 8080, ns.addr.clone()),
            None => (free_port(), free_port(), "127.0.0.1".to_owned()),
        };
        let bind = if everywhere { "0.0.0.0".to_owned() } else { reach.clone() };
        let listen = format!("{bind}:{gateway_port}");
        let nats_bind = if everywhere { "0.0.0.0" } else { "127.0.0.1" };
        let nats_dir = root.join("nats");
        let config = nats_init(&nats_dir, &format!("{nats_bind}:{nats_port}"));
        let nats = spawn("nats-server", nats_server_bin(), vec![s("-c"), config.display().to_string()], vec![]);
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let admin_env = vec![("VMPLANE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned())];
        let mut gw = vec![s("gateway")];
        gw.extend(nats_args(&nats_dir, &nats_url, "gateway"));
        gw.extend([s("--data-dir"), data.display().to_string(), s("--listen"), listen.clone()]);
        let gateway = spawn("gateway", PathBuf::from(BIN), gw, admin_env.clone());
        let mut wk = vec![s("worker")];
        wk.extend(nats_args(&nats_dir, &nats_url, "worker"));
        wk.extend([
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
            own_port_range(),
        ]);
        if let Some(ns) = &netns {
            wk.extend([s("--bridge"), s("br0"), s("--bridge-cidr"), ns.cidr.clone()]);
        }
        let worker = spawn("worker", PathBuf::from(BIN), wk.clone(), admin_env);
        let admin = Client::new(&format!("http://{reach}:{gateway_port}"), Some(ADMIN_TOKEN)).with_timeout(Duration::from_secs(60));
        let key = root.join("id_ed25519");
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        let stack = Self { worker, worker_args: wk, gateway, _nats: nats, admin, data, key, netns, nats_port, gateway_port, _dir: dir };
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

    /// Create a VM and wait until it runs. Without a `disk_gb` (or a snapshot
    /// that fixes it) the root disk is 2 GB: disks are sparse, but placement
    /// counts their full size against the free space the worker measured at
    /// start, and a CI machine may have little (16 GB was seen, which five
    /// default 10 GB guests of one test exceed).
    async fn running_vm(&self, mut body: Value) -> Value {
        if body.get("disk_gb").is_none() && body.get("from_snapshot").is_none() {
            body["disk_gb"] = json!(2);
        }
        let (s, b) = self.admin.post("/v1/vms", &body).await;
        assert_eq!(s, 202, "{b}");
        let op = str_of(&b["operation"]["id"]).to_owned();
        self.wait_op(&op).await;
        let vm = self.admin.vm(str_of(&b["id"])).await;
        assert_eq!(vm["status"], "running", "{vm}\n{}", self.worker.log_tail(40));
        vm
    }

    /// A fresh snapshot of running VM `id`, ready.
    async fn snapshot(&self, id: &str) -> String {
        let (s, b) = self.admin.post(&format!("/v1/vms/{id}/snapshots"), &json!({"name": "snap"})).await;
        assert_eq!(s, 202, "{b}");
        self.wait_op(str_of(&b["operation"]["id"])).await;
        str_of(&b["id"]).to_owned()
    }

    /// Wait for an operation to succeed, however long guests take here.
    async fn wait_op(&self, op: &str) -> Value {
        let b = self.wait_op_outcome(op).await;
        assert_eq!(b["status"], "succeeded", "{b}\n{}", self.worker.log_tail(40));
        b
    }

    /// Wait for an operation to end, succeeded or failed.
    async fn wait_op_outcome(&self, op: &str) -> Value {
        let c = &self.admin;
        wait_for(&format!("operation {op}"), BOOT, async || {
            let (s, b) = c.get(&format!("/v1/operations/{op}?wait=30")).await;
            match b["status"].as_str() {
                Some("succeeded" | "failed") => Ok(b),
                _ => Err(format!("{s} {b}")),
            }
        })
        .await
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

    /// The ed25519 host key a user-mode guest's SSH server presented to a
    /// login on its forward (as ssh recorded it in a known-hosts file).
    fn host_key(&self, vm: &Value) -> String {
        let port = vm["ssh_port"].as_u64().expect("ssh_port").to_string();
        let known = tempfile::NamedTempFile::new().expect("a known-hosts file");
        let mut last = String::new();
        for _ in 0..20 {
            let out = Command::new("ssh")
                .args(["-q", "-o", "StrictHostKeyChecking=no", "-o", "HostKeyAlgorithms=ssh-ed25519", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known.path().display()))
                .arg("-i")
                .arg(&self.key)
                .args(["-p", &port, "root@127.0.0.1", "true"])
                .output()
                .expect("running ssh");
            let text = std::fs::read_to_string(known.path()).unwrap_or_default();
            if let Some(key) = text.lines().find_map(|l| l.split_whitespace().nth(2)).filter(|_| out.status.success()) {
                return key.to_owned();
            }
            last = format!("{out:?}");
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("ssh kept failing: {last}");
    }

    /// SIGTERM the worker and wait for it to exit (stopping guests under TCG takes a while).
    async fn stop_worker(&mut self) {
        let pid = self.worker.pid().expect("the worker runs");
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let w = &mut self.worker;
        wait_for("the worker to exit after SIGTERM", Duration::from_secs(120), async || w.exited().map(drop).ok_or_else(|| "still running".to_owned())).await;
    }

    /// Start the worker again with the stack's flags, `extra` replacing those it names.
    fn start_worker(&mut self, extra: &[&str]) {
        assert!(self.netns.is_none(), "restarting a worker inside a namespace is not supported");
        let mut args = Vec::new();
        let mut old = self.worker_args.iter().peekable();
        while let Some(a) = old.next() {
            if extra.contains(&a.as_str()) {
                old.next_if(|v| !v.starts_with("--"));
            } else {
                args.push(a.clone());
            }
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let env = vec![("VMPLANE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned())];
        self.worker = Proc::start("worker", BIN, args, env, self.worker.log.clone());
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.data.join("worker").join("qemu").join("vms").join(vm)
    }

    /// Open TCP connections from inside the guest to every `(label, address,
    /// port)` at once, sending an HTTP request line; what each sent back in a
    /// few seconds, by label (empty when nothing answered).
    fn probe(&self, vm: &Value, targets: &[(&str, String, u16)]) -> BTreeMap<String, String> {
        let mut script = String::from(
            "probe() { printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 10 nc -w 5 \"$2\" \"$3\" 2>/dev/null | head -c 40 | tr -d '\\r\\n' >\"/tmp/probe.$1\"; }\n",
        );
        for (label, addr, port) in targets {
            script.push_str(&format!("probe {label} {addr} {port} &\n"));
        }
        script.push_str("wait\nfor f in /tmp/probe.*; do echo \"${f#/tmp/probe.} $(cat \"$f\")\"; done\nrm -f /tmp/probe.*\n");
        let got: BTreeMap<String, String> = self
            .ssh(vm, &script)
            .lines()
            .map(|l| l.split_once(' ').map_or((l.to_owned(), String::new()), |(k, v)| (k.to_owned(), v.trim().to_owned())))
            .collect();
        for (label, ..) in targets {
            assert!(got.contains_key(*label), "no result for {label}: {got:?}");
        }
        got
    }

    /// This host's `driver_detail` in /v1/hosts.
    async fn driver_detail(&self) -> String {
        let (_, hosts) = self.admin.get("/v1/hosts").await;
        str_of(&hosts[0]["driver_detail"]).to_owned()
    }
}

/// The backing file a qcow2 image names (read even while a qemu holds it).
fn backing_file(image: &Path) -> Option<String> {
    let out = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(image).output().expect("qemu-img info");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{}: {e} {}", image.display(), String::from_utf8_lossy(&out.stderr)));
    info.get("backing-filename").and_then(Value::as_str).map(str::to_owned)
}

/// Assert that only the `outside` target answered, with its token.
fn only_outside_answers(got: &BTreeMap<String, String>) {
    assert_eq!(got.get("outside").map(String::as_str), Some("outside-ok"), "outbound connections must keep working: {got:?}");
    let reached: Vec<_> = got.iter().filter(|(label, answer)| *label != "outside" && !answer.is_empty()).collect();
    assert!(reached.is_empty(), "the guest reached the host or a link-local address: {reached:?}");
}

/// This machine's IPv4 addresses other than loopback.
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show"]).output().expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).and_then(|a| a.split('/').next()).map(str::to_owned))
        .filter(|a| !a.starts_with("127."))
        .collect()
}

/// Files and directories under `dir` (itself included) that its group or others may use.
fn shared_files(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut loose = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.permissions().mode() & 0o077 != 0 {
            loose.push(format!("{} {:o}", path.display(), meta.permissions().mode() & 0o7777));
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).expect("read_dir").flatten().map(|e| e.path()));
        }
    }
    loose
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort_unstable();
    names
}

/// How many live passt processes serve the VM whose directory is `dir`.
fn passt_processes(dir: &Path) -> usize {
    let log = dir.join("passt.log").display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
            !zombie && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == log.as_bytes()))
        })
        .count()
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
        // Each process runs with only its role's NATS permissions: a denial is a bug.
        if !std::thread::panicking() && self._nats.log_mentions("violation") {
            panic!("NATS denied a vmplane process something it needed:\n{}", self._nats.log_tail(20));
        }
    }
}

/// Where test images are built once and shared.
fn images_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images")
}

/// A child on a pseudo-terminal whose window the test sets (the child's
/// controlling terminal, so a resize signals it as a real window does).
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Pty {
    fn spawn(cmd: &mut std::process::Command, cols: u16, rows: u16) -> Self {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty writes two new descriptors, owned below.
        assert_eq!(unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) }, 0, "openpty");
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), std::fs::File::from_raw_fd(slave)) };
        cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave).env("TERM", "xterm");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on the pty");
        let (tx, output) = std::sync::mpsc::channel();
        let mut reader = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child and its descriptors are gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self { master, child, output, seen: Vec::new() }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Wait until the output holds `what`; later waits look after it.
    fn expect(&mut self, what: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.text().contains(what) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => panic!("{what:?} not seen within {timeout:?}: {}", self.text()),
            }
        }
        let at = self.text().find(what).unwrap() + what.len();
        self.seen.drain(..at);
    }

    /// Type `keys` every few seconds until the output holds `what` (a
    /// console drops what is typed before its shell reads).
    fn type_until(&mut self, keys: &[u8], what: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.master.write_all(keys).unwrap();
            let round = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < round && !self.text().contains(what) {
                if let Ok(chunk) = self.output.recv_timeout(Duration::from_millis(200)) {
                    self.seen.extend_from_slice(&chunk);
                }
            }
            if self.text().contains(what) {
                return self.expect(what, Duration::ZERO);
            }
            assert!(std::time::Instant::now() < deadline, "{what:?} not seen within {timeout:?}: {}", self.text());
        }
    }

    /// Set the window size, as a terminal emulator does when its window changes.
    fn resize(&self, cols: u16, rows: u16) {
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize.
        assert_eq!(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) }, 0, "TIOCSWINSZ");
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the console did not exit: {}", self.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    ws.close(None).await.ok();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}

    // `vmplane vm console` on a pseudo-terminal: the guest's console has the
    // window's size, and follows it when the window changes.
    let mut console = Pty::spawn(std::process::Command::new(BIN).args(["vm", "console", &id, "--url", &g.admin.base, "--token", ADMIN_TOKEN]), 100, 30);
    console.expect("Connected to the console", Duration::from_secs(30));
    console.type_until(b"\rstty size\r", "30 100", Duration::from_secs(60));
    console.resize(120, 50);
    console.type_until(b"\rstty size\r", "50 120", Duration::from_secs(60));
    console.type_until(&[0x1d], "[vmplane: left", Duration::from_secs(10));
    assert!(console.wait().success(), "vmplane vm console exits 0 after Ctrl-]");

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
async fn the_browser_terminal_is_a_real_guests_console_of_its_size() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let vm = g.running_vm(json!({"name": "in-a-browser", "memory_mib": 256})).await;
    let id = str_of(&vm["id"]).to_owned();
    let mut b = Browser::launch().await;
    b.call("Page.navigate", json!({"url": format!("{}/console/", g.admin.base)})).await;
    b.wait("the sign-in form", "!!document.querySelector('#signin #token')").await;
    b.type_into("#token", ADMIN_TOKEN).await;
    b.click("#signin button[type=submit]").await;
    b.wait("the VM list", &format!("!!document.querySelector('tr[data-vm-id=\"{id}\"]')")).await;
    b.eval(&format!("location.hash = '#/vms/{id}'")).await;
    b.wait("the VM page", &format!("{} === 'running'", text_of("#vm-status .badge"))).await;
    b.click("#terminal-open").await;
    b.wait("the terminal connected", &format!("{} === 'Connected'", text_of("#terminal-state"))).await;
    b.wait("xterm focused", "document.activeElement?.classList.contains('xterm-helper-textarea')").await;

    // Typed in xterm.js, run by the guest's shell: `stty size` answers the
    // size the browser terminal has (its rows are the rows on screen; a
    // console nobody sized says `0 0`).
    let lines = "Array.from(document.querySelectorAll('#terminal .xterm-rows > div'), (d) => d.textContent)";
    let answer = format!("{lines}.map((l) => l.trim()).find((l) => /^[1-9][0-9]* [1-9][0-9]*$/.test(l)) ?? null");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let size = loop {
        b.call("Input.insertText", json!({"text": "stty size"})).await;
        for kind in ["keyDown", "keyUp"] {
            b.call("Input.dispatchKeyEvent", json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13})).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(size) = b.eval(&answer).await.as_str() {
            break size.to_owned();
        }
        let screen = b.eval(&format!("{lines}.join('\\n')")).await;
        assert!(std::time::Instant::now() < deadline, "no size from `stty size` on the screen:\n{}", screen.as_str().unwrap_or_default());
    };
    let rows: u64 = size.split(' ').next().unwrap().parse().unwrap();
    let on_screen = b.eval(&format!("{lines}.length")).await;
    assert_eq!(Some(rows), on_screen.as_u64(), "the guest's rows ({size}) are the terminal's");
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
async fn disks_given_at_create_are_there_at_first_boot_and_a_kept_root_disk_becomes_a_volume() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let (s, vol) = g.admin.post("/v1/volumes", &json!({"name": "blk", "size_gb": 1})).await;
    assert_eq!(s, 202, "{vol}");
    g.wait_op(str_of(&vol["operation"]["id"])).await;
    let vol_id = str_of(&vol["id"]).to_owned();
    let body = json!({"name": "disks", "memory_mib": 256, "ssh_keys": [g.public_key()], "delete_root_disk": false,
        "data_disks": [{"name": "scratch", "size_gb": 1, "type": "filesystem"}], "volumes": [{"volume_id": vol_id}]});
    let vm = g.running_vm(body).await;
    let id = str_of(&vm["id"]).to_owned();

    // The filesystem data disk was formatted and mounted at boot, writable.
    assert_eq!(g.ssh(&vm, "awk '$2 == \"/mnt/scratch\" {print $3}' /proc/mounts").trim(), "ext4");
    assert_eq!(g.ssh(&vm, "echo written > /mnt/scratch/probe && cat /mnt/scratch/probe").trim(), "written");
    // The existing volume is a block device with its serial, mounted nowhere.
    let serial = &vol_id[vol_id.len() - 20..];
    let found = g.ssh(&vm, &format!("for s in /sys/block/vd*/serial; do [ \"$(cat $s)\" = {serial} ] && basename ${{s%/serial}}; done"));
    let dev = found.trim();
    assert!(dev.starts_with("vd"), "no disk with serial {serial}: {found:?}");
    assert_eq!(g.ssh(&vm, &format!("grep -c '^/dev/{dev} ' /proc/mounts || true")).trim(), "0", "the block volume was mounted");

    // Deleted, keeping its root disk: that is a volume file now, the data disk is gone.
    let (s, b) = g.admin.delete(&format!("/v1/vms/{id}")).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    let (_, list) = g.admin.get("/v1/volumes").await;
    let vols = list["data"].as_array().unwrap();
    assert_eq!(vols.len(), 2, "{list}");
    let kept = vols.iter().find(|v| v["image"] == "debian-minimal").unwrap_or_else(|| panic!("no root disk kept: {list}"));
    assert_eq!((kept["status"].as_str(), kept["size_gb"].as_u64()), (Some("available"), Some(2)), "the root disk's size (`running_vm`'s): {kept}");
    let file = g.data.join("worker").join("qemu").join("volumes").join(format!("{}.qcow2", str_of(&kept["id"])));
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&file).output().expect("qemu-img");
    let info: Value = serde_json::from_slice(&info.stdout).unwrap_or_else(|_| panic!("{} is not a disk: {info:?}", file.display()));
    assert!(str_of(&info["backing-filename"]).ends_with("rootfs.ext4"), "{info}");
    assert!(!g.vm_dir(&id).exists());
    assert_eq!(vols.iter().find(|v| v["id"] == vol_id.as_str()).map(|v| v["status"].clone()), Some(json!("available")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_keeps_memory_and_the_lifecycle_leaves_nothing_behind() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let vm = g.running_vm(json!({"name": "life", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let id = str_of(&vm["id"]).to_owned();
    g.ssh(&vm, "mkdir -p /mem && mount -t tmpfs tmpfs /mem && echo 424242 > /mem/counter");

    // A standby whose state cannot be written (the file is /dev/full) fails its
    // operation with the reason and leaves the guest running, memory intact.
    let partial = g.vm_dir(&id).join("state.partial");
    std::os::unix::fs::symlink("/dev/full", &partial).unwrap();
    let (s, b) = g.admin.post_empty(&format!("/v1/vms/{id}/standby")).await;
    assert_eq!(s, 202, "{b}");
    let op = g.wait_op_outcome(str_of(&b["operation"]["id"])).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert!(str_of(&op["error"]["message"]).contains("the guest was resumed"), "{op}");
    let after = g.admin.vm(&id).await;
    assert_eq!((after["status"].as_str(), after["has_snapshot"].as_bool()), (Some("running"), Some(false)), "{after}");
    assert_eq!(qemu_processes(&id), 1);
    assert_eq!(g.ssh(&vm, "cat /mem/counter").trim(), "424242", "the guest was not resumed as it was");
    assert!(std::fs::symlink_metadata(&partial).is_err(), "the partial state was not cleaned up");

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
async fn clones_resume_a_snapshots_memory_each_as_a_machine_of_its_own() {
    guests_or_skip!();
    // "Outside", for the clones to reach: a listener in a namespace of the test's own.
    let ns = Netns::create();
    let outside = serve(ns.enter(|| TcpListener::bind((ns.addr.as_str(), 0))).expect("bind in the namespace"), "outside-ok");
    let g = GuestStack::start().await;
    let src = g.running_vm(json!({"name": "source", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let src_id = str_of(&src["id"]).to_owned();
    g.ssh(&src, "mkdir -p /mem && mount -t tmpfs tmpfs /mem && echo 737373 > /mem/value");

    let (s, b) = g.admin.post(&format!("/v1/vms/{src_id}/snapshots"), &json!({"name": "base"})).await;
    assert_eq!((s, b["status"].as_str()), (202, Some("creating")), "{b}");
    let snap = str_of(&b["id"]).to_owned();
    assert!(snap.starts_with("snap_"), "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    let (_, info) = g.admin.get(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!(
        (info["status"].as_str(), info["memory_mib"].as_u64(), info["source_vm_id"].as_str()),
        (Some("ready"), Some(256), Some(src_id.as_str())),
        "{info}"
    );
    assert!(info["size_bytes"].as_u64().unwrap() >= 256 << 20, "the memory file is part of it: {info}");
    assert!(info["pause_ms"].is_u64(), "{info}");
    // The source went on running, memory intact; nothing is left of the templating qemu.
    assert_eq!(g.admin.vm(&src_id).await["status"], "running");
    assert_eq!(g.ssh(&src, "cat /mem/value").trim(), "737373");
    assert_eq!(qemu_processes(&src_id), 1, "the templating qemu was left behind");
    let snap_dir = g.data.join("worker/qemu/snapshots").join(&snap);
    assert_eq!(file_names(&snap_dir), ["devices.vmstate", "disk.qcow2", "info.json", "memory"], "{}", snap_dir.display());
    assert_eq!(shared_files(&snap_dir), Vec::<String>::new(), "snapshot files must be private");

    // A clone asking for another machine is refused; an unknown snapshot is not found.
    let (s, b) = g.admin.post("/v1/vms", &json!({"name": "big", "from_snapshot": snap, "memory_mib": 512})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("validation_failed")), "{b}");
    let (s, b) = g.admin.post("/v1/vms", &json!({"name": "x", "from_snapshot": "snap_01jz3k0000000000000000000a"})).await;
    assert_eq!(s, 404, "{b}");

    let mut clones = Vec::new();
    for name in ["clone-a", "clone-b"] {
        let vm = g.running_vm(json!({"name": name, "from_snapshot": snap})).await;
        assert_eq!((vm["memory_mib"].as_u64(), vm["from_snapshot"].as_str()), (Some(256), Some(snap.as_str())), "{vm}");
        clones.push(vm);
    }
    let mut macs = BTreeSet::new();
    for vm in &clones {
        let id = str_of(&vm["id"]);
        let seen = g.ssh(vm, "cat /mem/value; hostname; cat /sys/class/net/eth0/address; cat /run/vmplane/instance-id");
        let seen: Vec<&str> = seen.lines().collect();
        assert_eq!(seen, ["737373", str_of(&vm["name"]), str_of(&vm["mac"]), id], "clone {id}: memory, hostname, MAC, instance id");
        macs.insert(seen[2].to_owned());
    }
    macs.insert(str_of(&src["mac"]).to_owned());
    assert_eq!(macs.len(), 3, "each machine has its own MAC: {macs:?}");
    assert_ne!(clones[0]["ssh_port"], clones[1]["ssh_port"], "each clone has its own forward");
    let keys: Vec<String> = [&src, &clones[0], &clones[1]].iter().map(|vm| g.host_key(vm)).collect();
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 3, "each machine presents its own SSH host key: {keys:?}");
    // Each reaches out through its own network, set up again after the resume.
    for vm in &clones {
        let got = g.probe(vm, &[("outside", ns.addr.clone(), outside)]);
        if got.get("outside").map(String::as_str) != Some("outside-ok") {
            // Say what the clone's network looked like.
            let net = g.ssh(vm, "ip -4 addr; ip route; cat /proc/net/arp; ps | grep [u]dhcpc; dmesg | grep vmplane: | tail -5");
            panic!("clone {}: {got:?}\n{net}\n{}", str_of(&vm["id"]), g.worker.log_tail(30));
        }
    }

    // Disks part: a file one clone writes is in neither the other nor a later clone.
    g.ssh(&clones[0], "echo mine > /root/only-a && sync");
    assert_eq!(g.ssh(&clones[1], "cat /root/only-a 2>/dev/null || echo absent").trim(), "absent");
    let late = g.running_vm(json!({"name": "clone-c", "from_snapshot": snap})).await;
    assert_eq!(g.ssh(&late, "cat /root/only-a 2>/dev/null || echo absent; cat /mem/value").trim(), "absent\n737373");

    // A clone is an ordinary VM afterwards: a cold boot starts from its own disk.
    let id = str_of(&clones[0]["id"]).to_owned();
    g.act(&id, "stop").await;
    let again = g.act(&id, "start").await;
    assert_eq!(g.ssh(&again, "cat /root/only-a; cat /mem/value 2>/dev/null || echo cold").trim(), "mine\ncold");
    assert_eq!(g.host_key(&again), keys[1], "a clone's own host key is on its disk");
    // A VM in standby is snapshotted from its saved state, without running it.
    assert_eq!(g.act(&src_id, "standby").await["status"], "standby");
    let (s, b) = g.admin.post(&format!("/v1/vms/{src_id}/snapshots"), &json!({"name": "asleep"})).await;
    assert_eq!(s, 202, "{b}");
    let asleep = str_of(&b["id"]).to_owned();
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert_eq!(g.admin.get(&format!("/v1/snapshots/{asleep}")).await.1["pause_ms"], 0);
    assert_eq!((g.admin.vm(&src_id).await["status"].as_str(), qemu_processes(&src_id)), (Some("standby"), 0));
    let woken = g.running_vm(json!({"name": "from-standby", "from_snapshot": asleep, "delete_root_disk": false})).await;
    assert_eq!(g.ssh(&woken, "cat /mem/value; hostname").trim(), "737373\nfrom-standby");
    // Deleted keeping its disk as a volume: that disk no longer reads the snapshot's.
    assert_eq!(g.act(str_of(&woken["id"]), "delete").await["status"], "deleted");
    let kept = g.data.join("worker/qemu/volumes");
    assert_eq!(file_names(&kept).len(), 1, "{}", kept.display());
    assert_eq!(backing_file(&kept.join(&file_names(&kept)[0])), None, "the kept disk still reads the snapshot's");
    let (s, b) = g.admin.delete(&format!("/v1/snapshots/{asleep}")).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert_eq!(g.act(&src_id, "restore").await["status"], "running");

    // A fork: the snapshot and its clone in one request; the clone waits on the host for the snapshot.
    let (s, f) = g.admin.post(&format!("/v1/vms/{src_id}/fork"), &json!({"name": "forked"})).await;
    assert_eq!(s, 202, "{f}");
    g.wait_op(str_of(&f["operation"]["id"])).await;
    g.wait_op(str_of(&f["vms"][0]["operation"]["id"])).await;
    let forked = g.admin.vm(str_of(&f["vms"][0]["id"])).await;
    assert_eq!(g.ssh(&forked, "cat /mem/value; hostname").trim(), "737373\nforked");
    assert_eq!(g.act(str_of(&forked["id"]), "delete").await["status"], "deleted");
    let (s, b) = g.admin.delete(&format!("/v1/snapshots/{}", str_of(&f["snapshot"]["id"]))).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;

    let (s, b) = g.admin.delete(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("snapshot_in_use")), "live clones read its files: {b}");
    // Flattened (two running, streamed live; one stopped, rebased), no clone
    // reads the snapshot: it can go while they live on.
    let stopped = str_of(&clones[1]["id"]).to_owned();
    g.act(&stopped, "stop").await;
    for vm in [&clones[0], &clones[1], &late] {
        let id = str_of(&vm["id"]);
        let (s, b) = g.admin.post(&format!("/v1/vms/{id}/flatten"), &json!({})).await;
        assert_eq!(s, 202, "{b}");
        g.wait_op(str_of(&b["operation"]["id"])).await;
        assert_eq!(g.admin.vm(id).await["flattened"], true);
        let disk = g.data.join("worker/qemu/vms").join(id).join("root.qcow2");
        assert_eq!(backing_file(&disk), None, "{id}'s disk still reads the snapshot's");
    }
    let (s, b) = g.admin.delete(&format!("/v1/snapshots/{snap}")).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert!(!snap_dir.exists(), "{} left behind", snap_dir.display());
    // The running clones go on with their memory and disks; the stopped one boots from its own disk.
    assert_eq!(g.ssh(&late, "cat /mem/value; sync; cat /etc/hostname").trim(), "737373\nclone-c");
    assert_eq!(g.ssh(&g.admin.vm(str_of(&clones[0]["id"])).await, "cat /root/only-a").trim(), "mine");
    let booted = g.act(&stopped, "start").await;
    assert_eq!(g.ssh(&booted, "hostname; cat /mem/value 2>/dev/null || echo cold").trim(), "clone-b\ncold");
    for vm in clones.iter().chain([&late, &src]) {
        let id = str_of(&vm["id"]);
        assert_eq!(g.act(id, "delete").await["status"], "deleted");
        assert_eq!(qemu_processes(id), 0, "qemu left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_a_fork_of_three_is_templated_ends_with_three_clones_and_nothing_left() {
    guests_or_skip!();
    let mut g = GuestStack::start().await;
    let src = g.running_vm(json!({"name": "source", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let src_id = str_of(&src["id"]).to_owned();
    g.ssh(&src, "mkdir -p /mem && mount -t tmpfs tmpfs /mem && echo 4242 > /mem/value");

    // The worker dies (SIGKILL) as soon as its templating qemu has started:
    // the snapshot half-made, the three clones' creates waiting on it.
    let snapshots = g.data.join("worker/qemu/snapshots");
    let templating = || std::fs::read_dir(&snapshots).into_iter().flatten().flatten().any(|e| e.path().join("work").join("qemu.pid").exists());
    let (admin, worker) = (&g.admin, &mut g.worker);
    let (path, body) = (format!("/v1/vms/{src_id}/fork"), json!({"name": "kid", "count": 3}));
    let ((s, f), templating_survived) = tokio::join!(admin.post(&path, &body), async {
        wait_for("the templating qemu", BOOT, async || if templating() { Ok(()) } else { Err("not yet".to_owned()) }).await;
        worker.kill9();
        // It outlives the worker (qemu daemonizes) unless it had just finished.
        qemu_processes(&src_id) == 2
    });
    assert_eq!(s, 202, "{f}");
    let snap = str_of(&f["snapshot"]["id"]).to_owned();
    g.worker.respawn();

    // The fork's one operation ends once, as if nothing happened, and with it every clone's.
    let fork = g.wait_op(str_of(&f["operation"]["id"])).await;
    assert_eq!(fork["kind"], "fork", "{fork}");
    let kids: Vec<Value> = f["vms"].as_array().expect("the clones").clone();
    assert_eq!(kids.len(), 3, "{f}");
    for kid in &kids {
        let (_, op) = g.admin.get(&format!("/v1/operations/{}", str_of(&kid["operation"]["id"]))).await;
        assert_eq!(op["status"], "succeeded", "the fork ended before {kid}: {op}");
    }
    if templating_survived {
        let log = std::fs::read_to_string(&g.worker.log).unwrap_or_default();
        assert!(log.contains("stopping a templating qemu left by an earlier worker"), "{}", g.worker.log_tail(40));
    }
    let (_, all) = g.admin.get("/v1/vms?limit=100").await;
    let mut names: Vec<&str> = all["data"].as_array().unwrap().iter().map(|v| str_of(&v["name"])).collect();
    names.sort_unstable();
    assert_eq!(names, ["kid-1", "kid-2", "kid-3", "source"], "exactly three clones: {all}");
    assert_eq!(count(&g.admin.event_types(&src_id).await, "snapshot_taken"), 1);
    for kid in &kids {
        let id = str_of(&kid["id"]);
        let vm = g.admin.vm(id).await;
        assert_eq!(vm["status"], "running", "{vm}");
        assert_eq!(g.ssh(&vm, "cat /mem/value; hostname").trim(), format!("4242\n{}", str_of(&vm["name"])));
        assert_eq!(count(&g.admin.event_types(id).await, "booted"), 1, "{id} booted once");
        assert_eq!(qemu_processes(id), 1, "{id}: one qemu");
    }
    // No orphan qemu, no half-made file: the snapshot is whole, nothing of its making remains.
    assert_eq!(qemu_processes(&src_id), 1, "the source's qemu alone (no templating qemu)");
    assert_eq!(g.ssh(&src, "cat /mem/value").trim(), "4242", "the source runs on, memory intact");
    assert_eq!(file_names(&snapshots.join(&snap)), ["devices.vmstate", "disk.qcow2", "info.json", "memory"]);
    for kid in &kids {
        let dir = g.vm_dir(str_of(&kid["id"]));
        let partial: Vec<String> = file_names(&dir).into_iter().filter(|n| n.ends_with(".tmp") || n.ends_with(".partial")).collect();
        assert!(partial.is_empty(), "{}: {partial:?}", dir.display());
        // Its disk is an overlay on the snapshot's whole disk, made once.
        let out = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(dir.join("root.qcow2")).output().expect("qemu-img");
        let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(info["backing-filename"].as_str(), Some(snapshots.join(&snap).join("disk.qcow2").to_str().unwrap()), "{info}");
    }
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
        assert_eq!(passt_processes(&g.vm_dir(id)), 1, "so must their network");
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
    assert_eq!((passt_processes(&g.vm_dir(&ids[0])), passt_processes(&g.vm_dir(&ids[1]))), (1, 0), "an adopted guest's passt stops with it");
    for id in &ids {
        let events = g.admin.event_types(id).await;
        assert_eq!(count(&events, "booted"), 1, "{id}: {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_mode_guests_reach_out_but_never_the_host_and_their_files_stay_private() {
    guests_or_skip!();
    // "Outside": listeners on a namespace of the test's own, routed through a veth;
    // one on a non-loopback address, one on a link-local (metadata) address.
    let ns = Netns::create();
    ns.link_local_inside();
    let outside = serve(ns.enter(|| TcpListener::bind((ns.addr.as_str(), 0))).expect("bind in the namespace"), "outside-ok");
    let metadata = serve(ns.enter(|| TcpListener::bind((ns.link_local.as_str(), 0))).expect("bind in the namespace"), "metadata-reached");
    // A service of this host on a non-loopback address (the test's end of the veth).
    let service = serve(TcpListener::bind((ns.host.as_str(), 0)).expect("bind on the veth"), "host-reached");
    // nats-server and the gateway listen on every address of the host.
    let g = GuestStack::start_with(None, true).await;
    let detail = g.driver_detail().await;
    // Without the filter a probe of the gateway address could leave the machine: stop here.
    assert!(!detail.contains("WITHOUT"), "{detail}");
    let vm = g.running_vm(json!({"name": "probe", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;

    let (gw, nats) = (g.gateway_port, g.nats_port);
    let mut targets: Vec<(String, String, u16)> = vec![
        ("outside".into(), ns.addr.clone(), outside),
        ("metadata".into(), ns.link_local.clone(), metadata),
        ("gateway-via-guest-gw".into(), "10.0.2.2".into(), gw),
        ("nats-via-guest-gw".into(), "10.0.2.2".into(), nats),
        ("service-via-veth".into(), ns.host.clone(), service),
    ];
    for (i, addr) in host_addresses().into_iter().enumerate() {
        targets.push((format!("gateway-via-host-{i}"), addr.clone(), gw));
        targets.push((format!("nats-via-host-{i}"), addr, nats));
    }
    let targets: Vec<(&str, String, u16)> = targets.iter().map(|(l, a, p)| (l.as_str(), a.clone(), *p)).collect();
    only_outside_answers(&g.probe(&vm, &targets));
    assert!(detail.contains("passt as uid") && detail.contains("inet vmplane_guest"), "{detail}");

    // Everything the driver, qemu and passt keep for the VM is root's alone.
    let dir = g.vm_dir(str_of(&vm["id"]));
    assert_eq!(passt_processes(&dir), 1, "one passt serves the guest");
    assert!(dir.join("qmp.sock").exists() && dir.join("console.log").exists() && dir.join("passt.log").exists());
    let loose = shared_files(&dir);
    assert!(loose.is_empty(), "group or others may use: {loose:?}");
    // Its passt stops with it.
    assert_eq!(g.act(str_of(&vm["id"]), "stop").await["status"], "stopped");
    assert_eq!(passt_processes(&dir), 0, "passt outlived its guest");
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

/// A worker's `--port-range` of its own, so stacks running side by side do
/// not compete: 100 ports below 32768, where the kernel never hands out an
/// ephemeral port (Linux's default range is 32768-60999). A range inside the
/// ephemeral one could meet a client socket of a test running beside it,
/// and a VM asking for that port would fail with "already in use".
fn own_port_range() -> String {
    let first = 10_000 + (free_port() % 220) * 100;
    format!("{first}-{}", first + 99)
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

/// An uncompressed tar of entries named exactly as given (the tar builder
/// refuses `..` and absolute names, which hostile archives have): a name
/// ending in `@` is a symlink to `data`.
fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let (name, body): (&str, &[u8]) = match name.strip_suffix('@') {
            Some(link) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
                (link, &[])
            }
            None => (name, data),
        };
        h.set_size(body.len() as u64);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, body).unwrap();
    }
    b.into_inner().unwrap()
}

/// Write an OCI image layout with two layers, the second whiting out a file of the first.
fn oci_layout(dir: &Path) {
    let l1 = layer_tar(&[("etc/oci-motd", b"hello-from-oci\n"), ("etc/doomed", b"x")], true);
    let l2 = layer_tar(&[("etc/.wh.doomed", b""), ("opt/app/run.sh", b"echo app\n")], true);
    oci_layout_of(dir, &[l1, l2]);
}

/// Write an OCI image layout with these layers.
fn oci_layout_of(dir: &Path, layers: &[Vec<u8>]) {
    use sha2::{Digest, Sha256};
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let hex = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let layers: Vec<Value> = layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(l), "size": 0})).collect();
    let config = put(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 0},
        "layers": layers
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
    // The images dir is shared by every run (the base image is built once):
    // this test's own imports from an earlier run go first.
    for name in ["from-oci", "from-docker", "from-qcow2"] {
        let _ = std::fs::remove_dir_all(images_dir().join(name));
    }
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
    let g = GuestStack::start_with(Some(Netns::create()), true).await;
    let ns = g.netns.as_ref().unwrap();
    // Beyond the guests' host (the namespace): this machine's end of the veth, and a link-local address there.
    ns.route_bridge_out();
    let outside = serve(TcpListener::bind((ns.host.as_str(), 0)).expect("bind on the veth"), "outside-ok");
    let metadata = serve(TcpListener::bind((ns.link_local.as_str(), 0)).expect("bind on the veth"), "metadata-reached");
    // A service of the guests' host, on all its addresses.
    let service = serve(ns.enter(|| TcpListener::bind("0.0.0.0:0")).expect("bind in the namespace"), "host-reached");
    let cidr = ns.cidr.clone();
    let prefix = cidr.rsplit_once('.').unwrap().0.to_owned();
    let detail = g.driver_detail().await;
    assert!(detail.contains("bridge br0: guests kept off the host by nftables table inet vmplane_bridge_br0"), "{detail}");
    // boot_args cannot set the guest's network (or any vmplane.* parameter).
    let (s, b) = g.admin.post("/v1/vms", &json!({"name": "br-x", "network": {"mode": "bridge"}, "boot_args": "quiet vmplane.net=10.9.9.9/8,10.0.0.1"})).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("validation_failed")), "{b}");
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
    // Routed out: yes; to the host's own services or a link-local address: no.
    let gateway = format!("{prefix}.1");
    let targets = [
        ("outside", ns.host.clone(), outside),
        ("metadata", ns.link_local.clone(), metadata),
        ("service-via-bridge", gateway.clone(), service),
        ("service-via-veth", ns.addr.clone(), service),
        ("gateway-via-bridge", gateway.clone(), g.gateway_port),
        ("nats-via-bridge", gateway, g.nats_port),
        ("nats-via-veth", ns.addr.clone(), g.nats_port),
    ];
    only_outside_answers(&g.probe(&a, &targets));

    // A clone of a bridge-mode VM is a machine of its own on the bridge: the
    // next free address, a new MAC and hostname, which its agent takes on
    // (the source's address is dropped); the source keeps its own.
    let b_id = str_of(&b["id"]).to_owned();
    let clone = g.running_vm(json!({"name": "br-clone", "from_snapshot": g.snapshot(&b_id).await})).await;
    let clone_ip = format!("{prefix}.3");
    assert_eq!(clone["ip"].as_str(), Some(clone_ip.as_str()), "{clone}");
    assert_ne!(clone["mac"], b["mac"], "{clone}");
    let seen = g.ssh(&clone, "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; ip route show default");
    let mac = str_of(&clone["mac"]).to_ascii_lowercase();
    assert!(seen.starts_with(&format!("br-clone\n{mac}\n")), "{seen}");
    assert!(seen.contains(&format!("{clone_ip}/24")) && !seen.contains(&format!("{prefix}.2/")), "{seen}");
    assert!(seen.contains(&format!("default via {prefix}.1")), "{seen}");
    assert_eq!(g.ssh(&clone, &format!("ping -c 1 -W 5 {chosen} >/dev/null && echo reached")).trim(), "reached");
    assert_eq!(g.ssh(&b, &format!("ping -c 1 -W 5 {clone_ip} >/dev/null && echo reached")).trim(), "reached");
    assert!(g.ssh(&b, "ip -4 -o addr show eth0").contains(&format!("{prefix}.2/24")));
    only_outside_answers(&g.probe(&clone, &targets));

    // An address or MAC another guest of the host holds is refused at once.
    for network in [json!({"mode": "bridge", "guest_ip": chosen}), json!({"mode": "bridge", "guest_mac": "02:FC:00:00:00:0A"})] {
        let (s, dup) = g.admin.post("/v1/vms", &json!({"name": "br-c", "network": network})).await;
        assert_eq!((s, dup["code"].as_str()), (409, Some("address_conflict")), "{dup}");
    }
    // An address outside the network is refused at once.
    let (s, out) = g.admin.post("/v1/vms", &json!({"name": "br-c", "network": {"mode": "bridge", "guest_ip": "192.0.2.50"}})).await;
    assert_eq!((s, out["code"].as_str()), (422, Some("validation_failed")), "{out}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_image_imports_fail_with_a_reason_and_touch_nothing_outside() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let src = tempfile::tempdir().unwrap();
    let outside = src.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let qemu_img = |args: &[&str]| {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let p = |name: &str| src.path().join(name).display().to_string();
    // A qcow2 whose backing file, or external data file, is some host file.
    std::fs::write(p("secret.raw"), vec![7u8; 1 << 20]).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &p("secret.raw"), &p("backed.qcow2")]);
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("data_file={},data_file_raw=on", p("secret.raw")), &p("datafile.qcow2"), "1M"]);
    // OCI layouts whose layers write to absolute paths, climb with `..`, or go through a symlink out of the image.
    let out = outside.display().to_string();
    let oci = |name: &str, layers: Vec<Vec<u8>>| {
        oci_layout_of(&src.path().join(name), &layers);
        p(name)
    };
    let abs = oci("abs", vec![raw_tar(&[("etc/ok", b"1"), (&format!("{out}/abs"), b"x")])]);
    let dotdot = oci("dotdot", vec![raw_tar(&[("etc/ok", b"1"), ("../../../../../../../../tmp/dotdot", b"x")])]);
    let linked = oci("linked", vec![raw_tar(&[("escape@", out.as_bytes())]), raw_tar(&[("escape/pwned", b"x")])]);
    // A docker save tarball that unpacks through its own symlink, and one naming a layer outside itself.
    let docker_link = p("docker-link.tar");
    std::fs::write(&docker_link, raw_tar(&[("l1@", out.as_bytes()), ("l1/layer.tar", b"x"), ("manifest.json", b"[]")])).unwrap();
    let docker_dotdot = p("docker-dotdot.tar");
    std::fs::write(&docker_dotdot, raw_tar(&[("manifest.json", br#"[{"Config":"c.json","Layers":["../../../../etc/hostname"]}]"#)])).unwrap();

    let cases = [
        ("trick-backing", &p("backed.qcow2"), "qcow2", "backing file"),
        ("trick-datafile", &p("datafile.qcow2"), "qcow2", "external data file"),
        ("trick-abs", &abs, "oci_layout", "absolute"),
        ("trick-dotdot", &dotdot, "oci_layout", "`..`"),
        ("trick-link", &linked, "oci_layout", "outside the image"),
        ("trick-docker-link", &docker_link, "docker_archive", "outside the image"),
        ("trick-docker-dotdot", &docker_dotdot, "docker_archive", "`..`"),
    ];
    for (name, source, format, why) in cases {
        let (s, b) = g.admin.post("/v1/images", &json!({"name": name, "source": source, "format": format})).await;
        assert_eq!(s, 202, "{name}: {b}");
        let op = g.wait_op_outcome(str_of(&b["operation"]["id"])).await;
        assert_eq!(op["status"], "failed", "{name}: {op}");
        assert!(str_of(&op["error"]["message"]).contains(why), "{name}: expected `{why}` in {op}");
        assert!(!images_dir().join(name).exists(), "{name}: an image was left behind");
    }
    let left: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "written outside the work dir: {left:?}");
    assert!(!Path::new("/tmp/dotdot").exists());
    let (_, images) = g.admin.get("/v1/images").await;
    assert!(!images.to_string().contains("trick-"), "{images}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_outlive_a_stopped_worker_unless_asked_and_a_failed_vm_keeps_no_qemu() {
    guests_or_skip!();
    let mut g = GuestStack::start().await;
    let keeper = g.running_vm(json!({"name": "keeper", "memory_mib": 256, "ssh_keys": [g.public_key()]})).await;
    let id = str_of(&keeper["id"]).to_owned();

    // By default a stopped worker leaves its guests running, and the next one adopts them.
    g.stop_worker().await;
    assert_eq!(qemu_processes(&id), 1, "the guest must outlive its worker");
    assert_eq!(g.admin.vm(&id).await["status"], "running");
    g.start_worker(&["--stop-guests-on-exit", "--ready-timeout-secs", "20", "--stop-timeout-secs", "15"]);
    let w = &g.worker;
    wait_for("the guest adopted", BOOT, async || if w.log_mentions("adopted running guest") { Ok(()) } else { Err(w.log_tail(5)) }).await;
    assert_eq!(g.ssh(&keeper, "echo alive").trim(), "alive");
    assert_eq!(qemu_processes(&id), 1, "no duplicate qemu");
    assert_eq!(count(&g.admin.event_types(&id).await, "booted"), 1, "the guest booted once");

    // A guest whose readiness never comes: the VM fails and keeps no qemu.
    let (s, b) = g.admin.post("/v1/vms", &json!({"name": "never", "memory_mib": 256, "user_data": "#!/bin/sh\nsleep 100000\n"})).await;
    assert_eq!(s, 202, "{b}");
    let never = str_of(&b["id"]).to_owned();
    let op = g.wait_op_outcome(str_of(&b["operation"]["id"])).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert!(str_of(&op["error"]["message"]).contains("no readiness line"), "{op}");
    assert_eq!(g.admin.vm(&never).await["status"], "failed");
    assert_eq!(qemu_processes(&never), 0, "a failed VM kept its qemu");

    // With --stop-guests-on-exit, SIGTERM powers the guests off and the VMs say so.
    g.stop_worker().await;
    assert_eq!(qemu_processes(&id), 0, "--stop-guests-on-exit left the guest running");
    let c = &g.admin;
    let stopped = wait_for("the VM stopped with its worker", Duration::from_secs(30), async || {
        let v = c.vm(&id).await;
        if v["status"] == "stopped" { Ok(v) } else { Err(v.to_string()) }
    })
    .await;
    assert!(str_of(&stopped["message"]).contains("--stop-guests-on-exit"), "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_cannot_exhaust_the_worker() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let key = g.public_key();
    let quiet = g.running_vm(json!({"name": "quiet", "memory_mib": 256, "ssh_keys": [key]})).await;
    // Its agent is replaced by one that answers any command with an endless line.
    let endless_agent = r#"#!/bin/sh
cat > /usr/lib/vmplane/agent <<'AGENT'
#!/bin/sh
for f in /sys/class/virtio-ports/*/name; do [ "$(cat "$f")" = org.vmplane.agent ] && d=${f%/name}; done
exec 3<>"/dev/${d##*/}"
read -r command <&3
while :; do printf xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx >&3; done
AGENT
"#;
    let hostile = g.running_vm(json!({"name": "hostile", "memory_mib": 256, "ssh_keys": [key], "user_data": endless_agent})).await;
    let (s, vol) = g.admin.post("/v1/volumes", &json!({"name": "v", "size_gb": 1})).await;
    assert_eq!(s, 202, "{vol}");
    g.wait_op(str_of(&vol["operation"]["id"])).await;
    let attach = |vm: &Value| format!("/v1/vms/{}/volumes/{}", str_of(&vm["id"]), str_of(&vol["id"]));
    let (s, b) = g.admin.post(&attach(&hostile), &json!({"mount_path": "/mnt/v"})).await;
    assert_eq!(s, 202, "{b}");
    let op = g.wait_op_outcome(str_of(&b["operation"]["id"])).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert!(str_of(&op["error"]["message"]).contains("no answer line within 4096 bytes"), "{op}");
    assert_eq!(g.admin.vm(str_of(&hostile["id"])).await["status"], "running");

    // It floods its serial console: the excess is dropped, and the markers say how much.
    const FLOOD: u64 = 20_000;
    g.ssh(&hostile, &format!("awk 'BEGIN {{ for (i = 1; i <= {FLOOD}; i++) print \"flood-\" i }}' > /dev/ttyS0"));
    let c = &g.admin;
    let logs = async |vm: &Value| -> Vec<String> {
        let (s, b) = c.get(&format!("/v1/vms/{}/logs?tail=10000", str_of(&vm["id"]))).await;
        assert_eq!(s, 200, "{b}");
        b["lines"].as_array().unwrap().iter().map(|l| str_of(l).to_owned()).collect()
    };
    let (shipped, dropped) = wait_for("every flood line shipped or counted as dropped", Duration::from_secs(120), async || {
        let lines = logs(&hostile).await;
        // The first line may follow the serial shell's prompt.
        let shipped = lines.iter().filter(|l| l.contains("flood-")).count() as u64;
        let dropped: u64 = lines
            .iter()
            .filter_map(|l| l.strip_prefix("[vmplane] console over ")?.split(": ").nth(1)?.strip_suffix(" lines dropped")?.parse::<u64>().ok())
            .sum();
        if shipped + dropped >= FLOOD { Ok((shipped, dropped)) } else { Err(format!("{shipped} shipped, {dropped} dropped")) }
    })
    .await;
    assert!(dropped > 0 && shipped < FLOOD, "{shipped} shipped, {dropped} dropped");

    // The other VM's logs are still there, and its new lines still arrive.
    g.ssh(&quiet, "echo quiet-after-flood > /dev/ttyS0");
    wait_for("the quiet VM's logs", Duration::from_secs(60), async || {
        let lines = logs(&quiet).await;
        let ready = lines.iter().any(|l| l.starts_with("VMPLANE-READY"));
        if ready && lines.iter().any(|l| l.ends_with("quiet-after-flood")) { Ok(()) } else { Err(format!("{:?}", &lines[lines.len().saturating_sub(5)..])) }
    })
    .await;
    // And the worker still does its work: the volume goes to the quiet VM.
    let (s, b) = g.admin.post(&attach(&quiet), &json!({"mount_path": "/mnt/v"})).await;
    assert_eq!(s, 202, "{b}");
    g.wait_op(str_of(&b["operation"]["id"])).await;
    assert!(g.ssh(&quiet, "awk '$2 == \"/mnt/v\"' /proc/mounts").contains("/mnt/v"));
}

/// Through the hypeman dialect: `POST /instances` launches a real guest that
/// reaches `Running`. hypeman's create has no user data; what it gives the
/// guest is `env`, which the guest writes to `/run/vmplane/env` at boot. Its
/// console, read through hypeman's SSE logs, shows the boot's readiness line
/// and then, typed on the serial terminal, the value the create passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_hypeman_guest_runs_its_user_data() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let c = &g.admin;
    let body = json!({"name": "hype", "image": "docker.io/library/debian:12", "size": "256MB", "hotplug_size": "0B", "overlay_size": "2GB",
                      "vcpus": 1, "env": {"GREETING": "hello-from-hypeman"}});
    let (s, i) = c.post("/instances", &body).await;
    assert_eq!(s, 201, "{i}\n{}", g.worker.log_tail(40));
    let id = str_of(&i["id"]).to_owned();
    // The create waits at most 30 s for the boot; under TCG it may take longer.
    let i = wait_for("the instance to run", BOOT, async || {
        let (s, i) = c.get("/instances/hype").await;
        assert!(s == 200 && i["state"] != "Unknown", "{i}");
        if i["state"] == "Running" && i["started_at"].is_string() { Ok(i) } else { Err(i.to_string()) }
    })
    .await;
    assert_eq!((&i["image"], &i["size"], &i["env"]["GREETING"]), (&json!("docker.io/library/debian:12"), &json!("256MB"), &json!("hello-from-hypeman")), "{i}");
    assert_eq!(c.vm(&id).await["status"], "running");

    // hypeman's log stream: `data: "<line>"` events, the boot's readiness line among them.
    let resp = c.request_untimed(reqwest::Method::GET, "/instances/hype/logs?follow=true&tail=1000").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("data: \"VMPLANE-READY") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "{text}");

    // The env the create gave, read in the guest on its serial console (the
    // terminal is the same VM's, in /v1), shows in hypeman's log stream.
    let url = format!("{}/v1/vms/{id}/terminal", c.base.replace("http://", "ws://"));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket");
    let shown = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            // Keystrokes sent before the serial shell reads are lost: type again until it answers.
            ws.send(tokio_tungstenite::tungstenite::Message::binary(b"\n. /run/vmplane/env; echo \"env-says-$GREETING\"\n".to_vec())).await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("env-says-hello-from-hypeman") {
                    return true;
                }
            }
        }
    })
    .await;
    assert_eq!(shown, Ok(true), "{text}");
    assert!(text.lines().filter(|l| !l.is_empty() && !l.starts_with(':')).all(|l| l.starts_with("data: \"")), "only data events: {text}");

    let r = c.send(c.request(reqwest::Method::DELETE, "/instances/hype")).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(c.get("/instances/hype").await.0, 404);
}

/// A real guest launched through the Visor dialect (docs/dialects/visor.md):
/// `vm.launch` with plan, region and os from the catalog reaches `running`,
/// shows what it booted, runs its `userData` (the output is in its console)
/// and takes its `sshKeys`; `vm.destroy` leaves no qemu behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_visor_guest_runs_its_user_data() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let org = g.admin.create_org("visor").await;
    let v = g.admin.with_token(&g.admin.create_key(&org, "visor").await);
    let user_data = "#!/bin/sh\necho visor-user-data-$((6*7))\n";
    let launch = json!({"organizationId": org, "name": "visor-guest", "plan": "nano", "region": "us-east", "os": "debian-12",
                        "sshKeys": [g.public_key()], "userData": user_data});
    let (s, b) = v.post("/api/vm.launch", &launch).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["result"]["data"]["status"], "provisioning", "{b}");
    let id = str_of(&b["result"]["data"]["id"]).to_owned();

    let one = wait_for("the Visor VM running", BOOT, async || {
        let (s, b) = v.get(&format!("/api/vm.one?vmId={id}")).await;
        let d = &b["result"]["data"];
        assert!(d["status"] != "error", "{b}\n{}", g.worker.log_tail(40));
        if s == 200 && d["status"] == "running" { Ok(d.clone()) } else { Err(format!("{s} {b}")) }
    })
    .await;
    assert_eq!(
        (one["os"].as_str(), one["plan"].as_str(), one["region"].as_str(), &one["ip"], one["privateIp"].as_str()),
        (Some("debian-12"), Some("nano"), Some("us-east"), &Value::Null, Some("10.0.2.15")),
        "{one}"
    );
    assert_eq!(one["specs"], json!({"vcpu": 1, "memoryGb": 0.5, "diskGb": 10, "diskType": "ssd"}), "{one}");

    // The user data ran: its output is in the console log.
    wait_for("the user data's output in the console", Duration::from_secs(120), async || {
        let (s, tail) = v.get(&format!("/v1/vms/{id}/logs?tail=500")).await;
        let lines: Vec<&str> = tail["lines"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if s == 200 && lines.iter().any(|l| l.ends_with("visor-user-data-42")) { Ok(()) } else { Err(format!("{s} {lines:?}")) }
    })
    .await;
    // The key given as sshKeys logs in, through the forwarded port (`sshPort`).
    let vm = v.vm(&id).await;
    assert_eq!(vm["ssh_port"], one["sshPort"], "{vm}");
    assert_eq!(g.ssh(&vm, "echo visor-ssh-$((40+2))").trim(), "visor-ssh-42");

    let r = v.send(v.request(reqwest::Method::DELETE, "/api/vm.destroy").json(&json!({"vmId": id}))).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    wait_for("the destroyed VM gone, without qemu", BOOT, async || {
        let (s, b) = v.get(&format!("/api/vm.one?vmId={id}")).await;
        if s == 404 && qemu_processes(&id) == 0 { Ok(()) } else { Err(format!("{s} {b}, {} qemu", qemu_processes(&id))) }
    })
    .await;
}

/// The UUID the NeevCloud dialect shows for a vmplane id, and back.
fn neev_uuid(id: &str) -> String {
    let h = format!("{:032x}", ulid::Ulid::from_string(id.split_once('_').expect("a vmplane id").1).expect("a ulid").0);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn neev_vm_id(uuid: &str) -> String {
    format!("vm_{}", ulid::Ulid(u128::from_str_radix(&uuid.replace('-', ""), 16).expect("hex")).to_string().to_ascii_lowercase())
}

/// A guest launched through the NeevCloud dialect. Its document has no user
/// data; what reaches the guest is the rest of `CreateVMRequest`: the root
/// disk from the image at its size, the created data disk (formatted and
/// mounted at boot, on the console), the SSH keys (we log in with ours),
/// the VM's name as hostname, and the exposed port (reached through its
/// host port), all shown below from inside the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_neevcloud_guest_runs_its_user_data() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let c = &g.admin;
    let nil = neev_uuid("org_00000000000000000000000000");
    let at = format!("/api/v1/orgs/{nil}/projects/{nil}");
    let body = json!({
        "name": "neev-guest",
        "region_id": "us-east",
        "vm_config_id": "nano",
        "plan_id": "nano",
        "root_disk": {"create_disk_request": {"name": "neev-boot", "size_gb": 20, "image_id": "debian-12"}},
        "data_disks": {"create_disks": [{"name": "scratch", "type": "filesystem", "size_gb": 10}]},
        "ssh_keys": [g.public_key()],
        "exposed_ports": [{"port": 8000, "protocol": "tcp"}],
    });
    let (s, created) = c.post(&format!("{at}/vms"), &body).await;
    assert_eq!(s, 201, "{created}");
    let uuid = str_of(&created["id"]).to_owned();
    let vm = wait_for("the guest to run", BOOT, async || {
        let (s, b) = c.get(&format!("{at}/vms/{uuid}")).await;
        assert_eq!(s, 200, "{b}");
        assert_ne!(b["status"], "failed", "{b}\n{}", g.worker.log_tail(40));
        if b["status"] == "running" { Ok(b) } else { Err(b["status"].to_string()) }
    })
    .await;
    assert_eq!((vm["image_id"].as_str(), vm["vm_config_id"].as_str()), (Some("debian-12"), Some("nano")), "{vm}");
    let id = neev_vm_id(&uuid);
    let native = c.vm(&id).await;
    assert_eq!((native["image"].as_str(), native["vcpus"].as_u64(), native["memory_mib"].as_u64()), (Some("debian-minimal"), Some(1), Some(512)));

    // The console: the data disk mounted at boot, then the readiness line.
    let lines = wait_for("the console lines", Duration::from_secs(60), async || {
        let (s, tail) = c.get(&format!("/v1/vms/{id}/logs?tail=500")).await;
        let lines: Vec<String> = tail["lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_owned)).collect();
        if s == 200 && lines.iter().any(|l| l.starts_with("VMPLANE-READY")) { Ok(lines) } else { Err(format!("{s} {lines:?}")) }
    })
    .await;
    eprintln!("console of {uuid} (NeevCloud):\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("mounted at /mnt/scratch (rw)")), "{lines:?}");
    assert!(lines.iter().any(|l| l == &format!("VMPLANE-READY instance-id={id}")), "{lines:?}");

    // Inside: our key lets us in, the name is the hostname, the root disk has
    // the 20 GB asked for, the data disk is a mounted filesystem.
    let seen = g.ssh(
        &native,
        "hostname; for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = root ] && echo $(( $(cat $d/size) * 512 )); done; \
         awk '$2 == \"/mnt/scratch\" {print $3}' /proc/mounts",
    );
    eprintln!("inside the guest:\n{seen}");
    assert_eq!(seen.lines().collect::<Vec<_>>(), ["neev-guest", "21474836480", "ext4"], "{seen}");

    // The exposed port reaches a listener in the guest through its host port.
    g.ssh(&native, "mkdir -p /www && echo neev-port-ok > /www/index.html && httpd -p 8000 -h /www");
    let port = native["port_forwards"][0]["host_port"].as_u64().expect("a host port for the exposed port") as u16;
    let answer = tokio::task::spawn_blocking(move || {
        let mut last = String::new();
        for _ in 0..30 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.contains("neev-port-ok") {
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
    assert!(answer.contains("neev-port-ok"), "{answer}");

    // Stopped and deleted through the dialect.
    let (s, b) = c.post_empty(&format!("{at}/vms/{uuid}/stop")).await;
    assert_eq!(s, 202, "{b}");
    wait_for("the guest to stop", BOOT, async || {
        let (_, b) = c.get(&format!("{at}/vms/{uuid}")).await;
        if b["status"] == "stopped" { Ok(()) } else { Err(b["status"].to_string()) }
    })
    .await;
    assert_eq!(qemu_processes(&id), 0);
    let (s, _) = c.delete(&format!("{at}/vms/{uuid}")).await;
    assert_eq!(s, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_hatch_guest_runs_its_user_data() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    // Hatch's create answers once the guest runs: under TCG that is a long request.
    let c = g.admin.with_timeout(BOOT + Duration::from_secs(60));
    // The seed's example, with `#!/bin/sh`: the default image's shell is busybox's (no bash).
    let (s, vm) = c.post("/vms", &json!({"vcpu_count": 1, "mem_mib": 256, "enable_network": true, "user_data": "#!/bin/sh\necho 'Hello from Hatch'"})).await;
    assert_eq!(s, 201, "{vm}\n{}", g.worker.log_tail(40));
    assert_eq!((vm["state"].as_str(), vm["image_id"].as_str(), vm["guest_ip"].as_str()), (Some("running"), Some("img_default"), Some("10.0.2.15")), "{vm}");
    assert!(vm["ssh_port"].is_u64() && vm["guest_mac"].is_string(), "{vm}");
    let id = str_of(&vm["id"]).to_owned();

    // Its console shows the user data's output.
    wait_for("the user data's output in the console", Duration::from_secs(60), async || {
        let (s, tail) = c.get(&format!("/v1/vms/{id}/logs?tail=500")).await;
        let lines: Vec<String> = tail["lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_owned)).collect();
        if s == 200 && lines.iter().any(|l| l.ends_with("Hello from Hatch")) { Ok(()) } else { Err(format!("{s} {lines:?}")) }
    })
    .await;

    // Stopped and deleted through Hatch, each answered when done; no qemu is left.
    let (s, b) = c.post_empty(&format!("/vms/{id}/stop")).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("stopped")), "{b}");
    assert_eq!(qemu_processes(&id), 0);
    let (s, b) = c.delete(&format!("/vms/{id}")).await;
    assert_eq!((s, b), (200, json!({"status": "deleted"})));
    let (s, _) = c.get(&format!("/vms/{id}")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_marketplace_guest_runs_its_user_data() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let c = &g.admin;
    // A port the host node offers, for the guest's SSH.
    let (s, nodes) = c.get("/api/v2/hostnodes").await;
    assert_eq!(s, 200, "{nodes}");
    let node_id = str_of(&nodes["data"]["hostnodes"][0]["id"]).to_owned();
    let (s, node) = c.get(&format!("/api/v2/hostnodes/{node_id}")).await;
    assert_eq!(s, 200, "{node}");
    // Free in vmplane's books and on this machine right now (the range overlaps
    // the kernel's ephemeral ports, which other processes' sockets may hold).
    let offered: Vec<u64> =
        node["data"]["available_resources"]["available_ports"].as_array().expect("available ports").iter().filter_map(Value::as_u64).collect();
    let port = offered
        .iter()
        .copied()
        .find(|p| std::net::TcpListener::bind(("0.0.0.0", *p as u16)).is_ok())
        .unwrap_or_else(|| panic!("no offered port is free on this machine: {offered:?}"));
    let doc = json!({"data": {"type": "virtualmachine", "attributes": {
        "name": "market-guest",
        "image": "debian-12",
        "hostnode_id": node_id,
        "resources": {"vcpu_count": 1, "ram_gb": 1, "storage_gb": 2},
        "port_forwards": [{"internal_port": 22, "external_port": port}],
        "ssh_key": g.public_key(),
        "cloud_init": {"runcmd": ["echo marketplace-runcmd-$((6*7))", "echo 'Hello World'"], "packages": ["curl"], "package_update": true}
    }}});
    let (s, b) = c.post("/api/v2/instances", &doc).await;
    assert_eq!(s, 201, "{b}");
    let id = str_of(&b["data"]["id"]).to_owned();
    let running = wait_for("the marketplace instance running", BOOT, async || match c.try_get(&format!("/api/v2/instances/{id}")).await {
        Some((200, b)) if b["data"]["status"] == "running" => Ok(b["data"].clone()),
        Some((200, b)) if b["data"]["status"] == "failed" => panic!("{b}\n{}", g.worker.log_tail(40)),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(running["port_forwards"], json!([{"internal_port": 22, "external_port": port}]), "{running}");
    // runcmd ran in the guest's shell ($((6*7)) evaluated), its output on the console.
    let lines = wait_for("the runcmd output in the console log", Duration::from_secs(60), async || {
        let (s, tail) = c.get(&format!("/v1/vms/{id}/logs?tail=500")).await;
        let lines: Vec<String> = tail["lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_owned)).collect();
        // Lines are shipped shortly after the guest prints them: wait for the readiness line too.
        let ready = lines.iter().any(|l| l.starts_with("VMPLANE-READY"));
        if s == 200 && ready && lines.iter().any(|l| l.ends_with("marketplace-runcmd-42")) { Ok(lines) } else { Err(format!("{s} {lines:?}")) }
    })
    .await;
    assert!(lines.iter().any(|l| l.ends_with("Hello World")), "{lines:?}");
    // The external port reaches the guest's port 22, with the key given.
    assert_eq!(g.ssh(&json!({"ssh_port": port}), "echo ssh-$((40+2))").trim(), "ssh-42");
    assert!(g.ssh(&json!({"ssh_port": port}), "cat /var/lib/cloud/packages-requested").contains("curl"));
    let (s, b) = c.delete(&format!("/api/v2/instances/{id}")).await;
    assert_eq!(s, 202, "{b}");
}

/// Two qemu workers on this machine (separate data dirs and port ranges): a
/// real guest placed on each, and a cold move of a stopped guest from one to
/// the other, which boots there with what it wrote to its disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_moves_to_another_qemu_worker_with_its_disk() {
    guests_or_skip!();
    let g = GuestStack::start().await;
    let c = &g.admin;
    // The second worker: the stack's flags with its own data dir, port range and name.
    let mut args = Vec::new();
    let mut old = g.worker_args.iter();
    while let Some(a) = old.next() {
        match a.as_str() {
            "--data-dir" | "--port-range" => {
                old.next();
            }
            _ => args.push(a.clone()),
        }
    }
    let second_dir = g.data.with_file_name("d2");
    args.extend(["--data-dir".into(), second_dir.display().to_string(), "--port-range".into(), own_port_range()]);
    args.extend(["--host-name".to_owned(), "second".to_owned()]);
    let env = vec![("VMPLANE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned())];
    let mut second = Proc::start("second worker", BIN, args, env, second_dir.with_extension("log"));
    let hosts = wait_for("two qemu hosts online", BOOT, async || {
        let (_, h) = c.get("/v1/hosts").await;
        let online: Vec<Value> = h.as_array().into_iter().flatten().filter(|h| h["status"] == "online").cloned().collect();
        if online.len() == 2 { Ok(online) } else { Err(second.log_tail(5)) }
    })
    .await;
    let id_of = |name: &str| str_of(&hosts.iter().find(|h| (h["name"] == "second") == (name == "second")).unwrap()["id"]).to_owned();
    let (one, two) = (id_of("first"), id_of("second"));

    let body = |name: &str, host: &str| json!({ "name": name, "memory_mib": 256, "ssh_keys": [g.public_key()], "placement": { "host_id": host } });
    let a = g.running_vm(body("wanderer", &one)).await;
    let b = g.running_vm(body("resident", &two)).await;
    assert_eq!((a["host_id"].as_str(), b["host_id"].as_str()), (Some(one.as_str()), Some(two.as_str())));
    assert_eq!(g.ssh(&b, "hostname").trim(), "resident");
    g.ssh(&a, "echo carried-over > /root/marker && sync");

    let id = str_of(&a["id"]).to_owned();
    g.act(&id, "stop").await;
    let (s, moved) = c.post(&format!("/v1/vms/{id}/move"), &json!({ "host_id": two })).await;
    assert_eq!(s, 202, "{moved}");
    g.wait_op(str_of(&moved["operation"]["id"])).await;
    assert!(!g.vm_dir(&id).exists(), "the first host freed its copy");
    assert!(second_dir.join("worker/qemu/vms").join(&id).join("root.qcow2").exists(), "the second host holds the root disk");
    let vm = g.act(&id, "start").await;
    assert_eq!((vm["status"].as_str(), vm["host_id"].as_str()), (Some("running"), Some(two.as_str())), "{vm}\n{}", second.log_tail(40));
    assert_eq!(g.ssh(&vm, "cat /root/marker").trim(), "carried-over", "the disk came along");
    assert_eq!(qemu_processes(&id), 1, "one guest, on its new host");
    second.terminate().await;
}
