//! Refreshing a connection: at most one refresh per connection at a time across every
//! replica, and a received refresh token is never thrown away.
//!
//! This file coalesces refreshes into one owned task per connection and drains them at
//! shutdown; [`lease`] takes the exclusion in Postgres; [`round`] talks to the provider and
//! commits what it received.
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
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

mod lease;
mod round;

use lease::Acquired;
use round::Round;

use super::{cache::TokenCache, coalesce::Coalescer, failover::FailoverGuard, AccessToken, ConnectionKey, VaultError};
use crate::{
    crypto::SharedKeyring,
    metrics::RefreshCounters,
    oauth::ProviderClient,
    store::{RefreshCause, Store},
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

type SharedRefresh = Shared<BoxFuture<'static, Result<AccessToken, VaultError>>>;

pub(super) struct Refresher {
    inner: Arc<RefresherInner>,
    /// The refresh task in flight per connection.
    flights: Coalescer<ConnectionKey, Result<AccessToken, VaultError>>,
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
    metrics: Arc<RefreshCounters>,
    /// The rotations kept for write-back, and what the database's identity means.
    failover: Arc<FailoverGuard>,
}

impl Refresher {
    pub fn new(
        store: Store,
        keyring: SharedKeyring,
        cache: TokenCache,
        policy: RefreshPolicy,
        shutdown: CancellationToken,
        failover: Arc<FailoverGuard>,
        metrics: Arc<RefreshCounters>,
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
                metrics,
                failover,
            }),
            // A refresh in flight is always joined: it is bounded by its lease, and starting a
            // second one beside it in this process would only wait on that lease.
            flights: Coalescer::new(Duration::MAX),
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

    /// Fired when refreshes stop starting (shutdown): the keeper stops with it.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.draining.clone()
    }

    pub fn metrics(&self) -> &Arc<RefreshCounters> {
        &self.inner.metrics
    }

    pub fn policy(&self) -> &RefreshPolicy {
        &self.inner.policy
    }

    /// Runs `work` as a task owned like a refresh: it goes on when its caller leaves, and
    /// shutdown's drain waits for it. `None` once the process is draining: nothing new starts.
    /// For work that holds the refresh exclusion (a disconnect), which, like a refresh, must
    /// not stop halfway.
    pub fn spawn_owned<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<T>> {
        if self.inner.draining.is_cancelled() {
            return None;
        }
        Some(self.tasks.spawn(work))
    }

    /// Joins the refresh in flight for `key`, or starts one from `generation` (the generation
    /// whose access token is stale); waits for it until `deadline`.
    pub async fn refresh(
        &self,
        key: ConnectionKey,
        client: ProviderClient,
        generation: i64,
        deadline: Option<Instant>,
    ) -> Result<AccessToken, VaultError> {
        self.refresh_because(key, client, generation, RefreshCause::Caller, deadline)
            .await
    }

    /// [`Self::refresh`], saying who asked: the cause is recorded with the stored tokens (a
    /// keep-alive writes its connection event). A refresh already in flight is joined
    /// whoever started it. From the connection's current generation the lease is taken and
    /// the token refreshed even though the access token is still valid: only a moved
    /// generation (someone else refreshed) is adopted instead.
    pub async fn refresh_because(
        &self,
        key: ConnectionKey,
        client: ProviderClient,
        generation: i64,
        cause: RefreshCause,
        deadline: Option<Instant>,
    ) -> Result<AccessToken, VaultError> {
        let inner = self.inner.clone();
        let task_key = key.clone();
        let running = self.flights.run_detached(
            key,
            &self.tasks,
            !self.inner.draining.is_cancelled(),
            move || {
                // Made only for a refresh that starts: a caller joining one in flight would
                // otherwise leave an empty `refresh` span in its trace (49 of them for 50
                // callers in `callers_joining_a_refresh_in_flight_add_no_refresh_span`). The
                // task outlives its first caller, but its span still descends from that
                // caller's RPC span (current here, as this runs before `run_detached`
                // returns), so the provider call shows up in its trace.
                let span = tracing::info_span!(
                    "vault.refresh",
                    otel.name = "refresh",
                    tenant_id = %task_key.tenant(),
                    provider = %task_key.provider(),
                );
                async move { inner.run(&task_key, &client, generation, cause).await }
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
    pub async fn join(
        &self,
        key: &ConnectionKey,
        deadline: Option<Instant>,
    ) -> Option<Result<AccessToken, VaultError>> {
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
        key: &ConnectionKey,
        client: &ProviderClient,
        mut generation: i64,
        cause: RefreshCause,
    ) -> Result<AccessToken, VaultError> {
        let result = async {
            for _ in 0..MAX_ROUNDS {
                match self.acquire(key, &mut generation).await? {
                    Acquired::Theirs(token) => {
                        self.metrics.adopted.fetch_add(1, Ordering::Relaxed);
                        return Ok(token);
                    }
                    Acquired::Lease(leased, lease_taken) => {
                        match self
                            .refresh_under_lease(
                                key,
                                client,
                                &leased.connection,
                                leased.refresh_token,
                                lease_taken,
                                cause,
                            )
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
}

/// A random duration between half and all of `d` ("equal jitter"), so that replicas and
/// retries spread out.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}
