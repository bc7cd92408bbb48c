//! The floors every vault figure is divided by, served from the same proto with the same tonic
//! server settings: a server that answers GetAccessToken with a constant; one that answers it
//! with one indexed SELECT of a stored (sealed) token row through sqlx (from Postgres, in the
//! vault's own pool, or from the SQLite scenario's file); and, for the refresh
//! scenario, one that answers it with the access token of one refresh-token request to the
//! scripted provider (what any server must do for an expired token, and nothing else).
//!
//! Any floor can serve over TLS (`floor --tls-cert … --tls-key … --tls-client-ca …`) with the
//! rustls settings the vault's listener uses (`src/auth/tls.rs`): the ring provider, rustls'
//! safe default protocol versions and cipher suites, ALPN h2 only, and client certificates
//! required and verified against the CA (chain and validity). It runs the handshakes itself, one
//! task per connection, and hands finished sessions to the same tonic server as the plaintext
//! floor; it bounds nothing and identifies nobody, which is the vault's own work.

use base64::{engine::general_purpose::STANDARD, Engine};
use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use secrecy::ExposeSecret;
use sqlx::{PgPool, SqlitePool};
use token_vault::store::PostgresPool;
use token_vault::{
    audit::{Audit, AuditEvent, EventKind},
    auth::INSECURE_DEV_CALLER,
    config::{AuditSettings, LogSettings, Settings, TelemetrySettings},
    connection_key::ConnectionKey,
    crypto::{Aad, Keyring, Purpose},
    proto::{self, token_vault_server::TokenVault, token_vault_server::TokenVaultServer},
    store::Store,
    telemetry::TelemetryGuard,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::pki::ServerFiles;

enum Floor {
    Constant(proto::GetAccessTokenResponse),
    Database(PostgresPool),
    SqliteDatabase(SqlitePool),
    MissDuties(Box<MissDuties>),
    Provider { http: reqwest::Client, token_url: String },
}

/// Which floor a process serves.
pub enum Kind {
    Constant,
    Database(String),
    /// The database floor plus the design's own work on every cache miss: the store's URL and
    /// the keyring the tokens were sealed with.
    MissDuties {
        url: String,
        keyring: String,
    },
    /// The provider's base URL.
    Provider(String),
}

/// What the design requires of a call that misses the cache, and nothing else: the vault's own
/// read statement (`Connections::find_access_token`, through `token_vault::store::Store` with a
/// pool of the vault's size), unsealing the access token with the vault's keyring, and counting
/// the call into the audit trail with the vault's `Audit`, whose writer turns each window into
/// rows in the same database as the vault's does, and logs each row as the vault does (the
/// design keeps a `token_vault::audit` log line per row beside the table, docs/security.md): the
/// vault's own logging, with its default settings, to stdout. No cache, no single flight, no
/// authentication, no policy, no metrics or spans. Unlike the other floors this one calls into
/// the vault on purpose: it prices the work the design's invariants (tokens sealed at rest,
/// every access audited per caller and tenant) put on a miss, so that the cold-cache rows can
/// split their gap into that work and what the vault adds around it, as the refresh
/// throughput's second reference does for a refresh (`statements.rs`).
pub struct MissDuties {
    store: Store,
    keyring: Keyring,
    audit: Audit,
    caller: Arc<str>,
    /// What `telemetry::init` returns. The log layer it installs is process-wide; with the
    /// default settings (no OTLP endpoint) the guard holds nothing, and is kept as the vault keeps it.
    _logging: TelemetryGuard,
}

#[tonic::async_trait]
impl TokenVault for Floor {
    async fn begin_authorization(
        &self,
        _: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn complete_authorization(
        &self,
        _: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::CompleteAuthorizationResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn get_connection(
        &self,
        _: Request<proto::GetConnectionRequest>,
    ) -> Result<Response<proto::GetConnectionResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn list_connections(
        &self,
        _: Request<proto::ListConnectionsRequest>,
    ) -> Result<Response<proto::ListConnectionsResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn delete_connection(
        &self,
        _: Request<proto::DeleteConnectionRequest>,
    ) -> Result<Response<proto::DeleteConnectionResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn import_connection(
        &self,
        _: Request<proto::ImportConnectionRequest>,
    ) -> Result<Response<proto::ImportConnectionResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    type WatchConnectionEventsStream = futures::stream::Empty<Result<proto::WatchConnectionEventsResponse, Status>>;

    async fn watch_connection_events(
        &self,
        _: Request<proto::WatchConnectionEventsRequest>,
    ) -> Result<Response<Self::WatchConnectionEventsStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn get_access_token(
        &self,
        request: Request<proto::GetAccessTokenRequest>,
    ) -> Result<Response<proto::GetAccessTokenResponse>, Status> {
        match self {
            Floor::Constant(answer) => Ok(Response::new(answer.clone())),
            Floor::Database(pool) => {
                let tenant = request.into_inner().tenant_id;
                let row: Option<(Vec<u8>, time::OffsetDateTime)> = sqlx::query_as(
                    "SELECT access_token, access_token_expires_at FROM connections WHERE tenant_id = $1 AND provider = $2",
                )
                .bind(&tenant)
                .bind("understory")
                .fetch_optional(pool)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
                let (sealed, expires) = row.ok_or_else(|| Status::not_found("no row"))?;
                Ok(Response::new(stored_answer(&sealed, expires)))
            }
            Floor::SqliteDatabase(pool) => {
                let tenant = request.into_inner().tenant_id;
                // Times are stored as text on SQLite; the vault parses them, and so does the floor.
                let row: Option<(Vec<u8>, String)> = sqlx::query_as(
                    "SELECT access_token, access_token_expires_at FROM connections WHERE tenant_id = ?1 AND provider = ?2",
                )
                .bind(&tenant)
                .bind("understory")
                .fetch_optional(pool)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
                let (sealed, expires) = row.ok_or_else(|| Status::not_found("no row"))?;
                let expires = time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(Response::new(stored_answer(&sealed, expires)))
            }
            Floor::MissDuties(duties) => {
                let tenant = request.into_inner().tenant_id;
                let key = ConnectionKey::from_stored(&tenant, "understory");
                let stored = duties
                    .store
                    .connections()
                    .find_access_token(&key)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?
                    .ok_or_else(|| Status::not_found("no row"))?;
                let aad = Aad::for_connection(Purpose::AccessToken, &key, stored.generation);
                let token = duties
                    .keyring
                    .open_str(&aad, &stored.access_token)
                    .map_err(|e| Status::internal(e.to_string()))?;
                // The key the vault counts a call served from the database under.
                duties.audit.count(
                    AuditEvent::new(EventKind::GetAccessToken, &duties.caller, "ok")
                        .tenant(key.tenant().shared())
                        .provider(key.provider().shared())
                        .detail("database"),
                );
                Ok(Response::new(proto::GetAccessTokenResponse {
                    access_token: token.expose_secret().to_owned(),
                    token_type: stored.token_type,
                    expires_at: Some(prost_types::Timestamp {
                        seconds: stored.access_token_expires_at.unix_timestamp(),
                        nanos: 0,
                    }),
                    scopes: stored.scopes,
                }))
            }
            Floor::Provider { http, token_url } => {
                // The same form the vault sends for a refresh (client_secret_post).
                let answer = http
                    .post(token_url)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", "floor-refresh-token"),
                        ("client_id", "bench"),
                        ("client_secret", "bench-secret"),
                    ])
                    .send()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let body: serde_json::Value = answer.json().await.map_err(|e| Status::internal(e.to_string()))?;
                let expires_in = body["expires_in"].as_i64().unwrap_or(0);
                Ok(Response::new(proto::GetAccessTokenResponse {
                    access_token: body["access_token"].as_str().unwrap_or_default().to_owned(),
                    token_type: "bearer".into(),
                    expires_at: Some(prost_types::Timestamp {
                        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + expires_in,
                        nanos: 0,
                    }),
                    scopes: vec!["offline".into(), "booking.read".into()],
                }))
            }
        }
    }
}

/// The database floors' answer: the stored row's sealed token (base64, as the floor does not
/// open it) and its expiry, in the shape the vault answers.
fn stored_answer(sealed: &[u8], expires: time::OffsetDateTime) -> proto::GetAccessTokenResponse {
    proto::GetAccessTokenResponse {
        access_token: STANDARD.encode(sealed),
        token_type: "bearer".into(),
        expires_at: Some(prost_types::Timestamp {
            seconds: expires.unix_timestamp(),
            nanos: 0,
        }),
        scopes: vec!["offline".into(), "booking.read".into()],
    }
}

/// Serves a floor on `listen` until the process is killed; over TLS with `tls`.
pub async fn serve(listen: std::net::SocketAddr, kind: Kind, max_connections: u32, tls: Option<ServerFiles>) {
    let floor = match kind {
        Kind::Provider(base) => Floor::Provider {
            // Built as the vault builds its provider client.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            token_url: format!("{base}/oauth2/token"),
        },
        // Read-only, as many connections as the vault's pool: WAL lets readers run side by side.
        // Neither database floor pings a pooled connection before its query (sqlx's default
        // does): the vault does not, and the floor is the least work a call needs. On Postgres
        // the floor's pool is the vault's own (`PostgresPool`), which does not ping a connection
        // on its return either.
        Kind::Database(url) if url.starts_with("sqlite:") => Floor::SqliteDatabase(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(max_connections)
                .test_before_acquire(false)
                .connect_with(
                    url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                        .expect("a SQLite URL")
                        .read_only(true),
                )
                .await
                .expect("the floor's SQLite file opens"),
        ),
        Kind::Database(url) => Floor::Database(PostgresPool::new(
            url.parse().expect("a Postgres URL"),
            max_connections,
            std::time::Duration::from_secs(30),
        )),
        Kind::MissDuties { url, keyring } => {
            let store = crate::statements::vault_sized_store(&url);
            let defaults = Settings::defaults();
            let audit_settings: AuditSettings = defaults
                .extract_inner("audit")
                .expect("the vault's default audit settings");
            let log: LogSettings = defaults.extract_inner("log").expect("the vault's default log settings");
            let telemetry: TelemetrySettings = defaults
                .extract_inner("telemetry")
                .expect("the vault's default telemetry settings");
            let logging = token_vault::telemetry::init(&log, &telemetry).expect("the vault's logging");
            // Runs until the process is killed, like the floor.
            let (audit, _writer) = Audit::start(store.clone(), &audit_settings, CancellationToken::new());
            Floor::MissDuties(Box::new(MissDuties {
                store,
                keyring: Keyring::parse(&keyring, None).expect("the bench's keyring"),
                audit,
                caller: INSECURE_DEV_CALLER.into(),
                _logging: logging,
            }))
        }
        Kind::Constant => Floor::Constant(proto::GetAccessTokenResponse {
            // The size of a real Hydra access token (a JWT of ~900 bytes).
            access_token: "x".repeat(900),
            token_type: "bearer".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 4_102_444_800,
                nanos: 0,
            }),
            scopes: vec!["offline".into(), "booking.read".into()],
        }),
    };
    let server = tonic::transport::Server::builder().add_service(TokenVaultServer::new(floor));
    match tls {
        None => server.serve(listen).await.expect("the floor serves"),
        Some(files) => server
            .serve_with_incoming(tls_incoming(listen, server_config(&files)).await)
            .await
            .expect("the floor serves"),
    }
}

/// The vault's listener configuration, built the same way (`auth::tls::assemble`) from the same
/// files: a second implementation rather than a call into the vault, so that a costly choice
/// there shows up as a gap against this floor instead of being copied into it.
fn server_config(files: &ServerFiles) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .expect("the floor's certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("the floor's certificate");
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("the floor's key");
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.client_ca).expect("the floor's CA file") {
        roots
            .add(ca.expect("a CA certificate"))
            .expect("a usable CA certificate");
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("a client verifier");
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("a certificate that goes with its key");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The TLS sessions of connections to `listen`, each handshaken in a task of its own (with
/// TCP_NODELAY, as the vault sets it); failed handshakes are dropped.
async fn tls_incoming(
    listen: std::net::SocketAddr,
    config: Arc<ServerConfig>,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("the floor's address");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (sessions, incoming) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, sessions) = (acceptor.clone(), sessions.clone());
            tokio::spawn(async move {
                if let Ok(session) = acceptor.accept(tcp).await {
                    let _ = sessions.send(Ok(session)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// The refresh throughput scenario's floor, run in the bench's own process: `fleet` refreshes,
/// `in_flight` at a time, each the work the design requires and nothing else: a durable
/// one-row commit (the lease), the refresh-token request to the scripted provider, a durable
/// one-row commit (the new tokens). Through a pool of the vault's default size (20), on rows of
/// their own as the vault's refreshes are. Each refresh presents a refresh token of its own.
pub async fn refresh_fleet(
    admin_pool: &PgPool,
    provider_url: &str,
    round: usize,
    fleet: usize,
    in_flight: usize,
) -> crate::load::LoadResult {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_refresh_floor (id int PRIMARY KEY, n bigint NOT NULL)")
        .execute(admin_pool)
        .await
        .expect("the floor's table");
    sqlx::query("INSERT INTO bench_refresh_floor SELECT i, 0 FROM generate_series(0, $1 - 1) i ON CONFLICT DO NOTHING")
        .bind(fleet as i32)
        .execute(admin_pool)
        .await
        .expect("the floor's rows");
    // The vault's own pool, without a ping on each connection's return, as the vault's.
    let pool = PostgresPool::new(
        (*admin_pool.connect_options()).clone(),
        20,
        std::time::Duration::from_secs(30),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let token_url = Arc::new(format!("{provider_url}/oauth2/token"));
    let work = {
        let pool = pool.clone();
        move |i: usize| {
            let (pool, http, token_url) = (pool.clone(), http.clone(), token_url.clone());
            async move {
                let commit = async |id: i32| {
                    sqlx::query("UPDATE bench_refresh_floor SET n = n + 1 WHERE id = $1")
                        .bind(id)
                        .execute(&pool)
                        .await
                        .expect("a durable commit");
                };
                commit(i as i32).await;
                let answer = http
                    .post(token_url.as_str())
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &format!("floor-{round}-{i}")),
                        ("client_id", "bench"),
                    ])
                    .send()
                    .await
                    .expect("the provider answers");
                assert!(answer.status().is_success(), "the provider refreshes");
                answer.bytes().await.expect("a body");
                commit(i as i32).await;
            }
        }
    };
    let total = crate::statements::in_flight(fleet, in_flight, work).await;
    pool.close().await;
    total
}
