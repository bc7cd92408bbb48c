//! This machine's clock against a provider's: the `Date` header of its answers (RFC 9110
//! §6.6.1, one-second resolution). The vault computes expiry times from its own clock, so a
//! clock off by more than `MAX_CLOCK_SKEW` (30 s) makes it hand out tokens the provider already
//! considers expired, or refresh needlessly early; TLS certificate checks suffer as well.

use std::time::{Duration, SystemTime};

use super::Check;

/// A larger difference fails the check: well above the header's resolution and network delay,
/// well below the margins the vault refreshes ahead of expiry.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Judges the `Date` header `date` the provider `provider` sent, received at `now`.
pub fn check(provider: &str, date: Option<&str>, now: SystemTime) -> Check {
    let name = format!("provider {provider} clock");
    let Some(date) = date else {
        return Check::warn(name, "the provider's answers carry no Date header to compare with");
    };
    let Ok(theirs) = httpdate::parse_http_date(date) else {
        return Check::warn(name, format!("the provider's Date header {date:?} is not an HTTP date"));
    };
    let (skew, direction) = match theirs.duration_since(now) {
        Ok(ahead) => (ahead, "ahead of"),
        Err(behind) => (behind.duration(), "behind"),
    };
    // Whole seconds: the header has no finer resolution.
    let seconds = skew.as_secs();
    if skew > MAX_CLOCK_SKEW {
        Check::fail(
            name,
            format!(
                "the provider's clock is {seconds} s {direction} this machine's (more than {} s): fix the time synchronisation (NTP)",
                MAX_CLOCK_SKEW.as_secs()
            ),
        )
    } else {
        Check::pass(
            name,
            format!("within {} s of the provider's Date header", seconds.max(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::doctor::Outcome;

    #[test]
    fn a_skew_beyond_the_threshold_fails_either_way_and_a_small_one_passes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let header = |offset: i64| {
            httpdate::fmt_http_date(
                now.checked_add(Duration::from_secs(offset.unsigned_abs()))
                    .filter(|_| offset >= 0)
                    .unwrap_or_else(|| now - Duration::from_secs(offset.unsigned_abs())),
            )
        };
        assert_eq!(check("p", Some(&header(5)), now).outcome, Outcome::Pass);
        assert_eq!(check("p", Some(&header(-5)), now).outcome, Outcome::Pass);
        let ahead = check("p", Some(&header(600)), now);
        assert_eq!(ahead.outcome, Outcome::Fail);
        assert!(ahead.detail.contains("600 s ahead"), "{}", ahead.detail);
        let behind = check("p", Some(&header(-600)), now);
        assert!(behind.detail.contains("600 s behind"), "{}", behind.detail);
        assert_eq!(check("p", None, now).outcome, Outcome::Warn);
    }
}
