//! Builds the application from settings (keyring, database, providers, vault, gRPC services)
//! and runs it until told to stop. Tests build it on port 0 and talk to it over the network.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    api::{AuthLayer, CutOffLayer, TokenVaultService},
    audit::Audit,
    auth::{
        load_authenticator, tls::ServerTls, watch_security, Authenticator, ReloadCounts, SecurityReloader,
        SharedAuthenticator,
    },
    config::{AuthMode, DatabaseSettings, Settings},
    crypto::SharedKeyring,
    keys::{load_keyring, watch_keyring, KeyringReloader},
    listener::{self, Plaintext},
    oauth::ProviderClient,
    proto::{self, token_vault_server::TokenVaultServer},
    store::{PoolOptions, Store, StoreError, StoreKind},
    vault::Vault,
};

/// The service name health checks ask about, besides the server-wide "".
pub const SERVICE_NAME: &str = "tokenvault.v1.TokenVault";
/// How often the health reporter checks the database.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long shutdown waits for the audit writer's last write.
const AUDIT_FINAL_WRITE: Duration = Duration::from_secs(5);
/// How long, past the grace period, the calls answered UNAVAILABLE have to reach their callers
/// before shutdown stops waiting for their connections (they close when the process exits).
/// Writing an answer takes microseconds; this only bounds a peer that stopped reading.
const CUT_OFF_ANSWERS: Duration = Duration::from_millis(500);

pub struct Application {
    listener: TcpListener,
    vault: Vault,
    settings: Settings,
    /// Who may call, built from `auth` (and checked) before anything is served; swapped when
    /// `auth.policy_file` changes.
    auth: SharedAuthenticator,
    /// Health alone, in plaintext, for kubelet probes when the main listener is TLS.
    health_listener: Option<TcpListener>,
    /// `GET /metrics` for Prometheus, in plaintext HTTP/1.1, when `telemetry.metrics_listen` is set.
    metrics_listener: Option<TcpListener>,
    /// The listener's TLS, from `tls`; None serves plaintext. Swapped when its files change.
    tls: Option<ServerTls>,
    /// Re-reads the TLS files and `auth.policy_file` (None when neither is configured).
    security_reloader: Option<SecurityReloader>,
    /// What `security_reloader` took and refused.
    reload_counts: ReloadCounts,
    /// Fired once serving has stopped; ends refresh-store retries and background tasks.
    stop_background: CancellationToken,
    /// Swaps in a changed keyring file (None when the keyring is not from a file).
    keyring_reloader: Option<KeyringReloader>,
    /// Every provider's client (clones share the client secrets), for re-reading their
    /// client-secret files.
    providers: Vec<ProviderClient>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        install_crypto_provider();
        let loaded = load_keyring(&settings.encryption, settings.mode)?;
        let keyring = SharedKeyring::new(loaded.keyring);
        let providers = crate::oauth::discovery::resolve_providers(&settings.providers)
            .await?
            .into_iter()
            .map(|(name, config)| {
                let client = ProviderClient::new(config)
                    .with_context(|| format!("building the HTTP client of provider {name}"))?;
                Ok((name, client))
            })
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        let (auth, policy_digest) = load_authenticator(&settings)?;
        let tls_reloader = crate::auth::tls::load(&settings.tls, auth.uses_bearer_tokens())?;
        let tls = tls_reloader.as_ref().map(|t| t.shared());
        let auth = SharedAuthenticator::new(auth);
        let security_reloader = SecurityReloader::new(&settings, tls_reloader, auth.clone(), policy_digest);
        let reload_counts = security_reloader
            .as_ref()
            .map(SecurityReloader::counts)
            .unwrap_or_default();

        let store = open_store(&settings.database, settings.database.max_connections).await?;
        if store.kind() == StoreKind::Sqlite && settings.mode == crate::config::Mode::Production {
            // Accepted (one node on one machine is a real deployment), but never silently: a
            // second replica on another machine would not share the file, and two vaults with
            // two files would each refresh, and so spend, the same refresh tokens.
            tracing::warn!(
                "database.url is a SQLite file: SINGLE NODE ONLY. Every vault process must run on this machine and \
                 share this one file; replicas on other machines need Postgres (see docs/deploy.md)"
            );
        }
        if settings.database.migrate_on_start {
            store.migrate().await.context("running database migrations")?;
        }

        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let health_listener = match settings.tls.plaintext_health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr} (tls.plaintext_health_listen)"))?,
            ),
            None => None,
        };
        let metrics_listener = match settings.telemetry.metrics_listen {
            Some(addr) => {
                // The registry is filled by the meter provider's Prometheus reader, which
                // `telemetry::init` installs from the same setting: without it the endpoint
                // would serve nothing, so say so now rather than at the first scrape.
                if crate::telemetry::prometheus_registry().is_none() {
                    anyhow::bail!(
                        "telemetry.metrics_listen is set but telemetry was initialised without it \
                         (telemetry::init must see the same settings)"
                    );
                }
                Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr} (telemetry.metrics_listen)"))?,
                )
            }
            None => None,
        };
        let stop_background = CancellationToken::new();
        let keyring_reloader =
            KeyringReloader::new(&settings.encryption, keyring.clone(), loaded.file_digest, store.clone());
        let provider_clients = providers.values().cloned().collect();
        let vault = Vault::new(&settings, store, keyring, providers, stop_background.clone());
        Ok(Self {
            listener,
            vault,
            settings,
            auth,
            health_listener,
            metrics_listener,
            tls,
            security_reloader,
            reload_counts,
            stop_background,
            keyring_reloader,
            providers: provider_clients,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where health is served in plaintext beside a TLS listener, if configured.
    pub fn plaintext_health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where `GET /metrics` is served, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The reloads of the TLS files and `auth.policy_file` taken and refused so far.
    pub fn reload_counts(&self) -> ReloadCounts {
        self.reload_counts.clone()
    }

    /// Serves until `stop` completes, then lets in-flight calls finish (up to the configured
    /// grace period) before ending background work.
    pub async fn run_until(mut self, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let statuses = ServingStatuses::new();
        // One service for both listeners, so the Watch limits count every stream. Its Watch
        // streams end once the stop signal has set NOT_SERVING (listener/health.rs).
        let health_service = listener::health_server(
            statuses.reporter.clone(),
            self.settings.server.max_health_watches,
            self.settings.server.max_health_watches_per_connection,
            statuses.closing_watches.clone(),
        );
        // The reporter starts out SERVING; nothing is served before the first database check
        // says so (report_health below).
        statuses.set(ServingStatus::NotServing).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let background = self.stop_background.clone();
        let (audit, audit_writer) = Audit::start(self.vault.store().clone(), &self.settings.audit, background.clone());
        tokio::spawn(sweep_audit_events(
            self.vault.store().clone(),
            self.settings.audit.retention,
            self.settings.audit.sweep_interval,
            background.clone(),
        ));
        tokio::spawn(report_health(self.vault.clone(), statuses.clone(), background.clone()));
        tokio::spawn({
            let (vault, stop) = (self.vault.clone(), background.clone());
            async move { vault.watch_database(stop).await }
        });
        if self.settings.keepalive.enabled {
            // Stops by itself when refreshes stop starting (the first step of shutdown), so it
            // never starts one that the drain would have to wait for.
            let (vault, stop) = (self.vault.clone(), background.clone());
            tokio::spawn(async move { vault.keep_alive(stop).await });
        }
        tokio::spawn({
            let (vault, stop) = (self.vault.clone(), background.clone());
            async move { vault.purge_rotated_refresh_tokens(stop).await }
        });
        tokio::spawn({
            let (vault, stop) = (self.vault.clone(), background.clone());
            async move { vault.sweep_token_cache(stop).await }
        });
        tokio::spawn({
            let (vault, stop) = (self.vault.clone(), background.clone());
            async move { vault.listen_for_events(stop).await }
        });
        tokio::spawn(sweep_connection_events(
            self.vault.store().clone(),
            self.settings.events.retention,
            self.settings.events.sweep_interval,
            background.clone(),
        ));
        tokio::spawn(sweep_used_and_expired_states(
            self.vault.clone(),
            self.settings.vault.state_sweep_interval,
            background.clone(),
        ));
        if let Some(reloader) = self.keyring_reloader.take() {
            tokio::spawn(watch_keyring(
                reloader,
                self.settings.keys.reload_interval,
                background.clone(),
            ));
        }
        if let Some(reloader) = self.security_reloader.take() {
            // The keyring's interval: one setting for "how soon a changed Secret is taken".
            tokio::spawn(watch_security(
                reloader,
                self.settings.keys.reload_interval,
                background.clone(),
            ));
        }
        for provider in &self.providers {
            provider.announce_client_secret();
        }
        let from_files: Vec<ProviderClient> = std::mem::take(&mut self.providers)
            .into_iter()
            .filter(|p| !p.client_secrets().files().is_empty())
            .collect();
        if !from_files.is_empty() {
            // The keyring's interval: one setting for "how soon a changed Secret is taken".
            tokio::spawn(crate::reload::watch(
                "the providers' client-secret files",
                self.settings.keys.reload_interval,
                background.clone(),
                from_files,
                check_client_secrets,
            ));
        }
        let connection_counts = Arc::new(Mutex::new(Vec::new()));
        let _observers = crate::metrics::observe(self.vault.refresh_metrics().clone(), connection_counts.clone());
        tokio::spawn(count_connections(
            self.vault.clone(),
            connection_counts,
            self.settings.telemetry.connection_count_interval,
            background.clone(),
        ));

        if let (Some(metrics_listener), Some(registry)) =
            (self.metrics_listener.take(), crate::telemetry::prometheus_registry())
        {
            if let Ok(addr) = metrics_listener.local_addr() {
                tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            }
            let render: listener::Render = Arc::new(move || crate::telemetry::encode_prometheus(&registry));
            // Scrapes go on through the drain (they show it) and end with the background work.
            tokio::spawn(listener::serve_metrics(metrics_listener, render, background.clone()));
        }
        let accept_limits = listener::accept_limits(&self.settings.server);
        if let Some(health_listener) = self.health_listener.take() {
            let health = listener::builder(&self.settings.server).add_service(health_service.clone());
            let stop = background.clone();
            tokio::spawn(async move {
                let served = health
                    .serve_with_incoming_shutdown(
                        listener::incoming(health_listener, accept_limits, Plaintext),
                        stop.cancelled_owned(),
                    )
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the plaintext health listener failed");
                }
            });
        }
        let addr = self.local_addr();
        tracing::info!(%addr, mode = ?self.settings.mode, tls = self.tls.is_some(), "token-vault serving gRPC");
        log_security_posture(&self.settings, &self.auth.current(), self.tls.is_some());
        let grace = self.settings.server.shutdown_grace;
        let refresh_budget = self.settings.refresh.lease_ttl;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
        let signal = {
            let (vault, statuses) = (self.vault.clone(), statuses.clone());
            async move {
                stop.await;
                tracing::info!("shutting down: no new calls or refreshes; finishing those in flight");
                // Routed around at once (health Watch streams told, then ended), and nothing
                // new reaches the provider from here.
                statuses.stop().await;
                vault.stop_starting_refreshes();
                // Event watches never end on their own: end them (clients resume elsewhere)
                // so that the server's graceful shutdown is not held up by them.
                vault.close_event_watches();
                let _ = stopping_tx.send(std::time::Instant::now());
            }
        };
        // Cancelled when the grace period ends: the calls still in flight are answered
        // UNAVAILABLE (api/cut_off.rs) rather than dropped with their connections.
        let cut_off = CancellationToken::new();
        let router = listener::builder(&self.settings.server)
            .trace_fn(crate::telemetry::rpc_span)
            .layer(CutOffLayer::new(cut_off.clone()))
            // Every call but health: who is calling, may it, is it over its limits.
            .layer(AuthLayer::new(self.auth.clone(), audit.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Every legitimate request is a few KiB at most (callback_url <= 16 KiB); refuse
            // anything bigger before decoding it (tonic's default is 4 MiB).
            .add_service(
                TokenVaultServer::new(TokenVaultService::new(self.vault.clone(), audit))
                    .max_decoding_message_size(64 * 1024),
            );
        // The listener runs the TLS handshake itself (listener::incoming), so that it is bounded
        // in time and in number like everything else before authentication.
        let server: BoxFuture<'static, Result<(), tonic::transport::Error>> = match self.tls.clone() {
            Some(tls) => Box::pin(
                router.serve_with_incoming_shutdown(listener::incoming(self.listener, accept_limits, tls), signal),
            ),
            None => Box::pin(
                router
                    .serve_with_incoming_shutdown(listener::incoming(self.listener, accept_limits, Plaintext), signal),
            ),
        };
        // The accept loop (and with TLS every handshake) runs as a task on the runtime's
        // workers, not inside the future `block_on` polls on the process's main thread: there
        // it was a third busy thread beside the two workers, and each accepted connection
        // crossed threads. Measured in the bench's `tls` scenario: about half the context
        // switches per run and a cheaper new connection. Aborted when `serve` returns, as the
        // future was dropped before.
        let mut server = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(server));
        let stopping = futures::FutureExt::shared(async move { stopping_rx.await.ok() });
        // Graceful shutdown waits for in-flight calls; past the grace period they are cut off.
        let served = |r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>| match r {
            Ok(served) => served.map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::anyhow!("the gRPC server task failed: {e}")),
        };
        let mut cut_off_answers = Duration::ZERO;
        let result = tokio::select! {
            r = &mut server => served(r),
            _ = async { stopping.clone().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "calls still in flight after the grace period; answering them UNAVAILABLE and stopping");
                // Each such call answers SHUTTING_DOWN at once; with no call left the graceful
                // shutdown ends by itself once the answers are written. Bounded, for a peer
                // that never reads them.
                let cut_at = std::time::Instant::now();
                cut_off.cancel();
                let result = match tokio::time::timeout(CUT_OFF_ANSWERS, &mut server).await {
                    Ok(r) => served(r),
                    Err(_) => {
                        tracing::warn!(timeout = ?CUT_OFF_ANSWERS, "connections still open after the cut-off's answers; exiting without waiting for them");
                        Ok(())
                    }
                };
                cut_off_answers = cut_at.elapsed();
                result
            }
        };
        statuses.stop().await;
        self.vault.close_event_watches();
        // A refresh whose provider has rotated the token must store the new one before the
        // process exits: aborting it would lose the only valid refresh token, and the next
        // presentation of the old one revokes the customer's grant. Each is bounded by its
        // lease, so the wait is too (counted from the stop signal; the chart's
        // terminationGracePeriodSeconds covers it, see docs/deploy.md).
        self.vault.stop_starting_refreshes();
        let budget = match stopping.await {
            Some(signalled) => refresh_budget.saturating_sub(signalled.elapsed()),
            None => refresh_budget,
        };
        let unfinished = self.vault.drain_refreshes(budget).await;
        if unfinished > 0 {
            tracing::error!(
                unfinished,
                "refreshes still in flight when the drain budget ran out; stopping them"
            );
        }
        background.cancel();
        if unfinished > 0 {
            // Their store retries end on the cancellation above; let them say so.
            let _ = self.vault.drain_refreshes(std::time::Duration::from_secs(1)).await;
        }
        // The writer's last window and queue; a stuck database must not hold the exit forever.
        // The time spent answering cut-off calls comes out of this bound, so that the process
        // still ends within the grace docs/deploy.md computes for the pod.
        let audit_budget = AUDIT_FINAL_WRITE.saturating_sub(cut_off_answers);
        if tokio::time::timeout(audit_budget, audit_writer).await.is_err() {
            tracing::warn!("the audit writer did not finish its last write in time");
        }
        result
    }
}

/// The health statuses of the server ("") and of the vault's service, written by the database
/// check and by the stop signal. Once stopping they stay NOT_SERVING: a database check that
/// finished just after SIGTERM must not report a draining replica SERVING again.
#[derive(Clone)]
struct ServingStatuses {
    reporter: HealthReporter,
    /// Whether the stop signal came; behind the lock both writers take, so that no check's
    /// status lands after the signal's NOT_SERVING.
    stopping: Arc<tokio::sync::Mutex<bool>>,
    /// Cancelled by [`Self::stop`] once NOT_SERVING is set, which ends the health Watch streams
    /// (listener/health.rs) after they have been told.
    closing_watches: CancellationToken,
}

impl ServingStatuses {
    fn new() -> Self {
        Self {
            reporter: HealthReporter::new(),
            stopping: Arc::new(tokio::sync::Mutex::new(false)),
            closing_watches: CancellationToken::new(),
        }
    }

    async fn write(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }

    /// Sets `status` unless the replica is stopping; false if it is.
    async fn set(&self, status: ServingStatus) -> bool {
        let stopping = self.stopping.lock().await;
        if !*stopping {
            self.write(status).await;
        }
        !*stopping
    }

    /// NOT_SERVING from now on, and the health Watch streams ended once told. Idempotent.
    async fn stop(&self) {
        let mut stopping = self.stopping.lock().await;
        *stopping = true;
        self.write(ServingStatus::NotServing).await;
        self.closing_watches.cancel();
    }
}

/// SERVING only while the database answers: a replica that can't reach Postgres can't hand
/// out tokens safely, and Kubernetes should route around it.
async fn report_health(vault: Vault, statuses: ServingStatuses, stop: CancellationToken) {
    let mut last = None;
    loop {
        let ok = vault.store().ping().await.is_ok();
        if last != Some(ok) {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if !statuses.set(status).await {
                // Stopping: NOT_SERVING stays, whatever the database says.
                return;
            }
            if ok {
                tracing::info!("database reachable: SERVING");
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
            }
            last = Some(ok);
        }
        let pause = if ok {
            HEALTH_INTERVAL
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Keeps the `tokenvault.connections` gauge's numbers fresh without a query per export.
async fn count_connections(
    vault: Vault,
    counts: Arc<Mutex<Vec<(String, i64)>>>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match vault.store().connections().count_by_status().await {
            Ok(fresh) => *counts.lock().unwrap_or_else(|p| p.into_inner()) = fresh,
            Err(e) => tracing::debug!(error = %e, "could not count connections"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Deletes pending authorizations that can no longer be completed: expired ones, and used ones
/// that older versions kept. Neither is needed for the answer to a late or repeated callback,
/// which is INVALID_STATE for a missing row just as for a used or expired one.
async fn sweep_used_and_expired_states(vault: Vault, every: Duration, stop: CancellationToken) {
    loop {
        match vault.store().pending().delete_finished().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "deleted used and expired pending authorizations"),
            Err(e) => tracing::warn!(error = %e, "could not delete used and expired pending authorizations"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Says at start who may call, and shouts when nobody is checked.
fn log_security_posture(settings: &Settings, auth: &Authenticator, tls: bool) {
    if settings.auth.mode == AuthMode::InsecureDev {
        let message = "AUTHENTICATION IS OFF (auth.mode = \"insecure-dev\"): any process that reaches this port \
                       may read every tenant's tokens. Local development only.";
        // Configuration refuses insecure-dev outside development mode.
        tracing::warn!("{message}");
        return;
    }
    tracing::info!(
        callers = auth.caller_count(),
        mutual_tls = auth.uses_certificates(),
        bearer_tokens = auth.uses_bearer_tokens(),
        tls,
        "callers are authenticated; default deny"
    );
    if !tls {
        tracing::warn!("the gRPC listener is plaintext (tls.cert_file unset): tokens cross the network in clear");
    }
}

/// Deletes audit rows past `audit.retention`; the only delete the table accepts.
async fn sweep_audit_events(store: Store, retention: Duration, every: Duration, stop: CancellationToken) {
    loop {
        match store.audit().delete_older_than(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, ?retention, "deleted audit events past retention"),
            Err(e) => tracing::warn!(error = %e, "could not delete audit events past retention"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Events deleted per statement: a large backlog is deleted in several short transactions.
const EVENT_SWEEP_BATCH: i64 = 10_000;

/// Deletes connection events past `events.retention`, in batches; cursors from before them then
/// answer EVENT_CURSOR_EXPIRED.
async fn sweep_connection_events(store: Store, retention: Duration, every: Duration, stop: CancellationToken) {
    loop {
        let mut total = 0;
        loop {
            match store.events().delete_older_than(retention, EVENT_SWEEP_BATCH).await {
                Ok(n) => {
                    total += n;
                    if n < EVENT_SWEEP_BATCH as u64 || stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete connection events past retention");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, ?retention, "deleted connection events past retention");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Installs ring as rustls' process-wide crypto provider, once. reqwest (the providers), sqlx
/// (Postgres with `sslmode`) and the listener are built without a bundled provider, so this runs
/// before any of them: first thing in `main`, and again (harmlessly) when an application is
/// built, for tests that build one directly.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider is already installed, which serves just as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// The store `serve` and `migrate` work on: the database created first when
/// `database.create_if_missing` is on. With it off, a SQLite file that does not exist stops
/// the start here, naming the file and the setting, instead of the vault serving an empty store
/// on a mistyped path (every tenant "not connected").
pub async fn open_store(database: &DatabaseSettings, max_connections: u32) -> anyhow::Result<Store> {
    if database.create_if_missing {
        Store::create_database_if_missing(&database.url)
            .await
            .context("creating the database (database.create_if_missing)")?;
    }
    let options = PoolOptions {
        max_connections,
        acquire_timeout: database.acquire_timeout,
    };
    Store::connect_lazy(&database.url, &options).map_err(|e| {
        let context = match &e {
            StoreError::MissingFile { .. } if !database.create_if_missing => {
                "database.url names a SQLite file that does not exist, and database.create_if_missing is off, so \
                 the vault does not create it: correct database.url, or set database.create_if_missing = true to \
                 start a new, empty store"
            }
            _ => "configuring the database pool (database.url)",
        };
        anyhow::Error::new(e).context(context)
    })
}

/// Asks the vault at `addr` whether it is SERVING (for `token-vault healthcheck`).
pub async fn probe_health(addr: &str) -> anyhow::Result<bool> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .context("--addr is not a valid URI")?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let mut client = HealthClient::new(endpoint.connect().await.context("connecting")?);
    let answer = client
        .check(HealthCheckRequest { service: String::new() })
        .await
        .context("health check")?
        .into_inner();
    Ok(answer.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

// `&mut Vec`: the state `reload::watch` owns is the Vec itself.
#[allow(clippy::ptr_arg)]
fn check_client_secrets(providers: &mut Vec<ProviderClient>) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        for provider in providers.iter() {
            provider.reload_client_secrets();
        }
    })
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::{health_server::Health, HealthCheckRequest};

    use super::*;

    async fn checked(reporter: &HealthReporter, service: &str) -> i32 {
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let request = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        health.check(request).await.unwrap().into_inner().status
    }

    /// A database check that lands after the stop signal (the database came back, or the first
    /// ping answered, just after SIGTERM) must not report the draining replica SERVING.
    #[tokio::test]
    async fn once_stopping_the_statuses_stay_not_serving() {
        let statuses = ServingStatuses::new();
        assert!(statuses.set(ServingStatus::Serving).await);
        assert_eq!(
            checked(&statuses.reporter, SERVICE_NAME).await,
            ServingStatus::Serving as i32
        );
        assert!(!statuses.closing_watches.is_cancelled());
        statuses.stop().await;
        assert!(statuses.closing_watches.is_cancelled(), "the Watch streams end");
        assert!(!statuses.set(ServingStatus::Serving).await, "refused once stopping");
        for service in ["", SERVICE_NAME] {
            assert_eq!(
                checked(&statuses.reporter, service).await,
                ServingStatus::NotServing as i32
            );
        }
    }
}
