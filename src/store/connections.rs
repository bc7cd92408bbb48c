//! Connections and their refresh-token history, with the refresh exclusion (a lease) and the
//! fenced writes that keep a lapsed holder from overwriting newer tokens.

use std::time::Duration;
use tracing::Instrument;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreError;
use crate::connection_key::ConnectionKey;

pub struct Connections<'a> {
    pub(super) pool: &'a PgPool,
}

/// A connection as stored; token columns are sealed.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    pub id: i64,
    pub tenant_id: String,
    pub provider: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub status_changed_at: OffsetDateTime,
    pub scopes: Vec<String>,
    pub generation: i64,
    pub token_type: String,
    pub access_token: Vec<u8>,
    pub access_token_issued_at: OffsetDateTime,
    pub access_token_expires_at: OffsetDateTime,
    pub authorized_at: OffsetDateTime,
    pub refreshed_at: Option<OffsetDateTime>,
}

impl ConnectionRow {
    pub fn is_active(&self) -> bool {
        self.status == STATUS_ACTIVE
    }
}

const STATUS_ACTIVE: &str = "active";

/// Where the tokens of a new connection come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A customer completed an authorization.
    Authorization,
    /// ImportConnection: a refresh token from another system.
    Import,
}

impl Origin {
    fn source(self) -> &'static str {
        match self {
            Origin::Authorization => "authorization_code",
            Origin::Import => "import",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Origin::Authorization => "authorized",
            Origin::Import => "imported",
        }
    }
}

/// Who asked for a refresh, as its connection event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCause {
    /// A caller needed a valid token (or reported a rejected one): no event.
    Caller,
    /// The keeper, before the refresh token expires unused: `refreshed_by_keepalive`.
    Keepalive,
}

/// The refresh token to use, with the generation its associated data is bound to.
pub struct CurrentRefreshToken {
    pub generation: i64,
    pub token: Vec<u8>,
}

/// A lease taken: the connection as it is under the lease, and the refresh token to present
/// (`None` if the connection holds none).
pub struct Leased {
    pub connection: ConnectionRow,
    pub refresh_token: Option<CurrentRefreshToken>,
    /// Which database granted the lease, read in the same statement.
    pub database: DatabaseSeen,
}

/// The database's identity (system identifier/timeline) as the lease statement read it, beside
/// the identity last recorded in `database_identity` and when that changed.
#[derive(Debug, Clone)]
pub struct DatabaseSeen {
    pub identity: String,
    pub recorded: Option<String>,
    pub changed_at: Option<OffsetDateTime>,
    pub now: OffsetDateTime,
}

/// Tokens to write at generation `generation`, sealed for it.
#[derive(Clone)]
pub struct NewTokens {
    pub generation: i64,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub access_token: Vec<u8>,
    pub access_token_issued_at: OffsetDateTime,
    pub access_token_expires_at: OffsetDateTime,
    /// `None` when the provider sent no new refresh token: the current one stays current.
    pub refresh_token: Option<Vec<u8>>,
    /// When `refresh_token` is expected to expire (`None`: unknown, or no new refresh token).
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    /// When the keeper should refresh, if nobody uses the connection before.
    pub keepalive_due_at: Option<OffsetDateTime>,
}

impl<'a> Connections<'a> {
    pub(super) fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// The hot path's one query.
    pub async fn find(&self, key: &ConnectionKey) -> Result<Option<ConnectionRow>, StoreError> {
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
            .fetch_optional(self.pool)
            .await?;
            Ok(row)
        }
        .instrument(db_span!("SELECT", "connections"))
        .await
    }

    pub async fn current_refresh_token(&self, connection_id: i64) -> Result<Option<CurrentRefreshToken>, StoreError> {
        async {
            let row = sqlx::query_as!(
                CurrentRefreshToken,
                r#"SELECT generation, token AS "token!" FROM refresh_tokens
                    WHERE connection_id = $1 AND superseded_at IS NULL AND token IS NOT NULL
                    ORDER BY generation DESC LIMIT 1"#,
                connection_id,
            )
            .fetch_optional(self.pool)
            .await?;
            Ok(row)
        }
        .instrument(db_span!("SELECT", "refresh_tokens"))
        .await
    }

    /// The generation a new authorization of `key` replaces; `None` when there is no
    /// connection yet. Read right before [`Self::store_authorization`], which is fenced on it.
    pub async fn generation(&self, key: &ConnectionKey) -> Result<Option<i64>, StoreError> {
        async {
            let generation = sqlx::query_scalar!(
                "SELECT generation FROM connections WHERE tenant_id = $1 AND provider = $2",
                key.tenant().as_str(),
                key.provider().as_str(),
            )
            .fetch_optional(self.pool)
            .await?;
            Ok(generation)
        }
        .instrument(db_span!("SELECT", "connections"))
        .await
    }

    /// Stores the tokens of a completed authorization (or an import: `origin`), fenced on what
    /// it replaces (an import also on no refresh lease being held: a refresh in flight may be
    /// presenting the very token being imported again, and clearing its lease would let it
    /// present that token once more after the import): the
    /// connection at generation `replaces` (its old refresh tokens are kept, marked
    /// superseded), or, for `None`, no connection at all. `Fenced` if the connection changed
    /// since it was read (a refresh, another authorization): read the generation again and
    /// seal again, since the associated data binds the generation. One transaction, with its
    /// connection event. Returns the connection's id.
    pub async fn store_authorization(
        &self,
        key: &ConnectionKey,
        replaces: Option<i64>,
        tokens: &NewTokens,
        origin: Origin,
    ) -> Result<i64, StoreError> {
        async {
            debug_assert_eq!(tokens.generation, replaces.map_or(1, |g| g + 1));
            let (tenant_id, provider) = (key.tenant().as_str(), key.provider().as_str());
            let mut tx = self.pool.begin().await?;
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
            Ok(id)
        }
        .instrument(db_span!("UPSERT", "connections"))
        .await
    }

    /// Takes the refresh exclusion for `holder` if the tenant's connection is still at
    /// `generation`, still active, and nobody holds an unexpired lease; in the same round trip
    /// reads the connection and the refresh token to use, so a refresh that starts from a
    /// stale cached token needs no read before it. `None`: not taken. The lease is compared
    /// with the database's clock only, so replicas' clocks don't matter.
    pub async fn try_acquire_lease(
        &self,
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
            .fetch_optional(self.pool)
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

    /// Gives the lease up early (after a failed refresh), if `holder` still has it.
    pub async fn release_lease(&self, connection_id: i64, holder: Uuid) -> Result<(), StoreError> {
        async {
            sqlx::query!(
                r#"UPDATE connections SET refresh_lease_holder = NULL, refresh_lease_until = NULL
                    WHERE id = $1 AND refresh_lease_holder = $2"#,
                connection_id,
                holder,
            )
            .execute(self.pool)
            .await?;
            Ok(())
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }

    /// Writes refreshed tokens, fenced on the generation they were refreshed from: if anything
    /// changed the tokens since, nothing is written and `Fenced` says so. The new refresh token
    /// (if any) supersedes the old one and the lease is released, all in one statement: one
    /// round trip and one commit on the refresh path.
    pub async fn store_refresh(
        &self,
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
            .fetch_one(self.pool)
            .await?;
            if updated != 1 {
                return Err(StoreError::Fenced);
            }
            Ok(())
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }

    /// Writes back a rotation this replica stored and the database lost (it went back in time:
    /// a failover to a standby that had not received it, a restore). Fenced on the database
    /// being behind: only if the connection's generation is still older than the rotation's,
    /// so a newer write always wins. True if written.
    /// Fenced on the grant too (`authorized_at`): a rotation of an older grant never lands on
    /// a connection authorized again since. A connection marked dead for another reason than
    /// the lost rotation stays so; a disconnected one is never written (its tokens were
    /// revoked and wiped on purpose, and its generation may be behind the rotation). Its own
    /// statement rather than `store_refresh` with a looser fence: that one is on every refresh
    /// and stays the simple, exact fence.
    pub async fn write_back(
        &self,
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
            .fetch_one(self.pool)
            .await?;
            Ok(updated == 1)
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }

    /// Marks the connection dead after a genuine rejection, fenced on the generation whose
    /// refresh token was rejected. Returns false if the generation moved (a lost race).
    pub async fn mark_reauthorization_required(
        &self,
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
            .fetch_one(self.pool)
            .await?;
            Ok(marked == 1)
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }
}

/// A connection as GetConnection and ListConnections describe it: never a token.
#[derive(Debug, Clone)]
pub struct ConnectionSummary {
    pub tenant_id: String,
    pub provider: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub status_changed_at: OffsetDateTime,
    pub scopes: Vec<String>,
    pub access_token_expires_at: OffsetDateTime,
    pub has_refresh_token: bool,
    pub authorized_at: OffsetDateTime,
    pub refreshed_at: Option<OffsetDateTime>,
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    pub keepalive_due_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<OffsetDateTime>,
    pub disconnected_at: Option<OffsetDateTime>,
}

/// Which connections ListConnections wants, and where its page starts.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    pub provider: Option<String>,
    pub status: Option<String>,
    pub tenant_prefix: Option<String>,
    /// The (provider, tenant) the previous page ended with.
    pub after: Option<(String, String)>,
}

impl Connections<'_> {
    /// One connection, described.
    pub async fn describe(&self, key: &ConnectionKey) -> Result<Option<ConnectionSummary>, StoreError> {
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
            .fetch_optional(self.pool)
            .await?;
            Ok(row)
        }
        .instrument(db_span!("SELECT", "connections"))
        .await
    }

    /// A page of connections in (provider, tenant) order, after `filter.after`. The prefix is
    /// matched with `starts_with`, so no character in it is a pattern.
    pub async fn list(&self, filter: &ConnectionFilter, limit: i64) -> Result<Vec<ConnectionSummary>, StoreError> {
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
            .fetch_all(self.pool)
            .await?;
            Ok(rows)
        }
        .instrument(db_span!("SELECT", "connections"))
        .await
    }

    /// How many connections there are in each status (for the `tokenvault.connections` gauge).
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query!(r#"SELECT status, count(*) AS "count!" FROM connections GROUP BY status"#)
            .fetch_all(self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
    }

    /// Records on a connection that `holder`'s refresh of `generation` got an answer that may
    /// mean its refresh token was consumed. The lease is left to lapse by itself, so that no
    /// replica presents the token again before then; the next successful refresh clears it.
    pub async fn note_refresh_outcome_unknown(
        &self,
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
            .execute(self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }

    /// Extends `holder`'s lease while it still holds a refreshed token it has not managed to
    /// store, so that no other replica starts a refresh with the old (now used) refresh token.
    pub async fn extend_lease(
        &self,
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
            .execute(self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }
        .instrument(db_span!("UPDATE", "connections"))
        .await
    }
}
