//! NATS admits only vmplane's own users, each limited to its role, and every
//! file vmplane writes is private. Run against `vmplane up` (sim driver),
//! which generates the users and starts nats-server itself, and against the
//! harness's separate processes.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmplane_bus::async_nats::{self, jetstream};
use vmplane_domain::tenancy::TenancyCommand;
use vmplane_domain::{ApiKeyId, Command, CommandEnvelope, OpId, OrgId, ProjectId, event, subjects};

/// `vmplane up` with the sim driver in a temp dir of its own.
struct Up {
    proc: Proc,
    data: PathBuf,
    base: String,
    _dir: tempfile::TempDir,
}

impl Up {
    async fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("vmplane-up-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "up",
            "--driver",
            "sim",
            "--data-dir",
            &data.display().to_string(),
            "--listen",
            &listen,
            "--sim-boot-delay-ms",
            "20",
            "--sim-ready-delay-ms",
            "20",
        ]
        .map(str::to_owned)
        .to_vec();
        let proc = Proc::start("vmplane up", BIN, args, vec![], dir.path().join("up.log"));
        let up = Self { proc, data, base: format!("http://{listen}"), _dir: dir };
        let c = up.admin().await;
        wait_for("vmplane up ready with a host online", WAIT, async || match c.try_get("/v1/hosts").await {
            Some((200, h)) if h.as_array().is_some_and(|a| a.iter().any(|h| h["status"] == "online")) => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await;
        up
    }

    /// A client with the admin token `up` generated.
    async fn admin(&self) -> Client {
        let path = self.data.join("admin-token");
        let token = wait_for("the generated admin token", WAIT, async || std::fs::read_to_string(&path).map_err(|e| e.to_string())).await;
        Client::new(&self.base, Some(token.trim()))
    }

    fn nats_dir(&self) -> PathBuf {
        self.data.join("nats")
    }

    /// The NATS URL from the generated server config.
    fn nats_url(&self) -> String {
        let conf: Value = serde_json::from_slice(&std::fs::read(self.nats_dir().join("nats.conf")).expect("nats.conf")).expect("nats.conf is JSON");
        format!("nats://{}", str_of(&conf["listen"]))
    }

    async fn connect(&self, role: Option<&str>) -> Result<async_nats::Client, async_nats::ConnectError> {
        nats_connect(&self.nats_dir(), &self.nats_url(), role).await
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.proc.log_tail(60));
        }
    }
}

/// Every file and directory under `root` whose mode lets group or others in.
fn shared_paths(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push((p.clone(), mode));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// A real API-key command, as the gateway would append it.
fn api_key_command(org: OrgId, name: &str) -> (ApiKeyId, Vec<u8>) {
    let id = ApiKeyId::new();
    let command = TenancyCommand::CreateApiKey { id, org, name: name.into(), secret_sha256: "0".repeat(64) };
    let env = CommandEnvelope {
        op: OpId::new(),
        org,
        project: ProjectId::DEFAULT,
        actor: "admin".into(),
        issued_at: time::OffsetDateTime::now_utc(),
        command: Command::Tenancy { command },
    };
    (id, event::encode(&env).expect("command encodes"))
}

/// Messages in a stream, read as the admin.
async fn stream_messages(admin: &async_nats::Client, stream: &str) -> u64 {
    let js = jetstream::new(admin.clone());
    js.get_stream(stream).await.expect("stream info").info().await.expect("stream info").state.messages
}

/// Publish through JetStream and wait (briefly) for the stream's ack.
async fn js_publish(client: &async_nats::Client, subject: String, payload: Vec<u8>) -> Result<(), String> {
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_secs(2)).build(client.clone());
    let ack = js.publish(subject, payload.into()).await.map_err(|e| e.to_string())?;
    ack.await.map(drop).map_err(|e| e.to_string())
}

#[tokio::test]
async fn vmplane_up_admits_only_its_users_each_to_its_own_part_and_keeps_its_files_private() {
    let up = Up::start().await;
    let admin_http = up.admin().await;
    // The whole path works under these permissions: a VM created over HTTP runs.
    let vm = admin_http.create_running_vm("perm-check").await;
    assert_eq!(vm["status"], "running");
    // `up` runs a webhook deliverer too, and it took the lease.
    wait_for("up's deliverer active", WAIT, async || if up.proc.log_mentions("this deliverer is active") { Ok(()) } else { Err(up.proc.log_tail(5)) }).await;
    // Normal operation needed nothing it was denied.
    assert!(!up.proc.log_mentions("violation"), "permission violations in normal operation:\n{}", up.proc.log_tail(80));

    // Files: the data dir and everything in it are private; secrets are 0600.
    assert_eq!(mode(&up.data), 0o700);
    let token = std::fs::read_to_string(up.data.join("admin-token")).unwrap();
    let hex = token.strip_prefix("vmpadmin_").expect("admin token prefix");
    assert!(hex.len() >= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "256 random bits, hex: {token}");
    for f in ["admin-token", "nats/nats.conf", "nats/admin.nk", "nats/gateway.nk", "nats/worker.nk", "nats/webhooks.nk"] {
        assert_eq!(mode(&up.data.join(f)), 0o600, "{f}");
    }
    assert_eq!(shared_paths(&up.data), vec![], "files readable by group or others");

    // nats-server listens on loopback only.
    assert!(up.nats_url().starts_with("nats://127.0.0.1:"), "{}", up.nats_url());

    // No credentials, no entry.
    let anonymous = up.connect(None).await;
    let err = anonymous.expect_err("an anonymous client must be refused").to_string().to_lowercase();
    assert!(err.contains("authorization") || err.contains("authentication"), "{err}");

    let nats_admin = up.connect(Some("admin")).await.expect("admin connects");
    let worker = up.connect(Some("worker")).await.expect("worker connects");
    let gateway = up.connect(Some("gateway")).await.expect("gateway connects");
    let org = OrgId::DEFAULT;

    // The worker's user cannot append a command (an API key in any org) ...
    let commands_before = stream_messages(&nats_admin, subjects::COMMAND_STREAM).await;
    let (refused_key, payload) = api_key_command(org, "from-worker");
    assert!(js_publish(&worker, subjects::tenancy_command(org), payload).await.is_err(), "the worker published a command");
    assert_eq!(stream_messages(&nats_admin, subjects::COMMAND_STREAM).await, commands_before);
    // ... while the same command from the gateway's user is carried out: the refusal is the permission.
    let (accepted_key, payload) = api_key_command(org, "from-gateway");
    js_publish(&gateway, subjects::tenancy_command(org), payload).await.expect("the gateway appends commands");
    wait_for("the gateway's API key", WAIT, async || {
        let (_, keys) = admin_http.get("/v1/api-keys").await;
        let ids: Vec<String> = keys.as_array().into_iter().flatten().map(|k| str_of(&k["id"]).to_owned()).collect();
        if ids.contains(&refused_key.to_string()) {
            panic!("the worker's command created a key: {keys}");
        }
        if ids.contains(&accepted_key.to_string()) { Ok(()) } else { Err(keys.to_string()) }
    })
    .await;

    // The gateway's user cannot append events, nor purge the event stream.
    let events_before = stream_messages(&nats_admin, subjects::EVENT_STREAM).await;
    let forged = subjects::tenancy_events(org, &ApiKeyId::new().to_string());
    assert!(js_publish(&gateway, forged, b"forged".to_vec()).await.is_err(), "the gateway appended an event");
    let purge = jetstream::ContextBuilder::new().timeout(Duration::from_secs(2)).build(gateway.clone());
    let purged = async { purge.get_stream(subjects::EVENT_STREAM).await.map_err(|e| e.to_string())?.purge().await.map_err(|e| e.to_string()) }.await;
    assert!(purged.is_err(), "the gateway purged the event stream");
    assert!(stream_messages(&nats_admin, subjects::EVENT_STREAM).await >= events_before);

    // The deliverer's user appends only webhook records: no command, no VM
    // event, and it cannot write a webhook secret (it only reads them).
    let webhooks = up.connect(Some("webhooks")).await.expect("the deliverer connects");
    let (_, payload) = api_key_command(org, "from-deliverer");
    assert!(js_publish(&webhooks, subjects::tenancy_command(org), payload).await.is_err(), "the deliverer published a command");
    let vm_subject = subjects::vm_events(org, vmplane_domain::VmId::new());
    assert!(js_publish(&webhooks, vm_subject, b"forged".to_vec()).await.is_err(), "the deliverer appended a VM event");
    let secret = format!("$KV.{}.wh_x", subjects::WEBHOOK_SECRET_BUCKET);
    assert!(js_publish(&webhooks, secret, b"forged".to_vec()).await.is_err(), "the deliverer wrote a webhook secret");
    assert_eq!(stream_messages(&nats_admin, &format!("KV_{}", subjects::WEBHOOK_SECRET_BUCKET)).await, 0);

    // A role reads only its own inbox: the worker cannot listen in on the gateway's replies.
    use futures::StreamExt;
    let mut spy = worker.subscribe("_INBOX_gateway.>").await.expect("subscribe call");
    let mut own = gateway.subscribe("_INBOX_gateway.probe").await.expect("subscribe call");
    worker.flush().await.unwrap();
    gateway.flush().await.unwrap();
    // Publish until the gateway's own subscription has one (a message sent
    // while a subscription is still being set up may be missed).
    let got = wait_for("the gateway reading its own inbox", WAIT, async || {
        nats_admin.publish("_INBOX_gateway.probe", "secret".into()).await.map_err(|e| e.to_string())?;
        nats_admin.flush().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_millis(300), own.next()).await {
            Ok(Some(m)) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(&got.payload[..], b"secret");
    assert!(tokio::time::timeout(Duration::from_secs(1), spy.next()).await.is_err(), "the worker read the gateway's inbox");
}

#[tokio::test]
async fn an_empty_admin_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: Vec<(&str, &str)>| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["up", "--driver", "sim", "--data-dir"]).arg(dir.path().join("data")).args(["--listen", &format!("127.0.0.1:{}", free_port())]);
        cmd.env_remove("VMPLANE_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("vmplane up");
        // A refused start exits at once; a started one would run until killed.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                return (status, String::from_utf8_lossy(&out.stderr).into_owned());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("vmplane up did not refuse to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (status, err) = run(vec![("VMPLANE_ADMIN_TOKEN", "  ")]);
    assert!(!status.success());
    assert!(err.contains("VMPLANE_ADMIN_TOKEN is set but empty"), "{err}");

    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/admin-token"), "\n").unwrap();
    let (status, err) = run(vec![]);
    assert!(!status.success());
    assert!(err.contains("admin-token is empty"), "{err}");
}

#[tokio::test]
async fn the_harness_stack_runs_with_authorization_and_refuses_strangers() {
    let stack = Stack::start().await;
    let vm = stack.admin.create_running_vm("harness-auth").await;
    assert_eq!(vm["status"], "running");
    assert!(stack.nats.connect(None).await.is_err(), "an anonymous client must be refused");
    assert!(!stack.nats.proc.log_mentions("violation"), "{}", stack.nats.proc.log_tail(40));
    assert_eq!(shared_paths(&stack.data_dir()), vec![], "files readable by group or others");
}

#[tokio::test]
async fn a_user_and_password_in_the_nats_url_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "--user", "gw", "--pass", "s3cr@t", "-sd", &dir.path().join("nats").display().to_string()]
        .map(str::to_owned)
        .to_vec();
    let _nats = Proc::start("nats-server", nats_server_bin(), args, vec![], dir.path().join("nats.log"));
    let gateway = |password: &str, name: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        let url = format!("nats://gw:{password}@127.0.0.1:{port}");
        let args = ["gateway", "--nats-url", &url, "--data-dir", &dir.path().join(name).display().to_string(), "--listen", &listen].map(str::to_owned).to_vec();
        let env = vec![("VMPLANE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned())];
        (Proc::start(name, BIN, args, env, dir.path().join(format!("{name}.log"))), Client::new(&format!("http://{listen}"), None))
    };
    // The password is percent-encoded in the URL, as URLs want.
    let (_good, good) = gateway("s3cr%40t", "good");
    wait_for("the gateway connected with the URL's user", WAIT, async || match good.try_get("/readyz").await {
        Some((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let (bad_proc, bad) = gateway("wrong", "bad");
    // Refused by the server, so never ready. The refusal can be logged
    // before the gateway listens (the bus connects in the background while
    // the projections open), so wait for both before asking.
    let (status, body) = wait_for("the server to refuse the wrong password", WAIT, async || {
        if !bad_proc.log_mentions("authorization violation") {
            return Err(bad_proc.log_tail(5));
        }
        bad.try_get("/readyz").await.ok_or_else(|| "the gateway is not listening yet".to_owned())
    })
    .await;
    assert_eq!(status, 503, "{body}");
}
