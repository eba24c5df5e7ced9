//! `vmplane image …`: `/v1/images`.

use crate::client::str_at;
use crate::error::Result;
use crate::output::{Column, cell, col, col_with};
use crate::wait::{self, WaitArgs, Watch};
use crate::{Ctx, emit, resolve};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

/// `vmplane image` subcommands.
#[derive(Subcommand)]
pub enum ImageCmd {
    /// List the images some host can boot.
    #[command(visible_alias = "list")]
    Ls,
    /// Import an image from a file on a host (admin); watch its operation, or --wait.
    Import {
        /// The name VMs will give as `--image` (a DNS label).
        name: String,
        /// Absolute path of the source on the host.
        #[arg(long, value_name = "PATH")]
        source: String,
        /// What the source is.
        #[arg(long, value_enum)]
        format: ImageFormat,
        /// The host to import on (id or name); default: the first online host.
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `--format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImageFormat {
    /// A raw disk holding an ext2/3/4 root filesystem.
    Raw,
    /// The same, as qcow2.
    Qcow2,
    /// An OCI image layout directory.
    OciLayout,
    /// A `docker save` tarball.
    DockerArchive,
}

impl ImageFormat {
    fn api_name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
            Self::OciLayout => "oci_layout",
            Self::DockerArchive => "docker_archive",
        }
    }
}

/// The columns of `image ls`.
pub const LIST: &[Column] = &[
    col("ID", "/id"),
    col("NAME", "/name"),
    col("OS", "/os"),
    col("ARCH", "/arch"),
    col("BOOT", "/boot"),
    col_with("SIZE", |v| mib(v.get("size_bytes"))),
    col_with("HOSTS", |v| v.get("host_ids").and_then(Value::as_array).map_or_else(|| "-".into(), |h| h.len().to_string())),
];

/// What an import answers.
const IMPORT: &[Column] =
    &[col("ID", "/id"), col("NAME", "/name"), col("HOST", "/host_id"), col("OPERATION", "/operation/id"), col("STATUS", "/operation/status")];

fn mib(v: Option<&Value>) -> String {
    match v.and_then(Value::as_u64) {
        Some(b) => format!("{} MiB", b.div_ceil(1 << 20)),
        None => cell(v),
    }
}

/// Run an `image` subcommand.
pub async fn run(ctx: &Ctx, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Ls => emit(&ctx.out.list(&ctx.api.list("/v1/images").await?, LIST)),
        ImageCmd::Import { name, source, format, host, wait } => {
            let host = match host {
                Some(h) => Some(resolve::host(&ctx.api, &h).await?),
                None => None,
            };
            let mut body = json!({"name": name, "source": source, "format": format.api_name()});
            if let Some(h) = host {
                body["host_id"] = json!(h);
            }
            let mut accepted = ctx.api.post("/v1/images", Some(&body)).await?;
            if wait.wait {
                let op = str_at(&accepted, "/operation/id")?.to_owned();
                accepted["operation"] = wait::operation(&ctx.api, &op, wait.timeout, &Watch { label: &name, path: None }).await?;
            }
            emit(&ctx.out.row(&accepted, IMPORT))
        }
    }
}
