//! The command envelope: what the gateway appends to the command stream.

use crate::host::{CordonCommand, HostCommand};
use crate::ids::{HostId, OpId, OrgId, ProjectId, TemplateId, VmId, VolumeId};
use crate::ssh_key::SshKeyCommand;
use crate::template::TemplateCommand;
use crate::tenancy::TenancyCommand;
use crate::vm::VmCommand;
use crate::volume::VolumeCommand;
use crate::webhook::WebhookCommand;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An accepted request, addressed to the worker that must carry it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// The operation id clients poll; also the JetStream message id, so a
    /// retried publish is deduplicated by the server.
    pub op: OpId,
    pub org: OrgId,
    pub project: ProjectId,
    /// Who asked: `admin` or an `key_…` id. Kept for the audit trail.
    pub actor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    pub command: Command,
}

/// Commands, grouped by the consumer that executes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Command {
    /// Executed by the worker of the VM's host.
    Vm { vm: VmId, command: VmCommand },
    /// Executed by the worker of the volume's host.
    Volume { volume: VolumeId, command: VolumeCommand },
    /// Executed by the worker of that host.
    Host { host: HostId, command: HostCommand },
    /// Executed by any worker.
    Tenancy { command: TenancyCommand },
    /// Executed by any worker (with the tenancy commands): control-plane data, no host step.
    Template { template: TemplateId, command: TemplateCommand },
    /// Executed by any worker, from the same consumer as tenancy commands.
    SshKey { command: SshKeyCommand },
    /// Executed by any worker, from the same consumer as tenancy commands.
    Webhook { command: WebhookCommand },
    /// Executed by any worker, from the same consumer as tenancy commands
    /// (a host that is offline can be cordoned too).
    Cordon { host: HostId, command: CordonCommand },
}
