//! Connections and their refresh-token history, with the refresh exclusion (a lease) and the
//! fenced writes that keep a lapsed holder from overwriting newer tokens.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{Backend, StoreError};
use crate::connection_key::ConnectionKey;

pub struct Connections<'a> {
    pub(super) backend: &'a Backend,
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

/// What a cache miss needs of a connection: its status and its access token (sealed), and
/// nothing else. The miss path reads this instead of a [`ConnectionRow`], so that the columns
/// it does not use (the row's id, its key, which the caller already has, and three
/// timestamps) are not decoded and allocated on every miss. The saving was too small to see in
/// the cold-cache runs (docs/performance.md, the design's own work per miss); the refresh's
/// re-reads, which need the whole row, keep [`Connections::find`].
#[derive(Debug, Clone)]
pub struct StoredAccessToken {
    pub status: String,
    pub status_reason: Option<String>,
    pub scopes: Vec<String>,
    pub generation: i64,
    pub token_type: String,
    pub access_token: Vec<u8>,
    pub access_token_issued_at: OffsetDateTime,
    pub access_token_expires_at: OffsetDateTime,
}

impl From<ConnectionRow> for StoredAccessToken {
    fn from(row: ConnectionRow) -> Self {
        Self {
            status: row.status,
            status_reason: row.status_reason,
            scopes: row.scopes,
            generation: row.generation,
            token_type: row.token_type,
            access_token: row.access_token,
            access_token_issued_at: row.access_token_issued_at,
            access_token_expires_at: row.access_token_expires_at,
        }
    }
}

/// Where the tokens of a new connection come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A customer completed an authorization.
    Authorization,
    /// ImportConnection: a refresh token from another system.
    Import,
}

impl Origin {
    pub(super) fn source(self) -> &'static str {
        match self {
            Origin::Authorization => "authorization_code",
            Origin::Import => "import",
        }
    }

    pub(super) fn event(self) -> &'static str {
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
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// The whole row, for the refresh and the operator's paths.
    pub async fn find(&self, key: &ConnectionKey) -> Result<Option<ConnectionRow>, StoreError> {
        dispatch!(self.backend, connections::find(key))
    }

    /// The cache miss's one query: the connection's status and access token only.
    pub async fn find_access_token(&self, key: &ConnectionKey) -> Result<Option<StoredAccessToken>, StoreError> {
        dispatch!(self.backend, connections::find_access_token(key))
    }

    pub async fn current_refresh_token(&self, connection_id: i64) -> Result<Option<CurrentRefreshToken>, StoreError> {
        dispatch!(self.backend, connections::current_refresh_token(connection_id))
    }

    /// The generation a new authorization of `key` replaces; `None` when there is no
    /// connection yet. Read right before [`Self::store_authorization`], which is fenced on it.
    pub async fn generation(&self, key: &ConnectionKey) -> Result<Option<i64>, StoreError> {
        dispatch!(self.backend, connections::generation(key))
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
        dispatch!(
            self.backend,
            connections::store_authorization(key, replaces, tokens, origin)
        )
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
        dispatch!(
            self.backend,
            connections::try_acquire_lease(key, generation, holder, ttl)
        )
    }

    /// Gives the lease up early (after a failed refresh), if `holder` still has it.
    pub async fn release_lease(&self, connection_id: i64, holder: Uuid) -> Result<(), StoreError> {
        dispatch!(self.backend, connections::release_lease(connection_id, holder))
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
        dispatch!(
            self.backend,
            connections::store_refresh(connection_id, from_generation, tokens, cause)
        )
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
        dispatch!(
            self.backend,
            connections::write_back(connection_id, authorized_at, tokens)
        )
    }

    /// Marks the connection dead after a genuine rejection, fenced on the generation whose
    /// refresh token was rejected. Returns false if the generation moved (a lost race).
    pub async fn mark_reauthorization_required(
        &self,
        connection_id: i64,
        generation: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(
            self.backend,
            connections::mark_reauthorization_required(connection_id, generation, reason)
        )
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
        dispatch!(self.backend, connections::describe(key))
    }

    /// A page of connections in (provider, tenant) order, after `filter.after`. The prefix is
    /// matched with `starts_with`, so no character in it is a pattern.
    pub async fn list(&self, filter: &ConnectionFilter, limit: i64) -> Result<Vec<ConnectionSummary>, StoreError> {
        dispatch!(self.backend, connections::list(filter, limit))
    }

    /// How many connections there are in each status (for the `tokenvault.connections` gauge): a
    /// sum over the few rows the store's triggers keep, not a count of the table (migration
    /// 20261211000001). A status whose last connection left reads 0.
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self.backend, connections::count_by_status())
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
        dispatch!(
            self.backend,
            connections::note_refresh_outcome_unknown(connection_id, generation, holder)
        )
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
        dispatch!(
            self.backend,
            connections::extend_lease(connection_id, generation, holder, ttl)
        )
    }
}
