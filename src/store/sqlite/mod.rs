//! The SQLite store: one file, embedded (sqlx's SQLite driver with its bundled libsqlite3, so
//! nothing is installed), for one node. Several vault processes on one machine may share the
//! file: SQLite runs one writing transaction at a time, and every read-then-write here is a
//! `BEGIN IMMEDIATE` transaction or a single data-modifying statement (whose implicit
//! transaction SQLite also begins with the write lock), either of which takes the write lock
//! before its first read, so two processes can't both see a lease free and both take it.
//!
//! Times are compared with the database's clock only, `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`:
//! every process sharing the file runs on the same machine, so that is one clock, as
//! Postgres's `now()` is for replicas. Times are stored as fixed-width UTC text (see the
//! migration), so comparing them as text compares them as times.

/// A `db` client span around one repository call, named as OpenTelemetry's database
/// conventions ask (`<OPERATION> <table>`); extra fields may follow. Its target is
/// `telemetry::DB_SPAN_TARGET`'s, which keeps it in traces and out of the logs.
macro_rules! db_span {
    ($operation:literal, $table:literal $(, $($field:tt)+)?) => {
        tracing::info_span!(
            target: "token_vault::db",
            "db",
            otel.kind = "client",
            otel.name = concat!($operation, " ", $table),
            db.system.name = "sqlite",
            db.operation.name = $operation,
            db.collection.name = $table
            $(, $($field)+)?
        )
    };
}

pub(super) mod audit;
pub(super) mod connections;
pub(super) mod disconnect;
pub(super) mod events;
pub(super) mod identity;
pub(super) mod keepalive;
pub(super) mod pending;
pub(super) mod retention;
pub(super) mod sealed_values;

use std::{path::PathBuf, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    error::DatabaseError,
    sqlite::{SqliteConnectOptions, SqliteError, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    ConnectOptions, Connection, Sqlite, SqlitePool, Transaction,
};
use time::{format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime, UtcOffset};

use super::{PoolOptions, StoreError};

/// How long a statement waits for another process's write to finish before failing busy
/// (`StoreError::Unavailable`). Writes here are short; a wait this long means a stuck writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The one form of every stored time; `strftime('%Y-%m-%dT%H:%M:%fZ', …)` writes the same.
const TIME_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// One SQLite file's two pools: the process's writes go through one connection, its reads
/// through the others.
///
/// SQLite runs one writing transaction at a time on a file, so a second writing connection in
/// the same process buys nothing but waiting, and it waits badly: SQLite's busy handler polls,
/// sleeping 1 to 100 ms between tries, so a write that meets another one pays for the sleep, not
/// for the other write. Through `writer` (one connection) the process's writes queue on the
/// pool instead, in order, each starting as the one before commits. That connection also keeps
/// its page cache: SQLite drops a connection's cache when another connection wrote to the file
/// since its last transaction, so spreading writes over many connections makes each one read
/// the pages it needs again. Reads go through `readers`: under WAL they run beside the writer
/// and never wait for it. Processes sharing the file still meet each other at the busy timeout.
///
/// A write sent to `readers` would still be correct (SQLite takes its own lock), only slower;
/// each statement below picks its pool by whether it writes.
#[derive(Clone, Debug)]
pub(crate) struct SqlitePools {
    readers: SqlitePool,
    writer: SqlitePool,
}

impl SqlitePools {
    /// For statements that only read.
    pub(crate) fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// For statements and transactions that write.
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }

    /// Connections open in both pools, and how many of them are idle.
    pub(crate) fn usage(&self) -> (u32, usize) {
        (
            self.readers.size() + self.writer.size(),
            self.readers.num_idle() + self.writer.num_idle(),
        )
    }
}

/// The pools of the file `url` names: `options.max_connections` readers and one writer. A
/// write waits for the writer at least as long as SQLite would wait for another process's lock
/// (`BUSY_TIMEOUT`): queued behind the process's own writes, it should not give up sooner than
/// it would behind another process's.
pub(super) fn connect_lazy(url: &SecretString, options: &PoolOptions) -> Result<SqlitePools, StoreError> {
    let connect = SqliteConnectOptions::from_str(url.expose_secret())
        .map_err(StoreError::Database)?
        // Never creates the file, whatever the URL's `mode` says: a mistyped path must not start
        // an empty store. `create_database_if_missing` creates it when the settings ask.
        .create_if_missing(false)
        // Readers never wait for the writer, and the writer never waits for readers.
        .journal_mode(SqliteJournalMode::Wal)
        // A commit is on disk when it returns (WAL's default, NORMAL, may lose the last
        // commits on power loss): a rotated refresh token the provider already handed out must
        // not be lost.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
    // Refused here rather than at the first statement: a pool would only report SQLite's
    // "unable to open database file", without the name.
    if let Some(path) = missing_file(url.expose_secret()) {
        return Err(StoreError::MissingFile { path });
    }
    let pool = |max_connections: u32, acquire_timeout: Duration| {
        SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            // No ping before every query, as on Postgres: a connection to a file does not
            // drop, and the ping is one more hop to the connection's worker thread on every
            // statement.
            .test_before_acquire(false)
            // A connection that comes back inside a transaction is closed, which rolls the
            // transaction back, instead of going back to the pool. sqlx's `begin_with` counts
            // its transaction before it has handed it over: a caller that gives up in between
            // (BeginAuthorization callers by the thousand did, see
            // `grant_safety::callers_giving_up_mid_transaction_by_the_thousand_leave_no_transaction_open`)
            // leaves the connection inside a `BEGIN IMMEDIATE` that nothing will end. Back in
            // the pool, the writer then refused every `begin_with` ("non-zero transaction
            // depth") and would have run the process's other writes inside that transaction.
            .after_release(|connection, _| Box::pin(async move { Ok(!connection.is_in_transaction()) }))
            .connect_lazy_with(connect.clone())
    };
    Ok(SqlitePools {
        readers: pool(options.max_connections, options.acquire_timeout),
        writer: pool(1, options.acquire_timeout.max(BUSY_TIMEOUT)),
    })
}

/// The file a SQLite URL names, when it certainly does not exist: `None` for an existing file,
/// one whose existence can't be told (a directory we may not read: SQLite then reports its own
/// error), a URL that does not parse (reported where it is parsed), and an in-memory database
/// (`sqlite::memory:`, `mode=memory`), which has no file.
pub(super) fn missing_file(url: &str) -> Option<PathBuf> {
    // Read from the URL as sqlx reads it: `SqliteConnectOptions` does not say whether it is in
    // memory (and turning one back into a URL panics on an in-memory name).
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    if database == ":memory:" || params.split('&').any(|param| param == "mode=memory") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    matches!(path.try_exists(), Ok(false)).then(|| path.to_path_buf())
}

/// Creates the SQLite file named in `url`, and its directory, when it does not exist
/// (`database.create_if_missing`). An existing file is left as it is; several processes
/// starting together may each create it (SQLite opens with `O_CREAT`, never truncating).
pub(super) async fn create_database_if_missing(url: &SecretString) -> Result<(), StoreError> {
    let options = SqliteConnectOptions::from_str(url.expose_secret()).map_err(StoreError::Database)?;
    let Some(path) = missing_file(url.expose_secret()) else {
        return Ok(());
    };
    // SQLite creates the file but not its directory (`.token-vault/` in development).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Database(sqlx::Error::Configuration(
                format!("creating the directory {} of the SQLite file: {e}", dir.display()).into(),
            ))
        })?;
    }
    // Opening the file creates it; the pool's settings (WAL) are applied when the pool opens it.
    options.create_if_missing(true).connect().await?.close().await?;
    tracing::info!(file = %path.display(), "created the SQLite file");
    Ok(())
}

/// Applies `migrations/sqlite`. sqlx takes no lock around SQLite migrations: two processes
/// starting together on a new file may both apply the first one, and the second fails on what
/// the first created. It tries again a moment later and finds it applied.
pub(super) async fn migrate(db: &SqlitePools) -> Result<(), StoreError> {
    let migrator = sqlx::migrate!("./migrations/sqlite");
    let mut attempt = 1;
    loop {
        match migrator.run(db.writer()).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 4 => {
                tracing::debug!(error = %e, attempt, "migrating the SQLite store failed; trying again");
                tokio::time::sleep(Duration::from_millis(250) * attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED (and their extended codes): another writer held the file for
/// longer than the busy timeout.
pub(super) fn is_busy(error: &dyn DatabaseError) -> bool {
    error
        .try_downcast_ref::<SqliteError>()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// A transaction that holds the write lock from its start: for every read-then-write, so that
/// what it read is still true when it writes (another process waits, up to the busy timeout).
/// On the writer, so the process's own writes queue on the pool rather than on the lock.
async fn begin_immediate(db: &SqlitePools) -> Result<Transaction<'static, Sqlite>, StoreError> {
    Ok(db.writer().begin_with("BEGIN IMMEDIATE").await?)
}

/// A time as stored.
fn ts(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(TIME_FORMAT)
        .unwrap_or_else(|_| "9999-12-31T23:59:59.999Z".to_owned())
}

fn ts_opt(t: Option<OffsetDateTime>) -> Option<String> {
    t.map(ts)
}

/// A date-time modifier moving `now` forward by `d` (`'+12.500 seconds'`).
fn later(d: Duration) -> String {
    format!("+{:.3} seconds", d.as_secs_f64())
}

/// A date-time modifier moving `now` back by `d`.
fn earlier(d: Duration) -> String {
    format!("-{:.3} seconds", d.as_secs_f64())
}

fn scopes_json(scopes: &[String]) -> String {
    serde_json::to_string(scopes).unwrap_or_else(|_| "[]".to_owned())
}

fn scopes_from(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(format!("scopes are not a JSON array: {e}").into())))
}

fn json_array<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_file_that_is_not_there_is_missing() {
        let dir = std::env::temp_dir().join(format!("tv-missing-{}", uuid::Uuid::new_v4().simple()));
        let file = dir.join("vault.db");
        let url = format!("sqlite://{}", file.display());
        assert_eq!(missing_file(&url), Some(file.clone()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(&file).unwrap();
        assert_eq!(missing_file(&url), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(missing_file("sqlite::memory:"), None);
        assert_eq!(missing_file("sqlite://nowhere/vault.db?mode=memory"), None);
    }

    #[test]
    fn stored_times_are_fixed_width_so_text_order_is_time_order() {
        let a = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let b = a + Duration::from_millis(1);
        let c = a + Duration::from_millis(500);
        let d = a + Duration::from_secs(86_400 * 400);
        let stored = [ts(a), ts(b), ts(c), ts(d)];
        assert!(
            stored.windows(2).all(|w| w[0] < w[1] && w[0].len() == w[1].len()),
            "{stored:?}"
        );
        assert_eq!(ts(a), "2027-01-15T08:00:00.000Z");
    }

    #[test]
    fn a_stored_time_reads_back_as_itself() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789).unwrap();
        let read = OffsetDateTime::parse(&ts(t), &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(ts(read), ts(t));
        assert_eq!(read.unix_timestamp_nanos(), 1_800_000_000_123_000_000);
    }

    /// A write outside a transaction commits when its statement ends. sqlx stops a statement
    /// fetched for one row (`fetch_optional`, `fetch_one`) after that row and resets it, which
    /// commits but drops the reset's result, so a failed commit would pass for a success
    /// (`connections::try_acquire_lease`). Such writes are fetched to their end: no statement
    /// sent to the writer pool itself, outside a transaction, is fetched for one row.
    #[test]
    fn no_write_outside_a_transaction_is_fetched_for_one_row() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/sqlite");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let code: String = std::fs::read_to_string(&path).unwrap().split_whitespace().collect();
                // Put together here, so that this file does not hold what it looks for.
                for call in ["fetch_optional", "fetch_one"].map(|fetch| format!("{fetch}(db.writer())")) {
                    if code.contains(&call) {
                        found.push(format!("{}: {call}", path.display()));
                    }
                }
            }
        }
        assert!(found.is_empty(), "{found:?}");
    }
}
