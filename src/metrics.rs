//! The vault's metrics, as OpenTelemetry instruments named and measured per the semantic
//! conventions (`tokenvault.*`, durations in seconds). Without an exporter configured they are
//! no-ops. See the README for the list.

use std::sync::{atomic::AtomicU64, Arc, Mutex, OnceLock};

use opentelemetry::{
    metrics::{Counter, Gauge, Histogram, Meter},
    KeyValue,
};

pub struct Metrics {
    /// GetAccessToken calls by `outcome` (`ok` or the error reason) and `source` (`cache`,
    /// `database`, `refresh`; empty on errors before a source was reached).
    pub access_token_requests: Counter<u64>,
    /// Token-endpoint requests by `provider`, `grant_type` and `outcome`.
    pub provider_request_duration: Histogram<f64>,
    /// How long a refresh waited for another replica's lease.
    pub lease_wait_duration: Histogram<f64>,
    /// Times a provider rejected the client secret in use (`invalid_client`) and another
    /// configured secret worked, by `provider`: during a rotation, one per replica.
    pub client_secret_switches: Counter<u64>,
    /// Which configured client secret a provider's requests try first, by `provider`: its
    /// position in `client_secret_files`, from 1.
    pub client_secret_in_use: Gauge<u64>,
    /// Re-reads of changed client-secret files by `provider` and `outcome` (`reloaded`,
    /// `refused`: a file unreadable or empty, the secrets in place kept).
    pub client_secret_reloads: Counter<u64>,
    /// Re-reads of the listener's changed security files by `what` (`server_certificate`,
    /// `client_ca`, `policy`) and `outcome` (`reloaded`, `refused`: the file unreadable or
    /// invalid, the one in place kept).
    pub reloads: Counter<u64>,
}

/// Counters of what refreshes did, kept by the vault's refresh tasks; exported by `observe` and
/// read by tests.
#[derive(Debug, Default)]
pub struct RefreshCounters {
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
    /// Changes of database seen (a failover or a restore), by this replica first.
    pub database_changes: AtomicU64,
    /// Rotations this replica wrote back after the database lost them.
    pub written_back: AtomicU64,
    /// Rotations the database lost that no replica wrote back: the connection was marked
    /// `rotation_lost`.
    pub rotations_lost: AtomicU64,
    /// Keep-alive refreshes this replica's keeper started (or joined), and how they ended:
    /// succeeded (the connection has a fresh refresh token, by this refresh or another's) or
    /// failed (retried after `keepalive.claim_ttl`, or the connection was marked dead).
    pub keepalive_started: AtomicU64,
    pub keepalive_succeeded: AtomicU64,
    pub keepalive_failed: AtomicU64,
    /// Superseded refresh tokens whose ciphertext this replica's sweeper purged.
    pub retention_purged: AtomicU64,
    /// 1 while the database confirms commits on a synchronous standby, 0 while it does not
    /// (a failover may then lose commits), 2 before the first check.
    pub synchronous_standby: AtomicU64,
}

pub fn meter() -> Meter {
    opentelemetry::global::meter("token-vault")
}

/// The instruments, created from the global meter provider on first use: telemetry must be
/// initialised before the first call is served, which `main` does.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meter();
        Metrics {
            access_token_requests: meter
                .u64_counter("tokenvault.access_token.requests")
                .with_unit("{request}")
                .with_description("GetAccessToken calls, by outcome and by where the token came from")
                .build(),
            provider_request_duration: meter
                .f64_histogram("tokenvault.provider.request.duration")
                .with_unit("s")
                .with_description("Duration of token-endpoint requests")
                .with_boundaries(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .build(),
            lease_wait_duration: meter
                .f64_histogram("tokenvault.refresh.lease_wait.duration")
                .with_unit("s")
                .with_description("Time a refresh waited on another replica's refresh exclusion")
                .with_boundaries(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .build(),
            client_secret_switches: meter
                .u64_counter("tokenvault.provider.client_secret_switches")
                .with_unit("{switch}")
                .with_description(
                    "Times the client secret in use was rejected (invalid_client) and another configured one worked",
                )
                .build(),
            client_secret_in_use: meter
                .u64_gauge("tokenvault.provider.client_secret_in_use")
                .with_unit("1")
                .with_description("Position (from 1) of the configured client secret tried first")
                .build(),
            client_secret_reloads: meter
                .u64_counter("tokenvault.provider.client_secret_reloads")
                .with_unit("{reload}")
                .with_description("Re-reads of changed client-secret files by outcome: reloaded, refused")
                .build(),
            reloads: meter
                .u64_counter("tokenvault.reloads")
                .with_unit("{reload}")
                .with_description(
                    "Re-reads of the changed server certificate, client CA and caller policy by outcome: reloaded, refused",
                )
                .build(),
        }
    })
}

pub fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// Registers the instruments whose values are read when exported: the refresh counters kept by
/// the vault, and the connection counts kept fresh by `startup`. The returned handles keep the
/// callbacks registered.
pub fn observe(
    refreshes: Arc<RefreshCounters>,
    connection_counts: Arc<Mutex<Vec<(String, i64)>>>,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    use std::sync::atomic::Ordering::Relaxed;
    let meter = meter();
    let outcomes = {
        let m = refreshes.clone();
        meter
            .u64_observable_counter("tokenvault.refreshes")
            .with_unit("{refresh}")
            .with_description(
                "Refreshes by outcome: succeeded, adopted (another replica's), failed, reauthorization_required, \
                 outcome_unknown (an ambiguous provider answer; also counted as failed)",
            )
            .with_callback(move |o| {
                o.observe(m.succeeded.load(Relaxed), &[kv("outcome", "succeeded")]);
                o.observe(m.adopted.load(Relaxed), &[kv("outcome", "adopted")]);
                o.observe(m.failed.load(Relaxed), &[kv("outcome", "failed")]);
                o.observe(m.outcome_unknown.load(Relaxed), &[kv("outcome", "outcome_unknown")]);
                o.observe(
                    m.marked_reauthorization_required.load(Relaxed),
                    &[kv("outcome", "reauthorization_required")],
                );
            })
            .build()
    };
    let attempts = {
        let m = refreshes.clone();
        meter
            .u64_observable_counter("tokenvault.refresh.provider_requests")
            .with_unit("{request}")
            .with_description("Token-endpoint requests made for refreshes, retries included")
            .with_callback(move |o| o.observe(m.provider_requests.load(Relaxed), &[]))
            .build()
    };
    let unsaved = meter
        .u64_observable_counter("tokenvault.refresh.unsaved_rotation_retries")
        .with_unit("{retry}")
        .with_description("Failed attempts to store a refreshed token (each is retried until it lands)")
        .with_callback({
            let m = refreshes.clone();
            move |o| o.observe(m.unsaved_rotation_retries.load(Relaxed), &[])
        })
        .build();
    let failover = {
        let m = refreshes.clone();
        meter
            .u64_observable_counter("tokenvault.database.failover")
            .with_unit("{event}")
            .with_description(
                "After the database went back in time: changes of database seen, rotations written back, rotations lost",
            )
            .with_callback(move |o| {
                o.observe(m.database_changes.load(Relaxed), &[kv("event", "database_changed")]);
                o.observe(m.written_back.load(Relaxed), &[kv("event", "written_back")]);
                o.observe(m.rotations_lost.load(Relaxed), &[kv("event", "rotation_lost")]);
            })
            .build()
    };
    let synchronous = {
        let m = refreshes.clone();
        meter
            .u64_observable_gauge("tokenvault.database.synchronous_standby")
            .with_unit("1")
            .with_description("1 if commits wait for a synchronous standby, 0 if a failover may lose them")
            .with_callback(move |o| {
                let value = m.synchronous_standby.load(Relaxed);
                if value <= 1 {
                    o.observe(value, &[]);
                }
            })
            .build()
    };
    let keepalive = {
        let m = refreshes.clone();
        meter
            .u64_observable_counter("tokenvault.keepalive.refreshes")
            .with_unit("{refresh}")
            .with_description("Keep-alive refreshes of idle connections by outcome: started, succeeded, failed")
            .with_callback(move |o| {
                o.observe(m.keepalive_started.load(Relaxed), &[kv("outcome", "started")]);
                o.observe(m.keepalive_succeeded.load(Relaxed), &[kv("outcome", "succeeded")]);
                o.observe(m.keepalive_failed.load(Relaxed), &[kv("outcome", "failed")]);
            })
            .build()
    };
    let purged = {
        let m = refreshes.clone();
        meter
            .u64_observable_counter("tokenvault.retention.purged")
            .with_unit("{token}")
            .with_description("Superseded refresh tokens whose ciphertext was purged by retention")
            .with_callback(move |o| o.observe(m.retention_purged.load(Relaxed), &[]))
            .build()
    };
    let connections = meter
        .i64_observable_gauge("tokenvault.connections")
        .with_unit("{connection}")
        .with_description("Connections by status")
        .with_callback(move |o| {
            let counts = connection_counts.lock().unwrap_or_else(|p| p.into_inner());
            for (status, count) in counts.iter() {
                o.observe(*count, &[kv("status", status.clone())]);
            }
        })
        .build();
    vec![
        Box::new(outcomes),
        Box::new(failover),
        Box::new(synchronous),
        Box::new(attempts),
        Box::new(unsaved),
        Box::new(keepalive),
        Box::new(purged),
        Box::new(connections),
    ]
}
