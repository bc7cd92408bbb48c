//! Bulk seeding of connections straight into the database, sealed exactly as the vault seals
//! them (same keyring, same associated data), so the vault can open every one.

use sqlx::{PgPool, SqliteConnection, SqlitePool};
use token_vault::crypto::{Aad, Keyring, Purpose};

pub fn tenant(i: u64) -> String {
    format!("t-{i:07}")
}

/// The length of every seeded access token: the tenant id, a dot and 880 bytes of filler.
pub const ACCESS_TOKEN_BYTES: usize = 9 + 1 + FILLER_BYTES;
const FILLER_BYTES: usize = 880;

/// `text` sealed for `tenant`'s connection at generation 1, as the vault seals it.
fn sealed(keyring: &Keyring, purpose: Purpose, tenant: &str, text: &str) -> Vec<u8> {
    let aad = Aad::for_generation(purpose, tenant, "understory", 1);
    keyring.seal(&aad, text.as_bytes()).expect("sealing works")
}

/// The refresh token every seeded connection that holds one holds.
fn refresh_token(tenant: &str) -> String {
    format!("ory_rt_seeded_{tenant}")
}

/// Runs `insert` for each seeded tenant `0..count` on the SQLite file, 5,000 to a transaction:
/// SQLite binds no arrays, so its seeds insert a row per statement and batch the commits.
async fn in_sqlite_batches(pool: &SqlitePool, count: u64, mut insert: impl AsyncFnMut(&mut SqliteConnection, String)) {
    const BATCH: u64 = 5_000;
    let mut start = 0;
    while start < count {
        let end = (start + BATCH).min(count);
        let mut tx = pool.begin().await.expect("a transaction");
        for i in start..end {
            insert(&mut tx, tenant(i)).await;
        }
        tx.commit().await.expect("the batch commits");
        start = end;
    }
}

/// Inserts tenants `0..count` with access tokens valid for a day.
pub async fn connections(pool: &PgPool, keyring: &Keyring, count: u64) {
    const BATCH: u64 = 5_000;
    let filler = "b".repeat(FILLER_BYTES);
    let mut start = 0;
    while start < count {
        let end = (start + BATCH).min(count);
        let tenants: Vec<String> = (start..end).map(tenant).collect();
        let tokens: Vec<Vec<u8>> = tenants
            .iter()
            .map(|t| sealed(keyring, Purpose::AccessToken, t, &format!("{t}.{filler}")))
            .collect();
        sqlx::query(
            r#"INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                        access_token_issued_at, access_token_expires_at, authorized_at)
               SELECT t, 'understory', 'active', ARRAY['offline', 'booking.read'], 1, 'bearer', a,
                      now(), now() + interval '1 day', now()
                 FROM UNNEST($1::text[], $2::bytea[]) AS u(t, a)"#,
        )
        .bind(&tenants)
        .bind(&tokens)
        .execute(pool)
        .await
        .expect("seeding works");
        start = end;
    }
    sqlx::query("ANALYZE connections").execute(pool).await.expect("analyze");
}

/// As [`connections`], into the embedded store's SQLite file: rows in the form its statements
/// write (scopes as JSON, times as fixed-width UTC text), 5,000 to a transaction.
pub async fn connections_sqlite(pool: &SqlitePool, keyring: &Keyring, count: u64) {
    let filler = "b".repeat(FILLER_BYTES);
    in_sqlite_batches(pool, count, async |tx, t| {
        sqlx::query(
            r#"INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                        access_token_issued_at, access_token_expires_at, authorized_at)
               VALUES (?1, 'understory', 'active', '["offline","booking.read"]', 1, 'bearer', ?2,
                       strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 day'),
                       strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"#,
        )
        .bind(&t)
        .bind(sealed(keyring, Purpose::AccessToken, &t, &format!("{t}.{filler}")))
        .execute(tx)
        .await
        .expect("seeding works");
    })
    .await;
    sqlx::query("ANALYZE").execute(pool).await.expect("analyze");
}

/// Gives the first `due` seeded tenants a sealed refresh token and a keep-alive due now (most
/// overdue first, a second apart), and every other seeded tenant a keep-alive due over the next
/// 30 days: the keeper's index holds every connection, and only `due` of them are due.
pub async fn keepalive(pool: &PgPool, keyring: &Keyring, due: u64) {
    const BATCH: u64 = 5_000;
    let mut start = 0;
    while start < due {
        let end = (start + BATCH).min(due);
        let tenants: Vec<String> = (start..end).map(tenant).collect();
        let tokens: Vec<Vec<u8>> = tenants
            .iter()
            .map(|t| sealed(keyring, Purpose::RefreshToken, t, &refresh_token(t)))
            .collect();
        sqlx::query(
            r#"INSERT INTO refresh_tokens (connection_id, generation, token, source)
               SELECT c.id, 1, u.r, 'authorization_code'
                 FROM UNNEST($1::text[], $2::bytea[]) AS u(t, r)
                 JOIN connections c ON c.tenant_id = u.t AND c.provider = 'understory'"#,
        )
        .bind(&tenants)
        .bind(&tokens)
        .execute(pool)
        .await
        .expect("seeding refresh tokens works");
        start = end;
    }
    sqlx::query(
        r#"UPDATE connections
              SET keepalive_due_at = CASE WHEN tenant_id < $1
                                          THEN now() - make_interval(secs => $2 - substr(tenant_id, 3)::int)
                                          ELSE now() + make_interval(secs => (hashtext(tenant_id)::bigint & 2147483647) % (30 * 86400)) END,
                  refresh_token_expires_at = now() + interval '30 days'
            WHERE provider = 'understory' AND tenant_id LIKE 't-%'"#,
    )
    .bind(tenant(due))
    .bind(due as f64)
    .execute(pool)
    .await
    .expect("seeding keep-alive moments works");
    sqlx::query("ANALYZE connections").execute(pool).await.expect("analyze");
}

/// As [`keepalive`], into the embedded store's SQLite file: the first `due` seeded tenants get
/// a sealed refresh token (5,000 to a transaction) and a keep-alive due now, most overdue first
/// and a second apart; every other seeded tenant one due over the next 30 days, spread by a
/// multiplicative hash of its number (SQLite has no `hashtext`).
pub async fn keepalive_sqlite(pool: &SqlitePool, keyring: &Keyring, due: u64) {
    in_sqlite_batches(pool, due, async |tx, t| {
        sqlx::query(
            r#"INSERT INTO refresh_tokens (connection_id, generation, token, source)
               SELECT id, 1, ?2, 'authorization_code' FROM connections
                WHERE tenant_id = ?1 AND provider = 'understory'"#,
        )
        .bind(&t)
        .bind(sealed(keyring, Purpose::RefreshToken, &t, &refresh_token(&t)))
        .execute(tx)
        .await
        .expect("seeding refresh tokens works");
    })
    .await;
    sqlx::query(
        r#"UPDATE connections
              SET keepalive_due_at = CASE WHEN tenant_id < ?1
                      THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now',
                                    printf('-%d seconds', ?2 - CAST(substr(tenant_id, 3) AS INTEGER)))
                      ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now',
                                    printf('+%d seconds', (CAST(substr(tenant_id, 3) AS INTEGER) * 2654435761) % (30 * 86400))) END,
                  refresh_token_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+30 days')
            WHERE provider = 'understory' AND tenant_id LIKE 't-%'"#,
    )
    .bind(tenant(due))
    .bind(due as i64)
    .execute(pool)
    .await
    .expect("seeding keep-alive moments works");
}

/// Connections `{prefix}-00000..` whose access tokens expired a minute ago, each with a sealed
/// refresh token of its own: a fleet that must all refresh, as after an outage.
pub async fn expired(pool: &PgPool, keyring: &Keyring, prefix: &str, count: usize) -> Vec<String> {
    let tenants: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:05}")).collect();
    let filler = "e".repeat(FILLER_BYTES);
    for chunk in tenants.chunks(5_000) {
        let access: Vec<Vec<u8>> = chunk
            .iter()
            .map(|t| sealed(keyring, Purpose::AccessToken, t, &format!("{t}.{filler}")))
            .collect();
        let refresh: Vec<Vec<u8>> = chunk
            .iter()
            .map(|t| sealed(keyring, Purpose::RefreshToken, t, &refresh_token(t)))
            .collect();
        sqlx::query(
            r#"WITH inserted AS (
                 INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                          access_token_issued_at, access_token_expires_at, authorized_at)
                 SELECT t, 'understory', 'active', ARRAY['offline', 'booking.read'], 1, 'bearer', a,
                        now() - interval '1 hour', now() - interval '1 minute', now() - interval '1 hour'
                   FROM UNNEST($1::text[], $2::bytea[]) AS u(t, a)
                 RETURNING id, tenant_id)
               INSERT INTO refresh_tokens (connection_id, generation, token, source)
               SELECT i.id, 1, u.r, 'authorization_code'
                 FROM inserted i JOIN UNNEST($1::text[], $3::bytea[]) AS u(t, r) ON u.t = i.tenant_id"#,
        )
        .bind(chunk)
        .bind(&access)
        .bind(&refresh)
        .execute(pool)
        .await
        .expect("seeding expired connections works");
    }
    tenants
}
