//! ImportConnection: a refresh token another system holds, stored as a connection of its own
//! (generation 1 for a new one), and validated with one refresh unless the caller says not to.
//!
//! What is stored, and why:
//!
//! * **The access token.** The one given is served until its expiry. Without one, an empty
//!   token is sealed with an expiry of the moment of import: never served (it is expired, and a
//!   refresh never adopts an expired token), so the first GetAccessToken refreshes. The column
//!   stays non-empty, so the hot path's read needs no second shape.
//! * **The refresh token's expiry is unknown.** The other system may have held it for weeks; a
//!   lifetime counted from the import would be optimistic. So `refresh_token_expires_at` stays
//!   unset and, where the provider's refresh tokens expire (`refresh_token_lifetime`), the
//!   keep-alive is due when the imported access token expires (at once without one): the keeper
//!   refreshes it soon, without killing a token in circulation, and from then on the connection
//!   has known lifetimes like any other. The validating refresh does the same at once.
//! * **A replaced connection** (reauthorization required, disconnected, or active with
//!   `replace_existing`) moves to the next generation, as a new authorization does; its history
//!   is kept, its refresh tokens marked superseded.
//!
//! Validation is a refresh through the ordinary refresher (lease, fencing, single flight), from
//! the generation just stored. An `invalid_grant` marks the connection
//! `reauthorization_required` (the imported row stays, for the record) and the call answers so.
//! A failure that says nothing about the token (the provider unavailable, an unknown outcome,
//! the caller's deadline) answers `validated = false`: the connection is stored and is
//! refreshed on first use; importing the same token again could present a token the provider
//! has already consumed, which Hydra answers by revoking the grant.

use std::time::Instant;

use secrecy::SecretString;
use time::OffsetDateTime;

use super::{ConnectionKey, ImportConnection, ImportedConnection, Vault, VaultError, MAX_SCOPES};
use crate::{
    crypto::{Aad, Purpose},
    oauth::is_valid_scope,
    store::{NewTokens, Origin, StoreError},
};

/// How many times storing an import starts over when the connection changed between reading
/// it and the fenced write.
const MAX_STORE_ROUNDS: usize = 8;

impl Vault {
    pub async fn import_connection(
        &self,
        key: ConnectionKey,
        req: ImportConnection,
        deadline: Option<Instant>,
    ) -> Result<ImportedConnection, VaultError> {
        let client = self.provider(&key)?.clone();
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
        let scopes = if req.scopes.is_empty() {
            provider.requested_scopes(&[])
        } else {
            req.scopes.clone()
        };

        let connections = self.inner.store.connections();
        let mut stored = None;
        for _ in 0..MAX_STORE_ROUNDS {
            let existing = connections.find(&key).await?;
            if let Some(row) = &existing {
                if row.is_active() && !req.replace_existing {
                    return Err(VaultError::ConnectionExists);
                }
            }
            let replaces = existing.map(|row| row.generation);
            let tokens = self.seal_import(&key, &req, replaces.map_or(1, |g| g + 1), &scopes, provider)?;
            match connections
                .store_authorization(&key, replaces, &tokens, Origin::Import)
                .await
            {
                Ok(_) => {
                    stored = Some((tokens.generation, replaces));
                    break;
                }
                Err(StoreError::Fenced) => {
                    // Fenced with the generation unchanged: a refresh of the connection holds
                    // its lease (a keep-alive, a caller, an earlier import's validation). Not
                    // replaced under it: answer busy rather than wait a whole lease.
                    let now = connections.generation(&key).await?;
                    if replaces.is_some() && now == replaces {
                        return Err(VaultError::ConnectionBusy {
                            retry_after: self.inner.refresher.policy().lease_ttl,
                        });
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some((generation, replaced)) = stored else {
            return Err(VaultError::Internal(
                "the connection kept changing while an import was stored".into(),
            ));
        };
        self.inner.cache.remove(&key);
        tracing::info!(tenant_id = %key.tenant(), provider = %key.provider(), generation, replaced_generation = ?replaced, "connection imported");

        let validated = if req.validate {
            match self
                .inner
                .refresher
                .refresh(key.clone(), client.clone(), generation, deadline)
                .await
            {
                Ok(_) => true,
                Err(e @ VaultError::ReauthorizationRequired { .. }) => {
                    tracing::warn!(tenant_id = %key.tenant(), provider = %key.provider(), "the provider rejected the imported refresh token");
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(tenant_id = %key.tenant(), provider = %key.provider(), error = %e, reason = e.reason(), "the imported refresh token could not be validated; it is stored and will be refreshed on first use");
                    false
                }
            }
        } else {
            false
        };
        let connection = connections
            .describe(&key)
            .await?
            .ok_or(VaultError::ConnectionNotFound)?
            .into();
        Ok(ImportedConnection {
            connection,
            validated,
            generation,
            replaced,
        })
    }

    /// The imported tokens, sealed for `generation` (the associated data binds it).
    fn seal_import(
        &self,
        key: &ConnectionKey,
        req: &ImportConnection,
        generation: i64,
        scopes: &[String],
        provider: &crate::oauth::ProviderConfig,
    ) -> Result<NewTokens, VaultError> {
        let now = OffsetDateTime::now_utc();
        let keyring = &self.inner.keyring;
        let aad = |purpose| Aad::for_connection(purpose, key, generation);
        let placeholder = SecretString::from("");
        let (access_token, expires_at) = match &req.access_token {
            Some((token, expires_at)) => (token, *expires_at),
            None => (&placeholder, now),
        };
        let access_token = keyring.seal_str(&aad(Purpose::AccessToken), access_token)?;
        let refresh_token = keyring.seal_str(&aad(Purpose::RefreshToken), &req.refresh_token)?;
        // The keep-alive matters only where refresh tokens expire; then it is due as soon as
        // no token in circulation would be killed by it.
        let keepalive_due_at = provider.refresh_token_lifetime.map(|_| expires_at.max(now));
        Ok(NewTokens {
            generation,
            scopes: scopes.to_vec(),
            token_type: "bearer".into(),
            access_token,
            access_token_issued_at: now.min(expires_at),
            access_token_expires_at: expires_at,
            refresh_token: Some(refresh_token),
            refresh_token_expires_at: None,
            keepalive_due_at,
        })
    }
}
