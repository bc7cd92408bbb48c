//! SQLite: which database this is (the statements behind `store::identity`). The identity is a
//! random id chosen when the file was created (`store_identity`); another file put in its place
//! has another one. There is no standby: a commit is on this machine's disk or nowhere.

use time::OffsetDateTime;
use tracing::Instrument;

use super::{earlier, SqlitePools};
use crate::store::{identity::*, StoreError};

pub(in crate::store) async fn current(db: &SqlitePools) -> Result<String, StoreError> {
    async {
        let identity = sqlx::query_scalar!(r#"SELECT identity AS "identity!" FROM store_identity"#)
            .fetch_one(db.readers())
            .await?;
        Ok(identity)
    }
    .instrument(db_span!("SELECT", "store_identity"))
    .await
}

pub(in crate::store) async fn record_first(db: &SqlitePools, identity: &str) -> Result<(), StoreError> {
    async {
        sqlx::query!(
            "INSERT INTO database_identity (id, identity, changed_at) VALUES (1, ?1, '1970-01-01T00:00:00.000Z')
             ON CONFLICT (id) DO NOTHING",
            identity,
        )
        .execute(db.writer())
        .await?;
        Ok(())
    }
    .instrument(db_span!("INSERT", "database_identity"))
    .await
}

pub(in crate::store) async fn record_change(
    db: &SqlitePools,
    identity: &str,
    grace: std::time::Duration,
) -> Result<OffsetDateTime, StoreError> {
    async {
        let before = earlier(grace);
        // Fetched to its end, so that the implicit transaction's commit is the statement's
        // (see `connections::try_acquire_lease`).
        let rows = sqlx::query_scalar!(
            r#"INSERT INTO database_identity (id, identity, changed_at)
               VALUES (1, ?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
               ON CONFLICT (id) DO UPDATE
                  SET changed_at = CASE
                          WHEN identity <> excluded.identity
                               OR changed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2)
                          THEN excluded.changed_at
                          ELSE changed_at
                      END,
                      identity = excluded.identity
               RETURNING changed_at AS "changed_at!: OffsetDateTime""#,
            identity,
            before,
        )
        .fetch_all(db.writer())
        .await?;
        rows.into_iter()
            .next()
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }
    .instrument(db_span!("UPSERT", "database_identity"))
    .await
}

pub(in crate::store) async fn durability(_db: &SqlitePools) -> Result<Durability, StoreError> {
    Ok(Durability::single_node())
}
