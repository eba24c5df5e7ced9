//! vmplane's NATS: the users and server configuration of an installation
//! (`vmplane nats init`), and the local nats-server `vmplane up` runs when no
//! `--nats-url` is given: JetStream on, loopback only, authorization on, its
//! store under the data dir, stopped with us.
//!
//! `init` writes one NKey seed per role (`admin.nk`, `gateway.nk`,
//! `worker.nk`, mode 0600, kept across runs) and `nats.conf` listing their
//! public keys with each role's permissions (see `vmplane_bus::auth`). The
//! config is JSON, which nats-server reads natively, so no value needs
//! hand-escaping.

use anyhow::{Context, bail};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};
use vmplane_bus::auth::{self, Credentials, Role};

/// The files of one installation's NATS, in one directory.
#[derive(Debug, Clone)]
pub struct NatsFiles {
    pub dir: PathBuf,
}

impl NatsFiles {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    /// The server configuration.
    pub fn config(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    /// A role's credentials.
    pub fn creds(&self, role: Role) -> Credentials {
        Credentials::NkeySeed(role.seed_file(&self.dir))
    }

    /// Create the seeds that do not exist yet and (re)write the server
    /// configuration: listening on `listen`, JetStream storing under `store`.
    pub fn init(&self, listen: &str, store: &Path, server_name: &str) -> anyhow::Result<()> {
        crate::private_dir(&self.dir)?;
        let mut users = Vec::new();
        for role in Role::ALL {
            let path = role.seed_file(&self.dir);
            let key = match std::fs::read_to_string(&path) {
                Ok(seed) => auth::public_key(&seed).with_context(|| format!("{}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let (seed, key) = auth::new_user();
                    write_private(&path, format!("{seed}\n").as_bytes(), true)?;
                    key
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            users.push((role, key));
        }
        let config = serde_json::json!({
            "server_name": server_name,
            "listen": listen,
            "pid_file": self.pid_file(),
            "jetstream": { "store_dir": store },
            "authorization": auth::authorization(&users, &self.subscribers()?),
        });
        write_private(&self.config(), &serde_json::to_vec_pretty(&config)?, false)
    }

    /// Where nats-server writes its pid (so a change of users can reload it).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("nats.pid")
    }

    /// The event subscribers `vmplane subscribers create` added.
    fn subscribers_file(&self) -> PathBuf {
        self.dir.join("subscribers.json")
    }

    pub fn subscribers(&self) -> anyhow::Result<Vec<auth::Subscriber>> {
        match std::fs::read(self.subscribers_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", self.subscribers_file().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.subscribers_file().display())),
        }
    }

    /// The written server configuration.
    pub fn read_config(&self) -> anyhow::Result<serde_json::Value> {
        let bytes =
            std::fs::read(self.config()).with_context(|| format!("reading {} (run `vmplane up` or `vmplane nats init` first)", self.config().display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not the JSON `vmplane nats init` writes", self.config().display()))
    }

    /// Record a subscriber and rewrite the server configuration's users
    /// (everything else in it is kept).
    pub fn add_subscriber(&self, sub: auth::Subscriber) -> anyhow::Result<()> {
        let mut subs = self.subscribers()?;
        subs.push(sub);
        let mut config = self.read_config()?;
        let mut users = Vec::new();
        for role in Role::ALL {
            let path = role.seed_file(&self.dir);
            let seed = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            users.push((role, auth::public_key(&seed).with_context(|| format!("{}", path.display()))?));
        }
        config["authorization"] = auth::authorization(&users, &subs);
        config["pid_file"] = serde_json::json!(self.pid_file());
        write_private(&self.subscribers_file(), &serde_json::to_vec_pretty(&subs)?, false)?;
        write_private(&self.config(), &serde_json::to_vec_pretty(&config)?, false)
    }

    /// Ask the running nats-server to reread its configuration (SIGHUP to
    /// the pid in its pid file). `Ok(false)` when none is running.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let Ok(text) = std::fs::read_to_string(self.pid_file()) else { return Ok(false) };
        let pid: libc::pid_t = text.trim().parse().with_context(|| format!("{} holds no pid", self.pid_file().display()))?;
        // SAFETY: kill(2) with signal 0 only checks the process exists; SIGHUP asks nats-server to reload.
        if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
            return Ok(false);
        }
        // SAFETY: as above.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            bail!("could not signal nats-server (pid {pid}): {}", std::io::Error::last_os_error());
        }
        Ok(true)
    }
}

/// Write a subscriber's NKey seed, refusing to overwrite a file.
pub fn write_seed(path: &Path, seed: &str) -> anyhow::Result<()> {
    write_private(path, format!("{seed}\n").as_bytes(), true)
}

/// Write a file only its owner can read, whatever the umask.
fn write_private(path: &Path, bytes: &[u8], create_new: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if create_new {
        opts.create_new(true)
    } else {
        opts.create(true).truncate(true)
    };
    let mut f = opts.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    Ok(())
}

/// A nats-server child; SIGTERMed (so it flushes its store) when dropped.
pub struct NatsChild(Child);

impl Drop for NatsChild {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.start_kill();
        }
    }
}

/// Where a process's NATS is and how it authenticates there.
pub struct Connection {
    pub url: String,
    /// Credentials per role: a local server's own, or `--nats-creds` for every role.
    creds: Option<NatsFiles>,
    /// Credentials per role from a `join.json`.
    joined: Option<std::collections::HashMap<Role, Credentials>>,
    given: Credentials,
    /// The local server, when we started it.
    child: Option<NatsChild>,
}

impl Connection {
    /// Whether this is the local server `vmplane up` started.
    pub fn is_local(&self) -> bool {
        self.child.is_some()
    }

    /// The credentials `role` connects with.
    pub fn creds(&self, role: Role) -> Credentials {
        match (&self.creds, &self.joined) {
            (Some(files), _) => files.creds(role),
            (None, Some(joined)) => joined.get(&role).cloned().unwrap_or_default(),
            (None, None) => self.given.clone(),
        }
    }
}

/// What another process needs to join a control plane (`<data-dir>/join.json`,
/// written by `vmplane up`, mode 0600): the NATS URLs and, per role, the NKey
/// seed it connects with. Only roles that run next to a gateway are in it
/// (worker, gateway, webhooks), never the admin.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Join {
    /// The format's version.
    pub version: u32,
    pub nats_urls: Vec<String>,
    /// Role name (`worker`, `gateway`, `webhooks`) to NKey seed.
    pub credentials: std::collections::BTreeMap<String, String>,
}

/// The roles a `join.json` carries.
const JOINING_ROLES: [Role; 3] = [Role::Worker, Role::Gateway, Role::Webhooks];

impl Join {
    /// Where `vmplane up` writes it.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("join.json")
    }

    /// Write the file for a local server's connection (0600).
    pub fn write(data_dir: &Path, conn: &Connection) -> anyhow::Result<()> {
        let mut credentials = std::collections::BTreeMap::new();
        for role in JOINING_ROLES {
            let seed = match conn.creds(role) {
                Credentials::NkeySeed(path) => std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
                Credentials::Seed(seed) => seed,
                // Password users and operator-mode creds are the operator's to hand out.
                Credentials::None | Credentials::JwtCreds(_) => return Ok(()),
            };
            credentials.insert(role.name().to_owned(), seed.trim().to_owned());
        }
        let join = Join { version: 1, nats_urls: conn.url.split(',').map(str::to_owned).collect(), credentials };
        write_private(&Self::path(data_dir), &serde_json::to_vec_pretty(&join)?, false)
    }

    fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let join: Join = serde_json::from_slice(&bytes).with_context(|| format!("{} is not the join.json `vmplane up` writes", path.display()))?;
        if join.version != 1 || join.nats_urls.is_empty() {
            bail!("{}: version {} with {} NATS URLs; this build reads version 1 with at least one", path.display(), join.version, join.nats_urls.len());
        }
        Ok(join)
    }
}

/// The NATS to use: `--join` (a `join.json`), `--nats-url` with
/// `--nats-creds`, or a local server started from the data dir (initialised
/// on first use, on the port it had before when that is free).
pub async fn resolve(common: &crate::CommonArgs) -> anyhow::Result<Connection> {
    if let Some(path) = &common.join {
        let join = Join::read(path)?;
        let given = Credentials::None;
        let roles = join.credentials.into_iter().filter_map(|(role, seed)| Some((role.parse::<Role>().ok()?, Credentials::Seed(seed)))).collect();
        return Ok(Connection { url: join.nats_urls.join(","), creds: None, joined: Some(roles), given, child: None });
    }
    let given = match &common.nats_creds {
        Some(path) => Credentials::from_file(path)?,
        None => Credentials::None,
    };
    match &common.nats_url {
        Some(url) => {
            if given == Credentials::None && auth::url_user(url).is_none() {
                tracing::warn!(
                    "connecting to NATS without credentials (--nats-creds, or user:password in --nats-url): only a server that accepts anonymous clients lets us in"
                );
            }
            Ok(Connection { url: url.clone(), creds: None, joined: None, given, child: None })
        }
        None => {
            let files = NatsFiles::new(&common.data_dir.join("nats"));
            // The port of the last run, so a join.json handed out stays good; else any free one.
            let previous = files.read_config().ok().and_then(|c| c["listen"].as_str().map(str::to_owned));
            let listen = match previous.filter(|l| std::net::TcpListener::bind(l.as_str()).is_ok()) {
                Some(l) => l,
                None => format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()),
            };
            files.init(&listen, &files.dir, "vmplane")?;
            let child = start(&files, &listen).await?;
            Ok(Connection { url: format!("nats://{listen}"), creds: Some(files), joined: None, given, child: Some(child) })
        }
    }
}

async fn start(files: &NatsFiles, addr: &str) -> anyhow::Result<NatsChild> {
    let mut cmd = Command::new("nats-server");
    // Its own process group: a Ctrl-C in the terminal reaches only us, and we
    // stop it last, after the worker has recorded what it did on the way out.
    cmd.arg("-c").arg(files.config()).kill_on_drop(true).stdin(std::process::Stdio::null()).process_group(0);
    // SAFETY: prctl is async-signal-safe; it makes the child die with us even on SIGKILL.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("nats-server is not installed. Install it (Debian: `apt-get install nats-server`), run `./scripts/up` which does, or pass --nats-url")
        }
        Err(e) => return Err(e).context("starting nats-server"),
    };
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start ({status}); is the store {} in use?", files.dir.display());
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            tracing::info!(%addr, store = %files.dir.display(), "started local nats-server (authorization on)");
            return Ok(NatsChild(child));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nats-server did not start listening on {addr}")
}
