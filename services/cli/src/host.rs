//! `vmplane host …`: `/v1/hosts`.

use crate::client::str_at;
use crate::error::Result;
use crate::output::{Column, cell, col, col_with, time_cell};
use crate::wait::{self, WaitArgs, Watch};
use crate::{Ctx, emit, resolve};
use clap::Subcommand;
use serde_json::Value;

/// `vmplane host` subcommands.
#[derive(Subcommand)]
pub enum HostCmd {
    /// List the hosts, their capacity and what is left.
    #[command(visible_alias = "list")]
    Ls,
    /// Place nothing new on a host; what runs there stays (admin).
    Cordon {
        /// Host id or name.
        host: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Let a host take new VMs and volumes again (admin).
    Uncordon {
        /// Host id or name.
        host: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// The columns of `host ls`.
pub const LIST: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("STATUS", "/status"),
    col("DRIVER", "/driver"),
    col("REGION", "/region"),
    col_with("VCPUS FREE", |v| format!("{}/{}", cell(v.pointer("/available/vcpus")), cell(v.get("cpus")))),
    col_with("MEMORY FREE", |v| format!("{}/{} MiB", cell(v.pointer("/available/memory_mib")), cell(v.get("memory_mib")))),
    col_with("DISK FREE", |v| format!("{}/{} GB", cell(v.pointer("/available/disk_gb")), cell(v.get("disk_gb")))),
    col_with("HEARTBEAT", |v| time_cell(v.get("last_heartbeat"))),
];

/// What a cordon answers: its operation.
const OPERATION: &[Column] = &[col("ID", "/id"), col("KIND", "/kind"), col("TARGET", "/target_id"), col("STATUS", "/status")];

/// Run a `host` subcommand.
pub async fn run(ctx: &Ctx, cmd: HostCmd) -> Result<()> {
    let (host, wait, action) = match cmd {
        HostCmd::Ls => return emit(&ctx.out.list(&ctx.api.list("/v1/hosts").await?, LIST)),
        HostCmd::Cordon { host, wait } => (host, wait, "cordon"),
        HostCmd::Uncordon { host, wait } => (host, wait, "uncordon"),
    };
    let id = resolve::host(&ctx.api, &host).await?;
    let mut op: Value = ctx.api.post(&format!("/v1/hosts/{id}/{action}"), None).await?;
    if wait.wait {
        let op_id = str_at(&op, "/id")?.to_owned();
        op = wait::operation(&ctx.api, &op_id, wait.timeout, &Watch { label: &host, path: None }).await?;
    }
    emit(&ctx.out.row(&op, OPERATION))
}
