//! The load client: N HTTP/2 connections, M requests in flight spread over them, a warm-up,
//! then a fixed measuring window. Every answer's gRPC status is checked; latencies are kept
//! whole (microseconds) so percentiles are exact. Plaintext or TLS with a client certificate
//! ([`Target`]): the same client code either way, tonic's own TLS connector for the latter.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use token_vault::proto::{self, token_vault_client::TokenVaultClient};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A server the load client calls, and how: plaintext, or TLS with this client configuration.
#[derive(Clone)]
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub tls: Option<ClientTlsConfig>,
}

impl Target {
    /// An endpoint not yet connected. With TLS it holds a rustls client configuration (and so a
    /// session cache) of its own: its connection makes a full handshake.
    pub fn endpoint(&self) -> Endpoint {
        let endpoint = Endpoint::from_shared(match self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://{}", self.addr),
        })
        .expect("valid URI")
        .tcp_nodelay(true);
        match &self.tls {
            None => endpoint,
            Some(tls) => endpoint.tls_config(tls.clone()).expect("a client TLS configuration"),
        }
    }
}

#[derive(Clone, Copy)]
pub struct LoadShape {
    pub connections: usize,
    pub in_flight: usize,
    pub warm_up: Duration,
    pub measure: Duration,
    /// A bearer token to send as the caller's credentials, if the server wants one.
    pub bearer: Option<&'static str>,
}

/// One slice of load on the vault and one on its floor, taken back to back (in the resolution
/// rows, one gRPC floor process stands where the vault does).
pub struct Pair {
    pub vault: LoadResult,
    pub floor: LoadResult,
    /// Which of the two was loaded first, where a pair is two slices in turn ([`alternate`]).
    pub vault_first: Option<bool>,
}

impl Pair {
    /// The vault's requests/s as a fraction of the floor's.
    pub fn ratio(&self) -> f64 {
        self.vault.rps() / self.floor.rps()
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Calls sent, the warm-up's included (where the run counts them: [`alternate`]).
    pub sent: u64,
    /// Calls answered OK in the measured window.
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// Counts one call that took `took`.
    pub fn record(&mut self, took: Duration, answer: Result<(), tonic::Status>) {
        match answer {
            Ok(()) => {
                self.requests += 1;
                self.latencies_us
                    .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Err(status) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }

    /// Adds another worker's counts (latencies unsorted).
    pub fn merge(&mut self, other: LoadResult) {
        self.sent += other.sent;
        self.requests += other.requests;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
    }

    /// All of `results` as one run: their calls, latencies (sorted) and measured seconds.
    pub fn pooled<'a>(results: impl IntoIterator<Item = &'a LoadResult>) -> LoadResult {
        let mut total = LoadResult::default();
        for result in results {
            total.merge(result.clone());
            total.seconds += result.seconds;
        }
        total.latencies_us.sort_unstable();
        total
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map(|v| f64::from(*v) / 1000.0)
            .unwrap_or(f64::NAN)
    }
}

pub async fn channels(target: &Target, n: usize) -> Vec<TokenVaultClient<Channel>> {
    let endpoint = target.endpoint();
    let mut out = Vec::new();
    for _ in 0..n {
        let channel = endpoint.connect().await.expect("the server answers");
        out.push(TokenVaultClient::new(channel));
    }
    out
}

/// Which tenant worker `w` asks for in its `i`th call.
pub type PickTenant = Arc<dyn Fn(usize, u64) -> String + Send + Sync>;

/// Spreads the workers' calls over `tenants`: each worker steps through them 7 at a time from
/// a start of its own, so that calls in flight together ask for different tenants.
pub fn round_robin(tenants: Arc<Vec<String>>) -> PickTenant {
    Arc::new(move |w: usize, i: u64| tenants[(w + i as usize * 7) % tenants.len()].clone())
}

/// `count` tenant names, `prefix-000` on: a scenario's connected tenants.
pub fn tenant_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:03}")).collect()
}

/// `shape.in_flight` workers calling over `clients` for `settle + measure`; only the answers
/// of the last `measure` count. Worker `w`'s calls are numbered on from `next_call[w]`, which
/// is left where the worker stopped, so that slices of load keep stepping through the tenants.
/// Every worker's call in flight is answered before this returns.
async fn drive(
    clients: &[TokenVaultClient<Channel>],
    shape: LoadShape,
    tenant: &PickTenant,
    next_call: &mut [u64],
    settle: Duration,
    measure: Duration,
) -> LoadResult {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (w, &first) in next_call.iter().enumerate() {
        let mut client = clients[w % clients.len()].clone();
        let (measuring, stop, tenant) = (measuring.clone(), stop.clone(), tenant.clone());
        workers.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut i = first;
            while !stop.load(Ordering::Relaxed) {
                let mut request = tonic::Request::new(proto::GetAccessTokenRequest {
                    tenant_id: tenant(w, i),
                    ..Default::default()
                });
                if let Some(token) = shape.bearer {
                    let value = format!("Bearer {token}").parse().expect("a valid header value");
                    request.metadata_mut().insert("authorization", value);
                }
                i += 1;
                let started = Instant::now();
                let answer = client.get_access_token(request).await;
                let took = started.elapsed();
                let answer = answer.map(drop);
                // Errors count whenever they happen, the warm-up's and the settling's too;
                // answers and latencies only in the measured window.
                if answer.is_err() || measuring.load(Ordering::Relaxed) {
                    result.record(took, answer);
                }
            }
            result.sent = i - first;
            (result, i)
        }));
    }
    tokio::time::sleep(settle).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut total = LoadResult {
        seconds,
        ..Default::default()
    };
    for (worker, next) in workers.into_iter().zip(next_call.iter_mut()) {
        let (result, stopped_at) = worker.await.expect("a load worker panicked");
        total.merge(result);
        *next = stopped_at;
    }
    total.latencies_us.sort_unstable();
    total
}

/// How [`alternate`] slices a comparison.
#[derive(Clone, Copy)]
pub struct Slicing {
    /// Pairs of slices, one slice on each server per pair.
    pub pairs: usize,
    /// Load before a slice's measuring starts, while the calls in flight ramp up.
    pub settle: Duration,
    /// Each slice's measured window.
    pub measure: Duration,
}

/// Load on two servers in turn, over connections to each that stay open for the whole
/// comparison: `shape.warm_up` on both at once, then `slicing.pairs` pairs of one slice on each,
/// alternating which goes first (`b` in even pairs). Returns each pair's results, `a` as the
/// vault; `sent` and `errors` count every call sent and every error, the warm-up's in the first
/// pair's.
///
/// Why slices: this machine's speed drifts by 10 to 30 % over tens of seconds, and a ratio of
/// runs taken 8 s apart carries that drift. Slices of a second or two on open connections put
/// the two sides of a pair a couple of seconds apart, and many pairs give a median that one
/// noisy stretch cannot move.
pub async fn alternate(a: &Target, b: &Target, shape: LoadShape, tenant: PickTenant, slicing: Slicing) -> Vec<Pair> {
    // Neither side is set up first: the connections are opened in turn, one to each, and both
    // sides are warmed up at once. Setting up `a` fully before `b` (as the bench did) left the
    // two resolution rows, two floor processes compared in either place, both above 1 in five
    // of six runs (docs/performance.md, "The resolution in both places").
    let sides = [a, b];
    let mut clients = [Vec::new(), Vec::new()];
    for _ in 0..shape.connections {
        for (side, target) in sides.iter().enumerate() {
            clients[side].extend(channels(target, 1).await);
        }
    }
    let mut next_call = [vec![0; shape.in_flight], vec![0; shape.in_flight]];
    let [a_calls, b_calls] = &mut next_call;
    let (a_warm, b_warm) = tokio::join!(
        drive(&clients[0], shape, &tenant, a_calls, shape.warm_up, Duration::ZERO),
        drive(&clients[1], shape, &tenant, b_calls, shape.warm_up, Duration::ZERO),
    );
    let mut warm_ups = [a_warm, b_warm];
    let mut pairs = Vec::new();
    for pair in 0..slicing.pairs {
        let order = if pair % 2 == 0 { [1, 0] } else { [0, 1] };
        let mut results: [LoadResult; 2] = Default::default();
        for side in order {
            results[side] = drive(
                &clients[side],
                shape,
                &tenant,
                &mut next_call[side],
                slicing.settle,
                slicing.measure,
            )
            .await;
            if pair == 0 {
                // Not `LoadResult::merge`: the warm-up's zero-length measured window can catch
                // a few answers, which belong to no slice's seconds; only its calls sent and
                // its errors are added.
                let warm = std::mem::take(&mut warm_ups[side]);
                let slice = &mut results[side];
                slice.sent += warm.sent;
                slice.errors += warm.errors;
                if slice.first_error.is_none() {
                    slice.first_error = warm.first_error;
                }
            }
        }
        let [vault, floor] = results;
        pairs.push(Pair {
            vault,
            floor,
            vault_first: Some(order[0] == 0),
        });
    }
    pairs
}

/// One `GetAccessToken` call for each entry of `tenants`, in order, `in_flight` at a time over
/// `clients`; the result's window is from the first call to the last answer.
pub async fn each_once(
    clients: &[TokenVaultClient<Channel>],
    tenants: Arc<Vec<String>>,
    in_flight: usize,
) -> LoadResult {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let mut client = clients[w % clients.len()].clone();
            let (next, tenants) = (next.clone(), tenants.clone());
            tokio::spawn(async move {
                let mut result = LoadResult::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(tenant) = tenants.get(i) else {
                        return result;
                    };
                    let call_started = Instant::now();
                    let answer = client
                        .get_access_token(proto::GetAccessTokenRequest {
                            tenant_id: tenant.clone(),
                            ..Default::default()
                        })
                        .await;
                    result.record(call_started.elapsed(), answer.map(drop));
                }
            })
        })
        .collect();
    let mut total = LoadResult::default();
    for w in workers {
        total.merge(w.await.expect("a load worker panicked"));
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    total
}

/// `n` one-shot concurrent calls for one tenant; returns each call's latency and status. Each
/// call is a task of its own, timed from when it starts sending: polled together in one task,
/// the first call's request would wait until the client had prepared all `n`, and that wait
/// would be counted against the server.
pub async fn burst(
    clients: &[TokenVaultClient<Channel>],
    tenant: &str,
    n: usize,
) -> Vec<(Duration, Result<String, tonic::Code>)> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let tenant = tenant.to_owned();
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = client
                    .get_access_token(proto::GetAccessTokenRequest {
                        tenant_id: tenant,
                        ..Default::default()
                    })
                    .await;
                (
                    started.elapsed(),
                    answer.map(|r| r.into_inner().access_token).map_err(|s| s.code()),
                )
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for call in calls {
        out.push(call.await.expect("a call's task"));
    }
    out
}

/// What a new connection cost its caller: from the TCP connect through the TLS and HTTP/2
/// handshakes (`connected`) to the first GetAccessToken answered (`answered`).
#[derive(Clone, Copy)]
pub struct FirstAnswer {
    pub connected: Duration,
    pub answered: Duration,
}

/// One new connection on `endpoint` (prepared beforehand, so that building its client
/// configuration is not timed) and one GetAccessToken for `tenant` on it; the connection is
/// closed afterwards.
pub async fn first_answer(endpoint: Endpoint, tenant: String) -> FirstAnswer {
    let started = Instant::now();
    let channel = endpoint.connect().await.expect("a new connection");
    let connected = started.elapsed();
    TokenVaultClient::new(channel)
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: tenant,
            ..Default::default()
        })
        .await
        .expect("the first call on a new connection succeeds");
    FirstAnswer {
        connected,
        answered: started.elapsed(),
    }
}

/// A new connection on each of `endpoints` at once, each in a task of its own (as in
/// [`burst`], each timed from when its task starts), with its first call for `tenant`.
pub async fn first_answers(endpoints: Vec<Endpoint>, tenant: &str) -> Vec<FirstAnswer> {
    let calls: Vec<_> = endpoints
        .into_iter()
        .map(|endpoint| tokio::spawn(first_answer(endpoint, tenant.to_owned())))
        .collect();
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        out.push(call.await.expect("a new connection's task"));
    }
    out
}
