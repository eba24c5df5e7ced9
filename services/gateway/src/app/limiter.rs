//! Per-API-key rate limiting (token bucket); the admin token is not limited.

use super::AppError;
use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};
use std::num::NonZeroU32;
use vmplane_domain::ApiKeyId;

/// Requests per second per key, with a burst of twice that.
pub struct Limiter(Option<DefaultKeyedRateLimiter<ApiKeyId>>);

impl Limiter {
    /// `per_second == 0` disables limiting.
    pub fn new(per_second: u32) -> Self {
        Self(NonZeroU32::new(per_second).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not zero"));
            governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        }))
    }

    /// Take one request from the key's bucket, or say when to come back.
    pub fn check(&self, key: ApiKeyId) -> Result<(), AppError> {
        let Some(limiter) = &self.0 else { return Ok(()) };
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AppError::RateLimited { retry_after_secs: wait.as_secs().max(1) }
        })
    }
}
