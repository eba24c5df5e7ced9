//! Orgs, projects and API keys: who may see and do what.
//!
//! The `default` org and project always exist and are never created by an
//! event; everything else is folded from events like any other aggregate.

use crate::ids::{ApiKeyId, OrgId, ProjectId};
use crate::placement::Strategy;
use crate::spec::is_dns_label;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Commands on tenancy aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TenancyCommand {
    CreateOrg {
        id: OrgId,
        name: String,
        /// How the org's VMs and volumes are placed when a request does not say.
        #[serde(default)]
        placement_strategy: Strategy,
    },
    CreateProject {
        id: ProjectId,
        org: OrgId,
        name: String,
    },
    /// `secret_sha256` is the hex SHA-256 of the secret; the secret itself never leaves the gateway's response.
    CreateApiKey {
        id: ApiKeyId,
        org: OrgId,
        name: String,
        secret_sha256: String,
    },
    /// Revoke an API key: every gateway refuses it once the event is projected.
    RevokeApiKey {
        id: ApiKeyId,
        org: OrgId,
    },
    /// Change how the org's VMs and volumes are placed when a request does not say.
    SetPlacementStrategy {
        org: OrgId,
        placement_strategy: Strategy,
    },
}

impl TenancyCommand {
    /// The org the command acts on, which its event names.
    pub fn org(&self) -> OrgId {
        match self {
            Self::CreateOrg { id, .. } => *id,
            Self::CreateProject { org, .. } | Self::CreateApiKey { org, .. } | Self::RevokeApiKey { org, .. } | Self::SetPlacementStrategy { org, .. } => *org,
        }
    }

    /// The id of the aggregate the command acts on, whose subject its event goes to.
    pub fn target(&self) -> String {
        match self {
            Self::CreateOrg { id, .. } | Self::SetPlacementStrategy { org: id, .. } => id.to_string(),
            Self::CreateProject { id, .. } => id.to_string(),
            Self::CreateApiKey { id, .. } | Self::RevokeApiKey { id, .. } => id.to_string(),
        }
    }

    /// The operation kind shown in operations.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CreateOrg { .. } => "create_org",
            Self::CreateProject { .. } => "create_project",
            Self::CreateApiKey { .. } => "create_api_key",
            Self::RevokeApiKey { .. } => "revoke_api_key",
            Self::SetPlacementStrategy { .. } => "update_org",
        }
    }
}

/// Events of tenancy aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TenancyEvent {
    OrgCreated {
        id: OrgId,
        name: String,
        #[serde(default)]
        placement_strategy: Strategy,
    },
    ProjectCreated {
        id: ProjectId,
        org: OrgId,
        name: String,
    },
    ApiKeyCreated {
        id: ApiKeyId,
        org: OrgId,
        name: String,
        secret_sha256: String,
    },
    ApiKeyRevoked {
        id: ApiKeyId,
        org: OrgId,
    },
    OrgPlacementStrategySet {
        id: OrgId,
        placement_strategy: Strategy,
    },
}

impl TenancyEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::OrgCreated { .. } => "org_created",
            Self::ProjectCreated { .. } => "project_created",
            Self::ApiKeyCreated { .. } => "api_key_created",
            Self::ApiKeyRevoked { .. } => "api_key_revoked",
            Self::OrgPlacementStrategySet { .. } => "org_placement_strategy_set",
        }
    }
}

/// An org as the read side keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    /// How its VMs and volumes are placed when a request does not say.
    #[serde(default)]
    pub placement_strategy: Strategy,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A project as the read side keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: ProjectId,
    pub org: OrgId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An API key as the read side keeps it: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org: OrgId,
    pub name: String,
    pub secret_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The `default` org, synthesised rather than stored.
pub fn default_org() -> Org {
    Org { id: OrgId::DEFAULT, name: "default".into(), placement_strategy: Strategy::default(), created_at: OffsetDateTime::UNIX_EPOCH }
}

/// The `default` project of `org`, synthesised rather than stored.
pub fn default_project(org: OrgId) -> Project {
    Project { id: ProjectId::DEFAULT, org, name: "default".into(), created_at: OffsetDateTime::UNIX_EPOCH }
}

/// The longest API key name, in characters.
pub const MAX_KEY_NAME: usize = 63;

text_schema! {
    /// The OpenAPI schema of an API key's name: 1 to [`MAX_KEY_NAME`] characters.
    ApiKeyName {
        min_length(Some(1)),
        max_length(Some(MAX_KEY_NAME)),
        description(Some("1-63 characters.")),
        examples([serde_json::json!("ci")]),
    }
}

/// Why a tenancy command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyError {
    #[error("name must be a DNS label of at most 63 characters")]
    BadName,
    #[error("an API key's name must be 1-{MAX_KEY_NAME} characters")]
    BadKeyName,
    #[error("org not found")]
    OrgNotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("api key not found")]
    KeyNotFound,
}

impl TenancyError {
    /// Machine-readable code, shared by HTTP errors and failed operations.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadName | Self::BadKeyName => "validation_failed",
            Self::OrgNotFound | Self::KeyNotFound => "not_found",
            Self::AlreadyExists => "conflict",
        }
    }
}

/// Decide a tenancy command. `exists` tells whether the target is already
/// there (for a revocation: whether the key exists and is not revoked; for a
/// change of the org: whether the org exists) and
/// `org_exists` whether the owning org exists (the caller looks both up in
/// its state; this function stays pure).
pub fn decide(cmd: &TenancyCommand, exists: bool, org_exists: bool) -> Result<TenancyEvent, TenancyError> {
    match cmd {
        TenancyCommand::RevokeApiKey { id, org } if exists => Ok(TenancyEvent::ApiKeyRevoked { id: *id, org: *org }),
        TenancyCommand::RevokeApiKey { .. } => Err(TenancyError::KeyNotFound),
        TenancyCommand::SetPlacementStrategy { org, placement_strategy } if exists => {
            Ok(TenancyEvent::OrgPlacementStrategySet { id: *org, placement_strategy: *placement_strategy })
        }
        TenancyCommand::SetPlacementStrategy { .. } => Err(TenancyError::OrgNotFound),
        _ if exists => Err(TenancyError::AlreadyExists),
        TenancyCommand::CreateOrg { id, name, placement_strategy } => {
            if !is_dns_label(name) {
                return Err(TenancyError::BadName);
            }
            Ok(TenancyEvent::OrgCreated { id: *id, name: name.clone(), placement_strategy: *placement_strategy })
        }
        TenancyCommand::CreateProject { id, org, name } => {
            if !is_dns_label(name) {
                return Err(TenancyError::BadName);
            }
            if !org_exists {
                return Err(TenancyError::OrgNotFound);
            }
            Ok(TenancyEvent::ProjectCreated { id: *id, org: *org, name: name.clone() })
        }
        TenancyCommand::CreateApiKey { id, org, name, secret_sha256 } => {
            if !(1..=MAX_KEY_NAME).contains(&name.chars().count()) {
                return Err(TenancyError::BadKeyName);
            }
            if !org_exists {
                return Err(TenancyError::OrgNotFound);
            }
            Ok(TenancyEvent::ApiKeyCreated { id: *id, org: *org, name: name.clone(), secret_sha256: secret_sha256.clone() })
        }
    }
}

/// Whether a key's history (the events of its subject, in order) leaves it usable.
pub fn key_is_active<'a>(history: impl IntoIterator<Item = &'a TenancyEvent>) -> bool {
    history.into_iter().fold(false, |active, ev| match ev {
        TenancyEvent::ApiKeyCreated { .. } => true,
        TenancyEvent::ApiKeyRevoked { .. } => false,
        _ => active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_org() {
        let id = OrgId::new();
        let create = |name: &str| TenancyCommand::CreateOrg { id, name: name.into(), placement_strategy: Strategy::Binpack };
        let ev = decide(&create("acme"), false, true).unwrap();
        assert_eq!(ev, TenancyEvent::OrgCreated { id, name: "acme".into(), placement_strategy: Strategy::Binpack });
        assert_eq!(decide(&create("Acme!"), false, true), Err(TenancyError::BadName));
        assert_eq!(decide(&create("acme"), true, true), Err(TenancyError::AlreadyExists));
    }

    #[test]
    fn project_and_key_need_their_org() {
        let org = OrgId::new();
        let p = TenancyCommand::CreateProject { id: ProjectId::new(), org, name: "web".into() };
        assert_eq!(decide(&p, false, false), Err(TenancyError::OrgNotFound));
        assert!(matches!(decide(&p, false, true), Ok(TenancyEvent::ProjectCreated { .. })));
        let k = TenancyCommand::CreateApiKey { id: ApiKeyId::new(), org, name: "ci".into(), secret_sha256: "ab".into() };
        assert_eq!(decide(&k, false, false), Err(TenancyError::OrgNotFound));
        assert_eq!(decide(&k, false, true).unwrap().type_name(), "api_key_created");
        for name in [String::new(), "é".repeat(MAX_KEY_NAME + 1)] {
            let k = TenancyCommand::CreateApiKey { id: ApiKeyId::new(), org, name, secret_sha256: "ab".into() };
            assert_eq!(decide(&k, false, true), Err(TenancyError::BadKeyName));
        }
        let k = TenancyCommand::CreateApiKey { id: ApiKeyId::new(), org, name: "é".repeat(MAX_KEY_NAME), secret_sha256: "ab".into() };
        assert!(decide(&k, false, true).is_ok(), "characters, not bytes");
    }

    #[test]
    fn only_an_active_key_is_revoked() {
        let (id, org) = (ApiKeyId::new(), OrgId::new());
        let revoke = TenancyCommand::RevokeApiKey { id, org };
        assert_eq!(decide(&revoke, true, true), Ok(TenancyEvent::ApiKeyRevoked { id, org }));
        assert_eq!(decide(&revoke, false, true), Err(TenancyError::KeyNotFound));
        let created = TenancyEvent::ApiKeyCreated { id, org, name: "k".into(), secret_sha256: "ab".into() };
        let revoked = TenancyEvent::ApiKeyRevoked { id, org };
        assert!(!key_is_active([]));
        assert!(key_is_active([&created]));
        assert!(!key_is_active([&created, &revoked]));
        assert_eq!((revoke.kind(), revoke.target(), revoke.org()), ("revoke_api_key", id.to_string(), org));
    }

    #[test]
    fn an_existing_org_changes_its_placement_strategy() {
        let org = OrgId::new();
        let set = TenancyCommand::SetPlacementStrategy { org, placement_strategy: Strategy::Binpack };
        assert_eq!(decide(&set, true, true), Ok(TenancyEvent::OrgPlacementStrategySet { id: org, placement_strategy: Strategy::Binpack }));
        assert_eq!(decide(&set, false, false), Err(TenancyError::OrgNotFound));
        assert_eq!((set.kind(), set.target(), set.org()), ("update_org", org.to_string(), org));
    }
}
