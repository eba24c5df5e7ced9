//! Webhook deliveries: the deliverer's decisions, pure.
//!
//! A *delivery* is one event sent to one endpoint. Its id is `dlv_` + the
//! event's ulid: one delivery per event and endpoint, the same after any
//! restart (the endpoint's routes scope it). Deliveries of one endpoint and
//! one aggregate (a VM, a volume, …) are a queue: sent in stream order, one
//! at a time, so a failing head holds back that aggregate's later events for
//! that endpoint and nothing else.
//!
//! Every attempt is an event, [`DeliveryAttempt`] (`webhook.delivery_attempted`),
//! on the endpoint's delivery subject, so a rebuilt projection shows the same
//! history. What follows a failed attempt is [`after_failure`]: a retry on the
//! [`RetrySchedule`] (later if the endpoint asked with `Retry-After`), giving
//! up once the schedule is spent, or disabling the endpoint when it answered
//! 410 or has failed without a success for [`DISABLE_AFTER`].

use crate::ids::{DeliveryId, EventId};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The default retry schedule: the delay before each attempt.
pub const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";
/// How long an attempt may take before it counts as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// An endpoint failing this long without a success is disabled.
pub const DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);
/// The longest `Retry-After` honoured; a longer one waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The longest error text kept in an attempt.
pub const MAX_ERROR_LEN: usize = 300;

/// The delays before each attempt (the first is usually `0s`: at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a retry schedule is a comma-separated list of 1 to 32 durations such as `0s,5s,5m,30m,2h`: {0}")]
pub struct ScheduleError(String);

impl std::str::FromStr for RetrySchedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, ScheduleError> {
        let delays = s
            .split(',')
            .map(|d| humantime::parse_duration(d.trim()).map_err(|e| ScheduleError(format!("`{}`: {e}", d.trim()))))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 32 {
            return Err(ScheduleError(format!("{} entries", delays.len())));
        }
        Ok(Self(delays))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        DEFAULT_SCHEDULE.parse().expect("the default schedule parses")
    }
}

impl RetrySchedule {
    /// How many attempts the schedule allows.
    pub fn attempts(&self) -> u32 {
        self.0.len() as u32
    }

    /// The delay before attempt `n` (1 is the first); `None` past the schedule.
    pub fn delay_before(&self, n: u32) -> Option<Duration> {
        self.0.get(n.checked_sub(1)? as usize).copied()
    }
}

/// How an attempt ended, as the endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx: delivered.
    Delivered,
    /// 410 Gone: the endpoint asks never to be called again.
    Gone,
    /// Anything else (another status, a timeout, a refused connection); with
    /// the delay a 429 or 503 asked for in `Retry-After`.
    Failed { retry_after: Option<Duration> },
}

/// Classify an HTTP status (`None`: no answer at all) and its `Retry-After`
/// header (seconds or an HTTP date, relative to `now`; only on 429 and 503).
pub fn classify(status: Option<u16>, retry_after: Option<&str>, now: OffsetDateTime) -> Answer {
    match status {
        Some(200..=299) => Answer::Delivered,
        Some(410) => Answer::Gone,
        Some(429 | 503) => Answer::Failed { retry_after: retry_after.and_then(|h| parse_retry_after(h, now)) },
        _ => Answer::Failed { retry_after: None },
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = OffsetDateTime::from(httpdate::parse_http_date(value).ok()?);
            Duration::try_from(at - now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this time.
    RetryAt(OffsetDateTime),
    /// The schedule is spent: the delivery failed; the queue moves on.
    GiveUp,
    /// Disable the endpoint; nothing more is sent to it.
    Disable(DisableReason),
}

/// Why an endpoint was disabled by deliveries (not by its owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// It answered 410 Gone.
    Gone,
    /// It failed every attempt for [`DISABLE_AFTER`] (or the deliverer's setting).
    Failing,
}

/// Decide what follows attempt number `attempt` (1 is the first) that ended
/// with `answer` (not delivered) at `now`, for an endpoint failing without
/// a success since `failing_since`.
pub fn after_failure(
    schedule: &RetrySchedule,
    attempt: u32,
    answer: Answer,
    now: OffsetDateTime,
    failing_since: OffsetDateTime,
    disable_after: Duration,
) -> AfterFailure {
    let retry_after = match answer {
        Answer::Gone => return AfterFailure::Disable(DisableReason::Gone),
        Answer::Delivered => return AfterFailure::GiveUp,
        Answer::Failed { retry_after } => retry_after,
    };
    if now - failing_since >= disable_after {
        return AfterFailure::Disable(DisableReason::Failing);
    }
    match schedule.delay_before(attempt + 1) {
        Some(delay) => AfterFailure::RetryAt(now + delay.max(retry_after.unwrap_or_default())),
        None => AfterFailure::GiveUp,
    }
}

/// How an attempt ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// Failed; another attempt is due at `next_retry_at`.
    Retrying,
    /// Failed, and the schedule is spent: no automatic attempt follows.
    Failed,
    /// Failed, and the endpoint was disabled (410, or failing for days).
    EndpointDisabled,
}

/// One attempt to deliver one event to one endpoint: the payload of
/// `webhook.delivery_attempted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    pub delivery_id: DeliveryId,
    /// The event delivered (the `webhook-id` header).
    pub event_id: EventId,
    /// Its stream sequence (the SSE id).
    pub event_seq: u64,
    /// Its qualified type (`vm.running`).
    pub event_type: String,
    /// The aggregate whose queue it is in (`vm_…`).
    pub aggregate: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub attempted_at: OffsetDateTime,
    /// The HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// Why there was no usable answer (timeout, connection refused, address refused, …).
    pub error: Option<String>,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_retry_at: Option<OffsetDateTime>,
    /// Asked for with `POST …/deliveries/{id}/retry`.
    #[serde(default)]
    pub manual: bool,
}

/// Cut an error text to [`MAX_ERROR_LEN`] characters.
pub fn short_error(e: &str) -> String {
    e.chars().take(MAX_ERROR_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(10_000)
    }

    #[test]
    fn schedules_parse_and_end() {
        let s = RetrySchedule::default();
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.delay_before(1), Some(Duration::ZERO));
        assert_eq!(s.delay_before(2), Some(Duration::from_secs(5)));
        assert_eq!(s.delay_before(4), Some(Duration::from_secs(1800)));
        assert_eq!(s.delay_before(8), Some(Duration::from_secs(36_000)));
        assert_eq!((s.delay_before(9), s.delay_before(0)), (None, None));
        let s: RetrySchedule = "0s, 200ms ,1s".parse().unwrap();
        assert_eq!(s.delay_before(2), Some(Duration::from_millis(200)));
        for bad in ["", "5", "1x", "0s,,1s", &vec!["1s"; 33].join(",")] {
            assert!(bad.parse::<RetrySchedule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_are_classified() {
        let now = t0();
        assert_eq!(classify(Some(204), None, now), Answer::Delivered);
        assert_eq!(classify(Some(410), None, now), Answer::Gone);
        assert_eq!(classify(Some(500), Some("5"), now), Answer::Failed { retry_after: None }, "Retry-After only on 429/503");
        assert_eq!(classify(Some(302), None, now), Answer::Failed { retry_after: None }, "redirects are not followed");
        assert_eq!(classify(None, None, now), Answer::Failed { retry_after: None });
        assert_eq!(classify(Some(429), Some("7"), now), Answer::Failed { retry_after: Some(Duration::from_secs(7)) });
        let date = httpdate::fmt_http_date((now + time::Duration::seconds(30)).into());
        assert_eq!(classify(Some(503), Some(&date), now), Answer::Failed { retry_after: Some(Duration::from_secs(30)) });
        assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_failure_is_retried_then_given_up_or_disables() {
        let s: RetrySchedule = "0s,1s,10s".parse().unwrap();
        let (now, fail) = (t0(), Answer::Failed { retry_after: None });
        let days = DISABLE_AFTER;
        assert_eq!(after_failure(&s, 1, fail, now, now, days), AfterFailure::RetryAt(now + Duration::from_secs(1)));
        assert_eq!(after_failure(&s, 2, fail, now, now, days), AfterFailure::RetryAt(now + Duration::from_secs(10)));
        assert_eq!(after_failure(&s, 3, fail, now, now, days), AfterFailure::GiveUp);
        let later = Answer::Failed { retry_after: Some(Duration::from_secs(60)) };
        assert_eq!(after_failure(&s, 1, later, now, now, days), AfterFailure::RetryAt(now + Duration::from_secs(60)), "Retry-After honoured");
        assert_eq!(after_failure(&s, 1, Answer::Gone, now, now, days), AfterFailure::Disable(DisableReason::Gone));
        let since = now - time::Duration::days(5);
        assert_eq!(after_failure(&s, 1, fail, now, since, days), AfterFailure::Disable(DisableReason::Failing));
    }
}
