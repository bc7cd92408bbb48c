//! BeginAuthorization and CompleteAuthorization: state, PKCE and the code exchange.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    cache::CacheKey, tokens, AuthorizationCompleted, AuthorizationStarted, BeginAuthorization, Vault, VaultError,
    MAX_SCOPES,
};
use crate::{
    crypto::Aad,
    oauth::{
        is_valid_scope, AmbiguousCause, CallbackOutcome, CallbackParams, PkceVerifier, ProviderConfig, TokenError,
    },
    store::NewPendingAuthorization,
};

/// Random bytes in a state: 32, as the design requires (Hydra needs at least 8 characters).
const STATE_BYTES: usize = 32;

fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

/// Defined in `crypto` because `keys rewrap` must build the same associated data.
fn verifier_aad<'a>(tenant_id: &'a str, provider: &'a str, state_hash: &[u8]) -> Aad<'a> {
    Aad::for_pending_verifier(tenant_id, provider, state_hash)
}

impl Vault {
    pub async fn begin_authorization(&self, req: BeginAuthorization) -> Result<AuthorizationStarted, VaultError> {
        let client = self.provider(&req.provider)?;
        let provider = client.config();
        if req.scopes.len() > MAX_SCOPES {
            return Err(VaultError::invalid(
                "scopes",
                format!("names more than {MAX_SCOPES} scopes"),
            ));
        }
        if let Some(bad) = req.scopes.iter().find(|s| !is_valid_scope(s)) {
            let shown: String = bad.chars().take(40).collect();
            return Err(VaultError::invalid(
                "scopes",
                format!("{shown:?} is not a valid scope (RFC 6749 §3.3)"),
            ));
        }
        let redirect_uri = provider.redirect_uri(&req.redirect_uri).ok_or_else(|| {
            if req.redirect_uri.is_empty() {
                VaultError::invalid(
                    "redirect_uri",
                    "is required: the provider has several registered redirect URIs",
                )
            } else {
                VaultError::invalid("redirect_uri", "is not registered for this provider")
            }
        })?;
        let scopes = provider.requested_scopes(&req.scopes);

        let mut random = zeroize::Zeroizing::new([0u8; STATE_BYTES]);
        getrandom::fill(random.as_mut()).map_err(|e| VaultError::Internal(format!("random source failed: {e}")))?;
        let state = URL_SAFE_NO_PAD.encode(random.as_ref());
        let hash = state_hash(&state);
        let verifier = provider.pkce.then(PkceVerifier::generate);
        let sealed_verifier = verifier
            .as_ref()
            .map(|v| {
                self.inner
                    .keyring
                    .seal_str(&verifier_aad(req.tenant_id.as_str(), &provider.name, &hash), v.secret())
            })
            .transpose()?;
        let expires_at = OffsetDateTime::now_utc() + self.inner.settings.state_ttl;
        self.inner
            .store
            .pending()
            .insert(NewPendingAuthorization {
                state_hash: &hash,
                tenant_id: req.tenant_id.as_str(),
                provider: &provider.name,
                redirect_uri: redirect_uri.as_str(),
                scopes: &scopes,
                pkce_verifier: sealed_verifier,
                expires_at,
                max_open: self.inner.settings.max_open_states,
            })
            .await?;
        let challenge = verifier.as_ref().map(PkceVerifier::challenge);
        let url = provider.authorization_url(&crate::oauth::AuthorizationRequest {
            redirect_uri,
            scopes: &scopes,
            state: &state,
            code_challenge: challenge.as_deref(),
        });
        tracing::info!(tenant_id = req.tenant_id.as_str(), provider = %provider.name, "authorization begun");
        Ok(AuthorizationStarted {
            authorization_url: url.into(),
            state,
            expires_at,
            provider: provider.name.clone(),
            redirect_uri: redirect_uri.to_string(),
            scopes,
        })
    }

    /// Consumes the state first, then exchanges the code. A state is therefore single use even
    /// when the exchange fails: the code may have been consumed by the provider in a failure we
    /// can't see (a timeout), and presenting it twice would make Hydra revoke what it issued.
    /// The customer starts over instead.
    pub async fn complete_authorization(&self, callback: CallbackParams) -> Result<AuthorizationCompleted, VaultError> {
        self.complete_authorization_for(callback, |_, _| Ok(())).await
    }

    /// `complete_authorization` for a caller whose policy `allow` checks against the tenant
    /// and provider the state was issued for: after the state is consumed (a state presented
    /// by a caller outside its tenant's policy stays burned) and before the code is exchanged.
    pub async fn complete_authorization_for(
        &self,
        callback: CallbackParams,
        allow: impl FnOnce(&str, &str) -> Result<(), VaultError> + Send,
    ) -> Result<AuthorizationCompleted, VaultError> {
        let hash = state_hash(&callback.state);
        let pending = self
            .inner
            .store
            .pending()
            .consume(&hash)
            .await?
            .ok_or(VaultError::InvalidState)?;
        let client = self.inner.providers.get(&pending.provider).ok_or_else(|| {
            tracing::warn!(provider = %pending.provider, "a pending authorization names a provider no longer configured");
            VaultError::InvalidState
        })?;
        let provider = client.config();
        allow(&pending.tenant_id, &provider.name)?;
        let code = match callback.outcome {
            CallbackOutcome::Error { error, description } => {
                tracing::info!(tenant_id = %pending.tenant_id, provider = %provider.name, error = %error, "authorization denied on the callback");
                return Err(VaultError::AuthorizationDenied { error, description });
            }
            CallbackOutcome::Code(code) => code,
        };
        let verifier = pending
            .pkce_verifier
            .as_deref()
            .map(|sealed| {
                self.inner
                    .keyring
                    .open_str(&verifier_aad(&pending.tenant_id, &provider.name, &hash), sealed)
                    .map(PkceVerifier::from_secret)
            })
            .transpose()?;

        let sent_at = OffsetDateTime::now_utc();
        let response = client
            .exchange_code(&code, &pending.redirect_uri, verifier.as_ref())
            .await
            .map_err(|e| exchange_error(e, provider, &pending.tenant_id))?;

        let keyring = &self.inner.keyring;
        let sealed = self
            .inner
            .store
            .connections()
            .store_authorization(&pending.tenant_id, &provider.name, |generation| {
                tokens::seal_token_response(
                    keyring,
                    provider,
                    &pending.tenant_id,
                    generation,
                    &response,
                    sent_at,
                    &pending.scopes,
                )
                .map(|(new, _)| new)
            })
            .await?;
        sealed?;
        self.inner
            .cache
            .remove(&CacheKey::new(&provider.name, &pending.tenant_id));

        let refresh_token_issued = response.refresh_token.is_some();
        if refresh_token_issued {
            tracing::info!(tenant_id = %pending.tenant_id, provider = %provider.name, "authorization completed");
        } else {
            tracing::warn!(
                tenant_id = %pending.tenant_id, provider = %provider.name,
                offline_scope = ?provider.offline_scope,
                "authorization completed WITHOUT a refresh token: the connection will need a new authorization when the access token expires (was the offline scope granted?)"
            );
        }
        let access_token_expires_at = sent_at + response.expires_in.unwrap_or(provider.assumed_token_lifetime);
        Ok(AuthorizationCompleted {
            tenant_id: pending.tenant_id,
            provider: provider.name.clone(),
            scopes: response.scope.unwrap_or(pending.scopes),
            access_token_expires_at,
            refresh_token_issued,
        })
    }
}

fn exchange_error(e: TokenError, provider: &ProviderConfig, tenant_id: &str) -> VaultError {
    match e {
        TokenError::InvalidGrant(err) => {
            tracing::info!(tenant_id, provider = %provider.name, description = ?err.description, "the provider rejected the authorization code");
            VaultError::InvalidGrant
        }
        TokenError::ClientRejected(err) => {
            tracing::error!(
                provider = %provider.name, error = %err.error, description = ?err.description, auth_method = ?provider.auth_method,
                "the provider REJECTED THE VAULT'S CLIENT CREDENTIALS: check client_id, client_secret and auth_method for this provider"
            );
            VaultError::ProviderRejectedClient {
                provider: provider.name.clone(),
            }
        }
        TokenError::Transient {
            cause,
            retry_after,
            http_status,
        } => {
            tracing::warn!(tenant_id, provider = %provider.name, ?cause, ?http_status, "the provider was unavailable for the code exchange");
            VaultError::ProviderUnavailable { retry_after }
        }
        TokenError::Protocol(what) => {
            tracing::error!(tenant_id, provider = %provider.name, problem = %what, "the provider's answer to the code exchange is unusable");
            VaultError::ProviderProtocol
        }
        // A code is single-use and short-lived: whether it was consumed or not, the way on is a
        // new authorization, never presenting the code again (a reused code revokes its tokens).
        TokenError::Ambiguous {
            cause: AmbiguousCause::AnswerLost,
            http_status,
        } => {
            tracing::error!(tenant_id, provider = %provider.name, ?http_status, "the provider accepted the code but its answer was lost or unusable");
            VaultError::ProviderProtocol
        }
        TokenError::Ambiguous {
            cause: AmbiguousCause::ConcurrentPresenter,
            http_status,
        } => {
            tracing::warn!(tenant_id, provider = %provider.name, ?http_status, "the provider reports a concurrent request with the same code");
            VaultError::ProviderUnavailable { retry_after: None }
        }
    }
}

/// Exported for the refresh path, which sorts the same errors the same way, plus its own.
pub(super) fn provider_error(e: TokenError, provider: &ProviderConfig, tenant_id: &str) -> VaultError {
    exchange_error(e, provider, tenant_id)
}
