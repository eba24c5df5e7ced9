//! Executes tenancy commands (orgs, projects, API keys). Any worker may take
//! any of them from the shared consumer; uniqueness of ids is enforced by
//! appending with "no events yet" as the expected subject sequence.

use crate::{WorkerConfig, consumer_config, pull_forever};
use async_nats::jetstream::{AckKind, Message};
use time::OffsetDateTime;
use vmplane_bus::{Bus, BusError, decode_command};
use vmplane_domain::event::{Envelope, Event};
use vmplane_domain::tenancy::{self, TenancyCommand, TenancyError};
use vmplane_domain::{Command, OrgId, subjects};

/// Consume tenancy commands forever.
pub async fn consume(bus: Bus, cfg: WorkerConfig) -> anyhow::Result<()> {
    let consumer_cfg = consumer_config("tenancy".into(), subjects::TENANCY_COMMANDS.into(), &cfg);
    let handler_bus = bus.clone();
    pull_forever(&bus, consumer_cfg, move |msg| {
        let bus = handler_bus.clone();
        tokio::spawn(async move {
            let ack = match handle(&bus, &msg).await {
                Ok(()) => AckKind::Ack,
                Err(e) if e.is_transient() => AckKind::Nak(Some(std::time::Duration::from_secs(1))),
                Err(e) => {
                    tracing::error!(error = %e, "tenancy command failed");
                    AckKind::Term
                }
            };
            if let Err(e) = msg.ack_with(ack).await {
                tracing::warn!(error = %e, "ack failed");
            }
        });
    })
    .await
}

async fn handle(bus: &Bus, msg: &Message) -> Result<(), BusError> {
    let env = decode_command(&msg.payload)?;
    let Command::Tenancy { command } = env.command else {
        return Err(BusError::Other(format!("{}: not a tenancy command", env.op)));
    };
    let (org, id) = (command.org(), command.target());
    let org_exists = org == OrgId::DEFAULT || !bus.load(&subjects::tenancy_events(org, &org.to_string())).await?.is_empty();
    let subject = subjects::tenancy_events(org, &id);
    // Creations append to a new subject (expected 0); a revocation appends
    // after the key's own history, and only to a key that is active.
    let (exists, expected) = match &command {
        TenancyCommand::RevokeApiKey { .. } => {
            let history = bus.load(&subject).await?;
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
            tracing::warn!(op = %env.op, error = %e, "tenancy command refused");
            return Ok(());
        }
    };
    let out = Envelope::new(org, None, id, Some(env.op), Event::Tenancy(event), OffsetDateTime::now_utc());
    match bus.append(&subject, &out, expected).await {
        Ok(_) => Ok(()),
        // Already created: a redelivery of this same command, or a duplicate id.
        Err(BusError::Conflict { .. }) => {
            tracing::info!(op = %env.op, error = %TenancyError::AlreadyExists, "tenancy command already applied");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
