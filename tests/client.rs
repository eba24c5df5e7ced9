//! A client generated from the served `/openapi.json` works: the README tells
//! users to generate one, so this test does what they would, with
//! openapi-python-client (the version `scripts/lib.sh` pins, in a virtual
//! environment under the build directory), and drives a VM's create, read,
//! list and delete through that client against a real stack (sim driver).
//! `tests/client/` holds the generator's settings (`config.yaml`) and the
//! script (`drive.py`), which uses only the generated functions and models
//! and checks every answer against them, beyond its status.

mod common;

use common::{ADMIN_TOKEN, Stack};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound of the script's run; its own waits stop at 60 s each.
const DRIVE_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread")]
async fn a_client_generated_from_the_document_creates_reads_and_deletes_a_vm() {
    let generator = std::env::var("VMPLANE_OPENAPI_CLIENT")
        .expect("VMPLANE_OPENAPI_CLIENT names openapi-python-client (`. scripts/lib.sh && ensure_openapi_client` installs it)");
    // The generated package imports httpx and attrs, which the generator's own venv holds.
    let python = Path::new(&generator).with_file_name("python");
    let settings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/client");
    let stack = Stack::start().await;

    let (status, document) = stack.admin.get("/openapi.json").await;
    assert_eq!(status, 200, "GET /openapi.json: {document}");
    let work = stack.root().join("openapi-client");
    std::fs::create_dir_all(&work).expect("creating the client's dir");
    let document_path = work.join("openapi.json");
    std::fs::write(&document_path, serde_json::to_vec_pretty(&document).unwrap()).expect("writing openapi.json");

    let package = work.join("vmplane_client");
    let generated = tokio::process::Command::new(&generator)
        .arg("generate")
        .arg("--path")
        .arg(&document_path)
        .arg("--output-path")
        .arg(&package)
        .arg("--config")
        .arg(settings.join("config.yaml"))
        // A warning means a part of the document the generator could not
        // turn into code: a client missing it is not the whole API.
        .args(["--meta", "none", "--fail-on-warning"])
        .output()
        .await
        .expect("running openapi-python-client");
    let generator_report = format!("{}{}", String::from_utf8_lossy(&generated.stdout), String::from_utf8_lossy(&generated.stderr));
    assert!(generated.status.success(), "openapi-python-client could not generate a client from /openapi.json:\n{generator_report}");
    eprintln!("openapi-python-client:\n{generator_report}");

    let drive = tokio::process::Command::new(&python)
        .arg(settings.join("drive.py"))
        .arg(&stack.base)
        .env("PYTHONPATH", &work)
        .env("VMPLANE_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true)
        .output();
    let driven = tokio::time::timeout(DRIVE_TIMEOUT, drive)
        .await
        .unwrap_or_else(|_| panic!("tests/client/drive.py did not finish within {DRIVE_TIMEOUT:?}"))
        .expect("running tests/client/drive.py");
    let transcript = format!("{}{}", String::from_utf8_lossy(&driven.stdout), String::from_utf8_lossy(&driven.stderr));
    assert!(driven.status.success(), "the generated client disagrees with the server ({}):\n{transcript}\ngenerator:\n{generator_report}", driven.status);
    assert!(transcript.contains("create, get, list and delete through the generated client: ok"), "drive.py did not get to the end:\n{transcript}");
}
