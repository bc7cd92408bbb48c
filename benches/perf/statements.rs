//! The refresh throughput scenario's second reference: the vault's own refresh path from a bare
//! client. Each refresh runs the store's statements the vault runs for an uncached expired
//! token (read the row, take the lease, then after the token request store the new tokens),
//! through `token_vault::store::Store` itself with a pool of the vault's size, sealing as the
//! vault seals. Beside the vault and the bare floor, it splits the gap between them into what
//! the design's statements cost (this side against the floor) and what the vault adds around
//! them (the vault against this side): gRPC, the cache, the single flight, the audit.

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
    let store = Store::connect_lazy(
        &secrecy::SecretString::from(database_url.to_owned()),
        &PoolOptions {
            // The vault's default `database.max_connections`.
            max_connections: 20,
            acquire_timeout: Duration::from_secs(30),
        },
    )
    .expect("a database URL");
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
                let generation = row.generation + 1;
                let seal = |purpose, field: &str| {
                    let text = body[field].as_str().expect("the token response's field");
                    keyring
                        .seal(
                            &Aad::for_generation(purpose, tenant, "understory", generation),
                            text.as_bytes(),
                        )
                        .expect("sealing works")
                };
                let now = time::OffsetDateTime::now_utc();
                let tokens = NewTokens {
                    generation,
                    scopes: row.scopes.clone(),
                    token_type: "bearer".into(),
                    access_token: seal(Purpose::AccessToken, "access_token"),
                    access_token_issued_at: now,
                    access_token_expires_at: now + time::Duration::hours(1),
                    refresh_token: Some(seal(Purpose::RefreshToken, "refresh_token")),
                    refresh_token_expires_at: None,
                    keepalive_due_at: None,
                };
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
