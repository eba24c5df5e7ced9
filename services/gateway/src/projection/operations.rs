//! Operation views: one per accepted command, from `pending` (accepted by
//! this gateway) through `running` (the worker has started on it) to
//! `succeeded` or `failed`.

use super::{Projections, Txn, key};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::sync::watch;
use utoipa::ToSchema;
use vmplane_domain::event::{Envelope, Event};
use vmplane_domain::host::HostEvent;
use vmplane_domain::operation::OperationEvent;
use vmplane_domain::snapshot::FORK_KIND;
use vmplane_domain::vm::{OpKind, Outcome, Vm, VmEvent};
use vmplane_domain::volume::VolumeEvent;
use vmplane_domain::{OpId, OrgId};

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl OpStatus {
    /// Whether the operation has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OpError {
    pub code: String,
    pub message: String,
}

/// An operation as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    pub id: OpId,
    pub status: OpStatus,
    /// `create`, `start`, `stop`, ... (absent when the operation was only seen through events that do not say).
    pub kind: Option<String>,
    /// The resource the operation acts on (`vm_…`, `org_…`, ...).
    pub target_id: String,
    pub org_id: OrgId,
    pub error: Option<OpError>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Apply an event to the view of the operation it names. Returns the fork
/// operation the event also settled (one of whose clones ended), so that
/// the fork's waiters are woken too.
pub(super) fn apply(txn: &mut Txn, env: &Envelope) -> Option<OpId> {
    let id = env.operation?;
    let k = key(&[&"op", &id]);
    // An operation's own events name their target in the event; every other
    // event belongs to the target's aggregate.
    let target = match &env.event {
        Event::Operation(OperationEvent::OperationFailed { target, .. }) => target,
        _ => &env.aggregate,
    };
    let mut op = txn.get::<Operation>(&k).unwrap_or_else(|| Operation {
        id,
        status: OpStatus::Pending,
        kind: None,
        target_id: target.clone(),
        org_id: env.org,
        error: None,
        created_at: env.time,
        updated_at: env.time,
    });
    if op.status.is_terminal() {
        return None;
    }
    if op.kind.is_none() {
        let vm: Option<Vm> = txn.get(&key(&[&"vm", target]));
        op.kind = vm.and_then(|v| v.pending_op).filter(|p| p.id == id).map(|p| p.kind.as_str().to_owned());
    }
    op.updated_at = env.time;
    match &env.event {
        Event::Host(HostEvent::ImageImportFailed { message, .. }) => {
            op.status = OpStatus::Failed;
            op.error = Some(OpError { code: "import_failed".into(), message: message.clone() });
        }
        Event::Vm(VmEvent::OperationFinished { outcome: Outcome::Succeeded })
        | Event::Tenancy(_)
        | Event::Template(_)
        | Event::Host(_)
        | Event::SshKey(_)
        | Event::Webhook(_) => op.status = OpStatus::Succeeded,
        Event::Volume(VolumeEvent::VolumeOperationFinished { outcome: Outcome::Succeeded }) => op.status = OpStatus::Succeeded,
        Event::Vm(VmEvent::OperationFinished { outcome: Outcome::Failed { code, message } })
        | Event::Volume(VolumeEvent::VolumeOperationFinished { outcome: Outcome::Failed { code, message } })
        | Event::Operation(OperationEvent::OperationFailed { code, message, .. }) => {
            op.status = OpStatus::Failed;
            op.error = Some(OpError { code: code.clone(), message: message.clone() });
        }
        Event::Vm(_) | Event::Volume(_) => op.status = OpStatus::Running,
    }
    // The event says whether its snapshot is a fork's, and what else the
    // fork waits for.
    if let Event::Vm(VmEvent::SnapshotRequested { clones, .. }) = &env.event {
        op.kind = Some(if clones.is_empty() { OpKind::Snapshot.as_str() } else { FORK_KIND }.to_owned());
        if !clones.is_empty() {
            for clone in clones {
                txn.put(key(&[&"forkof", clone]), id);
            }
            txn.put(key(&[&"fork", &id]), Fork { clones: clones.clone(), snapshot_taken: false });
        }
    }
    if !op.status.is_terminal() {
        txn.put(k, op);
        return None;
    }
    // A fork's snapshot is taken: the fork ends with its clones. A failed
    // snapshot has ended it.
    if let Some(mut fork) = txn.get::<Fork>(&key(&[&"fork", &id])) {
        if op.status == OpStatus::Succeeded {
            fork.snapshot_taken = true;
            settle(txn, &mut op, &fork);
        }
        if op.status.is_terminal() {
            forget(txn, id, &fork);
        } else {
            txn.put(key(&[&"fork", &id]), fork);
        }
    }
    txn.put(k, op);
    // A clone's create ended: so may its fork.
    let parent: OpId = txn.get(&key(&[&"forkof", &id]))?;
    let mut fork_op = txn.get::<Operation>(&key(&[&"op", &parent]))?;
    let fork = txn.get::<Fork>(&key(&[&"fork", &parent]))?;
    if fork_op.status.is_terminal() {
        return None;
    }
    settle(txn, &mut fork_op, &fork);
    if !fork_op.status.is_terminal() {
        return None;
    }
    fork_op.updated_at = env.time;
    txn.put(key(&[&"op", &parent]), fork_op);
    forget(txn, parent, &fork);
    Some(parent)
}

/// Drop an ended fork's bookkeeping: what its clones end later changes it no more.
fn forget(txn: &mut Txn, fork_op: OpId, fork: &Fork) {
    for clone in &fork.clones {
        txn.remove(key(&[&"forkof", clone]));
    }
    txn.remove(key(&[&"fork", &fork_op]));
}

/// What a fork's operation waits for besides its own snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fork {
    /// The create operations of its clones.
    clones: Vec<OpId>,
    /// Whether its snapshot was taken (its own part succeeded).
    snapshot_taken: bool,
}

/// The status of a fork's operation from its parts: failed as soon as a
/// clone's create failed, succeeded once the snapshot and every clone are.
fn settle(txn: &Txn, op: &mut Operation, fork: &Fork) {
    let mut all_done = fork.snapshot_taken;
    for clone in &fork.clones {
        let part: Option<Operation> = txn.get(&key(&[&"op", clone]));
        match part {
            Some(p) if p.status == OpStatus::Failed => {
                let why = p.error.unwrap_or_else(|| OpError { code: "clone_failed".into(), message: String::new() });
                op.status = OpStatus::Failed;
                op.error =
                    Some(OpError { code: why.code, message: format!("the create of clone {} (operation {clone}) failed: {}", p.target_id, why.message) });
                return;
            }
            Some(p) if p.status == OpStatus::Succeeded => {}
            _ => all_done = false,
        }
    }
    op.status = if all_done { OpStatus::Succeeded } else { OpStatus::Running };
}

/// Requests waiting for operations to change, each woken only by its own
/// operation's events (not by every event applied: a busy gateway applies
/// thousands a second while hundreds of requests wait).
#[derive(Clone, Default)]
pub struct OpWaiters(Arc<Mutex<HashMap<OpId, watch::Sender<()>>>>);

impl OpWaiters {
    fn watch(&self, op: OpId) -> OpWatch {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let rx = map.entry(op).or_insert_with(|| watch::channel(()).0).subscribe();
        OpWatch { rx: Some(rx), op, waiters: self.clone() }
    }

    pub(super) fn wake(&self, op: OpId) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&op) {
            tx.send_replace(());
        }
    }
}

/// A wait for one operation's next change; its registration ends when dropped.
pub struct OpWatch {
    rx: Option<watch::Receiver<()>>,
    op: OpId,
    waiters: OpWaiters,
}

impl OpWatch {
    /// Resolves once an event of the operation has been applied since the
    /// watch began or since the last call.
    pub async fn changed(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            // The sender lives while this receiver does (see Drop).
            let _ = rx.changed().await;
        }
    }
}

impl Drop for OpWatch {
    fn drop(&mut self) {
        let mut map = self.waiters.0.lock().unwrap_or_else(|p| p.into_inner());
        self.rx = None;
        if map.get(&self.op).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(&self.op);
        }
    }
}

impl Projections {
    /// Watch one operation: register before reading it, so no change is missed.
    pub fn watch_operation(&self, op: OpId) -> OpWatch {
        self.ops.watch(op)
    }

    /// One operation.
    pub fn operation(&self, id: OpId) -> sled::Result<Option<Operation>> {
        self.get(&key(&[&"op", &id]))
    }

    /// Record an operation this gateway just accepted, unless events about it
    /// already arrived (they are newer and win).
    pub fn accept_operation(&self, op: &Operation) -> sled::Result<()> {
        self.insert_if_absent(&key(&[&"op", &op.id]), op).map(|_| ())
    }

    /// Remove a record made by [`Self::accept_operation`] whose command could
    /// not be appended, unless events about the operation changed it meanwhile.
    pub fn withdraw_operation(&self, op: &Operation) -> sled::Result<()> {
        let bytes = vmplane_domain::event::encode(op).expect("projection values always encode");
        let _ = self.tree.compare_and_swap(key(&[&"op", &op.id]), Some(bytes), None as Option<&[u8]>)?;
        Ok(())
    }
}
