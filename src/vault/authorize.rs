//! BeginAuthorization and CompleteAuthorization: state, PKCE and the code exchange.

use std::time::{Duration, Instant};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{
    tokens, AuthorizationCompleted, AuthorizationStarted, BeginAuthorization, ConnectionKey, Vault, VaultError,
    MAX_SCOPES,
};
use crate::{
    crypto::Aad,
    oauth::{
        is_valid_scope, AmbiguousCause, CallbackOutcome, CallbackParams, PkceVerifier, ProviderConfig, TokenError,
    },
    store::{NewPendingAuthorization, Origin, StoreError},
};

/// Random bytes in a state: 32, as the design requires (Hydra needs at least 8 characters).
const STATE_BYTES: usize = 32;

fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

/// Defined in `crypto` because `keys rewrap` must build the same associated data.
fn verifier_aad<'a>(key: &'a ConnectionKey, state_hash: &[u8]) -> Aad<'a> {
    Aad::for_pending_verifier(key.tenant().as_str(), key.provider().as_str(), state_hash)
}

/// How many times storing a completed authorization starts over when a refresh or another
/// authorization changed the connection between reading its generation and writing.
const MAX_STORE_ROUNDS: usize = 8;
/// How long storing a completed authorization rides out an unavailable database: the code is
/// spent by then, so giving up at the first blip would make the customer start over.
const STORE_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// A callback whose state was consumed: the connection it was issued for, and what the code
/// exchange needs. The API checks the caller's policy against [`Self::key`] before
/// [`Vault::exchange_code`]; the state is spent either way.
pub struct ConsumedState {
    key: ConnectionKey,
    outcome: CallbackOutcome,
    state_hash: Vec<u8>,
    redirect_uri: String,
    scopes: Vec<String>,
    pkce_verifier: Option<Vec<u8>>,
}

impl ConsumedState {
    pub fn key(&self) -> &ConnectionKey {
        &self.key
    }
}

impl Vault {
    pub async fn begin_authorization(
        &self,
        key: &ConnectionKey,
        req: BeginAuthorization,
    ) -> Result<AuthorizationStarted, VaultError> {
        let client = self.provider(key)?;
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
            .map(|v| self.inner.keyring.seal_str(&verifier_aad(key, &hash), v.secret()))
            .transpose()?;
        let expires_at = OffsetDateTime::now_utc() + self.inner.settings.state_ttl;
        self.inner
            .store
            .pending()
            .insert(NewPendingAuthorization {
                state_hash: &hash,
                key,
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
        tracing::info!(tenant_id = %key.tenant(), provider = %key.provider(), "authorization begun");
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
        let consumed = self.consume_state(callback).await?;
        self.exchange_code(consumed).await
    }

    /// The first half of CompleteAuthorization: spends the callback's state and says which
    /// connection it was issued for. A state presented by a caller outside its tenant's policy
    /// stays spent.
    pub async fn consume_state(&self, callback: CallbackParams) -> Result<ConsumedState, VaultError> {
        let hash = state_hash(&callback.state);
        let pending = self
            .inner
            .store
            .pending()
            .consume(&hash)
            .await?
            .ok_or(VaultError::InvalidState)?;
        if self.provider_named(&pending.provider).is_err() {
            tracing::warn!(provider = %pending.provider, "a pending authorization names a provider no longer configured");
            return Err(VaultError::InvalidState);
        }
        Ok(ConsumedState {
            key: ConnectionKey::from_stored(&pending.tenant_id, &pending.provider),
            outcome: callback.outcome,
            state_hash: hash,
            redirect_uri: pending.redirect_uri,
            scopes: pending.scopes,
            pkce_verifier: pending.pkce_verifier,
        })
    }

    /// The second half: exchanges the callback's code and stores the tokens.
    pub async fn exchange_code(&self, consumed: ConsumedState) -> Result<AuthorizationCompleted, VaultError> {
        let key = &consumed.key;
        let client = self.provider(key)?;
        let provider = client.config();
        let code = match consumed.outcome {
            CallbackOutcome::Error { error, description } => {
                tracing::info!(tenant_id = %key.tenant(), provider = %key.provider(), error = %error, "authorization denied on the callback");
                return Err(VaultError::AuthorizationDenied { error, description });
            }
            CallbackOutcome::Code(code) => code,
        };
        let verifier = consumed
            .pkce_verifier
            .as_deref()
            .map(|sealed| {
                self.inner
                    .keyring
                    .open_str(&verifier_aad(key, &consumed.state_hash), sealed)
                    .map(PkceVerifier::from_secret)
            })
            .transpose()?;

        let sent_at = OffsetDateTime::now_utc();
        let response = client
            .exchange_code(&code, &consumed.redirect_uri, verifier.as_ref())
            .await
            .map_err(|e| exchange_error(e, provider, key.tenant().as_str()))?;

        // The associated data binds the generation, so the tokens are sealed for the generation
        // read just before the fenced write, and sealed again if the write finds it moved.
        let connections = self.inner.store.connections();
        let (mut rounds, mut pause) = (0, Duration::from_millis(100));
        let give_up_at = Instant::now() + STORE_RETRY_BUDGET;
        loop {
            let outcome = match connections.generation(key).await {
                Ok(replaces) => {
                    let (tokens, _) = tokens::seal_token_response(
                        &self.inner.keyring,
                        provider,
                        key,
                        replaces.map_or(1, |g| g + 1),
                        &response,
                        sent_at,
                        &consumed.scopes,
                    )?;
                    connections
                        .store_authorization(key, replaces, &tokens, Origin::Authorization)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => break,
                Err(StoreError::Fenced) if rounds + 1 < MAX_STORE_ROUNDS => rounds += 1,
                Err(StoreError::Fenced) => {
                    return Err(VaultError::Internal(
                        "the connection kept changing while a completed authorization was stored".into(),
                    ))
                }
                // The code is spent: a database blip must not throw its tokens away.
                Err(e) if e.is_unavailable() && Instant::now() < give_up_at => {
                    tracing::warn!(tenant_id = %key.tenant(), provider = %key.provider(), error = %e, "could not store a completed authorization; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.cache.remove(key);

        let refresh_token_issued = response.refresh_token.is_some();
        if refresh_token_issued {
            tracing::info!(tenant_id = %key.tenant(), provider = %key.provider(), "authorization completed");
        } else {
            tracing::warn!(
                tenant_id = %key.tenant(), provider = %key.provider(),
                offline_scope = ?provider.offline_scope,
                "authorization completed WITHOUT a refresh token: the connection will need a new authorization when the access token expires (was the offline scope granted?)"
            );
        }
        let access_token_expires_at = sent_at + response.expires_in.unwrap_or(provider.assumed_token_lifetime);
        Ok(AuthorizationCompleted {
            tenant_id: key.tenant().to_string(),
            provider: key.provider().to_string(),
            scopes: response.scope.unwrap_or(consumed.scopes),
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
