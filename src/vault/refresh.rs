//! Refreshing a connection: at most one refresh per connection at a time across every
//! replica, and a received refresh token is never thrown away.
//!
//! How the exclusion works, and why this design:
//!
//! * **In-process coalescing.** Callers in one process that need the same connection refreshed
//!   share one spawned refresh task. The task is detached from its callers, so a caller whose
//!   deadline passes leaves without cancelling the refresh the others wait on.
//! * **A lease in Postgres, with a fencing generation.** The task takes the exclusion by a
//!   guarded `UPDATE … SET refresh_lease_until = now() + ttl WHERE generation = $read AND the
//!   lease is free`. A lease, unlike a row lock or an advisory lock, survives the loss of the
//!   database connection: if the vault's connection is killed between the provider's answer and
//!   the commit, no other replica may start a refresh with the old (now used) refresh token,
//!   which Hydra would answer by revoking the customer's whole grant. It also lapses by itself
//!   if the holder dies, so a killed replica blocks refreshes for at most `lease_ttl`.
//! * **Timeouts are ordered.** Configuration refuses a `lease_ttl` that is not longer than the
//!   provider's whole retry budget (every attempt at its full timeout plus backoff), and the
//!   task never starts an attempt that could outlive its lease.
//! * **Fenced writes.** The refreshed tokens are written with `WHERE generation = $read`; a
//!   holder whose lease lapsed can never overwrite newer tokens.
//! * **Start from a generation, not a read.** A refresh starts from the generation whose
//!   access token is stale (a cached token's, or a row's just read). Taking the lease reads the
//!   connection and its refresh token in the same statement, so a caller holding a stale cached
//!   token reaches the provider after one round trip. If the lease is not taken, the connection
//!   is read: a moved generation means someone else refreshed, and their token is used.
//! * **Re-read after `invalid_grant`**: if the generation moved, someone else refreshed; their
//!   token is used and nothing is marked dead.
//! * **Never drop a received refresh token.** If the commit fails, the task keeps retrying it
//!   with backoff (extending its lease whenever the database answers) until the process is
//!   told to stop.
//! * **Owned, and drained on shutdown.** Refresh tasks are spawned on a `TaskTracker`. When the
//!   process is asked to stop, no refresh starts and no provider attempt begins, but a refresh
//!   that has its answer goes on storing it: `Refresher::drain` waits for every task, bounded by
//!   the lease, and only then may the process exit. Aborting a task between the provider's
//!   rotation and the commit would lose the only valid refresh token.
//! * **Ambiguous answers are not retried.** Hydra answers `invalid_request` "multiple concurrent
//!   requests" both when its own transaction failed and when another presenter already consumed
//!   the token; an answer lost after a 2xx means the token was consumed. Presenting the token
//!   again while another presenter may hold its successor is reuse, which revokes the grant. So
//!   the task re-reads the row (adopting a newer generation), watches it for as long as another
//!   presenter's request could take, and otherwise keeps the lease until it lapses, marks the
//!   connection `refresh_outcome_unknown` and answers `REFRESH_OUTCOME_UNKNOWN`. Once the lease
//!   has lapsed no vault presenter can still hold a successor, and the next refresh presents the
//!   token again: the only way on (a provider with a reuse grace period answers it; one without
//!   revokes a grant nobody can use any more).
//! * **Adopt before refreshing again.** After a lost race (a fenced write, an `invalid_grant`
//!   or a failed mark with the generation moved) the task starts over from the generation it
//!   refreshed from, so the newer token is adopted if it is still valid instead of being
//!   refreshed away from the callers who just received it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use time::OffsetDateTime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    access, authorize::provider_error, cache::CacheKey, cache::TokenCache, single_flight::SingleFlight, tokens,
    AccessToken, VaultError,
};
use crate::{
    crypto::SharedKeyring,
    oauth::{AmbiguousCause, ProviderClient, TokenError},
    store::{ConnectionRow, CurrentRefreshToken, Leased, Store, StoreError},
};

/// Time kept free at the end of a lease: no provider attempt may start unless it (at its full
/// timeout) ends this long before the lease does.
const LEASE_SAFETY: Duration = Duration::from_secs(1);
/// How many times one refresh task goes round after finding the connection changed under it.
const MAX_ROUNDS: usize = 8;

pub(super) struct RefreshPolicy {
    pub lease_ttl: Duration,
    pub poll_interval: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub store_retry_max_backoff: Duration,
}

/// Counters of what refreshes did; exported as metrics and read by tests.
#[derive(Debug, Default)]
pub struct RefreshMetrics {
    /// Token-endpoint requests made for refreshes.
    pub provider_requests: AtomicU64,
    pub succeeded: AtomicU64,
    /// Refreshes that found another holder's token and used it.
    pub adopted: AtomicU64,
    pub failed: AtomicU64,
    pub marked_reauthorization_required: AtomicU64,
    /// Failed attempts to store a received token (each retried).
    pub unsaved_rotation_retries: AtomicU64,
    /// Provider answers that may mean the refresh token was consumed (a concurrent presenter,
    /// or an answer lost after success) and that no newer generation explained.
    pub outcome_unknown: AtomicU64,
}

type SharedRefresh = Shared<BoxFuture<'static, Result<AccessToken, VaultError>>>;

pub(super) struct Refresher {
    inner: Arc<RefresherInner>,
    /// The refresh task in flight per connection.
    flights: SingleFlight<CacheKey, Result<AccessToken, VaultError>>,
    /// Every refresh task, so that shutdown can wait for them.
    tasks: TaskTracker,
}

struct RefresherInner {
    store: Store,
    keyring: SharedKeyring,
    cache: TokenCache,
    policy: RefreshPolicy,
    /// This process's identity as a lease holder.
    holder: Uuid,
    /// Fired when the process is asked to stop: no refresh starts, no provider attempt begins,
    /// nobody waits for a lease any more. Storing a received token goes on.
    draining: CancellationToken,
    /// Fired when the drain's budget is spent: the only thing that ends a store retry loop.
    shutdown: CancellationToken,
    metrics: RefreshMetrics,
}

/// What trying to take the exclusion found.
enum Acquired {
    /// The lease is ours: the connection under it and the refresh token to present.
    Lease(Leased),
    /// Another holder refreshed meanwhile: its token, still valid.
    Theirs(AccessToken),
}

/// How one round under the lease ended.
enum Round {
    Done(AccessToken),
    /// The connection changed under us: read it again and decide again.
    Again,
}

impl Refresher {
    pub fn new(
        store: Store,
        keyring: SharedKeyring,
        cache: TokenCache,
        policy: RefreshPolicy,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(RefresherInner {
                store,
                keyring,
                cache,
                policy,
                holder: Uuid::new_v4(),
                draining: CancellationToken::new(),
                shutdown,
                metrics: RefreshMetrics::default(),
            }),
            // A refresh in flight is always joined: it is bounded by its lease, and starting a
            // second one beside it in this process would only wait on that lease.
            flights: SingleFlight::new(Duration::MAX),
            tasks: TaskTracker::new(),
        }
    }

    /// From now on no refresh starts and no provider attempt begins; refreshes already holding
    /// an answer go on storing it.
    pub fn stop_starting(&self) {
        self.inner.draining.cancel();
        self.tasks.close();
    }

    /// Stops starting refreshes and waits, up to `budget`, for those in flight to end (a
    /// received refresh token stored). Returns how many were still running when the budget
    /// ran out; the caller then fires the shutdown token, which abandons their store retries.
    pub async fn drain(&self, budget: Duration) -> usize {
        self.stop_starting();
        if self.tasks.is_empty() {
            return 0;
        }
        tracing::info!(
            refreshes = self.tasks.len(),
            ?budget,
            "waiting for refreshes in flight to finish"
        );
        match tokio::time::timeout(budget, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }

    pub fn metrics(&self) -> &RefreshMetrics {
        &self.inner.metrics
    }

    /// Joins the refresh in flight for `key`, or starts one from `generation` (the generation
    /// whose access token is stale); waits for it until `deadline`.
    pub async fn refresh(
        &self,
        key: CacheKey,
        client: ProviderClient,
        generation: i64,
        deadline: Option<Instant>,
    ) -> Result<AccessToken, VaultError> {
        let inner = self.inner.clone();
        let task_key = key.clone();
        // The task outlives its first caller, but its span still descends from that caller's
        // RPC span, so the provider call shows up in its trace.
        let span = tracing::info_span!(
            "vault.refresh",
            otel.name = "refresh",
            tenant_id = %key.tenant_id(),
            provider = %key.provider(),
        );
        let running = self.flights.run_detached(
            key,
            &self.tasks,
            !self.inner.draining.is_cancelled(),
            move || {
                async move { inner.run(&task_key, &client, generation).await }
                    .instrument(span)
                    .boxed()
            },
            |panic| Err(VaultError::Internal(format!("the refresh task failed: {panic}"))),
        );
        match running {
            Some(running) => wait(running, deadline).await,
            None => Err(VaultError::ShuttingDown),
        }
    }

    /// Joins the refresh in flight for `key`, if there is one. Callers holding a stale cached
    /// token ask this first, so a stampede waits on the refresh instead of queueing for the
    /// database one read each.
    pub async fn join(&self, key: &CacheKey, deadline: Option<Instant>) -> Option<Result<AccessToken, VaultError>> {
        let running = self.flights.joinable(key)?;
        Some(wait(running, deadline).await)
    }
}

async fn wait(refresh: SharedRefresh, deadline: Option<Instant>) -> Result<AccessToken, VaultError> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), refresh)
            .await
            .unwrap_or(Err(VaultError::DeadlineExceeded)),
        None => refresh.await,
    }
}

impl RefresherInner {
    async fn run(
        &self,
        key: &CacheKey,
        client: &ProviderClient,
        mut generation: i64,
    ) -> Result<AccessToken, VaultError> {
        let result = async {
            for _ in 0..MAX_ROUNDS {
                match self.acquire(key, &mut generation).await? {
                    Acquired::Theirs(token) => {
                        self.metrics.adopted.fetch_add(1, Ordering::Relaxed);
                        return Ok(token);
                    }
                    Acquired::Lease(leased) => {
                        match self
                            .refresh_under_lease(key, client, &leased.connection, leased.refresh_token)
                            .await?
                        {
                            Round::Done(token) => return Ok(token),
                            // Start over from the generation this round refreshed: taking the
                            // lease on it fails, the re-read finds the newer generation, and a
                            // still valid token there is adopted rather than refreshed away.
                            Round::Again => generation = leased.connection.generation,
                        }
                    }
                }
            }
            Err(VaultError::Internal(
                "the connection kept changing during a refresh; giving up this round".into(),
            ))
        }
        .await;
        match &result {
            Ok(token) => self.cache.put(key.clone(), token.clone()),
            Err(_) => {
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn reread(&self, key: &CacheKey) -> Result<ConnectionRow, VaultError> {
        access::active_connection(&self.store, key.tenant_id(), key.provider()).await
    }

    /// Takes the lease (with the refresh token to use), or returns the token someone else
    /// refreshed meanwhile.
    async fn acquire(&self, key: &CacheKey, generation: &mut i64) -> Result<Acquired, VaultError> {
        // A database blip while waiting is ridden out for up to a lease's lifetime: the callers
        // are bounded by their own deadlines, and answering all of them UNAVAILABLE because a
        // restart took a second helps nobody.
        let give_up_at = Instant::now() + self.policy.lease_ttl;
        let mut waiting_since = None;
        loop {
            if self.draining.is_cancelled() {
                return Err(VaultError::ShuttingDown);
            }
            match self.try_acquire(key, generation).await {
                Ok(Some(outcome)) => {
                    if let Some(since) = waiting_since {
                        crate::metrics::get()
                            .lease_wait_duration
                            .record(Instant::elapsed(&since).as_secs_f64(), &[]);
                    }
                    return Ok(outcome);
                }
                Ok(None) => {
                    waiting_since.get_or_insert_with(Instant::now);
                }
                Err(VaultError::StoreUnavailable) if Instant::now() < give_up_at => {}
                Err(e) => return Err(e),
            };
            let pause = jitter(self.policy.poll_interval);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.draining.cancelled() => return Err(VaultError::ShuttingDown),
            }
        }
    }

    /// One look; `None` while another holder is still at it. Moves `generation` on when the
    /// connection has moved on.
    async fn try_acquire(&self, key: &CacheKey, generation: &mut i64) -> Result<Option<Acquired>, VaultError> {
        let connections = self.store.connections();
        loop {
            if let Some(leased) = connections
                .try_acquire_lease(
                    key.tenant_id(),
                    key.provider(),
                    *generation,
                    self.holder,
                    self.policy.lease_ttl,
                )
                .await?
            {
                return Ok(Some(Acquired::Lease(leased)));
            }
            let fresh = self.reread(key).await?;
            let moved = fresh.generation != *generation;
            *generation = fresh.generation;
            if !moved {
                return Ok(None);
            }
            // Someone else refreshed. Their token is used as long as it has not expired, even
            // if it is shorter-lived than the margin asks: refreshing again would kill it for
            // whoever already holds it. An expired one is refreshed from the new generation.
            let token = tokens::open_access_token(&self.keyring, &fresh)?;
            if token.expires_at > OffsetDateTime::now_utc() {
                return Ok(Some(Acquired::Theirs(token)));
            }
        }
    }

    /// One refresh while holding the lease on `row.generation`, with the refresh token read
    /// when the lease was taken.
    async fn refresh_under_lease(
        &self,
        key: &CacheKey,
        client: &ProviderClient,
        row: &ConnectionRow,
        current: Option<CurrentRefreshToken>,
    ) -> Result<Round, VaultError> {
        let lease_taken = Instant::now();
        let provider = client.config();
        let Some(current) = current else {
            tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, "the access token expired and no refresh token is held");
            return self.mark_dead(key, row, "no_refresh_token").await;
        };
        let refresh_token = match tokens::open_refresh_token(
            &self.keyring,
            &row.tenant_id,
            &row.provider,
            current.generation,
            &current.token,
        ) {
            Ok(t) => t,
            Err(e) => {
                self.release(row).await;
                return Err(e);
            }
        };

        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.draining.is_cancelled() {
                // Nothing was presented in this attempt yet: another replica takes over.
                self.release(row).await;
                return Err(VaultError::ShuttingDown);
            }
            let sent_at = OffsetDateTime::now_utc();
            self.metrics.provider_requests.fetch_add(1, Ordering::Relaxed);
            let error = match client.refresh(&refresh_token).await {
                Ok(response) => {
                    let (new_tokens, token) = tokens::seal_token_response(
                        &self.keyring,
                        provider,
                        &row.tenant_id,
                        row.generation + 1,
                        &response,
                        sent_at,
                        &row.scopes,
                    )?;
                    return self.store_refreshed(row, &new_tokens, token).await;
                }
                Err(e) => e,
            };
            match error {
                TokenError::Transient {
                    cause,
                    retry_after,
                    http_status,
                } => {
                    // A provider's Retry-After is advice, capped at the lease: nothing here may
                    // wait longer than the exclusion it holds, and no arithmetic may overflow.
                    let retry_after = retry_after.map(|d| d.min(self.policy.lease_ttl));
                    let backoff = retry_after
                        .unwrap_or_else(|| jitter(self.policy.backoff.saturating_mul(1 << (attempt - 1).min(16))));
                    let next_attempt_ends = lease_taken
                        .elapsed()
                        .saturating_add(backoff)
                        .saturating_add(provider.request_timeout)
                        .saturating_add(LEASE_SAFETY);
                    if attempt < self.policy.max_attempts && next_attempt_ends < self.policy.lease_ttl {
                        tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, ?http_status, attempt, "refresh attempt failed transiently; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.draining.cancelled() => {}
                        }
                        continue;
                    }
                    tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, ?http_status, attempt, "refresh failed transiently; the connection stays active");
                    self.release(row).await;
                    return Err(VaultError::ProviderUnavailable {
                        retry_after: Some(retry_after.unwrap_or(self.policy.backoff)),
                    });
                }
                TokenError::Ambiguous { cause, http_status } => {
                    return self
                        .after_ambiguous_answer(key, row, provider.request_timeout, lease_taken, cause, http_status)
                        .await;
                }
                TokenError::InvalidGrant(err) => {
                    // A moved generation means another holder won a race: not a dead grant.
                    let fresh = self.reread(key).await?;
                    if fresh.generation != row.generation {
                        tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, "invalid_grant after another holder refreshed; using its token");
                        return Ok(Round::Again);
                    }
                    tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, description = ?err.description, "the provider rejected the refresh token; the connection needs a new authorization");
                    return self.mark_dead(key, row, "invalid_grant").await;
                }
                other => {
                    self.release(row).await;
                    return Err(provider_error(other, provider, &row.tenant_id));
                }
            }
        }
    }

    /// After an answer that may mean the refresh token was consumed: never present it again
    /// while another presenter may hold its successor. Watches the row for another holder's
    /// write for as long as that holder's request could still be answered (bounded by the
    /// lease); if none lands, keeps the lease until it lapses and says the outcome is unknown.
    async fn after_ambiguous_answer(
        &self,
        key: &CacheKey,
        row: &ConnectionRow,
        request_timeout: Duration,
        lease_taken: Instant,
        cause: AmbiguousCause,
        http_status: Option<u16>,
    ) -> Result<Round, VaultError> {
        tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, ?http_status, "the provider's answer may mean the refresh token was consumed; it is not presented again while another presenter may hold its successor");
        let lease_ends = lease_taken + self.policy.lease_ttl.saturating_sub(LEASE_SAFETY);
        let watch_until = (Instant::now() + request_timeout + LEASE_SAFETY).min(lease_ends);
        loop {
            match self.reread(key).await {
                Ok(fresh) if fresh.generation != row.generation => {
                    tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, "another presenter's refresh landed; using its token");
                    return Ok(Round::Again);
                }
                Ok(_) | Err(VaultError::StoreUnavailable) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= watch_until || self.draining.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(jitter(self.policy.poll_interval.max(Duration::from_millis(20)))) => {}
                _ = self.draining.cancelled() => {}
            }
        }
        self.metrics.outcome_unknown.fetch_add(1, Ordering::Relaxed);
        // The lease is kept, not released: no replica presents this token before it lapses.
        if let Err(e) = self
            .store
            .connections()
            .note_refresh_outcome_unknown(row.id, row.generation, self.holder)
            .await
        {
            tracing::warn!(tenant_id = %row.tenant_id, error = %e, "could not record the unknown refresh outcome on the connection");
        }
        tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, ?cause, "refresh outcome unknown: the refresh token is held back until the lease lapses; if the provider consumed it, the connection will need a new authorization");
        Err(VaultError::RefreshOutcomeUnknown {
            retry_after: lease_ends.saturating_duration_since(Instant::now()) + LEASE_SAFETY,
        })
    }

    /// Commits the refreshed tokens, retrying until it works or the process stops: the
    /// provider has already retired the old refresh token, so this one is the only one left.
    async fn store_refreshed(
        &self,
        row: &ConnectionRow,
        new_tokens: &crate::store::NewTokens,
        token: AccessToken,
    ) -> Result<Round, VaultError> {
        let connections = self.store.connections();
        let mut pause = Duration::from_millis(50);
        let mut failures = 0u64;
        loop {
            match connections.store_refresh(row.id, row.generation, new_tokens).await {
                Ok(()) => {
                    self.metrics.succeeded.fetch_add(1, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::warn!(tenant_id = %row.tenant_id, provider = %row.provider, failures, "the refreshed token was stored after retries");
                    } else {
                        tracing::info!(tenant_id = %row.tenant_id, provider = %row.provider, generation = new_tokens.generation, "refreshed");
                    }
                    return Ok(Round::Done(token));
                }
                Err(StoreError::Fenced) => {
                    tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, "the connection changed while refreshing (re-authorized, or this replica's lease lapsed); the tokens this refresh received are discarded");
                    return Ok(Round::Again);
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.unsaved_rotation_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, failures, error = %e, "a refreshed token could not be stored; retrying (it must not be lost)");
                    // Keep the exclusion alive whenever the database answers, so no other
                    // replica refreshes with the refresh token the provider has just retired.
                    let _ = connections
                        .extend_lease(row.id, row.generation, self.holder, self.policy.lease_ttl)
                        .await;
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(pause)) => {}
                        _ = self.shutdown.cancelled() => {
                            tracing::error!(tenant_id = %row.tenant_id, provider = %row.provider, "stopping with a refreshed token NOT stored: this connection will likely need a new authorization");
                            return Err(VaultError::ShuttingDown);
                        }
                    }
                    pause = (pause * 2).min(self.policy.store_retry_max_backoff);
                }
            }
        }
    }

    async fn mark_dead(&self, key: &CacheKey, row: &ConnectionRow, reason: &str) -> Result<Round, VaultError> {
        if !self
            .store
            .connections()
            .mark_reauthorization_required(row.id, row.generation, reason)
            .await?
        {
            return Ok(Round::Again);
        }
        self.cache.remove(key);
        self.metrics
            .marked_reauthorization_required
            .fetch_add(1, Ordering::Relaxed);
        Err(VaultError::ReauthorizationRequired { reason: reason.into() })
    }

    async fn release(&self, row: &ConnectionRow) {
        if let Err(e) = self.store.connections().release_lease(row.id, self.holder).await {
            tracing::warn!(tenant_id = %row.tenant_id, error = %e, "could not release the refresh lease; it will lapse by itself");
        }
    }
}

/// A random duration between half and all of `d` ("equal jitter"), so that replicas and
/// retries spread out.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}
