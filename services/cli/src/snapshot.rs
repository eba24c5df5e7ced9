//! `vmplane snapshot …`: `/v1/snapshots`, and taking one of a VM
//! (`/v1/vms/{id}/snapshots`). VMs are created from one with
//! `vm create --from-snapshot`.

use crate::client::str_at;
use crate::error::Result;
use crate::output::{Column, col, col_with, time_cell};
use crate::wait::{WaitArgs, finish};
use crate::{Ctx, emit, resolve};
use clap::Subcommand;
use serde_json::json;

/// `vmplane snapshot` subcommands.
#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a running or standby VM (memory, devices, root disk).
    Take {
        /// VM id or name.
        vm: String,
        /// The snapshot's name (a DNS label).
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List snapshots (every page).
    #[command(visible_alias = "list")]
    Ls,
    /// Show one snapshot.
    Get {
        /// Snapshot id or name.
        snapshot: String,
    },
    /// Delete a snapshot (refused while VMs created from it exist).
    #[command(visible_alias = "delete")]
    Rm {
        /// Snapshot id or name.
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// The columns of `snapshot ls`.
pub const LIST: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("STATUS", "/status"),
    col("VM", "/source_vm_id"),
    col_with("MEMORY", |v| format!("{} MiB", crate::output::cell(v.get("memory_mib")))),
    col_with("SIZE", |v| v.get("size_bytes").and_then(|b| b.as_u64()).map_or_else(|| "-".into(), |b| format!("{} MiB", b >> 20))),
    col("PAUSE MS", "/pause_ms"),
    col("HOST", "/host_id"),
    col_with("CREATED", |v| time_cell(v.get("created_at"))),
];

/// Run a `snapshot` subcommand.
pub async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Take { vm, name, wait } => {
            let vm_id = resolve::vm(&ctx.api, &vm).await?;
            let accepted = ctx.api.post(&format!("/v1/vms/{vm_id}/snapshots"), Some(&json!({"name": name}))).await?;
            let id = str_at(&accepted, "/id")?.to_owned();
            finish(ctx, &accepted, &wait, &name, &format!("/v1/snapshots/{id}"), LIST).await
        }
        SnapshotCmd::Ls => emit(&ctx.out.list(&ctx.api.list_all("/v1/snapshots", &[]).await?, LIST)),
        SnapshotCmd::Get { snapshot } => {
            let id = resolve::snapshot(&ctx.api, &snapshot).await?;
            emit(&ctx.out.detail(&ctx.api.get(&format!("/v1/snapshots/{id}")).await?, LIST))
        }
        SnapshotCmd::Rm { snapshot, wait } => {
            let id = resolve::snapshot(&ctx.api, &snapshot).await?;
            let accepted = ctx.api.delete(&format!("/v1/snapshots/{id}")).await?;
            finish(ctx, &accepted, &wait, &snapshot, &format!("/v1/snapshots/{id}"), LIST).await
        }
    }
}
