//! The web console (`/console`): its files are served from the binary with a
//! strict Content-Security-Policy and the right types, load nothing from
//! another origin, and the terminal accepts a browser's credentials as
//! WebSocket subprotocols (never in the URL) and passes the window size to
//! the guest's console (`vmplane.terminal.v2`). Then the whole console in a
//! real headless Chromium, driven over the DevTools protocol: sign in, a VM
//! created elsewhere appears and turns `running` without a reload, a VM
//! created with the form, its terminal round trip, delete with
//! confirmation; screenshots of the list and the VM page.

#[path = "common/mod.rs"]
mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::browser::{Browser, text_of};
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// The policy `/console` answers carry (`services/gateway/src/routes/console.rs`).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
     font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The directory the console is embedded from.
fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/console")
}

/// Every file under `dir`, as paths relative to it with `/` separators.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Files npm reads to vendor xterm.js; not part of the console, not served.
fn npm_only(path: &str) -> bool {
    matches!(path, "package.json" | "package-lock.json") || path.starts_with("node_modules/")
}

async fn get_raw(base: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut rb = reqwest::Client::new().get(format!("{base}{path}"));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("{} has no {name} header", resp.url()))
}

/// The headers every console answer carries.
fn assert_secured(resp: &reqwest::Response) {
    assert_eq!(header(resp, "content-security-policy"), CSP, "{}", resp.url());
    assert_eq!(header(resp, "x-content-type-options"), "nosniff", "{}", resp.url());
    assert_eq!(header(resp, "x-frame-options"), "DENY", "{}", resp.url());
    assert_eq!(header(resp, "referrer-policy"), "no-referrer", "{}", resp.url());
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let stack = Stack::start().await;
    let base = &stack.base;
    let index = std::fs::read(console_dir().join("index.html")).unwrap();

    // The page at /console, /console/ and /console/index.html, without a token.
    let mut etag = String::new();
    for path in ["/console", "/console/", "/console/index.html"] {
        let resp = get_raw(base, path, &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_secured(&resp);
        assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8", "{path}");
        assert_eq!(header(&resp, "cache-control"), "no-cache", "{path}");
        etag = header(&resp, "etag").to_owned();
        assert_eq!(resp.bytes().await.unwrap().as_ref(), index.as_slice(), "{path} is the index");
    }
    // Revalidation: the same ETag is a 304 without a body.
    let resp = get_raw(base, "/console/", &[("if-none-match", &etag)]).await;
    assert_eq!(resp.status(), 304);
    assert_secured(&resp);
    assert_eq!(header(&resp, "etag"), etag);
    let resp = get_raw(base, "/console/", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(resp.status(), 200);

    // Types by extension.
    for (path, ty) in [
        ("/console/js/main.js", "text/javascript; charset=utf-8"),
        ("/console/js/views/vm.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
        ("/console/vendor/xterm/xterm.mjs", "text/javascript; charset=utf-8"),
        ("/console/vendor/xterm/addon-fit.mjs", "text/javascript; charset=utf-8"),
        ("/console/vendor/xterm/xterm.css", "text/css; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
        ("/console/vendor/xterm/xterm.LICENSE.txt", "text/plain; charset=utf-8"),
    ] {
        let resp = get_raw(base, path, &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(header(&resp, "content-type"), ty, "{path}");
        assert_secured(&resp);
    }

    // Unknown files, npm's manifest, and paths that try to climb out are 404s, secured too.
    for path in [
        "/console/nope.js",
        "/console/js/nope.js",
        "/console/package.json",
        "/console/package-lock.json",
        "/console/..%2fCargo.toml",
        "/console/js/..%2f..%2fCargo.toml",
        "/console/vendor/",
    ] {
        let resp = get_raw(base, path, &[]).await;
        assert_eq!(resp.status(), 404, "{path}");
        assert_secured(&resp);
        assert_eq!(header(&resp, "content-type"), "text/plain; charset=utf-8", "{path}");
    }
    // Only GET (and HEAD).
    let resp = reqwest::Client::new().post(format!("{base}/console/")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let resp = reqwest::Client::new().head(format!("{base}/console/js/main.js")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // Every file of the console directory is served byte for byte (it is
    // embedded, not read from disk at run time: see the unit tests) ...
    let dir = console_dir();
    let all = files(&dir);
    assert!(all.len() >= 10, "{all:?}");
    for path in &all {
        let resp = get_raw(base, &format!("/console/{path}"), &[]).await;
        if npm_only(path) {
            assert_eq!(resp.status(), 404, "{path} is not served");
            continue;
        }
        assert_eq!(resp.status(), 200, "{path}");
        let served = resp.bytes().await.unwrap();
        assert_eq!(served.as_ref(), std::fs::read(dir.join(path)).unwrap().as_slice(), "{path} as served");
    }
}

/// Addresses an embedded file may contain, and why: XML namespace names
/// (identifiers, never fetched), and the credits in xterm.js's licence
/// comments. Anything else is an address the page might load from.
const ALLOWED_URLS: &[(&str, &str)] = &[
    ("*", "http://www.w3.org/2000/svg"),
    ("*", "http://www.w3.org/1999/xhtml"),
    ("vendor/xterm/", "http://bellard.org/jslinux/"),
    ("vendor/xterm/", "https://github.com/chjj/term.js"),
];

/// Every `http://`/`https://` address in `text`, or `//host` in CSS `url()`.
fn urls(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for scheme in ["http://", "https://"] {
        let mut rest = text;
        while let Some(at) = rest.find(scheme) {
            let tail = &rest[at..];
            let end = tail.find(|c: char| c.is_whitespace() || "\"'`)<>,;\\".contains(c)).unwrap_or(tail.len());
            out.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn no_embedded_file_names_another_origin_or_runs_inline_script() {
    let dir = console_dir();
    let mut bad = Vec::new();
    for path in files(&dir).into_iter().filter(|p| !npm_only(p)) {
        // Licence texts are shipped with the code they cover; the page never loads them.
        if path.ends_with(".LICENSE.txt") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(dir.join(&path)) else { continue };
        for url in urls(&text) {
            let allowed = ALLOWED_URLS.iter().any(|(scope, u)| *u == url && (*scope == "*" || path.starts_with(scope)));
            if !allowed {
                bad.push(format!("{path}: {url}"));
            }
        }
        // Protocol-relative addresses in CSS or HTML.
        if (path.ends_with(".css") || path.ends_with(".html")) && (text.contains("url(//") || text.contains("=\"//")) {
            bad.push(format!("{path}: a protocol-relative address"));
        }
    }
    assert!(bad.is_empty(), "addresses of other origins in the console:\n{}", bad.join("\n"));

    // The page: scripts only by src (modules), no inline handlers, nothing from elsewhere.
    let index = std::fs::read_to_string(dir.join("index.html")).unwrap();
    for tag in index.split("<script").skip(1) {
        let open = &tag[..tag.find('>').unwrap()];
        assert!(open.contains("src=\"/console/"), "inline or foreign script: <script{open}>");
        assert!(tag[tag.find('>').unwrap() + 1..].trim_start().starts_with("</script>"), "a script with a body");
    }
    let lower = index.to_lowercase();
    for attr in [" onclick=", " onload=", " onerror=", " onsubmit=", "javascript:", " style="] {
        assert!(!lower.contains(attr), "index.html has {attr}");
    }

    // The console's own modules build the page from data, never from HTML
    // strings or code strings, and import only files that exist.
    for path in files(&dir.join("js")) {
        let text = std::fs::read_to_string(dir.join("js").join(&path)).unwrap();
        for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "localStorage"] {
            assert!(!text.contains(banned), "js/{path} uses {banned}");
        }
        for spec in text.split(" from '").skip(1).map(|s| &s[..s.find('\'').unwrap()]) {
            assert!(spec.starts_with("./") || spec.starts_with("../"), "js/{path} imports {spec}: only relative modules");
            let target = dir.join("js").join(&path).parent().unwrap().join(spec);
            assert!(target.is_file(), "js/{path} imports {spec}, which is not in the console");
        }
    }
}

// ---------------------------------------------------------------------------
// The terminal's browser credentials
// ---------------------------------------------------------------------------

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open a VM's terminal offering `protocols` (as a browser's
/// `new WebSocket(url, protocols)` does), with no Authorization header:
/// the socket and the subprotocol the server selected, or the refusal's status.
async fn terminal(base: &str, vm: &str, protocols: &[String]) -> Result<(Ws, Option<String>), u16> {
    let url = format!("{}/v1/vms/{vm}/terminal", base.replace("http://", "ws://"));
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", protocols.join(", ").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => Ok((ws, resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned()))),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("terminal websocket: {e}"),
    }
}

/// Close a terminal and wait until the server has ended it.
async fn hang_up(mut ws: Ws) {
    ws.close(None).await.ok();
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

fn browser_protocols(token: &str, extra: &[String]) -> Vec<String> {
    let mut p = vec!["vmplane.terminal".to_owned(), format!("vmplane.bearer.{}", URL_SAFE_NO_PAD.encode(token))];
    p.extend_from_slice(extra);
    p
}

/// Type `text` and wait for the simulated console to echo it.
async fn round_trip(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::binary(text.as_bytes().to_vec())).await.unwrap();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            seen.extend_from_slice(&m.into_data());
            if seen.windows(text.len()).any(|w| w == text.as_bytes()) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "echo of {text}: {}", String::from_utf8_lossy(&seen));
}

#[tokio::test]
async fn the_terminal_takes_a_browsers_credentials_as_subprotocols() {
    let stack = Stack::start().await;
    // A VM's console takes one session at a time (see
    // `a_hung_up_terminal_frees_the_console_at_once`).
    let vm = str_of(&stack.admin.create_running_vm("term-admin").await["id"]).to_owned();
    let vm2 = str_of(&stack.admin.create_running_vm("term-admin-2").await["id"]).to_owned();

    // The admin token as a subprotocol: the terminal opens, the server
    // selects `vmplane.terminal` (never echoing the token), keystrokes round trip.
    let (mut ws, selected) = terminal(&stack.base, &vm, &browser_protocols(ADMIN_TOKEN, &[])).await.expect("terminal with the token as a subprotocol");
    assert_eq!(selected.as_deref(), Some("vmplane.terminal"));
    round_trip(&mut ws, "hello-from-a-browser").await;
    hang_up(ws).await;

    // Refusals: no credentials, a wrong token, one that is not base64url, and
    // credentials offered without the terminal subprotocol (not honoured).
    assert_eq!(terminal(&stack.base, &vm, &[]).await.err(), Some(401), "no credentials");
    assert_eq!(terminal(&stack.base, &vm, &["vmplane.terminal".to_owned()]).await.err(), Some(401), "no token");
    assert_eq!(terminal(&stack.base, &vm, &browser_protocols("not-the-token", &[])).await.err(), Some(401), "wrong token");
    let garbled = vec!["vmplane.terminal".to_owned(), "vmplane.bearer.!!!".to_owned()];
    assert_eq!(terminal(&stack.base, &vm, &garbled).await.err(), Some(401), "token not base64url");
    let without = vec![format!("vmplane.bearer.{}", URL_SAFE_NO_PAD.encode(ADMIN_TOKEN))];
    assert_eq!(terminal(&stack.base, &vm, &without).await.err(), Some(401), "bearer without vmplane.terminal");
    // The standard base64 alphabet with padding is not accepted either (`=` is not a token character).
    let padded = vec!["vmplane.terminal".to_owned(), format!("vmplane.bearer.{}", STANDARD.encode("ab"))];
    assert_eq!(terminal(&stack.base, &vm, &padded).await.err(), Some(401), "padded base64");

    // An API key acts in its own org only, the same as with the header; the
    // admin names an org with `vmplane.org.<id>`.
    let org = stack.admin.create_org("console").await;
    let key = stack.admin.create_key(&org, "browser").await;
    let keyed = stack.client(&key);
    let own = str_of(&keyed.create_running_vm("term-key").await["id"]).to_owned();
    let own2 = str_of(&keyed.create_running_vm("term-key-2").await["id"]).to_owned();
    assert_eq!(terminal(&stack.base, &vm, &browser_protocols(&key, &[])).await.err(), Some(404), "another org's VM is not found");
    let (mut ws, selected) = terminal(&stack.base, &own, &browser_protocols(&key, &[])).await.expect("the key's own VM");
    assert_eq!(selected.as_deref(), Some("vmplane.terminal"));
    round_trip(&mut ws, "keyed").await;
    hang_up(ws).await;
    assert_eq!(terminal(&stack.base, &own, &browser_protocols(ADMIN_TOKEN, &[])).await.err(), Some(404), "the admin acts in the default org");
    let in_org = [format!("vmplane.org.{org}")];
    let (mut ws, _) = terminal(&stack.base, &own2, &browser_protocols(ADMIN_TOKEN, &in_org)).await.expect("the admin naming the org");
    round_trip(&mut ws, "admin-in-org").await;
    hang_up(ws).await;
    let bad_org = ["vmplane.org.org_nope".to_owned()];
    assert_eq!(terminal(&stack.base, &own, &browser_protocols(ADMIN_TOKEN, &bad_org)).await.err(), Some(400), "a malformed org id");

    // The Authorization header still works, and wins over subprotocol credentials.
    let url = format!("{}/v1/vms/{vm2}/terminal", stack.base.replace("http://", "ws://"));
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
    req.headers_mut().insert("sec-websocket-protocol", browser_protocols("not-the-token", &[]).join(", ").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("the header's token");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "vmplane.terminal");
    round_trip(&mut ws, "header").await;
    hang_up(ws).await;
}

#[tokio::test]
async fn the_console_drives_a_vm_in_a_real_browser() {
    let stack = Stack::start().await;
    let shots = std::env::var_os("VMPLANE_CONSOLE_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| stack.root().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let mut b = Browser::launch().await;

    // Sign in with the admin token: kept in sessionStorage, never in the address.
    b.call("Page.navigate", json!({"url": format!("{}/console/", stack.base)})).await;
    b.wait("the sign-in form", "!!document.querySelector('#signin #token')").await;
    b.type_into("#token", ADMIN_TOKEN).await;
    b.click("#signin button[type=submit]").await;
    b.wait("the VM list's live feed", "document.querySelector('#live-state')?.dataset.state === 'open'").await;
    assert_eq!(b.eval("JSON.parse(sessionStorage.getItem('vmplane.session')).token").await, json!(ADMIN_TOKEN));
    let href = b.eval("location.href").await;
    assert!(!str_of(&href).contains(ADMIN_TOKEN), "{href}");

    // A VM created elsewhere appears in the list and turns running, without a reload.
    b.eval("window.__noReload = 'still here'").await;
    let other = stack.admin.create_vm(json!({"name": "made-by-curl"})).await;
    let other_id = str_of(&other["id"]).to_owned();
    b.wait("the new VM's row running", &format!("document.querySelector('tr[data-vm-id=\"{other_id}\"]')?.dataset.status === 'running'")).await;
    // A stop and a start made elsewhere show too.
    stack.admin.act_and_wait(&other_id, "stop", "stopped").await;
    b.wait("the row stopped", &format!("document.querySelector('tr[data-vm-id=\"{other_id}\"]')?.dataset.status === 'stopped'")).await;
    stack.admin.act_and_wait(&other_id, "start", "running").await;
    b.wait("the row running again", &format!("document.querySelector('tr[data-vm-id=\"{other_id}\"]')?.dataset.status === 'running'")).await;
    assert_eq!(b.eval("window.__noReload").await, json!("still here"), "the page was reloaded");

    // Create one with the form: name, a port forward; then its page follows it to running.
    b.click("#create-vm").await;
    b.wait("the create form", "!!document.querySelector('#create-form #vm-name')").await;
    b.wait("the images", "document.querySelectorAll('#vm-image option').length > 1").await;
    b.wait("the plans", "document.querySelector('#vm-plan option[value=\"medium\"]')?.textContent === 'medium: 4 vCPU, 8192 MiB, 160 GB'").await;
    b.type_into("#vm-name", "from-the-console").await;
    b.click("#add-forward").await;
    b.type_into("#fwd-guest-1", "8080").await;
    b.click("#create-submit").await;
    b.wait("the VM page", &format!("{}.trim() === 'from-the-console'", text_of("#vm-title"))).await;
    b.wait("the VM running", &format!("{} === 'running'", text_of("#vm-status .badge"))).await;
    let id = str_of(&b.eval("decodeURIComponent(location.hash.split('/')[2])").await).to_owned();
    let vm = stack.admin.vm(&id).await;
    assert_eq!((vm["name"].as_str(), vm["port_forwards"][0]["guest_port"].as_u64()), (Some("from-the-console"), Some(8080)), "{vm}");
    b.wait("its history", "document.querySelectorAll('#vm-events tbody tr').length >= 3").await;
    b.wait("its console log", "document.querySelector('#log-state')?.textContent.startsWith('Following')").await;

    // The terminal: type through xterm.js, see the simulated console's echo.
    b.click("#terminal-open").await;
    b.wait("the terminal connected", &format!("{} === 'Connected'", text_of("#terminal-state"))).await;
    b.wait("xterm focused", "document.activeElement?.classList.contains('xterm-helper-textarea')").await;
    b.call("Input.insertText", json!({"text": "typed-in-the-browser"})).await;
    b.wait("the echo on screen", "document.querySelector('#terminal .xterm-rows')?.textContent.includes('typed-in-the-browser')").await;
    // The terminal's size reaches the guest's console, and follows the window.
    let size = || stack.sim_guest(&id).and_then(|g| g["console_size"].as_str().map(str::to_owned));
    let first = wait_for("the terminal's size at the console", WAIT, async || size().ok_or_else(|| "none yet".to_owned())).await;
    let (cols, rows) = first.split_once('x').map(|(c, r)| (c.parse::<u16>().unwrap(), r.parse::<u16>().unwrap())).unwrap();
    assert!(cols >= 20 && rows >= 5, "a fitted terminal: {first}");
    b.call("Emulation.setDeviceMetricsOverride", json!({"width": 700, "height": 900, "deviceScaleFactor": 1, "mobile": false})).await;
    wait_for("the new size at the console", WAIT, async || match size() {
        Some(now) if now != first => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    b.call("Emulation.clearDeviceMetricsOverride", json!({})).await;
    // Ctrl+] leaves the terminal (it takes every other key, Tab included).
    for kind in ["keyDown", "keyUp"] {
        b.call("Input.dispatchKeyEvent", json!({"type": kind, "modifiers": 2, "key": "]", "code": "BracketRight", "windowsVirtualKeyCode": 221})).await;
    }
    b.wait("the focus on Close terminal", "document.activeElement?.id === 'terminal-close'").await;
    b.eval("document.getElementById('notice').textContent = ''").await;
    b.screenshot(&shots.join("vm-page.png")).await;
    b.click("#terminal-close").await;

    // Back to the list for its picture.
    b.eval("location.hash = '#/vms'").await;
    b.wait("both VMs listed", "document.querySelectorAll('#vm-table tbody tr').length === 2").await;
    b.wait("the list live", "document.querySelector('#live-state')?.dataset.state === 'open'").await;
    b.eval("document.getElementById('notice').textContent = ''").await;
    b.screenshot(&shots.join("vm-list.png")).await;
    // On a phone the table is a list of labelled cards.
    b.call("Emulation.setDeviceMetricsOverride", json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true})).await;
    b.wait("the cards layout", "getComputedStyle(document.querySelector('#vm-table thead')).position === 'absolute'").await;
    b.screenshot(&shots.join("vm-list-phone.png")).await;
    b.call("Emulation.clearDeviceMetricsOverride", json!({})).await;

    // Hosts and volumes: the sim worker's host; a volume made with the form, attached with its row's form.
    b.eval("location.hash = '#/hosts'").await;
    b.wait("the host listed", "document.querySelectorAll('#host-table tbody tr').length === 1").await;
    b.eval("location.hash = '#/volumes'").await;
    b.wait("the volume form", "!!document.querySelector('#volume-form #volume-name')").await;
    b.type_into("#volume-name", "console-data").await;
    b.click("#volume-form button[type=submit]").await;
    let row = "[...document.querySelectorAll('#volume-table tbody tr')].find(r => r.textContent.includes('console-data'))";
    b.wait("the volume available", &format!("{row}?.querySelector('.badge')?.textContent === 'available'")).await;
    let vol = str_of(&b.eval(&format!("{row}.dataset.volumeId")).await).to_owned();
    b.eval(&format!("{row}.querySelector('details').open = true")).await;
    b.type_into(&format!("#attach-vm-{vol}"), &id).await;
    b.click(&format!("#volume-table tr[data-volume-id='{vol}'] form button[type=submit]")).await;
    wait_for("the volume attached", WAIT, async || {
        let v = stack.admin.vm(&id).await;
        if v["volumes"].as_array().is_some_and(|a| a.iter().any(|m| m["volume_id"] == vol.as_str())) { Ok(()) } else { Err(v["volumes"].to_string()) }
    })
    .await;

    // Delete, with confirmation: Cancel keeps it, Delete deletes it.
    b.eval(&format!("location.hash = '#/vms/{id}'")).await;
    b.wait("the VM page", &format!("{} === 'running'", text_of("#vm-status .badge"))).await;
    b.click("#action-delete").await;
    b.wait("the confirmation", "!!document.querySelector('dialog.confirm[open]')").await;
    b.click("dialog.confirm button[value=cancel]").await;
    b.wait("the dialog closed", "!document.querySelector('dialog.confirm')").await;
    assert_eq!(stack.admin.vm(&id).await["status"], "running");
    b.click("#action-delete").await;
    b.wait("the confirmation", "!!document.querySelector('dialog.confirm[open]')").await;
    b.click("dialog.confirm button[value=ok]").await;
    stack.admin.wait_vm_status(&id, "deleted").await;
    b.wait(
        "the page showing it deleted",
        &format!("['deleting','deleted'].includes({}) || !!document.querySelector('#vm-error .error')", text_of("#vm-status .badge")),
    )
    .await;

    // The admin switches orgs in the header: the list is then the chosen org's.
    let org = stack.admin.create_org("acme").await;
    let theirs = str_of(&stack.admin.with_header("x-vmplane-org", &org).create_running_vm("acme-vm").await["id"]).to_owned();
    b.eval("location.hash = '#/vms'").await;
    b.wait("the new org in the switcher", &format!("!!document.querySelector('#org-switch option[value=\"{org}\"]')")).await;
    assert_eq!(b.eval("document.querySelector('#org-switch').selectedOptions[0].textContent").await, json!("default"));
    b.wait("the default org's VM listed", &format!("!!document.querySelector('tr[data-vm-id=\"{other_id}\"]')")).await;
    b.eval(&format!("(() => {{ const s = document.getElementById('org-switch'); s.value = '{org}'; s.dispatchEvent(new Event('change')); }})()")).await;
    b.wait("the other org's VM", &format!("document.querySelector('tr[data-vm-id=\"{theirs}\"]')?.dataset.status === 'running'")).await;
    b.wait("the default org's VMs gone", &format!("!document.querySelector('tr[data-vm-id=\"{other_id}\"]')")).await;
    assert_eq!(b.eval("JSON.parse(sessionStorage.getItem('vmplane.session')).org").await, json!(org));

    // Nothing the page did broke its policy or threw.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.eval("1").await;
    let problems: Vec<_> = b.log.iter().filter(|l| l.starts_with("exception") || l.starts_with("log \"error\"") || l.starts_with("console error")).collect();
    assert!(problems.is_empty(), "the page reported errors:\n{problems:#?}\nall it reported:\n{}", b.log.join("\n"));
    for shot in ["vm-list.png", "vm-page.png", "vm-list-phone.png"] {
        let png = std::fs::read(shots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{shot}: {} bytes", png.len());
    }
}

/// A console takes one session at a time; one whose client hung up is ended
/// at the worker before the socket closes, so the next opens at once (it
/// used to wait for the closed session's keepalives to stop, ~30 s).
#[tokio::test]
async fn a_hung_up_terminal_frees_the_console_at_once() {
    let stack = Stack::start().await;
    let vm = str_of(&stack.admin.create_running_vm("term-again").await["id"]).to_owned();
    let protocols = browser_protocols(ADMIN_TOKEN, &[]);
    let (mut first, _) = terminal(&stack.base, &vm, &protocols).await.expect("the first session");
    round_trip(&mut first, "first").await;
    assert_eq!(terminal(&stack.base, &vm, &protocols).await.err(), Some(409), "a second session while the first is open");
    hang_up(first).await;
    for round in ["second", "third"] {
        let (mut ws, _) = terminal(&stack.base, &vm, &protocols).await.unwrap_or_else(|s| panic!("the {round} session right after a hang-up: {s}"));
        round_trip(&mut ws, round).await;
        hang_up(ws).await;
    }
}

/// The VM's console size as the sim driver last got it, once it is `want`.
async fn console_size_becomes(stack: &Stack, vm: &str, want: &str) {
    wait_for(&format!("the console size {want}"), Duration::from_secs(10), async || {
        let got = stack.sim_guest(vm).and_then(|g| g["console_size"].as_str().map(str::to_owned));
        if got.as_deref() == Some(want) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
}

#[tokio::test]
async fn the_window_size_reaches_the_guests_console() {
    let stack = Stack::start().await;
    let vm = str_of(&stack.admin.create_running_vm("term-size").await["id"]).to_owned();
    // Offered both, the server selects the one with control messages.
    let mut offered = browser_protocols(ADMIN_TOKEN, &[]);
    offered.insert(0, "vmplane.terminal.v2".to_owned());
    let (mut ws, selected) = terminal(&stack.base, &vm, &offered).await.expect("terminal");
    assert_eq!(selected.as_deref(), Some("vmplane.terminal.v2"));
    assert!(stack.sim_guest(&vm).expect("sim guest")["console_size"].is_null(), "no size before a client gives one");
    ws.send(tungstenite::Message::text(r#"{"type":"resize","cols":132,"rows":43}"#)).await.unwrap();
    console_size_becomes(&stack, &vm, "132x43").await;
    // Keystrokes are binary frames, and the newest size wins.
    round_trip(&mut ws, "after-a-resize").await;
    for (cols, rows) in [(80, 24), (100, 30), (90, 40)] {
        ws.send(tungstenite::Message::text(json!({"type": "resize", "cols": cols, "rows": rows}).to_string())).await.unwrap();
    }
    console_size_becomes(&stack, &vm, "90x40").await;

    // A text frame that is not a control message (typed text, a size out of
    // range, an unknown type) closes the session with 1007 and the reason,
    // and changes nothing.
    for (bad, why) in [
        ("ls -l", "not a control message"),
        (r#"{"type":"resize","cols":0,"rows":24}"#, "resize: cols and rows must be 1 to 1000"),
        (r#"{"type":"paste","text":"x"}"#, "not a control message"),
    ] {
        ws.send(tungstenite::Message::text(bad)).await.unwrap();
        let close = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(tungstenite::Message::Close(c))) => return c,
                    Some(Ok(_)) => {}
                    other => panic!("expected a close frame for {bad}: {other:?}"),
                }
            }
        })
        .await
        .expect("closed");
        let close = close.expect("a close frame with a code");
        assert_eq!(u16::from(close.code), 1007, "{bad}");
        assert!(close.reason.starts_with(why), "{bad}: {}", close.reason);
        hang_up(ws).await;
        assert_eq!(stack.sim_guest(&vm).unwrap()["console_size"], "90x40", "{bad} changed the size");
        (ws, _) = terminal(&stack.base, &vm, &offered).await.expect("the console is free again");
    }
    hang_up(ws).await;

    // In the plain subprotocol text frames stay keystrokes.
    let (mut ws, selected) = terminal(&stack.base, &vm, &browser_protocols(ADMIN_TOKEN, &[])).await.expect("terminal");
    assert_eq!(selected.as_deref(), Some("vmplane.terminal"));
    ws.send(tungstenite::Message::text(r#"{"type":"resize","cols":10,"rows":10}"#)).await.unwrap();
    round_trip(&mut ws, "typed").await;
    hang_up(ws).await;
    assert_eq!(stack.sim_guest(&vm).unwrap()["console_size"], "90x40", "text is typed, not a resize, in vmplane.terminal");
}
