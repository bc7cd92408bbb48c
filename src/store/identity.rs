//! Which database the vault talks to: its system identifier and timeline, and the identity
//! last recorded in `database_identity`. A promoted standby runs on a new timeline, a restore
//! brings a new system identifier or timeline: either may have lost commits the vault relied
//! on. Also what the database promises about durability (a synchronous standby or not).

use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;

use super::StoreError;

pub struct DatabaseIdentity<'a> {
    pool: &'a PgPool,
}

/// What a durability check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// `synchronous_standby_names`; empty when no standby must confirm a commit.
    pub synchronous_standby_names: String,
    /// `synchronous_commit` (`on`, `remote_apply`, `remote_write`, `local`, `off`).
    pub synchronous_commit: String,
}

impl Durability {
    /// Whether a commit waits for a standby: only then does a failover keep every commit.
    pub fn has_synchronous_standby(&self) -> bool {
        !self.synchronous_standby_names.trim().is_empty()
            && matches!(self.synchronous_commit.as_str(), "on" | "remote_apply" | "remote_write")
    }
}

impl<'a> DatabaseIdentity<'a> {
    pub(super) fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// The database's identity now: `<system identifier>/<timeline>` (or `unknown` where the
    /// platform hides them; see the migration), as the lease statement reads it too.
    pub async fn current(&self) -> Result<String, StoreError> {
        async {
            let identity = sqlx::query_scalar!(r#"SELECT token_vault_database_identity() AS "identity!""#)
                .fetch_one(self.pool)
                .await?;
            Ok(identity)
        }
        .instrument(db_span!("SELECT", "pg_control_system"))
        .await
    }

    /// Records `identity` as the first one seen, unless one is recorded already; a first
    /// identity is no failover, so it counts as changed at the epoch.
    pub async fn record_first(&self, identity: &str) -> Result<(), StoreError> {
        async {
            sqlx::query!(
                "INSERT INTO database_identity (id, identity, changed_at) VALUES (1, $1, 'epoch')
                 ON CONFLICT (id) DO NOTHING",
                identity,
            )
            .execute(self.pool)
            .await?;
            Ok(())
        }
        .instrument(db_span!("INSERT", "database_identity"))
        .await
    }

    /// Records a change of identity to `identity`, once: the first replica to see it sets
    /// `changed_at`, the others get that same moment back. A row that already names `identity`
    /// but changed longer than `grace` ago (recorded as a first identity by a replica that
    /// never saw the old one) is a change too: the caller saw the old identity. The upsert
    /// always updates, so that a caller that waited on another's row lock reads the row as that
    /// one left it, never an older snapshot.
    pub async fn record_change(
        &self,
        identity: &str,
        grace: std::time::Duration,
    ) -> Result<OffsetDateTime, StoreError> {
        let grace_secs = grace.as_secs_f64();
        async {
            let changed_at = sqlx::query_scalar!(
                r#"INSERT INTO database_identity AS d (id, identity, changed_at) VALUES (1, $1, now())
                   ON CONFLICT (id) DO UPDATE
                      SET changed_at = CASE
                              WHEN d.identity <> $1 OR d.changed_at < now() - make_interval(secs => $2) THEN now()
                              ELSE d.changed_at
                          END,
                          identity = $1
                   RETURNING changed_at"#,
                identity,
                grace_secs,
            )
            .fetch_one(self.pool)
            .await?;
            Ok(changed_at)
        }
        .instrument(db_span!("UPSERT", "database_identity"))
        .await
    }

    /// What the database promises about a commit surviving a failover.
    pub async fn durability(&self) -> Result<Durability, StoreError> {
        async {
            let row = sqlx::query!(
                r#"SELECT current_setting('synchronous_standby_names') AS "names!",
                          current_setting('synchronous_commit') AS "commit!""#
            )
            .fetch_one(self.pool)
            .await?;
            Ok(Durability {
                synchronous_standby_names: row.names,
                synchronous_commit: row.commit,
            })
        }
        .instrument(db_span!("SHOW", "settings"))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_named_standby_with_a_waiting_commit_is_synchronous() {
        let d = |names: &str, commit: &str| Durability {
            synchronous_standby_names: names.into(),
            synchronous_commit: commit.into(),
        };
        assert!(d("ANY 1 (*)", "on").has_synchronous_standby());
        assert!(d("standby1", "remote_apply").has_synchronous_standby());
        assert!(!d("", "on").has_synchronous_standby());
        assert!(!d("standby1", "local").has_synchronous_standby());
        assert!(!d("standby1", "off").has_synchronous_standby());
    }
}
