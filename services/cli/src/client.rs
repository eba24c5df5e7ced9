//! The HTTP client of the `/v1` API: the bearer token, the org and project
//! headers, JSON in and out, and the API's `{"code","message"}` errors as
//! [`Error`]s. Answers are kept as JSON values: what `-o json` prints is what
//! the gateway said, and the tables read only the fields they show.

use crate::error::{Error, Result};
use reqwest::{Method, RequestBuilder, Url};
use serde_json::Value;
use std::time::Duration;

/// Header naming the org to act in (an org id).
pub const ORG_HEADER: &str = "x-vmplane-org";
/// Header naming the project to act in (a project id).
pub const PROJECT_HEADER: &str = "x-vmplane-project";
/// Items per page when a command reads a whole list (the API's largest page).
pub const PAGE_LIMIT: u64 = 100;
/// Per-request timeout of everything but streams and long polls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom the client talks.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// `http(s)://host:port` with any path prefix, without a trailing slash.
    base: String,
    token: Option<String>,
    org: Option<String>,
    project: Option<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Api").field("base", &self.base).field("org", &self.org).field("project", &self.project).finish_non_exhaustive()
    }
}

impl Api {
    /// A client of the gateway at `url` (`http://` or `https://`).
    pub fn new(url: &str, token: Option<String>) -> Result<Self> {
        let parsed = Url::parse(url).map_err(|e| Error::Invalid(format!("--url `{url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::Invalid(format!("--url `{url}`: expected http://HOST[:PORT] or https://HOST[:PORT]")));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::Invalid("--url must not hold credentials: give the token with --token or VMPLANE_TOKEN".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vmplane-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid(format!("building the HTTP client: {e}")))?;
        let base = parsed.as_str().trim_end_matches('/').to_owned();
        Ok(Self { http, base, token: token.filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_owned()), org: None, project: None })
    }

    /// The same client acting in this org and project (ids).
    pub fn scoped(mut self, org: Option<String>, project: Option<String>) -> Self {
        self.org = org;
        self.project = project;
        self
    }

    /// The gateway's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The org id the client acts in, if one was named.
    pub fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `(name, value)` of every header a request carries: the token and the scope.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(t) = &self.token {
            h.push(("authorization", format!("Bearer {t}")));
        }
        if let Some(o) = &self.org {
            h.push((ORG_HEADER, o.clone()));
        }
        if let Some(p) = &self.project {
            h.push((PROJECT_HEADER, p.clone()));
        }
        h
    }

    /// A request with the headers and no timeout (streams).
    pub fn request_untimed(&self, method: Method, path: &str) -> RequestBuilder {
        let mut rb = self.http.request(method, self.url(path));
        for (k, v) in self.headers() {
            rb = rb.header(k, v);
        }
        rb
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_untimed(method, path).timeout(REQUEST_TIMEOUT)
    }

    /// Send and read the answer: its JSON on 2xx (`null` when empty), else the API's error.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Value> {
        let resp = rb.send().await.map_err(|e| Error::transport(&self.base, &e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| Error::transport(&self.base, &e))?;
        if !(200..300).contains(&status) {
            return Err(Error::from_answer(status, &body));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse(format!("HTTP {status} with a body that is not JSON: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.request(Method::GET, path)).await
    }

    /// `GET` that may take up to `longer` more than usual (long polls).
    pub async fn get_waiting(&self, path: &str, longer: Duration) -> Result<Value> {
        self.send(self.request_untimed(Method::GET, path).timeout(REQUEST_TIMEOUT + longer)).await
    }

    /// `POST` with a JSON body, or none.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let rb = self.request(Method::POST, path);
        self.send(match body {
            Some(b) => rb.json(b),
            None => rb,
        })
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Every item of a paginated list (`{"data": [...], "pagination": {...}}`),
    /// page after page; `query` is added to each page's (`status=running`).
    pub async fn list_all(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        for page in 1u64.. {
            let mut q: Vec<String> = vec![format!("page={page}"), format!("limit={PAGE_LIMIT}")];
            q.extend(query.iter().map(|(k, v)| format!("{k}={}", encode(v))));
            let body = self.get(&format!("{path}?{}", q.join("&"))).await?;
            let data = body.get("data").and_then(Value::as_array).ok_or_else(|| Error::BadResponse(format!("GET {path}: no `data` list")))?;
            let pages = body.pointer("/pagination/total_pages").and_then(Value::as_u64).unwrap_or(page);
            items.extend(data.iter().cloned());
            if data.is_empty() || page >= pages {
                break;
            }
        }
        Ok(items)
    }

    /// A list endpoint that answers a plain JSON array.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>> {
        match self.get(path).await? {
            Value::Array(items) => Ok(items),
            other => Err(Error::BadResponse(format!("GET {path}: expected a list, got {}", kind_of(&other)))),
        }
    }
}

/// Percent-encode a query value (only unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What kind of JSON value this is, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The string at `pointer` in `v`, or a [`Error::BadResponse`] naming it.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a str> {
    v.pointer(pointer).and_then(Value::as_str).ok_or_else(|| Error::BadResponse(format!("no string at `{pointer}` in the answer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_hold_credentials() {
        assert_eq!(Api::new("http://127.0.0.1:8080/", None).unwrap().url("/v1/vms"), "http://127.0.0.1:8080/v1/vms");
        assert_eq!(Api::new("https://example.test/vmplane", None).unwrap().url("/v1/vms"), "https://example.test/vmplane/v1/vms");
        assert!(Api::new("127.0.0.1:8080", None).is_err());
        assert!(Api::new("ftp://host", None).is_err());
        assert!(Api::new("http://user:pw@host", None).is_err());
    }

    #[test]
    fn headers_carry_the_token_and_scope_and_debug_hides_the_token() {
        let api = Api::new("http://h", Some(" secret \n".into())).unwrap().scoped(Some("org_x".into()), None);
        assert_eq!(api.headers(), vec![("authorization", "Bearer secret".to_owned()), (ORG_HEADER, "org_x".to_owned())]);
        assert!(!format!("{api:?}").contains("secret"));
        assert!(Api::new("http://h", Some("  ".into())).unwrap().headers().is_empty());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("vm.*,created"), "vm.%2A%2Ccreated");
        assert_eq!(encode("running"), "running");
    }
}
