//! Readiness: whether this gateway answers with the whole event history.

use super::{App, AppError, AppResult};
use std::time::Duration;

/// The stream sequence the projections hold, when NATS is connected and the
/// projections hold every event in the stream; unavailable otherwise.
pub async fn readiness(app: &App) -> AppResult<u64> {
    if !app.bus.is_connected() {
        return Err(AppError::Unavailable("not connected to NATS".into()));
    }
    let last = tokio::time::timeout(Duration::from_secs(2), app.bus.events_last_sequence())
        .await
        .map_err(|_| AppError::Unavailable("NATS did not answer".into()))??;
    let applied = app.proj.applied();
    if applied < last {
        return Err(AppError::Unavailable(format!("projections catching up: {applied} of {last} events applied")));
    }
    Ok(applied)
}
