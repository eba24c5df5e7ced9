//! Events: the feed (`vmplane events -f`, `GET /v1/events`) and a VM's
//! history (`vmplane vm events`), one line per event, JSON Lines with `-o json`.

use crate::client::encode;
use crate::error::{Error, Result};
use crate::output::{Column, cell, col, col_with, time_cell};
use crate::{Ctx, Global, emit, resolve, sse};
use clap::Args;
use serde_json::Value;

/// `vmplane events`.
#[derive(Args)]
pub struct FeedArgs {
    #[command(flatten)]
    pub global: Global,
    /// Follow the feed: every event from the start (or after --since), then live, until interrupted.
    /// Without it, --vm is needed and that VM's history is printed.
    #[arg(short, long, required_unless_present = "vm")]
    pub follow: bool,
    /// Only this VM's events (id or name).
    #[arg(long, value_name = "VM")]
    pub vm: Option<String>,
    /// Only these types: comma-separated patterns such as `vm.*`, `created`, `*_requested`.
    #[arg(long = "type", value_name = "PATTERNS")]
    pub types: Option<String>,
    /// Start right after this stream sequence (an event's `seq`).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
}

/// The columns of a VM's history.
pub const HISTORY: &[Column] =
    &[col("SEQ", "/seq"), col_with("TIME", |v| time_cell(v.get("time"))), col("TYPE", "/type"), col("OPERATION", "/operation_id"), col("ID", "/id")];

/// One event of a stream as a line: sequence, time, `<aggregate type>.<type>`, aggregate, operation.
pub fn line(e: &Value) -> String {
    let kind = match e.pointer("/event/aggregate_type").and_then(Value::as_str) {
        Some(agg) => format!("{agg}.{}", cell(e.get("type"))),
        None => cell(e.get("type")),
    };
    format!("{:>8}  {}  {:<28}  {}  {}", cell(e.get("seq")), time_cell(e.get("time")), kind, cell(e.get("aggregate_id")), cell(e.get("operation_id")))
}

/// `vmplane events`.
pub async fn feed(ctx: &Ctx, a: &FeedArgs) -> Result<()> {
    let vm = match &a.vm {
        Some(v) => Some(resolve::vm(&ctx.api, v).await?),
        None => None,
    };
    let mut filters = Vec::new();
    if let Some(t) = &a.types {
        filters.push(format!("type={}", encode(t)));
    }
    if let Some(seq) = a.since {
        filters.push(format!("last_event_id={seq}"));
    }
    match (a.follow, vm) {
        (true, vm) => {
            filters.extend(vm.map(|id| format!("vm_id={id}")));
            follow(ctx, &format!("/v1/events?{}", filters.join("&"))).await
        }
        // Without -f (clap requires --vm then): the VM's history, as a list.
        (false, Some(id)) => emit(&ctx.out.list(&ctx.api.list(&format!("/v1/vms/{id}/events?{}", filters.join("&"))).await?, HISTORY)),
        (false, None) => Err(Error::Invalid("the event feed has no end: follow it with -f, or give --vm for one VM's history".into())),
    }
}

/// Print the events of an SSE stream of events until it ends.
pub async fn follow(ctx: &Ctx, path: &str) -> Result<()> {
    let mut stream = sse::Stream::open(&ctx.api, path)?;
    while let Some(m) = stream.next().await? {
        let event: Value = serde_json::from_str(&m.data).map_err(|e| Error::BadResponse(format!("event {}: data is not JSON: {e}", m.event)))?;
        emit(&ctx.out.stream_item(&event, line))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_line() {
        let e = json!({"seq": 42, "id": "evt_1", "type": "ready", "time": "2026-01-02T03:04:05.678Z", "aggregate_id": "vm_1",
            "operation_id": null, "event": {"aggregate_type": "vm", "data": {"type": "ready"}}});
        let l = line(&e);
        assert!(l.starts_with("      42  2026-01-02T03:04:05Z  vm.ready"), "{l}");
        assert!(l.ends_with("vm_1  -"), "{l}");
        assert_eq!(line(&json!({})).split_whitespace().collect::<Vec<_>>(), ["-", "-", "-", "-", "-"]);
    }
}
