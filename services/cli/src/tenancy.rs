//! `vmplane org …` and `vmplane project …` (admin): `/v1/orgs`,
//! `/v1/orgs/{org}/projects`.

use crate::error::Result;
use crate::output::{Column, col, col_with, time_cell};
use crate::resolve::DEFAULT_ORG;
use crate::{Ctx, emit};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

/// `vmplane org` subcommands.
#[derive(Subcommand)]
pub enum OrgCmd {
    /// Create an org.
    Create {
        /// The org's name (a DNS label).
        name: String,
        /// How its VMs and volumes are placed when a create does not say.
        #[arg(long, value_enum, default_value = "spread")]
        placement_strategy: Strategy,
    },
    /// List every org.
    #[command(visible_alias = "list")]
    Ls,
}

/// `vmplane project` subcommands (in the org given by --org, else the default org).
#[derive(Subcommand)]
pub enum ProjectCmd {
    /// Create a project.
    Create {
        /// The project's name (a DNS label).
        name: String,
    },
    /// List the org's projects.
    #[command(visible_alias = "list")]
    Ls,
}

/// `--placement-strategy`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Strategy {
    /// The least loaded host.
    Spread,
    /// The most loaded host that fits.
    Binpack,
}

/// The columns of `org ls`.
pub const ORGS: &[Column] =
    &[col("ID", "/id"), col("NAME", "/name"), col("PLACEMENT", "/placement_strategy"), col_with("CREATED", |v| time_cell(v.get("created_at")))];

/// The columns of `project ls`.
pub const PROJECTS: &[Column] = &[col("ID", "/id"), col("NAME", "/name"), col("ORG", "/org_id"), col_with("CREATED", |v| time_cell(v.get("created_at")))];

/// Run an `org` subcommand.
pub async fn run_org(ctx: &Ctx, cmd: OrgCmd) -> Result<()> {
    match cmd {
        OrgCmd::Create { name, placement_strategy } => {
            let strategy = match placement_strategy {
                Strategy::Spread => "spread",
                Strategy::Binpack => "binpack",
            };
            emit(&ctx.out.row(&ctx.api.post("/v1/orgs", Some(&json!({"name": name, "placement_strategy": strategy}))).await?, ORGS))
        }
        OrgCmd::Ls => emit(&ctx.out.list(&ctx.api.list("/v1/orgs").await?, ORGS)),
    }
}

/// Run a `project` subcommand.
pub async fn run_project(ctx: &Ctx, cmd: ProjectCmd) -> Result<()> {
    let org = ctx.api.org().unwrap_or(DEFAULT_ORG).to_owned();
    match cmd {
        ProjectCmd::Create { name } => emit(&ctx.out.row(&ctx.api.post(&format!("/v1/orgs/{org}/projects"), Some(&json!({"name": name}))).await?, PROJECTS)),
        ProjectCmd::Ls => emit(&ctx.out.list(&ctx.api.list(&format!("/v1/orgs/{org}/projects")).await?, PROJECTS)),
    }
}
