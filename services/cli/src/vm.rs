//! `vmplane vm …`: `/v1/vms` and what hangs off a VM (logs, events,
//! console, ssh).

use crate::client::str_at;
use crate::error::{Error, Result};
use crate::output::{Column, cell, col, col_with, time_cell};
use crate::wait::{self, WaitArgs, parse_timeout};
use crate::{Ctx, console, emit, events, resolve, sse, ssh};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `vmplane vm` subcommands.
#[derive(Subcommand)]
pub enum VmCmd {
    /// Create a VM (202: it is `pending`; --wait for it to run).
    Create(CreateArgs),
    /// List VMs (every page), oldest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Only VMs in this status (pending, running, stopped, standby, failed, ...).
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one VM.
    Get {
        /// VM id or name.
        vm: String,
    },
    /// Start a stopped VM.
    Start(ActionArgs),
    /// Stop a VM (ACPI power-down, then a hard stop).
    Stop(ActionArgs),
    /// Reboot a running VM.
    Restart(ActionArgs),
    /// Snapshot a running VM's memory to disk and stop it.
    Standby(ActionArgs),
    /// Resume a VM in standby from its snapshot.
    Restore(ActionArgs),
    /// Snapshot a running or standby VM and create clones that resume from
    /// it (<name>-1 ... <name>-<count>), as one operation; prints the clones.
    Fork {
        /// VM id or name.
        vm: String,
        /// The snapshot's name, and the clones' names' stem (a DNS label).
        name: String,
        /// How many clones (1-16).
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Copy into a clone's own disk what it reads from its snapshot's, so
    /// that the snapshot can be deleted while the clone lives.
    Flatten(ActionArgs),
    /// Delete a VM (and its root disk unless it was created to keep it).
    #[command(visible_alias = "delete")]
    Rm(ActionArgs),
    /// The VM's serial console lines.
    Logs {
        /// VM id or name.
        vm: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines (the gateway's default is 100).
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Attach this terminal to the VM's serial console (leave with Ctrl-]).
    Console(console::ConsoleArgs),
    /// Run the system `ssh` to the VM's forwarded SSH port.
    Ssh(ssh::SshArgs),
    /// The VM's history of events; with -f, then live.
    Events {
        /// VM id or name.
        vm: String,
        /// Keep printing new events as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Wait until the VM has a status.
    Wait {
        /// VM id or name.
        vm: String,
        /// The status to wait for.
        #[arg(long, default_value = "running")]
        status: String,
        /// Give up after this long (exit 8).
        #[arg(long, default_value = "5m", value_parser = parse_timeout)]
        timeout: Duration,
    },
}

/// A lifecycle action on one VM.
#[derive(Args)]
pub struct ActionArgs {
    /// VM id or name.
    pub vm: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `vm create`.
#[derive(Args, Default)]
pub struct CreateArgs {
    /// The VM's name (a DNS label).
    pub name: String,
    /// Image name (see `vmplane image ls`); default `debian-minimal`.
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory: MiB, or with a unit (512M, 2G).
    #[arg(long, value_parser = parse_mib)]
    pub memory: Option<u64>,
    /// Root disk: GB, or with a unit (10G).
    #[arg(long, value_parser = parse_gb)]
    pub disk: Option<u32>,
    /// An SSH public key file (each key line in it); repeatable.
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// cloud-init user data from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// Forward a host port to a guest port (host port chosen when absent); repeatable.
    #[arg(long = "port", value_name = "GUEST[:HOST][/udp]", value_parser = parse_port)]
    pub ports: Vec<Value>,
    /// Attach a volume (id or name) at a path in the guest; repeatable.
    #[arg(long = "volume", value_name = "VOL:PATH[:ro]", value_parser = parse_volume)]
    pub volumes: Vec<VolumeArg>,
    /// A catalog plan (its sizes are the defaults).
    #[arg(long)]
    pub plan: Option<String>,
    /// A catalog region.
    #[arg(long)]
    pub region: Option<String>,
    /// A label, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Resume this snapshot (id or name) instead of booting: the VM is a clone of its machine.
    #[arg(long, value_name = "SNAPSHOT")]
    pub from_snapshot: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `--volume VOL:PATH[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    pub volume: String,
    pub path: String,
    pub readonly: bool,
}

/// The columns of `vm ls`.
pub const LIST: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("STATUS", "/status"),
    col("IMAGE", "/image"),
    col("VCPUS", "/vcpus"),
    col_with("MEMORY", |v| size(v.get("memory_mib"), "MiB")),
    col("SSH", "/ssh_port"),
    col_with("CREATED", |v| time_cell(v.get("created_at"))),
];

/// The fields of `vm get`.
pub const DETAIL: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("STATUS", "/status"),
    col("MESSAGE", "/message"),
    col("IMAGE", "/image"),
    col("VCPUS", "/vcpus"),
    col_with("MEMORY", |v| size(v.get("memory_mib"), "MiB")),
    col_with("DISK", |v| size(v.get("disk_gb"), "GB")),
    col("PLAN", "/plan"),
    col("REGION", "/region"),
    col("HOST", "/host_id"),
    col("HOST STATUS", "/host_status"),
    col("IP", "/ip"),
    col("SSH PORT", "/ssh_port"),
    col_with("PORTS", ports_cell),
    col_with("VOLUMES", volumes_cell),
    col("PROJECT", "/project_id"),
    col_with("CREATED", |v| time_cell(v.get("created_at"))),
    col_with("STARTED", |v| time_cell(v.get("started_at"))),
];

fn size(v: Option<&Value>, unit: &str) -> String {
    match v.and_then(Value::as_u64) {
        Some(n) => format!("{n} {unit}"),
        None => "-".into(),
    }
}

/// `80->20001/tcp,…`
fn ports_cell(v: &Value) -> String {
    let Some(ports) = v.get("port_forwards").and_then(Value::as_array).filter(|p| !p.is_empty()) else { return "-".into() };
    ports.iter().map(|p| format!("{}->{}/{}", cell(p.get("guest_port")), cell(p.get("host_port")), cell(p.get("protocol")))).collect::<Vec<_>>().join(",")
}

/// `vol_…:/mnt/data(ro),…`
pub fn volumes_cell(v: &Value) -> String {
    let Some(vols) = v.get("volumes").and_then(Value::as_array).filter(|p| !p.is_empty()) else { return "-".into() };
    vols.iter()
        .map(|m| {
            let ro = if m.get("readonly").and_then(Value::as_bool) == Some(true) { "(ro)" } else { "" };
            format!("{}:{}{ro}", cell(m.get("volume_id")), cell(m.get("mount_path")))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Run a `vm` subcommand.
pub async fn run(ctx: &Ctx, cmd: VmCmd) -> Result<()> {
    match cmd {
        VmCmd::Create(a) => create(ctx, a).await,
        VmCmd::Ls { status } => {
            let query: Vec<(&str, &str)> = status.as_deref().map(|s| ("status", s)).into_iter().collect();
            emit(&ctx.out.list(&ctx.api.list_all("/v1/vms", &query).await?, LIST))
        }
        VmCmd::Get { vm } => {
            let id = resolve::vm(&ctx.api, &vm).await?;
            emit(&ctx.out.detail(&ctx.api.get(&format!("/v1/vms/{id}")).await?, DETAIL))
        }
        VmCmd::Start(a) => act(ctx, &a, "start").await,
        VmCmd::Stop(a) => act(ctx, &a, "stop").await,
        VmCmd::Restart(a) => act(ctx, &a, "restart").await,
        VmCmd::Standby(a) => act(ctx, &a, "standby").await,
        VmCmd::Restore(a) => act(ctx, &a, "restore").await,
        VmCmd::Flatten(a) => act(ctx, &a, "flatten").await,
        VmCmd::Rm(a) => act(ctx, &a, "delete").await,
        VmCmd::Fork { vm, name, count, wait } => fork(ctx, &vm, &name, count, &wait).await,
        VmCmd::Logs { vm, follow, tail } => logs(ctx, &vm, follow, tail).await,
        VmCmd::Console(a) => {
            let id = resolve::vm(&ctx.api, &a.vm).await?;
            console::run(&ctx.api, &id, &a).await
        }
        VmCmd::Ssh(a) => {
            let id = resolve::vm(&ctx.api, &a.vm).await?;
            let vm = ctx.api.get(&format!("/v1/vms/{id}")).await?;
            ssh::exec(ctx.api.base(), &vm, &a)
        }
        VmCmd::Events { vm, follow } => {
            let id = resolve::vm(&ctx.api, &vm).await?;
            if follow {
                events::follow(ctx, &format!("/v1/vms/{id}/events?follow=true")).await
            } else {
                emit(&ctx.out.list(&ctx.api.list(&format!("/v1/vms/{id}/events")).await?, events::HISTORY))
            }
        }
        VmCmd::Wait { vm, status, timeout } => {
            let id = resolve::vm(&ctx.api, &vm).await?;
            let vm = wait::vm_status(&ctx.api, &id, &status, timeout).await?;
            if vm.is_null() { Ok(()) } else { emit(&ctx.out.row(&vm, LIST)) }
        }
    }
}

/// `vm fork`: the clones as accepted, or with --wait, once the fork's one
/// operation (snapshot and every clone) has succeeded, as they are then.
async fn fork(ctx: &Ctx, vm: &str, name: &str, count: u32, wait: &WaitArgs) -> Result<()> {
    let id = resolve::vm(&ctx.api, vm).await?;
    let accepted = ctx.api.post(&format!("/v1/vms/{id}/fork"), Some(&json!({"name": name, "count": count}))).await?;
    let clones = accepted.get("vms").and_then(Value::as_array).cloned().unwrap_or_default();
    if !wait.wait {
        return emit(&ctx.out.list(&clones, LIST));
    }
    let op = str_at(&accepted, "/operation/id")?;
    let snapshot = format!("/v1/snapshots/{}", str_at(&accepted, "/snapshot/id")?);
    wait::operation(&ctx.api, op, wait.timeout, &wait::Watch { label: name, path: Some(snapshot) }).await?;
    let mut now = Vec::with_capacity(clones.len());
    for clone in &clones {
        now.push(ctx.api.get(&format!("/v1/vms/{}", str_at(clone, "/id")?)).await?);
    }
    emit(&ctx.out.list(&now, LIST))
}

async fn create(ctx: &Ctx, mut a: CreateArgs) -> Result<()> {
    if let Some(snap) = &a.from_snapshot {
        a.from_snapshot = Some(resolve::snapshot(&ctx.api, snap).await?);
    }
    let ssh_keys = a.ssh_keys.iter().map(|p| read_keys(p)).collect::<Result<Vec<_>>>()?.concat();
    let user_data = a.user_data.as_deref().map(read_text).transpose()?;
    let mut volumes = Vec::new();
    for v in &a.volumes {
        volumes.push(VolumeArg { volume: resolve::volume(&ctx.api, &v.volume).await?, ..v.clone() });
    }
    let body = create_body(&a, ssh_keys, user_data, &volumes);
    let accepted = ctx.api.post("/v1/vms", Some(&body)).await?;
    let id = str_at(&accepted, "/id")?;
    wait::finish(ctx, &accepted, &a.wait, &a.name, &format!("/v1/vms/{id}"), LIST).await
}

/// The `POST /v1/vms` body of a create (volumes already resolved to ids).
pub fn create_body(a: &CreateArgs, ssh_keys: Vec<String>, user_data: Option<String>, volumes: &[VolumeArg]) -> Value {
    let mut b = Map::new();
    b.insert("name".into(), json!(a.name));
    let mut opt = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b.insert(k.into(), v);
        }
    };
    opt("image", a.image.as_ref().map(|v| json!(v)));
    opt("vcpus", a.vcpus.map(|v| json!(v)));
    opt("memory_mib", a.memory.map(|v| json!(v)));
    opt("disk_gb", a.disk.map(|v| json!(v)));
    opt("user_data", user_data.map(|v| json!(v)));
    opt("plan", a.plan.as_ref().map(|v| json!(v)));
    opt("region", a.region.as_ref().map(|v| json!(v)));
    opt("from_snapshot", a.from_snapshot.as_ref().map(|v| json!(v)));
    opt("ssh_keys", (!ssh_keys.is_empty()).then(|| json!(ssh_keys)));
    opt("port_forwards", (!a.ports.is_empty()).then(|| json!(a.ports)));
    let mounts: Vec<Value> = volumes.iter().map(|v| json!({"volume_id": v.volume, "mount_path": v.path, "readonly": v.readonly})).collect();
    opt("volumes", (!mounts.is_empty()).then(|| json!(mounts)));
    let labels: Map<String, Value> = a.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    opt("labels", (!labels.is_empty()).then_some(Value::Object(labels)));
    Value::Object(b)
}

/// A lifecycle action, optionally awaited.
async fn act(ctx: &Ctx, a: &ActionArgs, action: &str) -> Result<()> {
    let id = resolve::vm(&ctx.api, &a.vm).await?;
    let path = format!("/v1/vms/{id}");
    let accepted = match action {
        "delete" => ctx.api.delete(&path).await?,
        _ => ctx.api.post(&format!("{path}/{action}"), None).await?,
    };
    wait::finish(ctx, &accepted, &a.wait, &a.vm, &path, LIST).await
}

async fn logs(ctx: &Ctx, vm: &str, follow: bool, tail: Option<usize>) -> Result<()> {
    let id = resolve::vm(&ctx.api, vm).await?;
    let tail = tail.map(|t| format!("&tail={t}")).unwrap_or_default();
    if !follow {
        let body = ctx.api.get(&format!("/v1/vms/{id}/logs?follow=false{tail}")).await?;
        if ctx.out.format != crate::output::Format::Table {
            return emit(&ctx.out.document(&body));
        }
        let lines = body.get("lines").and_then(Value::as_array).ok_or_else(|| Error::BadResponse("logs: no `lines` list".into()))?;
        return emit(&lines.iter().filter_map(Value::as_str).map(|l| format!("{l}\n")).collect::<String>());
    }
    let mut stream = sse::Stream::open(&ctx.api, &format!("/v1/vms/{id}/logs?follow=true{tail}"))?;
    while let Some(m) = stream.next().await? {
        let item = json!({"seq": m.id, "line": m.data});
        let text = match ctx.out.format {
            crate::output::Format::Table => format!("{}\n", m.data),
            _ => ctx.out.stream_item(&item, |_| String::new()),
        };
        emit(&text)?;
    }
    Ok(())
}

/// Every key line of an SSH public key file (blank lines and comments skipped).
fn read_keys(path: &Path) -> Result<Vec<String>> {
    let text = read_text(path)?;
    let keys: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    if keys.is_empty() {
        return Err(Error::Invalid(format!("--ssh-key {}: no key in it", path.display())));
    }
    if keys.iter().any(|k| k.contains("PRIVATE KEY")) {
        return Err(Error::Invalid(format!("--ssh-key {}: this is a private key; give the .pub file", path.display())));
    }
    Ok(keys)
}

/// A text file, or standard input for `-`.
fn read_text(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(Error::io("reading standard input"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))
}

/// `512`, `512M`, `512MiB`, `2G`, `2GiB` as MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let (n, mult) = split_unit(s, &[("", 1), ("m", 1), ("mb", 1), ("mib", 1), ("g", 1024), ("gb", 1024), ("gib", 1024)])?;
    n.checked_mul(mult).ok_or_else(|| "too large".into())
}

/// `10`, `10G`, `10GB`, `10GiB`, `1T` as GB.
pub fn parse_gb(s: &str) -> Result<u32, String> {
    let (n, mult) = split_unit(s, &[("", 1), ("g", 1), ("gb", 1), ("gib", 1), ("t", 1024), ("tb", 1024), ("tib", 1024)])?;
    n.checked_mul(mult).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| "too large".into())
}

fn split_unit(s: &str, units: &[(&str, u64)]) -> Result<(u64, u64), String> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(at);
    let n: u64 = num.parse().map_err(|_| format!("`{s}`: expected a whole number, optionally with a unit"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let mult = units.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(|| format!("`{s}`: unknown unit `{unit}`"))?;
    Ok((n, mult))
}

/// `GUEST[:HOST][/udp]` as a port forward.
pub fn parse_port(s: &str) -> Result<Value, String> {
    let (ports, protocol) = match s.split_once('/') {
        Some((p, proto @ ("tcp" | "udp"))) => (p, proto),
        Some((_, other)) => return Err(format!("unknown protocol `{other}` (tcp or udp)")),
        None => (s, "tcp"),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("`{p}` is not a port (1-65535)"));
    Ok(match ports.split_once(':') {
        Some((guest, host)) => json!({"guest_port": port(guest)?, "host_port": port(host)?, "protocol": protocol}),
        None => json!({"guest_port": port(ports)?, "protocol": protocol}),
    })
}

/// `VOL:PATH[:ro]`.
pub fn parse_volume(s: &str) -> Result<VolumeArg, String> {
    let (volume, rest) = s.split_once(':').ok_or("expected VOL:PATH[:ro]")?;
    let (path, readonly) = match rest.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (rest.strip_suffix(":rw").unwrap_or(rest), false),
    };
    if volume.is_empty() || !path.starts_with('/') {
        return Err("expected VOL:PATH[:ro] with an absolute PATH".into());
    }
    Ok(VolumeArg { volume: volume.to_owned(), path: path.to_owned(), readonly })
}

/// `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').filter(|(k, _)| !k.is_empty()).map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "expected KEY=VALUE".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("2G"), Ok(2048));
        assert_eq!(parse_mib("768MiB"), Ok(768));
        assert!(parse_mib("2X").is_err() && parse_mib("").is_err() && parse_mib("-1").is_err());
        assert_eq!(parse_gb("20"), Ok(20));
        assert_eq!(parse_gb("1T"), Ok(1024));
        assert!(parse_gb("99999999999").is_err());
    }

    #[test]
    fn ports_and_volumes() {
        assert_eq!(parse_port("80").unwrap(), json!({"guest_port": 80, "protocol": "tcp"}));
        assert_eq!(parse_port("53:20053/udp").unwrap(), json!({"guest_port": 53, "host_port": 20053, "protocol": "udp"}));
        assert!(parse_port("0").is_err() && parse_port("80/sctp").is_err() && parse_port("x:1").is_err());
        assert_eq!(parse_volume("data:/mnt/data:ro").unwrap(), VolumeArg { volume: "data".into(), path: "/mnt/data".into(), readonly: true });
        assert_eq!(parse_volume("vol_x:/srv").unwrap(), VolumeArg { volume: "vol_x".into(), path: "/srv".into(), readonly: false });
        assert!(parse_volume("data").is_err() && parse_volume("data:relative").is_err() && parse_volume(":/x").is_err());
    }

    #[test]
    fn the_create_body_holds_only_what_was_given() {
        let a = CreateArgs { name: "web".into(), ..CreateArgs::default() };
        assert_eq!(create_body(&a, vec![], None, &[]), json!({"name": "web"}));
        let a = CreateArgs {
            name: "web".into(),
            image: Some("debian-minimal".into()),
            vcpus: Some(2),
            memory: Some(1024),
            disk: Some(20),
            ports: vec![parse_port("80").unwrap()],
            labels: vec![("tier".into(), "front".into())],
            ..CreateArgs::default()
        };
        let vols = [VolumeArg { volume: "vol_1".into(), path: "/data".into(), readonly: true }];
        let body = create_body(&a, vec!["ssh-ed25519 AAAA x".into()], Some("#!/bin/sh\n".into()), &vols);
        assert_eq!(
            body,
            json!({"name": "web", "image": "debian-minimal", "vcpus": 2, "memory_mib": 1024, "disk_gb": 20,
                "ssh_keys": ["ssh-ed25519 AAAA x"], "user_data": "#!/bin/sh\n",
                "port_forwards": [{"guest_port": 80, "protocol": "tcp"}],
                "volumes": [{"volume_id": "vol_1", "mount_path": "/data", "readonly": true}],
                "labels": {"tier": "front"}})
        );
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.pub");
        std::fs::write(&p, "# mine\nssh-ed25519 AAAA a@b\n\nssh-rsa BBBB c@d\n").unwrap();
        assert_eq!(read_keys(&p).unwrap(), ["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"]);
        std::fs::write(&p, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        assert!(read_keys(&p).is_err());
        assert!(read_keys(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn cells_of_ports_and_volumes() {
        let vm = json!({"port_forwards": [{"guest_port": 80, "host_port": 20001, "protocol": "tcp"}],
            "volumes": [{"volume_id": "vol_1", "mount_path": "/d", "readonly": true}]});
        assert_eq!(ports_cell(&vm), "80->20001/tcp");
        assert_eq!(volumes_cell(&vm), "vol_1:/d(ro)");
        assert_eq!(ports_cell(&json!({})), "-");
    }
}
