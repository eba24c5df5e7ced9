//! What happens to guests when the worker stops. By default nothing: qemu
//! runs detached, so guests keep running and the next worker adopts them (as
//! libvirt does), and their VMs stay `running`. With `--stop-guests-on-exit`
//! the worker powers its guests off on SIGTERM (ACPI first, then hard) and
//! records a `stopped` event for each, so no VM shows `running` without a guest.

use crate::aggregate::VmAggregate;
use crate::driver::Driver;
use std::sync::Arc;
use vmplane_bus::{Bus, BusError};
use vmplane_domain::vm::VmEvent;
use vmplane_domain::{OrgId, VmId};

/// The reason recorded on each VM.
pub const REASON: &str = "stopped with its worker (--stop-guests-on-exit)";

/// Power off every guest this worker runs, all at once, and record it.
pub async fn stop_guests(bus: &Bus, driver: &Arc<dyn Driver>) {
    let guests = driver.consoles();
    tracing::info!(guests = guests.len(), "stopping guests before exiting");
    let stops = guests.into_iter().map(|g| async move {
        if let Err(e) = stop_one(bus, driver, g.org, g.vm).await {
            tracing::warn!(vm = %g.vm, error = %e, "could not stop the guest and record it");
        }
    });
    futures::future::join_all(stops).await;
}

async fn stop_one(bus: &Bus, driver: &Arc<dyn Driver>, org: OrgId, id: VmId) -> anyhow::Result<()> {
    let mut agg = VmAggregate::load(bus, org, id).await?;
    let Some(vm) = agg.state.clone() else { return Ok(()) };
    driver.power_off(&vm).await?;
    // A command of this VM may still be appending: reload and try again.
    for _ in 0..5 {
        let Some(vm) = agg.state.as_ref().filter(|v| v.booted) else { return Ok(()) };
        match agg.append(bus, vm.project, None, VmEvent::Stopped { reason: REASON.into() }).await {
            Err(BusError::Conflict { .. }) => agg = VmAggregate::load(bus, org, id).await?,
            other => return Ok(other?),
        }
    }
    anyhow::bail!("too many concurrent writers")
}
