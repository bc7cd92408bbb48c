//! RFC 7009 token revocation: DeleteConnection sends the refresh token it is about to wipe, so
//! that the grant dies at the provider too (at Hydra, revoking a refresh token revokes every
//! token of its grant). One attempt, bounded by the provider's `request_timeout`: the local wipe
//! does not wait on a provider that cannot answer.

use secrecy::{ExposeSecret, SecretString};

use super::ProviderClient;

/// Why a revocation did not happen. `reason` is stable and holds no secret: it is what
/// DeleteConnection answers (`revocation_error`) and stores as the connection's `last_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// No answer within the provider's `request_timeout`.
    #[error("the revocation endpoint did not answer in time")]
    Timeout,
    /// The connection could not be made, or broke before an answer.
    #[error("the revocation endpoint could not be reached")]
    Unreachable,
    /// 5xx.
    #[error("the revocation endpoint answered HTTP {0}")]
    ServerError(u16),
    /// 429.
    #[error("the revocation endpoint asked us to slow down")]
    RateLimited,
    /// RFC 7009 §2.2.1: the server does not revoke this kind of token.
    #[error("the provider does not revoke refresh tokens (unsupported_token_type)")]
    UnsupportedTokenType,
    /// 401, `invalid_client`, `unauthorized_client`: our credentials were refused.
    #[error("the revocation endpoint rejected the client credentials")]
    ClientRejected,
    /// Any other answer that is not 2xx (a redirect, another 4xx).
    #[error("the revocation endpoint answered HTTP {0}")]
    Rejected(u16),
}

impl RevocationError {
    pub fn reason(&self) -> &'static str {
        match self {
            RevocationError::Timeout => "revocation_timeout",
            RevocationError::Unreachable => "revocation_unreachable",
            RevocationError::ServerError(_) => "revocation_server_error",
            RevocationError::RateLimited => "revocation_rate_limited",
            RevocationError::UnsupportedTokenType => "unsupported_token_type",
            RevocationError::ClientRejected => "revocation_client_rejected",
            RevocationError::Rejected(_) => "revocation_rejected",
        }
    }
}

/// The most of an error answer read, to find its RFC 6749 `error` code.
const MAX_ERROR_BODY: usize = 8 * 1024;

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl ProviderClient {
    /// Revokes `refresh_token` at the provider's revocation endpoint (RFC 7009 §2.1, with
    /// `token_type_hint=refresh_token` and the token endpoint's client authentication). `Ok`
    /// on any 2xx: §2.2 answers 200 for a token that is already invalid too. `None` when no
    /// endpoint is configured.
    #[tracing::instrument(
        name = "oauth.revocation_request",
        skip_all,
        fields(
            otel.kind = "client",
            otel.name = "POST revocation endpoint",
            provider = %self.config().name,
            http.request.method = "POST",
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    )]
    pub async fn revoke_refresh_token(&self, refresh_token: &SecretString) -> Option<Result<(), RevocationError>> {
        let endpoint = self.config().revocation_endpoint.as_ref()?;
        let result = self
            .with_client_secrets(
                |secret| async move { self.send_revocation(endpoint, refresh_token, &secret).await },
                |(_, invalid_client)| *invalid_client,
            )
            .await
            .0;
        if let Err(e) = &result {
            tracing::Span::current().record("error.type", e.reason());
            tracing::warn!(provider = %self.config().name, error = %e, "the provider did not revoke the refresh token");
        }
        Some(result)
    }

    /// One attempt with `secret`; `true` beside the error when the provider answered
    /// `invalid_client`, which another configured secret may cure.
    async fn send_revocation(
        &self,
        endpoint: &url::Url,
        refresh_token: &SecretString,
        secret: &SecretString,
    ) -> (Result<(), RevocationError>, bool) {
        let result = self.revocation_attempt(endpoint, refresh_token, secret).await;
        let invalid_client = matches!(result, Err((RevocationError::ClientRejected, true)));
        (result.map_err(|(e, _)| e), invalid_client)
    }

    async fn revocation_attempt(
        &self,
        endpoint: &url::Url,
        refresh_token: &SecretString,
        secret: &SecretString,
    ) -> Result<(), (RevocationError, bool)> {
        let form = vec![
            ("token", refresh_token.expose_secret()),
            ("token_type_hint", "refresh_token"),
        ];
        let response = self
            .authenticated_post(endpoint, form, secret)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    (RevocationError::Timeout, false)
                } else {
                    (RevocationError::Unreachable, false)
                }
            })?;
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", i64::from(status));
        if (200..300).contains(&status) {
            return Ok(());
        }
        if status >= 500 {
            return Err((RevocationError::ServerError(status), false));
        }
        if status == 429 {
            return Err((RevocationError::RateLimited, false));
        }
        // The error code, from a bounded read; a body that is too large or cannot be read says
        // nothing more.
        let body = super::client::read_capped(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let error = serde_json::from_slice::<ErrorBody>(&body).ok().map(|b| b.error);
        Err(match error.as_deref() {
            Some("unsupported_token_type") => (RevocationError::UnsupportedTokenType, false),
            Some("invalid_client") => (RevocationError::ClientRejected, true),
            Some("unauthorized_client") => (RevocationError::ClientRejected, false),
            _ if status == 401 => (RevocationError::ClientRejected, false),
            _ => (RevocationError::Rejected(status), false),
        })
    }
}
