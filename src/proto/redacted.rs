//! `Debug` for the messages that carry tokens, written by hand (`build.rs` tells prost not to
//! derive it): a request or response printed in a log, a panic or a test failure shows that a
//! token was there, never the token.

use std::fmt;

use super::{GetAccessTokenRequest, GetAccessTokenResponse, ImportConnectionRequest};

const REDACTED: &str = "[redacted]";

/// What a secret field holds, as printed: whether it is set, never its value.
fn secret(value: &str) -> &'static str {
    if value.is_empty() {
        ""
    } else {
        REDACTED
    }
}

impl fmt::Debug for GetAccessTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetAccessTokenRequest")
            .field("tenant_id", &self.tenant_id)
            .field("provider", &self.provider)
            .field("min_valid_for", &self.min_valid_for)
            .field("rejected_access_token", &secret(&self.rejected_access_token))
            .field(
                "rejected_access_token_sha256",
                &format_args!("[{} bytes]", self.rejected_access_token_sha256.len()),
            )
            .finish()
    }
}

impl fmt::Debug for GetAccessTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetAccessTokenResponse")
            .field("access_token", &secret(&self.access_token))
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl fmt::Debug for ImportConnectionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportConnectionRequest")
            .field("tenant_id", &self.tenant_id)
            .field("provider", &self.provider)
            .field("refresh_token", &secret(&self.refresh_token))
            .field("access_token", &secret(&self.access_token))
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("scopes", &self.scopes)
            .field("skip_validation", &self.skip_validation)
            .field("replace_existing", &self.replace_existing)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_not_printed() {
        let request = GetAccessTokenRequest {
            tenant_id: "acme".into(),
            rejected_access_token: "at_secret_value".into(),
            ..Default::default()
        };
        let response = GetAccessTokenResponse {
            access_token: "at_secret_value".into(),
            ..Default::default()
        };
        let import = ImportConnectionRequest {
            tenant_id: "acme".into(),
            refresh_token: "ory_rt_secret_value".into(),
            access_token: "at_secret_value".into(),
            ..Default::default()
        };
        let printed = format!("{request:?} {response:?} {import:?} {request:#?}");
        assert!(!printed.contains("secret_value"), "{printed}");
        assert!(printed.contains("acme") && printed.contains(REDACTED));
    }
}
