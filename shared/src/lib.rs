//! vmplane's domain: pure types and functions, no I/O.
//!
//! Everything that changes state is a command decided into events
//! ([`vm::decide`], [`tenancy::decide`], [`ssh_key::decide`]) and folded back into state
//! ([`vm::evolve`]). The services crates do the I/O around these.

/// A unit type whose OpenAPI schema is a string with the given builder
/// calls (`pattern(..)`, `max_length(..)`, `format(..)`, `description(..)`):
/// how a rule that requests are checked against states itself in the
/// documents, next to the rule.
macro_rules! text_schema {
    ($(#[$attr:meta])* $name:ident { $($method:ident($($arg:expr),*)),* $(,)? }) => {
        $(#[$attr])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    $(.$method($($arg),*))*
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

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
pub mod snapshot;
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
pub use ids::{ApiKeyId, DeliveryId, EventId, HostId, ImageId, OpId, OrgId, ProjectId, SnapshotId, SshKeyId, TemplateId, VmId, VolumeId, WebhookId};
