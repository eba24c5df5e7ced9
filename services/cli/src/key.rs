//! `vmplane key …`: API keys (`/v1/api-keys`, admin).

use crate::error::Result;
use crate::output::{Column, col, col_with, time_cell};
use crate::{Ctx, emit, resolve};
use clap::Subcommand;
use serde_json::json;

/// `vmplane key` subcommands.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an API key in the org acted in (--org); its secret is shown this once.
    Create {
        /// The key's name.
        name: String,
    },
    /// List the API keys of the org acted in (never their secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke an API key: it is refused everywhere from then on.
    Revoke {
        /// Key id or name.
        key: String,
    },
}

/// The columns of `key ls`.
pub const LIST: &[Column] = &[col("ID", "/id"), col("NAME", "/name"), col("ORG", "/org_id"), col_with("CREATED", |v| time_cell(v.get("created_at")))];

/// What `key create` shows: the secret, which is not shown again.
const CREATED: &[Column] = &[col("ID", "/id"), col("NAME", "/name"), col("ORG", "/org_id"), col("SECRET", "/secret")];

/// Run a `key` subcommand.
pub async fn run(ctx: &Ctx, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Create { name } => {
            let mut body = json!({"name": name});
            if let Some(org) = ctx.api.org() {
                body["org_id"] = json!(org);
            }
            let created = ctx.api.post("/v1/api-keys", Some(&body)).await?;
            emit(&ctx.out.row(&created, CREATED))
        }
        KeyCmd::Ls => emit(&ctx.out.list(&ctx.api.list("/v1/api-keys").await?, LIST)),
        KeyCmd::Revoke { key } => {
            let id = resolve::api_key(&ctx.api, &key).await?;
            emit(&ctx.out.row(&ctx.api.delete(&format!("/v1/api-keys/{id}")).await?, LIST))
        }
    }
}
