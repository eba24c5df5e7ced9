//! An aggregate's state as the worker holds it while executing its commands:
//! the folded state plus the subject sequence it was folded up to, which
//! every append names as its expected last sequence.

use time::OffsetDateTime;
use vmplane_bus::{Bus, BusError};
use vmplane_domain::event::{Envelope, Event};
use vmplane_domain::host::{self, HostEvent, HostInfo};
use vmplane_domain::operation::{self, OperationEvent};
use vmplane_domain::template::{self, Template, TemplateEvent};
use vmplane_domain::vm::{self, Vm, VmEvent};
use vmplane_domain::volume::{self, Volume, VolumeEvent};
use vmplane_domain::{HostId, OpId, OrgId, ProjectId, TemplateId, VmId, VolumeId, subjects};

/// What the worker needs to know to fold and append one kind of aggregate.
pub trait Kind {
    type Id: Copy + std::fmt::Display;
    type State: Clone;
    type Event;
    fn subject(org: OrgId, id: Self::Id) -> String;
    fn wrap(ev: Self::Event) -> Event;
    fn unwrap(ev: &Event) -> Option<&Self::Event>;
    fn evolve(state: Option<Self::State>, id: Self::Id, op: Option<OpId>, at: OffsetDateTime, ev: &Self::Event) -> Option<Self::State>;
    fn type_name(ev: &Self::Event) -> &'static str;
}

/// VMs.
pub struct VmKind;

impl Kind for VmKind {
    type Id = VmId;
    type State = Vm;
    type Event = VmEvent;
    fn subject(org: OrgId, id: VmId) -> String {
        subjects::vm_events(org, id)
    }
    fn wrap(ev: VmEvent) -> Event {
        Event::Vm(ev)
    }
    fn unwrap(ev: &Event) -> Option<&VmEvent> {
        if let Event::Vm(e) = ev { Some(e) } else { None }
    }
    fn evolve(state: Option<Vm>, id: VmId, op: Option<OpId>, at: OffsetDateTime, ev: &VmEvent) -> Option<Vm> {
        vm::evolve(state, id, op, at, ev)
    }
    fn type_name(ev: &VmEvent) -> &'static str {
        ev.type_name()
    }
}

/// Volumes.
pub struct VolumeKind;

impl Kind for VolumeKind {
    type Id = VolumeId;
    type State = Volume;
    type Event = VolumeEvent;
    fn subject(org: OrgId, id: VolumeId) -> String {
        subjects::volume_events(org, id)
    }
    fn wrap(ev: VolumeEvent) -> Event {
        Event::Volume(ev)
    }
    fn unwrap(ev: &Event) -> Option<&VolumeEvent> {
        if let Event::Volume(e) = ev { Some(e) } else { None }
    }
    fn evolve(state: Option<Volume>, id: VolumeId, op: Option<OpId>, at: OffsetDateTime, ev: &VolumeEvent) -> Option<Volume> {
        volume::evolve(state, id, op, at, ev)
    }
    fn type_name(ev: &VolumeEvent) -> &'static str {
        ev.type_name()
    }
}

/// Templates.
pub struct TemplateKind;

impl Kind for TemplateKind {
    type Id = TemplateId;
    type State = Template;
    type Event = TemplateEvent;
    fn subject(org: OrgId, id: TemplateId) -> String {
        subjects::template_events(org, id)
    }
    fn wrap(ev: TemplateEvent) -> Event {
        Event::Template(ev)
    }
    fn unwrap(ev: &Event) -> Option<&TemplateEvent> {
        if let Event::Template(e) = ev { Some(e) } else { None }
    }
    fn evolve(state: Option<Template>, id: TemplateId, op: Option<OpId>, at: OffsetDateTime, ev: &TemplateEvent) -> Option<Template> {
        template::evolve(state, id, op, at, ev)
    }
    fn type_name(ev: &TemplateEvent) -> &'static str {
        ev.type_name()
    }
}

/// Hosts: their state is what they announced.
pub struct HostKind;

impl Kind for HostKind {
    type Id = HostId;
    type State = HostInfo;
    type Event = HostEvent;
    fn subject(_org: OrgId, id: HostId) -> String {
        subjects::host_events(id)
    }
    fn wrap(ev: HostEvent) -> Event {
        Event::Host(ev)
    }
    fn unwrap(ev: &Event) -> Option<&HostEvent> {
        if let Event::Host(e) = ev { Some(e) } else { None }
    }
    fn evolve(state: Option<HostInfo>, _id: HostId, _op: Option<OpId>, _at: OffsetDateTime, ev: &HostEvent) -> Option<HostInfo> {
        match (state, ev) {
            (Some(mut info), ev) => {
                host::evolve(&mut info, ev);
                Some(info)
            }
            (None, HostEvent::Registered { info }) => Some(info.clone()),
            (None, _) => None,
        }
    }
    fn type_name(ev: &HostEvent) -> &'static str {
        ev.type_name()
    }
}

/// One aggregate's event-sourced state and its position in the stream.
pub struct Aggregate<K: Kind> {
    pub id: K::Id,
    pub org: OrgId,
    pub subject: String,
    pub state: Option<K::State>,
    /// Stream sequence of the last event on this aggregate's subject (0 = none).
    pub seq: u64,
}

/// A VM as the worker holds it.
pub type VmAggregate = Aggregate<VmKind>;
/// A volume as the worker holds it.
pub type VolumeAggregate = Aggregate<VolumeKind>;
/// A template as the worker holds it.
pub type TemplateAggregate = Aggregate<TemplateKind>;
/// A host as the worker holds it.
pub type HostAggregate = Aggregate<HostKind>;

impl<K: Kind> Aggregate<K> {
    /// An aggregate presumed to have no event yet (one a create names): its
    /// first append expects the subject empty, so a wrong guess is a
    /// [`BusError::Conflict`], after which the caller loads it.
    pub fn presumed_new(org: OrgId, id: K::Id) -> Self {
        Self { id, org, subject: K::subject(org, id), state: None, seq: 0 }
    }

    /// Fold the aggregate's events from the stream.
    pub async fn load(bus: &Bus, org: OrgId, id: K::Id) -> Result<Self, BusError> {
        let mut agg = Self::presumed_new(org, id);
        for (seq, env) in bus.load(&agg.subject).await? {
            if let Some(ev) = K::unwrap(&env.event) {
                agg.state = K::evolve(agg.state.take(), id, env.operation, env.time, ev);
            }
            agg.seq = seq;
        }
        Ok(agg)
    }

    /// Append one event, guarded by the expected subject sequence, and fold it in.
    /// On [`BusError::Conflict`] the caller must reload: another writer got there first.
    pub async fn append(&mut self, bus: &Bus, project: ProjectId, op: Option<OpId>, event: K::Event) -> Result<(), BusError> {
        let now = OffsetDateTime::now_utc();
        let env = Envelope::new(self.org, Some(project), self.id.to_string(), op, K::wrap(event), now);
        self.seq = bus.append(&self.subject, &env, self.seq).await?;
        let ev = K::unwrap(&env.event).expect("wrapped as this kind above");
        self.state = K::evolve(self.state.take(), self.id, op, now, ev);
        metrics::counter!("vmplane_worker_events_appended_total", "type" => K::type_name(ev)).increment(1);
        Ok(())
    }
}

/// End an operation that has no aggregate event of its own to end with
/// (see [`vmplane_domain::operation`]). Recorded at most once: a second call
/// for the same operation finds the subject taken and changes nothing.
pub async fn record_operation_failed(bus: &Bus, org: Option<OrgId>, op: OpId, target: &str, code: &str, message: String) -> Result<(), BusError> {
    let event = OperationEvent::OperationFailed { target: target.to_owned(), code: code.to_owned(), message };
    let env = Envelope::new(org.unwrap_or(OrgId::DEFAULT), None, op.to_string(), Some(op), Event::Operation(event), OffsetDateTime::now_utc());
    match bus.append(&operation::subject(org, op), &env, 0).await {
        Ok(_) | Err(BusError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
