//! The performance harness: runs every scenario against the real vault process and against
//! floors measured in the same run on the same machine with the same load client, and prints
//! (and, in full mode, writes to docs/performance.md) a table of ratios.
//!
//! `scripts/bench` runs it in full; `scripts/bench --short` runs it briefly, in the dev
//! profile, to check that the harness works (CI does this; its numbers mean nothing).
//!
//! Subcommands (as arguments after `--`): `all [--short] [--only SCENARIO,...]`, and
//! `floor --listen ADDR [--database-url URL | --provider-url URL] [--tls-cert PEM --tls-key PEM
//! --tls-client-ca PEM]`, which the harness uses to run each floor in a process of its own (over
//! mutual TLS with the `--tls-*` files; a `sqlite:` database URL serves the floor from that file).
//! `--only` (hot, auth, tls, h2load, cold, refresh, throughput, stampede, keeper, scale, sqlite,
//! crypto) reruns a few scenarios while profiling; such a partial run writes its table to
//! `target/performance-partial.md`, never to docs/performance.md.

// A harness step that fails is a failed run: unwrap says so at the spot.
#![allow(clippy::unwrap_used)]

mod floors;
mod load;
#[path = "../../tests/support/otlp_collector.rs"]
mod otlp_collector;
mod pki;
mod procfs;
mod provider;
mod report;
mod seed;
mod statements;

use std::{
    collections::HashMap,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use load::{round_robin, tenant_names, LoadShape, Pair, PickTenant, Slicing, Target};
use provider::BenchProvider;
use report::Report;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, SqliteConnection, SqlitePool};
use token_vault::{
    crypto::Keyring,
    proto::{self, token_vault_client::TokenVaultClient},
};
use tonic::transport::Channel;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PROVIDER_DELAY: Duration = Duration::from_millis(50);
/// The bench caller's bearer token, and its SHA-256 as configured in the vault.
const BENCH_BEARER: &str = "bench-caller-token";
const BENCH_BEARER_SHA256: &str = "e3a54ff4c349a7ee0702276f308900a98ada913960fcb621cbec7e9599bb5686";

/// How big and how long: the full run, or the harness check CI runs.
#[derive(Clone)]
struct Plan {
    short: bool,
    /// The scenarios to run; `None` runs them all.
    only: Option<Vec<String>>,
    shape: LoadShape,
    /// How a throughput comparison alternates between the vault and its floor.
    slicing: Slicing,
    /// Rounds of the refresh throughput scenario and bursts of the stampede.
    rounds: usize,
    cold_tenants: u64,
    cache_entries: u64,
    refresh_samples: usize,
    stampede_callers: usize,
    /// Connections expired together in the refresh throughput scenario.
    fleet: usize,
    /// Seeded connections whose keep-alive is due when the keeper scenario starts.
    keeper_due: u64,
    /// New connections timed one at a time, to the TLS vault and to the TLS floor each.
    new_connections: usize,
    /// Bursts of `burst_connections` new connections opened at once, to each.
    connection_bursts: usize,
    burst_connections: usize,
}

/// The names `--only` takes.
const SCENARIOS: [&str; 13] = [
    "hot",
    "auth",
    "otlp",
    "tls",
    "h2load",
    "cold",
    "refresh",
    "throughput",
    "stampede",
    "keeper",
    "scale",
    "sqlite",
    "crypto",
];

impl Plan {
    fn new(short: bool, only: Option<Vec<String>>) -> Self {
        if let Some(names) = &only {
            for name in names {
                assert!(
                    SCENARIOS.contains(&name.as_str()),
                    "unknown scenario {name}: use one of {SCENARIOS:?}"
                );
            }
        }
        let shape = LoadShape {
            connections: 4,
            in_flight: 64,
            warm_up: Duration::from_secs(if short { 1 } else { 2 }),
            measure: Duration::from_secs(if short { 1 } else { 6 }),
            bearer: None,
        };
        Self {
            short,
            only,
            shape,
            // An odd count, so that the median pair is the middle one and not the upper of two.
            slicing: Slicing {
                pairs: if short { 1 } else { 21 },
                settle: Duration::from_millis(200),
                measure: Duration::from_millis(if short { 1000 } else { 1500 }),
            },
            rounds: if short { 1 } else { 5 },
            cold_tenants: if short { 20_000 } else { 1_000_000 },
            cache_entries: if short { 5_000 } else { 100_000 },
            refresh_samples: if short { 20 } else { 200 },
            stampede_callers: 1_000,
            fleet: if short { 500 } else { 10_000 },
            keeper_due: if short { 2_000 } else { 20_000 },
            new_connections: if short { 20 } else { 200 },
            connection_bursts: if short { 1 } else { 4 },
            burst_connections: 64,
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == scenario))
    }
}

/// The vault's allocator for the floors and the load client too. A floor on glibc's allocator
/// paid more per allocation than the vault, and that flattered every row whose floor
/// allocates: the cold cache on Postgres read 0.909 x the database floor in a full run and
/// 0.789 and 0.785 x in two partial runs once the floors had mimalloc (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    // A subscriber that wants nothing, so that every `tracing` callsite in tonic, hyper, h2 and
    // sqlx is off for good. With no subscriber at all, `tracing` hands each span to the `log`
    // crate instead (a dependency turns on its `log` feature): profiles of the gRPC floor put
    // 0.8 % (AMD EPYC) and ~3.5 % (Intel Xeon) of its CPU there, a cost the vault, which has a
    // subscriber, does not pay, and which flattered every ratio against a floor. The floor
    // doing the design's work per miss installs the vault's own logging instead (floors.rs).
    if !args.iter().any(|a| a == "--miss-duties") {
        tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())
            .expect("the bench's only subscriber");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("floor") => {
            let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
            let listen = value("--listen").expect("--listen").parse().expect("an address");
            let kind = match (value("--database-url"), value("--provider-url")) {
                // The keyring comes through the environment, not the command line that `ps` shows.
                (Some(url), _) if args.iter().any(|a| a == "--miss-duties") => floors::Kind::MissDuties {
                    url,
                    keyring: std::env::var(FLOOR_KEYRING_ENV).expect("the keyring for --miss-duties"),
                },
                (Some(url), _) => floors::Kind::Database(url),
                (None, Some(url)) => floors::Kind::Provider(url),
                (None, None) => floors::Kind::Constant,
            };
            let tls = value("--tls-cert").map(|cert| pki::ServerFiles {
                cert: cert.into(),
                key: value("--tls-key").expect("--tls-key with --tls-cert").into(),
                client_ca: value("--tls-client-ca")
                    .expect("--tls-client-ca with --tls-cert")
                    .into(),
            });
            let _ = rustls::crypto::ring::default_provider().install_default();
            runtime.block_on(floors::serve(listen, kind, 20, tls));
        }
        Some("all") | None => {
            let short = args.iter().any(|a| a == "--short");
            let only = args.iter().position(|a| a == "--only").map(|i| {
                args.get(i + 1)
                    .expect("--only SCENARIO,...")
                    .split(',')
                    .map(String::from)
                    .collect()
            });
            runtime.block_on(all(Plan::new(short, only)));
        }
        Some(other) => panic!("unknown subcommand {other}: use `all [--short]` or `floor`"),
    }
}

/// A child process killed when dropped, and how the load client reaches it.
struct Proc {
    child: tokio::process::Child,
    target: Target,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// CPU time the process has used, user and system, its ended threads' included.
    fn cpu_time(&self) -> Duration {
        procfs::cpu_time(self.pid())
    }

    /// Resident memory.
    fn rss_bytes(&self) -> u64 {
        procfs::rss_bytes(self.pid())
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn wait_serving(addr: std::net::SocketAddr) -> Duration {
    let started = Instant::now();
    loop {
        if token_vault::startup::probe_health(&format!("http://{addr}"))
            .await
            .unwrap_or(false)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{addr} never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_listening(addr: std::net::SocketAddr) {
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} never listened");
}

/// Who may call a vault process, and how a caller is recognised.
#[derive(Clone, Copy)]
enum Callers {
    /// Anyone: authentication off (`insecure-dev`), as for the floors.
    Anyone,
    /// The bench caller by its bearer token, over a plaintext listener.
    Bearer,
    /// The bench caller by the SPIFFE ID in its client certificate, over mutual TLS (client
    /// certificates required): the production setup of docs/security.md.
    Certificate,
}

impl Callers {
    fn name(self) -> &'static str {
        match self {
            Callers::Anyone => "open",
            Callers::Bearer => "bearer",
            Callers::Certificate => "mtls",
        }
    }
}

/// The floor processes a run starts (see `floors`).
enum FloorKind {
    Constant,
    /// One indexed SELECT on the run's Postgres database.
    Database,
    /// The same SELECT on the SQLite scenario's file (its URL).
    SqliteDatabase(String),
    /// The design's own work on a cache miss (`floors::MissDuties`), on the store at this URL.
    MissDuties(String),
    Provider,
}

/// Where a `--miss-duties` floor finds the bench's keyring.
const FLOOR_KEYRING_ENV: &str = "TOKEN_VAULT_BENCH_FLOOR_KEYRING";

struct Bench {
    plan: Plan,
    dir: std::path::PathBuf,
    database_url: String,
    keyring_text: String,
    provider: BenchProvider,
    /// The TLS scenario's certificates (its server files in `dir`).
    pki: pki::BenchPki,
}

/// The environment the image sets for the vault (the Dockerfile's `ENV MIMALLOC_*` settings,
/// such as the allocator's purge delay), so the vault runs here as it runs when deployed. A
/// variable already in this process's environment wins, for experiments. Only the
/// `ENV NAME=VALUE` form, unquoted, is read; anything else naming `MIMALLOC_` stops the bench
/// rather than leaving the setting out unnoticed.
fn image_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for line in include_str!("../../Dockerfile").lines().map(str::trim) {
        if !line.contains("MIMALLOC_") || line.starts_with('#') {
            continue;
        }
        let settings = line
            .strip_prefix("ENV ")
            .unwrap_or_else(|| panic!("Dockerfile: MIMALLOC_ outside an `ENV NAME=VALUE` line: {line}"));
        for setting in settings.split_whitespace() {
            match setting.split_once('=') {
                Some((name, value))
                    if name.starts_with("MIMALLOC_") && !value.is_empty() && !value.contains(['"', '\'', '\\']) =>
                {
                    if std::env::var_os(name).is_none() {
                        env.push((name.to_string(), value.to_string()));
                    }
                }
                Some((name, _)) if !name.starts_with("MIMALLOC_") => {}
                _ => panic!("Dockerfile: cannot read `{setting}` as an unquoted MIMALLOC_NAME=VALUE"),
            }
        }
    }
    env
}

/// What a bench vault runs with beyond the defaults.
#[derive(Default)]
struct VaultOptions<'a> {
    /// Replaces the vault's default `cache_max_age` (5 s).
    cache_max_age: Option<&'a str>,
    /// The keeper runs at this many keep-alives a second; otherwise it is off, so that no
    /// scenario but the keeper's sees it work.
    keeper_rate: Option<u32>,
    /// Another store than the run's Postgres database (the SQLite scenario's file).
    database_url: Option<&'a str>,
    /// Another `cache_max_entries` than the plan's.
    cache_entries: Option<u64>,
    /// Variables set in the vault's environment, after the image's.
    env: Vec<(&'static str, String)>,
}

impl Bench {
    /// Starts the vault binary; returns it once SERVING, with the time that took. `callers`:
    /// who may call (an authenticated caller is audited). `cache_max_age` replaces the vault's
    /// default (5 s) when given.
    async fn vault(&self, callers: Callers, cache_max_age: Option<&str>) -> (Proc, Duration) {
        self.vault_with(
            callers,
            VaultOptions {
                cache_max_age,
                ..VaultOptions::default()
            },
        )
        .await
    }

    /// As [`Self::vault`], with the settings in `options` that differ from the defaults.
    async fn vault_with(&self, callers: Callers, options: VaultOptions<'_>) -> (Proc, Duration) {
        let VaultOptions {
            cache_max_age,
            keeper_rate,
            database_url,
            cache_entries,
            env,
        } = options;
        let addr = free_addr();
        let cache = cache_entries.unwrap_or(self.plan.cache_entries);
        let config = self.dir.join(format!(
            "vault-{}-{}-{}-{}-cache-{cache}.toml",
            callers.name(),
            cache_max_age.unwrap_or("default-age"),
            keeper_rate.map_or("no-keeper".to_string(), |r| format!("keeper-{r}")),
            if database_url.is_some() { "sqlite" } else { "postgres" },
        ));
        let keepalive = match keeper_rate {
            Some(rate) => format!("enabled = true\ninterval = \"1s\"\nmax_per_second = {rate}"),
            None => "enabled = false".to_string(),
        };
        let cache_max_age = cache_max_age
            .map(|age| format!("cache_max_age = \"{age}\""))
            .unwrap_or_default();
        let auth = match callers {
            Callers::Bearer => format!(
                r#"mode = "enforce"
allow_bearer_without_tls = true
[[auth.callers]]
name = "bench"
bearer_token_sha256 = ["{BENCH_BEARER_SHA256}"]
rpcs = ["*"]
providers = ["*"]
tenants = ["*"]
max_concurrent_calls = 100000"#
            ),
            Callers::Certificate => format!(
                r#"mode = "enforce"
[[auth.callers]]
name = "bench"
mtls_uris = ["{}"]
rpcs = ["*"]
providers = ["*"]
tenants = ["*"]
max_concurrent_calls = 100000
# The scenario connects its own tenants through this caller.
begin_authorization_per_second = 100000"#,
                pki::BENCH_SPIFFE_ID
            ),
            Callers::Anyone => r#"mode = "insecure-dev""#.to_string(),
        };
        // Over TLS, health is probed on a plaintext listener of its own (as kubelet does): the
        // TLS listener requires a client certificate.
        let (tls, health_addr) = match callers {
            Callers::Certificate => {
                let health = free_addr();
                let files = &self.pki.server;
                (
                    format!(
                        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nplaintext_health_listen = \"{health}\"",
                        files.cert.display().to_string(),
                        files.key.display().to_string(),
                        files.client_ca.display().to_string(),
                    ),
                    health,
                )
            }
            Callers::Anyone | Callers::Bearer => (String::new(), addr),
        };
        std::fs::write(
            &config,
            format!(
                r#"mode = "{mode}"
[server]
listen = "{addr}"
[database]
url = "{db}"
[encryption]
keyring = "{keys}"
[vault]
cache_max_entries = {cache}
{cache_max_age}
[keepalive]
{keepalive}
# The logs as a container runs them (the defaults: JSON lines, info).
[log]
format = "json"
level = "info"
[auth]
{auth}
{tls}
[providers.understory]
preset = "understory"
authorization_endpoint = "{p}/oauth2/auth"
token_endpoint = "{p}/oauth2/token"
client_id = "bench"
client_secret = "bench-secret"
redirect_uris = ["https://bench.example/callback"]
"#,
                db = database_url.unwrap_or(&self.database_url),
                keys = self.keyring_text.trim(),
                p = self.provider.server.uri(),
                // Authentication off is refused outside development mode, which changes
                // nothing else when the keyring is given.
                mode = match callers {
                    Callers::Anyone => "development",
                    Callers::Bearer | Callers::Certificate => "production",
                },
            ),
        )
        .unwrap();
        let started = Instant::now();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
            .args(["serve", "--config"])
            .arg(&config)
            .envs(image_env())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the vault starts");
        wait_serving(health_addr).await;
        let target = Target {
            addr,
            tls: matches!(callers, Callers::Certificate).then(|| self.pki.client()),
        };
        (Proc { child, target }, started.elapsed())
    }

    /// A gRPC floor started for one row, for the rows whose vault is started for that row too.
    /// Two processes of one binary can differ by a few percent however long each has run
    /// (docs/performance.md, the resolution in both places), so a row compares a new vault with
    /// a new floor rather than with the one the first rows used, and no single floor process's
    /// difference runs through every row.
    async fn fresh_grpc_floor(&self) -> Proc {
        self.floor(FloorKind::Constant, false).await
    }

    /// Starts a floor process; `tls`: over mutual TLS with the TLS vault's files and settings.
    async fn floor(&self, kind: FloorKind, tls: bool) -> Proc {
        let addr = free_addr();
        let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
        command.args(["floor", "--listen", &addr.to_string()]);
        if tls {
            let files = &self.pki.server;
            command
                .arg("--tls-cert")
                .arg(&files.cert)
                .arg("--tls-key")
                .arg(&files.key)
                .arg("--tls-client-ca")
                .arg(&files.client_ca);
        }
        match kind {
            FloorKind::Constant => {}
            FloorKind::Database => {
                command.args(["--database-url", &self.database_url]);
            }
            FloorKind::SqliteDatabase(url) => {
                command.args(["--database-url", &url]);
            }
            FloorKind::MissDuties(url) => {
                command
                    .args(["--database-url", &url, "--miss-duties"])
                    .env(FLOOR_KEYRING_ENV, self.keyring_text.trim());
            }
            FloorKind::Provider => {
                command.args(["--provider-url", &self.provider.server.uri()]);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the floor starts");
        wait_listening(addr).await;
        let target = Target {
            addr,
            tls: tls.then(|| self.pki.client()),
        };
        Proc { child, target }
    }

    async fn connect_tenants(&self, vault: &Proc, tenants: &[String]) {
        let clients = load::channels(&vault.target, 4).await;
        for chunk in tenants.chunks(50) {
            let flows = chunk.iter().enumerate().map(|(i, tenant)| {
                let mut client = clients[i % clients.len()].clone();
                let tenant = tenant.clone();
                async move {
                    let begun = client
                        .begin_authorization(proto::BeginAuthorizationRequest {
                            tenant_id: tenant,
                            ..Default::default()
                        })
                        .await
                        .expect("begin")
                        .into_inner();
                    client
                        .complete_authorization(proto::CompleteAuthorizationRequest {
                            state: begun.state,
                            code: "bench-code".into(),
                            ..Default::default()
                        })
                        .await
                        .expect("complete");
                }
            });
            futures::future::join_all(flows).await;
        }
    }

    /// Runs the vault and its floor in turn, in `plan.slicing`'s pairs of slices over
    /// connections that stay open (`load::alternate`). Each pair is a ratio measured within
    /// seconds; the report takes the median pair, so a noisy stretch of the machine (throughput
    /// here moved by 15 % from one 10 s window to the next, 2026-12-02) spoils a pair or two
    /// instead of the whole comparison.
    /// `bearer`: the credentials sent with every call, to the floor too, which ignores them:
    /// building, sending and receiving the header is work any authenticated call needs, and
    /// the load client shares the machine's two cores with the server it measures.
    async fn compare(&self, vault: &Proc, bearer: Option<&'static str>, floor: &Proc, tenant: PickTenant) -> Vec<Pair> {
        let shape = LoadShape {
            bearer,
            ..self.plan.shape
        };
        let pairs = load::alternate(&vault.target, &floor.target, shape, tenant, self.plan.slicing).await;
        for r in pairs.iter().flat_map(|pair| [&pair.vault, &pair.floor]) {
            assert_eq!(r.errors, 0, "every call must succeed: {:?}", r.first_error);
        }
        pairs
    }
}

/// The database's bare costs, for context beside the refresh rows: latencies (µs, sorted) of a
/// durable one-row UPDATE back to back and after `idle`. The idle figure matters because a
/// refresh's statements land on a database that has just waited out the provider.
async fn database_latencies<DB>(pool: &sqlx::Pool<DB>, n: usize, idle: Duration) -> DatabaseLatencies
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_commit (id int PRIMARY KEY, n bigint)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO bench_commit VALUES (1, 0) ON CONFLICT DO NOTHING")
        .execute(pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut timed = async |sql: &str, pause: Duration| {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            tokio::time::sleep(pause).await;
            let started = Instant::now();
            sqlx::query(sql).execute(&mut *conn).await.unwrap();
            out.push(started.elapsed().as_micros() as u32);
        }
        out.sort_unstable();
        out
    };
    let commit = "UPDATE bench_commit SET n = n + 1 WHERE id = 1";
    DatabaseLatencies {
        commit: timed(commit, Duration::ZERO).await,
        commit_after_idle: timed(commit, idle).await,
    }
}

pub struct DatabaseLatencies {
    pub commit: Vec<u32>,
    pub commit_after_idle: Vec<u32>,
}

/// The CPU a vault and its floor use per call over a comparison: what the vault's own work per
/// call costs, a measure beside throughput that the load client's share of the machine does
/// not enter (it still moves from run to run; docs/performance.md). Each process is idle
/// while the other is measured. Beside each process, the Postgres backends serving its
/// connections (`procfs`): on the cold cache the database's share of a call is as large as
/// the process's own, and only the vault writes audit rows there.
struct CpuPerCall<'a> {
    vault: Side<'a>,
    floor: Side<'a>,
}

/// One side of [`CpuPerCall`]: the process and the CPU times at the start.
struct Side<'a> {
    proc: &'a Proc,
    process: Duration,
    backends: HashMap<u32, Duration>,
}

impl<'a> Side<'a> {
    fn start(proc: &'a Proc) -> Self {
        Self {
            proc,
            process: proc.cpu_time(),
            backends: procfs::postgres_backends_cpu(proc.pid()),
        }
    }

    /// The process's CPU per call and its backends', in microseconds.
    fn per_call(&self, sent: u64) -> (f64, f64) {
        let us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / sent.max(1) as f64;
        (
            us(self.proc.cpu_time().saturating_sub(self.process)),
            us(procfs::postgres_backends_cpu_since(self.proc.pid(), &self.backends)),
        )
    }
}

impl<'a> CpuPerCall<'a> {
    fn start(vault: &'a Proc, floor: &'a Proc) -> Self {
        Self {
            vault: Side::start(vault),
            floor: Side::start(floor),
        }
    }

    /// A note: each process's CPU per call sent (warm-ups included, as in the CPU), and its
    /// Postgres backends' when it has any.
    fn finish(self, scenario: &str, pairs: &[Pair]) -> String {
        let (vault, vault_db) = self.vault.per_call(pairs.iter().map(|pair| pair.vault.sent).sum());
        let (floor, floor_db) = self.floor.per_call(pairs.iter().map(|pair| pair.floor.sent).sum());
        let mut note = format!(
            "{scenario}: CPU per call sent, the vault's process {vault:.1} us, its floor's {floor:.1} us ({:.2} x)",
            vault / floor
        );
        if floor_db > 0.0 {
            note.push_str(&format!(
                "; their Postgres backends {vault_db:.1} and {floor_db:.1} us ({:.2} x); both together {:.1} and \
                 {:.1} us ({:.2} x)",
                vault_db / floor_db,
                vault + vault_db,
                floor + floor_db,
                (vault + vault_db) / (floor + floor_db)
            ));
        } else if vault_db > 0.0 {
            // A floor without a database (the gRPC floor): no ratio to give.
            note.push_str(&format!(
                "; the vault's Postgres backends {vault_db:.1} us, the floor has none"
            ));
        }
        note
    }
}

/// Drops the bench's database even when a step panics, so a failed run leaves nothing behind.
struct DatabaseGuard {
    name: String,
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        // A blocking client of its own: this may run while the runtime unwinds.
        let _ = std::process::Command::new("psql")
            .args([
                ADMIN_URL,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn all(plan: Plan) {
    let started = Instant::now();
    let database = format!("tv_bench_{}", std::process::id());
    let mut admin = PgConnection::connect(ADMIN_URL).await.expect("Postgres answers");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let _drop_database = DatabaseGuard { name: database.clone() };
    let database_url = format!("{}/{database}", ADMIN_URL.rsplit_once('/').expect("a database URL").0);
    let pool = PgPool::connect(&database_url).await.unwrap();
    store_at(&database_url).migrate().await.unwrap();
    let (keyring, keyring_text) = Keyring::generate("bench");
    let dir = std::env::temp_dir().join(format!("token-vault-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bench = Bench {
        plan: plan.clone(),
        pki: pki::BenchPki::new(&dir),
        dir,
        database_url,
        keyring_text: keyring_text.to_string(),
        provider: BenchProvider::start(PROVIDER_DELAY).await,
    };
    let mut report = Report::new(&plan);

    // Start-up on an empty database: the baseline for the scale scenario.
    let (vault, startup_empty) = bench.vault(Callers::Anyone, None).await;
    let grpc_floor = bench.floor(FloorKind::Constant, false).await;

    if plan.runs("hot") || plan.runs("auth") || plan.runs("h2load") {
        hot_path(&bench, &mut report, &vault, &grpc_floor).await;
    }
    if plan.runs("otlp") {
        traced_hot_path(&bench, &mut report).await;
    }
    if plan.runs("tls") {
        mutual_tls(&bench, &mut report).await;
    }

    let mut seeded_in = None;
    if plan.runs("cold") || plan.runs("scale") || plan.runs("keeper") {
        let seeding = Instant::now();
        seed::connections(&pool, &keyring, plan.cold_tenants).await;
        settle_seeded_counts(&bench.database_url, Some(&pool)).await;
        seeded_in = Some(seeding.elapsed());
    }
    if plan.runs("cold") {
        cold_cache(&bench, &mut report, &vault).await;
    }
    if plan.runs("refresh") {
        let statements = statements::vault_sized_store(&bench.database_url);
        refresh(&bench, &mut report, &vault, &statements, &keyring, &pool, None).await;
        statements.close().await;
    }
    if plan.runs("throughput") {
        refresh_throughput(&bench, &mut report, &vault, &pool, &keyring).await;
    }
    if plan.runs("stampede") {
        stampede(&bench, &mut report, &vault, &grpc_floor).await;
    }
    if plan.runs("keeper") {
        keeper(&bench, &mut report, &pool, &keyring).await;
    }
    if plan.runs("sqlite") {
        sqlite(&bench, &mut report, &keyring).await;
    }
    drop(grpc_floor);
    drop(vault);
    if plan.runs("scale") {
        scale(&bench, &mut report, startup_empty).await;
    }
    if plan.runs("crypto") {
        report.crypto_rows();
    }

    if let Some(seeded_in) = seeded_in {
        report.note(format!(
            "seeded {} connections in {:.1} s",
            plan.cold_tenants,
            seeded_in.as_secs_f64()
        ));
    }
    report.note(format!("whole run {:.0} s", started.elapsed().as_secs_f64()));
    report.finish();

    pool.close().await;
    let _ = std::fs::remove_dir_all(&bench.dir);
}

/// Hot path: 100 connected tenants, all cached after the warm-up; without and with
/// authentication and audit, and cross-checked with h2load.
async fn hot_path(bench: &Bench, report: &mut Report, vault: &Proc, grpc_floor: &Proc) {
    let plan = &bench.plan;
    let hot = Arc::new(tenant_names("hot", 100));
    bench.connect_tenants(vault, &hot).await;
    let pick_hot = round_robin(hot.clone());
    if plan.runs("hot") {
        let cpu = CpuPerCall::start(vault, grpc_floor);
        let pairs = bench.compare(vault, None, grpc_floor, pick_hot.clone()).await;
        report.note(cpu.finish("hot path", &pairs));
        report.ratio_row(
            "hot path: token valid and cached",
            &pairs,
            "gRPC floor",
            0.90,
            Some(1.2),
        );

        // What the machine alone puts into a ratio: the gRPC floor against a second process of
        // the same binary, compared as the vault is. Its distance from 1 and its pairs' spread
        // are the table's resolution in this run. Then the same two with their places swapped:
        // if the ratio leans because the second process is new (as a vault started for its row
        // is; such rows now get a floor started with it, `fresh_grpc_floor`), the swapped ratio
        // leans less (by then the second process has served a whole comparison, so it comes
        // out nearer 1 rather than below it); if it is the vault's place in the load client,
        // both lean alike.
        let twin = bench.floor(FloorKind::Constant, false).await;
        let pairs = bench.compare(&twin, None, grpc_floor, pick_hot.clone()).await;
        report.resolution_row(
            "resolution: a second gRPC floor process against the gRPC floor, compared as the vault is",
            &pairs,
        );
        let pairs = bench.compare(grpc_floor, None, &twin, pick_hot.clone()).await;
        report.resolution_row(
            "resolution, places swapped: the gRPC floor in the vault's place against its second process",
            &pairs,
        );
    }

    // The same hot path with caller authentication (bearer token) and the audit trail on, in a
    // second vault process over the same database.
    if plan.runs("auth") {
        let (secured, _) = bench.vault(Callers::Bearer, None).await;
        let secured_clients = load::channels(&secured.target, 1).await;
        for tenant in hot.iter() {
            let mut request = tonic::Request::new(proto::GetAccessTokenRequest {
                tenant_id: tenant.clone(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {BENCH_BEARER}").parse().unwrap());
            secured_clients[0]
                .clone()
                .get_access_token(request)
                .await
                .expect("an authenticated call");
        }
        // A floor started for the row, as the vault is (`fresh_grpc_floor`).
        let floor = bench.fresh_grpc_floor().await;
        let pairs = bench
            .compare(&secured, Some(BENCH_BEARER), &floor, pick_hot.clone())
            .await;
        report.ratio_row(
            "hot path with authentication (bearer) and audit on",
            &pairs,
            "gRPC floor (sent the same bearer header)",
            0.90,
            None,
        );
    }
    if plan.runs("h2load") {
        report.h2load(vault, grpc_floor, &hot[0], plan).await;
    }
}

/// The hot path with traces exported over OTLP, as a platform team runs it with a collector in
/// the cluster (`otlp_collector::Collector`, here in the bench's process), at two samplers set with
/// OpenTelemetry's standard variables: the SDK's default, every call sampled
/// (`parentbased_always_on`), and 1 % of calls (`parentbased_traceidratio`). Each runs in a vault
/// process of its own against a gRPC floor started with it, which exports nothing. The row also
/// counts the server spans that reached the collector per call sent (one per call sampled): below the
/// sampled fraction, spans were lost on the way, most likely dropped from the exporter's queue
/// (2,048 spans by default) when it was full.
///
/// The targets are this bench's, not the issue's: at 1 % a trace costs a call next to nothing,
/// so the hot path's 0.90 x holds; sampling every call pays for a span per call, and a platform
/// team turning tracing on at the SDK's default should lose at most a fifth of the hot path.
async fn traced_hot_path(bench: &Bench, report: &mut Report) {
    let collector = otlp_collector::Collector::start(otlp_collector::Keep::Counts).await;
    let tenants = Arc::new(tenant_names("otlp", 100));
    let pick = round_robin(tenants.clone());
    let samplers = [
        (
            "parentbased_always_on",
            None,
            "every call sampled (the SDK's default)",
            0.80,
        ),
        ("parentbased_traceidratio", Some("0.01"), "1 % of calls sampled", 0.90),
    ];
    for (sampler, argument, described, target) in samplers {
        let mut env = vec![
            ("TOKEN_VAULT_TELEMETRY__OTLP_ENDPOINT", collector.endpoint.clone()),
            ("OTEL_TRACES_SAMPLER", sampler.to_string()),
        ];
        if let Some(argument) = argument {
            env.push(("OTEL_TRACES_SAMPLER_ARG", argument.to_string()));
        }
        let (vault, _) = bench
            .vault_with(
                Callers::Anyone,
                VaultOptions {
                    env,
                    ..VaultOptions::default()
                },
            )
            .await;
        bench.connect_tenants(&vault, &tenants).await;
        // The exporter sends what it holds at least every 5 s (OTEL_BSP_SCHEDULE_DELAY): the
        // authorizations' spans arrive before the count starts.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let floor = bench.fresh_grpc_floor().await;
        let before = collector.server_spans();
        let cpu = CpuPerCall::start(&vault, &floor);
        let pairs = bench.compare(&vault, None, &floor, pick.clone()).await;
        report.note(cpu.finish(&format!("traced hot path, {described}"), &pairs));
        tokio::time::sleep(Duration::from_secs(6)).await;
        let spans = collector.server_spans() - before;
        let sent: u64 = pairs.iter().map(|pair| pair.vault.sent).sum();
        assert!(spans > 0, "the vault exported no server span to the collector");
        report.ratio_row(
            &format!(
                "hot path with traces exported over OTLP, {described}: {spans} server spans reached the collector for {sent} calls sent ({:.3} a call)",
                spans as f64 / sent as f64
            ),
            &pairs,
            "gRPC floor",
            target,
            None,
        );
    }
}

/// Mutual TLS, the production setup (docs/security.md): a vault whose listener requires a
/// client certificate of the bench CA and recognises the bench caller by the SPIFFE ID in it,
/// with the audit trail on, against the constant floor serving the same proto over the same
/// rustls settings from the same files. First the hot path (100 cached tenants, four long-lived
/// connections, as for the plaintext rows); then what a new caller connection costs: TCP
/// connect, a full TLS handshake (each connection has a client configuration of its own, so
/// nothing is resumed) and the first GetAccessToken answered, one connection at a time
/// (alternating vault and floor connection by connection) and in bursts opened at once
/// (alternating which server takes the burst first).
async fn mutual_tls(bench: &Bench, report: &mut Report) {
    let plan = &bench.plan;
    let (vault, _) = bench.vault(Callers::Certificate, None).await;
    let floor = bench.floor(FloorKind::Constant, true).await;
    let negotiated = bench.pki.negotiated(vault.target.addr).await;
    let floor_negotiated = bench.pki.negotiated(floor.target.addr).await;
    assert_eq!(
        negotiated, floor_negotiated,
        "the vault and its TLS floor negotiate the same protocol, suite, group and ALPN"
    );

    let tenants = Arc::new(tenant_names("tls", 100));
    bench.connect_tenants(&vault, &tenants).await;
    let pairs = bench.compare(&vault, None, &floor, round_robin(tenants.clone())).await;
    report.ratio_row(
        &format!("hot path over mutual TLS (caller by SPIFFE ID; {negotiated}), audit on"),
        &pairs,
        "TLS floor",
        0.90,
        None,
    );

    // A cached tenant: what is timed is the connection and the call, not a database read.
    let tenant = &tenants[0];
    let (mut vault_one, mut floor_one) = (Vec::new(), Vec::new());
    for i in 0..plan.new_connections {
        let (to_vault, to_floor) = (vault.target.endpoint(), floor.target.endpoint());
        if i % 2 == 0 {
            floor_one.push(load::first_answer(to_floor, tenant.clone()).await);
            vault_one.push(load::first_answer(to_vault, tenant.clone()).await);
        } else {
            vault_one.push(load::first_answer(to_vault, tenant.clone()).await);
            floor_one.push(load::first_answer(to_floor, tenant.clone()).await);
        }
    }
    report.new_connection_row("one at a time", &vault_one, &floor_one, &negotiated);

    let (mut vault_burst, mut floor_burst) = (Vec::new(), Vec::new());
    let endpoints = |target: &Target| {
        (0..plan.burst_connections)
            .map(|_| target.endpoint())
            .collect::<Vec<_>>()
    };
    for burst in 0..plan.connection_bursts {
        let (to_vault, to_floor) = (endpoints(&vault.target), endpoints(&floor.target));
        if burst % 2 == 0 {
            floor_burst.extend(load::first_answers(to_floor, tenant).await);
            vault_burst.extend(load::first_answers(to_vault, tenant).await);
        } else {
            vault_burst.extend(load::first_answers(to_vault, tenant).await);
            floor_burst.extend(load::first_answers(to_floor, tenant).await);
        }
    }
    report.new_connection_row(
        &format!("in bursts of {} opened at once", plan.burst_connections),
        &vault_burst,
        &floor_burst,
        &negotiated,
    );
}

/// Cold cache: tenants seeded straight into Postgres, picked uniformly at random.
async fn cold_cache(bench: &Bench, report: &mut Report, vault: &Proc) {
    let url = bench.database_url.clone();
    cold_cache_on(bench, report, vault, FloorKind::Database, url, "Postgres").await;
}

/// Cold cache on the store `floor` reads from (named `store`, at `store_url`), whose seeded
/// tenants are picked uniformly at random: against the database floor (one SELECT), then
/// against the design's own work per miss on the same store (`floors::MissDuties`), which
/// splits the first row's gap into what the design requires of a miss and what the vault adds.
/// Then the design's work itself against the database floor, compared as the vault is: the
/// most the first row's ratio can reach while a miss does what the design requires, measured
/// in the same run rather than argued from another one.
async fn cold_cache_on(
    bench: &Bench,
    report: &mut Report,
    vault: &Proc,
    floor: FloorKind,
    store_url: String,
    store: &str,
) {
    let cold = bench.plan.cold_tenants;
    let pick_cold = Arc::new(move |_: usize, _: u64| seed::tenant(rand::random_range(0..cold)));
    let db_floor = bench.floor(floor, false).await;
    let cpu = CpuPerCall::start(vault, &db_floor);
    let pairs = bench.compare(vault, None, &db_floor, pick_cold.clone()).await;
    report.note(cpu.finish(&format!("cold cache on {store}"), &pairs));
    report.ratio_row(
        &format!("cold cache: valid in {store} only ({cold} tenants, uniform)"),
        &pairs,
        "database floor",
        0.90,
        Some(1.2),
    );
    let duties_floor = bench.floor(FloorKind::MissDuties(store_url), false).await;
    let cpu = CpuPerCall::start(vault, &duties_floor);
    let pairs = bench.compare(vault, None, &duties_floor, pick_cold.clone()).await;
    report.note(cpu.finish(&format!("cold cache on {store} against the design's own work"), &pairs));
    report.ratio_row(
        &format!(
            "cold cache on {store} against the design's own work per miss: the vault's read \
             statement, unsealing, the audit trail's count and rows (no cache, single flight, \
             authentication, policy or metrics)"
        ),
        &pairs,
        "floor doing the design's work per miss",
        0.90,
        Some(1.2),
    );
    let pairs = bench.compare(&duties_floor, None, &db_floor, pick_cold).await;
    report.bound_row(
        &format!(
            "bound on the cold cache on {store}: the design's own work per miss (the floor of the \
             row above, in the vault's place) against the database floor"
        ),
        &pairs,
        &format!("cold cache: valid in {store} only"),
    );
}

/// Refresh, one caller at a time: the vault's own time over the provider's delay, on both paths
/// an expired token takes. A token found stale in this replica's cache is refreshed with the
/// lease as the first statement; a token not cached (evicted, older than `cache_max_age`, or
/// last served by another replica) is read first, as on any cache miss.
/// Each path is priced by its own statements (`statements::refresh_once`): the same store
/// statements run from a bare client through `statements`, a `Store` on the vault's database,
/// on tenants of their own, taken alternately with the vault's calls and the floor's.
/// `pool` is the same database, for the context figures (bare one-row commits); `store` names
/// it in the rows' paths when it is not the run's Postgres database.
async fn refresh<DB>(
    bench: &Bench,
    report: &mut Report,
    vault: &Proc,
    statements: &token_vault::store::Store,
    keyring: &Keyring,
    pool: &sqlx::Pool<DB>,
    store: Option<&str>,
) where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    // Tokens live 2 s, so with the default margin they go stale 1 s after they are issued.
    // Each batch is connected, its cached half read once while still valid (which caches it),
    // and measured after 1.1 s: early enough that every cached entry is younger than the
    // default `cache_max_age` (5 s) when its sample runs.
    const BATCH: usize = 10;
    let samples = bench.plan.refresh_samples;
    bench.provider.set_expires_in(2);
    let clients = load::channels(&vault.target, 1).await;
    let provider_floor = bench.floor(FloorKind::Provider, false).await;
    let floor_clients = load::channels(&provider_floor.target, 1).await;
    // Provider requests during the measured calls, and during the reads that cache half the
    // tokens (none, unless a loaded machine makes such a read come after the token went stale).
    let (mut measured_requests, mut caching_requests) = (0, 0);
    let (mut cached_us, mut uncached_us, mut floor_us) = (Vec::new(), Vec::new(), Vec::new());
    let (mut stale_statements, mut uncached_statements) = (Vec::new(), Vec::new());
    let timed = async |clients: &[TokenVaultClient<Channel>], tenant: &str, out: &mut Vec<u32>| {
        let (took, answer) = load::burst(clients, tenant, 1).await.remove(0);
        answer.expect("the call succeeds");
        out.push(took.as_micros() as u32);
    };
    for batch in 0..samples.div_ceil(BATCH) {
        let size = BATCH.min(samples - batch * BATCH);
        // Each side's tenants of this batch: the vault's cached and uncached ones, and the bare
        // statements' stale and uncached ones.
        let named =
            |path: &str| -> Vec<String> { (0..size).map(|i| format!("refresh-{path}-{batch:03}-{i:02}")).collect() };
        let (cached, uncached) = (named("cached"), named("uncached"));
        let (stale_bare, uncached_bare) = (named("stale-statements"), named("uncached-statements"));
        bench
            .connect_tenants(
                vault,
                &[
                    cached.clone(),
                    uncached.clone(),
                    stale_bare.clone(),
                    uncached_bare.clone(),
                ]
                .concat(),
            )
            .await;
        // What a cached token would tell the vault: the generation to take the lease on.
        let mut stale_generations = Vec::with_capacity(size);
        for tenant in &stale_bare {
            let key = token_vault::connection_key::ConnectionKey::from_stored(tenant, "understory");
            let generation = statements.connections().generation(&key).await.expect("the read");
            stale_generations.push(generation.expect("a connected tenant"));
        }
        let before = bench.provider.refreshes();
        for tenant in &cached {
            timed(&clients, tenant, &mut Vec::new()).await;
        }
        caching_requests += bench.provider.refreshes() - before;
        // Stale by now even where a late caching read refreshed: that token lives 2 s as well.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = bench.provider.refreshes();
        // Alternating, so that every path sees the same moments of a noisy machine.
        for i in 0..size {
            timed(&clients, &cached[i], &mut cached_us).await;
            timed(&floor_clients, &cached[i], &mut floor_us).await;
            let (tenant, generation) = (&stale_bare[i], Some(stale_generations[i]));
            stale_statements
                .push(statements::refresh_once(statements, keyring, tenant, generation, PROVIDER_DELAY).await);
            timed(&clients, &uncached[i], &mut uncached_us).await;
            timed(&floor_clients, &uncached[i], &mut floor_us).await;
            uncached_statements
                .push(statements::refresh_once(statements, keyring, &uncached_bare[i], None, PROVIDER_DELAY).await);
        }
        measured_requests += bench.provider.refreshes() - before;
    }
    assert_eq!(
        measured_requests,
        4 * samples as u64,
        "one token request per measured call, from the vault and from the floor"
    );
    if caching_requests > 0 {
        report.note(format!(
            "refresh{}: {caching_requests} of the {samples} reads that cache a token came after it went stale and refreshed it",
            store.map(|s| format!(" on {s}")).unwrap_or_default()
        ));
    }
    for v in [&mut cached_us, &mut uncached_us, &mut floor_us] {
        v.sort_unstable();
    }
    // For context: the same token request sent straight to the provider by this process, and
    // what the database's statements cost on their own.
    let direct = bench.provider.direct_latencies(samples).await;
    let database = database_latencies(pool, samples.min(100), PROVIDER_DELAY).await;
    for (path, vault_us, bare) in [
        ("stale in the cache", &cached_us, &stale_statements),
        ("not cached", &uncached_us, &uncached_statements),
    ] {
        let path = match store {
            Some(store) => format!("{path}, on {store}"),
            None => path.to_string(),
        };
        report.refresh_row(&path, vault_us, &floor_us, bare, &direct, &database, PROVIDER_DELAY);
    }
    bench.provider.set_expires_in(3600);
}

/// Every `FLEET_SHARED`th tenant of the throughput scenario is asked for by this many callers
/// at once, the rest by one.
const FLEET_SHARED: usize = 50;
const FLEET_SHARED_CALLERS: usize = 3;

/// Refresh throughput: `fleet` connections expired together (as after an outage), callers at
/// `in_flight` asking for all of them, some tenants by several callers at once. Against two
/// references at the same concurrency, each on fleets of its own: the floor, a bare client
/// doing the work the design requires per refresh (a durable one-row commit for the lease, the
/// token request to the same provider, a durable one-row commit for the new tokens); and the
/// vault's own statements from a bare client (`statements.rs`), which splits the gap into the
/// statements' cost and the vault's. Each round seeds fleets of its own; the rounds rotate
/// which side goes first.
async fn refresh_throughput(bench: &Bench, report: &mut Report, vault: &Proc, pool: &PgPool, keyring: &Keyring) {
    let plan = &bench.plan;
    let in_flight = plan.shape.in_flight;
    let clients = load::channels(&vault.target, plan.shape.connections).await;
    let (mut pairs, mut statements_runs, mut requests, mut reused) = (Vec::new(), Vec::new(), 0, 0);
    let mut calls = 0;
    let provider_url = bench.provider.server.uri();
    for round in 0..plan.rounds {
        let tenants = seed::expired(pool, keyring, &format!("fleet{round}"), plan.fleet).await;
        let statements_tenants = seed::expired(pool, keyring, &format!("stmts{round}"), plan.fleet).await;
        // The callers' order: each tenant once, and the shared ones by further callers right
        // behind the first, so that they ask while its refresh is in flight.
        let asked: Vec<String> = tenants
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                let callers = if i % FLEET_SHARED == 0 { FLEET_SHARED_CALLERS } else { 1 };
                std::iter::repeat_n(t.clone(), callers)
            })
            .collect();
        calls = asked.len();
        let (mut vault_run, mut floor_run, mut statements_run) = (None, None, None);
        for side in 0..3 {
            match (round + side) % 3 {
                0 => {
                    let before = bench.provider.refreshes();
                    let reused_before = bench.provider.reused();
                    let mut run = load::each_once(&clients, Arc::new(asked.clone()), in_flight).await;
                    assert_eq!(run.errors, 0, "every call must succeed: {:?}", run.first_error);
                    requests += bench.provider.refreshes() - before;
                    reused += bench.provider.reused() - reused_before;
                    // Refreshes, not calls, are what the row counts.
                    run.requests = tenants.len() as u64;
                    vault_run = Some(run);
                }
                1 => floor_run = Some(floors::refresh_fleet(pool, &provider_url, round, plan.fleet, in_flight).await),
                _ => {
                    let reused_before = bench.provider.reused();
                    let (run, steps) = statements::refresh_fleet(
                        &bench.database_url,
                        Arc::new(keyring.clone()),
                        &provider_url,
                        statements_tenants.clone(),
                        in_flight,
                    )
                    .await;
                    report.note(format!(
                        "refresh throughput, round {round}: the statements side's mean per refresh: read {:.2} ms, lease {:.2} ms, token request {:.2} ms, store {:.2} ms",
                        steps[0], steps[1], steps[2], steps[3]
                    ));
                    statements_run = Some(run);
                    assert_eq!(
                        bench.provider.reused(),
                        reused_before,
                        "the statements side presents each refresh token once"
                    );
                }
            }
        }
        pairs.push(Pair {
            vault: vault_run.unwrap(),
            floor: floor_run.unwrap(),
            // Three sides rotate here, so no one order is "first".
            vault_first: None,
        });
        statements_runs.push(statements_run.unwrap());
    }
    let fleet = (plan.fleet * plan.rounds) as u64;
    assert_eq!(requests, fleet, "exactly one provider request per expired tenant");
    assert_eq!(reused, 0, "no refresh token presented twice");
    report.refresh_throughput_row(plan.fleet, calls, in_flight, &pairs, requests, reused, PROVIDER_DELAY);
    report.refresh_statements_row(plan.fleet, &pairs, &statements_runs);
}

/// The embedded store: the hot path, the cold cache and a refresh with the vault on a SQLite
/// file (synchronous = FULL, as it runs), against floors of the same kinds as the Postgres rows,
/// the cold cache's floor reading the same file. Beside the Postgres rows, so that the table shows
/// what choosing the one-node store costs or saves.
async fn sqlite(bench: &Bench, report: &mut Report, keyring: &Keyring) {
    let plan = &bench.plan;
    let url = format!("sqlite://{}", bench.dir.join("vault.sqlite").display());
    let secret_url = secrecy::SecretString::from(url.clone());
    token_vault::store::Store::create_database_if_missing(&secret_url)
        .await
        .expect("the SQLite file can be created");
    store_at(&url).migrate().await.expect("the SQLite store migrates");
    let pool = SqlitePool::connect(&url).await.expect("the SQLite file opens");
    let seeding = Instant::now();
    seed::connections_sqlite(&pool, keyring, plan.cold_tenants).await;
    settle_seeded_counts(&url, None).await;
    report.note(format!(
        "seeded {} connections into SQLite in {:.1} s",
        plan.cold_tenants,
        seeding.elapsed().as_secs_f64()
    ));
    let (vault, _) = bench
        .vault_with(
            Callers::Anyone,
            VaultOptions {
                database_url: Some(&url),
                ..VaultOptions::default()
            },
        )
        .await;

    let hot = Arc::new(tenant_names("hot", 100));
    bench.connect_tenants(&vault, &hot).await;
    let grpc_floor = bench.fresh_grpc_floor().await;
    let pairs = bench.compare(&vault, None, &grpc_floor, round_robin(hot)).await;
    report.ratio_row(
        "hot path on SQLite: token valid and cached",
        &pairs,
        "gRPC floor",
        0.90,
        Some(1.2),
    );
    cold_cache_on(
        bench,
        report,
        &vault,
        FloorKind::SqliteDatabase(url.clone()),
        url.clone(),
        "SQLite",
    )
    .await;
    let statements = statements::vault_sized_store(&url);
    refresh(bench, report, &vault, &statements, keyring, &pool, Some("SQLite")).await;
    sqlite_write_burst(bench, report, &statements, keyring).await;
    statements.close().await;
    drop(vault);
    keeper_on_sqlite(bench, report, &url, &pool, keyring).await;
    pool.close().await;
}

/// SQLite runs one write at a time: a burst of refreshes' writes from one process (the lease
/// and the store, through `token_vault::store::Store` with the vault's pool size) against the same writes one at a
/// time, on seeded tenants nothing else touches (the last of the seed). In order, waiting
/// writers' slowest is about `in_flight` writes' time; a writer polling SQLite's lock instead
/// waits for its sleeps. A note, not a row: the issue sets no target for it.
async fn sqlite_write_burst(bench: &Bench, report: &mut Report, store: &token_vault::store::Store, keyring: &Keyring) {
    let plan = &bench.plan;
    let (burst, alone) = (plan.fleet / 4, plan.fleet / 20);
    let first = plan.cold_tenants - (burst + alone) as u64;
    let tenants: Vec<String> = (first..plan.cold_tenants).map(seed::tenant).collect();
    let (alone_tenants, burst_tenants) = tenants.split_at(alone);
    let keyring = Arc::new(keyring.clone());
    let one_at_a_time = statements::write_burst(store, keyring.clone(), alone_tenants.to_vec(), 1).await;
    let in_flight = plan.shape.in_flight;
    let together = statements::write_burst(store, keyring, burst_tenants.to_vec(), in_flight).await;
    let budget = in_flight as f64 * one_at_a_time.percentile_ms(0.5);
    report.note(format!(
        "SQLite, a refresh's writes (the lease, then the store) for {burst} connections, {in_flight} at once from one process: \
         {:.0}/s, p50 {:.2} ms p99 {:.2} ms max {:.2} ms; one at a time ({alone}): {:.0}/s, p50 {:.2} ms; \
         the slowest waited {:.2} x {in_flight} one-at-a-time writes ({budget:.1} ms)",
        together.rps(),
        together.percentile_ms(0.5),
        together.percentile_ms(0.99),
        together.percentile_ms(1.0),
        one_at_a_time.rps(),
        one_at_a_time.percentile_ms(0.5),
        together.percentile_ms(1.0) / budget,
    ));
}

/// Stampede: 1,000 concurrent callers on one expired tenant, and the same burst against the
/// constant floor, `rounds` times (a tenant of its own each time, the floor's burst right
/// after the vault's): one burst's slowest caller swings by tens of ms on a busy machine, so
/// the row compares the medians.
async fn stampede(bench: &Bench, report: &mut Report, vault: &Proc, grpc_floor: &Proc) {
    let callers = bench.plan.stampede_callers;
    bench.provider.set_expires_in(2);
    let tenants: Vec<String> = (0..bench.plan.rounds).map(|i| format!("stampede-{i}")).collect();
    bench.connect_tenants(vault, &tenants).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The tokens the bursts' refreshes bring stay valid for the rest of each burst, however
    // slowly a busy machine or a dev build answers its 1,000 calls.
    bench.provider.set_expires_in(3600);
    let clients = load::channels(&vault.target, 8).await;
    let floor_clients = load::channels(&grpc_floor.target, 8).await;
    let mut bursts = Vec::new();
    for tenant in &tenants {
        let before = bench.provider.refreshes();
        let answers = load::burst(&clients, tenant, callers).await;
        let refreshes = bench.provider.refreshes() - before;
        // The same burst against the constant floor: what fanning 1,000 calls out and back
        // costs this client and this machine, with no refresh at all.
        let floor_answers = load::burst(&floor_clients, tenant, callers).await;
        bursts.push(report::Burst {
            answers,
            floor_answers,
            refreshes,
        });
    }
    report.stampede_row(&bursts, PROVIDER_DELAY);
}

/// The keeper's pace in the keeper scenario: the default `keepalive.max_per_second`.
const KEEPER_RATE: u32 = 20;

/// How many due connections the keeper's claim takes at a time in the keeper scenarios: the
/// keeper's own batch.
const CLAIM_BATCH: i64 = 200;

/// Keep-alive at scale. Every seeded connection is in the keeper's index and `keeper_due` of
/// them are due. First the cost of finding due connections: the keeper's claim statement (the
/// store's own) taking batches of 200, timed, and its plan, which must be a range scan of the
/// partial index and not a scan of the table. Then the hot path while a keeper works through the
/// due connections (each a real refresh against the provider), against the gRPC floor, beside
/// the hot path's own row.
async fn keeper(bench: &Bench, report: &mut Report, pool: &PgPool, keyring: &Keyring) {
    let due = bench.plan.keeper_due;
    seed::keepalive(pool, keyring, due).await;
    let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM connections WHERE keepalive_due_at IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap();
    let explained: Vec<String> = sqlx::query_scalar(
        r#"EXPLAIN SELECT id FROM connections
            WHERE status = 'active' AND keepalive_due_at IS NOT NULL AND keepalive_due_at <= now()
              AND (keepalive_claimed_until IS NULL OR keepalive_claimed_until <= now())
              AND (refresh_lease_until IS NULL OR refresh_lease_until <= now())
              AND provider = ANY('{understory}')
            ORDER BY keepalive_due_at LIMIT 200 FOR UPDATE SKIP LOCKED"#,
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let index_scan = explained.iter().any(|line| line.contains("connections_keepalive_due"))
        && !explained.iter().any(|line| line.contains("Seq Scan"));
    let claim_us = time_claims(pool.connect_options().to_url_lossy().as_ref(), due).await;
    // The timed claims are given back, for the keeper to take.
    sqlx::query(GIVE_BACK_CLAIMS).execute(pool).await.unwrap();
    report.keeper_claim_row("keeper", indexed, due, CLAIM_BATCH, &claim_us, index_scan, &explained);
    hot_path_while_keeper(bench, report, None).await;
}

/// The same two rows on the embedded store, after the SQLite scenario's other rows (its seeded
/// file, 1,000,000 connections in the full run). SQLite's planner has no statistics on a vault's
/// file (nothing there runs ANALYZE), and without them it had planned this claim as a read of
/// every connection (docs/performance.md, "The keeper's claim on SQLite read every connection"),
/// so the statistics the seed gathered are deleted first and the row times the claim as it runs
/// in production. The plan is the claim file's own (`EXPLAIN QUERY PLAN`), read on a connection
/// opened after the deletion.
async fn keeper_on_sqlite(bench: &Bench, report: &mut Report, url: &str, pool: &SqlitePool, keyring: &Keyring) {
    let due = bench.plan.keeper_due;
    seed::keepalive_sqlite(pool, keyring, due).await;
    sqlx::query("DELETE FROM sqlite_stat1")
        .execute(pool)
        .await
        .expect("the seed's statistics are deleted");
    let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM connections WHERE keepalive_due_at IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut conn = SqliteConnection::connect(url).await.expect("the SQLite file opens");
    let claim = include_str!("../../src/store/sqlite/keepalive_claim.sql");
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {claim}"))
        .bind(CLAIM_BATCH)
        .bind("+60.000 seconds")
        .bind(r#"["understory"]"#)
        .fetch_all(&mut conn)
        .await
        .expect("the claim's plan");
    conn.close().await.ok();
    let explained: Vec<String> = plan.into_iter().map(|(_, _, _, detail)| detail).collect();
    let index_scan = explained
        .iter()
        .any(|step| step.starts_with("SEARCH connections USING INDEX connections_keepalive_due (keepalive_due_at"))
        && !explained
            .iter()
            .any(|step| step.contains("TEMP B-TREE") || step.starts_with("SCAN connections"));
    let claim_us = time_claims(url, due).await;
    sqlx::query(GIVE_BACK_CLAIMS).execute(pool).await.unwrap();
    report.keeper_claim_row(
        "keeper on SQLite",
        indexed,
        due,
        CLAIM_BATCH,
        &claim_us,
        index_scan,
        &explained,
    );
    hot_path_while_keeper(bench, report, Some(url)).await;
}

/// Clears the claims [`time_claims`] took, so that the keeper finds those connections due.
const GIVE_BACK_CLAIMS: &str =
    "UPDATE connections SET keepalive_claimed_until = NULL WHERE keepalive_claimed_until IS NOT NULL";

/// The store's own claim statement, through `token_vault::store::Store`, taking
/// [`CLAIM_BATCH`] due connections at a time (at most 50 times, never more than are due): each
/// claim's latency in microseconds, sorted.
async fn time_claims(url: &str, due: u64) -> Vec<u32> {
    let store = store_at(url);
    let claims = (due as i64 / CLAIM_BATCH).clamp(1, 50);
    let mut claim_us = Vec::new();
    for _ in 0..claims {
        let started = Instant::now();
        let claim = store
            .keepalive()
            .claim(CLAIM_BATCH, Duration::from_secs(60), &["understory".to_string()])
            .await
            .expect("the claim statement runs");
        claim_us.push(started.elapsed().as_micros() as u32);
        assert_eq!(
            claim.connections.len() as i64,
            CLAIM_BATCH,
            "enough connections are due"
        );
    }
    store.close().await;
    claim_us.sort_unstable();
    claim_us
}

/// The hot path (the `hot-*` tenants, cached after the warm-up) while a keeper refreshes due
/// connections at the default pace (keepalive.max_per_second = 20): what a replica working
/// through a backlog of due connections costs its callers in production. `database_url`: the
/// SQLite file, or the run's Postgres database.
async fn hot_path_while_keeper(bench: &Bench, report: &mut Report, database_url: Option<&str>) {
    let hot = Arc::new(tenant_names("hot", 100));
    let (busy, _) = bench
        .vault_with(
            Callers::Anyone,
            VaultOptions {
                keeper_rate: Some(KEEPER_RATE),
                database_url,
                ..VaultOptions::default()
            },
        )
        .await;
    bench.connect_tenants(&busy, &hot).await;
    let grpc_floor = bench.fresh_grpc_floor().await;
    let before = bench.provider.refreshes();
    let started = Instant::now();
    let pairs = bench.compare(&busy, None, &grpc_floor, round_robin(hot)).await;
    let refreshed = bench.provider.refreshes() - before;
    let took = started.elapsed();
    assert!(refreshed > 0, "the keeper refreshed while the hot path was measured");
    let on = if database_url.is_some() { " on SQLite" } else { "" };
    report.ratio_row(
        &format!(
            "hot path{on} while the keeper refreshes ({refreshed} keep-alives in {:.0} s, at most {KEEPER_RATE}/s)",
            took.as_secs_f64()
        ),
        &pairs,
        "gRPC floor",
        0.90,
        Some(1.2),
    );
}

/// How many times the scale scenario sweeps the same tokens again.
const REPEATED_SWEEPS: usize = 6;

/// The scale scenario's `cache_max_age`. A sweep of 200,000 tokens takes far longer than the
/// default 5 s, so with the default the cache holds only the last few seconds' tokens and what
/// RSS shows is their churn, not the bound the cache's size sets. An hour outlasts the run: no
/// entry expires, every sweep leaves the cache full, and only `cache_max_entries` bounds it.
const SCALE_CACHE_MAX_AGE: &str = "1h";

/// Scale: start-up with every seeded connection stored, and memory per cached token.
async fn scale(bench: &Bench, report: &mut Report, startup_empty: Duration) {
    let plan = &bench.plan;
    let (vault, startup_full) = bench.vault(Callers::Anyone, Some(SCALE_CACHE_MAX_AGE)).await;
    let rss_start = vault.rss_bytes();
    let warm = |count: u64| warm_cache(&vault.target, count);
    // RSS with the cache half full, then once it is full: the growth between the two is what
    // each cached token costs, apart from what the process grows by under any load (pooled
    // connections' buffers, the allocator's per-thread pages).
    let half = (plan.cache_entries / 2).min(plan.cold_tenants);
    warm(half).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_half = vault.rss_bytes();
    // RSS once the cache is full, then after two, four and eight times as many distinct tokens
    // as it holds: a bounded cache stops growing after the first point.
    let mut points = Vec::new();
    let mut warmed = 0;
    for multiple in [1, 2, 4, 8] {
        let count = (plan.cache_entries * multiple).min(plan.cold_tenants);
        if count <= warmed {
            break;
        }
        warm(count).await;
        warmed = count;
        tokio::time::sleep(Duration::from_millis(500)).await;
        points.push((count, vault.rss_bytes()));
    }
    // Then the same distinct tokens, twice the cache's worth, swept again and again: every
    // sweep evicts and admits entries all the way through, and a process whose memory is
    // bounded stays where it is. RSS still moves a little from one reading to the next (what
    // the allocator keeps of freed pages); a leak is a trend across sweeps, which the report
    // checks by comparing the medians of the first and the second half of them.
    let sweep = (plan.cache_entries * 2).min(plan.cold_tenants);
    let mut repeats = Vec::new();
    for _ in 0..REPEATED_SWEEPS {
        warm(sweep).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        repeats.push(vault.rss_bytes());
    }
    // The memory floor: a vault of the same build and settings whose cache holds
    // `MEMORY_FLOOR_CACHE` entries, taken through the same fill and two of the sweeps. What it
    // grows by is what the process grows by under this load without a full cache (pools'
    // buffers, per-thread pages, the allocator's reuse of freed memory); the vault's growth
    // beyond it is the cache's.
    let (floor_vault, _) = bench
        .vault_with(
            Callers::Anyone,
            VaultOptions {
                cache_max_age: Some(SCALE_CACHE_MAX_AGE),
                cache_entries: Some(MEMORY_FLOOR_CACHE),
                ..VaultOptions::default()
            },
        )
        .await;
    let floor_start = floor_vault.rss_bytes();
    warm_cache(&floor_vault.target, half).await;
    warm_cache(&floor_vault.target, plan.cache_entries.min(plan.cold_tenants)).await;
    let mut floor_repeats = Vec::new();
    for _ in 0..REPEATED_SWEEPS / 2 {
        warm_cache(&floor_vault.target, sweep).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        floor_repeats.push(floor_vault.rss_bytes());
    }
    drop(floor_vault);
    report.memory_floor_row(
        plan.cache_entries,
        (rss_start, &repeats),
        (MEMORY_FLOOR_CACHE, floor_start, &floor_repeats),
    );
    report.scale_row(
        plan.cold_tenants,
        startup_empty,
        startup_full,
        plan.cache_entries,
        rss_start,
        (half, rss_half),
        &points,
        sweep,
        &repeats,
    );
}

/// The memory floor's cache: small enough that its entries weigh nothing beside the scale
/// scenario's, large enough to be an ordinary cache.
const MEMORY_FLOOR_CACHE: u64 = 1_000;

/// Asks the vault at `target` for the tokens of seeded tenants `0..count`, each once, 64 at a
/// time.
async fn warm_cache(target: &Target, count: u64) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients = load::channels(target, 4).await;
    let workers = (0..64).map(|w| {
        let mut client = clients[w % clients.len()].clone();
        let next = next.clone();
        async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return;
                }
                client
                    .get_access_token(proto::GetAccessTokenRequest {
                        tenant_id: seed::tenant(i),
                        ..Default::default()
                    })
                    .await
                    .expect("a seeded tenant's token");
            }
        }
    });
    futures::future::join_all(workers).await;
}

/// Folds the status changes a seed leaves (a row per connection, from the store's triggers) as
/// a vault's first count of connections would, and on Postgres vacuums them away. Loading a
/// million connections at once is not what any row measures; left alone, the first vault
/// started after the seed would fold them, and autovacuum clean up after it, during that row.
async fn settle_seeded_counts(url: &str, postgres: Option<&PgPool>) {
    let store = store_at(url);
    store
        .connections()
        .count_by_status()
        .await
        .expect("the seeded connections are counted");
    store.close().await;
    if let Some(pool) = postgres {
        sqlx::query("VACUUM (ANALYZE) connection_status_changes")
            .execute(pool)
            .await
            .expect("the folded changes are vacuumed");
    }
}

/// The vault's store for the database at `url`.
fn store_at(url: &str) -> token_vault::store::Store {
    token_vault::store::Store::connect_lazy(
        &secrecy::SecretString::from(url.to_owned()),
        &token_vault::store::PoolOptions {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        },
    )
    .expect("a database URL")
}
