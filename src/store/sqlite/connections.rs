//! SQLite: connections and their refresh-token history, the refresh lease and the fenced
//! writes (the statements behind `store::connections`). What Postgres does in one statement
//! with data-modifying CTEs is one `BEGIN IMMEDIATE` transaction here: the same reads and
//! writes, with the write lock held from the first read. The lease, one `UPDATE` whose
//! RETURNING reads the rest, is a single statement here too.

use std::time::Duration;

use sqlx::SqliteConnection;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{begin_immediate, later, scopes_from, scopes_json, ts, ts_opt, SqlitePools};
use crate::{
    connection_key::ConnectionKey,
    store::{connections::*, StoreError},
};

/// A connection row as SQLite returns it (scopes still JSON).
struct Row {
    id: i64,
    tenant_id: String,
    provider: String,
    status: String,
    status_reason: Option<String>,
    status_changed_at: OffsetDateTime,
    scopes: String,
    generation: i64,
    token_type: String,
    access_token: Vec<u8>,
    access_token_issued_at: OffsetDateTime,
    access_token_expires_at: OffsetDateTime,
    authorized_at: OffsetDateTime,
    refreshed_at: Option<OffsetDateTime>,
}

impl Row {
    fn into_connection(self) -> Result<ConnectionRow, StoreError> {
        Ok(ConnectionRow {
            id: self.id,
            tenant_id: self.tenant_id,
            provider: self.provider,
            status: self.status,
            status_reason: self.status_reason,
            status_changed_at: self.status_changed_at,
            scopes: scopes_from(&self.scopes)?,
            generation: self.generation,
            token_type: self.token_type,
            access_token: self.access_token,
            access_token_issued_at: self.access_token_issued_at,
            access_token_expires_at: self.access_token_expires_at,
            authorized_at: self.authorized_at,
            refreshed_at: self.refreshed_at,
        })
    }
}

pub(in crate::store) async fn find(db: &SqlitePools, key: &ConnectionKey) -> Result<Option<ConnectionRow>, StoreError> {
    async {
        let (tenant, provider) = (key.tenant().as_str(), key.provider().as_str());
        let row = sqlx::query_as!(
            Row,
            r#"SELECT id AS "id!", tenant_id, provider, status, status_reason,
                      status_changed_at AS "status_changed_at!: OffsetDateTime", scopes, generation,
                      token_type, COALESCE(access_token, X'') AS "access_token!: Vec<u8>",
                      access_token_issued_at AS "access_token_issued_at!: OffsetDateTime",
                      access_token_expires_at AS "access_token_expires_at!: OffsetDateTime",
                      authorized_at AS "authorized_at!: OffsetDateTime",
                      refreshed_at AS "refreshed_at: OffsetDateTime"
                 FROM connections WHERE tenant_id = ?1 AND provider = ?2"#,
            tenant,
            provider,
        )
        .fetch_optional(db.readers())
        .await?;
        row.map(Row::into_connection).transpose()
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

pub(in crate::store) async fn find_access_token(
    db: &SqlitePools,
    key: &ConnectionKey,
) -> Result<Option<StoredAccessToken>, StoreError> {
    async {
        let (tenant, provider) = (key.tenant().as_str(), key.provider().as_str());
        let row = sqlx::query!(
            r#"SELECT status, status_reason, scopes, generation, token_type,
                      COALESCE(access_token, X'') AS "access_token!: Vec<u8>",
                      access_token_issued_at AS "access_token_issued_at!: OffsetDateTime",
                      access_token_expires_at AS "access_token_expires_at!: OffsetDateTime"
                 FROM connections WHERE tenant_id = ?1 AND provider = ?2"#,
            tenant,
            provider,
        )
        .fetch_optional(db.readers())
        .await?;
        row.map(|row| {
            Ok(StoredAccessToken {
                status: row.status,
                status_reason: row.status_reason,
                scopes: scopes_from(&row.scopes)?,
                generation: row.generation,
                token_type: row.token_type,
                access_token: row.access_token,
                access_token_issued_at: row.access_token_issued_at,
                access_token_expires_at: row.access_token_expires_at,
            })
        })
        .transpose()
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

/// The current refresh token of a connection, read on `conn` (a transaction's, or the pool's).
async fn current_on(
    conn: &mut SqliteConnection,
    connection_id: i64,
) -> Result<Option<CurrentRefreshToken>, StoreError> {
    Ok(sqlx::query_as!(
        CurrentRefreshToken,
        r#"SELECT generation AS "generation!", token AS "token!: Vec<u8>" FROM refresh_tokens
            WHERE connection_id = ?1 AND superseded_at IS NULL AND token IS NOT NULL
            ORDER BY generation DESC LIMIT 1"#,
        connection_id,
    )
    .fetch_optional(&mut *conn)
    .await?)
}

pub(in crate::store) async fn current_refresh_token(
    db: &SqlitePools,
    connection_id: i64,
) -> Result<Option<CurrentRefreshToken>, StoreError> {
    async {
        let mut conn = db.readers().acquire().await?;
        current_on(&mut conn, connection_id).await
    }
    .instrument(db_span!("SELECT", "refresh_tokens"))
    .await
}

pub(in crate::store) async fn generation(db: &SqlitePools, key: &ConnectionKey) -> Result<Option<i64>, StoreError> {
    async {
        let (tenant, provider) = (key.tenant().as_str(), key.provider().as_str());
        let generation = sqlx::query_scalar!(
            r#"SELECT generation AS "generation!" FROM connections WHERE tenant_id = ?1 AND provider = ?2"#,
            tenant,
            provider,
        )
        .fetch_optional(db.readers())
        .await?;
        Ok(generation)
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

/// Writes `tokens`' refresh token (if any) as the current one of generation `tokens.generation`,
/// marking the older ones superseded; `source` as `refresh_tokens.source` allows.
async fn rotate_refresh_token(
    conn: &mut SqliteConnection,
    connection_id: i64,
    tokens: &NewTokens,
    source: &str,
) -> Result<(), StoreError> {
    let Some(refresh_token) = &tokens.refresh_token else {
        return Ok(());
    };
    sqlx::query!(
        "UPDATE refresh_tokens SET superseded_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
          WHERE connection_id = ?1 AND superseded_at IS NULL",
        connection_id,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO refresh_tokens (connection_id, generation, token, source) VALUES (?1, ?2, ?3, ?4)",
        connection_id,
        tokens.generation,
        refresh_token,
        source,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends a connection event in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub(super) async fn event(
    conn: &mut SqliteConnection,
    connection_id: i64,
    tenant_id: &str,
    provider: &str,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    generation: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO connection_events (connection_id, tenant_id, provider, kind, status, reason, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        connection_id,
        tenant_id,
        provider,
        kind,
        status,
        reason,
        generation,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(in crate::store) async fn store_authorization(
    db: &SqlitePools,
    key: &ConnectionKey,
    replaces: Option<i64>,
    tokens: &NewTokens,
    origin: Origin,
) -> Result<i64, StoreError> {
    async {
        debug_assert_eq!(tokens.generation, replaces.map_or(1, |g| g + 1));
        let (tenant_id, provider) = (key.tenant().as_str(), key.provider().as_str());
        let scopes = scopes_json(&tokens.scopes);
        let issued_at = ts(tokens.access_token_issued_at);
        let expires_at = ts(tokens.access_token_expires_at);
        let refresh_expires_at = ts_opt(tokens.refresh_token_expires_at);
        let keepalive_due_at = ts_opt(tokens.keepalive_due_at);
        let mut tx = begin_immediate(db).await?;
        let id = match replaces {
            Some(generation) => {
                let import = origin == Origin::Import;
                let id = sqlx::query_scalar!(
                    r#"UPDATE connections
                          SET status = 'active', status_reason = NULL,
                              status_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                              scopes = ?4, generation = ?5, token_type = ?6, access_token = ?7,
                              access_token_issued_at = ?8, access_token_expires_at = ?9,
                              authorized_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), refreshed_at = NULL,
                              refresh_token_expires_at = ?10, keepalive_due_at = ?11,
                              keepalive_claimed_until = NULL, last_error = NULL, last_error_at = NULL,
                              disconnected_at = NULL,
                              refresh_lease_holder = NULL, refresh_lease_until = NULL,
                              updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                        WHERE tenant_id = ?1 AND provider = ?2 AND generation = ?3
                          AND (NOT ?12 OR refresh_lease_until IS NULL
                               OR refresh_lease_until <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                    RETURNING id AS "id!""#,
                    tenant_id,
                    provider,
                    generation,
                    scopes,
                    tokens.generation,
                    tokens.token_type,
                    tokens.access_token,
                    issued_at,
                    expires_at,
                    refresh_expires_at,
                    keepalive_due_at,
                    import,
                )
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::Fenced)?;
                sqlx::query!(
                    "UPDATE refresh_tokens SET superseded_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                      WHERE connection_id = ?1 AND superseded_at IS NULL",
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
                   VALUES (?1, ?2, 'active', ?3, ?4, ?5, ?6, ?7, ?8, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?9, ?10)
                   ON CONFLICT (tenant_id, provider) DO NOTHING
                   RETURNING id AS "id!""#,
                tenant_id,
                provider,
                scopes,
                tokens.generation,
                tokens.token_type,
                tokens.access_token,
                issued_at,
                expires_at,
                refresh_expires_at,
                keepalive_due_at,
            )
            .fetch_optional(&mut *tx)
            .await?
            // Another authorization of the same new tenant committed first.
            .ok_or(StoreError::Fenced)?,
        };
        if let Some(refresh_token) = &tokens.refresh_token {
            let source = origin.source();
            sqlx::query!(
                "INSERT INTO refresh_tokens (connection_id, generation, token, source) VALUES (?1, ?2, ?3, ?4)",
                id,
                tokens.generation,
                refresh_token,
                source,
            )
            .execute(&mut *tx)
            .await?;
        }
        event(
            &mut tx,
            id,
            tenant_id,
            provider,
            origin.event(),
            "active",
            None,
            tokens.generation,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }
    .instrument(db_span!("UPSERT", "connections"))
    .await
}

pub(in crate::store) async fn try_acquire_lease(
    db: &SqlitePools,
    key: &ConnectionKey,
    generation: i64,
    holder: Uuid,
    ttl: Duration,
) -> Result<Option<Leased>, StoreError> {
    async {
        let (tenant, provider) = (key.tenant().as_str(), key.provider().as_str());
        let until = later(ttl);
        // One statement, outside any explicit transaction: SQLite begins a data-modifying
        // statement's implicit transaction with the write lock already taken (as `BEGIN
        // IMMEDIATE` does, waiting at the busy timeout), so the lease's check and its write
        // are one atomic step, and the RETURNING clause's subqueries read the refresh token
        // and the file's identity in that same transaction. Each statement is a round trip to
        // the connection's thread; the transaction this replaces took five (BEGIN, the
        // update, two reads, COMMIT), all with the process's one writer held.
        //
        // Read with `fetch_all`, never `fetch_optional`: the implicit transaction commits when
        // the statement runs to its end. sqlx stops a statement fetched for one row after that
        // row and resets it, which commits, but drops what the reset returns, so a failed
        // commit would pass for a lease taken. Stepped to the end, a failed commit is the
        // statement's error. (At most one row: (tenant_id, provider) is unique.) As on
        // Postgres, a lease whose statement ran is taken: if what follows fails (a row that
        // does not decode) or the refresh task is dropped with its runtime, it lapses after
        // `lease_ttl` instead of being rolled back.
        let rows = sqlx::query!(
            r#"UPDATE connections
                  SET refresh_lease_holder = ?4,
                      refresh_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?5)
                WHERE tenant_id = ?1 AND provider = ?2 AND generation = ?3 AND status = 'active'
                  AND (refresh_lease_until IS NULL OR refresh_lease_until <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            RETURNING id AS "id!", tenant_id AS "tenant_id!", provider AS "provider!", status AS "status!",
                      status_reason, status_changed_at AS "status_changed_at!: OffsetDateTime",
                      scopes AS "scopes!", generation AS "generation!", token_type AS "token_type!",
                      COALESCE(access_token, X'') AS "access_token!: Vec<u8>",
                      access_token_issued_at AS "access_token_issued_at!: OffsetDateTime",
                      access_token_expires_at AS "access_token_expires_at!: OffsetDateTime",
                      authorized_at AS "authorized_at!: OffsetDateTime",
                      refreshed_at AS "refreshed_at: OffsetDateTime",
                      (SELECT r.generation FROM refresh_tokens r
                        WHERE r.connection_id = connections.id AND r.superseded_at IS NULL AND r.token IS NOT NULL
                        ORDER BY r.generation DESC LIMIT 1) AS "refresh_generation?: i64",
                      (SELECT r.token FROM refresh_tokens r
                        WHERE r.connection_id = connections.id AND r.superseded_at IS NULL AND r.token IS NOT NULL
                        ORDER BY r.generation DESC LIMIT 1) AS "refresh_token?: Vec<u8>",
                      (SELECT s.identity FROM store_identity s) AS "identity!: String",
                      (SELECT d.identity FROM database_identity d) AS "recorded?: String",
                      (SELECT d.changed_at FROM database_identity d) AS "changed_at?: OffsetDateTime",
                      strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS "now!: OffsetDateTime""#,
            tenant,
            provider,
            generation,
            holder,
            until,
        )
        .fetch_all(db.writer())
        .await?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        let refresh_token = match (r.refresh_generation, r.refresh_token) {
            (Some(generation), Some(token)) => Some(CurrentRefreshToken { generation, token }),
            _ => None,
        };
        let database = DatabaseSeen {
            identity: r.identity,
            recorded: r.recorded,
            changed_at: r.changed_at,
            now: r.now,
        };
        let connection = Row {
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
        }
        .into_connection()?;
        Ok(Some(Leased {
            connection,
            refresh_token,
            database,
        }))
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn release_lease(
    db: &SqlitePools,
    connection_id: i64,
    holder: Uuid,
) -> Result<(), StoreError> {
    async {
        sqlx::query!(
            "UPDATE connections SET refresh_lease_holder = NULL, refresh_lease_until = NULL
              WHERE id = ?1 AND refresh_lease_holder = ?2",
            connection_id,
            holder,
        )
        .execute(db.writer())
        .await?;
        Ok(())
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn store_refresh(
    db: &SqlitePools,
    connection_id: i64,
    from_generation: i64,
    tokens: &NewTokens,
    cause: RefreshCause,
) -> Result<(), StoreError> {
    async {
        debug_assert_eq!(tokens.generation, from_generation + 1);
        let scopes = scopes_json(&tokens.scopes);
        let issued_at = ts(tokens.access_token_issued_at);
        let expires_at = ts(tokens.access_token_expires_at);
        let refresh_expires_at = ts_opt(tokens.refresh_token_expires_at);
        let keepalive_due_at = ts_opt(tokens.keepalive_due_at);
        let has_refresh_token = tokens.refresh_token.is_some();
        let keepalive = cause == RefreshCause::Keepalive;
        let mut tx = begin_immediate(db).await?;
        // Read under the write lock: the reason the update clears, as last committed.
        let before = sqlx::query!(
            "SELECT status_reason FROM connections WHERE id = ?1 AND generation = ?2",
            connection_id,
            from_generation,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = before else {
            return Err(StoreError::Fenced);
        };
        // A refresh token's expiry (and so the keep-alive) only moves when a new refresh token
        // came; a keep-alive that brought none clears the due moment (see the Postgres store).
        let updated = sqlx::query!(
            r#"UPDATE connections
                  SET generation = ?3, scopes = ?4, token_type = ?5, access_token = ?6,
                      access_token_issued_at = ?7, access_token_expires_at = ?8,
                      refreshed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                      refresh_token_expires_at = CASE WHEN ?9 THEN ?10 ELSE refresh_token_expires_at END,
                      keepalive_due_at = CASE WHEN ?9 THEN ?11 WHEN ?12 THEN NULL ELSE keepalive_due_at END,
                      keepalive_claimed_until = NULL, last_error = NULL, last_error_at = NULL,
                      status_reason = NULL,
                      refresh_lease_holder = NULL, refresh_lease_until = NULL,
                      updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                WHERE id = ?1 AND generation = ?2
            RETURNING tenant_id AS "tenant_id!", provider AS "provider!""#,
            connection_id,
            from_generation,
            tokens.generation,
            scopes,
            tokens.token_type,
            tokens.access_token,
            issued_at,
            expires_at,
            has_refresh_token,
            refresh_expires_at,
            keepalive_due_at,
            keepalive,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(updated) = updated else {
            return Err(StoreError::Fenced);
        };
        rotate_refresh_token(&mut tx, connection_id, tokens, "refresh").await?;
        let before_reason = before.status_reason;
        if keepalive || before_reason.as_deref() == Some("refresh_outcome_unknown") {
            let kind = if keepalive {
                "refreshed_by_keepalive"
            } else {
                "recovered"
            };
            event(
                &mut tx,
                connection_id,
                &updated.tenant_id,
                &updated.provider,
                kind,
                "active",
                before_reason.as_deref(),
                tokens.generation,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn write_back(
    db: &SqlitePools,
    connection_id: i64,
    authorized_at: OffsetDateTime,
    tokens: &NewTokens,
) -> Result<bool, StoreError> {
    async {
        let scopes = scopes_json(&tokens.scopes);
        let issued_at = ts(tokens.access_token_issued_at);
        let expires_at = ts(tokens.access_token_expires_at);
        let refresh_expires_at = ts_opt(tokens.refresh_token_expires_at);
        let keepalive_due_at = ts_opt(tokens.keepalive_due_at);
        let has_refresh_token = tokens.refresh_token.is_some();
        let authorized_at = ts(authorized_at);
        let mut tx = begin_immediate(db).await?;
        let before_status = sqlx::query_scalar!(
            r#"SELECT status AS "status!" FROM connections WHERE id = ?1"#,
            connection_id
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before_status) = before_status else {
            return Ok(false);
        };
        let updated = sqlx::query!(
            r#"UPDATE connections
                  SET generation = ?2, scopes = ?3, token_type = ?4, access_token = ?5,
                      access_token_issued_at = ?6, access_token_expires_at = ?7,
                      refreshed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                      refresh_token_expires_at = CASE WHEN ?8 THEN ?10 ELSE refresh_token_expires_at END,
                      keepalive_due_at = CASE WHEN ?8 THEN ?11 ELSE keepalive_due_at END,
                      status = CASE WHEN status = 'active' OR status_reason = 'rotation_lost'
                                    THEN 'active' ELSE status END,
                      status_reason = CASE WHEN status = 'active' OR status_reason = 'rotation_lost'
                                           THEN NULL ELSE status_reason END,
                      status_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                      refresh_lease_holder = NULL, refresh_lease_until = NULL,
                      updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                WHERE id = ?1 AND generation < ?2 AND authorized_at = ?9 AND status <> 'disconnected'
            RETURNING tenant_id AS "tenant_id!", provider AS "provider!", status AS "status!""#,
            connection_id,
            tokens.generation,
            scopes,
            tokens.token_type,
            tokens.access_token,
            issued_at,
            expires_at,
            has_refresh_token,
            authorized_at,
            refresh_expires_at,
            keepalive_due_at,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(updated) = updated else {
            tx.commit().await?;
            return Ok(false);
        };
        rotate_refresh_token(&mut tx, connection_id, tokens, "write_back").await?;
        if before_status != "active" && updated.status == "active" {
            event(
                &mut tx,
                connection_id,
                &updated.tenant_id,
                &updated.provider,
                "recovered",
                "active",
                Some("rotation_written_back"),
                tokens.generation,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn mark_reauthorization_required(
    db: &SqlitePools,
    connection_id: i64,
    generation: i64,
    reason: &str,
) -> Result<bool, StoreError> {
    async {
        let mut tx = begin_immediate(db).await?;
        let marked = sqlx::query!(
            r#"UPDATE connections
                  SET status = 'reauthorization_required', status_reason = ?3,
                      status_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                      keepalive_due_at = NULL, keepalive_claimed_until = NULL,
                      last_error = ?3, last_error_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                      refresh_lease_holder = NULL, refresh_lease_until = NULL,
                      updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                WHERE id = ?1 AND generation = ?2 AND status = 'active'
            RETURNING tenant_id AS "tenant_id!", provider AS "provider!""#,
            connection_id,
            generation,
            reason,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(marked) = marked else {
            tx.commit().await?;
            return Ok(false);
        };
        event(
            &mut tx,
            connection_id,
            &marked.tenant_id,
            &marked.provider,
            "reauthorization_required",
            "reauthorization_required",
            Some(reason),
            generation,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

/// A summary as SQLite returns it (scopes still JSON).
struct Summary {
    tenant_id: String,
    provider: String,
    status: String,
    status_reason: Option<String>,
    status_changed_at: OffsetDateTime,
    scopes: String,
    access_token_expires_at: OffsetDateTime,
    has_refresh_token: bool,
    authorized_at: OffsetDateTime,
    refreshed_at: Option<OffsetDateTime>,
    refresh_token_expires_at: Option<OffsetDateTime>,
    keepalive_due_at: Option<OffsetDateTime>,
    last_error: Option<String>,
    last_error_at: Option<OffsetDateTime>,
    disconnected_at: Option<OffsetDateTime>,
}

impl Summary {
    fn into_summary(self) -> Result<ConnectionSummary, StoreError> {
        Ok(ConnectionSummary {
            tenant_id: self.tenant_id,
            provider: self.provider,
            status: self.status,
            status_reason: self.status_reason,
            status_changed_at: self.status_changed_at,
            scopes: scopes_from(&self.scopes)?,
            access_token_expires_at: self.access_token_expires_at,
            has_refresh_token: self.has_refresh_token,
            authorized_at: self.authorized_at,
            refreshed_at: self.refreshed_at,
            refresh_token_expires_at: self.refresh_token_expires_at,
            keepalive_due_at: self.keepalive_due_at,
            last_error: self.last_error,
            last_error_at: self.last_error_at,
            disconnected_at: self.disconnected_at,
        })
    }
}

pub(in crate::store) async fn describe(
    db: &SqlitePools,
    key: &ConnectionKey,
) -> Result<Option<ConnectionSummary>, StoreError> {
    async {
        let (tenant, provider) = (key.tenant().as_str(), key.provider().as_str());
        let row = sqlx::query_as!(
            Summary,
            r#"SELECT tenant_id AS "tenant_id!", provider AS "provider!", status AS "status!", status_reason,
                      status_changed_at AS "status_changed_at!: OffsetDateTime", scopes AS "scopes!",
                      access_token_expires_at AS "access_token_expires_at!: OffsetDateTime",
                      authorized_at AS "authorized_at!: OffsetDateTime",
                      refreshed_at AS "refreshed_at: OffsetDateTime",
                      refresh_token_expires_at AS "refresh_token_expires_at: OffsetDateTime",
                      keepalive_due_at AS "keepalive_due_at: OffsetDateTime", last_error,
                      last_error_at AS "last_error_at: OffsetDateTime",
                      disconnected_at AS "disconnected_at: OffsetDateTime",
                      EXISTS (SELECT 1 FROM refresh_tokens r
                               WHERE r.connection_id = c.id AND r.superseded_at IS NULL AND r.token IS NOT NULL)
                          AS "has_refresh_token!: bool"
                 FROM connections c WHERE tenant_id = ?1 AND provider = ?2"#,
            tenant,
            provider,
        )
        .fetch_optional(db.readers())
        .await?;
        row.map(Summary::into_summary).transpose()
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

pub(in crate::store) async fn list(
    db: &SqlitePools,
    filter: &ConnectionFilter,
    limit: i64,
) -> Result<Vec<ConnectionSummary>, StoreError> {
    async {
        let (after_provider, after_tenant) = filter.after.clone().unzip();
        // The prefix is compared with substr, so no character in it is a pattern.
        let rows = sqlx::query_as!(
            Summary,
            r#"SELECT tenant_id AS "tenant_id!", provider AS "provider!", status AS "status!", status_reason,
                      status_changed_at AS "status_changed_at!: OffsetDateTime", scopes AS "scopes!",
                      access_token_expires_at AS "access_token_expires_at!: OffsetDateTime",
                      authorized_at AS "authorized_at!: OffsetDateTime",
                      refreshed_at AS "refreshed_at: OffsetDateTime",
                      refresh_token_expires_at AS "refresh_token_expires_at: OffsetDateTime",
                      keepalive_due_at AS "keepalive_due_at: OffsetDateTime", last_error,
                      last_error_at AS "last_error_at: OffsetDateTime",
                      disconnected_at AS "disconnected_at: OffsetDateTime",
                      EXISTS (SELECT 1 FROM refresh_tokens r
                               WHERE r.connection_id = c.id AND r.superseded_at IS NULL AND r.token IS NOT NULL)
                          AS "has_refresh_token!: bool"
                 FROM connections c
                WHERE (?1 IS NULL OR provider = ?1)
                  AND (?2 IS NULL OR status = ?2)
                  AND (?3 IS NULL OR substr(tenant_id, 1, length(?3)) = ?3)
                  AND (?4 IS NULL OR (provider, tenant_id) > (?4, ?5))
                ORDER BY provider, tenant_id
                LIMIT ?6"#,
            filter.provider,
            filter.status,
            filter.tenant_prefix,
            after_provider,
            after_tenant,
            limit,
        )
        .fetch_all(db.readers())
        .await?;
        rows.into_iter().map(Summary::into_summary).collect()
    }
    .instrument(db_span!("SELECT", "connections"))
    .await
}

/// Sums the changes the migration's triggers append (20261211000001), then folds them if any
/// status has more than one row.
pub(in crate::store) async fn count_by_status(db: &SqlitePools) -> Result<Vec<(String, i64)>, StoreError> {
    async {
        let rows = sqlx::query!(
            r#"SELECT status, sum(change) AS "count!: i64", count(*) AS "rows!: i64" FROM connection_status_changes
                GROUP BY status ORDER BY status"#
        )
        .fetch_all(db.readers())
        .await?;
        if rows.iter().any(|r| r.rows > 1) {
            if let Err(e) = fold_status_changes(db).await {
                // The sums above stand; a writer busy past the timeout leaves the rows to the next count.
                tracing::warn!(error = %e, "could not fold the connection status changes; they pile up until a fold succeeds");
            }
        }
        Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
    }
    .instrument(db_span!("SELECT", "connection_status_changes"))
    .await
}

/// How many status changes one fold's transaction takes: the process's one writer is held for
/// a batch at a time, not for a bulk import's million rows at once.
const FOLD_BATCH: i64 = 10_000;

/// Replaces the status changes by one row per status holding their sum, oldest first, a batch
/// to a transaction, so that the table stays a few rows long however many connections change
/// between two counts.
async fn fold_status_changes(db: &SqlitePools) -> Result<(), StoreError> {
    loop {
        let mut tx = begin_immediate(db).await?;
        let batch = sqlx::query!(
            r#"SELECT max(id) AS "last: i64", count(*) AS "rows!: i64", count(DISTINCT status) AS "statuses!: i64"
                 FROM (SELECT id, status FROM connection_status_changes ORDER BY id LIMIT ?1)"#,
            FOLD_BATCH,
        )
        .fetch_one(&mut *tx)
        .await?;
        let Some(last) = batch.last.filter(|_| batch.rows > batch.statuses) else {
            // Nothing that folding would shorten.
            return Ok(());
        };
        // The sums' rows take ids above every existing one, so the DELETE leaves them.
        sqlx::query!(
            "INSERT INTO connection_status_changes (status, change)
             SELECT status, sum(change) FROM connection_status_changes WHERE id <= ?1 GROUP BY status",
            last,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM connection_status_changes WHERE id <= ?1", last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if batch.rows < FOLD_BATCH {
            return Ok(());
        }
    }
}

pub(in crate::store) async fn note_refresh_outcome_unknown(
    db: &SqlitePools,
    connection_id: i64,
    generation: i64,
    holder: Uuid,
) -> Result<bool, StoreError> {
    async {
        let done = sqlx::query!(
            "UPDATE connections SET status_reason = 'refresh_outcome_unknown',
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
              WHERE id = ?1 AND generation = ?2 AND refresh_lease_holder = ?3 AND status = 'active'",
            connection_id,
            generation,
            holder,
        )
        .execute(db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}

pub(in crate::store) async fn extend_lease(
    db: &SqlitePools,
    connection_id: i64,
    generation: i64,
    holder: Uuid,
    ttl: Duration,
) -> Result<bool, StoreError> {
    async {
        let until = later(ttl);
        let done = sqlx::query!(
            "UPDATE connections SET refresh_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?4)
              WHERE id = ?1 AND generation = ?2 AND refresh_lease_holder = ?3",
            connection_id,
            generation,
            holder,
            until,
        )
        .execute(db.writer())
        .await?;
        Ok(done.rows_affected() == 1)
    }
    .instrument(db_span!("UPDATE", "connections"))
    .await
}
