//! A database per test, dropped when the test ends, pass or fail: a Postgres database on the
//! local server, or, with `TEST_STORE=sqlite`, a SQLite file in a directory of its
//! own (the embedded store; see `.config/nextest.toml` for the tests that need Postgres
//! itself). Each integration-test binary is its own crate, so `tests/api` and
//! `tests/conformance` both include this file (`#[path]`) instead of keeping copies.

use sqlx::{Connection, PgConnection};

/// The server's maintenance database; `TEST_DATABASE_ADMIN_URL` replaces it.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Where to create and drop the test databases.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL").unwrap_or_else(|_| ADMIN_URL.into())
}

/// Which store the suite runs against: `TEST_STORE=sqlite` or Postgres (the default). Not a
/// `TOKEN_VAULT_*` name: the vault processes tests start read every one of those as a setting.
pub fn sqlite_store() -> bool {
    std::env::var("TEST_STORE").is_ok_and(|v| v == "sqlite")
}

/// The test database, for a test's own reads and writes of rows, on whichever store the vault
/// uses (`TEST_STORE`).
#[derive(Clone)]
pub enum Rows {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Rows {
    /// The database at `url` (a Postgres URL or a `sqlite://` file), as a test reads it.
    pub async fn connect(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Rows::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap())
        } else {
            Rows::Postgres(sqlx::PgPool::connect(url).await.unwrap())
        }
    }

    /// The statement for this store: `postgres` or `sqlite` (SQL both read alike is given twice).
    // Not every test binary that includes this file needs it.
    #[allow(dead_code)]
    pub fn sql(&self, postgres: &'static str, sqlite: &'static str) -> &'static str {
        match self {
            Rows::Postgres(_) => postgres,
            Rows::Sqlite(_) => sqlite,
        }
    }
}

/// Runs the same sqlx call on whichever store `rows` is:
/// `on_rows!(app.rows, |pool| sqlx::query_scalar("…").fetch_one(pool).await.unwrap())`.
macro_rules! on_rows {
    ($rows:expr, |$pool:ident| $body:expr) => {
        match &$rows {
            $crate::test_db::Rows::Postgres($pool) => $body,
            $crate::test_db::Rows::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_rows;

pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The SQLite file's directory, removed on drop; `None` for a Postgres database.
    sqlite_dir: Option<std::path::PathBuf>,
}

impl TestDb {
    /// A new, empty database named `{prefix}_{uuid}`: the prefix tells which suite left a
    /// database behind if a test process is killed before its drop runs.
    pub async fn create(prefix: &str) -> Self {
        if sqlite_store() {
            return Self::create_sqlite(prefix);
        }
        let admin_url = admin_url();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("Postgres must answer on 127.0.0.1:5432");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').unwrap().0;
        Self {
            url: format!("{base}/{name}"),
            name,
            sqlite_dir: None,
        }
    }

    /// A new, empty SQLite file in a new temporary directory, whatever the suite's store: made
    /// here as `CREATE DATABASE` makes the Postgres one, since a vault creates neither unless
    /// `database.create_if_missing` is on. (An empty file is an empty SQLite database.)
    pub fn create_sqlite(prefix: &str) -> Self {
        let db = Self::sqlite_not_created(prefix);
        std::fs::File::create(db.sqlite_file().unwrap()).unwrap();
        db
    }

    /// A SQLite URL in a new temporary directory (removed on drop) whose file does not exist.
    pub fn sqlite_not_created(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            url: format!("sqlite://{}", dir.join("vault.db").display()),
            name,
            sqlite_dir: Some(dir),
        }
    }

    /// The SQLite file (`None` for a Postgres database).
    // Not every test binary that includes this file needs it.
    #[allow(dead_code)]
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self.url.strip_prefix("sqlite://").map(std::path::PathBuf::from)
    }

    /// A new database, as [`TestDb::create`], with the vault's migrations applied.
    // tests/api's; tests/conformance includes this file too and has no use for it.
    #[allow(dead_code)]
    pub async fn create_migrated(prefix: &str) -> Self {
        let db = Self::create(prefix).await;
        let store = db.store(1);
        store.migrate().await.expect("the test database migrates");
        store.close().await;
        db
    }

    /// A store of the test's own on this database, as the `keys` commands, a second vault
    /// process or the test itself would open it, with a pool of `max_connections`.
    #[allow(dead_code)]
    pub fn store(&self, max_connections: u32) -> token_vault::store::Store {
        token_vault::store::Store::connect_lazy(
            &secrecy::SecretString::from(self.url.clone()),
            &token_vault::store::PoolOptions {
                max_connections,
                acquire_timeout: std::time::Duration::from_secs(10),
            },
        )
        .expect("the test database's URL")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        let (name, admin_url) = (self.name.clone(), admin_url());
        // Drop runs inside the test's runtime; a thread with its own runtime may block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
