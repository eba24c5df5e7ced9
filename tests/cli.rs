//! The `vmplane` client commands (`docs/cli.md`) run as a person runs them:
//! the built binary, with `--url` and `--token`, against a real stack (sim
//! driver). Create with --wait, lists as tables, JSON and ids, names for ids,
//! lifecycle waits, logs and events (following them live), volumes, API
//! keys, orgs and projects, the exit status of each kind of error, shell
//! completions, `login` writing a private config file that a later command
//! uses, the console through a pseudo-terminal, and `vm ssh`'s arguments.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Exit statuses (docs/cli.md).
const NOT_FOUND: i32 = 3;
const CONFLICT: i32 = 4;
const AUTH: i32 = 5;
const UNAVAILABLE: i32 = 6;
const OTHER: i32 = 1;

/// A person's shell: an empty home and config dir, no vmplane variables, a
/// working directory without a `.vmplane` data dir.
struct Shell {
    dir: tempfile::TempDir,
}

impl Shell {
    fn new() -> Self {
        Self { dir: tempfile::Builder::new().prefix("vmplane-cli-").tempdir().expect("temp dir") }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `vmplane ARGS` in this shell with extra environment.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .current_dir(self.path())
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for var in ["VMPLANE_URL", "VMPLANE_TOKEN", "VMPLANE_ORG", "VMPLANE_PROJECT", "VMPLANE_PROFILE", "VMPLANE_ADMIN_TOKEN"] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `vmplane ARGS` to its end.
    async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = tokio::time::timeout(WAIT * 2, self.command(args, env).output()).await;
        out.unwrap_or_else(|_| panic!("vmplane {args:?} did not finish")).expect("running vmplane")
    }
}

/// `vmplane GROUP --url URL --token TOKEN REST...`
fn with(stack: &Stack, token: &str, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().take(1).map(|s| (*s).to_owned()).collect();
    v.extend(["--url".to_owned(), stack.base.clone(), "--token".to_owned(), token.to_owned()]);
    v.extend(args.iter().skip(1).map(|s| (*s).to_owned()));
    v
}

/// Run as the admin against `stack`.
async fn admin(sh: &Shell, stack: &Stack, args: &[&str]) -> Output {
    as_token(sh, stack, ADMIN_TOKEN, args).await
}

async fn as_token(sh: &Shell, stack: &Stack, token: &str, args: &[&str]) -> Output {
    let args = with(stack, token, args);
    sh.run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success; the standard output.
#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), stdout(o), stderr(o));
    stdout(o)
}

/// Assert success and parse the output as JSON.
#[track_caller]
fn json(o: &Output) -> Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Assert the exit status and that stderr names the API's code.
#[track_caller]
fn fails(o: &Output, status: i32, code: &str) {
    assert_eq!(o.status.code(), Some(status), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    assert!(stderr(o).starts_with("vmplane: ") && stderr(o).contains(code), "stderr should name `{code}`: {}", stderr(o));
    assert!(stdout(o).is_empty(), "nothing on stdout: {}", stdout(o));
}

fn ids(out: &str) -> Vec<String> {
    out.lines().map(str::to_owned).collect()
}

/// Read lines of a running command's stdout until one satisfies `done`; they are returned.
async fn read_until(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("reading stdout") {
            let stop = done(&line);
            seen.push(line);
            if stop {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "{what}: not seen; lines so far: {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_volumes_logs_and_events_from_the_command_line() {
    let stack = Stack::start().await;
    let sh = Shell::new();

    // Create and wait: the VM runs when the command returns.
    let created = ok(&admin(&sh, &stack, &["vm", "create", "web-1", "--vcpus", "2", "--memory", "1G", "--port", "80", "--wait"]).await);
    let header = created.lines().next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("NAME") && header.contains("STATUS"), "{created}");
    assert!(created.lines().nth(1).is_some_and(|l| l.contains("web-1") && l.contains("running") && l.contains("1024 MiB")), "{created}");
    // Without --wait, -q: only the new VM's id.
    let web2 = ok(&admin(&sh, &stack, &["vm", "create", "web-2", "-q"]).await).trim().to_owned();
    assert!(web2.starts_with("vm_") && !web2.contains(char::is_whitespace), "{web2}");

    // A table, JSON, ids.
    let table = ok(&admin(&sh, &stack, &["vm", "ls"]).await);
    assert!(table.lines().any(|l| l.split_whitespace().nth(1) == Some("web-1")), "{table}");
    let listed = json(&admin(&sh, &stack, &["vm", "ls", "-o", "json"]).await);
    let vms = listed.as_array().expect("a list");
    let web1 = vms.iter().find(|v| v["name"] == "web-1").unwrap_or_else(|| panic!("{listed}"));
    assert_eq!((web1["status"].as_str(), web1["vcpus"].as_u64(), web1["memory_mib"].as_u64()), (Some("running"), Some(2), Some(1024)));
    let web1_id = str_of(&web1["id"]).to_owned();
    let listed_ids = ids(&ok(&admin(&sh, &stack, &["vm", "ls", "-q"]).await));
    assert!(listed_ids.contains(&web1_id) && listed_ids.contains(&web2), "{listed_ids:?}");
    let running = json(&admin(&sh, &stack, &["vm", "ls", "--status", "running", "-o", "json"]).await);
    assert!(running.as_array().unwrap().iter().all(|v| v["status"] == "running"), "{running}");
    let yaml = ok(&admin(&sh, &stack, &["vm", "ls", "-o", "yaml"]).await);
    assert!(yaml.contains("name: web-1"), "{yaml}");

    // Names wherever an id goes.
    let got = json(&admin(&sh, &stack, &["vm", "get", "web-1", "-o", "json"]).await);
    assert_eq!(got["id"], web1_id.as_str());
    let detail = ok(&admin(&sh, &stack, &["vm", "get", &web1_id]).await);
    assert!(detail.lines().any(|l| l.starts_with("STATUS:") && l.ends_with("running")), "{detail}");

    // Lifecycle waits.
    let stopped = json(&admin(&sh, &stack, &["vm", "stop", "web-1", "--wait", "-o", "json"]).await);
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    let started = json(&admin(&sh, &stack, &["vm", "start", "web-1", "--wait", "-o", "json"]).await);
    assert_eq!(started["status"], "running", "{started}");
    let waited = json(&admin(&sh, &stack, &["vm", "wait", "web-2", "--status", "running", "-o", "json"]).await);
    assert_eq!((waited["id"].as_str(), waited["status"].as_str()), (Some(web2.as_str()), Some("running")));

    // Console lines, as the worker ships them to the VM's log subject.
    let js = async_nats::jetstream::new(stack.nats_client().await);
    let subject = vmplane_domain::subjects::vm_logs(vmplane_domain::OrgId::DEFAULT, web1_id.parse().unwrap());
    let publish = async |line: &str| {
        js.publish(subject.clone(), line.as_bytes().to_vec().into()).await.expect("publish").await.expect("stored");
    };
    for line in ["booting", "hello from the guest", "VMPLANE-READY"] {
        publish(line).await;
    }
    assert_eq!(ok(&admin(&sh, &stack, &["vm", "logs", "web-1", "--tail", "2"]).await), "hello from the guest\nVMPLANE-READY\n");
    let mut follow = sh.command(&with(&stack, ADMIN_TOKEN, &["vm", "logs", "web-1", "-f", "--tail", "1"]).iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let mut follow = follow.stdout(Stdio::piped()).spawn().expect("vm logs -f");
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    read_until(&mut lines, "the tail", |l| l == "VMPLANE-READY").await;
    publish("a new line").await;
    read_until(&mut lines, "a line logged while following", |l| l == "a new line").await;
    follow.kill().await.expect("stopping logs -f");

    // Events: the VM's history, and the feed followed live.
    let history = json(&admin(&sh, &stack, &["vm", "events", "web-1", "-o", "json"]).await);
    let types: Vec<&str> = history.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(types.first(), Some(&"created"), "{types:?}");
    assert!(types.contains(&"stopped") && types.contains(&"ready"), "{types:?}");
    let args = with(&stack, ADMIN_TOKEN, &["events", "-f", "--vm", "web-2", "-o", "json"]);
    let mut feed = sh.command(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).stdout(Stdio::piped()).spawn().expect("events -f");
    let mut lines = BufReader::new(feed.stdout.take().unwrap()).lines();
    let seen = read_until(&mut lines, "web-2's creation in the feed", |l| l.contains("\"created\"")).await;
    let first: Value = serde_json::from_str(seen.last().unwrap()).expect("a JSON line");
    assert_eq!(first["aggregate_id"], web2.as_str());
    // Live: what happens to the VM now shows up.
    ok(&admin(&sh, &stack, &["vm", "stop", &web2]).await);
    read_until(&mut lines, "web-2's stop, live", |l| l.contains("\"stopped\"")).await;
    feed.kill().await.expect("stopping events -f");

    // Volumes: create, attach by names, refuse a delete while attached, detach, delete.
    let vol = json(&admin(&sh, &stack, &["volume", "create", "data", "--size", "1", "--wait", "-o", "json"]).await);
    let vol_id = str_of(&vol["id"]).to_owned();
    let attached = json(&admin(&sh, &stack, &["volume", "attach", "data", "web-1", "--path", "/mnt/data", "--wait", "-o", "json"]).await);
    assert_eq!(attached["volumes"][0]["volume_id"], vol_id.as_str(), "{attached}");
    assert_eq!(attached["volumes"][0]["mount_path"], "/mnt/data", "{attached}");
    let vols = json(&admin(&sh, &stack, &["volume", "ls", "-o", "json"]).await);
    assert_eq!(vols[0]["vm_id"], web1_id.as_str(), "{vols}");
    fails(&admin(&sh, &stack, &["volume", "rm", "data"]).await, CONFLICT, "volume_in_use");
    let detached = json(&admin(&sh, &stack, &["volume", "detach", "data", "web-1", "--wait", "-o", "json"]).await);
    assert_eq!(detached["volumes"], serde_json::json!([]), "{detached}");
    ok(&admin(&sh, &stack, &["volume", "rm", "data", "--wait"]).await);
    assert!(!ok(&admin(&sh, &stack, &["volume", "ls", "-q"]).await).contains(&vol_id));

    // Snapshots: take one of web-1, create a VM from it by name, refuse its delete while that VM lives.
    let snap = json(&admin(&sh, &stack, &["snapshot", "take", "web-1", "base", "--wait", "-o", "json"]).await);
    assert_eq!((snap["status"].as_str(), snap["source_vm_id"].as_str()), (Some("ready"), Some(web1_id.as_str())), "{snap}");
    let snap_id = str_of(&snap["id"]).to_owned();
    let clone = json(&admin(&sh, &stack, &["vm", "create", "clone-1", "--from-snapshot", "base", "--wait", "-o", "json"]).await);
    assert_eq!((clone["status"].as_str(), clone["from_snapshot"].as_str()), (Some("running"), Some(snap_id.as_str())), "{clone}");
    assert!(ok(&admin(&sh, &stack, &["snapshot", "ls"]).await).contains("base"));
    fails(&admin(&sh, &stack, &["snapshot", "rm", "base"]).await, CONFLICT, "snapshot_in_use");
    ok(&admin(&sh, &stack, &["vm", "rm", "clone-1", "--wait"]).await);
    ok(&admin(&sh, &stack, &["snapshot", "rm", &snap_id, "--wait"]).await);
    assert!(!ok(&admin(&sh, &stack, &["snapshot", "ls", "-q"]).await).contains(&snap_id));
    // A fork: one snapshot and its clones, printed once the fork's operation ended.
    let kids = json(&admin(&sh, &stack, &["vm", "fork", "web-1", "kid", "--count", "2", "--wait", "-o", "json"]).await);
    let seen: Vec<(&str, &str)> = kids.as_array().unwrap().iter().map(|k| (str_of(&k["name"]), str_of(&k["status"]))).collect();
    assert_eq!(seen, [("kid-1", "running"), ("kid-2", "running")], "{kids}");
    assert_eq!(kids[0]["from_snapshot"], kids[1]["from_snapshot"], "{kids}");
    fails(&admin(&sh, &stack, &["vm", "fork", "web-1", "Bad_Name"]).await, OTHER, "validation_failed");
    // Flattened, a clone no longer holds its snapshot; the source VM is no clone.
    let flat = json(&admin(&sh, &stack, &["vm", "flatten", "kid-1", "--wait", "-o", "json"]).await);
    assert_eq!((flat["name"].as_str(), flat["flattened"].as_bool()), (Some("kid-1"), Some(true)), "{flat}");
    fails(&admin(&sh, &stack, &["vm", "flatten", "web-1"]).await, CONFLICT, "invalid_state");

    // `vm ssh` runs the system ssh with the VM's forwarded port: a stand-in on PATH prints its arguments.
    let bin = sh.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("ssh"), "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n").unwrap();
    std::fs::set_permissions(bin.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let ssh_port = json(&admin(&sh, &stack, &["vm", "get", "web-1", "-o", "json"]).await)["ssh_port"].as_u64().expect("a forwarded SSH port");
    let args = with(&stack, ADMIN_TOKEN, &["vm", "ssh", "web-1", "--", "echo", "a b;c"]);
    let out = ok(&sh.run_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[("PATH", &path)]).await);
    let port = ssh_port.to_string();
    let alias = format!("HostKeyAlias=vmplane-{web1_id}");
    assert_eq!(ids(&out), ["-p", port.as_str(), "-l", "root", "-o", alias.as_str(), "127.0.0.1", "--", "echo", "a b;c"]);

    // Errors: the API's code on stderr, a distinct exit status per kind.
    fails(&admin(&sh, &stack, &["vm", "get", "nosuch"]).await, NOT_FOUND, "not_found");
    fails(&admin(&sh, &stack, &["vm", "get", "Not_A_Name"]).await, NOT_FOUND, "not_found");
    fails(&admin(&sh, &stack, &["volume", "rm", "Not_A_Name"]).await, NOT_FOUND, "not_found");
    fails(&admin(&sh, &stack, &["vm", "get", "vm_00000000000000000000000000"]).await, NOT_FOUND, "not_found");
    ok(&admin(&sh, &stack, &["vm", "stop", "web-2", "--wait"]).await);
    fails(&admin(&sh, &stack, &["vm", "restart", "web-2"]).await, CONFLICT, "invalid_state");
    fails(&as_token(&sh, &stack, "not-a-token", &["vm", "ls"]).await, AUTH, "unauthorized");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    fails(&sh.run(&["vm", "ls", "--url", &nobody, "--token", "x"]).await, UNAVAILABLE, "cannot reach");
    let usage = admin(&sh, &stack, &["vm", "create"]).await;
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    ok(&admin(&sh, &stack, &["vm", "create", "twin", "-q"]).await);
    ok(&admin(&sh, &stack, &["vm", "create", "twin", "-q"]).await);
    fails(&admin(&sh, &stack, &["vm", "get", "twin"]).await, 1, "ambiguous");

    // Delete and wait: gone from the list.
    ok(&admin(&sh, &stack, &["vm", "rm", "web-2", "--wait"]).await);
    assert!(!ids(&ok(&admin(&sh, &stack, &["vm", "ls", "-q"]).await)).contains(&web2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_orgs_projects_and_a_login_profile() {
    let stack = Stack::start().await;
    let sh = Shell::new();

    let org = json(&admin(&sh, &stack, &["org", "create", "acme", "-o", "json"]).await);
    let org_id = str_of(&org["id"]).to_owned();
    assert!(ids(&ok(&admin(&sh, &stack, &["org", "ls", "-q"]).await)).contains(&org_id));
    // --org by name.
    let project = json(&admin(&sh, &stack, &["project", "create", "web", "--org", "acme", "-o", "json"]).await);
    assert_eq!(project["org_id"], org_id.as_str(), "{project}");
    let projects = ok(&admin(&sh, &stack, &["project", "ls", "--org", "acme"]).await);
    assert!(projects.lines().any(|l| l.contains(str_of(&project["id"])) && l.contains(" web ")), "{projects}");

    let key = json(&admin(&sh, &stack, &["key", "create", "ci", "--org", "acme", "-o", "json"]).await);
    let (key_id, secret) = (str_of(&key["id"]).to_owned(), str_of(&key["secret"]).to_owned());
    assert_eq!(key["org_id"], org_id.as_str());
    assert!(ids(&ok(&admin(&sh, &stack, &["key", "ls", "--org", "acme", "-q"]).await)).contains(&key_id));
    let key_list = ok(&admin(&sh, &stack, &["key", "ls", "--org", "acme", "-o", "json"]).await);
    assert!(!key_list.contains(&secret), "a list never shows secrets");

    // A login with a wrong token is refused and writes nothing.
    let config = sh.path().join("config").join("vmplane").join("config.toml");
    fails(&sh.run(&["login", "--url", &stack.base, "--token", "wrong", "--profile", "acme"]).await, AUTH, "unauthorized");
    assert!(!config.exists());
    // A good one writes a private config file; later commands need neither --url nor --token.
    let said = ok(&sh.run(&["login", "--url", &stack.base, "--token", &secret, "--profile", "acme"]).await);
    assert!(said.contains("acme") && !said.contains(&secret), "{said}");
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("default_profile = \"acme\"") && text.contains(&stack.base), "{text}");
    let made = json(&sh.run(&["vm", "create", "from-profile", "--wait", "-o", "json"]).await);
    assert_eq!((made["org_id"].as_str(), made["status"].as_str()), (Some(org_id.as_str()), Some("running")), "{made}");
    let mine = json(&sh.run(&["vm", "ls", "-o", "json"]).await);
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "the key sees its org's VM only: {mine}");
    // The admin's own list shows the default org's VMs, not acme's.
    assert!(!ok(&admin(&sh, &stack, &["vm", "ls"]).await).contains("from-profile"));
    // A key may not act as the admin.
    assert_eq!(sh.run(&["org", "ls"]).await.status.code(), Some(AUTH));

    // Revoked (by name, in its org): the profile's token is refused from then on.
    ok(&admin(&sh, &stack, &["key", "revoke", "ci", "--org", "acme"]).await);
    // (A revocation answered 202 is in force once the gateway has projected it.)
    let refused = wait_for("the revoked key to be refused", WAIT, async || {
        let o = sh.run(&["vm", "ls"]).await;
        if o.status.code() == Some(AUTH) { Ok(o) } else { Err(format!("{:?} {}", o.status.code(), stderr(&o))) }
    })
    .await;
    fails(&refused, AUTH, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_round_trip_through_a_pseudo_terminal() {
    let stack = Stack::start().await;
    let sh = Shell::new();
    ok(&admin(&sh, &stack, &["vm", "create", "term", "--wait"]).await);

    // `script` gives vmplane a pseudo-terminal; what we write is typed there.
    // The sim guest's console echoes what it is sent.
    let console = r#"exec "$VMPLANE_BIN" vm console term --url "$URL" --token "$TOKEN""#;
    let env = [("VMPLANE_BIN", BIN), ("URL", stack.base.as_str()), ("TOKEN", ADMIN_TOKEN)];
    let mut script = tokio::process::Command::new("script");
    script.args(["-q", "-e", "-f", "-c", console, "/dev/null"]).current_dir(sh.path()).env("HOME", sh.path()).env("TERM", "xterm").kill_on_drop(true);
    for (k, v) in env {
        script.env(k, v);
    }
    let mut child = script.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("running script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut wait_for_text = async |text: &str, seen: &mut Vec<u8>| {
        let found = tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(seen).contains(text) {
                match out.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            true
        })
        .await;
        assert!(matches!(found, Ok(true)), "`{text}` not seen on the terminal; so far: {:?}", String::from_utf8_lossy(seen));
    };
    wait_for_text("Leave with Ctrl-]", &mut seen).await;
    let banner = seen.len();
    stdin.write_all(b"hello-through-the-pty").await.unwrap();
    stdin.flush().await.unwrap();
    wait_for_text("hello-through-the-pty", &mut seen).await;
    assert!(String::from_utf8_lossy(&seen[banner..]).contains("hello-through-the-pty"), "echoed by the guest after connecting");
    // Ctrl-] leaves: vmplane exits 0 and script with it.
    stdin.write_all(&[0x1d]).await.unwrap();
    stdin.flush().await.unwrap();
    wait_for_text("left", &mut seen).await;
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("vmplane left the console").expect("script");
    assert!(status.success(), "exit {status:?}: {:?}", String::from_utf8_lossy(&seen));

    // A stopped VM has no console: the handshake's refusal is the API's, exit 4.
    ok(&admin(&sh, &stack, &["vm", "stop", "term", "--wait"]).await);
    fails(&admin(&sh, &stack, &["vm", "console", "term"]).await, CONFLICT, "invalid_state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_for_each_shell_and_usage_errors() {
    let sh = Shell::new();
    let bash = ok(&sh.run(&["completions", "bash"]).await);
    assert!(bash.contains("_vmplane()") && bash.contains("console") && bash.contains("--status"), "bash");
    let zsh = ok(&sh.run(&["completions", "zsh"]).await);
    assert!(zsh.starts_with("#compdef vmplane"), "zsh");
    let fish = ok(&sh.run(&["completions", "fish"]).await);
    assert!(fish.contains("complete -c vmplane") && fish.contains("volume"), "fish");
    assert_eq!(sh.run(&["completions", "tcsh"]).await.status.code(), Some(2));
    // `events` without -f needs a VM (the feed has no end).
    assert_eq!(sh.run(&["events"]).await.status.code(), Some(2));
    // Client commands sit beside the server commands.
    let help = ok(&sh.run(&["--help"]).await);
    for command in ["up", "gateway", "worker", "vm", "volume", "login", "completions"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(command)), "{command} in --help: {help}");
    }
}
