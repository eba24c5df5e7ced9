//! Who may do what on NATS.
//!
//! nats-server accepts no anonymous client: every vmplane process connects as
//! a user of its own role, and each role may publish and subscribe only to the
//! subjects and JetStream API calls its work needs. The gateway appends
//! commands and reads events; the worker consumes commands and appends
//! events; neither can do the other's part, nor purge, delete or reconfigure
//! a stream. The `admin` role (operators, and `vmplane up` while it sets the
//! streams up) is unrestricted.
//!
//! Users are NKeys: the server holds only public keys, and a client proves
//! its identity by signing the server's nonce with its seed, so no secret is
//! ever sent or stored on the server side. Each role has its own inbox prefix,
//! so no user can read the replies of another.

use crate::BusError;
use async_nats::ConnectOptions;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use vmplane_domain::subjects;

/// The users vmplane's NATS knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Unrestricted: topology changes and operator tooling.
    Admin,
    /// HTTP gateways.
    Gateway,
    /// Host workers.
    Worker,
    /// Webhook deliverers (`vmplane webhooks`).
    Webhooks,
}

impl Role {
    /// Every role, in the order the generated files list them.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Gateway, Role::Worker, Role::Webhooks];

    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Gateway => "gateway",
            Self::Worker => "worker",
            Self::Webhooks => "webhooks",
        }
    }

    /// The prefix of this role's reply inboxes; only this role may subscribe to it.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.name())
    }

    /// Where `vmplane nats init` writes this role's NKey seed.
    pub fn seed_file(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.nk", self.name()))
    }

    /// What this role may publish and subscribe to; `None` for the admin (everything).
    pub fn permissions(self) -> Option<Permissions> {
        let api = |call: &str, names: &[&str]| names.iter().map(|n| format!("$JS.API.{call}.{n}")).collect::<Vec<_>>();
        let consumers = |names: &[&str]| {
            let mut v = Vec::new();
            for call in ["CONSUMER.CREATE", "CONSUMER.DURABLE.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE", "CONSUMER.MSG.NEXT"] {
                for n in names {
                    v.push(format!("$JS.API.{call}.{n}"));
                    v.push(format!("$JS.API.{call}.{n}.>"));
                }
            }
            v.extend(names.iter().map(|n| format!("$JS.FC.{n}.>")));
            v
        };
        let events = subjects::EVENT_STREAM;
        let commands = subjects::COMMAND_STREAM;
        let logs = subjects::LOG_STREAM;
        let heartbeats = format!("KV_{}", subjects::HEARTBEAT_BUCKET);
        let idempotency = format!("KV_{}", subjects::IDEMPOTENCY_BUCKET);
        let placement = format!("KV_{}", subjects::PLACEMENT_BUCKET);
        let webhook_secrets = format!("KV_{}", subjects::WEBHOOK_SECRET_BUCKET);
        let webhook_queue = format!("KV_{}", subjects::WEBHOOK_QUEUE_BUCKET);
        let moves = format!("OBJ_{}", subjects::MOVES_BUCKET);
        // Every process may see and create (never update, purge or delete) the streams.
        let all_streams = [
            events,
            commands,
            logs,
            heartbeats.as_str(),
            idempotency.as_str(),
            placement.as_str(),
            webhook_secrets.as_str(),
            webhook_queue.as_str(),
            moves.as_str(),
        ];
        let mut publish: Vec<String> = api("STREAM.INFO", &all_streams);
        publish.extend(api("STREAM.CREATE", &all_streams));
        publish.push("$JS.API.INFO".into());
        let (subscribe, allow_responses) = match self {
            Self::Admin => return None,
            Self::Gateway => {
                publish.extend([subjects::COMMANDS_ALL.to_owned(), subjects::TERMINAL_OPEN_ALL.to_owned(), subjects::terminal_input("*")]);
                publish.extend(consumers(&[events, logs, heartbeats.as_str()]));
                // Idempotency records, the placement ledger and webhook secrets are the gateway's own buckets.
                publish.extend(api("STREAM.MSG.GET", &[events, logs, idempotency.as_str(), placement.as_str(), webhook_secrets.as_str()]));
                for bucket in [&idempotency, &placement, &webhook_secrets] {
                    publish.extend([format!("$JS.API.DIRECT.GET.{bucket}"), format!("$JS.API.DIRECT.GET.{bucket}.>")]);
                }
                publish.extend([
                    format!("$KV.{}.>", subjects::IDEMPOTENCY_BUCKET),
                    format!("$KV.{}.>", subjects::PLACEMENT_BUCKET),
                    format!("$KV.{}.>", subjects::WEBHOOK_SECRET_BUCKET),
                ]);
                (vec![subjects::terminal_output("*")], false)
            }
            Self::Worker => {
                publish.extend([subjects::EVENTS_ALL.to_owned(), subjects::LOGS_ALL.to_owned(), subjects::terminal_output("*")]);
                // Its host's commands; the heartbeats, to find hosts that went
                // offline; a moving disk, read at the host it moves to.
                publish.extend(consumers(&[commands, heartbeats.as_str(), moves.as_str()]));
                // The command consumers' names: each host has one, offline ones too.
                publish.push(format!("$JS.API.CONSUMER.NAMES.{commands}"));
                publish.push(format!("$JS.ACK.{commands}.>"));
                // A move's resumption, sent to the host the VM moves to.
                publish.push("vmplane.cmd.host.*.*".to_owned());
                publish.push(format!("$O.{}.>", subjects::MOVES_BUCKET));
                publish.extend(api("STREAM.PURGE", &[moves.as_str()]));
                publish.extend([format!("$JS.API.DIRECT.GET.{moves}"), format!("$JS.API.DIRECT.GET.{moves}.>")]);
                // Events (aggregates), commands (is one still queued?), the host lease.
                publish.extend(api("STREAM.MSG.GET", &[events, commands, heartbeats.as_str(), moves.as_str()]));
                publish.extend([format!("$JS.API.DIRECT.GET.{heartbeats}"), format!("$JS.API.DIRECT.GET.{heartbeats}.>")]);
                publish.push(format!("$KV.{}.>", subjects::HEARTBEAT_BUCKET));
                // Terminal requests are answered on their reply subjects.
                (vec![subjects::TERMINAL_OPEN_ALL.to_owned(), subjects::terminal_input("*")], true)
            }
            Self::Webhooks => {
                // Its durable consumer on the events, and reads of single events.
                publish.extend(consumers(&[events, webhook_queue.as_str()]));
                publish.push(format!("$JS.ACK.{events}.>"));
                publish.extend(api("STREAM.MSG.GET", &[events, webhook_secrets.as_str(), webhook_queue.as_str()]));
                for bucket in [&webhook_secrets, &webhook_queue] {
                    publish.extend([format!("$JS.API.DIRECT.GET.{bucket}"), format!("$JS.API.DIRECT.GET.{bucket}.>")]);
                }
                // Secrets are read only; the queue bucket is its own.
                publish.push(format!("$KV.{}.>", subjects::WEBHOOK_QUEUE_BUCKET));
                // Delivery attempts, and an endpoint disabled by its failures.
                publish.extend([format!("{}.deliveries", subjects::WEBHOOK_ENDPOINTS_ALL), subjects::WEBHOOK_ENDPOINTS_ALL.to_owned()]);
                (vec![], false)
            }
        };
        let mut subscribe = subscribe;
        subscribe.push(format!("{}.>", self.inbox_prefix()));
        Some(Permissions { publish, subscribe, allow_responses })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| format!("unknown NATS role `{s}` (admin, gateway, worker, webhooks)"))
    }
}

/// How long a user with response permissions may answer a request it received.
const RESPONSE_EXPIRY: &str = "10s";

/// Subjects a user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May publish replies to requests it received.
    pub allow_responses: bool,
}

impl Permissions {
    /// The `permissions` block of a nats-server user.
    fn to_config(&self) -> Value {
        let mut p = json!({ "publish": { "allow": self.publish }, "subscribe": { "allow": self.subscribe } });
        if self.allow_responses {
            // nats-server remembers the reply subject of every message it
            // delivers to such a user (JetStream deliveries and their ack
            // subjects included) until it expires, and once it holds more
            // than 4,096 walks all of them on every delivery: with
            // `allow_responses: true` (two minutes) that walk grew with the
            // command rate and took most of nats-server's CPU. The replies
            // this user sends (terminal opens) go out within the gateway's
            // five-second wait, so ten seconds is enough.
            p["allow_responses"] = json!({ "max": 1, "expires": RESPONSE_EXPIRY });
        }
        p
    }
}

/// A new NKey user: `(seed, public key)`.
pub fn new_user() -> (String, String) {
    let kp = nkeys::KeyPair::new_user();
    (kp.seed().expect("a generated key pair has its seed"), kp.public_key())
}

/// The public key of an NKey user seed.
pub fn public_key(seed: &str) -> Result<String, BusError> {
    nkeys::KeyPair::from_seed(seed.trim()).map(|kp| kp.public_key()).map_err(|e| BusError::Other(format!("not an NKey seed: {e}")))
}

/// An outside event subscriber of one org (`vmplane subscribers create`):
/// an NKey user that may read that org's events and nothing else.
///
/// nats-server 2.9 authorizes a consumer's creation by the API subject
/// (`$JS.API.CONSUMER.DURABLE.CREATE.<stream>.<name>`), which does not carry
/// the consumer's filter: a user allowed to create consumers could create
/// one on another org's subjects. So a subscriber creates none: its durable
/// pull consumer, filtered to `vmplane.evt.<org>.>`, is created for it by the
/// admin, and its user may only read that consumer (info, next messages,
/// acks), its own reply inbox and, live without durability, its org's event
/// subjects. No command, log, terminal or KV subject, no other org.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscriber {
    pub org: vmplane_domain::OrgId,
    /// The durable consumer on the event stream, and the inbox prefix's name.
    pub durable: String,
    /// The NKey user's public key.
    pub nkey: String,
}

impl Subscriber {
    /// The durable consumer name for a new subscriber of `org`.
    pub fn durable_name(org: vmplane_domain::OrgId, nkey: &str) -> String {
        // The public key's tail is random: unique per credential.
        format!("sub_{org}_{}", &nkey[nkey.len().saturating_sub(10)..].to_ascii_lowercase())
    }

    /// The prefix of this subscriber's reply inboxes (set it in the client).
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX_{}", self.durable)
    }

    /// What this subscriber may publish and subscribe to.
    pub fn permissions(&self) -> Permissions {
        let stream = subjects::EVENT_STREAM;
        let d = &self.durable;
        Permissions {
            publish: vec![format!("$JS.API.CONSUMER.INFO.{stream}.{d}"), format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{d}"), format!("$JS.ACK.{stream}.{d}.>")],
            subscribe: vec![subjects::org_events(self.org), format!("{}.>", self.inbox_prefix())],
            allow_responses: false,
        }
    }
}

/// nats-server's `authorization` block for the given users (role, public
/// key) and event subscribers.
pub fn authorization(users: &[(Role, String)], subscribers: &[Subscriber]) -> Value {
    let mut users: Vec<Value> = users
        .iter()
        .map(|(role, key)| {
            let mut u = json!({ "nkey": key });
            if let Some(p) = role.permissions() {
                u["permissions"] = p.to_config();
            }
            u
        })
        .collect();
    users.extend(subscribers.iter().map(|s| json!({ "nkey": s.nkey, "permissions": s.permissions().to_config() })));
    json!({ "users": users })
}

/// How a process proves who it is to NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing (only for a server that accepts anonymous clients), or the
    /// user and password embedded in the URL.
    #[default]
    None,
    /// An NKey seed file (`vmplane nats init` writes one per role).
    NkeySeed(PathBuf),
    /// A NATS credentials file (user JWT and seed), for servers in operator mode.
    JwtCreds(PathBuf),
    /// An NKey seed held in memory (read from a `join.json`).
    Seed(String),
}

impl Credentials {
    /// Recognise a `--nats-creds` file by its content.
    pub fn from_file(path: &Path) -> Result<Self, BusError> {
        let text = std::fs::read_to_string(path).map_err(|e| BusError::Other(format!("{}: {e}", path.display())))?;
        if text.contains("BEGIN NATS USER JWT") {
            return Ok(Self::JwtCreds(path.to_owned()));
        }
        public_key(&text).map_err(|_| BusError::Other(format!("{}: neither a NATS credentials file nor an NKey user seed", path.display())))?;
        Ok(Self::NkeySeed(path.to_owned()))
    }

    /// Connect options carrying these credentials, or the user and password
    /// in `url` (`nats://user:password@host:port`) when there are none.
    pub async fn options(&self, url: &str) -> Result<ConnectOptions, BusError> {
        match self {
            Self::None => Ok(match url_user(url) {
                Some((user, password)) => ConnectOptions::new().user_and_password(user, password),
                None => ConnectOptions::new(),
            }),
            Self::NkeySeed(path) => {
                let seed = std::fs::read_to_string(path).map_err(|e| BusError::Other(format!("{}: {e}", path.display())))?;
                Ok(ConnectOptions::with_nkey(seed.trim().to_owned()))
            }
            Self::JwtCreds(path) => ConnectOptions::with_credentials_file(path).await.map_err(|e| BusError::Other(format!("{}: {e}", path.display()))),
            Self::Seed(seed) => Ok(ConnectOptions::with_nkey(seed.trim().to_owned())),
        }
    }
}

/// The user and password of a URL's userinfo (the first of a
/// comma-separated list), percent-decoded. async-nats parses them but does
/// not send them by itself.
pub fn url_user(url: &str) -> Option<(String, String)> {
    let addr: async_nats::ServerAddr = url.split(',').next()?.trim().parse().ok()?;
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    addr.username().map(|u| (decode(u), decode(addr.password().unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_gateway_publishes_commands_and_only_the_worker_events() {
        let gw = Role::Gateway.permissions().unwrap();
        let wk = Role::Worker.permissions().unwrap();
        assert!(gw.publish.iter().any(|s| s == subjects::COMMANDS_ALL));
        assert!(!gw.publish.iter().any(|s| s.starts_with("vmplane.evt") || s.starts_with("$JS.ACK")));
        assert!(wk.publish.iter().any(|s| s == subjects::EVENTS_ALL));
        // A worker hands a move on to the host it goes to (a host command), and nothing else.
        assert_eq!(wk.publish.iter().filter(|s| s.starts_with("vmplane.cmd")).collect::<Vec<_>>(), ["vmplane.cmd.host.*.*"]);
        // It forgets a moved disk (a purge of the moves object store); no stream of record is ever purged.
        let moves_purge = format!("$JS.API.STREAM.PURGE.OBJ_{}", subjects::MOVES_BUCKET);
        assert!(wk.publish.contains(&moves_purge));
        for p in [&gw, &wk] {
            let purges = p.publish.iter().filter(|s| s.contains("PURGE") && **s != moves_purge);
            assert_eq!(purges.count(), 0, "{:?}", p.publish);
            assert!(!p.publish.iter().any(|s| s.contains("DELETE.VMPLANE") && !s.contains("CONSUMER") || s.contains("UPDATE")));
            assert!(!p.publish.iter().chain(&p.subscribe).any(|s| s == ">" || s == "$JS.API.>" || s.starts_with("_INBOX.")));
        }
        assert!(Role::Admin.permissions().is_none());
    }

    /// Only the worker answers requests (terminal opens), and its right to
    /// answer one expires soon: nats-server keeps every reply subject it
    /// delivered to such a user, JetStream's ack subjects included, until then.
    #[test]
    fn response_rights_are_the_workers_only_and_expire_soon() {
        for role in [Role::Gateway, Role::Webhooks] {
            assert!(role.permissions().unwrap().to_config().get("allow_responses").is_none(), "{role:?}");
        }
        let worker = Role::Worker.permissions().unwrap().to_config();
        assert_eq!(worker["allow_responses"], json!({ "max": 1, "expires": "10s" }));
    }

    #[test]
    fn a_subscriber_reads_only_its_org_and_its_own_consumer() {
        let org = vmplane_domain::OrgId::new();
        let (_, nkey) = new_user();
        let s = Subscriber { org, durable: Subscriber::durable_name(org, &nkey), nkey };
        let p = s.permissions();
        assert_eq!(p.subscribe, [format!("vmplane.evt.{org}.>"), format!("_INBOX_{}.>", s.durable)]);
        assert!(p.publish.iter().all(|x| x.ends_with(&s.durable) || x.ends_with(&format!("{}.>", s.durable))), "{p:?}");
        assert!(!p.publish.iter().any(|x| x.contains("CREATE") || x.contains("DELETE") || x.starts_with("vmplane.")));
    }

    #[test]
    fn the_deliverer_reads_secrets_and_appends_only_webhook_events() {
        let wh = Role::Webhooks.permissions().unwrap();
        let secrets = format!("$KV.{}.", subjects::WEBHOOK_SECRET_BUCKET);
        assert!(!wh.publish.iter().any(|s| s.starts_with(&secrets)), "reads secrets, never writes them");
        assert!(wh.publish.iter().any(|s| s.contains("DIRECT.GET.KV_vmplane_webhook_secrets")));
        let appends: Vec<_> = wh.publish.iter().filter(|s| s.starts_with("vmplane.")).collect();
        assert!(appends.iter().all(|s| s.starts_with("vmplane.evt.*.webhook.*")), "{appends:?}");
        assert!(!wh.publish.iter().any(|s| s.starts_with("vmplane.cmd") || s.contains("CONSUMER") && s.contains(subjects::COMMAND_STREAM)));
    }

    #[test]
    fn only_the_gateway_reads_and_writes_webhook_secrets() {
        let reads = |p: &Permissions| {
            p.publish.iter().any(|s| s.contains(subjects::WEBHOOK_SECRET_BUCKET) && !s.contains("STREAM.INFO") && !s.contains("STREAM.CREATE"))
        };
        assert!(reads(&Role::Gateway.permissions().unwrap()));
        assert!(!reads(&Role::Worker.permissions().unwrap()), "workers never see a secret");
    }

    #[test]
    fn each_role_reads_only_its_own_inbox() {
        let gw = Role::Gateway.permissions().unwrap();
        assert!(gw.subscribe.contains(&"_INBOX_gateway.>".to_owned()));
        assert!(!gw.subscribe.iter().any(|s| s.starts_with("_INBOX_worker")));
    }

    #[test]
    fn a_user_and_password_in_the_first_of_several_urls_are_found() {
        assert_eq!(url_user("nats://u:p%40@a:4222, nats://b:4222"), Some(("u".into(), "p@".into())));
        assert_eq!(url_user("nats://a:4222,nats://u:p@b:4222"), None, "the first URL's userinfo counts");
    }

    #[test]
    fn a_user_and_password_in_the_url_are_found() {
        assert_eq!(url_user("nats://gw:p%40ss@127.0.0.1:4222"), Some(("gw".into(), "p@ss".into())));
        assert_eq!(url_user("nats://127.0.0.1:4222"), None);
    }

    #[test]
    fn credentials_files_are_recognised_by_content() {
        let dir = std::env::temp_dir().join(format!("vmplane-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (seed, key) = new_user();
        assert_eq!(public_key(&seed).unwrap(), key);
        std::fs::write(dir.join("a.nk"), format!("{seed}\n")).unwrap();
        assert_eq!(Credentials::from_file(&dir.join("a.nk")).unwrap(), Credentials::NkeySeed(dir.join("a.nk")));
        std::fs::write(dir.join("b.creds"), "-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n").unwrap();
        assert_eq!(Credentials::from_file(&dir.join("b.creds")).unwrap(), Credentials::JwtCreds(dir.join("b.creds")));
        std::fs::write(dir.join("c"), "hunter2").unwrap();
        assert!(Credentials::from_file(&dir.join("c")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
