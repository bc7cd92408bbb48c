//! Postgres: connections (the statements behind `store::connections`).

use super::Pool;
use crate::connection_key::ConnectionKey;
use crate::store::StoreError;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::store::connections::*;

pub(in crate::store) async fn find(pool: &Pool, key: &ConnectionKey) -> Result<Option<ConnectionRow>, StoreError> {
    async {
        let row = sqlx::query_as!(
            ConnectionRow,
            r#"SELECT id, tenant_id, provider, status, status_reason, status_changed_at, scopes, generation,
                      token_type, COALESCE(access_token, ''::bytea) AS "access_token!",
                      access_token_issued_at, access_token_expires_at, authorized_at, refreshed_at
                 FROM connections WHERE tenant_id = $1 AND provider = $2"#,
            key.tenant().as_str(),
            key.provider().as_str(),
        )
        .fetch_optional(pool)
        .await?;
        Ok(row)
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

pub(in crate::store) async fn find_access_token(
    pool: &Pool,
    key: &ConnectionKey,
) -> Result<Option<StoredAccessToken>, StoreError> {
    async {
        let row = sqlx::query_as!(
            StoredAccessToken,
            r#"SELECT status, status_reason, scopes, generation, token_type,
                      COALESCE(access_token, ''::bytea) AS "access_token!",
                      access_token_issued_at, access_token_expires_at
                 FROM connections WHERE tenant_id = $1 AND provider = $2"#,
            key.tenant().as_str(),
            key.provider().as_str(),
        )
        .fetch_optional(pool)
        .await?;
        Ok(row)
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

pub(in crate::store) async fn current_refresh_token(
    pool: &Pool,
    connection_id: i64,
) -> Result<Option<CurrentRefreshToken>, StoreError> {
    async {
        let row = sqlx::query_as!(
            CurrentRefreshToken,
            r#"SELECT generation, token AS "token!" FROM refresh_tokens
                WHERE connection_id = $1 AND superseded_at IS NULL AND token IS NOT NULL
                ORDER BY generation DESC LIMIT 1"#,
            connection_id,
        )
        .fetch_optional(pool)
        .await?;
        Ok(row)
    }
    .instrument(db_span!("SELECT", "refresh_tokens"))
    .await
}

pub(in crate::store) async fn generation(pool: &Pool, key: &ConnectionKey) -> Result<Option<i64>, StoreError> {
    async {
        let generation = sqlx::query_scalar!(
            "SELECT generation FROM connections WHERE tenant_id = $1 AND provider = $2",
            key.tenant().as_str(),
            key.provider().as_str(),
        )
        .fetch_optional(pool)
        .await?;
        Ok(generation)
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

pub(in crate::store) async fn store_authorization(
    pool: &Pool,
    key: &ConnectionKey,
    replaces: Option<i64>,
    tokens: &NewTokens,
    origin: Origin,
) -> Result<i64, StoreError> {
    async {
        debug_assert_eq!(tokens.generation, replaces.map_or(1, |g| g + 1));
        let (tenant_id, provider) = (key.tenant().as_str(), key.provider().as_str());
        let mut connection = pool.acquire().await?;
        let mut tx = connection.begin().await?;
        let id = match replaces {
            Some(generation) => {
                let id = sqlx::query_scalar!(
                    r#"UPDATE connections
                          SET status = 'active', status_reason = NULL, status_changed_at = now(),
                              scopes = $4, generation = $5, token_type = $6, access_token = $7,
                              access_token_issued_at = $8, access_token_expires_at = $9,
                              authorized_at = now(), refreshed_at = NULL,
                              refresh_token_expires_at = $10, keepalive_due_at = $11,
                              keepalive_claimed_until = NULL, last_error = NULL, last_error_at = NULL,
                              disconnected_at = NULL,
                              refresh_lease_holder = NULL, refresh_lease_until = NULL, updated_at = now()
                        WHERE tenant_id = $1 AND provider = $2 AND generation = $3
                          AND (NOT $12 OR refresh_lease_until IS NULL OR refresh_lease_until <= now())
                    RETURNING id"#,
                    tenant_id,
                    provider,
                    generation,
                    &tokens.scopes,
                    tokens.generation,
                    tokens.token_type,
                    tokens.access_token,
                    tokens.access_token_issued_at,
                    tokens.access_token_expires_at,
                    tokens.refresh_token_expires_at,
                    tokens.keepalive_due_at,
                    origin == Origin::Import,
                )
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::Fenced)?;
                sqlx::query!(
                    "UPDATE refresh_tokens SET superseded_at = now() WHERE connection_id = $1 AND superseded_at IS NULL",
                    id,
                )
                .execute(&mut *tx)
                .await?;
                id
            }
            None => sqlx::query_scalar!(
                r#"INSERT INTO connections
                       (tenant_id, provider, status, scopes, generation, token_type, access_token,
                        access_token_issued_at, access_token_expires_at, authorized_at,
                        refresh_token_expires_at, keepalive_due_at)
                   VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, $8, now(), $9, $10)
                   ON CONFLICT (tenant_id, provider) DO NOTHING
                   RETURNING id"#,
                tenant_id,
                provider,
                &tokens.scopes,
                tokens.generation,
                tokens.token_type,
                tokens.access_token,
                tokens.access_token_issued_at,
                tokens.access_token_expires_at,
                tokens.refresh_token_expires_at,
                tokens.keepalive_due_at,
            )
            .fetch_optional(&mut *tx)
            .await?
            // A concurrent authorization of the same new tenant committed first.
            .ok_or(StoreError::Fenced)?,
        };
        if let Some(refresh_token) = &tokens.refresh_token {
            sqlx::query!(
                r#"INSERT INTO refresh_tokens (connection_id, generation, token, source)
                   VALUES ($1, $2, $3, $4)"#,
                id,
                tokens.generation,
                refresh_token,
                origin.source(),
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query!(
            r#"INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, generation)
               VALUES ($1, $2, $3, $4, 'active', $5)"#,
            id,
            tenant_id,
            provider,
            origin.event(),
            tokens.generation,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        connection.finished();
        Ok(id)
    }
    .instrument(db_span!("UPSERT", "connections"))
    .await
}

pub(in crate::store) async fn try_acquire_lease(
    pool: &Pool,
    key: &ConnectionKey,
    generation: i64,
    holder: Uuid,
    ttl: Duration,
) -> Result<Option<Leased>, StoreError> {
    async {
        let ttl_secs = ttl.as_secs_f64();
        let row = sqlx::query!(
            r#"WITH lease AS (
                   UPDATE connections
                      SET refresh_lease_holder = $4, refresh_lease_until = clock_timestamp() + make_interval(secs => $5)
                    WHERE tenant_id = $1 AND provider = $2 AND generation = $3 AND status = 'active'
                      AND (refresh_lease_until IS NULL OR refresh_lease_until <= now())
                RETURNING id, tenant_id, provider, status, status_reason, status_changed_at, scopes, generation,
                          token_type, access_token, access_token_issued_at, access_token_expires_at,
                          authorized_at, refreshed_at)
               SELECT lease.id, lease.tenant_id, lease.provider, lease.status, lease.status_reason,
                      lease.status_changed_at, lease.scopes, lease.generation, lease.token_type,
                      lease.access_token AS "access_token!", lease.access_token_issued_at, lease.access_token_expires_at,
                      lease.authorized_at, lease.refreshed_at,
                      current.generation AS "refresh_generation?", current.token AS "refresh_token?",
                      token_vault_database_identity() AS "database_identity!",
                      recorded.identity AS "recorded_identity?",
                      recorded.changed_at AS "identity_changed_at?",
                      now() AS "database_now!"
                 FROM lease
                 LEFT JOIN LATERAL (
                      SELECT generation, token FROM refresh_tokens
                       WHERE connection_id = lease.id AND superseded_at IS NULL AND token IS NOT NULL
                       ORDER BY generation DESC LIMIT 1) current ON true
                 LEFT JOIN database_identity recorded ON true"#,
            key.tenant().as_str(),
            key.provider().as_str(),
            generation,
            holder,
            ttl_secs,
        )
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|r| Leased {
            refresh_token: match (r.refresh_generation, r.refresh_token) {
                (Some(generation), Some(token)) => Some(CurrentRefreshToken { generation, token }),
                _ => None,
            },
            database: DatabaseSeen {
                identity: r.database_identity,
                recorded: r.recorded_identity,
                changed_at: r.identity_changed_at,
                now: r.database_now,
            },
            connection: ConnectionRow {
                id: r.id,
                tenant_id: r.tenant_id,
                provider: r.provider,
                status: r.status,
                status_reason: r.status_reason,
                status_changed_at: r.status_changed_at,
                scopes: r.scopes,
                generation: r.generation,
                token_type: r.token_type,
                access_token: r.access_token,
                access_token_issued_at: r.access_token_issued_at,
                access_token_expires_at: r.access_token_expires_at,
                authorized_at: r.authorized_at,
                refreshed_at: r.refreshed_at,
            },
        }))
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn release_lease(pool: &Pool, connection_id: i64, holder: Uuid) -> Result<(), StoreError> {
    async {
        sqlx::query!(
            r#"UPDATE connections SET refresh_lease_holder = NULL, refresh_lease_until = NULL
                WHERE id = $1 AND refresh_lease_holder = $2"#,
            connection_id,
            holder,
        )
        .execute(pool)
        .await?;
        Ok(())
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn store_refresh(
    pool: &Pool,
    connection_id: i64,
    from_generation: i64,
    tokens: &NewTokens,
    cause: RefreshCause,
) -> Result<(), StoreError> {
    async {
        debug_assert_eq!(tokens.generation, from_generation + 1);
        // The statements of one WITH share a snapshot: the supersede below cannot see the row
        // inserted beside it, so only older tokens are marked superseded. `before` locks the
        // row first and so reads the reason the update clears as last committed, not as the
        // snapshot saw it (a writer that committed while we waited for the row). A refresh token's expiry (and so the keep-alive) only
        // moves when a new refresh token came. A keep-alive that brought none (a provider
        // that does not rotate) clears the due moment: refreshing again would not renew the
        // refresh token either, and the keeper would otherwise claim it over and over. The
        // event: a keep-alive's, or a recovery from an unknown outcome; an ordinary refresh
        // writes none.
        let updated = sqlx::query_scalar!(
            r#"WITH before AS (
                   SELECT id AS before_id, status_reason AS before_reason FROM connections
                    WHERE id = $1 AND generation = $2 FOR UPDATE),
               updated AS (
                   UPDATE connections
                      SET generation = $3, scopes = $4, token_type = $5, access_token = $6,
                          access_token_issued_at = $7, access_token_expires_at = $8, refreshed_at = now(),
                          refresh_token_expires_at = CASE WHEN $9::bytea IS NOT NULL THEN $10 ELSE refresh_token_expires_at END,
                          keepalive_due_at = CASE WHEN $9::bytea IS NOT NULL THEN $11
                                                  WHEN $12 THEN NULL ELSE keepalive_due_at END,
                          keepalive_claimed_until = NULL, last_error = NULL, last_error_at = NULL,
                          status_reason = NULL,
                          refresh_lease_holder = NULL, refresh_lease_until = NULL, updated_at = now()
                     FROM before
                    WHERE id = before_id AND generation = $2
                RETURNING id, generation, tenant_id, provider, before_reason),
               superseded AS (
                   UPDATE refresh_tokens SET superseded_at = now()
                    WHERE connection_id = $1 AND superseded_at IS NULL
                      AND $9::bytea IS NOT NULL AND EXISTS (SELECT 1 FROM updated)),
               inserted AS (
                   INSERT INTO refresh_tokens (connection_id, generation, token, source)
                   SELECT id, generation, $9, 'refresh' FROM updated WHERE $9::bytea IS NOT NULL),
               event AS (
                   INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, reason, generation)
                   SELECT u.id, u.tenant_id, u.provider,
                          CASE WHEN $12 THEN 'refreshed_by_keepalive' ELSE 'recovered' END,
                          'active', u.before_reason, u.generation
                     FROM updated u
                    WHERE $12 OR u.before_reason = 'refresh_outcome_unknown')
               SELECT count(*) AS "updated!" FROM updated"#,
            connection_id,
            from_generation,
            tokens.generation,
            &tokens.scopes,
            tokens.token_type,
            tokens.access_token,
            tokens.access_token_issued_at,
            tokens.access_token_expires_at,
            tokens.refresh_token.as_deref(),
            tokens.refresh_token_expires_at,
            tokens.keepalive_due_at,
            cause == RefreshCause::Keepalive,
        )
        .fetch_one(pool)
        .await?;
        if updated != 1 {
            return Err(StoreError::Fenced);
        }
        Ok(())
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn write_back(
    pool: &Pool,
    connection_id: i64,
    authorized_at: OffsetDateTime,
    tokens: &NewTokens,
) -> Result<bool, StoreError> {
    async {
        let updated = sqlx::query_scalar!(
            r#"WITH before AS (
                   SELECT id AS before_id, status AS before_status FROM connections WHERE id = $1 FOR UPDATE),
               updated AS (
                   UPDATE connections
                      SET generation = $2, scopes = $3, token_type = $4, access_token = $5,
                          access_token_issued_at = $6, access_token_expires_at = $7, refreshed_at = now(),
                          refresh_token_expires_at = CASE WHEN $8::bytea IS NOT NULL THEN $10 ELSE refresh_token_expires_at END,
                          keepalive_due_at = CASE WHEN $8::bytea IS NOT NULL THEN $11 ELSE keepalive_due_at END,
                          status = CASE WHEN status = 'active' OR status_reason = 'rotation_lost'
                                        THEN 'active' ELSE status END,
                          status_reason = CASE WHEN status = 'active' OR status_reason = 'rotation_lost'
                                               THEN NULL ELSE status_reason END,
                          status_changed_at = now(),
                          refresh_lease_holder = NULL, refresh_lease_until = NULL, updated_at = now()
                     FROM before
                    WHERE id = before_id AND generation < $2 AND authorized_at = $9 AND status <> 'disconnected'
                RETURNING id, generation, tenant_id, provider, status, before_status),
               superseded AS (
                   UPDATE refresh_tokens SET superseded_at = now()
                    WHERE connection_id = $1 AND superseded_at IS NULL
                      AND $8::bytea IS NOT NULL AND EXISTS (SELECT 1 FROM updated)),
               inserted AS (
                   INSERT INTO refresh_tokens (connection_id, generation, token, source)
                   SELECT id, generation, $8, 'write_back' FROM updated WHERE $8::bytea IS NOT NULL),
               event AS (
                   INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, reason, generation)
                   SELECT u.id, u.tenant_id, u.provider, 'recovered', u.status, 'rotation_written_back', u.generation
                     FROM updated u
                    WHERE u.before_status <> 'active' AND u.status = 'active')
               SELECT count(*) AS "updated!" FROM updated"#,
            connection_id,
            tokens.generation,
            &tokens.scopes,
            tokens.token_type,
            tokens.access_token,
            tokens.access_token_issued_at,
            tokens.access_token_expires_at,
            tokens.refresh_token.as_deref(),
            authorized_at,
            tokens.refresh_token_expires_at,
            tokens.keepalive_due_at,
        )
        .fetch_one(pool)
        .await?;
        Ok(updated == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn mark_reauthorization_required(
    pool: &Pool,
    connection_id: i64,
    generation: i64,
    reason: &str,
) -> Result<bool, StoreError> {
    async {
        let marked = sqlx::query_scalar!(
            r#"WITH marked AS (
                   UPDATE connections
                      SET status = 'reauthorization_required', status_reason = $3, status_changed_at = now(),
                          keepalive_due_at = NULL, keepalive_claimed_until = NULL,
                          last_error = $3, last_error_at = now(),
                          refresh_lease_holder = NULL, refresh_lease_until = NULL, updated_at = now()
                    WHERE id = $1 AND generation = $2 AND status = 'active'
                RETURNING id, tenant_id, provider, generation),
               event AS (
                   INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, reason, generation)
                   SELECT id, tenant_id, provider, 'reauthorization_required', 'reauthorization_required', $3, generation
                     FROM marked)
               SELECT count(*) AS "marked!" FROM marked"#,
            connection_id,
            generation,
            reason,
        )
        .fetch_one(pool)
        .await?;
        Ok(marked == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn describe(
    pool: &Pool,
    key: &ConnectionKey,
) -> Result<Option<ConnectionSummary>, StoreError> {
    async {
        let row = sqlx::query_as!(
            ConnectionSummary,
            r#"SELECT tenant_id, provider, status, status_reason, status_changed_at, scopes,
                      access_token_expires_at, authorized_at, refreshed_at, refresh_token_expires_at,
                      keepalive_due_at, last_error, last_error_at, disconnected_at,
                      EXISTS (SELECT 1 FROM refresh_tokens r
                               WHERE r.connection_id = c.id AND r.superseded_at IS NULL AND r.token IS NOT NULL)
                          AS "has_refresh_token!"
                 FROM connections c WHERE tenant_id = $1 AND provider = $2"#,
            key.tenant().as_str(),
            key.provider().as_str(),
        )
        .fetch_optional(pool)
        .await?;
        Ok(row)
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

pub(in crate::store) async fn list(
    pool: &Pool,
    filter: &ConnectionFilter,
    limit: i64,
) -> Result<Vec<ConnectionSummary>, StoreError> {
    async {
        let (after_provider, after_tenant) = filter.after.clone().unzip();
        let rows = sqlx::query_as!(
            ConnectionSummary,
            r#"SELECT tenant_id, provider, status, status_reason, status_changed_at, scopes,
                      access_token_expires_at, authorized_at, refreshed_at, refresh_token_expires_at,
                      keepalive_due_at, last_error, last_error_at, disconnected_at,
                      EXISTS (SELECT 1 FROM refresh_tokens r
                               WHERE r.connection_id = c.id AND r.superseded_at IS NULL AND r.token IS NOT NULL)
                          AS "has_refresh_token!"
                 FROM connections c
                WHERE ($1::text IS NULL OR provider = $1)
                  AND ($2::text IS NULL OR status = $2)
                  AND ($3::text IS NULL OR starts_with(tenant_id, $3))
                  AND ($4::text IS NULL OR (provider, tenant_id) > ($4, $5::text))
                ORDER BY provider, tenant_id
                LIMIT $6"#,
            filter.provider.as_deref(),
            filter.status.as_deref(),
            filter.tenant_prefix.as_deref(),
            after_provider,
            after_tenant,
            limit,
        )
        .fetch_all(pool)
        .await?;
        Ok(rows)
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

/// Sums the changes the migration's triggers append (20261211000001), then folds them if any
/// status has more than one row.
pub(in crate::store) async fn count_by_status(pool: &Pool) -> Result<Vec<(String, i64)>, StoreError> {
    async {
        let rows = sqlx::query!(
            r#"SELECT status, sum(change)::bigint AS "count!", count(*) AS "rows!" FROM connection_status_changes
                GROUP BY status ORDER BY status"#
        )
        .fetch_all(pool)
        .await?;
        if rows.iter().any(|r| r.rows > 1) {
            // The sums above stand either way. A database that refuses writes for a while (a
            // standby during a failover, a synchronous standby that does not answer) leaves the
            // rows to the next count.
            match tokio::time::timeout(FOLD_TIMEOUT, fold_status_changes(pool)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not fold the connection status changes; they pile up until a fold succeeds");
                }
                Err(_) => tracing::warn!(
                    timeout = ?FOLD_TIMEOUT,
                    "folding the connection status changes took too long; they pile up until a fold succeeds"
                ),
            }
        }
        Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
    }
    .instrument(db_span!("SELECT", "connection_status_changes"))
    .await
}

/// How long a fold of the status changes may take before the count goes on without it (its
/// transaction is then rolled back by the pool, `Pool`'s flush).
const FOLD_TIMEOUT: Duration = Duration::from_secs(10);

/// Replaces the status changes by one row per status holding their sum, so that the table stays
/// a few rows long however many connections change between two counts. One replica folds at a
/// time and the others skip it: a fold puts back the sum of exactly the rows its own DELETE
/// removed, so two at once would still keep every total, but the second would wait for the first.
async fn fold_status_changes(pool: &Pool) -> Result<(), StoreError> {
    let mut connection = pool.acquire().await?;
    let mut tx = connection.begin().await?;
    let folding = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtext('token_vault.connection_status_changes')) AS "locked!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    if folding {
        // Changes committed after this statement's snapshot stay behind as rows of their own,
        // for the next fold.
        sqlx::query!(
            r#"WITH folded AS (DELETE FROM connection_status_changes RETURNING status, change)
               INSERT INTO connection_status_changes (status, change)
               SELECT status, sum(change) FROM folded GROUP BY status"#
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    connection.finished();
    Ok(())
}

pub(in crate::store) async fn note_refresh_outcome_unknown(
    pool: &Pool,
    connection_id: i64,
    generation: i64,
    holder: Uuid,
) -> Result<bool, StoreError> {
    async {
        let done = sqlx::query!(
            r#"UPDATE connections SET status_reason = 'refresh_outcome_unknown', updated_at = now()
                WHERE id = $1 AND generation = $2 AND refresh_lease_holder = $3 AND status = 'active'"#,
            connection_id,
            generation,
            holder,
        )
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn extend_lease(
    pool: &Pool,
    connection_id: i64,
    generation: i64,
    holder: Uuid,
    ttl: Duration,
) -> Result<bool, StoreError> {
    async {
        let ttl_secs = ttl.as_secs_f64();
        let done = sqlx::query!(
            r#"UPDATE connections SET refresh_lease_until = clock_timestamp() + make_interval(secs => $4)
                WHERE id = $1 AND generation = $2 AND refresh_lease_holder = $3"#,
            connection_id,
            generation,
            holder,
            ttl_secs,
        )
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}
