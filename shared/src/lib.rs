//! vmplane's domain: pure types and functions, no I/O.
//!
//! Everything that changes state is a command decided into events
//! ([`vm::decide`], [`tenancy::decide`], [`ssh_key::decide`]) and folded back into state
//! ([`vm::evolve`]). The services crates do the I/O around these.

pub mod catalog;
pub mod cidr;
pub mod cloud_init;
pub mod command;
pub mod delivery;
pub mod event;
pub mod event_filter;
pub mod host;
pub mod ids;
pub mod operation;
pub mod placement;
#[cfg(test)]
mod schema_check;
pub mod spec;
pub mod ssh_key;
pub mod subjects;
pub mod template;
pub mod tenancy;
pub mod vm;
pub mod volume;
pub mod webhook;

pub use command::{Command, CommandEnvelope};
pub use event::{Envelope, Event};
pub use ids::{ApiKeyId, DeliveryId, EventId, HostId, ImageId, OpId, OrgId, ProjectId, SshKeyId, TemplateId, VmId, VolumeId, WebhookId};
