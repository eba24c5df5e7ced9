//! Everything a client command can fail with, and the one place each kind
//! becomes an exit status ([`Error::exit_code`], documented in `docs/cli.md`).

/// Exit statuses. 2 is clap's, for usage errors.
pub mod exit {
    /// Anything else: the gateway refused the input, answered something
    /// unexpected, a local file could not be read, a name is ambiguous.
    pub const OTHER: i32 = 1;
    /// Usage error (clap).
    pub const USAGE: i32 = 2;
    /// The resource (or the name given) does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// The request conflicts with the resource's state (HTTP 409).
    pub const CONFLICT: i32 = 4;
    /// No token, a wrong one, or one not allowed to do this (HTTP 401/403).
    pub const AUTH: i32 = 5;
    /// The gateway cannot be reached or cannot serve now (connection
    /// refused, HTTP 429, 502, 503, 504): try again later.
    pub const UNAVAILABLE: i32 = 6;
    /// A waited-for operation failed, or the VM failed while waited for.
    pub const FAILED: i32 = 7;
    /// A wait ran past `--timeout`.
    pub const TIMEOUT: i32 = 8;
}

/// A client command's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A non-2xx answer with the API's `{"code","message"}` (or what stood in for it).
    #[error("{code}: {message}")]
    Api { status: u16, code: String, message: String },
    /// The request did not get an answer (connection refused, reset, timed out).
    #[error("cannot reach the gateway at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// An answer that is not what the API documents.
    #[error("unexpected answer from the gateway: {0}")]
    BadResponse(String),
    /// No resource of this kind has this name.
    #[error("not_found: no {kind} named `{name}`")]
    NameNotFound { kind: &'static str, name: String },
    /// Several resources of this kind have this name.
    #[error("ambiguous: `{name}` names {} {kind}s ({}); use an id", ids.len(), ids.join(", "))]
    Ambiguous { kind: &'static str, name: String, ids: Vec<String> },
    /// A waited-for operation ended `failed`.
    #[error("operation {op} failed: {code}: {message}")]
    OperationFailed { op: String, code: String, message: String },
    /// The VM waited for reached `failed`.
    #[error("vm {vm} failed: {message}")]
    VmFailed { vm: String, message: String },
    #[error("timed out after {after} waiting for {what}")]
    Timeout { after: String, what: String },
    /// Bad local input found after parsing (a file's content, a config file).
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The terminal WebSocket broke.
    #[error("terminal: {0}")]
    Terminal(String),
}

/// Shorthand for command results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process's exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Api { status, .. } => match status {
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                401 | 403 => exit::AUTH,
                429 | 502 | 503 | 504 => exit::UNAVAILABLE,
                _ => exit::OTHER,
            },
            Self::Unreachable { .. } => exit::UNAVAILABLE,
            Self::NameNotFound { .. } => exit::NOT_FOUND,
            Self::OperationFailed { .. } | Self::VmFailed { .. } => exit::FAILED,
            Self::Timeout { .. } => exit::TIMEOUT,
            Self::BadResponse(_) | Self::Ambiguous { .. } | Self::Invalid(_) | Self::Io { .. } | Self::Terminal(_) => exit::OTHER,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// The error of a non-2xx answer whose body is `body`: the API's
    /// `{"code","message"}`, or the status and the body's start when it is not that.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            code: String,
            message: String,
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => Self::Api { status, code: b.code, message: b.message },
            Err(_) => {
                let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
                let code = match status {
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "not_found",
                    409 => "conflict",
                    503 => "unavailable",
                    _ => "http_error",
                };
                let message = if text.trim().is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {}", text.trim()) };
                Self::Api { status, code: code.into(), message }
            }
        }
    }

    /// A transport error of a request to `url`.
    pub fn transport(url: &str, e: &reqwest::Error) -> Self {
        if e.is_decode() {
            return Self::BadResponse(e.to_string());
        }
        // The URL is ours (no credentials in it); the source chain says why.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        Self::Unreachable { url: url.to_owned(), detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_map_to_their_exit_codes() {
        let code = |status: u16| Error::from_answer(status, br#"{"code":"x","message":"y"}"#).exit_code();
        assert_eq!(code(404), exit::NOT_FOUND);
        assert_eq!(code(409), exit::CONFLICT);
        assert_eq!(code(401), exit::AUTH);
        assert_eq!(code(403), exit::AUTH);
        assert_eq!(code(503), exit::UNAVAILABLE);
        assert_eq!(code(429), exit::UNAVAILABLE);
        assert_eq!(code(422), exit::OTHER);
        assert_eq!(code(500), exit::OTHER);
        for distinct in [exit::NOT_FOUND, exit::CONFLICT, exit::AUTH, exit::UNAVAILABLE, exit::FAILED, exit::TIMEOUT] {
            assert_ne!(distinct, exit::USAGE);
            assert_ne!(distinct, exit::OTHER);
        }
    }

    #[test]
    fn the_api_body_is_shown_and_other_bodies_do_not_panic() {
        let e = Error::from_answer(409, br#"{"code":"invalid_state","message":"vm is stopped"}"#);
        assert_eq!(e.to_string(), "invalid_state: vm is stopped");
        let e = Error::from_answer(502, b"<html>bad gateway</html>");
        assert_eq!(e.exit_code(), exit::UNAVAILABLE);
        assert!(e.to_string().starts_with("http_error: HTTP 502: <html>"), "{e}");
        let e = Error::from_answer(401, b"");
        assert_eq!(e.to_string(), "unauthorized: HTTP 401");
        let e = Error::from_answer(404, &[0xff, 0xfe, b'{']);
        assert_eq!(e.exit_code(), exit::NOT_FOUND);
    }

    #[test]
    fn name_errors() {
        let e = Error::Ambiguous { kind: "vm", name: "web".into(), ids: vec!["vm_a".into(), "vm_b".into()] };
        assert_eq!(e.to_string(), "ambiguous: `web` names 2 vms (vm_a, vm_b); use an id");
        assert_eq!(Error::NameNotFound { kind: "vm", name: "web".into() }.exit_code(), exit::NOT_FOUND);
    }
}
