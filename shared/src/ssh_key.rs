//! SSH public keys stored in an org, so that a create can name them by id
//! (`ssh_key_ids`, the marketplace's `ssh_key_id`) instead of repeating them.
//!
//! A key is an aggregate of its own (`vmplane.evt.<org>.ssh_key.<id>`):
//! created once, deleted once. Its commands go to the control-plane consumer
//! that tenancy commands use (any worker); [`decide`] and [`evolve`] are pure.
//! The public key is parsed as an OpenSSH public key ([`parse_public_key`]),
//! stored in its canonical one-line form, and shown with its SHA-256
//! fingerprint, as `ssh-keygen -l` prints it.

use crate::ids::{OrgId, SshKeyId};
use serde::{Deserialize, Serialize};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, PublicKey};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Longest accepted public key text: an RSA key of 16384 bits is about 2.8 KB.
pub const MAX_PUBLIC_KEY_LEN: usize = 8 * 1024;
/// Longest key name.
pub const MAX_NAME_LEN: usize = 64;
/// The smallest RSA modulus accepted, in bits (OpenSSH refuses smaller ones).
pub const MIN_RSA_BITS: usize = 2048;

/// Commands on an SSH key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SshKeyCommand {
    Create { id: SshKeyId, org: OrgId, name: String, public_key: String },
    Delete { id: SshKeyId, org: OrgId },
}

impl SshKeyCommand {
    /// The org the key belongs to, which its events name.
    pub fn org(&self) -> OrgId {
        match self {
            Self::Create { org, .. } | Self::Delete { org, .. } => *org,
        }
    }

    /// The key's id: the aggregate whose subject its events go to.
    pub fn id(&self) -> SshKeyId {
        match self {
            Self::Create { id, .. } | Self::Delete { id, .. } => *id,
        }
    }

    /// The operation kind shown in operations.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create_ssh_key",
            Self::Delete { .. } => "delete_ssh_key",
        }
    }
}

/// Events of an SSH key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SshKeyEvent {
    SshKeyCreated {
        org: OrgId,
        name: String,
        /// Canonical OpenSSH form: `<algorithm> <base64> [comment]`.
        public_key: String,
        /// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
        fingerprint: String,
    },
    SshKeyDeleted,
}

impl SshKeyEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::SshKeyCreated { .. } => "ssh_key_created",
            Self::SshKeyDeleted => "ssh_key_deleted",
        }
    }
}

/// A stored key, folded from its events; a deleted key is gone (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKey {
    pub id: SshKeyId,
    pub org: OrgId,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Why an SSH key command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshKeyError {
    #[error("name must be 1-{MAX_NAME_LEN} characters without control characters")]
    BadName,
    #[error("public_key is not an OpenSSH public key: {0}")]
    BadKey(String),
    #[error("ssh key not found")]
    NotFound,
    #[error("ssh key already exists")]
    AlreadyExists,
}

impl SshKeyError {
    /// Machine-readable code, shared by HTTP errors and failed operations.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadName | Self::BadKey(_) => "validation_failed",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "conflict",
        }
    }
}

/// A public key as parsed: its canonical text and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// `<algorithm> <base64> [comment]`, on one line.
    pub openssh: String,
    /// `SHA256:<base64>` without padding.
    pub fingerprint: String,
    /// The algorithm name, e.g. `ssh-ed25519`.
    pub algorithm: String,
}

/// Parse one OpenSSH public key (`ssh-ed25519 AAAA… comment`): ed25519,
/// ECDSA (NIST P-256/384/521), RSA of at least [`MIN_RSA_BITS`] bits, or a
/// FIDO security key (`sk-…`). The base64 must decode to a key of the named
/// algorithm. Refused: several lines, `authorized_keys` options, DSA,
/// certificates, private keys and anything else.
pub fn parse_public_key(text: &str) -> Result<ParsedKey, SshKeyError> {
    let bad = |why: &str| Err(SshKeyError::BadKey(why.to_owned()));
    let text = text.trim();
    if text.is_empty() {
        return bad("it is empty");
    }
    if text.len() > MAX_PUBLIC_KEY_LEN {
        return bad("it is longer than 8 KiB");
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return bad("one key on one line, without control characters");
    }
    if text.contains("PRIVATE KEY") {
        return bad("this is a private key; give its public half (the .pub file)");
    }
    let key = PublicKey::from_openssh(text).map_err(|e| SshKeyError::BadKey(format!("expected `<algorithm> <base64> [comment]` ({e})")))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256 => {}
        Algorithm::Rsa { .. } => {
            let bits = match key.key_data() {
                KeyData::Rsa(rsa) => rsa.n.as_positive_bytes().map_or(0, |n| n.len() * 8),
                _ => 0,
            };
            if bits < MIN_RSA_BITS {
                return bad(&format!("RSA keys need at least {MIN_RSA_BITS} bits"));
            }
        }
        other => return bad(&format!("algorithm `{other}` is not accepted (use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa)")),
    }
    let openssh = key.to_openssh().map_err(|e| SshKeyError::BadKey(e.to_string()))?;
    Ok(ParsedKey { openssh, fingerprint: key.fingerprint(HashAlg::Sha256).to_string(), algorithm: key.algorithm().as_str().to_owned() })
}

/// Whether `name` may name a key: 1-64 characters, none of them a control
/// character, not only spaces.
pub fn is_valid_name(name: &str) -> bool {
    name.chars().any(|c| c != ' ') && name.chars().count() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// What [`is_valid_name`] accepts, as a pattern with [`MAX_NAME_LEN`] as the
/// length bound (control characters are U+0000-U+001F and U+007F-U+009F).
pub const NAME_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

text_schema! {
    /// The OpenAPI schema of a key's name (see [`is_valid_name`]).
    KeyName {
        pattern(Some(NAME_PATTERN)),
        min_length(Some(1)),
        max_length(Some(MAX_NAME_LEN)),
        description(Some("1-64 characters, no control characters, not only spaces.")),
        examples([serde_json::json!("laptop")]),
    }
}

/// The OpenAPI format of an OpenSSH public key, as [`parse_public_key`]
/// reads it. A pattern cannot say that the base64 must decode to a key of
/// the named algorithm, so the format names the rule and the description
/// spells it out (the contract test teaches its fuzzer the format).
pub const PUBLIC_KEY_FORMAT: &str = "openssh-public-key";

text_schema! {
    /// The OpenAPI schema of a public key's text (see [`parse_public_key`]).
    PublicKeyText {
        format(Some(utoipa::openapi::SchemaFormat::Custom(PUBLIC_KEY_FORMAT.into()))),
        max_length(Some(MAX_PUBLIC_KEY_LEN)),
        description(Some(
                "One OpenSSH public key on one line, `<algorithm> <base64> [comment]`: ssh-ed25519, \
                 ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, \
                 or ssh-rsa of at least 2048 bits; the base64 decodes to a key of that algorithm.",
            )),
        examples([serde_json::json!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop")]),
    }
}

/// Decide a command against the key's state (`None`: no such key, or deleted).
pub fn decide(state: Option<&SshKey>, cmd: &SshKeyCommand) -> Result<SshKeyEvent, SshKeyError> {
    match (state, cmd) {
        (Some(_), SshKeyCommand::Create { .. }) => Err(SshKeyError::AlreadyExists),
        (None, SshKeyCommand::Create { org, name, public_key, .. }) => {
            if !is_valid_name(name) {
                return Err(SshKeyError::BadName);
            }
            let parsed = parse_public_key(public_key)?;
            Ok(SshKeyEvent::SshKeyCreated { org: *org, name: name.clone(), public_key: parsed.openssh, fingerprint: parsed.fingerprint })
        }
        (Some(key), SshKeyCommand::Delete { org, .. }) if key.org == *org => Ok(SshKeyEvent::SshKeyDeleted),
        (_, SshKeyCommand::Delete { .. }) => Err(SshKeyError::NotFound),
    }
}

/// Fold one event into the key's state.
pub fn evolve(state: Option<SshKey>, id: SshKeyId, at: OffsetDateTime, event: &SshKeyEvent) -> Option<SshKey> {
    match event {
        SshKeyEvent::SshKeyCreated { org, name, public_key, fingerprint } => state
            .or_else(|| Some(SshKey { id, org: *org, name: name.clone(), public_key: public_key.clone(), fingerprint: fingerprint.clone(), created_at: at })),
        SshKeyEvent::SshKeyDeleted => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated with `ssh-keygen -t ed25519 -C user@host`.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";

    /// `ssh-keygen -t rsa -b 2048`, `-t ecdsa`, `-t rsa -b 1024` and `-t dsa`, with their `ssh-keygen -l` fingerprints.
    const RSA_2048: (&str, &str) = (
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDMJkO50LJE2s86NAyHRAZv2YwJoSOO8sS8GUL56jDs4uH/NW54WQuY4QaLDxn4XFaeYOMKlvUZnLSZB/2NY8OPdrIaii6emHW5W5R6hPUEYKMQgdUOgBX+wSrrhFGmJqnJyoO6UNutSysLPtggn/TR3iIJI7iVtd7tSiwPCsoGLGaT5ctWHfhzq4sBZihP4lTkfKg7iZ8IUZUHvA3//zCgIKaa0XToTxux4jwtWxTdyJmjdLS3RHNPY4OVrsAu1yA/2M0OhpvkLcSywukEXR15ZhZimjvwIrF/BtEh5lPcioF2URdzbGJr1jo6FslVqikC7IQKEirO4lTxs26CK5U9 rsa",
        "SHA256:yo2OEbmEC1zcz5JWZ7VYXZylE7YUrgSvrNOt2kQLypg",
    );
    const ECDSA: (&str, &str) = (
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBD+zGslh3aJqGmGFfKzkdvOYDlGXtaMMyNC0e9qrmVC+NkVNp3lDmW5OJ2x+mrE2ar9sbsnSU1zNO1rxEJfelPs= ec",
        "SHA256:HWMLHkhQF8Z1/HyuB8jYKqdg8i85zUuIxf/Pnhrlkws",
    );
    const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC4d7vbLE+nVSokKm13xi/qVugHIq/r+8acPHU0wbAyQAj69AHhVkyKtFPlE+6yFQsEwJ7QeeqYPhpfsmpXHUVW7BpbUj9ky1eNM8rzq6I3vEVm/RgZB0oUsE09pDc6aFY6+/MTJUvPE97ja3xflrPVDEKAKDQfSFzph2PtYuJ9Jw== small";
    const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBALMtw6HAQpu/z0K/EwyiTlS6AXXlCbwV+Ovqdx2A8QH2ZRijpwJCsOiZNEZX6dMOWMzeWqP9L9zrzYfUazrUs+Lo+Xs+fZlOFtECeNa99pD6rv2W+7Mqt5hfaXzdD+AbjZAsSa/m6MLr8zgeuveJRUruyynCuokgS1eYWNMxnPQDAAAAFQCWfrmt8XIoLbra/V6RU9avuRFKCwAAAIBUVnMO44wNpaEyG6eZfL9nH2X2zdnGHe+H3zArEwFfHPuyivk1gqR6+UQbdvnGf3+zppPIirMFrzTClRrBkoprYRcxNFD0iwlI3ZVZJumUFbMYav4TJ/aqB5byIAog8GGcj5pHYTacsRM+dBX+lhDkR187AK3iHr5PD8zUrTngmgAAAIB1N+PRuV4CZAqCOR0AS4ApPX7nIz2KyXsevj7A0FaLUNgFAZ3A6xqBrv3WWah4zEUhrczSPI9o3lE8XHElSHGXWkaEw4AoDzFth6oZAXJi+ldBHpvJFiMRE6ICM4NlaiTBJ8ATI+qDHl/8AabF09YMG6f+vraVwPf1WVuBxTjJ9w== dsa";

    fn at() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    #[test]
    fn a_key_is_parsed_canonically_with_its_fingerprint() {
        let parsed = parse_public_key(&format!("  {ED25519}\n")).unwrap();
        assert_eq!(parsed.openssh, ED25519);
        assert_eq!(parsed.algorithm, "ssh-ed25519");
        assert!(parsed.fingerprint.starts_with("SHA256:") && !parsed.fingerprint.ends_with('='), "{}", parsed.fingerprint);
        assert_eq!(parsed.fingerprint, "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU", "as ssh-keygen -l prints it");
        assert_eq!(parse_public_key(ED25519.trim_end_matches(" user@host")).unwrap().fingerprint, parsed.fingerprint, "the comment is not part of the key");
        for (key, fingerprint) in [RSA_2048, ECDSA] {
            let parsed = parse_public_key(key).unwrap();
            assert_eq!((parsed.openssh.as_str(), parsed.fingerprint.as_str()), (key, fingerprint));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let body = ED25519.split(' ').nth(1).unwrap();
        let cases = [
            String::new(),
            "ssh-ed25519".into(),
            format!("ssh-ed25519 {}", &body[..body.len() - 4]),
            format!("ssh-rsa {body}"),
            format!("{ED25519}\n{ED25519}"),
            format!("command=\"/bin/sh\" {ED25519}"),
            "-----BEGIN OPENSSH PRIVATE KEY-----".into(),
            format!("ssh-ed25519 {body}!"),
            "x".repeat(MAX_PUBLIC_KEY_LEN + 1),
            RSA_1024.into(),
            DSA.into(),
        ];
        for case in cases {
            assert!(matches!(parse_public_key(&case), Err(SshKeyError::BadKey(_))), "{case:?}");
        }
    }

    #[test]
    fn create_then_delete() {
        let (id, org) = (SshKeyId::new(), OrgId::new());
        let create = SshKeyCommand::Create { id, org, name: "laptop".into(), public_key: ED25519.into() };
        let ev = decide(None, &create).unwrap();
        assert_eq!(ev.type_name(), "ssh_key_created");
        let key = evolve(None, id, at(), &ev);
        assert_eq!(key.as_ref().map(|k| (k.org, k.name.as_str(), k.public_key.as_str())), Some((org, "laptop", ED25519)));
        assert_eq!(decide(key.as_ref(), &create), Err(SshKeyError::AlreadyExists));
        assert_eq!(decide(key.as_ref(), &SshKeyCommand::Delete { id, org: OrgId::new() }), Err(SshKeyError::NotFound), "another org's key");
        let del = decide(key.as_ref(), &SshKeyCommand::Delete { id, org }).unwrap();
        assert_eq!(evolve(key, id, at(), &del), None);
        assert_eq!(decide(None, &SshKeyCommand::Delete { id, org }), Err(SshKeyError::NotFound));
        assert_eq!((create.kind(), create.id(), create.org()), ("create_ssh_key", id, org));
    }

    proptest::proptest! {
        /// The documented pattern and length bounds accept exactly what the rule does.
        #[test]
        fn the_name_schema_is_the_rule(s in "[ a\t\n\x00\x1f\x7f\u{85}\u{9f}\u{a0}é\u{3000}]{0,4}|[ab ]{60,68}") {
            proptest::prop_assert_eq!(crate::schema_check::accepts(<KeyName as utoipa::PartialSchema>::schema(), &s), is_valid_name(&s), "{:?}", s);
        }
    }

    #[test]
    fn names_and_keys_are_checked_at_create() {
        let (id, org) = (SshKeyId::new(), OrgId::new());
        for name in ["", " ", "a\nb", &"n".repeat(MAX_NAME_LEN + 1)] {
            let cmd = SshKeyCommand::Create { id, org, name: name.into(), public_key: ED25519.into() };
            assert_eq!(decide(None, &cmd), Err(SshKeyError::BadName), "{name:?}");
        }
        assert!(is_valid_name("my laptop (work)"));
        let cmd = SshKeyCommand::Create { id, org, name: "k".into(), public_key: "ssh-ed25519 AAAA".into() };
        assert!(matches!(decide(None, &cmd), Err(SshKeyError::BadKey(_))));
    }
}
