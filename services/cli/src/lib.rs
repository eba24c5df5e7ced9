//! The `vmplane` client commands: `vm`, `volume`, `image`, `host`, `events`,
//! `key`, `org`, `project`, `login` and `completions`, built only on the
//! public HTTP API (`/v1`), so they work against any gateway, local or
//! remote. The binary (`services/vmplane`) flattens [`Command`] into its own
//! subcommands and hands the parsed command to [`run`], which returns the
//! process's exit status (see [`error::exit`] and `docs/cli.md`).
//!
//! One module per concept: [`client`] (HTTP, errors), [`config`] (profiles),
//! [`output`] (tables, JSON, YAML), [`resolve`] (names to ids), [`wait`]
//! (operations, spinners), [`sse`] (event streams), and the resource groups.

pub mod client;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod host;
pub mod image;
pub mod key;
pub mod login;
pub mod output;
pub mod resolve;
pub mod snapshot;
pub mod sse;
pub mod ssh;
pub mod tenancy;
pub mod vm;
pub mod volume;
pub mod wait;

use clap::{Args, Subcommand};
use client::Api;
use error::{Error, Result};
use output::{Format, Out};
use std::io::Write;
use std::path::PathBuf;

/// Connection and output flags, accepted by every client command (before or
/// after the subcommand).
#[derive(Args, Clone)]
pub struct Global {
    /// The gateway's URL.
    #[arg(long, global = true, env = "VMPLANE_URL", value_name = "URL", help_heading = "Connection")]
    pub url: Option<String>,
    /// An API key secret or the admin token. Default: the profile's token,
    /// else (for a gateway on this machine) the admin token in <data-dir>/admin-token.
    #[arg(long, global = true, env = "VMPLANE_TOKEN", hide_env_values = true, value_name = "TOKEN", help_heading = "Connection")]
    pub token: Option<String>,
    /// The org to act in: an id, or a name (names need the admin token).
    #[arg(long, global = true, env = "VMPLANE_ORG", value_name = "ORG", help_heading = "Connection")]
    pub org: Option<String>,
    /// The project to act in: an id, or a name (names need the admin token).
    #[arg(long, global = true, env = "VMPLANE_PROJECT", value_name = "PROJECT", help_heading = "Connection")]
    pub project: Option<String>,
    /// A profile of the config file (`vmplane login --profile NAME` writes one).
    #[arg(long, global = true, env = "VMPLANE_PROFILE", value_name = "NAME", help_heading = "Connection")]
    pub profile: Option<String>,
    /// The local data dir, whose admin token is used for a local gateway when no other is given.
    #[arg(long, global = true, default_value = "./.vmplane", value_name = "DIR", help_heading = "Connection")]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value = "table", help_heading = "Output")]
    pub output: Format,
    /// Print only ids (one a line).
    #[arg(short = 'q', long, global = true, help_heading = "Output")]
    pub quiet: bool,
}

impl Global {
    fn given(&self) -> config::Given {
        config::Given {
            url: self.url.clone(),
            token: self.token.clone(),
            org: self.org.clone(),
            project: self.project.clone(),
            profile: self.profile.clone(),
            data_dir: self.data_dir.clone(),
        }
    }

    fn out(&self) -> Out {
        Out { format: self.output, quiet: self.quiet }
    }
}

/// A group of subcommands with the global flags.
#[derive(Args)]
pub struct Group<C: Subcommand> {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: C,
}

/// The client commands.
#[derive(Subcommand)]
pub enum Command {
    /// Virtual machines: create, list, start, stop, logs, console, ssh, ...
    Vm(Group<vm::VmCmd>),
    /// Volumes: create, list, attach to a VM, detach, delete.
    Volume(Group<volume::VolumeCmd>),
    /// Snapshots of VMs: take, list, delete (create VMs from one with `vm create --from-snapshot`).
    Snapshot(Group<snapshot::SnapshotCmd>),
    /// Images the hosts can boot; import one (admin).
    Image(Group<image::ImageCmd>),
    /// Hosts: list, cordon, uncordon (admin).
    Host(Group<host::HostCmd>),
    /// The event feed, live (Server-Sent Events).
    Events(events::FeedArgs),
    /// API keys (admin): create, list, revoke.
    Key(Group<key::KeyCmd>),
    /// Orgs (admin): create, list.
    Org(Group<tenancy::OrgCmd>),
    /// Projects of an org (admin): create, list.
    Project(Group<tenancy::ProjectCmd>),
    /// Check a gateway URL and token and save them as a profile of the config file.
    Login(login::LoginArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A connected command's context: the API client and where output goes.
pub struct Ctx {
    pub api: Api,
    pub out: Out,
}

impl Ctx {
    /// Connect as the flags, environment and config file say (names of the
    /// org and project resolved to ids).
    pub async fn connect(global: &Global) -> Result<Self> {
        let file = match config::path() {
            Some(path) => config::ConfigFile::load(&path)?,
            None => config::ConfigFile::default(),
        };
        let settings = config::settings(&global.given(), &file)?;
        let api = Api::new(&settings.url, settings.token)?;
        let org = match &settings.org {
            Some(o) => Some(resolve::org(&api, o).await?),
            None => None,
        };
        let project = match &settings.project {
            Some(p) => {
                let in_org = api.clone().scoped(org.clone(), None);
                Some(resolve::project(&in_org, org.as_deref().unwrap_or(resolve::DEFAULT_ORG), p).await?)
            }
            None => None,
        };
        Ok(Self { api: api.scoped(org, project), out: global.out() })
    }
}

/// Write to stdout (a closed pipe is not a panic).
pub fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(Error::io("writing to standard output"))
}

/// Run a client command; the exit status (0 on success). `root` is the
/// binary's whole command, for `completions`.
pub async fn run(command: Command, root: clap::Command) -> i32 {
    match dispatch(command, root).await {
        Ok(()) => 0,
        // A reader that went away (`| head`) is not an error worth a message.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("vmplane: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(command: Command, mut root: clap::Command) -> Result<()> {
    match command {
        Command::Vm(g) => vm::run(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Volume(g) => volume::run(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Snapshot(g) => snapshot::run(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Image(g) => image::run(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Host(g) => host::run(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Events(a) => events::feed(&Ctx::connect(&a.global).await?, &a).await,
        Command::Key(g) => key::run(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Org(g) => tenancy::run_org(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Project(g) => tenancy::run_project(&Ctx::connect(&g.global).await?, g.command).await,
        Command::Login(a) => login::run(a).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut root, "vmplane", &mut out);
            emit(&String::from_utf8_lossy(&out))
        }
    }
}
