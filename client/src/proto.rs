//! The vault's gRPC contract (`tokenvault.v1`), generated from `proto/tokenvault/v1/token_vault.proto`
//! and checked in (`src/generated/`), so that building this crate needs no protoc.
//!
//! [`Client`](crate::Client) covers the unary calls with credentials, deadlines and retries; the
//! raw stub, [`token_vault_client::TokenVaultClient`], is here for anything else.
//!
//! The messages that carry tokens ([`GetAccessTokenRequest`], [`GetAccessTokenResponse`],
//! [`ImportConnectionRequest`]) print `[redacted]` in place of a token in their `Debug` output.

#![allow(missing_docs, clippy::all)]

include!("generated/tokenvault.v1.rs");

mod redacted {
    //! `Debug` for the messages that carry tokens, written by hand: a request or response in a
    //! log line or a panic shows that a token was there, never the token.

    use std::fmt;

    use super::{GetAccessTokenRequest, GetAccessTokenResponse, ImportConnectionRequest};

    /// What a secret field holds, as printed: whether it is set, never its value.
    fn secret(value: &str) -> &'static str {
        if value.is_empty() {
            ""
        } else {
            "[redacted]"
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_token() {
        let request = GetAccessTokenRequest {
            tenant_id: "acme".into(),
            rejected_access_token: "at-secret-1".into(),
            ..Default::default()
        };
        let response = GetAccessTokenResponse {
            access_token: "at-secret-2".into(),
            ..Default::default()
        };
        let import = ImportConnectionRequest {
            refresh_token: "rt-secret-3".into(),
            access_token: "at-secret-4".into(),
            ..Default::default()
        };
        let printed = format!("{request:?} {response:?} {import:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("acme") && printed.contains("[redacted]"), "{printed}");
    }
}
