//! Operations: one per accepted command, read with an optional wait for its end.

use super::accept::wait_for;
use super::{App, AppError, AppResult, Operation, Principal};
use std::time::Duration;
use vmplane_domain::OpId;

/// The longest wait; callers refuse longer ones in their own terms (a longer
/// one waits this long).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// An operation the caller may see (its org's; every org's for the admin
/// acting in none), once it has ended or `wait` has passed.
pub async fn get(app: &App, who: &Principal, id: OpId, wait: Duration) -> AppResult<Operation> {
    let not_found = || AppError::NotFound(format!("operation {id}"));
    app.proj.operation(id)?.filter(|o| who.sees_all_orgs() || o.org_id == who.org).ok_or_else(not_found)?;
    wait_for(app, id, wait.min(MAX_WAIT), |o| o.status.is_terminal()).await?.ok_or_else(not_found)
}
