//! DeleteConnection: revoke the refresh token at the provider, wipe every token the vault holds
//! for the connection, mark it disconnected.
//!
//! The order and why:
//!
//! * **The refresh exclusion first.** The disconnect takes the same lease a refresh takes
//!   (`connections.refresh_lease_until`), so it never runs beside a refresh on any replica: a
//!   refresh in flight stores its rotated token first, and the disconnect then revokes that,
//!   the newest one. A lease held by someone else is waited for (polled every
//!   `refresh.poll_interval`) for up to `refresh.lease_ttl`, the longest a refresh may hold it
//!   unless its store is failing; past that the answer is CONNECTION_BUSY, and nothing changed.
//! * **Revoke, then wipe.** The provider is asked to revoke while the token is still held; the
//!   local wipe happens whatever it answers (a provider that cannot be reached must not keep a
//!   customer connected), and the answer says what became of the revocation.
//! * **One fenced transaction.** The wipe moves the generation on, so a holder whose lease
//!   lapsed can never write tokens into a disconnected connection; it is fenced on the lease
//!   too, and if the fence fails (the lease lapsed during a slow revocation and a refresh ran)
//!   the disconnect goes round again with the newer token.
//! * **Owned.** The work runs as a task tracked like a refresh: a caller that gives up halfway
//!   does not leave a revoked token behind unwiped, and shutdown's drain waits for it.
//! * **This replica's cache** forgets the token at once; another replica may serve the
//!   (revoked) access token from its cache for up to `vault.cache_max_age`.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use uuid::Uuid;

use super::{tokens, ConnectionKey, Vault, VaultError};
use crate::{oauth::ProviderClient, store::DisconnectLease};

/// How many times a disconnect takes the lease again after its wipe was fenced out.
const MAX_ROUNDS: usize = 3;
/// The hint a CONNECTION_BUSY answer carries.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest pause between attempts to write the wipe while the database is unavailable.
const WIPE_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What became of the refresh token at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The revocation endpoint accepted it.
    Revoked,
    /// The provider has no revocation endpoint configured.
    NotConfigured,
    /// The revocation did not happen; a stable reason (no secret).
    Failed(&'static str),
    /// No refresh token was held.
    NoToken,
    /// Disconnected before; nothing was sent.
    AlreadyDisconnected,
}

impl Revocation {
    /// The `disconnected` event's reason.
    fn event_reason(&self) -> &'static str {
        match self {
            Revocation::Revoked => "revoked",
            Revocation::NotConfigured => "revocation_not_configured",
            Revocation::Failed(reason) => reason,
            Revocation::NoToken => "no_refresh_token",
            Revocation::AlreadyDisconnected => "already_disconnected",
        }
    }

    /// What the audit trail says of it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Revocation::Failed(_) => "failed",
            other => other.event_reason(),
        }
    }
}

/// DeleteConnection's answer.
#[derive(Debug)]
pub struct Disconnected {
    pub tenant_id: String,
    pub provider: String,
    pub revocation: Revocation,
    /// When the connection was disconnected (the first time, for a repeated call).
    pub disconnected_at: Option<OffsetDateTime>,
}

impl Vault {
    /// Disconnects `key`: see the module's documentation. Idempotent: a disconnected connection
    /// answers `AlreadyDisconnected` without contacting the provider.
    pub async fn delete_connection(&self, key: ConnectionKey) -> Result<Disconnected, VaultError> {
        let client = self.provider(&key)?.clone();
        let vault = self.clone();
        let task = self
            .inner
            .refresher
            .spawn_owned(async move { vault.disconnect(key, client).await })
            .ok_or(VaultError::ShuttingDown)?;
        task.await
            .unwrap_or_else(|e| Err(VaultError::Internal(format!("the disconnect task failed: {e}"))))
    }

    async fn disconnect(&self, key: ConnectionKey, client: ProviderClient) -> Result<Disconnected, VaultError> {
        let holder = Uuid::new_v4();
        let policy = self.inner.refresher.policy();
        let answer = |revocation, disconnected_at| Disconnected {
            tenant_id: key.tenant().as_str().to_owned(),
            provider: key.provider().as_str().to_owned(),
            revocation,
            disconnected_at,
        };
        for _ in 0..MAX_ROUNDS {
            let (connection_id, generation, refresh_token, leased_at) = match self.take_lease(&key, holder).await? {
                Taken::Lease {
                    connection_id,
                    generation,
                    refresh_token,
                    leased_at,
                } => (connection_id, generation, refresh_token, leased_at),
                Taken::Disconnected(at) => return Ok(answer(Revocation::AlreadyDisconnected, at)),
            };
            let revocation = if client.config().revocation_endpoint.is_none() {
                Revocation::NotConfigured
            } else if let Some(sealed) = refresh_token {
                match tokens::open_refresh_token(&self.inner.keyring, &key, sealed.generation, &sealed.token) {
                    Ok(token) => match client.revoke_refresh_token(&token).await {
                        Some(Ok(())) => Revocation::Revoked,
                        Some(Err(e)) => Revocation::Failed(e.reason()),
                        None => Revocation::NotConfigured,
                    },
                    Err(e) => {
                        // Wiped regardless: a token nobody can open is worth nothing to keep.
                        tracing::error!(tenant_id = %key.tenant(), provider = %key.provider(), error = %e, "the refresh token could not be opened for revocation");
                        Revocation::Failed(UNREADABLE)
                    }
                }
            } else {
                Revocation::NoToken
            };
            let last_error = match &revocation {
                Revocation::Failed(reason) => Some(*reason),
                _ => None,
            };
            let wiped = self
                .wipe(
                    connection_id,
                    generation,
                    holder,
                    last_error,
                    revocation.event_reason(),
                    leased_at + policy.lease_ttl,
                )
                .await?;
            if let Some(disconnected_at) = wiped {
                self.inner.cache.forget(key.clone(), generation + 1);
                tracing::info!(tenant_id = %key.tenant(), provider = %key.provider(), revocation = revocation.event_reason(), "disconnected");
                return Ok(answer(revocation, Some(disconnected_at)));
            }
            tracing::warn!(tenant_id = %key.tenant(), provider = %key.provider(), "the connection changed while it was being disconnected; going round again");
        }
        Err(VaultError::Internal(
            "the connection kept changing while it was being disconnected".into(),
        ))
    }

    /// Takes the refresh exclusion, waiting up to a lease's lifetime for another holder.
    async fn take_lease(&self, key: &ConnectionKey, holder: Uuid) -> Result<Taken, VaultError> {
        let policy = self.inner.refresher.policy();
        let give_up_at = Instant::now() + policy.lease_ttl + policy.poll_interval;
        loop {
            let sent = Instant::now();
            match self
                .inner
                .store
                .connections()
                .take_disconnect_lease(key, holder, policy.lease_ttl)
                .await?
            {
                DisconnectLease::NotFound => return Err(VaultError::ConnectionNotFound),
                DisconnectLease::AlreadyDisconnected { disconnected_at } => {
                    return Ok(Taken::Disconnected(disconnected_at))
                }
                DisconnectLease::Taken {
                    connection_id,
                    generation,
                    refresh_token,
                } => {
                    return Ok(Taken::Lease {
                        connection_id,
                        generation,
                        refresh_token,
                        leased_at: sent,
                    })
                }
                DisconnectLease::Busy if Instant::now() >= give_up_at => {
                    return Err(VaultError::ConnectionBusy {
                        retry_after: BUSY_RETRY_AFTER,
                    })
                }
                DisconnectLease::Busy => tokio::time::sleep(policy.poll_interval).await,
            }
        }
    }

    /// The wipe, retried while the database is unavailable and the lease still holds: the
    /// token may already be revoked at the provider, and leaving its ciphertext behind helps
    /// nobody. `None`: fenced out.
    async fn wipe(
        &self,
        connection_id: i64,
        generation: i64,
        holder: Uuid,
        last_error: Option<&str>,
        event_reason: &str,
        lease_ends: Instant,
    ) -> Result<Option<OffsetDateTime>, VaultError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .inner
                .store
                .connections()
                .disconnect(connection_id, generation, holder, last_error, event_reason)
                .await
            {
                Ok(done) => return Ok(done),
                Err(e) if e.is_unavailable() && Instant::now() + backoff < lease_ends => {
                    tracing::warn!(error = %e, "could not write a disconnect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(WIPE_RETRY_MAX_BACKOFF);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The revocation failure reason of a refresh token that could not be opened.
const UNREADABLE: &str = "revocation_token_unreadable";

enum Taken {
    Lease {
        connection_id: i64,
        generation: i64,
        refresh_token: Option<crate::store::CurrentRefreshToken>,
        leased_at: Instant,
    },
    Disconnected(Option<OffsetDateTime>),
}
