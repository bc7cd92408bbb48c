//! The vault's own refresh statements from a bare client, through `token_vault::store::Store`
//! itself: the reference that splits a refresh's cost into what the design's statements cost
//! and what the vault adds around them (gRPC, the cache, the single flight, the audit).
//!
//! - [`refresh_fleet`]: the refresh throughput scenario's second reference. Each refresh runs
//!   the statements the vault runs for an uncached expired token (read the row, take the
//!   lease, then after the token request store the new tokens), with a pool of the vault's
//!   size, sealing as the vault seals.
//! - [`refresh_once`]: the refresh latency rows' reference. One refresh's statements, one
//!   caller at a time, with the provider's delay between the lease and the store, timed
//!   statement by statement.
//! - [`write_burst`]: a refresh's writes only (the lease, then the store), many at once or one
//!   at a time: how one process's writes wait for each other on SQLite.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use token_vault::{
    connection_key::ConnectionKey,
    crypto::{Aad, Keyring, Purpose},
    store::{NewTokens, PoolOptions, RefreshCause, Store},
};

use crate::load::LoadResult;

/// Runs `work(i)` for every `i` in `0..count`, `in_flight` at a time, timing each.
pub async fn in_flight<F, Fut>(count: usize, in_flight: usize, work: F) -> LoadResult
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (work, next) = (work.clone(), next.clone());
            tokio::spawn(async move {
                let mut result = LoadResult::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return result;
                    }
                    let call_started = Instant::now();
                    work(i).await;
                    result.record(call_started.elapsed(), Ok(()));
                }
            })
        })
        .collect();
    let mut total = LoadResult::default();
    for w in workers {
        total.merge(w.await.expect("a worker panicked"));
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    total
}

/// A store on `database_url` with a pool of the vault's default size
/// (`database.max_connections`), so that the bare client spreads its statements over as many
/// connections as the vault does.
pub fn vault_sized_store(database_url: &str) -> Store {
    Store::connect_lazy(
        &secrecy::SecretString::from(database_url.to_owned()),
        &PoolOptions {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(30),
        },
    )
    .expect("a database URL")
}

/// Refreshes every tenant of `tenants` (seeded expired, generation 1, by `seed::expired`)
/// with the vault's statements, `in_flight` at a time. Also returns each step's mean time in
/// ms (read, lease, token request, store), waits for a pooled connection included.
pub async fn refresh_fleet(
    database_url: &str,
    keyring: Arc<Keyring>,
    provider_url: &str,
    tenants: Vec<String>,
    in_flight_count: usize,
) -> (LoadResult, [f64; 4]) {
    let store = vault_sized_store(database_url);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let token_url = Arc::new(format!("{provider_url}/oauth2/token"));
    let tenants = Arc::new(tenants);
    let count = tenants.len();
    let steps = Arc::new(Steps::default());
    let work = {
        let (store, steps) = (store.clone(), steps.clone());
        move |i: usize| {
            let (store, http, token_url, tenants, keyring, steps) = (
                store.clone(),
                http.clone(),
                token_url.clone(),
                tenants.clone(),
                keyring.clone(),
                steps.clone(),
            );
            async move {
                let mut step = Instant::now();
                let tenant = &tenants[i];
                let key = ConnectionKey::from_stored(tenant, "understory");
                let connections = store.connections();
                let row = connections.find(&key).await.expect("the read").expect("a seeded row");
                steps.add(0, &mut step);
                let leased = connections
                    .try_acquire_lease(&key, row.generation, uuid::Uuid::new_v4(), Duration::from_secs(45))
                    .await
                    .expect("the lease statement")
                    .expect("the lease is free");
                steps.add(1, &mut step);
                let sealed = leased.refresh_token.expect("a seeded refresh token");
                let presented = keyring
                    .open(
                        &Aad::for_generation(Purpose::RefreshToken, tenant, "understory", sealed.generation),
                        &sealed.token,
                    )
                    .expect("the refresh token opens");
                let answer = http
                    .post(token_url.as_str())
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &String::from_utf8_lossy(&presented)),
                        ("client_id", "bench"),
                    ])
                    .send()
                    .await
                    .expect("the provider answers");
                assert!(answer.status().is_success(), "the provider refreshes");
                let body: serde_json::Value = answer.json().await.expect("a JSON body");
                steps.add(2, &mut step);
                let field = |name: &str| body[name].as_str().expect("the token response's field").to_owned();
                let tokens = sealed_tokens(
                    &keyring,
                    tenant,
                    row.generation + 1,
                    &row.scopes,
                    &field("access_token"),
                    &field("refresh_token"),
                );
                connections
                    .store_refresh(leased.connection.id, row.generation, &tokens, RefreshCause::Caller)
                    .await
                    .expect("the store statement");
                steps.add(3, &mut step);
            }
        }
    };
    let result = in_flight(count, in_flight_count, work).await;
    // Each round opens a pool of its own: close it, or its connections outlive the round and
    // crowd the server's connection limit.
    store.close().await;
    (result, steps.means(count))
}

/// One refresh's statements as [`refresh_once`] timed them, in microseconds.
pub struct StatementTimes {
    /// The row's read: only on the path that starts from a token not cached.
    pub read: Option<u32>,
    pub lease: u32,
    pub store: u32,
}

impl StatementTimes {
    /// The statements' time in all: what the database's side of this refresh cost.
    pub fn total(&self) -> u32 {
        self.read.unwrap_or(0) + self.lease + self.store
    }
}

/// Runs the statements of one refresh of `tenant`'s connection as the vault runs them: for a
/// token stale in the cache (`generation` known, from the cached token) the lease first; for a
/// token not cached (`generation` `None`) the row's read, then the lease. Then `idle` stands in
/// for the token request (the database idles while the provider answers), and the new tokens,
/// sealed untimed, are stored. Each statement is timed on its own, so the figure is the
/// statements' only, as a bare client pays them, with none of the vault's code around them.
pub async fn refresh_once(
    store: &Store,
    keyring: &Keyring,
    tenant: &str,
    generation: Option<i64>,
    idle: Duration,
) -> StatementTimes {
    let key = ConnectionKey::from_stored(tenant, "understory");
    let connections = store.connections();
    let timed = |started: Instant| started.elapsed().as_micros() as u32;
    let (generation, read) = match generation {
        Some(generation) => (generation, None),
        None => {
            let started = Instant::now();
            let row = connections
                .find(&key)
                .await
                .expect("the read")
                .expect("a connected tenant");
            (row.generation, Some(timed(started)))
        }
    };
    let started = Instant::now();
    let leased = connections
        .try_acquire_lease(&key, generation, uuid::Uuid::new_v4(), Duration::from_secs(45))
        .await
        .expect("the lease statement")
        .expect("the lease is free");
    let lease = timed(started);
    tokio::time::sleep(idle).await;
    let tokens = made_up_tokens(keyring, tenant, generation + 1, &leased.connection.scopes);
    let started = Instant::now();
    connections
        .store_refresh(leased.connection.id, generation, &tokens, RefreshCause::Caller)
        .await
        .expect("the store statement");
    StatementTimes {
        read,
        lease,
        store: timed(started),
    }
}

/// The writes of a burst of refreshes from one process: for each of `tenants` (seeded at
/// generation 1), the lease and then the store of rotated tokens, `in_flight` at a time with no
/// token request between them, so that only the writes wait for each other. Each refresh's
/// time is the lease's and the store's together, waits included.
pub async fn write_burst(
    store: &Store,
    keyring: Arc<Keyring>,
    tenants: Vec<String>,
    in_flight_count: usize,
) -> LoadResult {
    let tenants = Arc::new(tenants);
    let count = tenants.len();
    let work = {
        let store = store.clone();
        move |i: usize| {
            let (store, keyring, tenants) = (store.clone(), keyring.clone(), tenants.clone());
            async move {
                let tenant = &tenants[i];
                let key = ConnectionKey::from_stored(tenant, "understory");
                let connections = store.connections();
                let leased = connections
                    .try_acquire_lease(&key, 1, uuid::Uuid::new_v4(), Duration::from_secs(45))
                    .await
                    .expect("the lease statement")
                    .expect("the lease is free");
                let tokens = made_up_tokens(&keyring, tenant, 2, &leased.connection.scopes);
                connections
                    .store_refresh(leased.connection.id, 1, &tokens, RefreshCause::Caller)
                    .await
                    .expect("the store statement");
            }
        }
    };
    in_flight(count, in_flight_count, work).await
}

/// Tokens for `tenant` at `generation` that no provider issued, of the scripted provider's sizes
/// (an access token of ~900 bytes), sealed as the vault stores them: for the statements that
/// store a refresh without asking the provider.
fn made_up_tokens(keyring: &Keyring, tenant: &str, generation: i64, scopes: &[String]) -> NewTokens {
    sealed_tokens(
        keyring,
        tenant,
        generation,
        scopes,
        &format!("{tenant}.{}", "a".repeat(860)),
        &format!("ory_rt_made_up_{tenant}_{generation}"),
    )
}

/// New tokens for `tenant` at `generation`, sealed as the vault seals them (access and refresh
/// token, each bound to its purpose and generation), valid for an hour.
fn sealed_tokens(
    keyring: &Keyring,
    tenant: &str,
    generation: i64,
    scopes: &[String],
    access_token: &str,
    refresh_token: &str,
) -> NewTokens {
    let seal = |purpose, text: &str| {
        keyring
            .seal(
                &Aad::for_generation(purpose, tenant, "understory", generation),
                text.as_bytes(),
            )
            .expect("sealing works")
    };
    let now = time::OffsetDateTime::now_utc();
    NewTokens {
        generation,
        scopes: scopes.to_vec(),
        token_type: "bearer".into(),
        access_token: seal(Purpose::AccessToken, access_token),
        access_token_issued_at: now,
        access_token_expires_at: now + time::Duration::hours(1),
        refresh_token: Some(seal(Purpose::RefreshToken, refresh_token)),
        refresh_token_expires_at: None,
        keepalive_due_at: None,
    }
}

/// Time spent in each step of the statements side, summed over its refreshes.
#[derive(Default)]
struct Steps([AtomicU64; 4]);

impl Steps {
    fn add(&self, step: usize, since: &mut Instant) {
        let now = Instant::now();
        self.0[step].fetch_add((now - *since).as_micros() as u64, Ordering::Relaxed);
        *since = now;
    }

    /// Each step's mean in ms: read, lease, token request, store.
    fn means(&self, count: usize) -> [f64; 4] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed) as f64 / 1000.0 / count.max(1) as f64)
    }
}
