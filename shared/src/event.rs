//! The event envelope: what every message in the event stream carries.
//!
//! Events are encoded with MessagePack (rmp-serde, named fields so that
//! fields can be added with defaults) inside a versioned envelope. Readers
//! reject versions newer than they know rather than misreading them.

use crate::host::HostEvent;
use crate::ids::{EventId, OpId, OrgId, ProjectId};
use crate::operation::OperationEvent;
use crate::ssh_key::SshKeyEvent;
use crate::template::TemplateEvent;
use crate::tenancy::TenancyEvent;
use crate::vm::VmEvent;
use crate::volume::VolumeEvent;
use crate::webhook::WebhookEvent;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The envelope version this build writes and the newest it reads.
pub const ENVELOPE_VERSION: u16 = 1;

/// One event with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Envelope {
    /// Envelope version.
    pub v: u16,
    pub id: EventId,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    /// The org that owns the aggregate (`org_000…` for system events such as hosts).
    pub org: OrgId,
    pub project: Option<ProjectId>,
    /// The id of the aggregate the event belongs to (`vm_…`, `host_…`, `org_…`, ...).
    pub aggregate: String,
    /// The operation (accepted command) that caused the event, if any.
    pub operation: Option<OpId>,
    pub event: Event,
}

/// Every event type, grouped by aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "aggregate_type", content = "data", rename_all = "snake_case")]
pub enum Event {
    Vm(VmEvent),
    Tenancy(TenancyEvent),
    Host(HostEvent),
    Volume(VolumeEvent),
    /// Control-plane data: default values for creating VMs.
    Template(TemplateEvent),
    /// An operation that ended without an event of its aggregate (see [`crate::operation`]).
    Operation(OperationEvent),
    SshKey(SshKeyEvent),
    /// A webhook endpoint of an org (its signing secrets are not in events).
    Webhook(WebhookEvent),
}

impl Event {
    /// The aggregate type, as the JSON `aggregate_type` tag spells it (`vm`, `ssh_key`, ...).
    pub fn aggregate_type(&self) -> &'static str {
        match self {
            Self::Vm(_) => "vm",
            Self::Tenancy(_) => "tenancy",
            Self::Host(_) => "host",
            Self::Volume(_) => "volume",
            Self::Template(_) => "template",
            Self::Operation(_) => "operation",
            Self::SshKey(_) => "ssh_key",
            Self::Webhook(_) => "webhook",
        }
    }

    /// The snake_case type name, unique across aggregates.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Vm(e) => e.type_name(),
            Self::Tenancy(e) => e.type_name(),
            Self::Host(e) => e.type_name(),
            Self::Volume(e) => e.type_name(),
            Self::Template(e) => e.type_name(),
            Self::Operation(e) => e.type_name(),
            Self::SshKey(e) => e.type_name(),
            Self::Webhook(e) => e.type_name(),
        }
    }
}

/// One event as JSON: the SSE feed's `data:`, a VM's history entries and
/// the body of a webhook delivery (one document for all three).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Stream sequence: the SSE id, usable as `Last-Event-ID`.
    pub seq: u64,
    pub id: EventId,
    /// The event type, e.g. `created`, `ready`, `operation_finished`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    pub org_id: OrgId,
    pub project_id: Option<ProjectId>,
    pub aggregate_id: String,
    pub operation_id: Option<OpId>,
    /// The event itself: `{"aggregate_type": ..., "data": {"type": ..., ...}}`.
    pub event: Event,
}

impl EventView {
    /// The view of an envelope read at `seq`.
    pub fn new(seq: u64, env: Envelope) -> Self {
        Self {
            seq,
            id: env.id,
            kind: env.event.type_name().to_owned(),
            time: env.time,
            org_id: env.org,
            project_id: env.project,
            aggregate_id: env.aggregate,
            operation_id: env.operation,
            event: env.event,
        }
    }
}

/// Why bytes could not be read as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("undecodable message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("unencodable message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("envelope version {0} is newer than this build understands ({ENVELOPE_VERSION})")]
    FutureVersion(u16),
}

/// Encode any message (envelopes and commands) for the wire.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(msg)?)
}

/// Decode any message from the wire.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

impl Envelope {
    /// A new envelope stamped now.
    pub fn new(org: OrgId, project: Option<ProjectId>, aggregate: String, operation: Option<OpId>, event: Event, time: OffsetDateTime) -> Self {
        Self { v: ENVELOPE_VERSION, id: EventId::new(), time, org, project, aggregate, operation, event }
    }

    /// Decode and check the version.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let env: Envelope = decode(bytes)?;
        if env.v > ENVELOPE_VERSION {
            return Err(CodecError::FutureVersion(env.v));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{HostId, VmId};
    use crate::spec::VmSpec;

    /// The subscriber contract (`schemas/subscribers.md`): a message read
    /// with any MessagePack decoder is the JSON document of its envelope.
    #[test]
    fn the_messagepack_of_an_envelope_is_its_json_document() {
        let vm = VmId::new();
        let spec = VmSpec::named("a");
        let ev = Event::Vm(VmEvent::Created { org: OrgId::new(), project: ProjectId::DEFAULT, spec: Box::new(spec), host: HostId::new() });
        let env = Envelope::new(OrgId::new(), Some(ProjectId::DEFAULT), vm.to_string(), None, ev, OffsetDateTime::now_utc());
        let generic: serde_json::Value = rmp_serde::from_slice(&encode(&env).unwrap()).unwrap();
        assert_eq!(generic, serde_json::to_value(&env).unwrap());
        assert_eq!(generic["event"]["aggregate_type"], "vm");
        assert_eq!(generic["event"]["data"]["type"], "created");
    }

    #[test]
    fn aggregate_type_is_the_json_tag() {
        let ev = Event::Vm(VmEvent::Failed { message: "m".into() });
        assert_eq!(serde_json::to_value(&ev).unwrap()["aggregate_type"], ev.aggregate_type());
    }

    #[test]
    fn envelope_roundtrip() {
        let vm = VmId::new();
        let ev = Event::Vm(VmEvent::Created { org: OrgId::new(), project: ProjectId::DEFAULT, spec: Box::new(VmSpec::named("a")), host: HostId::new() });
        let env = Envelope::new(OrgId::new(), Some(ProjectId::DEFAULT), vm.to_string(), Some(OpId::new()), ev, OffsetDateTime::now_utc());
        let bytes = encode(&env).unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn rejects_future_versions_and_garbage() {
        let mut env = Envelope::new(OrgId::DEFAULT, None, "x".into(), None, Event::Vm(VmEvent::Ready), OffsetDateTime::UNIX_EPOCH);
        env.v = ENVELOPE_VERSION + 1;
        assert!(matches!(Envelope::decode(&encode(&env).unwrap()), Err(CodecError::FutureVersion(_))));
        assert!(Envelope::decode(b"\xc1garbage").is_err());
    }

    #[test]
    fn json_shape_is_tagged() {
        let v = serde_json::to_value(Event::Vm(VmEvent::Failed { message: "m".into() })).unwrap();
        assert_eq!(v, serde_json::json!({"aggregate_type": "vm", "data": {"type": "failed", "message": "m"}}));
    }
}
