//! The web console at `/console`: static files built into the binary from
//! `services/gateway/console/` (plain ES modules, CSS and the vendored
//! xterm.js; no build step), which drive the public `/v1` API from the
//! browser. See `docs/console.md`.
//!
//! Every answer here, a 404 included, carries a strict Content-Security-Policy
//! (scripts only from this origin, none inline; connections only to this
//! origin), `X-Content-Type-Options: nosniff`, and is never framed. Files are
//! revalidated on each load (`no-cache` with an `ETag` of their SHA-256), so a
//! new gateway's console replaces the old one at once. Pages are addressed by
//! the URL's fragment (`/console/#/vms/...`), so only files have paths.

use crate::AppState;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

/// The console's files, embedded at compile time in every build profile
/// (`debug-embed`): the binary reads no file at run time. npm's manifest and
/// lock, which only `scripts/console-vendor` reads, are left out.
#[derive(RustEmbed)]
#[folder = "console/"]
#[exclude = "package.json"]
#[exclude = "package-lock.json"]
#[exclude = "node_modules/*"]
pub struct Assets;

/// The policy every console answer carries. `style-src` allows inline
/// styles (never scripts): xterm.js sizes and colours its rows with a
/// `<style>` element it writes itself. `'self'` in `connect-src` covers the
/// same origin's `ws:`/`wss:` (the terminal).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
     font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page every console URL without a file opens.
const INDEX: &str = "index.html";

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/console", get(index)).route("/console/", get(index)).route("/console/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// The media type of a console file, by its extension; anything unknown is
/// served as bytes (and, with `nosniff`, never run or styled).
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The headers every console answer carries.
fn secure(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// The file at `path`, a 304 when the client's copy is current, or a 404.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        let mut resp = (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found\n").into_response();
        secure(&mut resp);
        return resp;
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let current = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if current { StatusCode::NOT_MODIFIED.into_response() } else { (StatusCode::OK, file.data.into_owned()).into_response() };
    let h = resp.headers_mut();
    if !current {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    }
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("a hex ETag is a valid header"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(&mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_and_its_modules_are_embedded() {
        assert!(Assets::get(INDEX).is_some());
        assert!(Assets::get("js/main.js").is_some());
        assert!(Assets::get("vendor/xterm/xterm.mjs").is_some());
        assert!(Assets::get("package-lock.json").is_none(), "npm's lock is not served");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("js/main.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("vendor/xterm/xterm.mjs"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("app.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
        assert_eq!(content_type("x.exe"), "application/octet-stream");
    }

    #[test]
    fn the_policy_allows_no_inline_script_and_no_other_origin() {
        let script = CONTENT_SECURITY_POLICY.split(';').map(str::trim).find(|d| d.starts_with("script-src")).unwrap();
        assert_eq!(script, "script-src 'self'");
        assert!(CONTENT_SECURITY_POLICY.contains("connect-src 'self'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("http"), "no other origin is named");
    }
}
