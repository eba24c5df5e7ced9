//! Executes control-plane commands, data that no host acts on: tenancy
//! (orgs, projects, API keys), stored SSH keys, webhook endpoints and templates. Any worker may
//! take any of them from the shared consumer; uniqueness of ids is enforced
//! by appending with "no events yet" as the expected subject sequence (a
//! template's or key's later events name the sequence its history ends at).
//! A command the domain refuses, cannot be read, or went past its delivery
//! limit ends its operation as failed (`operation_failed`).

use crate::aggregate::{HostAggregate, TemplateAggregate, record_operation_failed};
use crate::{KeepAlive, WorkerConfig, backoff_delay, consumer_config, deliveries, delivery_limit_message, give_up_undecodable, pull_forever};
use async_nats::jetstream::{AckKind, Message};
use time::OffsetDateTime;
use vmplane_bus::{Bus, BusError, decode_command};
use vmplane_domain::event::{Envelope, Event};
use vmplane_domain::host::CordonCommand;
use vmplane_domain::ssh_key::{self, SshKey, SshKeyCommand, SshKeyError};
use vmplane_domain::template::{self, TemplateCommand};
use vmplane_domain::tenancy::{self, TenancyCommand, TenancyError};
use vmplane_domain::webhook::{self, Webhook, WebhookCommand, WebhookError};
use vmplane_domain::{Command, CommandEnvelope, HostId, OrgId, ProjectId, TemplateId, subjects};

/// Consume tenancy commands forever.
pub async fn consume(bus: Bus, cfg: WorkerConfig) -> anyhow::Result<()> {
    let consumer_cfg = consumer_config("tenancy".into(), subjects::TENANCY_COMMANDS.into(), &cfg);
    let handler_bus = bus.clone();
    pull_forever(&bus, consumer_cfg, move |msg| {
        let (bus, cfg) = (handler_bus.clone(), cfg.clone());
        let alive = KeepAlive::start(&msg, cfg.ack_wait / 3);
        tokio::spawn(async move {
            let delivered = deliveries(&msg);
            let ack = match handle(&bus, &msg, delivered, cfg.max_deliveries).await {
                Ok(()) => AckKind::Ack,
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, delivered, error = %e, "tenancy command not finished; it will be redelivered");
                    AckKind::Nak(Some(backoff_delay(delivered, cfg.ack_wait)))
                }
            };
            if let Err(e) = msg.ack_with(ack).await {
                tracing::warn!(error = %e, "ack failed");
            }
            drop(alive);
        });
    })
    .await
}

async fn handle(bus: &Bus, msg: &Message, delivered: i64, max_deliveries: i64) -> Result<(), BusError> {
    let env = match decode_command(&msg.payload) {
        Ok(env) => env,
        Err(e) => {
            let org = msg.subject.rsplit('.').next().and_then(|o| o.parse::<OrgId>().ok());
            return give_up_undecodable(bus, msg, org, &e).await;
        }
    };
    let command = match env.command {
        Command::Tenancy { command } => command,
        Command::SshKey { command } => return handle_ssh_key(bus, env.op, command, delivered, max_deliveries).await,
        Command::Webhook { command } => return handle_webhook(bus, env.op, command, delivered, max_deliveries).await,
        Command::Template { template, ref command } => return handle_template(bus, &env, template, command, delivered, max_deliveries).await,
        Command::Cordon { host, command } => return handle_cordon(bus, env.op, host, command, delivered, max_deliveries).await,
        _ => {
            let message = "a host's command was addressed to the tenancy consumer; no worker carries it out there";
            return record_operation_failed(bus, Some(env.org), env.op, &env.org.to_string(), "misrouted", message.into()).await;
        }
    };
    let (org, id) = (command.org(), command.target());
    let fail = async |code: &str, message: String| record_operation_failed(bus, Some(org), env.op, &id, code, message).await;
    if delivered > max_deliveries {
        tracing::warn!(op = %env.op, delivered, "tenancy command past its delivery limit; failing its operation");
        return fail("delivery_limit", delivery_limit_message(delivered)).await;
    }
    let org_exists = org == OrgId::DEFAULT || !bus.load(&subjects::tenancy_events(org, &org.to_string())).await?.is_empty();
    let subject = subjects::tenancy_events(org, &id);
    // Creations append to a new subject (expected 0); a revocation appends
    // after the key's own history, and only to a key that is active; a change
    // of an org after the org's history.
    let (exists, expected) = match &command {
        TenancyCommand::SetPlacementStrategy { .. } => {
            let history = bus.load(&subject).await?;
            if history.iter().any(|(_, e)| e.operation == Some(env.op)) {
                tracing::info!(op = %env.op, "org change already applied");
                return Ok(());
            }
            (org_exists, history.last().map_or(0, |(seq, _)| *seq))
        }
        TenancyCommand::RevokeApiKey { .. } => {
            let history = bus.load(&subject).await?;
            if history.iter().any(|(_, e)| e.operation == Some(env.op)) {
                tracing::info!(op = %env.op, "revocation already applied");
                return Ok(());
            }
            let active = tenancy::key_is_active(history.iter().filter_map(|(_, e)| match &e.event {
                Event::Tenancy(t) => Some(t),
                _ => None,
            }));
            (active, history.last().map_or(0, |(seq, _)| *seq))
        }
        _ => (false, 0),
    };
    let event = match tenancy::decide(&command, exists, org_exists) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(op = %env.op, error = %e, "tenancy command refused; failing its operation");
            return fail(e.code(), e.to_string()).await;
        }
    };
    let out = Envelope::new(org, None, id.clone(), Some(env.op), Event::Tenancy(event), OffsetDateTime::now_utc());
    match bus.append(&subject, &out, expected).await {
        Ok(_) => Ok(()),
        // Already created: by a redelivery of this same command, or (ids are
        // random, so hardly ever) by another command with the same id.
        // Another change of the org got there first: decide again on redelivery.
        Err(e @ BusError::Conflict { .. }) if matches!(command, TenancyCommand::SetPlacementStrategy { .. }) => Err(e),
        Err(BusError::Conflict { .. }) => {
            let first = bus.load(&subject).await?.into_iter().next().and_then(|(_, e)| e.operation);
            if first == Some(env.op) {
                tracing::info!(op = %env.op, "tenancy command already applied");
                Ok(())
            } else {
                fail(TenancyError::AlreadyExists.code(), TenancyError::AlreadyExists.to_string()).await
            }
        }
        Err(e) => Err(e),
    }
}

/// Create or delete a stored SSH key: decided against the key's own history,
/// appended after it (a creation to a new subject), so two commands on one
/// key cannot both apply.
async fn handle_ssh_key(bus: &Bus, op: vmplane_domain::OpId, command: SshKeyCommand, delivered: i64, max_deliveries: i64) -> Result<(), BusError> {
    let (org, id) = (command.org(), command.id());
    let target = id.to_string();
    let fail = async |code: &str, message: String| record_operation_failed(bus, Some(org), op, &target, code, message).await;
    if delivered > max_deliveries {
        tracing::warn!(%op, delivered, "ssh key command past its delivery limit; failing its operation");
        return fail("delivery_limit", delivery_limit_message(delivered)).await;
    }
    let subject = subjects::ssh_key_events(org, id);
    let history = bus.load(&subject).await?;
    if history.iter().any(|(_, e)| e.operation == Some(op)) {
        tracing::info!(%op, "ssh key command already applied");
        return Ok(());
    }
    let state = history.iter().fold(None::<SshKey>, |state, (_, e)| match &e.event {
        Event::SshKey(ev) => ssh_key::evolve(state, id, e.time, ev),
        _ => state,
    });
    // A key created and deleted stays gone: its id is never created again.
    let event = match (&command, history.is_empty()) {
        (SshKeyCommand::Create { .. }, false) => Err(SshKeyError::AlreadyExists),
        _ => ssh_key::decide(state.as_ref(), &command),
    };
    let event = match event {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(%op, error = %e, "ssh key command refused; failing its operation");
            return fail(e.code(), e.to_string()).await;
        }
    };
    let out = Envelope::new(org, None, target.clone(), Some(op), Event::SshKey(event), OffsetDateTime::now_utc());
    // Another command on the key got in first (a conflict): the redelivery decides again.
    bus.append(&subject, &out, history.last().map_or(0, |(seq, _)| *seq)).await.map(drop)
}

/// Create, change, rotate the secret of or delete a webhook endpoint, as
/// SSH keys are: decided against the endpoint's own history and appended
/// after it (a creation to a new subject), so two commands on one endpoint
/// cannot both apply. The secret itself is not in the command (see
/// `vmplane_domain::webhook`).
async fn handle_webhook(bus: &Bus, op: vmplane_domain::OpId, command: WebhookCommand, delivered: i64, max_deliveries: i64) -> Result<(), BusError> {
    let (org, id) = (command.org(), command.id());
    let target = id.to_string();
    let fail = async |code: &str, message: String| record_operation_failed(bus, Some(org), op, &target, code, message).await;
    if delivered > max_deliveries {
        tracing::warn!(%op, delivered, "webhook command past its delivery limit; failing its operation");
        return fail("delivery_limit", delivery_limit_message(delivered)).await;
    }
    let subject = subjects::webhook_events(org, id);
    let history = bus.load(&subject).await?;
    if history.iter().any(|(_, e)| e.operation == Some(op)) {
        tracing::info!(%op, "webhook command already applied");
        return Ok(());
    }
    let state = history.iter().fold(None::<Webhook>, |state, (_, e)| match &e.event {
        Event::Webhook(ev) => webhook::evolve(state, id, e.time, ev),
        _ => state,
    });
    // An endpoint created and deleted stays gone: its id is never created again.
    let event = match (&command, history.is_empty()) {
        (WebhookCommand::Create { .. }, false) => Err(WebhookError::AlreadyExists),
        _ => webhook::decide(state.as_ref(), &command),
    };
    let event = match event {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(%op, error = %e, "webhook command refused; failing its operation");
            return fail(e.code(), e.to_string()).await;
        }
    };
    let out = Envelope::new(org, None, target.clone(), Some(op), Event::Webhook(event), OffsetDateTime::now_utc());
    // Another command on the endpoint got in first (a conflict): the redelivery decides again.
    bus.append(&subject, &out, history.last().map_or(0, |(seq, _)| *seq)).await.map(drop)
}

/// Cordon or uncordon a host: appended after the host's last event (a
/// registration racing it makes the append fail, and the redelivery decides
/// again); a host that never registered is not found.
async fn handle_cordon(bus: &Bus, op: vmplane_domain::OpId, host: HostId, command: CordonCommand, delivered: i64, max_deliveries: i64) -> Result<(), BusError> {
    let fail = async |code: &str, message: String| record_operation_failed(bus, None, op, &host.to_string(), code, message).await;
    if delivered > max_deliveries {
        return fail("delivery_limit", delivery_limit_message(delivered)).await;
    }
    let mut agg = HostAggregate::load(bus, OrgId::DEFAULT, host).await?;
    if agg.state.is_none() {
        return fail("not_found", format!("host {host} is not registered")).await;
    }
    if bus.load(&agg.subject).await?.iter().any(|(_, e)| e.operation == Some(op)) {
        tracing::info!(%op, "cordon already applied");
        return Ok(());
    }
    agg.append(bus, ProjectId::DEFAULT, Some(op), command.event()).await
}

/// Carry out a template command: fold the template's history, decide, and
/// append after the last event it saw (a concurrent writer makes the append
/// fail, and the redelivery decides again). The template belongs to the
/// command's org and project.
async fn handle_template(
    bus: &Bus,
    env: &CommandEnvelope,
    id: TemplateId,
    command: &TemplateCommand,
    delivered: i64,
    max_deliveries: i64,
) -> Result<(), BusError> {
    let fail = async |code: &str, message: String| record_operation_failed(bus, Some(env.org), env.op, &id.to_string(), code, message).await;
    if delivered > max_deliveries {
        tracing::warn!(op = %env.op, delivered, "template command past its delivery limit; failing its operation");
        return fail("delivery_limit", delivery_limit_message(delivered)).await;
    }
    let mut agg = TemplateAggregate::load(bus, env.org, id).await?;
    if agg.state.as_ref().is_some_and(|t| t.last_op == Some(env.op)) {
        tracing::info!(op = %env.op, "template command already applied");
        return Ok(());
    }
    match template::decide(agg.state.as_ref(), env.org, env.project, command) {
        Ok(events) => {
            for event in events {
                agg.append(bus, env.project, Some(env.op), event).await?;
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(op = %env.op, error = %e, "template command refused; failing its operation");
            fail(e.code(), e.to_string()).await
        }
    }
}
