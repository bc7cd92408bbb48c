//! A refresh token's expected end, and when the keeper refreshes an idle connection before it.
//!
//! Hydra's refresh tokens live `ttl.refresh_token` (720 h by default) from their issue; one
//! that nobody presents in that time is dead, and with it the customer's connection. The
//! keeper refreshes a connection `keepalive_before` its refresh token's end. A refresh kills
//! the access token in circulation, so where the margin allows the keep-alive waits until that
//! token has expired by itself: callers holding it are not cut off.

use std::time::Duration;

use time::OffsetDateTime;

use crate::oauth::ProviderConfig;

/// When a refresh token issued at `issued_at` expires: the provider's own word
/// (`refresh_token_expires_in`) first, else the provider's configured lifetime, else unknown.
pub(super) fn refresh_token_expires_at(
    provider: &ProviderConfig,
    issued_at: OffsetDateTime,
    provider_says: Option<Duration>,
) -> Option<OffsetDateTime> {
    provider_says
        .or(provider.refresh_token_lifetime)
        .map(|lifetime| issued_at + lifetime)
}

/// When the keeper refreshes the connection: `keepalive_before` the refresh token's end, or
/// halfway through its life if that margin is longer than the life. Postponed to the access
/// token's expiry if that comes before half the margin is spent, so that no token in
/// circulation is killed by the keep-alive.
pub(super) fn keepalive_due_at(
    provider: &ProviderConfig,
    issued_at: OffsetDateTime,
    access_token_expires_at: OffsetDateTime,
    refresh_token_expires_at: OffsetDateTime,
) -> OffsetDateTime {
    let life = refresh_token_expires_at - issued_at;
    let margin = time::Duration::try_from(provider.keepalive_before).unwrap_or(time::Duration::MAX);
    let margin = if margin >= life { life / 2 } else { margin };
    let due = refresh_token_expires_at - margin;
    let latest = refresh_token_expires_at - margin / 2;
    if access_token_expires_at > due && access_token_expires_at <= latest {
        access_token_expires_at
    } else {
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderSettings;

    fn provider(lifetime: Option<u64>, before: u64) -> ProviderConfig {
        ProviderSettings {
            authorization_endpoint: "https://p.test/auth".parse().ok(),
            token_endpoint: "https://p.test/token".parse().ok(),
            client_id: Some("id".into()),
            client_secret: Some("secret".to_owned().into()),
            redirect_uris: vec!["https://app.test/cb".parse().unwrap()],
            refresh_token_lifetime: lifetime.map(Duration::from_secs),
            keepalive_before: Some(Duration::from_secs(before)),
            ..Default::default()
        }
        .resolve("p")
        .unwrap()
    }

    const DAY: u64 = 24 * 3600;

    #[test]
    fn the_providers_word_wins_over_the_configured_lifetime() {
        let p = provider(Some(30 * DAY), 7 * DAY);
        let t0 = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            refresh_token_expires_at(&p, t0, Some(Duration::from_secs(DAY))),
            Some(t0 + Duration::from_secs(DAY))
        );
        assert_eq!(
            refresh_token_expires_at(&p, t0, None),
            Some(t0 + Duration::from_secs(30 * DAY))
        );
        assert_eq!(refresh_token_expires_at(&provider(None, DAY), t0, None), None);
    }

    #[test]
    fn due_a_margin_before_the_end_or_halfway_when_the_margin_is_longer() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let hour = t0 + Duration::from_secs(3600);
        let p = provider(None, 7 * DAY);
        let end = t0 + Duration::from_secs(30 * DAY);
        assert_eq!(keepalive_due_at(&p, t0, hour, end), end - Duration::from_secs(7 * DAY));
        let end = t0 + Duration::from_secs(DAY);
        assert_eq!(keepalive_due_at(&p, t0, hour, end), t0 + Duration::from_secs(DAY / 2));
    }

    #[test]
    fn waits_for_the_access_token_in_circulation_when_the_margin_allows() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let p = provider(None, 4 * DAY);
        let end = t0 + Duration::from_secs(10 * DAY);
        let due = end - Duration::from_secs(4 * DAY);
        // An access token that expires a day after the due moment: wait for it.
        let later = due + Duration::from_secs(DAY);
        assert_eq!(keepalive_due_at(&p, t0, later, end), later);
        // One that would eat more than half the margin: do not wait.
        let too_late = due + Duration::from_secs(3 * DAY);
        assert_eq!(keepalive_due_at(&p, t0, too_late, end), due);
    }
}
