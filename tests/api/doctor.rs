//! `token-vault doctor`, run as the real binary against the suite's store (a real Postgres
//! database, or a SQLite file with `TEST_STORE=sqlite`), a scripted
//! HTTP provider and certificates made here: a healthy deployment passes, and each check fails
//! for its own reason (an invalid configuration, a database that does not answer, pending and
//! unknown migrations, a keyring missing a key that protects stored values, a certificate that
//! expires in two days, a provider that does not answer, a provider clock ten minutes ahead).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde_json::Value;
use time::OffsetDateTime;
use wiremock::{matchers::any, Mock, ResponseTemplate};

use crate::{
    callers::Pki,
    helpers::{on_rows, settings_toml, spawn_app, Rows, TestDb, TestOptions},
};

const CLIENT_SECRET: &str = "doctor-client-secret-7f3e";

/// A directory for one test's configuration, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tv-doctor-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A provider answering every request with 200, and with `date` as its Date header if given
/// (else the server's own clock).
async fn provider(date: Option<SystemTime>) -> crate::mock_http::Server {
    let server = crate::mock_http::Server::start().await;
    let mut answer = ResponseTemplate::new(200);
    if let Some(date) = date {
        answer = answer.insert_header("date", httpdate::fmt_http_date(date));
    }
    Mock::given(any()).respond_with(answer).mount(&server).await;
    server
}

async fn migrated_database() -> TestDb {
    TestDb::create_migrated("tv_doctor").await
}

/// A database that exists and holds nothing: a new Postgres database, or an empty SQLite file.
async fn empty_database() -> TestDb {
    TestDb::create("tv_doctor").await
}

/// A configuration file for a vault of `database_url` and the provider at `provider_uri`.
fn config(dir: &Dir, provider_uri: &str, database_url: &str, extra: &str) -> PathBuf {
    let toml = settings_toml(provider_uri, database_url, CLIENT_SECRET, &TestOptions::default());
    dir.write("config.toml", &format!("{toml}\n{extra}"))
}

/// `[tls]` with a server certificate valid for `days`, its key, and the CA as the client CA.
fn tls_toml(dir: &Dir, pki: &Pki, days: i64) -> String {
    let now = OffsetDateTime::now_utc();
    let leaf = pki.leaf_valid(
        &["localhost"],
        &[],
        now - time::Duration::hours(1),
        now + time::Duration::days(days),
    );
    format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        dir.write("tls.crt", &leaf.cert).display(),
        dir.write("tls.key", &leaf.key).display(),
        dir.write("ca.crt", &pki.ca_pem()).display(),
    )
}

struct Doctor {
    success: bool,
    report: Value,
    stdout: String,
}

impl Doctor {
    fn run(config: &Path) -> Self {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
            .args(["doctor", "--output", "json", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the token-vault binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON document ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        assert!(
            !stdout.contains(CLIENT_SECRET),
            "the client secret was printed:\n{stdout}"
        );
        assert_eq!(
            report["ok"].as_bool(),
            Some(output.status.success()),
            "the exit status agrees with the report"
        );
        Self {
            success: output.status.success(),
            report,
            stdout,
        }
    }

    /// The outcome and detail of the check named `name`.
    fn check(&self, name: &str) -> (String, String) {
        let check = self.report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {}", self.stdout));
        (
            check["outcome"].as_str().unwrap().to_owned(),
            check["detail"].as_str().unwrap().to_owned(),
        )
    }

    /// Asserts that `name` failed with a detail containing `why`, and the run with it.
    fn assert_failed(&self, name: &str, why: &str) {
        let (outcome, detail) = self.check(name);
        assert_eq!(outcome, "fail", "{name}: {detail}");
        assert!(detail.contains(why), "{name} failed for another reason: {detail}");
        assert!(!self.success, "a failed check fails the run");
    }

    fn failed(&self) -> Vec<String> {
        self.report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outcome"] == "fail")
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn a_healthy_deployment_passes_every_check() {
    let (dir, pki) = (Dir::new(), Pki::new("doctor"));
    let db = migrated_database().await;
    let provider = provider(None).await;
    let config = config(&dir, &provider.uri(), &db.url, &tls_toml(&dir, &pki, 90));

    let doctor = Doctor::run(&config);

    assert!(doctor.success, "{}", doctor.stdout);
    for name in [
        "config",
        "database",
        "migrations",
        "keyring",
        "tls.cert_file",
        "tls.key_file",
        "tls.client_ca_file",
        "tls",
        "provider understory clock",
    ] {
        assert_eq!(doctor.check(name).0, "pass", "{name}: {}", doctor.check(name).1);
    }
    // The scripted provider speaks plain http: a warning in development mode, not a failure.
    for endpoint in ["authorization_endpoint", "token_endpoint", "revocation_endpoint"] {
        let (outcome, detail) = doctor.check(&format!("provider understory {endpoint}"));
        assert_eq!(outcome, "warn", "{endpoint}: {detail}");
        assert!(detail.contains("plain http"), "{detail}");
    }

    // The text form: one line per check, and the same verdict.
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
        .args(["doctor", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("PASS  migrations")), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

#[tokio::test]
async fn an_invalid_configuration_fails_the_config_check() {
    let dir = Dir::new();
    let config = config(
        &dir,
        "http://127.0.0.1:9",
        "postgres://postgres@127.0.0.1:5432/never_used",
        "[keepalive]\nclaim_ttl = \"1s\"\ninterval = \"1m\"\n",
    );

    let doctor = Doctor::run(&config);

    doctor.assert_failed("config", "keepalive.claim_ttl");
    assert_eq!(
        doctor.failed(),
        ["config"],
        "nothing else is checked without a configuration"
    );
}

#[tokio::test]
async fn a_database_that_does_not_answer_fails_the_database_check() {
    let dir = Dir::new();
    let closed = closed_port();
    let provider = provider(None).await;
    let config = config(
        &dir,
        &provider.uri(),
        &format!("postgres://postgres@127.0.0.1:{closed}/token_vault"),
        "",
    );

    let doctor = Doctor::run(&config);

    doctor.assert_failed("database", "does not answer");
    assert!(
        doctor.check("database").1.to_lowercase().contains("refused"),
        "{}",
        doctor.check("database").1
    );
    assert_eq!(doctor.check("migrations").0, "skip");
}

/// A SQLite file that is not there (a mistyped path) fails the database check, named. Doctor
/// writes nothing, so it creates no file; with database.create_if_missing on, the detail says
/// what will create it. Runs on SQLite whichever store the rest of the suite uses.
#[tokio::test]
async fn a_missing_sqlite_file_fails_the_database_check_and_doctor_creates_none() {
    let dir = Dir::new();
    let db = TestDb::sqlite_not_created("tv_doctor");
    let file = db.sqlite_file().unwrap();
    let provider = provider(None).await;
    for create_if_missing in [false, true] {
        let toml = settings_toml(&provider.uri(), &db.url, CLIENT_SECRET, &TestOptions::default());
        let config = dir.write(
            "config.toml",
            &replace_line(
                &toml,
                "max_connections = ",
                &format!("max_connections = 10\ncreate_if_missing = {create_if_missing}"),
            ),
        );

        let doctor = Doctor::run(&config);

        doctor.assert_failed(
            "database",
            &format!("the SQLite file {} does not exist", file.display()),
        );
        let detail = doctor.check("database").1;
        assert_eq!(
            detail.contains("database.create_if_missing"),
            create_if_missing,
            "create_if_missing = {create_if_missing}: {detail}"
        );
        assert_eq!(doctor.check("migrations").0, "skip");
        assert!(!file.exists(), "doctor created {}", file.display());
    }
}

#[tokio::test]
async fn an_unmigrated_database_fails_the_migrations_check() {
    let dir = Dir::new();
    let db = empty_database().await;
    let provider = provider(None).await;

    let doctor = Doctor::run(&config(&dir, &provider.uri(), &db.url, ""));

    assert_eq!(doctor.check("database").0, "pass");
    doctor.assert_failed("migrations", "pending");
    assert!(doctor.check("migrations").1.contains("token-vault migrate"));
}

#[tokio::test]
async fn a_migration_unknown_to_this_release_fails_the_migrations_check() {
    let dir = Dir::new();
    let db = migrated_database().await;
    let rows = Rows::connect(&db.url).await;
    // What a newer release would have recorded.
    let insert = rows.sql(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer release', true, '\\x00', 1)",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer release', true, X'00', 1)",
    );
    on_rows!(rows, |pool| {
        sqlx::query(insert).execute(pool).await.unwrap();
        pool.close().await;
    });
    let provider = provider(None).await;

    let doctor = Doctor::run(&config(&dir, &provider.uri(), &db.url, ""));

    doctor.assert_failed("migrations", "99990101000000");
    assert!(doctor.check("migrations").1.contains("newer release"));
}

#[tokio::test]
async fn a_keyring_missing_a_key_that_protects_stored_values_fails_the_keyring_check() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    let dir = Dir::new();
    // The same deployment, but a keyring holding only a different key.
    let (_, other) = token_vault::crypto::Keyring::generate("other-key");
    let toml = settings_toml(
        &app.provider.uri(),
        app.database_url(),
        CLIENT_SECRET,
        &TestOptions::default(),
    );
    let config = dir.write(
        "config.toml",
        &replace_line(&toml, "keyring = ", &format!("keyring = \"{}\"", other.trim())),
    );

    let doctor = Doctor::run(&config);

    doctor.assert_failed("keyring", "key id test-key protects");
    assert_eq!(doctor.failed(), ["keyring"]);
}

#[tokio::test]
async fn a_certificate_expiring_in_two_days_fails_the_tls_check() {
    let (dir, pki) = (Dir::new(), Pki::new("doctor"));
    let db = migrated_database().await;
    let provider = provider(None).await;
    let config = config(&dir, &provider.uri(), &db.url, &tls_toml(&dir, &pki, 2));

    let doctor = Doctor::run(&config);

    doctor.assert_failed("tls.cert_file", "expires in 1d 2");
    assert!(doctor.check("tls.cert_file").1.contains("renew"));
    assert_eq!(doctor.failed(), ["tls.cert_file"], "the key and the CA are fine");

    // A key that is not the certificate's: each file alone is fine, the pair is refused.
    let other = pki.leaf(&["localhost"], &[]);
    dir.write("tls.key", &other.key);
    let mismatched = Doctor::run(&config);
    mismatched.assert_failed("tls", "refuses");
    assert_eq!(mismatched.check("tls.key_file").0, "pass");
}

#[tokio::test]
async fn a_provider_endpoint_that_does_not_answer_fails_its_check() {
    let dir = Dir::new();
    let db = migrated_database().await;
    let provider = provider(None).await;
    let closed = closed_port();
    let toml = settings_toml(&provider.uri(), &db.url, CLIENT_SECRET, &TestOptions::default());
    let config = dir.write(
        "config.toml",
        &replace_line(
            &toml,
            "token_endpoint = ",
            &format!("token_endpoint = \"http://127.0.0.1:{closed}/oauth2/token\""),
        ),
    );

    let doctor = Doctor::run(&config);

    doctor.assert_failed("provider understory token_endpoint", "does not answer");
    assert!(doctor
        .check("provider understory token_endpoint")
        .1
        .contains("Connection refused"));
    assert_eq!(doctor.failed(), ["provider understory token_endpoint"]);
}

#[tokio::test]
async fn a_provider_clock_ten_minutes_ahead_fails_the_clock_check() {
    let dir = Dir::new();
    let db = migrated_database().await;
    let provider = provider(Some(SystemTime::now() + Duration::from_secs(600))).await;

    let doctor = Doctor::run(&config(&dir, &provider.uri(), &db.url, ""));

    doctor.assert_failed("provider understory clock", "ahead of this machine's");
    assert_eq!(doctor.failed(), ["provider understory clock"]);
}

/// `toml` with the line starting with `prefix` replaced by `line`.
fn replace_line(toml: &str, prefix: &str, line: &str) -> String {
    assert!(toml.lines().any(|l| l.starts_with(prefix)), "no line {prefix}");
    toml.lines()
        .map(|l| if l.starts_with(prefix) { line } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
