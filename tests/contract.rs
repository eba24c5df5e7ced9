//! Each OpenAPI document states what the server enforces: schemathesis, a
//! third-party fuzzer (the version `scripts/lib.sh` pins, in a virtual
//! environment under the build directory), generates requests from a
//! document as the gateway serves it and runs every check, the stateful
//! phase included, against a real stack (sim driver). `tests/contract/`
//! holds its settings: the formats JSON Schema cannot spell out and what the
//! test stack offers (`hooks.py`), and the few operations allowed an answer
//! for a state reason (`schemathesis.toml`), each with why.

mod common;

use common::{ADMIN_TOKEN, Stack, StackOpts};
use std::path::PathBuf;

/// Generated cases per operation and phase: enough to reach every rule the
/// documents state, few enough for the suite's time.
const MAX_EXAMPLES: &str = "10";

/// Runs schemathesis against `document` of a fresh stack and fails with its
/// report unless it found nothing.
async fn fuzz(document: &str) {
    let st = std::env::var("VMPLANE_SCHEMATHESIS").expect("VMPLANE_SCHEMATHESIS names schemathesis's `st` (scripts/lib.sh ensure_schemathesis installs it)");
    // Private webhook addresses allowed: the gateway resolves no name, and
    // this stack runs no deliverer, so a generated URL is never reached.
    let stack = Stack::start_with(StackOpts { gateway_env: vec![("VMPLANE_WEBHOOK_ALLOW_PRIVATE".into(), "true".into())], ..Default::default() }).await;
    let settings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/contract");
    let out = tokio::process::Command::new(st)
        .current_dir(&settings)
        // No `--checks`: every check runs by default, and a check named on
        // the command line would override the per-operation exceptions.
        .args(["run", &format!("{}{document}", stack.base), "--max-examples", MAX_EXAMPLES, "--seed", "1", "--no-color"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .output()
        .await
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found disagreements between {document} and the server:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("Tested: "), "schemathesis tested nothing:\n{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_v1_document_is_what_the_server_enforces() {
    fuzz("/openapi.json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_visor_document_is_what_the_server_enforces() {
    fuzz("/openapi/visor.json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_neevcloud_document_is_what_the_server_enforces() {
    fuzz("/openapi/neevcloud.json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hatch_document_is_what_the_server_enforces() {
    fuzz("/openapi/hatch.json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hypeman_document_is_what_the_server_enforces() {
    fuzz("/openapi/hypeman.json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_marketplace_document_is_what_the_server_enforces() {
    fuzz("/openapi/marketplace.json").await;
}
