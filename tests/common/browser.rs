//! Headless Chromium driven over the DevTools protocol, for the tests of
//! the web console (`tests/console.rs` with the sim driver, `tests/guests.rs`
//! with a real guest).

use super::{WAIT, str_of, wait_for};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium and one page of it, driven over the DevTools protocol.
pub struct Browser {
    child: std::process::Child,
    ws: Ws,
    session: String,
    next_id: u64,
    /// Console messages, exceptions and log entries (CSP reports among them).
    pub log: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch() -> Self {
        assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: scripts/test installs Debian's chromium");
        let profile = tempfile::Builder::new().prefix("vmplane-chromium-").tempdir().unwrap();
        let mut cmd = std::process::Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("starting chromium");
        // Chromium writes its DevTools port and browser path to the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let endpoint = wait_for("chromium's DevToolsActivePort", WAIT, async || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromium exited at start: {status}");
            }
            let text = std::fs::read_to_string(&port_file).map_err(|e| e.to_string())?;
            let mut lines = text.lines();
            match (lines.next(), lines.next()) {
                (Some(port), Some(path)) if !port.is_empty() => Ok(format!("ws://127.0.0.1:{port}{path}")),
                _ => Err(text.clone()),
            }
        })
        .await;
        let (ws, _) = tokio_tungstenite::connect_async(endpoint).await.expect("DevTools websocket");
        let mut b = Self { child, ws, session: String::new(), next_id: 0, log: Vec::new(), _profile: profile };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"})).await;
        let attached = b.call_browser("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        b.session = str_of(&attached["sessionId"]).to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call(domain, json!({})).await;
        }
        b
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(tungstenite::Message::text(msg.to_string())).await.expect("DevTools send");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next()).await.unwrap_or_else(|_| panic!("no DevTools answer to {method}"));
            let text = match frame {
                Some(Ok(tungstenite::Message::Text(t))) => t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("DevTools connection ended during {method}: {other:?}"),
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("{method}: {err}");
                }
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    /// Keep what the page reported: console errors, exceptions, log entries.
    fn note(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.log.push(format!("exception: {}", v["params"]["exceptionDetails"])),
            Some("Log.entryAdded") => {
                let e = &v["params"]["entry"];
                self.log.push(format!("log {} {}: {} {}", e["level"], e["source"], e["text"], e["url"]));
            }
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" || v["params"]["type"] == "warning" => {
                self.log.push(format!("console {}: {}", v["params"]["type"], v["params"]["args"]))
            }
            _ => {}
        }
    }

    pub async fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.send(method, params, Some(s)).await
    }

    /// Evaluate `expr` in the page (promises awaited); its JSON value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true})).await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Wait until `expr` is `true` in the page; `what` names it for the failure.
    pub async fn wait(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.eval(expr).await;
            if v == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.eval("document.querySelector('main')?.innerText").await;
                panic!("timed out waiting for {what} ({expr}): last {v}\npage:\n{body}\nlog:\n{}", self.log.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Focus `selector` and type `text` into it, as a keyboard would.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.focus(); return document.activeElement === e; }})()",
                s = json!(selector)
            ))
            .await;
        assert_eq!(found, json!(true), "no focusable {selector}");
        self.call("Input.insertText", json!({"text": text})).await;
    }

    pub async fn click(&mut self, selector: &str) {
        let ok = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); if (!e || e.disabled) return false; e.click(); return true; }})()",
                s = json!(selector)
            ))
            .await;
        assert_eq!(ok, json!(true), "nothing enabled to click at {selector}");
    }

    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = STANDARD.decode(str_of(&shot["data"])).unwrap();
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: the browser and its renderers.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The text of a selector's first match, in the page.
pub fn text_of(selector: &str) -> String {
    format!("(document.querySelector({})?.textContent ?? '')", json!(selector))
}
