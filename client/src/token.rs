//! [`AccessToken`]: a tenant's access token as the vault hands it out.

use std::{fmt, time::SystemTime};

use crate::proto::GetAccessTokenResponse;

/// An access token for a tenant at a provider, to send as `Authorization: Bearer …`.
///
/// Its `Debug` output never shows the token; [`secret`](Self::secret) does.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    secret: String,
    token_type: String,
    expires_at: Option<SystemTime>,
    scopes: Vec<String>,
}

impl AccessToken {
    /// The token itself.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The token type the provider gave (`Bearer`).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// When the provider said the token expires, if it did.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The scopes the token was granted.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The `Authorization` header value: `Bearer <token>`.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

impl From<GetAccessTokenResponse> for AccessToken {
    fn from(response: GetAccessTokenResponse) -> Self {
        Self {
            secret: response.access_token,
            token_type: response.token_type,
            expires_at: response.expires_at.and_then(|t| SystemTime::try_from(t).ok()),
            scopes: response.scopes,
        }
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token_and_the_header_carries_it() {
        let token = AccessToken::from(GetAccessTokenResponse {
            access_token: "at-1234".into(),
            token_type: "Bearer".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            scopes: vec!["booking.read".into()],
        });
        let printed = format!("{token:?}");
        assert!(
            !printed.contains("at-1234") && printed.contains("booking.read"),
            "{printed}"
        );
        assert_eq!(token.authorization(), "Bearer at-1234");
        assert_eq!(
            token.expires_at(),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000))
        );
    }
}
