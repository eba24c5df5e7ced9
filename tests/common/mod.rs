//! The integration-test harness: a real `nats-server` and real `vmplane`
//! processes (gateway, worker with the sim driver) on free loopback ports in a
//! temp dir, and a small HTTP/SSE client. Nothing is mocked.
//!
//! Every wait is a bounded poll ([`wait_for`]); no test relies on a fixed
//! sleep for correctness. On a failing test the processes' log tails are
//! printed and the temp dir is kept.

#![allow(dead_code)] // each test crate uses a different part of the harness

pub mod browser;

use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use reqwest::Method;

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_vmplane");
/// The admin token every gateway of the harness is started with.
pub const ADMIN_TOKEN: &str = "vmplane-test-admin-token";
/// Upper bound of every wait for an asynchronous effect (VM running, host online, ...).
pub const WAIT: Duration = Duration::from_secs(30);
/// Default per-request timeout of the client (long polls use up to 10 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Poll `probe` until it returns `Ok`, at most `timeout`. `Err` carries what
/// was last observed, for the panic message when time runs out.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A loopback port nobody listens on right now, never handed out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port").local_addr().unwrap().port();
        if given.insert(port) {
            return port;
        }
    }
}

/// `nats-server`, from the Debian package or `PATH`.
pub fn nats_server_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"].iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("nats-server is not installed; the integration tests need it. Run ./scripts/test (it installs it), or `apt-get install nats-server`")
    })
}

/// A child process with its command line kept for restarts; output goes to a
/// log file. Killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawn `program args` with extra `env`, appending its output to `log`.
    pub fn start(name: &str, program: impl Into<PathBuf>, args: Vec<String>, env: Vec<(String, String)>, log: PathBuf) -> Self {
        let mut p = Self { name: name.to_owned(), program: program.into(), args, env, log, child: None };
        p.respawn();
        p
    }

    /// Start the process again with the same command line. It must not be running.
    ///
    /// Called from the test's own thread: the child gets PDEATHSIG, which fires
    /// when the *spawning thread* exits, so that an aborted test run leaves no
    /// orphans behind (Drop handles the normal case).
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut out = OpenOptions::new().create(true).append(true).open(&self.log).expect("opening the log file");
        use std::io::Write;
        let _ = writeln!(out, "===== harness: starting {} {}", self.program.display(), self.args.join(" "));
        let err = out.try_clone().expect("cloning the log file handle");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("VMPLANE_ADMIN_TOKEN")
            .env_remove("VMPLANE_RATE_LIMIT")
            .env_remove("NATS_URL")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // SAFETY: prctl(2) is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawning {} ({}): {e}", self.name, self.program.display())));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has exited (it stays "not running" afterwards).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within 20 s of SIGTERM\n{}", self.name, self.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM (if running) and start again with the same command line.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate().await;
        }
        self.respawn();
    }

    /// Whether the process's log contains `needle` (case-insensitive).
    pub fn log_mentions(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).unwrap_or_default().to_lowercase().contains(&needle.to_lowercase())
    }

    /// The last `n` lines of the process's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("----- {} ({}), last {n} lines -----\n{}", self.name, self.log.display(), lines[lines.len().saturating_sub(n)..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Write an installation's NATS users and server config with `vmplane nats
/// init` into `dir` (JetStream stores there too); returns the config file.
pub fn nats_init(dir: &Path, listen: &str) -> PathBuf {
    let out = Command::new(BIN)
        .args(["nats", "init", "--out-dir"])
        .arg(dir)
        .args(["--listen", listen, "--server-name", "vmplane-test"])
        .env("NO_COLOR", "1")
        .output()
        .expect("running vmplane nats init");
    assert!(out.status.success(), "vmplane nats init: {}", String::from_utf8_lossy(&out.stderr));
    dir.join("nats.conf")
}

/// `--nats-url URL --nats-creds FILE` for a process of `role` (admin, gateway, worker)
/// of the installation whose NATS files are in `dir`.
pub fn nats_args(dir: &Path, url: &str, role: &str) -> Vec<String> {
    vec!["--nats-url".into(), url.into(), "--nats-creds".into(), dir.join(format!("{role}.nk")).display().to_string()]
}

/// A NATS client connected as `role` of the installation in `dir`, with that
/// role's inbox prefix (its only readable inbox), or anonymously when `None`.
pub async fn nats_connect(dir: &Path, url: &str, role: Option<&str>) -> Result<vmplane_bus::async_nats::Client, vmplane_bus::async_nats::ConnectError> {
    use vmplane_bus::async_nats::ConnectOptions;
    let opts = match role {
        Some(role) => {
            let seed = std::fs::read_to_string(dir.join(format!("{role}.nk"))).expect("reading a role's seed");
            ConnectOptions::with_nkey(seed.trim().to_owned()).custom_inbox_prefix(format!("_INBOX_{role}"))
        }
        None => ConnectOptions::new(),
    };
    opts.connection_timeout(Duration::from_secs(5)).connect(url).await
}

/// A JetStream-enabled nats-server with authorization on (users from
/// [`nats_init`]) on a fixed loopback port and store dir, which can be
/// stopped and started again on the same port and store.
pub struct Nats {
    pub port: u16,
    pub proc: Proc,
    /// Its config, users' seeds and store.
    pub dir: PathBuf,
}

impl Nats {
    /// Start a server storing under `dir/nats`, logging to `dir/nats.log`.
    pub async fn start_in(dir: &Path) -> Self {
        let files = dir.join("nats");
        for attempt in 1.. {
            let port = free_port();
            let config = nats_init(&files, &format!("127.0.0.1:{port}"));
            let args = vec!["-c".to_owned(), config.display().to_string()];
            let mut n = Self { port, proc: Proc::start("nats-server", nats_server_bin(), args, vec![], dir.join("nats.log")), dir: files.clone() };
            match n.listening().await {
                Ok(()) => return n,
                // Another process took the free port before the server bound it.
                Err(_) if attempt < 3 && n.proc.log_mentions("address already in use") => continue,
                Err(status) => panic!("nats-server exited at start ({status})\n{}", n.proc.log_tail(40)),
            }
        }
        unreachable!()
    }

    /// `--nats-url ... --nats-creds ...` for a process of `role`.
    pub fn args(&self, role: &str) -> Vec<String> {
        nats_args(&self.dir, &self.url(), role)
    }

    /// A client connected as `role`, or anonymously.
    pub async fn connect(&self, role: Option<&str>) -> Result<vmplane_bus::async_nats::Client, vmplane_bus::async_nats::ConnectError> {
        nats_connect(&self.dir, &self.url(), role).await
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait: the store is flushed. (nats-server 2.9 exits with
    /// status 1 on SIGTERM even when it shut down cleanly.)
    pub async fn stop(&mut self) {
        self.proc.terminate().await;
    }

    /// Start again on the same port and store, and wait until it accepts TCP.
    pub async fn start(&mut self) {
        self.proc.respawn();
        if let Err(status) = self.listening().await {
            panic!("nats-server exited at restart ({status})\n{}", self.proc.log_tail(40));
        }
    }

    /// Wait until the server accepts TCP; `Err` if it exited instead.
    async fn listening(&mut self) -> Result<(), ExitStatus> {
        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.proc.exited() {
                return Err(status);
            }
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "nats-server is not listening on {addr}\n{}", self.proc.log_tail(40));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The whole stack
// ---------------------------------------------------------------------------

/// How to start a [`Stack`].
#[derive(Clone)]
pub struct StackOpts {
    pub sim_boot_delay_ms: u64,
    pub sim_ready_delay_ms: u64,
    /// Extra environment for the gateway (e.g. `VMPLANE_RATE_LIMIT`).
    pub gateway_env: Vec<(String, String)>,
    /// Run a webhook deliverer (`vmplane webhooks`) with these extra arguments.
    pub webhooks: Option<Vec<String>>,
}

impl Default for StackOpts {
    fn default() -> Self {
        Self { sim_boot_delay_ms: 50, sim_ready_delay_ms: 50, gateway_env: vec![], webhooks: None }
    }
}

/// nats-server + `vmplane gateway` + `vmplane worker --driver sim`, sharing one
/// data dir, in a temp dir of their own.
pub struct Stack {
    // Field order is drop order: processes die before the temp dir goes.
    pub gateway: Proc,
    pub worker: Proc,
    /// The webhook deliverer, when [`StackOpts::webhooks`] asked for one.
    pub webhooks: Option<Proc>,
    pub nats: Nats,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// A client with the admin token.
    pub admin: Client,
    /// NATS users (public keys) a test makes break the rules on purpose:
    /// their permission violations do not fail it.
    expected_violators: std::sync::Mutex<Vec<String>>,
    dir: Option<tempfile::TempDir>,
}

impl Stack {
    /// A stack with the default (fast) sim delays, ready to create VMs.
    pub async fn start() -> Self {
        Self::start_with(StackOpts::default()).await
    }

    /// Start everything and wait until the gateway is ready and the worker's host is online.
    pub async fn start_with(opts: StackOpts) -> Self {
        let dir = tempfile::Builder::new().prefix("vmplane-it-").tempdir().expect("creating a temp dir");
        let root = dir.path().to_owned();
        let nats = Nats::start_in(&root).await;
        let data = root.join("data").to_string_lossy().into_owned();
        let admin_env = ("VMPLANE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned());
        let mut gw_env = vec![admin_env.clone()];
        gw_env.extend(opts.gateway_env.iter().cloned());

        let mut wk_args = vec!["worker".to_owned()];
        wk_args.extend(nats.args("worker"));
        wk_args.extend(
            [
                "--data-dir",
                &data,
                "--driver",
                "sim",
                "--sim-boot-delay-ms",
                &opts.sim_boot_delay_ms.to_string(),
                "--sim-ready-delay-ms",
                &opts.sim_ready_delay_ms.to_string(),
                "--ack-wait-secs",
                "2",
            ]
            .map(str::to_owned),
        );
        let worker = Proc::start("worker", BIN, wk_args, vec![admin_env], root.join("worker.log"));

        // The gateway, on a free port; again on another if that one was taken meanwhile.
        let mut attempt = 0;
        let (gateway, base) = loop {
            attempt += 1;
            let listen = format!("127.0.0.1:{}", free_port());
            let mut gw_args = vec!["gateway".to_owned()];
            gw_args.extend(nats.args("gateway"));
            gw_args.extend(["--data-dir", &data, "--listen", &listen].map(str::to_owned));
            let mut gateway = Proc::start("gateway", BIN, gw_args, gw_env.clone(), root.join("gateway.log"));
            let base = format!("http://{listen}");
            match gateway_ready(&mut gateway, &Client::new(&base, None)).await {
                Ok(()) => break (gateway, base),
                Err(_) if attempt < 3 && gateway.log_mentions("address already in use") => continue,
                Err(status) => panic!("the gateway exited at start ({status})\n{}\n{}", gateway.log_tail(40), worker.log_tail(20)),
            }
        };
        let webhooks = opts.webhooks.map(|extra| {
            let mut args = vec!["webhooks".to_owned()];
            args.extend(nats.args("webhooks"));
            args.extend(["--data-dir".to_owned(), data.clone()]);
            args.extend(extra);
            Proc::start("webhooks", BIN, args, vec![], root.join("webhooks.log"))
        });
        let admin = Client::new(&base, Some(ADMIN_TOKEN));
        let stack = Self { gateway, worker, webhooks, nats, base, admin, expected_violators: Default::default(), dir: Some(dir) };
        stack.wait_host_online().await;
        stack
    }

    /// The temp dir holding everything.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// The `--data-dir` shared by the gateway and the worker.
    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// The sim driver's persisted guest for a VM.
    pub fn sim_guest(&self, vm: &str) -> Option<Value> {
        let path = self.data_dir().join("worker").join("sim").join(format!("{vm}.json"));
        std::fs::read(path).ok().map(|b| serde_json::from_slice(&b).expect("sim guest file is JSON"))
    }

    /// A client acting with `token` (an API key secret).
    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.base, Some(token))
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.base, None)
    }

    /// Wait until `GET /readyz` answers 200; fails at once if the gateway exits.
    pub async fn wait_ready(&mut self) {
        let c = self.anonymous();
        if let Err(status) = gateway_ready(&mut self.gateway, &c).await {
            panic!("the gateway exited ({status})");
        }
    }

    /// Wait until a host is `online` in `GET /v1/hosts`; returns it.
    pub async fn wait_host_online(&self) -> Value {
        let c = &self.admin;
        wait_for("a host online in /v1/hosts", WAIT, async || match c.try_get("/v1/hosts").await {
            Some((200, hosts)) => hosts.as_array().and_then(|a| a.iter().find(|h| h["status"] == "online")).cloned().ok_or_else(|| hosts.to_string()),
            other => Err(format!("{other:?}")),
        })
        .await
    }

    /// An online host in `GET /v1/hosts` for which `ok` holds (waiting for `what`).
    pub async fn wait_host(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let c = &self.admin;
        wait_for(what, WAIT, async || match c.try_get("/v1/hosts").await {
            Some((200, hosts)) => hosts.as_array().and_then(|a| a.iter().find(|h| h["status"] == "online" && ok(h))).cloned().ok_or_else(|| hosts.to_string()),
            other => Err(format!("{other:?}")),
        })
        .await
    }

    /// `vmplane projections rebuild` against this stack's NATS and data dir.
    pub fn rebuild_projections(&self) -> std::process::Output {
        Command::new(BIN)
            .args(["projections", "rebuild"])
            .args(self.nats.args("gateway"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .env_remove("NATS_URL")
            .env("NO_COLOR", "1")
            .output()
            .expect("running vmplane projections rebuild")
    }
}

/// Wait until the gateway answers `GET /readyz` with 200 (at most [`WAIT`]);
/// `Err` as soon as its process has exited instead.
async fn gateway_ready(gateway: &mut Proc, c: &Client) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = gateway.exited() {
            return Err(status);
        }
        let last = c.try_get("/readyz").await;
        if matches!(last, Some((200, _))) {
            return Ok(());
        }
        assert!(Instant::now() < deadline, "gateway /readyz not 200 within {WAIT:?}; last: {last:?}\n{}", gateway.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Stack {
    /// The NATS user with this public key is tested against its permissions:
    /// its violations (nats-server logs the user's key) are expected.
    pub fn expect_violations_of(&self, nkey: &str) {
        self.expected_violators.lock().unwrap().push(nkey.to_owned());
    }

    /// Whether nats-server logged a violation by any user not expected to make one.
    fn unexpected_violations(&self) -> bool {
        let expected = self.expected_violators.lock().unwrap();
        let log = std::fs::read_to_string(&self.nats.proc.log).unwrap_or_default();
        log.lines().any(|l| l.to_lowercase().contains("violation") && !expected.iter().any(|k| l.contains(k.as_str())))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Every process runs with only its role's NATS permissions: anything
        // the stack needed and was denied is a failure of the test that ran it.
        if !std::thread::panicking() && self.unexpected_violations() {
            panic!("NATS denied a vmplane process something it needed:\n{}", self.nats.proc.log_tail(20));
        }
        if std::thread::panicking() {
            eprintln!("{}\n{}\n{}", self.nats.proc.log_tail(20), self.worker.log_tail(60), self.gateway.log_tail(60));
            if let Some(w) = &self.webhooks {
                eprintln!("{}", w.log_tail(60));
            }
            if let Some(dir) = self.dir.take() {
                eprintln!("----- test files kept in {}", dir.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// A response, its body parsed as JSON when it is JSON (else a JSON string).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// A tiny client for the gateway: bearer token, extra headers, JSON in and out.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    http: reqwest::Client,
    timeout: Duration,
}

impl Client {
    pub fn new(base: &str, token: Option<&str>) -> Self {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().expect("building the HTTP client");
        Self { base: base.to_owned(), token: token.map(str::to_owned), headers: vec![], http, timeout: REQUEST_TIMEOUT }
    }

    /// The same client with another bearer token.
    pub fn with_token(&self, token: &str) -> Self {
        Self { token: Some(token.to_owned()), ..self.clone() }
    }

    /// The same client sending `name: value` on every request.
    pub fn with_header(&self, name: &str, value: &str) -> Self {
        let mut c = self.clone();
        c.headers.push((name.to_owned(), value.to_owned()));
        c
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { timeout, ..self.clone() }
    }

    /// A request with the token and headers, and no timeout (for streams).
    pub fn request_untimed(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in &self.headers {
            rb = rb.header(k, v);
        }
        rb
    }

    /// A request with the token, headers and the client's timeout.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_untimed(method, path).timeout(self.timeout)
    }

    /// Send and read the whole response; panics on transport errors.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        self.try_send(rb).await.unwrap_or_else(|e| panic!("request to {} failed: {e}", self.base))
    }

    /// Send and read the whole response.
    pub async fn try_send(&self, rb: reqwest::RequestBuilder) -> Result<Resp, reqwest::Error> {
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Resp { status, headers, body })
    }

    /// `GET`, or `None` when the gateway cannot be reached (used while waiting for it).
    pub async fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        self.try_send(self.request(Method::GET, path)).await.ok().map(|r| (r.status, r.body))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.send(self.request(Method::GET, path)).await;
        (r.status, r.body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.send(self.request(Method::POST, path).json(body)).await;
        (r.status, r.body)
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.send(self.request(Method::PATCH, path).json(body)).await;
        (r.status, r.body)
    }

    /// `POST` without a body (the VM actions take none).
    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        let r = self.send(self.request(Method::POST, path)).await;
        (r.status, r.body)
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.send(self.request(Method::DELETE, path)).await;
        (r.status, r.body)
    }

    // ----- domain helpers -----

    /// `POST /v1/vms`, asserting 202.
    pub async fn create_vm(&self, body: Value) -> Value {
        let (s, b) = self.post("/v1/vms", &body).await;
        assert_eq!(s, 202, "POST /v1/vms {body}: {b}");
        b
    }

    /// Create a VM with only a name and wait until it runs and its operation succeeded.
    pub async fn create_running_vm(&self, name: &str) -> Value {
        let b = self.create_vm(json!({ "name": name })).await;
        self.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
        let vm = self.vm(str_of(&b["id"])).await;
        assert_eq!(vm["status"], "running", "{vm}");
        vm
    }

    /// `GET /v1/vms/{id}`, asserting 200.
    pub async fn vm(&self, id: &str) -> Value {
        let (s, b) = self.get(&format!("/v1/vms/{id}")).await;
        assert_eq!(s, 200, "GET /v1/vms/{id}: {b}");
        b
    }

    /// Long-poll the operation until it is `succeeded` or `failed`.
    pub async fn wait_op(&self, op: &str) -> Value {
        wait_for(&format!("operation {op} to finish"), WAIT, async || {
            let (s, b) = self.get(&format!("/v1/operations/{op}?wait=10")).await;
            match (s, b["status"].as_str()) {
                (200, Some("succeeded" | "failed")) => Ok(b),
                _ => Err(format!("{s} {b}")),
            }
        })
        .await
    }

    /// Long-poll the operation and assert it succeeded.
    pub async fn wait_op_succeeded(&self, op: &str) -> Value {
        let b = self.wait_op(op).await;
        assert_eq!(b["status"], "succeeded", "operation {op}: {b}");
        b
    }

    /// Poll the VM until it has `status`; a VM that fails on the way fails the test at once.
    pub async fn wait_vm_status(&self, id: &str, status: &str) -> Value {
        wait_for(&format!("vm {id} to be {status}"), WAIT, async || {
            let vm = self.vm(id).await;
            if vm["status"] == status {
                return Ok(vm);
            }
            assert!(vm["status"] != "failed", "vm {id} failed while waiting for {status}: {vm}");
            Err(vm["status"].to_string())
        })
        .await
    }

    /// `POST /v1/vms/{id}/{action}` (or `DELETE` for `delete`), asserting 202; returns the body.
    pub async fn act(&self, id: &str, action: &str) -> Value {
        let (s, b) = match action {
            "delete" => self.delete(&format!("/v1/vms/{id}")).await,
            _ => self.post_empty(&format!("/v1/vms/{id}/{action}")).await,
        };
        assert_eq!(s, 202, "{action} {id}: {b}");
        assert!(b["operation"]["id"].is_string(), "{b}");
        b
    }

    /// An action, its operation awaited (must succeed), and the VM's status checked.
    pub async fn act_and_wait(&self, id: &str, action: &str, status: &str) -> Value {
        let b = self.act(id, action).await;
        self.wait_op_succeeded(str_of(&b["operation"]["id"])).await;
        let vm = self.vm(id).await;
        assert_eq!(vm["status"], status, "after {action}: {vm}");
        vm
    }

    /// `GET /v1/vms/{id}/events`, asserting 200.
    pub async fn vm_events(&self, id: &str) -> Vec<Value> {
        let (s, b) = self.get(&format!("/v1/vms/{id}/events")).await;
        assert_eq!(s, 200, "events of {id}: {b}");
        b.as_array().cloned().unwrap_or_else(|| panic!("events are not a list: {b}"))
    }

    /// The VM's event types, oldest first.
    pub async fn event_types(&self, id: &str) -> Vec<String> {
        self.vm_events(id).await.iter().map(|e| str_of(&e["type"]).to_owned()).collect()
    }

    /// `GET /v1/vms` total count with the given query.
    pub async fn vm_total(&self, query: &str) -> u64 {
        let (s, b) = self.get(&format!("/v1/vms{query}")).await;
        assert_eq!(s, 200, "{b}");
        b["pagination"]["total_items"].as_u64().unwrap_or_else(|| panic!("no total: {b}"))
    }

    /// Admin: create an org (201) and return its id.
    pub async fn create_org(&self, name: &str) -> String {
        let (s, b) = self.post("/v1/orgs", &json!({ "name": name })).await;
        assert_eq!(s, 201, "POST /v1/orgs: {b}");
        str_of(&b["id"]).to_owned()
    }

    /// Admin: create an API key in `org` (201) and return its secret.
    pub async fn create_key(&self, org: &str, name: &str) -> String {
        let (s, b) = self.post("/v1/api-keys", &json!({ "name": name, "org_id": org })).await;
        assert_eq!(s, 201, "POST /v1/api-keys: {b}");
        assert_eq!(b["org_id"], org, "{b}");
        str_of(&b["secret"]).to_owned()
    }

    /// Open `GET /v1/events`, optionally resuming after `last_event_id`; asserts 200 and the content type.
    pub async fn sse(&self, last_event_id: Option<u64>) -> SseStream {
        let mut rb = self.request_untimed(Method::GET, "/v1/events").header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id.to_string());
        }
        SseStream::open(rb).await
    }
}

/// The string in a JSON value, or a panic naming it.
pub fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v}"))
}

// ---------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------

/// One SSE event: `id:`, `event:` and the JSON `data:`.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

/// A parsed `text/event-stream` response body.
pub struct SseStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buf: Vec<u8>,
}

impl SseStream {
    /// Send the request; assert 200 and `text/event-stream`.
    pub async fn open(rb: reqwest::RequestBuilder) -> Self {
        let resp = rb.send().await.expect("opening the event stream");
        let status = resp.status().as_u16();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if status != 200 {
            panic!("GET /v1/events: {status} {}", resp.text().await.unwrap_or_default());
        }
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        Self { body: Box::pin(resp.bytes_stream().map(|r| r.map(|b| b.to_vec()))), buf: Vec::new() }
    }

    /// The next event with data, or `None` if none arrives within `within` (or the stream ends).
    pub async fn next_event(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(ev) = parse_sse_block(&String::from_utf8(block).expect("SSE is UTF-8")) {
                    return Some(ev);
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend(chunk.iter().filter(|b| **b != b'\r')),
                Ok(Some(Err(e))) => panic!("event stream broke: {e}"),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Read events until `done` says so (it sees each event), at most `within` in all.
    pub async fn read_until(&mut self, within: Duration, mut done: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(ev) = self.next_event(left).await else {
                let tail: Vec<String> = out.iter().rev().take(10).map(|e: &SseEvent| format!("{} {}", e.id, e.event)).collect();
                panic!("event stream: condition not met within {within:?} after {} events (last: {tail:?})", out.len());
            };
            let stop = done(&ev);
            out.push(ev);
            if stop {
                return out;
            }
        }
    }
}

/// One SSE block; `None` for comments/keep-alives without data.
fn parse_sse_block(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data): (Option<String>, Option<String>, Vec<&str>) = (None, None, vec![]);
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    Some(SseEvent {
        id: id.as_deref().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("SSE event without a numeric id: {block:?}")),
        event: event.unwrap_or_else(|| panic!("SSE event without an event type: {block:?}")),
        data: serde_json::from_str(&data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}")),
    })
}

// ---------------------------------------------------------------------------
// Worker restarts, NATS access and process checks (faults tests)
// ---------------------------------------------------------------------------

impl Stack {
    /// The worker's command line (to start another worker like it).
    pub fn worker_args(&self) -> Vec<String> {
        self.worker.args.clone()
    }

    /// kill -9 the worker and start it again with `extra` arguments added.
    pub fn respawn_worker_with(&mut self, extra: &[&str]) {
        self.worker.kill9();
        let mut args = self.worker.args.clone();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.worker = Proc::start("worker", BIN, args, self.worker.env.clone(), self.worker.log.clone());
    }

    /// A NATS client of this stack's server with the admin's credentials, for
    /// tests that publish commands or inspect consumers directly.
    pub async fn nats_client(&self) -> vmplane_bus::async_nats::Client {
        self.nats.connect(Some("admin")).await.expect("connecting to the test nats-server as its admin")
    }

    /// Pids of every live process whose command line mentions this stack's temp dir.
    pub fn processes_in_root(&self) -> Vec<u32> {
        let root = self.root().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let zombie =
                std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')));
            if !zombie && String::from_utf8_lossy(&cmdline).contains(&root) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Restart the worker with `extra` arguments added to its command line
    /// (e.g. `--sim-memory-mib 2048`); it re-announces its host. Callers wait
    /// for the change they need in `GET /v1/hosts`.
    pub async fn restart_worker_with(&mut self, extra: &[&str]) {
        self.worker.args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.worker.restart().await;
    }

    /// Another gateway with its own projections, on `nats_url` (this stack's
    /// NATS, or a proxy in front of it), ready; returns it and an admin client.
    pub async fn start_gateway(&self, name: &str, nats_url: &str) -> (Proc, Client) {
        start_gateway_in(self.root(), name, nats_args(&self.nats.dir, nats_url, "gateway")).await
    }
}

/// A gateway named `name` with its own data dir `root/<name>` (projections)
/// and log `root/<name>.log`, connecting with `nats` (`--nats-url ...`
/// arguments), on a free port, ready; returns it and an admin client.
pub async fn start_gateway_in(root: &Path, name: &str, nats: Vec<String>) -> (Proc, Client) {
    let data = root.join(name).to_string_lossy().into_owned();
    let env = vec![("VMPLANE_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned())];
    for attempt in 1.. {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["gateway".to_owned()];
        args.extend(nats.iter().cloned());
        args.extend(["--data-dir", &data, "--listen", &listen].map(str::to_owned));
        let mut gw = Proc::start(name, BIN, args, env.clone(), root.join(format!("{name}.log")));
        let base = format!("http://{listen}");
        match gateway_ready(&mut gw, &Client::new(&base, None)).await {
            Ok(()) => return (gw, Client::new(&base, Some(ADMIN_TOKEN))),
            Err(_) if attempt < 3 && gw.log_mentions("address already in use") => continue,
            Err(status) => panic!("{name} exited at start ({status})\n{}", gw.log_tail(40)),
        }
    }
    unreachable!()
}

/// A sim worker named `name` (its host name too) with its own data dir
/// `root/<name>` and log `root/<name>.log`, connecting with `nats`, fast
/// simulated boots and `extra` arguments. Callers wait for its host.
pub fn start_sim_worker_in(root: &Path, name: &str, nats: Vec<String>, extra: &[&str]) -> Proc {
    let mut args = vec!["worker".to_owned()];
    args.extend(nats);
    let data = root.join(name).to_string_lossy().into_owned();
    args.extend(
        ["--data-dir", &data, "--host-name", name, "--driver", "sim", "--sim-boot-delay-ms", "20", "--sim-ready-delay-ms", "20", "--ack-wait-secs", "2"]
            .map(str::to_owned),
    );
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Proc::start(name, BIN, args, vec![], root.join(format!("{name}.log")))
}

// ---------------------------------------------------------------------------
// A nats-server cluster (cluster tests)
// ---------------------------------------------------------------------------

/// nats-servers forming one JetStream cluster on loopback: each node with its
/// own store dir and config, all admitting the same users (one `vmplane nats
/// init`, as for a single [`Nats`]). Each node can be killed and started
/// again on its port and store.
pub struct NatsCluster {
    pub nodes: Vec<Nats>,
    /// The users' seeds (shared by every node).
    pub dir: PathBuf,
}

impl NatsCluster {
    /// Start `size` nodes under `root/nats-<i>` with their users' seeds in
    /// `root/nats`, and wait until JetStream has elected its meta leader.
    pub async fn start_in(root: &Path, size: usize) -> Self {
        let dir = root.join("nats");
        let base: Value = serde_json::from_slice(&std::fs::read(nats_init(&dir, "127.0.0.1:4222")).expect("reading nats.conf")).expect("nats.conf is JSON");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let mut configs = Vec::new();
        for (i, (port, route_port)) in ports.iter().enumerate() {
            let node_dir = root.join(format!("nats-{i}"));
            std::fs::create_dir_all(&node_dir).expect("creating a node dir");
            let mut config = base.clone();
            config["server_name"] = json!(format!("vmplane-test-{i}"));
            config["listen"] = json!(format!("127.0.0.1:{port}"));
            config["pid_file"] = json!(node_dir.join("nats.pid"));
            config["jetstream"] = json!({ "store_dir": node_dir.join("store") });
            config["cluster"] = json!({
                "name": "vmplane-test",
                "listen": format!("127.0.0.1:{route_port}"),
                "routes": ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}")).collect::<Vec<_>>(),
            });
            let conf = node_dir.join("nats.conf");
            std::fs::write(&conf, serde_json::to_vec_pretty(&config).unwrap()).expect("writing a node's nats.conf");
            configs.push((*port, conf));
        }
        Self::start_configs(root, &dir, configs).await
    }

    /// Start one node per `(client port, config file)`, logging to
    /// `root/nats-<i>.log`, with the users' seeds in `dir`, and wait until
    /// JetStream has elected its meta leader.
    pub async fn start_configs(root: &Path, dir: &Path, configs: Vec<(u16, PathBuf)>) -> Self {
        let mut nodes = Vec::new();
        for (i, (port, conf)) in configs.into_iter().enumerate() {
            let args = vec!["-c".to_owned(), conf.display().to_string()];
            let proc = Proc::start(&format!("nats-{i}"), nats_server_bin(), args, vec![], root.join(format!("nats-{i}.log")));
            let mut node = Nats { port, proc, dir: dir.to_owned() };
            if let Err(status) = node.listening().await {
                panic!("nats-{i} exited at start ({status})\n{}", node.proc.log_tail(40));
            }
            nodes.push(node);
        }
        let cluster = Self { nodes, dir: dir.to_owned() };
        cluster.wait_jetstream().await;
        cluster
    }

    /// Every node's URL, comma-separated (what `--nats-url` takes for a cluster).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(Nats::url).collect::<Vec<_>>().join(",")
    }

    /// `--nats-url <all nodes> --nats-creds ... --stream-replicas <size>` for a process of `role`.
    pub fn args(&self, role: &str) -> Vec<String> {
        let mut args = nats_args(&self.dir, &self.urls(), role);
        args.extend(["--stream-replicas".to_owned(), self.nodes.len().to_string()]);
        args
    }

    /// A client connected as the admin to whichever node answers.
    pub async fn admin(&self) -> vmplane_bus::async_nats::Client {
        let urls: Vec<vmplane_bus::async_nats::ServerAddr> = self.nodes.iter().map(|n| n.url().parse().unwrap()).collect();
        let seed = std::fs::read_to_string(self.dir.join("admin.nk")).expect("reading the admin seed");
        vmplane_bus::async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            .custom_inbox_prefix("_INBOX_admin")
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .expect("connecting to the cluster as its admin")
    }

    /// Wait until the cluster answers JetStream requests (a meta leader is elected).
    pub async fn wait_jetstream(&self) {
        let client = self.admin().await;
        wait_for("the JetStream cluster to elect a meta leader", WAIT, async || {
            match tokio::time::timeout(Duration::from_secs(2), client.request("$JS.API.INFO", "".into())).await {
                Ok(Ok(msg)) => match serde_json::from_slice::<Value>(&msg.payload) {
                    Ok(info) if info.get("error").is_none() => Ok(()),
                    other => Err(format!("{other:?}")),
                },
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    /// `$JS.API.STREAM.INFO.<stream>` as the admin: the stream's config, state and cluster.
    pub async fn stream_info(&self, client: &vmplane_bus::async_nats::Client, stream: &str) -> Result<Value, String> {
        let msg = tokio::time::timeout(Duration::from_secs(3), client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into()))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let info: Value = serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())?;
        if info.get("error").is_some() { Err(info.to_string()) } else { Ok(info) }
    }

    /// The log lines of any node where it denied a user something.
    pub fn violations(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                std::fs::read_to_string(&n.proc.log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.to_lowercase().contains("violation"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
