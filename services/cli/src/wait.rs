//! Waiting for an operation to finish or a VM to reach a status, with a
//! spinner showing where it stands (only when stdout and stderr are terminals).

use crate::client::{Api, str_at};
use crate::error::{Error, Result};
use crate::output::Column;
use crate::{Ctx, emit};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::Duration;
use tokio::time::Instant;

/// How long one long poll of an operation lasts (the spinner's status is refreshed between polls).
const POLL: Duration = Duration::from_secs(2);
/// Pause between two reads of a VM while waiting for its status.
const VM_POLL: Duration = Duration::from_millis(300);

/// A spinner on stderr, or nothing when not on a terminal.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A spinner showing `message`, if stdout and stderr are terminals.
    pub fn new(message: impl Into<String>) -> Self {
        if !(std::io::stderr().is_terminal() && std::io::stdout().is_terminal()) {
            return Self(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(Some(bar))
    }

    /// Show `message` instead.
    pub fn set(&self, message: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.into());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// What to show while an operation runs: the status of the resource at `path`.
pub struct Watch<'a> {
    pub label: &'a str,
    pub path: Option<String>,
}

/// Long-poll operation `op` until it ends; `Ok` with it when it succeeded.
pub async fn operation(api: &Api, op: &str, timeout: Duration, watch: &Watch<'_>) -> Result<Value> {
    let progress = Progress::new(format!("{}: waiting for operation {op}", watch.label));
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.min(POLL).as_secs();
        let status = api.get_waiting(&format!("/v1/operations/{op}?wait={wait}"), Duration::from_secs(wait)).await?;
        match str_at(&status, "/status")? {
            "succeeded" => return Ok(status),
            "failed" => {
                let code = status.pointer("/error/code").and_then(Value::as_str).unwrap_or("failed").to_owned();
                let message = status.pointer("/error/message").and_then(Value::as_str).unwrap_or("the operation failed").to_owned();
                return Err(Error::OperationFailed { op: op.to_owned(), code, message });
            }
            other => {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout { after: humantime::format_duration(timeout).to_string(), what: format!("operation {op} ({other})") });
                }
                let shown = match &watch.path {
                    // The resource may be gone already (a delete): then the operation's status.
                    Some(path) => api.get(path).await.ok().and_then(|r| r.get("status").and_then(Value::as_str).map(str::to_owned)),
                    None => None,
                };
                progress.set(format!("{}: {}", watch.label, shown.unwrap_or_else(|| format!("operation {other}"))));
            }
        }
    }
}

/// Read VM `id` until its status is `target`; a VM that fails on the way is an error.
pub async fn vm_status(api: &Api, id: &str, target: &str, timeout: Duration) -> Result<Value> {
    let progress = Progress::new(format!("{id}: waiting for {target}"));
    let deadline = Instant::now() + timeout;
    loop {
        let vm = match api.get(&format!("/v1/vms/{id}")).await {
            // A deleted VM may be gone from reads altogether.
            Err(Error::Api { status: 404, .. }) if target == "deleted" => return Ok(Value::Null),
            other => other?,
        };
        let status = str_at(&vm, "/status")?;
        if status == target {
            return Ok(vm);
        }
        if status == "failed" {
            let message = vm.get("message").and_then(Value::as_str).unwrap_or("no reason given").to_owned();
            return Err(Error::VmFailed { vm: id.to_owned(), message });
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout { after: humantime::format_duration(timeout).to_string(), what: format!("vm {id} to be {target} (it is {status})") });
        }
        progress.set(format!("{id}: {status}, waiting for {target}"));
        tokio::time::sleep(VM_POLL).await;
    }
}

/// `--timeout`: how long a wait may take.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 90s, 5m)"))
}

/// `--wait` and `--timeout`.
#[derive(Args, Clone, Default)]
pub struct WaitArgs {
    /// Wait until the operation has finished.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 8).
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// Print what a command answered (`accepted`, with its `operation`), or with
/// --wait, wait for the operation and print the resource at `path` as it is then.
pub async fn finish(ctx: &Ctx, accepted: &Value, wait: &WaitArgs, label: &str, path: &str, columns: &[Column]) -> Result<()> {
    if !wait.wait {
        return emit(&ctx.out.row(accepted, columns));
    }
    let op = str_at(accepted, "/operation/id")?;
    operation(&ctx.api, op, wait.timeout, &Watch { label, path: Some(path.to_owned()) }).await?;
    match ctx.api.get(path).await {
        Ok(now) => emit(&ctx.out.row(&now, columns)),
        // Deleted and gone from reads: what the command answered.
        Err(Error::Api { status: 404, .. }) => emit(&ctx.out.row(accepted, columns)),
        Err(e) => Err(e),
    }
}
