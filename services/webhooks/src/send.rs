//! One HTTP attempt: a signed POST, as the Standard Webhooks specification
//! has it, to an address that is not private (unless allowed), without
//! following redirects, within a timeout, reading at most
//! [`MAX_RESPONSE_BYTES`] of the answer.
//!
//! The address check happens where the connection is made: the client's DNS
//! resolver refuses a name that resolves to a loopback, private, link-local
//! or metadata address, so a name that resolved to a public address when the
//! endpoint was created and to a private one now (DNS rebinding) is refused
//! at delivery; an address literal in the URL is checked before sending.

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmplane_domain::delivery::short_error;
use vmplane_domain::webhook::{self, signature_header};

/// At most this much of an endpoint's answer is read (then dropped).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What an attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<String>,
    /// Why there is no usable answer.
    pub error: Option<String>,
    pub duration: Duration,
}

/// Sends deliveries; one per deliverer (it pools connections).
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    /// A sender whose attempts end after `timeout`; `allow_private` lifts the address check.
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(16)
            .user_agent(concat!("vmplane-webhooks/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self { client: builder.build()?, allow_private })
    }

    /// POST `body` to `url` as the delivery of event `id`, signed with `secrets`.
    pub async fn send(&self, url: &str, id: &str, body: Bytes, secrets: &[&str]) -> Reply {
        let started = Instant::now();
        let failed = |error: String| Reply { status: None, retry_after: None, error: Some(short_error(&error)), duration: started.elapsed() };
        match webhook::check_url(url) {
            Err(e) => return failed(e.to_string()),
            Ok(u) if !self.allow_private && u.ip.is_some_and(webhook::is_private) => {
                return failed(format!("{} is a loopback, private, link-local or metadata address", u.host));
            }
            Ok(_) => {}
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = signature_header(secrets, id, timestamp, &body);
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(describe(e)),
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // Read a bounded part of the answer, so the connection can be reused, then drop it.
        let mut read = 0;
        let error = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read >= MAX_RESPONSE_BYTES {
                        break None;
                    }
                }
                Ok(None) => break None,
                // The status counts; a body cut short by the timeout is noted.
                Err(e) => break Some(short_error(&describe(e))),
            }
        };
        Reply { status: Some(status), retry_after, error, duration: started.elapsed() }
    }
}

/// An error without the URL (it may carry a token of the endpoint's owner).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    // reqwest's own text stops at the outermost error; the causes say more.
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Resolves like the system, and refuses names with a private address.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(private) = addrs.iter().find(|a| webhook::is_private(a.ip())) {
                let e = format!("{host} resolves to {}, a loopback, private, link-local or metadata address", private.ip());
                return Err(e.into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}
