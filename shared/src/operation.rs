//! Operations that end without an event of an aggregate of their own.
//!
//! Most operations end with their aggregate's own event (`operation_finished`
//! on a VM, `volume_operation_finished`, `image_import_failed`, a tenancy
//! event). A command the worker cannot carry out may have no such aggregate:
//! it cannot be decoded, its VM was never created, or the tenancy domain
//! refused it. Its operation ends with `operation_failed` instead, on the
//! operation's own subject, so that no accepted operation stays pending.

use crate::ids::{OpId, OrgId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Events of an operation itself (the envelope's `aggregate` is the operation id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OperationEvent {
    /// The worker gave up on the operation's command; nothing else will happen for it.
    OperationFailed {
        /// The resource the command addressed (`vm_…`, `org_…`, ...), as far as it is known.
        target: String,
        /// Machine-readable: `delivery_limit`, `undecodable_command`, or the domain's refusal code.
        code: String,
        message: String,
    },
}

impl OperationEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::OperationFailed { .. } => "operation_failed",
        }
    }
}

/// The subject of an operation's own events: under its org, or under
/// `system` when the org is unknown (a command that cannot be decoded).
pub fn subject(org: Option<OrgId>, op: OpId) -> String {
    match org {
        Some(org) => format!("vmplane.evt.{org}.operation.{op}"),
        None => format!("vmplane.evt.system.operation.{op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects;

    #[test]
    fn subjects_stay_inside_the_event_stream_and_the_org() {
        let (org, op) = (OrgId::new(), OpId::new());
        assert!(subject(Some(org), op).starts_with(subjects::org_events(org).trim_end_matches('>')));
        assert!(subject(None, op).starts_with(subjects::EVENTS_ALL.trim_end_matches('>')));
        assert!(!subject(None, op).contains(&org.to_string()));
    }

    #[test]
    fn json_shape() {
        let ev = OperationEvent::OperationFailed { target: "vm_x".into(), code: "delivery_limit".into(), message: "m".into() };
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            serde_json::json!({"type": "operation_failed", "target": "vm_x", "code": "delivery_limit", "message": "m"})
        );
    }
}
