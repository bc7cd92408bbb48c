//! Bulk seeding of connections straight into the database, sealed exactly as the vault seals
//! them (same keyring, same associated data), so the vault can open every one.

use sqlx::PgPool;
use token_vault::crypto::{Aad, Keyring, Purpose};

pub fn tenant(i: u64) -> String {
    format!("t-{i:07}")
}

/// Inserts tenants `0..count` with access tokens valid for a day.
pub async fn connections(pool: &PgPool, keyring: &Keyring, count: u64) {
    const BATCH: u64 = 5_000;
    let filler = "b".repeat(880);
    let mut start = 0;
    while start < count {
        let end = (start + BATCH).min(count);
        let tenants: Vec<String> = (start..end).map(tenant).collect();
        let tokens: Vec<Vec<u8>> = tenants
            .iter()
            .map(|t| {
                let aad = Aad::for_generation(Purpose::AccessToken, t, "understory", 1);
                keyring
                    .seal(&aad, format!("{t}.{filler}").as_bytes())
                    .expect("sealing works")
            })
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
