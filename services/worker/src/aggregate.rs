//! A VM's state as the worker holds it while executing its commands: the
//! folded state plus the subject sequence it was folded up to, which every
//! append names as its expected last sequence.

use time::OffsetDateTime;
use vmplane_bus::{Bus, BusError};
use vmplane_domain::event::{Envelope, Event};
use vmplane_domain::vm::{Vm, VmEvent, evolve};
use vmplane_domain::{OpId, OrgId, ProjectId, VmId, subjects};

/// One VM's event-sourced state and its position in the stream.
pub struct VmAggregate {
    pub id: VmId,
    pub org: OrgId,
    pub subject: String,
    pub state: Option<Vm>,
    /// Stream sequence of the last event on this VM's subject (0 = none).
    pub seq: u64,
}

impl VmAggregate {
    /// Fold the VM's events from the stream.
    pub async fn load(bus: &Bus, org: OrgId, id: VmId) -> Result<Self, BusError> {
        let subject = subjects::vm_events(org, id);
        let mut agg = Self { id, org, subject, state: None, seq: 0 };
        for (seq, env) in bus.load(&agg.subject).await? {
            if let Event::Vm(ev) = &env.event {
                agg.state = evolve(agg.state.take(), id, env.operation, env.time, ev);
            }
            agg.seq = seq;
        }
        Ok(agg)
    }

    /// Append one event, guarded by the expected subject sequence, and fold it in.
    /// On [`BusError::Conflict`] the caller must reload: another writer got there first.
    pub async fn append(&mut self, bus: &Bus, project: ProjectId, op: Option<OpId>, event: VmEvent) -> Result<(), BusError> {
        let now = OffsetDateTime::now_utc();
        let env = Envelope::new(self.org, Some(project), self.id.to_string(), op, Event::Vm(event), now);
        self.seq = bus.append(&self.subject, &env, self.seq).await?;
        let Event::Vm(ev) = &env.event else { unreachable!("built as a vm event above") };
        self.state = evolve(self.state.take(), self.id, op, now, ev);
        metrics::counter!("vmplane_worker_events_appended_total", "type" => ev.type_name()).increment(1);
        Ok(())
    }
}
