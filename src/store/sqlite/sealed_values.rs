//! SQLite: the sealed columns seen by key (the statements behind `store::sealed_values`). A
//! rewrap batch is one `BEGIN IMMEDIATE` transaction: nothing else writes while it reads and
//! rewrites, and each write is still guarded on the value read.

use std::collections::BTreeMap;

use sqlx::SqliteConnection;

use super::begin_immediate;
use super::SqlitePools;
use crate::store::{
    sealed_values::{Key, *},
    StoreError,
};

/// The framing header a sealed value begins with (`[version][id length][id]`), or the whole
/// value when it is shorter than two bytes; as the Postgres store cuts it.
fn header(value: &[u8]) -> Vec<u8> {
    if value.len() < 2 {
        return value.to_vec();
    }
    value[..value.len().min(2 + usize::from(value[1]))].to_vec()
}

pub(in crate::store) async fn count_by_header(db: &SqlitePools) -> Result<Vec<HeaderCount>, StoreError> {
    // Only each value's first bytes leave SQLite (a header is at most 257 bytes); the counting
    // is here, in the same process.
    let rows = sqlx::query!(
        r#"SELECT 'access_token' AS "col!: String", substr(access_token, 1, 257) AS "prefix!: Vec<u8>"
             FROM connections WHERE access_token IS NOT NULL
           UNION ALL
           SELECT 'refresh_token', substr(token, 1, 257) FROM refresh_tokens WHERE token IS NOT NULL
           UNION ALL
           SELECT 'pkce_verifier', substr(pkce_verifier, 1, 257) FROM pending_authorizations
            WHERE pkce_verifier IS NOT NULL"#
    )
    .fetch_all(db.readers())
    .await?;
    let mut counts: BTreeMap<(String, Vec<u8>), i64> = BTreeMap::new();
    for r in rows {
        *counts.entry((r.col, header(&r.prefix))).or_default() += 1;
    }
    Ok(counts
        .into_iter()
        .map(|((col, header), count)| HeaderCount {
            column: match col.as_str() {
                "access_token" => SealedColumn::AccessToken,
                "refresh_token" => SealedColumn::RefreshToken,
                _ => SealedColumn::PkceVerifier,
            },
            header,
            count,
        })
        .collect())
}

pub(in crate::store) async fn rewrap_batch(
    db: &SqlitePools,
    from: &Position,
    keep_header: &[u8],
    limit: i64,
    mut reseal: impl FnMut(&SealedRow) -> Option<Vec<u8>>,
) -> Result<Batch, StoreError> {
    let mut tx = begin_immediate(db).await?;
    let rows = select_batch(&mut tx, &from.0, keep_header, limit).await?;
    let selected = rows.len();
    let next = rows.last().map(|r| r.position.clone()).unwrap_or_else(|| from.clone());
    let mut attempted = 0;
    let mut rewritten = 0;
    for row in &rows {
        if let Some(new) = reseal(row) {
            attempted += 1;
            rewritten += update_one(&mut tx, row, &new).await?;
        }
    }
    tx.commit().await?;
    Ok(Batch {
        selected,
        rewritten,
        changed_meanwhile: attempted - rewritten,
        next,
    })
}

async fn select_batch(
    tx: &mut SqliteConnection,
    from: &Key,
    keep_header: &[u8],
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    let rows = match from {
        Key::Connection(after) => sqlx::query!(
            r#"SELECT id AS "id!", tenant_id AS "tenant_id!", provider AS "provider!", generation AS "generation!",
                      access_token AS "access_token!: Vec<u8>"
                 FROM connections
                WHERE id > ?1 AND access_token IS NOT NULL AND substr(access_token, 1, length(?2)) <> ?2
                ORDER BY id LIMIT ?3"#,
            after,
            keep_header,
            limit,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| SealedRow {
            tenant_id: r.tenant_id,
            provider: r.provider,
            binding: Binding::Generation(r.generation),
            sealed: r.access_token,
            position: Position(Key::Connection(r.id)),
        })
        .collect(),
        Key::RefreshToken(after_connection, after_generation) => sqlx::query!(
            r#"SELECT r.connection_id AS "connection_id!", r.generation AS "generation!", r.token AS "token!: Vec<u8>",
                      c.tenant_id AS "tenant_id!", c.provider AS "provider!"
                 FROM refresh_tokens r JOIN connections c ON c.id = r.connection_id
                WHERE (r.connection_id, r.generation) > (?1, ?2) AND r.token IS NOT NULL
                  AND substr(r.token, 1, length(?3)) <> ?3
                ORDER BY r.connection_id, r.generation LIMIT ?4"#,
            after_connection,
            after_generation,
            keep_header,
            limit,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| SealedRow {
            tenant_id: r.tenant_id,
            provider: r.provider,
            binding: Binding::Generation(r.generation),
            sealed: r.token,
            position: Position(Key::RefreshToken(r.connection_id, r.generation)),
        })
        .collect(),
        Key::Pending(after) => sqlx::query!(
            r#"SELECT state_hash AS "state_hash!: Vec<u8>", tenant_id AS "tenant_id!", provider AS "provider!",
                      pkce_verifier AS "pkce_verifier!: Vec<u8>"
                 FROM pending_authorizations
                WHERE state_hash > ?1 AND pkce_verifier IS NOT NULL AND substr(pkce_verifier, 1, length(?2)) <> ?2
                ORDER BY state_hash LIMIT ?3"#,
            after,
            keep_header,
            limit,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| SealedRow {
            tenant_id: r.tenant_id,
            provider: r.provider,
            binding: Binding::StateHash(r.state_hash.clone()),
            sealed: r.pkce_verifier,
            position: Position(Key::Pending(r.state_hash)),
        })
        .collect(),
    };
    Ok(rows)
}

/// Writes one replacement, guarded on the value (and, for access tokens, the generation) read
/// in the same transaction: belt and braces, as on Postgres.
async fn update_one(tx: &mut SqliteConnection, row: &SealedRow, new: &[u8]) -> Result<u64, StoreError> {
    let old = &row.sealed;
    let done = match &row.position.0 {
        Key::Connection(id) => {
            let generation = match row.binding {
                Binding::Generation(g) => g,
                Binding::StateHash(_) => i64::MIN,
            };
            sqlx::query!(
                "UPDATE connections SET access_token = ?4 WHERE id = ?1 AND generation = ?2 AND access_token = ?3",
                id,
                generation,
                old,
                new,
            )
            .execute(&mut *tx)
            .await?
        }
        Key::RefreshToken(connection_id, generation) => {
            sqlx::query!(
                "UPDATE refresh_tokens SET token = ?4 WHERE connection_id = ?1 AND generation = ?2 AND token = ?3",
                connection_id,
                generation,
                old,
                new,
            )
            .execute(&mut *tx)
            .await?
        }
        Key::Pending(hash) => {
            sqlx::query!(
                "UPDATE pending_authorizations SET pkce_verifier = ?3 WHERE state_hash = ?1 AND pkce_verifier = ?2",
                hash,
                old,
                new,
            )
            .execute(&mut *tx)
            .await?
        }
    };
    Ok(done.rows_affected())
}
