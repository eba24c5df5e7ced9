//! Webhook endpoints: where an org's events are delivered over HTTP.
//!
//! An endpoint is an aggregate of its own (`vmplane.evt.<org>.webhook.<id>`),
//! commanded through the control-plane consumer that tenancy commands and SSH
//! keys use (any worker); [`decide`] and [`evolve`] are pure.
//!
//! The signing secrets are **not** in the events, nor in the commands: the
//! event stream is readable by the org's subscribers, so a secret there would
//! let any of them forge deliveries. The gateway keeps them in the JetStream
//! key-value bucket `vmplane_webhook_secrets` (readable only by the roles that
//! sign), and the events record only that a rotation happened and until when
//! the previous secret keeps signing ([`WebhookEvent::WebhookSecretRotated`]).
//!
//! An endpoint's `event_types` filter is the one event type matcher of
//! `event_filter` (`vm.*`, `*_requested`, `ssh_key.ssh_key_created`), as for
//! `GET /v1/events?type=`; an empty filter wants every event: see
//! [`type_matches`]. Whether a URL's host is a private address is decided by
//! [`is_private`] (pure); resolving the host is the gateway's (and the
//! deliverer's) part.

use crate::delivery::{DeliveryAttempt, DisableReason};
use crate::event_filter::TypeFilter;
use crate::ids::{DeliveryId, OrgId, WebhookId};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// How long the previous secret keeps signing after a rotation.
pub const SECRET_OVERLAP: Duration = Duration::hours(24);
/// The prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A change of an endpoint (`PATCH`): each field given replaces the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

impl WebhookChange {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Commands on a webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WebhookCommand {
    Create {
        id: WebhookId,
        org: OrgId,
        url: String,
        event_types: Vec<String>,
        description: Option<String>,
    },
    Update {
        id: WebhookId,
        org: OrgId,
        change: WebhookChange,
    },
    Delete {
        id: WebhookId,
        org: OrgId,
    },
    /// The gateway has stored a new secret; the previous one signs until `previous_expires_at`.
    RotateSecret {
        id: WebhookId,
        org: OrgId,
        #[serde(with = "time::serde::rfc3339")]
        previous_expires_at: OffsetDateTime,
    },
    /// Send the endpoint a `webhook.test` event.
    Test {
        id: WebhookId,
        org: OrgId,
    },
    /// Attempt a delivery again now, whatever its state.
    RetryDelivery {
        id: WebhookId,
        org: OrgId,
        delivery: DeliveryId,
        /// The stream sequence of the delivery's event.
        event_seq: u64,
    },
}

impl WebhookCommand {
    /// The org the endpoint belongs to, which its events name.
    pub fn org(&self) -> OrgId {
        match self {
            Self::Create { org, .. }
            | Self::Update { org, .. }
            | Self::Delete { org, .. }
            | Self::RotateSecret { org, .. }
            | Self::Test { org, .. }
            | Self::RetryDelivery { org, .. } => *org,
        }
    }

    /// The endpoint's id: the aggregate whose subject its events go to.
    pub fn id(&self) -> WebhookId {
        match self {
            Self::Create { id, .. }
            | Self::Update { id, .. }
            | Self::Delete { id, .. }
            | Self::RotateSecret { id, .. }
            | Self::Test { id, .. }
            | Self::RetryDelivery { id, .. } => *id,
        }
    }

    /// The operation kind shown in operations.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create_webhook",
            Self::Update { .. } => "update_webhook",
            Self::Delete { .. } => "delete_webhook",
            Self::RotateSecret { .. } => "rotate_webhook_secret",
            Self::Test { .. } => "test_webhook",
            Self::RetryDelivery { .. } => "retry_webhook_delivery",
        }
    }
}

/// Events of a webhook endpoint. None carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WebhookEvent {
    WebhookEndpointCreated {
        org: OrgId,
        url: String,
        /// Patterns (`*`, `vm.*`, `vm.running`, `running`); empty: every event.
        event_types: Vec<String>,
        description: Option<String>,
    },
    /// The fields given replace the current ones.
    WebhookEndpointUpdated {
        url: Option<String>,
        event_types: Option<Vec<String>>,
        description: Option<String>,
        enabled: Option<bool>,
    },
    WebhookEndpointDeleted,
    /// A new signing secret; the previous one signs as well until `previous_expires_at`.
    WebhookSecretRotated {
        #[serde(with = "time::serde::rfc3339")]
        #[schema(value_type = String, format = DateTime)]
        previous_expires_at: OffsetDateTime,
    },
    /// The deliverer disabled the endpoint: it answered 410, or kept failing
    /// (`webhook.endpoint_disabled`). Its owner enables it again with a change.
    EndpointDisabled {
        reason: DisableReason,
    },
    /// A test event, delivered to this endpoint only (`webhook.test`).
    Test,
    /// Its owner asked to attempt a delivery again now; `event_seq` is
    /// where the delivery's event is in the stream.
    DeliveryRetryRequested {
        delivery: DeliveryId,
        event_seq: u64,
    },
    /// One delivery attempt (on the endpoint's delivery subject,
    /// `subjects::webhook_deliveries`); never delivered to any endpoint.
    DeliveryAttempted(Box<DeliveryAttempt>),
}

impl WebhookEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::WebhookEndpointCreated { .. } => "webhook_endpoint_created",
            Self::WebhookEndpointUpdated { .. } => "webhook_endpoint_updated",
            Self::WebhookEndpointDeleted => "webhook_endpoint_deleted",
            Self::WebhookSecretRotated { .. } => "webhook_secret_rotated",
            Self::EndpointDisabled { .. } => "endpoint_disabled",
            Self::Test => "test",
            Self::DeliveryRetryRequested { .. } => "delivery_retry_requested",
            Self::DeliveryAttempted(_) => "delivery_attempted",
        }
    }
}

/// An endpoint, folded from its events; a deleted endpoint is gone (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: WebhookId,
    pub org: OrgId,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why deliveries disabled it (cleared when its owner enables it again).
    #[serde(default)]
    pub disabled_reason: Option<DisableReason>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Until when the secret before the last rotation signs as well.
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

/// An endpoint's signing secrets, as the gateway keeps them in the bucket
/// `vmplane_webhook_secrets` (key: the endpoint id), never in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// `whsec_` + base64 of 32 random bytes.
    pub current: String,
    /// The secret before the last rotation, and until when it signs too.
    pub previous: Option<PreviousSecret>,
}

/// A rotated-out secret, still signing until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl SecretRecord {
    /// The record after a rotation at `now` to `new`: the current secret
    /// signs alongside `new` for [`SECRET_OVERLAP`] (a secret rotated out
    /// before it is dropped: two sign at most).
    pub fn rotated(self, new: String, now: OffsetDateTime) -> Self {
        Self { current: new, previous: Some(PreviousSecret { secret: self.current, expires_at: now + SECRET_OVERLAP }) }
    }

    /// The secrets that sign a delivery at `now`: the current one first.
    pub fn signing(&self, now: OffsetDateTime) -> Vec<&str> {
        let mut out = vec![self.current.as_str()];
        out.extend(self.previous.iter().filter(|p| p.expires_at > now).map(|p| p.secret.as_str()));
        out
    }
}

/// The `webhook-signature` header of a delivery, as the Standard Webhooks
/// specification has it: for each secret (`whsec_` + base64 key), `v1,` +
/// base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, space-separated
/// (two during a rotation's overlap). A secret that is not `whsec_` + base64
/// signs nothing.
pub fn signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let sign = |secret: &str| {
        let key = b64.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).ok()?;
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        Some(format!("v1,{}", b64.encode(mac.finalize().into_bytes())))
    };
    secrets.iter().filter_map(|s| sign(s)).collect::<Vec<_>>().join(" ")
}

/// Why a webhook command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("url: {0}")]
    BadUrl(String),
    #[error("event_types: {0}")]
    BadEventTypes(String),
    #[error("description must be at most {MAX_DESCRIPTION_LEN} characters without control characters")]
    BadDescription,
    #[error("a change needs at least one of url, event_types, description, enabled")]
    EmptyChange,
    #[error("webhook not found")]
    NotFound,
    #[error("webhook already exists")]
    AlreadyExists,
}

impl WebhookError {
    /// Machine-readable code, shared by HTTP errors and failed operations.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadUrl(_) | Self::BadEventTypes(_) | Self::BadDescription | Self::EmptyChange => "validation_failed",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "conflict",
        }
    }
}

/// The OpenAPI format of a webhook URL, as [`check_url`] reads it. A
/// pattern would either refuse URLs the check takes or take ones it
/// refuses, so the format names the rule and the description spells it out
/// (the contract test teaches its fuzzer the format).
pub const URL_FORMAT: &str = "webhook-url";

text_schema! {
    /// The OpenAPI schema of a webhook URL (see [`check_url`]).
    UrlText {
        format(Some(utoipa::openapi::SchemaFormat::Custom(URL_FORMAT.into()))),
        max_length(Some(MAX_URL_LEN)),
        description(Some(
                "An absolute `http` or `https` URL with a host, without credentials, a fragment, surrounding blanks \
                 or control characters. A host that is or resolves to a loopback, private, link-local or metadata \
                 address is refused unless the gateway runs with `--webhook-allow-private`.",
            )),
        examples([serde_json::json!("https://hooks.example.com/vmplane")]),
    }
}

/// What [`check_description`] accepts, with [`MAX_DESCRIPTION_LEN`] as the
/// length bound.
pub const DESCRIPTION_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

text_schema! {
    /// The OpenAPI schema of an endpoint's description.
    DescriptionText {
        pattern(Some(DESCRIPTION_PATTERN)),
        max_length(Some(MAX_DESCRIPTION_LEN)),
        description(Some("At most 256 characters, no control characters.")),
    }
}

/// A URL as checked: the canonical text, and the host and port to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The host as an address, when the URL names one.
    pub ip: Option<IpAddr>,
}

/// Check a webhook URL: absolute `http` or `https`, with a host, without
/// credentials or a fragment, at most [`MAX_URL_LEN`] long.
pub fn check_url(text: &str) -> Result<CheckedUrl, WebhookError> {
    let bad = |why: &str| Err(WebhookError::BadUrl(why.to_owned()));
    if text.len() > MAX_URL_LEN {
        return bad("longer than 2048 characters");
    }
    if text.trim() != text || text.chars().any(char::is_control) {
        return bad("surrounding blanks or control characters");
    }
    let url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(e) => return bad(&format!("not an absolute URL ({e})")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad("the scheme must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("credentials in the URL are not accepted");
    }
    if url.fragment().is_some() {
        return bad("a fragment is not sent; leave it out");
    }
    let (host, ip) = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => (d.to_owned(), None),
        Some(url::Host::Ipv4(a)) => (a.to_string(), Some(IpAddr::V4(a))),
        Some(url::Host::Ipv6(a)) => (a.to_string(), Some(IpAddr::V6(a))),
        _ => return bad("no host"),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(CheckedUrl { url: url.to_string(), host, port, ip })
}

/// Whether `ip` is an address webhooks may not reach by default: loopback,
/// private (RFC 1918, unique local), shared (CGNAT, where some clouds put
/// their metadata service), link-local (with the 169.254.169.254 metadata
/// service), unspecified, broadcast, multicast, documentation or reserved.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_private_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS metadata fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (may reach IPv4 private space)
                || (s[0..6] == [0; 6] && a != Ipv6Addr::UNSPECIFIED) // IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_private_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 0 // "this network"
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || a.is_documentation()
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || a.is_multicast()
        || o[0] >= 240 // reserved and broadcast
}

fn check_event_types(patterns: &[String]) -> Result<(), WebhookError> {
    if patterns.is_empty() {
        return Ok(());
    }
    TypeFilter::new(patterns).map(drop).map_err(|e| WebhookError::BadEventTypes(e.to_string()))
}

fn check_description(d: Option<&String>) -> Result<(), WebhookError> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_LEN || d.chars().any(char::is_control) => Err(WebhookError::BadDescription),
        _ => Ok(()),
    }
}

/// Whether an endpoint filtering on `patterns` (checked when they were
/// stored) wants an event of `aggregate_type` and `type_name`; an empty
/// filter wants every event.
pub fn type_matches(patterns: &[String], aggregate_type: &str, type_name: &str) -> bool {
    patterns.is_empty() || TypeFilter::new(patterns).is_ok_and(|f| f.matches_names(aggregate_type, type_name))
}

/// Decide a command against the endpoint's state (`None`: no such endpoint, or deleted).
pub fn decide(state: Option<&Webhook>, cmd: &WebhookCommand) -> Result<WebhookEvent, WebhookError> {
    match (state, cmd) {
        (Some(_), WebhookCommand::Create { .. }) => Err(WebhookError::AlreadyExists),
        (None, WebhookCommand::Create { org, url, event_types, description, .. }) => {
            let url = check_url(url)?.url;
            check_event_types(event_types)?;
            check_description(description.as_ref())?;
            Ok(WebhookEvent::WebhookEndpointCreated { org: *org, url, event_types: event_types.clone(), description: description.clone() })
        }
        (Some(w), cmd) if w.org != cmd.org() => Err(WebhookError::NotFound),
        (None, _) => Err(WebhookError::NotFound),
        (Some(_), WebhookCommand::Update { change, .. }) => {
            if change.is_empty() {
                return Err(WebhookError::EmptyChange);
            }
            let url = change.url.as_deref().map(check_url).transpose()?.map(|u| u.url);
            if let Some(types) = &change.event_types {
                check_event_types(types)?;
            }
            check_description(change.description.as_ref())?;
            Ok(WebhookEvent::WebhookEndpointUpdated {
                url,
                event_types: change.event_types.clone(),
                description: change.description.clone(),
                enabled: change.enabled,
            })
        }
        (Some(_), WebhookCommand::Delete { .. }) => Ok(WebhookEvent::WebhookEndpointDeleted),
        (Some(_), WebhookCommand::RotateSecret { previous_expires_at, .. }) => {
            Ok(WebhookEvent::WebhookSecretRotated { previous_expires_at: *previous_expires_at })
        }
        (Some(_), WebhookCommand::Test { .. }) => Ok(WebhookEvent::Test),
        (Some(_), WebhookCommand::RetryDelivery { delivery, event_seq, .. }) => {
            Ok(WebhookEvent::DeliveryRetryRequested { delivery: *delivery, event_seq: *event_seq })
        }
    }
}

/// Fold one event into the endpoint's state.
pub fn evolve(state: Option<Webhook>, id: WebhookId, at: OffsetDateTime, event: &WebhookEvent) -> Option<Webhook> {
    match (state, event) {
        (None, WebhookEvent::WebhookEndpointCreated { org, url, event_types, description }) => Some(Webhook {
            id,
            org: *org,
            url: url.clone(),
            event_types: event_types.clone(),
            description: description.clone(),
            enabled: true,
            disabled_reason: None,
            created_at: at,
            updated_at: at,
            previous_secret_expires_at: None,
        }),
        (Some(w), WebhookEvent::WebhookEndpointCreated { .. }) => Some(w),
        (Some(mut w), WebhookEvent::WebhookEndpointUpdated { url, event_types, description, enabled }) => {
            if let Some(url) = url {
                w.url = url.clone();
            }
            if let Some(types) = event_types {
                w.event_types = types.clone();
            }
            if let Some(d) = description {
                w.description = Some(d.clone()).filter(|d| !d.is_empty());
            }
            if let Some(enabled) = enabled {
                w.enabled = *enabled;
                w.disabled_reason = None;
            }
            w.updated_at = at;
            Some(w)
        }
        (Some(mut w), WebhookEvent::WebhookSecretRotated { previous_expires_at }) => {
            w.previous_secret_expires_at = Some(*previous_expires_at);
            w.updated_at = at;
            Some(w)
        }
        (Some(mut w), WebhookEvent::EndpointDisabled { reason }) => {
            w.enabled = false;
            w.disabled_reason = Some(*reason);
            w.updated_at = at;
            Some(w)
        }
        (Some(w), WebhookEvent::Test | WebhookEvent::DeliveryRetryRequested { .. } | WebhookEvent::DeliveryAttempted(_)) => Some(w),
        (_, WebhookEvent::WebhookEndpointDeleted) | (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The documented description pattern and bound are the rule.
        #[test]
        fn the_description_schema_is_the_rule(s in "[a \t\x00\x7f\u{85}\u{a0}é]{0,6}|[ab]{250,260}") {
            let schema = <DescriptionText as utoipa::PartialSchema>::schema();
            proptest::prop_assert_eq!(crate::schema_check::accepts(schema, &s), check_description(Some(&s)).is_ok(), "{:?}", s);
        }
    }

    fn at() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn create(id: WebhookId, org: OrgId) -> WebhookCommand {
        WebhookCommand::Create { id, org, url: "https://example.com/hook".into(), event_types: vec!["vm.*".into()], description: Some("ci".into()) }
    }

    #[test]
    fn create_update_rotate_delete() {
        let (id, org) = (WebhookId::new(), OrgId::new());
        let ev = decide(None, &create(id, org)).unwrap();
        assert_eq!(ev.type_name(), "webhook_endpoint_created");
        let w = evolve(None, id, at(), &ev).unwrap();
        assert_eq!((w.url.as_str(), w.enabled, w.event_types.clone()), ("https://example.com/hook", true, vec!["vm.*".to_owned()]));
        assert_eq!(decide(Some(&w), &create(id, org)), Err(WebhookError::AlreadyExists));

        let change = WebhookChange { enabled: Some(false), description: Some(String::new()), ..Default::default() };
        let ev = decide(Some(&w), &WebhookCommand::Update { id, org, change }).unwrap();
        let w = evolve(Some(w), id, at(), &ev).unwrap();
        assert_eq!((w.enabled, w.description.clone()), (false, None), "an empty description clears it");
        let other = WebhookCommand::Update { id, org: OrgId::new(), change: WebhookChange { enabled: Some(true), ..Default::default() } };
        assert_eq!(decide(Some(&w), &other), Err(WebhookError::NotFound), "another org's endpoint");
        assert_eq!(decide(Some(&w), &WebhookCommand::Update { id, org, change: WebhookChange::default() }), Err(WebhookError::EmptyChange));

        let expires = at() + SECRET_OVERLAP;
        let ev = decide(Some(&w), &WebhookCommand::RotateSecret { id, org, previous_expires_at: expires }).unwrap();
        let w = evolve(Some(w), id, at(), &ev).unwrap();
        assert_eq!(w.previous_secret_expires_at, Some(expires));

        let ev = decide(Some(&w), &WebhookCommand::Delete { id, org }).unwrap();
        assert_eq!(evolve(Some(w), id, at(), &ev), None);
        assert_eq!(decide(None, &WebhookCommand::Delete { id, org }), Err(WebhookError::NotFound));
    }

    #[test]
    fn a_rotated_secret_signs_for_a_day() {
        let rec = SecretRecord { current: "whsec_a".into(), previous: None };
        assert_eq!(rec.signing(at()), vec!["whsec_a"]);
        let rec = rec.rotated("whsec_b".into(), at());
        assert_eq!(rec.signing(at() + Duration::hours(23)), vec!["whsec_b", "whsec_a"]);
        assert_eq!(rec.signing(at() + SECRET_OVERLAP), vec!["whsec_b"]);
        assert_eq!(rec.rotated("whsec_c".into(), at()).signing(at()), vec!["whsec_c", "whsec_b"], "two at most");
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The specification's own test vector.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature_header(&[secret], id, ts, body), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let both = signature_header(&["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", secret], id, ts, body);
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2, "{both}");
        assert_eq!(parts[1], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_ne!(signature_header(&[secret], id, ts, br#"{"test": 2432232315}"#), parts[1], "another body, another signature");
        assert_eq!(signature_header(&["not-a-secret", "whsec_!!"], id, ts, body), "");
    }

    #[test]
    fn urls_are_checked() {
        for bad in [
            "",
            "example.com",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "https://example.com/#x",
            " https://example.com/",
            "http://",
        ] {
            assert!(matches!(check_url(bad), Err(WebhookError::BadUrl(_))), "{bad:?}");
        }
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
        let u = check_url("http://127.0.0.1:8080/h?x=1").unwrap();
        assert_eq!((u.port, u.ip), (8080, Some(IpAddr::from([127, 0, 0, 1]))));
        let u = check_url("https://[::1]/").unwrap();
        assert_eq!((u.port, u.ip, u.host.as_str()), (443, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)), "::1"));
        assert_eq!(check_url("https://Example.COM").unwrap().url, "https://example.com/");
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "172.32.0.1", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn event_type_filters() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for ok in ["*", "vm.*", "vm.running", "running", "ssh_key.ssh_key_created", "*_requested"] {
            assert_eq!(check_event_types(&p(&[ok])), Ok(()), "{ok}");
        }
        for bad in ["", "VM.*", "vm.", ".x", "vm.*.x", "vm running"] {
            assert!(check_event_types(&p(&[bad])).is_err(), "{bad:?}");
        }
        assert!(type_matches(&p(&["*_requested"]), "vm", "stop_requested"));
        assert!(type_matches(&[], "vm", "created"));
        assert!(type_matches(&p(&["vm.*"]), "vm", "running"));
        assert!(!type_matches(&p(&["vm.*"]), "volume", "created"));
        assert!(type_matches(&p(&["volume.created", "running"]), "vm", "running"));
        assert!(!type_matches(&p(&["vm.running"]), "vm", "created"));
        assert!(type_matches(&p(&["*"]), "host", "registered"));
    }

    #[test]
    fn bad_input_is_refused_at_create_and_change() {
        let (id, org) = (WebhookId::new(), OrgId::new());
        let with = |url: &str, types: Vec<String>, d: Option<String>| WebhookCommand::Create { id, org, url: url.into(), event_types: types, description: d };
        assert!(matches!(decide(None, &with("gopher://x", vec![], None)), Err(WebhookError::BadUrl(_))));
        assert!(matches!(decide(None, &with("https://x", vec!["Bad".into()], None)), Err(WebhookError::BadEventTypes(_))));
        assert!(matches!(decide(None, &with("https://x", vec!["*".into(); crate::event_filter::MAX_PATTERNS + 1], None)), Err(WebhookError::BadEventTypes(_))));
        assert_eq!(decide(None, &with("https://x", vec![], Some("a\nb".into()))), Err(WebhookError::BadDescription));
        let w = evolve(None, id, at(), &decide(None, &with("https://x", vec![], None)).unwrap()).unwrap();
        let change = WebhookChange { url: Some("nope".into()), ..Default::default() };
        assert!(matches!(decide(Some(&w), &WebhookCommand::Update { id, org, change }), Err(WebhookError::BadUrl(_))));
    }
}
