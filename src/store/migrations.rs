//! The schema's migration state, compared with the migrations embedded in this binary: what
//! `doctor` reports. Read-only: unlike `Store::migrate`, nothing is created or applied.

use sqlx::migrate::Migrator;

use super::{Backend, StoreError};

pub struct Migrations<'a> {
    backend: &'a Backend,
}

/// How the database's applied migrations compare with the embedded ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Embedded migrations the database has applied, unchanged.
    pub applied: usize,
    /// Embedded migrations not applied yet (version, description).
    pub pending: Vec<(i64, String)>,
    /// Versions applied in the database that this binary does not know: a newer release
    /// migrated it, or the database belongs to something else.
    pub unknown: Vec<i64>,
    /// Versions whose applied script differs from the embedded one (edited after it landed).
    pub changed: Vec<i64>,
    /// Versions recorded as failed part-way (`success = false`).
    pub failed: Vec<i64>,
}

impl MigrationStatus {
    /// The schema is exactly what this binary expects.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.changed.is_empty() && self.failed.is_empty()
    }
}

impl<'a> Migrations<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    pub async fn status(&self) -> Result<MigrationStatus, StoreError> {
        // Runtime queries, not `query!`: sqlx's own bookkeeping table is absent from a database
        // that was never migrated, which is one of the answers this reports. The table has the
        // same columns on both stores.
        const APPLIED: &str = "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version";
        let (applied, embedded): (Vec<(i64, bool, Vec<u8>)>, Migrator) = match self.backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await?;
                let applied = if exists {
                    sqlx::query_as(APPLIED).fetch_all(pool).await?
                } else {
                    Vec::new()
                };
                (applied, sqlx::migrate!("./migrations/postgres"))
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(db) => {
                let pool = db.readers();
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
                )
                .fetch_one(pool)
                .await?;
                let applied = if exists {
                    sqlx::query_as(APPLIED).fetch_all(pool).await?
                } else {
                    Vec::new()
                };
                (applied, sqlx::migrate!("./migrations/sqlite"))
            }
        };
        let embedded: Vec<_> = embedded
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .collect();
        let mut status = MigrationStatus::default();
        for m in &embedded {
            match applied.iter().find(|(version, _, _)| *version == m.version) {
                None => status.pending.push((m.version, m.description.to_string())),
                Some((_, false, _)) => status.failed.push(m.version),
                Some((_, true, checksum)) if checksum.as_slice() != &*m.checksum => status.changed.push(m.version),
                Some(_) => status.applied += 1,
            }
        }
        status.unknown = applied
            .iter()
            .map(|(version, _, _)| *version)
            .filter(|v| !embedded.iter().any(|m| m.version == *v))
            .collect();
        Ok(status)
    }
}
