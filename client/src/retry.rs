//! [`RetryPolicy`]: which failed calls are tried again, and after how long.
//!
//! The vault says when a retry makes sense: a refresh it could not finish, a connection busy
//! on another replica, a database failover, a caller over its rate all come with a
//! `google.rpc.RetryInfo` delay. The policy waits that long (never less), retries only codes
//! that are safe to retry, and stops after a bounded number of attempts or when the call's
//! deadline would pass first.

use std::time::Duration;

use tonic::{Code, Status};

use crate::error::retry_delay;

/// When to try a failed call again.
///
/// Retried, up to [`max_attempts`](Self::max_attempts) attempts in all:
/// - `UNAVAILABLE`: after the vault's `RetryInfo` delay, or an exponential backoff with jitter
///   when it gave none (the connection failed before the vault could answer);
/// - `RESOURCE_EXHAUSTED` with a `RetryInfo` delay (a caller over its rate): after that delay.
///
/// Never retried: every other code (a bad request, a missing connection, a revoked grant,
/// `DEADLINE_EXCEEDED`, …), a `RetryInfo` delay longer than
/// [`max_retry_delay`](Self::max_retry_delay), and a wait that would end after the call's
/// deadline. Only calls that are safe to repeat are retried at all (see
/// [`Client`](crate::Client)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retries.
    pub max_attempts: u32,
    /// The first backoff when the vault gave no delay; doubled on each retry.
    pub initial_backoff: Duration,
    /// The longest backoff when the vault gave no delay.
    pub max_backoff: Duration,
    /// The longest `RetryInfo` delay the client waits out; a longer one ends the call with the
    /// vault's error, whose [`retry_after`](crate::Error::retry_after) says when to come back.
    pub max_retry_delay: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, a backoff from 100 ms to 2 s, `RetryInfo` delays up to 5 s.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_retry_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure is returned as it comes.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before attempt `attempt + 1`, after attempt `attempt` (1-based) failed with
    /// `status`; `None` when the failure is final.
    pub(crate) fn delay(&self, status: &Status, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let asked = retry_delay(status);
        match (status.code(), asked) {
            (Code::Unavailable | Code::ResourceExhausted, Some(asked)) => {
                (asked <= self.max_retry_delay).then_some(asked)
            }
            (Code::Unavailable, None) => Some(self.backoff(attempt)),
            _ => None,
        }
    }

    /// "Full jitter" exponential backoff: a random wait up to the doubled delay, so that
    /// callers that failed together do not come back together.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(millis / 2..=millis))
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    fn with_retry_info(code: Code, delay: Duration) -> Status {
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(delay));
        Status::with_error_details(code, "try later", details)
    }

    #[test]
    fn a_retry_info_delay_is_waited_out_exactly_when_the_code_allows_a_retry() {
        let policy = RetryPolicy::default();
        let delay = Duration::from_millis(1500);
        assert_eq!(policy.delay(&with_retry_info(Code::Unavailable, delay), 1), Some(delay));
        assert_eq!(
            policy.delay(&with_retry_info(Code::ResourceExhausted, delay), 2),
            Some(delay)
        );
        // The last attempt is final; so are codes a retry cannot fix, RetryInfo or not.
        assert_eq!(policy.delay(&with_retry_info(Code::Unavailable, delay), 3), None);
        for code in [
            Code::FailedPrecondition,
            Code::NotFound,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            assert_eq!(policy.delay(&with_retry_info(code, delay), 1), None, "{code:?}");
        }
    }

    #[test]
    fn a_delay_longer_than_the_policy_waits_ends_the_call() {
        let policy = RetryPolicy::default();
        let status = with_retry_info(Code::Unavailable, Duration::from_secs(30));
        assert_eq!(policy.delay(&status, 1), None);
    }

    #[test]
    fn without_retry_info_unavailable_backs_off_and_rate_limits_are_final() {
        let policy = RetryPolicy::default();
        for attempt in 1..3 {
            let wait = policy
                .delay(&Status::unavailable("connection refused"), attempt)
                .unwrap();
            let ceiling = Duration::from_millis(100 * 2u64.pow(attempt - 1));
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{wait:?} after attempt {attempt}"
            );
        }
        assert_eq!(policy.delay(&Status::resource_exhausted("slow down"), 1), None);
        assert_eq!(RetryPolicy::none().delay(&Status::unavailable("down"), 1), None);
    }

    #[test]
    fn the_backoff_stops_growing_at_its_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 40,
            ..RetryPolicy::default()
        };
        let wait = policy.delay(&Status::unavailable("down"), 39).unwrap();
        assert!(wait <= policy.max_backoff, "{wait:?}");
    }
}
