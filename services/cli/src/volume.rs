//! `vmplane volume …`: `/v1/volumes`, and attaching them to VMs
//! (`/v1/vms/{id}/volumes/{volume_id}`).

use crate::client::str_at;
use crate::error::Result;
use crate::output::{Column, col, col_with, time_cell};
use crate::vm::parse_gb;
use crate::wait::{WaitArgs, finish};
use crate::{Ctx, emit, resolve};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

/// `vmplane volume` subcommands.
#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        /// The volume's name (a DNS label).
        name: String,
        /// Size: GB, or with a unit (10G, 1T).
        #[arg(long, value_parser = parse_gb)]
        size: u32,
        /// `block`: a raw device; `filesystem`: formatted and mounted by the guest agent.
        #[arg(long = "type", value_enum, default_value = "block")]
        kind: Kind,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List volumes (every page).
    #[command(visible_alias = "list")]
    Ls,
    /// Show one volume.
    Get {
        /// Volume id or name.
        volume: String,
    },
    /// Delete a volume (refused while it is attached).
    #[command(visible_alias = "delete")]
    Rm {
        /// Volume id or name.
        volume: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Attach a volume to a VM on the same host (hot-plugged when it runs).
    Attach {
        /// Volume id or name.
        volume: String,
        /// VM id or name.
        vm: String,
        /// Where the guest mounts it (absolute path).
        #[arg(long, value_name = "PATH")]
        path: String,
        /// Read-only.
        #[arg(long)]
        ro: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Unmount and detach a volume from a VM.
    Detach {
        /// Volume id or name.
        volume: String,
        /// VM id or name.
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `--type`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Block,
    Filesystem,
}

/// The columns of `volume ls`.
pub const LIST: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col_with("SIZE", |v| format!("{} GB", crate::output::cell(v.get("size_gb")))),
    col("TYPE", "/type"),
    col("STATUS", "/status"),
    col("VM", "/vm_id"),
    col("HOST", "/host_id"),
    col_with("CREATED", |v| time_cell(v.get("created_at"))),
];

/// What attach and detach show of the VM.
const VM_VOLUMES: &[Column] = &[col("ID", "/id"), col("NAME", "/name"), col("STATUS", "/status"), col_with("VOLUMES", crate::vm::volumes_cell)];

/// Run a `volume` subcommand.
pub async fn run(ctx: &Ctx, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create { name, size, kind, wait } => {
            let kind = match kind {
                Kind::Block => "block",
                Kind::Filesystem => "filesystem",
            };
            let accepted = ctx.api.post("/v1/volumes", Some(&json!({"name": name, "size_gb": size, "type": kind}))).await?;
            let id = str_at(&accepted, "/id")?.to_owned();
            finish(ctx, &accepted, &wait, &name, &format!("/v1/volumes/{id}"), LIST).await
        }
        VolumeCmd::Ls => emit(&ctx.out.list(&ctx.api.list_all("/v1/volumes", &[]).await?, LIST)),
        VolumeCmd::Get { volume } => {
            let id = resolve::volume(&ctx.api, &volume).await?;
            emit(&ctx.out.detail(&ctx.api.get(&format!("/v1/volumes/{id}")).await?, LIST))
        }
        VolumeCmd::Rm { volume, wait } => {
            let id = resolve::volume(&ctx.api, &volume).await?;
            let accepted = ctx.api.delete(&format!("/v1/volumes/{id}")).await?;
            finish(ctx, &accepted, &wait, &volume, &format!("/v1/volumes/{id}"), LIST).await
        }
        VolumeCmd::Attach { volume, vm, path, ro, wait } => {
            let (vol, vm_id) = (resolve::volume(&ctx.api, &volume).await?, resolve::vm(&ctx.api, &vm).await?);
            let body = json!({"mount_path": path, "readonly": ro});
            let accepted = ctx.api.post(&format!("/v1/vms/{vm_id}/volumes/{vol}"), Some(&body)).await?;
            finish(ctx, &accepted, &wait, &vm, &format!("/v1/vms/{vm_id}"), VM_VOLUMES).await
        }
        VolumeCmd::Detach { volume, vm, wait } => {
            let (vol, vm_id) = (resolve::volume(&ctx.api, &volume).await?, resolve::vm(&ctx.api, &vm).await?);
            let accepted = ctx.api.delete(&format!("/v1/vms/{vm_id}/volumes/{vol}")).await?;
            finish(ctx, &accepted, &wait, &vm, &format!("/v1/vms/{vm_id}"), VM_VOLUMES).await
        }
    }
}
