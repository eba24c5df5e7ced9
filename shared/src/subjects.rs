//! The NATS subject scheme. Outside event subscribers bind to these names, so
//! they are a public contract (documented in `schemas/subjects.md`).
//!
//! ```text
//! vmplane.evt.<org_id>.vm.<vm_id>          VM events
//! vmplane.evt.<org_id>.volume.<vol_id>     volume events
//! vmplane.evt.<org_id>.tenancy.<id>        org / project / API key events
//! vmplane.evt.<org_id>.ssh_key.<key_id>    SSH key events
//! vmplane.evt.<org_id>.webhook.<wh_id>    webhook endpoint events
//! vmplane.evt.<org_id>.webhook.<wh_id>.deliveries   its delivery attempts
//! vmplane.evt.<org_id>.template.<tpl_id>   template events
//! vmplane.evt.system.host.<host_id>        host events
//! vmplane.log.<org_id>.vm.<vm_id>          VM serial console lines
//! vmplane.cmd.host.<host_id>.<id>          VM and volume commands, to the worker of that host
//! vmplane.term.open.<host_id>              core NATS request: open a serial terminal session
//! vmplane.term.<session>.in / .out         core NATS: terminal bytes to / from the guest
//! vmplane.cmd.tenancy.<org_id>             tenancy, SSH key, template and webhook commands, to any worker
//! ```

use crate::ids::{HostId, OrgId, SshKeyId, TemplateId, VmId, VolumeId, WebhookId};

/// The event stream's name.
pub const EVENT_STREAM: &str = "VMPLANE_EVENTS";
/// Every event subject.
pub const EVENTS_ALL: &str = "vmplane.evt.>";
/// The command stream's name.
pub const COMMAND_STREAM: &str = "VMPLANE_COMMANDS";
/// Every command subject.
pub const COMMANDS_ALL: &str = "vmplane.cmd.>";
/// Tenancy commands, any org.
pub const TENANCY_COMMANDS: &str = "vmplane.cmd.tenancy.*";
/// The console log stream's name.
pub const LOG_STREAM: &str = "VMPLANE_LOGS";
/// Every console log subject.
pub const LOGS_ALL: &str = "vmplane.log.>";
/// Terminal open requests to any host.
pub const TERMINAL_OPEN_ALL: &str = "vmplane.term.open.*";
/// Key-value bucket holding each host's last heartbeat.
pub const HEARTBEAT_BUCKET: &str = "vmplane_heartbeats";
/// Key-value bucket holding idempotency records (24 h).
pub const IDEMPOTENCY_BUCKET: &str = "vmplane_idempotency";
/// Key-value bucket holding each host's placement ledger: what gateways
/// accepted for it that its events may not show yet.
pub const PLACEMENT_BUCKET: &str = "vmplane_placement";
/// Object store carrying a moving VM's root disk from the host it leaves to
/// the one it moves to; an object (named by the VM id) lives until imported.
pub const MOVES_BUCKET: &str = "vmplane_moves";
/// Key-value bucket of the deliverer's state: the queues of deliveries
/// waiting behind a failing one, each endpoint's failing-since time, and the
/// lease of the active deliverer.
pub const WEBHOOK_QUEUE_BUCKET: &str = "vmplane_webhook_queue";
/// Key-value bucket of webhook signing secrets, one entry per endpoint
/// (`<webhook id>`): written by the gateway, read by the roles that sign
/// deliveries; never by subscribers or workers.
pub const WEBHOOK_SECRET_BUCKET: &str = "vmplane_webhook_secrets";

/// Events of one VM: the optimistic-concurrency unit.
pub fn vm_events(org: OrgId, vm: VmId) -> String {
    format!("vmplane.evt.{org}.vm.{vm}")
}

/// Serial console lines of one VM.
pub fn vm_logs(org: OrgId, vm: VmId) -> String {
    format!("vmplane.log.{org}.vm.{vm}")
}

/// A command for the host itself (image imports).
pub fn host_command(host: HostId) -> String {
    format!("vmplane.cmd.host.{host}.{host}")
}

/// Requests to open a terminal on a VM of `host` (core NATS request/reply).
pub fn terminal_open(host: HostId) -> String {
    format!("vmplane.term.open.{host}")
}

/// Keystrokes for a terminal session.
pub fn terminal_input(session: &str) -> String {
    format!("vmplane.term.{session}.in")
}

/// The header of the message on a session's input subject that ends it
/// (its payload is empty, like a keepalive's): the client hung up.
pub const TERMINAL_CLOSE_HEADER: &str = "Vmplane-Terminal-Close";

/// The header of the message on a session's input subject that gives the
/// client's window size, `<cols>x<rows>` (its payload is empty): the guest's
/// console takes that size.
pub const TERMINAL_SIZE_HEADER: &str = "Vmplane-Terminal-Size";

/// A terminal window's size in character cells, as clients send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u16,
    pub rows: u16,
}

impl WindowSize {
    /// The largest side accepted: bigger than any real screen, small enough
    /// that no guest program sizes a buffer from it unwisely.
    pub const MAX: u16 = 1000;

    /// A size whose sides are both within `1..=MAX`.
    pub fn new(cols: u16, rows: u16) -> Option<Self> {
        ((1..=Self::MAX).contains(&cols) && (1..=Self::MAX).contains(&rows)).then_some(Self { cols, rows })
    }
}

impl std::fmt::Display for WindowSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.cols, self.rows)
    }
}

impl std::str::FromStr for WindowSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (cols, rows) = s.split_once('x').ok_or_else(|| format!("not <cols>x<rows>: {s:?}"))?;
        let side = |v: &str| v.parse::<u16>().ok();
        side(cols).zip(side(rows)).and_then(|(c, r)| Self::new(c, r)).ok_or_else(|| format!("sides must be 1 to {}: {s:?}", Self::MAX))
    }
}

/// Console output of a terminal session.
pub fn terminal_output(session: &str) -> String {
    format!("vmplane.term.{session}.out")
}

/// Events of one volume: its optimistic-concurrency unit (claims included).
pub fn volume_events(org: OrgId, volume: VolumeId) -> String {
    format!("vmplane.evt.{org}.volume.{volume}")
}

/// One volume command.
pub fn volume_command(host: HostId, volume: VolumeId) -> String {
    format!("vmplane.cmd.host.{host}.{volume}")
}

/// Events of one tenancy aggregate (org, project or key).
pub fn tenancy_events(org: OrgId, id: &str) -> String {
    format!("vmplane.evt.{org}.tenancy.{id}")
}

/// Events of one SSH key: its optimistic-concurrency unit.
pub fn ssh_key_events(org: OrgId, key: SshKeyId) -> String {
    format!("vmplane.evt.{org}.ssh_key.{key}")
}

/// Events of one webhook endpoint: its optimistic-concurrency unit.
pub fn webhook_events(org: OrgId, webhook: WebhookId) -> String {
    format!("vmplane.evt.{org}.webhook.{webhook}")
}

/// Delivery attempts of one webhook endpoint: apart from the endpoint's own
/// subject, so that attempts never race the endpoint's commands.
pub fn webhook_deliveries(org: OrgId, webhook: WebhookId) -> String {
    format!("vmplane.evt.{org}.webhook.{webhook}.deliveries")
}

/// The webhook endpoints' own events, every org (not their deliveries).
pub const WEBHOOK_ENDPOINTS_ALL: &str = "vmplane.evt.*.webhook.*";

/// Events of one template: its optimistic-concurrency unit.
pub fn template_events(org: OrgId, template: TemplateId) -> String {
    format!("vmplane.evt.{org}.template.{template}")
}

/// Events of one host.
pub fn host_events(host: HostId) -> String {
    format!("vmplane.evt.system.host.{host}")
}

/// Every event an org may see.
pub fn org_events(org: OrgId) -> String {
    format!("vmplane.evt.{org}.>")
}

/// Commands for VMs placed on `host`.
pub fn host_commands(host: HostId) -> String {
    format!("vmplane.cmd.host.{host}.*")
}

/// One VM command.
pub fn vm_command(host: HostId, vm: VmId) -> String {
    format!("vmplane.cmd.host.{host}.{vm}")
}

/// One tenancy or template command (control-plane commands of an org, to any worker).
pub fn tenancy_command(org: OrgId) -> String {
    format!("vmplane.cmd.tenancy.{org}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes_round_trip_within_bounds() {
        let size: WindowSize = "132x43".parse().unwrap();
        assert_eq!(size, WindowSize { cols: 132, rows: 43 });
        assert_eq!(size.to_string(), "132x43");
        for bad in ["", "80", "80x", "x24", "0x24", "80x0", "1001x24", "80x1001", "-1x24", "80x24x1", "80 x24", "65536x1"] {
            assert!(bad.parse::<WindowSize>().is_err(), "{bad:?}");
        }
        assert_eq!(WindowSize::new(WindowSize::MAX, 1), Some(WindowSize { cols: 1000, rows: 1 }));
    }

    #[test]
    fn subjects_are_well_formed_tokens() {
        let (org, vm, host) = (OrgId::new(), VmId::new(), HostId::new());
        let key = SshKeyId::new();
        for s in [
            vm_events(org, vm),
            tenancy_events(org, &org.to_string()),
            host_events(host),
            vm_command(host, vm),
            tenancy_command(org),
            template_events(org, TemplateId::new()),
            ssh_key_events(org, key),
        ] {
            assert!(s.split('.').all(|t| !t.is_empty() && !t.contains(['*', '>', ' '])), "{s}");
        }
        assert!(vm_events(org, vm).starts_with(org_events(org).trim_end_matches('>')));
        assert!(ssh_key_events(org, key).starts_with(org_events(org).trim_end_matches('>')));
        assert!(vm_command(host, vm).starts_with(host_commands(host).trim_end_matches('*')));
    }
}
