//! Which deliverer is active. Any number may run; one holds the lease (a
//! key of the queue bucket, taken and renewed by compare-and-set) and
//! delivers, the others wait to take over. One active deliverer is what
//! keeps each queue in order; a standby takes over within one lease time of
//! the active one's end (at once when it stopped cleanly).

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;
use ulid::Ulid;

const KEY: &str = "lease";

#[derive(Serialize, Deserialize)]
struct Lease {
    holder: Ulid,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

fn value(me: Ulid, ttl: Duration) -> bytes::Bytes {
    serde_json::to_vec(&Lease { holder: me, expires_at: OffsetDateTime::now_utc() + ttl }).expect("a lease serializes").into()
}

/// Wait until this process (`me`) holds the lease; returns its revision.
pub async fn acquire(store: &kv::Store, me: Ulid, ttl: Duration) -> u64 {
    let mut announced = false;
    loop {
        let taken = match store.entry(KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                let current: Option<Lease> = serde_json::from_slice(&e.value).ok();
                match current {
                    Some(l) if l.holder != me && l.expires_at > OffsetDateTime::now_utc() => {
                        if !announced {
                            tracing::info!(holder = %l.holder, "another deliverer is active; standing by");
                            announced = true;
                        }
                        None
                    }
                    _ => store.update(KEY, value(me, ttl), e.revision).await.ok(),
                }
            }
            Ok(Some(e)) => store.update(KEY, value(me, ttl), e.revision).await.ok(),
            Ok(None) => store.create(KEY, value(me, ttl)).await.ok(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the deliverer lease");
                None
            }
        };
        if let Some(revision) = taken {
            return revision;
        }
        tokio::time::sleep(ttl / 5).await;
    }
}

/// Renew the lease every third of its time; returns when it was lost
/// (another deliverer took it, or it could not be renewed in time).
pub async fn hold(store: &kv::Store, me: Ulid, ttl: Duration, mut revision: u64) -> String {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match store.update(KEY, value(me, ttl), revision).await {
            Ok(r) => {
                revision = r;
                last_renewed = tokio::time::Instant::now();
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return "another deliverer took the lease".into(),
            Err(e) => {
                tracing::warn!(error = %e, "renewing the deliverer lease");
                if last_renewed.elapsed() >= ttl * 2 / 3 {
                    return format!("the lease could not be renewed: {e}");
                }
            }
        }
    }
}

/// Give the lease up (a clean stop), so a standby takes over at once.
pub async fn release(store: &kv::Store, me: Ulid) {
    if let Ok(Some(e)) = store.entry(KEY).await
        && serde_json::from_slice::<Lease>(&e.value).is_ok_and(|l| l.holder == me)
    {
        let expired = serde_json::to_vec(&Lease { holder: me, expires_at: OffsetDateTime::UNIX_EPOCH }).expect("a lease serializes");
        let _ = store.update(KEY, expired.into(), e.revision).await;
    }
}
