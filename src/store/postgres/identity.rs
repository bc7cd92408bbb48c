//! Postgres: identity (the statements behind `store::identity`).

use super::Pool;
use crate::store::StoreError;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::store::identity::*;

pub(in crate::store) async fn current(pool: &Pool) -> Result<String, StoreError> {
    async {
        let identity = sqlx::query_scalar!(r#"SELECT token_vault_database_identity() AS "identity!""#)
            .fetch_one(pool)
            .await?;
        Ok(identity)
    }
    .instrument(db_span!("SELECT", "pg_control_system"))
    .await
}

pub(in crate::store) async fn record_first(pool: &Pool, identity: &str) -> Result<(), StoreError> {
    async {
        sqlx::query!(
            "INSERT INTO database_identity (id, identity, changed_at) VALUES (1, $1, 'epoch')
             ON CONFLICT (id) DO NOTHING",
            identity,
        )
        .execute(pool)
        .await?;
        Ok(())
    }
    .instrument(db_span!("INSERT", "database_identity"))
    .await
}

pub(in crate::store) async fn record_change(
    pool: &Pool,
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
        .fetch_one(pool)
        .await?;
        Ok(changed_at)
    }
    .instrument(db_span!("UPSERT", "database_identity"))
    .await
}

pub(in crate::store) async fn durability(pool: &Pool) -> Result<Durability, StoreError> {
    async {
        let row = sqlx::query!(
            r#"SELECT current_setting('synchronous_standby_names') AS "names!",
                      current_setting('synchronous_commit') AS "commit!""#
        )
        .fetch_one(pool)
        .await?;
        Ok(Durability {
            synchronous_standby_names: row.names,
            synchronous_commit: row.commit,
            can_fail_over: true,
        })
    }
    .instrument(db_span!("SHOW", "settings"))
    .await
}
