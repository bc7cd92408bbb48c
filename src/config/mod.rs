//! Typed settings, loaded once at start-up from embedded defaults, an optional TOML file and
//! `TOKEN_VAULT_`-prefixed environment variables (later sources win), then validated. Any error
//! names the setting at fault and stops start-up.
//!
//! Environment variables use `__` between levels: `TOKEN_VAULT_DATABASE__URL`,
//! `TOKEN_VAULT_PROVIDERS__UNDERSTORY__CLIENT_SECRET`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod client_secrets;
mod metadata;
mod presets;
mod provider;

pub use client_secrets::{ClientSecretError, ClientSecrets, SecretsReload};
pub use metadata::{is_secure_or_loopback, well_known_urls, ServerMetadata};
pub use provider::{is_valid_scope, AuthMethod, ProviderConfig, ProviderSettings};

/// The defaults every deployment starts from; see `config/` for annotated examples.
const DEFAULTS: &str = include_str!("../../config/defaults.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a `source`: the message already holds figment's, and `{:#}` would print it twice.
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    #[error("configuration: `{field}` {problem}")]
    Invalid { field: String, problem: String },
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        Self::Load(error)
    }
}

pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Real keys required; nothing is generated.
    Production,
    /// Generates and keeps a local keyring when none is configured, and says so loudly.
    Development,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when standard output is not a terminal (containers), text otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mode: Mode,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub encryption: EncryptionSettings,
    pub keys: KeysSettings,
    pub vault: VaultSettings,
    pub refresh: RefreshSettings,
    pub failover: FailoverSettings,
    pub keepalive: KeepaliveSettings,
    pub events: EventsSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub audit: AuditSettings,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Where the gRPC server listens; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// How long in-flight calls may finish after SIGTERM before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections open at once on each listener, established or still handshaking. Past it a
    /// new connection is closed as soon as it is accepted: each one costs a task and buffers,
    /// and no credentials are needed to open one.
    pub max_connections: u32,
    /// From accept until the TLS handshake is done and the HTTP/2 preface has arrived; a
    /// connection that takes longer is closed, so that idle sockets can't hold connection slots.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Idle time before the kernel probes a quiet TCP connection (SO_KEEPALIVE), so that
    /// middleboxes keep it and a vanished host is noticed.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// How often the server pings an HTTP/2 connection, and how long it waits for the answer
    /// before dropping the connection as dead (its calls are cancelled, its slot freed).
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// The longest a call may take until its answer starts; the caller gets CANCELLED past it.
    /// Bounds unary calls; a streaming answer (health Watch) is bounded by the limits below.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Open `grpc.health.v1.Health/Watch` streams, in all and per connection. Health needs no
    /// credentials and a Watch stream lives until the client ends it.
    pub max_health_watches: u32,
    pub max_health_watches_per_connection: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May hold a password, so it is a secret (see `secret_setting`).
    #[serde(deserialize_with = "secret_setting::database_url")]
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Create the database named in `url` if it does not exist, on `serve` and `migrate`
    /// (development convenience): a Postgres database, or a SQLite file and its directory.
    /// Off, a missing SQLite file stops the start (`startup::open_store`).
    pub create_if_missing: bool,
    /// Run pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    /// The keyring inline: `id:base64,id:base64` (newest last). Prefer `keyring_file`.
    #[serde(default, deserialize_with = "secret_setting::inline_keyring")]
    pub keyring: Option<SecretString>,
    /// A file holding the keyring, one `id:base64` per line (e.g. a Kubernetes secret mount).
    pub keyring_file: Option<PathBuf>,
    /// The key that seals new values; defaults to the last key listed.
    pub active_key: Option<String>,
    /// Development mode only: where a generated keyring is kept between runs.
    pub development_keyring_file: PathBuf,
}

/// Keys over time: reloading the keyring file, and `keys rewrap` (see docs/keys.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSettings {
    /// How often `encryption.keyring_file` is checked for a changed keyring; `0s` checks only on
    /// SIGHUP.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Rows re-sealed per transaction by `keys rewrap`: row locks last one batch.
    pub rewrap_batch_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// The provider used when a request leaves `provider` empty; may be omitted when exactly
    /// one provider is configured.
    pub default_provider: Option<String>,
    /// How long a state from BeginAuthorization stays usable.
    #[serde(with = "humantime_serde")]
    pub state_ttl: Duration,
    /// Open (unused, unexpired) states per tenant and provider. Beginning one more deletes the
    /// oldest, whose callback then gets INVALID_STATE.
    pub max_open_states: u32,
    /// How often used and expired states are deleted.
    #[serde(with = "humantime_serde")]
    pub state_sweep_interval: Duration,
    /// The least remaining validity of a returned token when the caller does not ask.
    #[serde(with = "humantime_serde")]
    pub default_min_valid_for: Duration,
    /// The margin never exceeds this fraction of a token's lifetime, so a fresh token is never
    /// refreshed at once (each refresh kills the access tokens callers hold).
    pub max_margin_fraction: f64,
    /// How many decrypted access tokens each replica keeps in memory.
    pub cache_max_entries: u64,
    /// How long a cached token is trusted before the database is read again. Bounds how long
    /// a replica can hand out a token that another replica's refresh has replaced.
    #[serde(with = "humantime_serde")]
    pub cache_max_age: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSettings {
    /// How long the refresh exclusion lasts once taken. Must exceed the provider's whole retry
    /// budget, so that no other replica can start a refresh while one may still be in flight.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often a replica that waits on another replica's refresh looks again.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Token-endpoint attempts per refresh for transient failures (1 = no retry).
    pub max_attempts: u32,
    /// First backoff between attempts; doubled each time, with full jitter.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest pause between attempts to store a received refresh token.
    #[serde(with = "humantime_serde")]
    pub store_retry_max_backoff: Duration,
}

/// The keeper: refreshes idle connections before their refresh token expires. Every replica
/// runs one; they claim work through Postgres, so no leader is needed. See `vault::keeper`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSettings {
    pub enabled: bool,
    /// How often each replica looks for due connections.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The most keep-alive refreshes one replica starts per second: the provider never sees a
    /// stampede however many connections fall due together.
    pub max_per_second: u32,
    /// How long a claimed connection is skipped by other replicas' keepers; also the pause
    /// before a failed keep-alive is tried again.
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Duration,
}

/// The connection events table and its watchers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    /// Events older than this are deleted; a cursor older than this is refused.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Watchers read the table at least this often, even without a notification.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Events queued for one watcher; a watcher further behind is ended (WATCH_TOO_SLOW).
    pub watch_buffer: usize,
    /// Watch streams open at once on one replica.
    pub max_watchers: usize,
    /// How often each replica deletes events past `retention`.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

/// How long rotated (superseded) refresh tokens keep their ciphertext. A superseded token is
/// never sent again; it is kept only as evidence for an investigation. Its row (metadata)
/// stays; the ciphertext is purged once it is outside both bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Keep the ciphertexts of the newest N superseded generations of each connection.
    pub keep_generations: u32,
    /// Keep ciphertexts superseded less than this long ago.
    #[serde(with = "humantime_serde")]
    pub keep_for: Duration,
    /// How often the purge runs (its own task on every replica, whether or not the keeper is
    /// enabled).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

/// Surviving a database that went back in time (a failover to a standby that missed commits, a
/// restore). See `vault::failover`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSettings {
    /// How often each replica checks which database it talks to (and its durability).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// After a change of database is first seen, how long refreshes wait, so that replicas
    /// holding rotations the database lost write them back first. Must exceed
    /// `check_interval`.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long each replica keeps the rotations it stored (sealed, in memory), to write back.
    #[serde(with = "humantime_serde")]
    pub rotation_window: Duration,
    /// The most rotations kept per replica; the oldest go first.
    pub max_rotations: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `token_vault=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An OTLP/gRPC collector, e.g. `http://otel-collector:4317`; unset exports nothing.
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every span and metric.
    pub service_name: String,
    /// How often metrics are exported.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// How often the connection counts (by status) are read from the database.
    #[serde(with = "humantime_serde")]
    pub connection_count_interval: Duration,
    /// Serve the metrics for Prometheus here (e.g. `0.0.0.0:9464`): `GET /metrics` over plaintext
    /// HTTP/1.1, no credentials, the same instruments as the OTLP export. Unset serves none.
    /// A port of its own rather than the health port: that one speaks gRPC (HTTP/2) only and
    /// exists only beside a TLS listener, while Prometheus scrapes HTTP/1.1 whatever the TLS.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// TLS on the gRPC listener. Files, so that Kubernetes secret mounts (and cert-manager's
/// rotation of them) work; they are read once at start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM). Unset serves plaintext gRPC.
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to: turns on mutual TLS. Callers
    /// identified by certificate (`auth.callers[].mtls_*`) need it.
    pub client_ca_file: Option<PathBuf>,
    /// With TLS on, also serve grpc.health.v1 alone, in plaintext, here (e.g. `0.0.0.0:8081`):
    /// kubelet gRPC probes speak no TLS. Nothing else is served on it.
    pub plaintext_health_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Every call outside health needs a configured caller (default).
    Enforce,
    /// No authentication: every call is let through as caller `insecure-dev`. Logged loudly.
    InsecureDev,
}

/// Who may call the vault and what each caller may do; see docs/security.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// A TOML file with the callers (`[[callers]]`, same fields as `auth.callers`), e.g. a
    /// ConfigMap mount. Exclusive with inline `callers`.
    pub policy_file: Option<PathBuf>,
    /// The callers, inline.
    #[serde(default)]
    pub callers: Vec<CallerSettings>,
    /// Accept bearer tokens on a listener without TLS (only behind something that terminates
    /// TLS next to the vault, such as a sidecar); otherwise bearer callers require `tls`.
    pub allow_bearer_without_tls: bool,
    /// Concurrent calls a caller may have in flight unless its entry says otherwise.
    pub default_max_concurrent_calls: u32,
    /// BeginAuthorization calls per second (sustained) and burst a configured caller may make
    /// unless its entry says otherwise: each call writes a row. (`insecure-dev` has no limits.)
    pub default_begin_authorization_per_second: u32,
    pub default_begin_authorization_burst: u32,
}

/// One caller: how it is recognised and what it may do. Nothing is allowed that isn't listed.
/// `PartialEq`: a reloaded policy keeps the callers whose entries did not change (and so their
/// calls in flight and rate budgets).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSettings {
    /// The caller's name in the audit trail and logs: 1 to 64 of A-Z a-z 0-9 `.` `_` `-`.
    pub name: String,
    /// Client-certificate URI SANs that identify it, e.g. a SPIFFE ID.
    #[serde(default)]
    pub mtls_uris: Vec<String>,
    /// Client-certificate DNS SANs that identify it.
    #[serde(default)]
    pub mtls_dns_names: Vec<String>,
    /// SHA-256 of each bearer token it may present (64 hex digits, as sha256sum prints), never the token itself.
    /// Several during a rotation.
    #[serde(default)]
    pub bearer_token_sha256: Vec<String>,
    /// RPC names (`GetAccessToken`, …) or `*`.
    pub rpcs: Vec<String>,
    /// Provider names or `*`.
    pub providers: Vec<String>,
    /// Tenant ids: exact, a prefix pattern ending in `*` (`team-a-*`), or `*`.
    pub tenants: Vec<String>,
    pub max_concurrent_calls: Option<u32>,
    /// A sustained rate with `burst` on top; unset means no rate limit (the concurrency limit
    /// still applies).
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    /// BeginAuthorization's own rate, on top of the above; unset means
    /// `auth.default_begin_authorization_per_second` and `_burst`.
    pub begin_authorization_per_second: Option<u32>,
    pub begin_authorization_burst: Option<u32>,
}

/// The audit trail: table `audit_events` and log target `token_vault::audit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// How long rows are kept; the sweeper deletes older ones. At least a day.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often aggregated counts (GetAccessToken, GetConnection, denials) are written.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Events waiting for the writer; past this, events are dropped and counted, never waited on.
    pub queue_capacity: usize,
    /// Distinct aggregation keys kept per window; past this, calls are counted under one
    /// overflow row.
    pub max_aggregate_keys: usize,
    /// How often the retention sweeper runs.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

/// Deserializers for the settings that hold secrets. A secret is taken only as a string, exactly
/// as written; anything else is refused with an error that names what to do but never holds the
/// value. Serde's own type errors quote the value they found ("found unsigned int `123456`"),
/// and the start-up error is printed and logged. Converting instead is no way out: the
/// environment provider reads `0123` as the number 123, so the secret would silently change.
mod secret_setting {
    use std::fmt;

    use secrecy::SecretString;
    use serde::de::{self, Deserializer, Visitor};

    /// The refusal, for every kind of value that is not a string. Figment appends " for key
    /// <setting> in <source>", which ends the last sentence.
    fn not_a_string<E: de::Error>(alternative: &str) -> E {
        E::custom(format_args!(
            "a secret setting must be a string; its value is not shown here, and a number is not \
             converted (0123 would become 123). Quote it in TOML; in an environment variable wrap \
             it in double quotes, e.g. TOKEN_VAULT_…='\"0123\"'{alternative}. Found something \
             other than a string"
        ))
    }

    struct SecretText {
        /// Where else the secret may come from, appended to the refusal.
        alternative: &'static str,
    }

    /// Rejects every non-string visit explicitly: serde's defaults would report the value.
    macro_rules! refuse {
        ($($method:ident($ty:ty)),* $(,)?) => {
            $(fn $method<E: de::Error>(self, _: $ty) -> Result<SecretString, E> {
                Err(not_a_string(self.alternative))
            })*
        };
    }

    impl<'de> Visitor<'de> for SecretText {
        type Value = SecretString;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretString, E> {
            Ok(SecretString::from(v.to_owned()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<SecretString, E> {
            Ok(SecretString::from(v))
        }

        refuse!(
            visit_bool(bool),
            visit_i64(i64),
            visit_i128(i128),
            visit_u64(u64),
            visit_u128(u128),
            visit_f64(f64),
            // The environment provider reads `'x'` as the character x: the quotes would be lost.
            visit_char(char),
            visit_bytes(&[u8]),
        );

        fn visit_none<E: de::Error>(self) -> Result<SecretString, E> {
            Err(not_a_string(self.alternative))
        }

        fn visit_unit<E: de::Error>(self) -> Result<SecretString, E> {
            Err(not_a_string(self.alternative))
        }

        fn visit_some<D: Deserializer<'de>>(self, _: D) -> Result<SecretString, D::Error> {
            Err(not_a_string(self.alternative))
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<SecretString, D::Error> {
            Err(not_a_string(self.alternative))
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretString, A::Error> {
            Err(not_a_string(self.alternative))
        }

        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<SecretString, A::Error> {
            Err(not_a_string(self.alternative))
        }

        fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<SecretString, A::Error> {
            Err(not_a_string(self.alternative))
        }
    }

    fn secret<'de, D: Deserializer<'de>>(d: D, alternative: &'static str) -> Result<SecretString, D::Error> {
        d.deserialize_string(SecretText { alternative })
    }

    pub(super) fn database_url<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        secret(d, "")
    }

    pub(super) fn inline_keyring<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        secret(d, "; or use `encryption.keyring_file`").map(Some)
    }

    pub(super) fn client_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        secret(d, "; or put it in a file named by the provider's `client_secret_file`").map(Some)
    }
}

impl Settings {
    /// Loads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Self::defaults();
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid("--config", format!("file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        Self::from_figment(figment.merge(Env::prefixed("TOKEN_VAULT_").split("__").ignore(&["config"])))
    }

    /// The embedded defaults, for callers that layer their own sources on top (tests).
    pub fn defaults() -> Figment {
        Figment::new().merge(Toml::string(DEFAULTS))
    }

    /// Extracts and validates settings from any layering of sources.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.failover.grace <= self.failover.check_interval {
            return Err(invalid(
                "failover.grace",
                "must exceed failover.check_interval, so that every replica has looked for lost rotations before refreshes resume",
            ));
        }
        if self.failover.check_interval.is_zero() || self.failover.max_rotations == 0 {
            return Err(invalid(
                "failover.check_interval",
                "and failover.max_rotations must be positive",
            ));
        }
        if self.keepalive.interval.is_zero() || self.keepalive.max_per_second == 0 || self.keepalive.claim_ttl.is_zero()
        {
            return Err(invalid(
                "keepalive.interval",
                "keepalive.max_per_second and keepalive.claim_ttl must be positive (set keepalive.enabled = false to turn the keeper off)",
            ));
        }
        // A replica takes up to one interval to start what it claimed: a shorter claim would
        // lapse before its last keep-alive starts, and another replica would claim it too (the
        // refresh lease still keeps it to one refresh, but the claim is meant to spare that).
        if self.keepalive.claim_ttl <= self.keepalive.interval {
            return Err(invalid("keepalive.claim_ttl", "must be longer than keepalive.interval"));
        }
        if self.events.poll_interval.is_zero()
            || self.events.watch_buffer == 0
            || self.events.retention.is_zero()
            || self.events.sweep_interval.is_zero()
        {
            return Err(invalid(
                "events.poll_interval",
                "events.watch_buffer, events.retention and events.sweep_interval must be positive",
            ));
        }
        if self.retention.sweep_interval.is_zero() {
            return Err(invalid("retention.sweep_interval", "must be positive"));
        }
        if self.database.url.expose_secret().is_empty() {
            return Err(invalid("database.url", "must be set"));
        }
        // The scheme chooses the store (src/store): Postgres, or the embedded SQLite file.
        let scheme = self
            .database
            .url
            .expose_secret()
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql" | "sqlite")) {
            return Err(invalid(
                "database.url",
                "must be a postgres://, postgresql:// or sqlite:// URL",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if !(0.0..=0.9).contains(&self.vault.max_margin_fraction) {
            return Err(invalid("vault.max_margin_fraction", "must be between 0 and 0.9"));
        }
        if self.vault.state_ttl.is_zero() {
            return Err(invalid("vault.state_ttl", "must be positive"));
        }
        if self.vault.max_open_states == 0 {
            return Err(invalid("vault.max_open_states", "must be at least 1"));
        }
        if self.vault.state_sweep_interval.is_zero() {
            return Err(invalid("vault.state_sweep_interval", "must be positive"));
        }
        self.validate_server()?;
        if !(1..=10_000).contains(&self.keys.rewrap_batch_size) {
            return Err(invalid("keys.rewrap_batch_size", "must be between 1 and 10000"));
        }
        if self.refresh.max_attempts == 0 {
            return Err(invalid("refresh.max_attempts", "must be at least 1"));
        }
        if self.providers.is_empty() {
            return Err(invalid("providers", "configure at least one provider"));
        }
        if let Some(default) = &self.vault.default_provider {
            if !self.providers.contains_key(default) {
                return Err(invalid(
                    "vault.default_provider",
                    format!("names no configured provider ({default})"),
                ));
            }
        }
        self.validate_security()?;
        for (name, provider) in &self.providers {
            // Endpoints from the issuer's metadata are checked when discovery reads it, at start.
            let provider = provider.check_before_discovery(name)?;
            // Timeouts are ordered: the whole retry budget of one refresh (every attempt at its
            // full timeout plus the longest backoffs) must end before the exclusion lapses, or a
            // second replica could refresh while the first is still waiting for an answer.
            let budget = self.refresh_budget(&provider);
            if budget >= self.refresh.lease_ttl {
                return Err(invalid(
                    "refresh.lease_ttl",
                    format!(
                        "is {:?}, but a refresh for provider {name} may take up to {budget:?} \
                         ({} attempts of request_timeout {:?} plus backoff); raise lease_ttl or lower the others",
                        self.refresh.lease_ttl, self.refresh.max_attempts, provider.request_timeout
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        for (field, value) in [
            ("server.max_connections", server.max_connections),
            ("server.max_concurrent_streams", server.max_concurrent_streams),
            ("server.max_health_watches", server.max_health_watches),
            (
                "server.max_health_watches_per_connection",
                server.max_health_watches_per_connection,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        for (field, value) in [
            ("server.handshake_timeout", server.handshake_timeout),
            ("server.tcp_keepalive", server.tcp_keepalive),
            ("server.http2_keepalive_interval", server.http2_keepalive_interval),
            ("server.http2_keepalive_timeout", server.http2_keepalive_timeout),
            ("server.call_timeout", server.call_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be positive"));
            }
        }
        // A caller waiting on another replica's refresh waits up to the lease; cutting it off
        // sooner would answer CANCELLED while a refresh that will succeed is still running.
        if server.call_timeout <= self.refresh.lease_ttl {
            return Err(invalid(
                "server.call_timeout",
                format!(
                    "is {:?}: it must exceed refresh.lease_ttl ({:?}), the longest a call may wait on a refresh",
                    server.call_timeout, self.refresh.lease_ttl
                ),
            ));
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        // Authentication off is a development convenience; in production it would hand every
        // tenant's tokens to anything that reaches the port, so it is refused, not just logged.
        if self.auth.mode == AuthMode::InsecureDev && self.mode != Mode::Development {
            return Err(invalid(
                "auth.mode",
                "is \"insecure-dev\", which is allowed only with mode = \"development\": configure callers \
                 (auth.mode = \"enforce\") for any other deployment",
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(invalid("tls.key_file", "and tls.cert_file must be set together"));
        }
        if self.tls.plaintext_health_listen.is_some() && self.tls.cert_file.is_none() {
            return Err(invalid(
                "tls.plaintext_health_listen",
                "is for TLS listeners only (without TLS, health is on server.listen)",
            ));
        }
        if self.tls.client_ca_file.is_some() && self.tls.cert_file.is_none() {
            return Err(invalid("tls.client_ca_file", "needs tls.cert_file and tls.key_file"));
        }
        if self.audit.retention < Duration::from_secs(24 * 3600) {
            return Err(invalid("audit.retention", "must be at least 1 day"));
        }
        if self.audit.flush_interval.is_zero() || self.audit.sweep_interval.is_zero() {
            return Err(invalid(
                "audit.flush_interval",
                "and audit.sweep_interval must be positive",
            ));
        }
        if self.audit.queue_capacity == 0 || self.audit.max_aggregate_keys == 0 {
            return Err(invalid(
                "audit.queue_capacity",
                "and audit.max_aggregate_keys must be at least 1",
            ));
        }
        if self.auth.default_begin_authorization_per_second == 0 || self.auth.default_begin_authorization_burst == 0 {
            return Err(invalid(
                "auth.default_begin_authorization_per_second",
                "and auth.default_begin_authorization_burst must be at least 1",
            ));
        }
        // The callers' entries (names, identities, policies) are checked where they are
        // compiled, by `auth::Authenticator::from_settings`, which start-up runs before serving.
        Ok(())
    }

    /// The callers, inline or from `auth.policy_file`.
    pub fn auth_callers(&self) -> Result<Vec<CallerSettings>, ConfigError> {
        let Some(path) = &self.auth.policy_file else {
            return Ok(self.auth.callers.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("auth.policy_file", format!("cannot read {}: {e}", path.display())))?;
        self.policy_file_callers(&text)
    }

    /// The callers of a policy file's content (`auth.policy_file`, read by the caller: a reload
    /// parses exactly the bytes it compared).
    pub fn policy_file_callers(&self, text: &str) -> Result<Vec<CallerSettings>, ConfigError> {
        let path = self.auth.policy_file.as_deref().unwrap_or(std::path::Path::new("-"));
        if !self.auth.callers.is_empty() {
            return Err(invalid("auth.policy_file", "and inline auth.callers are exclusive"));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PolicyFile {
            callers: Vec<CallerSettings>,
        }
        let file: PolicyFile = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| invalid("auth.policy_file", format!("{}: {e}", path.display())))?;
        Ok(file.callers)
    }

    /// The longest one refresh can keep calling a provider, plus a safety margin for clock
    /// drift between the database and this process.
    pub fn refresh_budget(&self, provider: &ProviderConfig) -> Duration {
        let attempts = self.refresh.max_attempts;
        // Saturating throughout: absurd settings are refused by the comparison, never a panic.
        let backoff = (0..attempts.saturating_sub(1))
            .map(|i| self.refresh.backoff.saturating_mul(1 << i.min(16)))
            .fold(Duration::ZERO, Duration::saturating_add);
        provider
            .request_timeout
            .saturating_mul(attempts)
            .saturating_add(backoff)
            .saturating_add(Duration::from_secs(2))
    }

    /// The name of the default provider: the configured one, or the only one.
    pub fn default_provider(&self) -> Option<String> {
        self.vault.default_provider.clone().or_else(|| {
            (self.providers.len() == 1)
                .then(|| self.providers.keys().next().cloned())
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use url::Url;

    use super::*;

    #[test]
    fn the_understory_preset_fills_in_the_guide() {
        let p = ProviderSettings {
            preset: Some("understory".into()),
            client_id: Some("id".into()),
            client_secret: Some(SecretString::from("s")),
            redirect_uris: vec![Url::parse("https://example.com/cb").unwrap()],
            ..Default::default()
        }
        .resolve("understory")
        .unwrap();
        assert_eq!(p.token_endpoint.as_str(), "https://api.auth.understory.io/oauth2/token");
        assert_eq!(p.audience.as_deref(), Some("https://api.understory.io"));
        assert_eq!(p.auth_method, AuthMethod::ClientSecretPost);
        assert_eq!(p.offline_scope.as_deref(), Some("offline"));
        assert!(p.pkce);
    }

    /// A value no test fixture or default contains, so finding it in an error means a leak.
    const SECRET_DIGITS: &str = "918273645";

    #[test]
    fn a_secret_setting_that_is_not_a_string_is_refused_without_showing_it() {
        for (toml, setting) in [
            (
                format!("[providers.understory]\nclient_secret = {SECRET_DIGITS}"),
                "providers.understory.client_secret",
            ),
            (format!("[encryption]\nkeyring = {SECRET_DIGITS}"), "encryption.keyring"),
            (format!("[database]\nurl = {SECRET_DIGITS}"), "database.url"),
            (
                format!("[providers.understory]\nclient_secret = -{SECRET_DIGITS}.5"),
                "providers.understory.client_secret",
            ),
            (
                format!("[providers.understory]\nclient_secret = [{SECRET_DIGITS}]"),
                "providers.understory.client_secret",
            ),
        ] {
            let err = Settings::from_figment(Settings::defaults().merge(Toml::string(&toml))).unwrap_err();
            let (shown, debug) = (err.to_string(), format!("{err:?}"));
            assert!(!shown.contains(SECRET_DIGITS), "{setting}: the value is shown: {shown}");
            assert!(
                !debug.contains(SECRET_DIGITS),
                "{setting}: the value is in Debug: {debug}"
            );
            assert!(shown.contains(setting), "{setting}: not named: {shown}");
            assert!(shown.contains("must be a string"), "{shown}");
        }
    }

    #[test]
    fn a_quoted_secret_is_kept_exactly_as_written() {
        let settings: Settings = Settings::defaults()
            .merge(Toml::string(
                "[database]\nurl = \"0123\"\n[providers.understory]\nclient_secret = \"0123\"",
            ))
            .extract()
            .unwrap();
        assert_eq!(settings.database.url.expose_secret(), "0123");
        let secret = settings.providers["understory"].client_secret.as_ref().unwrap();
        assert_eq!(secret.expose_secret(), "0123");
    }

    #[test]
    fn the_database_url_names_one_of_the_stores() {
        let refused = load("[database]\nurl = \"mysql://x@127.0.0.1/x\"").unwrap_err();
        assert!(refused.to_string().contains("database.url"), "{refused}");
        assert!(load("[database]\nurl = \"sqlite://.token-vault/development.db\"").is_ok());
        assert!(load("[database]\nurl = \"postgresql://x@127.0.0.1/x\"").is_ok());
    }

    fn load(extra: &str) -> Result<Settings, ConfigError> {
        let base = r#"
mode = "development"
[database]
url = "postgres://x@127.0.0.1/x"
[encryption]
keyring = "k:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
[auth]
mode = "insecure-dev"
[providers.understory]
preset = "understory"
client_id = "c"
client_secret = "s"
redirect_uris = ["https://app.example/cb"]
"#;
        Settings::from_figment(
            Settings::defaults()
                .merge(Toml::string(base))
                .merge(Toml::string(extra)),
        )
    }

    #[test]
    fn the_listener_is_bounded_by_default_and_zero_is_refused() {
        let s = load("").unwrap();
        assert!(s.server.max_connections > 0 && s.server.max_concurrent_streams > 0);
        assert!(s.server.handshake_timeout > Duration::ZERO && s.server.handshake_timeout <= Duration::from_secs(30));
        assert!(s.server.call_timeout > s.refresh.lease_ttl);
        assert!(s.auth.default_begin_authorization_per_second > 0);
        assert!(s.vault.max_open_states > 0);
        for (extra, field) in [
            ("[server]\nmax_connections = 0", "server.max_connections"),
            ("[server]\nhandshake_timeout = \"0s\"", "server.handshake_timeout"),
            (
                "[server]\nmax_health_watches_per_connection = 0",
                "server.max_health_watches_per_connection",
            ),
            ("[server]\ncall_timeout = \"30s\"", "server.call_timeout"),
            ("[vault]\nmax_open_states = 0", "vault.max_open_states"),
            (
                "[auth]\ndefault_begin_authorization_burst = 0",
                "auth.default_begin_authorization_per_second",
            ),
        ] {
            let err = load(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn a_keeper_claim_must_outlast_its_interval() {
        let s = load("").unwrap();
        assert!(s.keepalive.claim_ttl > s.keepalive.interval);
        for extra in [
            "[keepalive]\ninterval = \"2m\"\nclaim_ttl = \"2m\"",
            "[keepalive]\ninterval = \"10s\"\nclaim_ttl = \"5s\"",
        ] {
            let err = load(extra).unwrap_err().to_string();
            assert!(err.contains("keepalive.claim_ttl"), "{extra}: {err}");
        }
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = ProviderSettings {
            preset: Some("understory".into()),
            client_secret: Some(SecretString::from("s")),
            ..Default::default()
        }
        .resolve("understory")
        .unwrap_err();
        assert!(err.to_string().contains("providers.understory.client_id"), "{err}");
    }
}
