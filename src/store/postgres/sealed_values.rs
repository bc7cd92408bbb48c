//! Postgres: sealed values (the statements behind `store::sealed_values`).

use super::Pool;
use crate::store::StoreError;

use crate::store::sealed_values::{Key, *};

pub(in crate::store) async fn count_by_header(pool: &Pool) -> Result<Vec<HeaderCount>, StoreError> {
    // CASE keeps get_byte away from values shorter than two bytes (it would raise).
    let rows = sqlx::query!(
        r#"SELECT col AS "col!", header AS "header!", count(*) AS "count!" FROM (
               SELECT 'access_token' AS col,
                      CASE WHEN length(access_token) < 2 THEN access_token
                           ELSE substring(access_token FROM 1 FOR 2 + get_byte(access_token, 1)) END AS header
                 FROM connections WHERE access_token IS NOT NULL
               UNION ALL
               SELECT 'refresh_token',
                      CASE WHEN length(token) < 2 THEN token
                           ELSE substring(token FROM 1 FOR 2 + get_byte(token, 1)) END
                 FROM refresh_tokens WHERE token IS NOT NULL
               UNION ALL
               SELECT 'pkce_verifier',
                      CASE WHEN length(pkce_verifier) < 2 THEN pkce_verifier
                           ELSE substring(pkce_verifier FROM 1 FOR 2 + get_byte(pkce_verifier, 1)) END
                 FROM pending_authorizations WHERE pkce_verifier IS NOT NULL
           ) sealed GROUP BY col, header ORDER BY col, header"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| HeaderCount {
            column: match r.col.as_str() {
                "access_token" => SealedColumn::AccessToken,
                "refresh_token" => SealedColumn::RefreshToken,
                _ => SealedColumn::PkceVerifier,
            },
            header: r.header,
            count: r.count,
        })
        .collect())
}

pub(in crate::store) async fn rewrap_batch(
    pool: &Pool,
    from: &Position,
    keep_header: &[u8],
    limit: i64,
    mut reseal: impl FnMut(&SealedRow) -> Option<Vec<u8>>,
) -> Result<Batch, StoreError> {
    let mut connection = pool.acquire().await?;
    let mut tx = connection.begin().await?;
    let rows = select_batch(&mut tx, &from.0, keep_header, limit).await?;
    let selected = rows.len();
    let next = rows.last().map(|r| r.position.clone()).unwrap_or_else(|| from.clone());
    let replacements: Vec<(SealedRow, Vec<u8>)> = rows
        .into_iter()
        .filter_map(|row| reseal(&row).map(|new| (row, new)))
        .collect();
    let attempted = replacements.len() as u64;
    let rewritten = if replacements.is_empty() {
        0
    } else {
        update_batch(&mut tx, from.column(), replacements).await?
    };
    tx.commit().await?;
    connection.finished();
    Ok(Batch {
        selected,
        rewritten,
        changed_meanwhile: attempted - rewritten,
        next,
    })
}

async fn select_batch(
    tx: &mut sqlx::PgConnection,
    from: &Key,
    keep_header: &[u8],
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    let rows = match from {
        Key::Connection(after) => sqlx::query!(
            r#"SELECT id, tenant_id, provider, generation, access_token AS "access_token!" FROM connections
                WHERE id > $1 AND access_token IS NOT NULL
                  AND substring(access_token FROM 1 FOR length($2::bytea)) <> $2
                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"#,
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
            r#"SELECT r.connection_id, r.generation, r.token AS "token!", c.tenant_id, c.provider
                 FROM refresh_tokens r JOIN connections c ON c.id = r.connection_id
                WHERE (r.connection_id, r.generation) > ($1, $2) AND r.token IS NOT NULL
                  AND substring(r.token FROM 1 FOR length($3::bytea)) <> $3
                ORDER BY r.connection_id, r.generation LIMIT $4 FOR UPDATE OF r SKIP LOCKED"#,
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
            r#"SELECT state_hash, tenant_id, provider, pkce_verifier AS "pkce_verifier!" FROM pending_authorizations
                WHERE state_hash > $1 AND pkce_verifier IS NOT NULL
                  AND substring(pkce_verifier FROM 1 FOR length($2::bytea)) <> $2
                ORDER BY state_hash LIMIT $3 FOR UPDATE SKIP LOCKED"#,
            after.as_slice(),
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

/// Writes replacements, each guarded on the value (and, for connections, the generation) read
/// under the same lock: belt and braces, so that a row rewritten by any path in between keeps
/// its newer value.
async fn update_batch(
    tx: &mut sqlx::PgConnection,
    column: SealedColumn,
    replacements: Vec<(SealedRow, Vec<u8>)>,
) -> Result<u64, StoreError> {
    let mut old = Vec::with_capacity(replacements.len());
    let mut new = Vec::with_capacity(replacements.len());
    let mut first = Vec::with_capacity(replacements.len());
    let mut second = Vec::with_capacity(replacements.len());
    let mut hashes = Vec::new();
    for (row, value) in replacements {
        match row.position.0 {
            Key::Connection(id) => {
                first.push(id);
                second.push(match row.binding {
                    Binding::Generation(g) => g,
                    Binding::StateHash(_) => i64::MIN,
                });
            }
            Key::RefreshToken(connection_id, generation) => {
                first.push(connection_id);
                second.push(generation);
            }
            Key::Pending(hash) => hashes.push(hash),
        }
        old.push(row.sealed);
        new.push(value);
    }
    let done = match column {
        SealedColumn::AccessToken => sqlx::query!(
            r#"UPDATE connections c SET access_token = v.new
                 FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) AS v(id, generation, old, new)
                WHERE c.id = v.id AND c.generation = v.generation AND c.access_token = v.old"#,
            &first,
            &second,
            &old,
            &new,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected(),
        SealedColumn::RefreshToken => sqlx::query!(
            r#"UPDATE refresh_tokens r SET token = v.new
                 FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[])
                      AS v(connection_id, generation, old, new)
                WHERE r.connection_id = v.connection_id AND r.generation = v.generation AND r.token = v.old"#,
            &first,
            &second,
            &old,
            &new,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected(),
        SealedColumn::PkceVerifier => sqlx::query!(
            r#"UPDATE pending_authorizations p SET pkce_verifier = v.new
                 FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS v(state_hash, old, new)
                WHERE p.state_hash = v.state_hash AND p.pkce_verifier = v.old"#,
            &hashes,
            &old,
            &new,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected(),
    };
    Ok(done)
}
