//! The `/v1` OpenAPI document states what the server enforces: schemathesis,
//! a third-party fuzzer (the version `scripts/lib.sh` pins, in a virtual
//! environment under the build directory), generates requests from the
//! document served at `/openapi.json` and runs every check, the stateful
//! phase included, against a real stack (sim driver). `tests/contract/`
//! holds its settings: the formats JSON Schema cannot spell out
//! (`hooks.py`) and the few operations allowed an answer for a state reason
//! (`schemathesis.toml`), each with why.

mod common;

use common::{ADMIN_TOKEN, Stack, StackOpts};
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "schemathesis still finds disagreements in /v1 (issue 13); run with --ignored once VMPLANE_SCHEMATHESIS names `st`"]
async fn the_v1_document_is_what_the_server_enforces() {
    let st = std::env::var("VMPLANE_SCHEMATHESIS").expect("VMPLANE_SCHEMATHESIS names schemathesis's `st` (scripts/test installs it)");
    // Private webhook addresses allowed: the gateway resolves no name, and
    // this stack runs no deliverer, so a generated URL is never reached.
    let stack = Stack::start_with(StackOpts { gateway_env: vec![("VMPLANE_WEBHOOK_ALLOW_PRIVATE".into(), "true".into())], ..Default::default() }).await;
    let settings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/contract");
    let out = tokio::process::Command::new(st)
        .current_dir(&settings)
        .args(["run", &format!("{}/openapi.json", stack.base), "--checks", "all", "--max-examples", "10", "--seed", "1", "--no-color"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .output()
        .await
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found disagreements between /openapi.json and the server:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("Tested: "), "schemathesis tested nothing:\n{report}");
}
