//! The sealed columns seen from the keyring's side: how many values each framing header (so
//! each key id) protects, and re-sealing values in short, guarded batches (`keys rewrap`).
//!
//! Rewrapping never holds more than one batch of row locks, takes no table lock, and writes a
//! value only if it is still exactly what was read: a refresh that replaced the token (and
//! sealed it under the active key anyway) wins, and GetAccessToken's plain reads never wait.

use super::{Backend, StoreError};

pub struct SealedValues<'a> {
    backend: &'a Backend,
}

/// A column that holds sealed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SealedColumn {
    AccessToken,
    RefreshToken,
    PkceVerifier,
}

impl SealedColumn {
    pub const ALL: [SealedColumn; 3] = [
        SealedColumn::AccessToken,
        SealedColumn::RefreshToken,
        SealedColumn::PkceVerifier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SealedColumn::AccessToken => "connections.access_token",
            SealedColumn::RefreshToken => "refresh_tokens.token",
            SealedColumn::PkceVerifier => "pending_authorizations.pkce_verifier",
        }
    }
}

/// How many values of one column begin with one framing header (`[version][id length][id]`,
/// or fewer bytes when a value is too short to hold one).
#[derive(Debug, Clone)]
pub struct HeaderCount {
    pub column: SealedColumn,
    pub header: Vec<u8>,
    pub count: i64,
}

/// What a value's associated data binds besides tenant and provider.
#[derive(Debug, Clone)]
pub enum Binding {
    /// A connection's generation (access and refresh tokens).
    Generation(i64),
    /// A pending authorization's state hash (PKCE verifiers).
    StateHash(Vec<u8>),
}

/// A sealed value and where it lives. The value itself is ciphertext; no plaintext passes
/// through this module.
#[derive(Debug)]
pub struct SealedRow {
    pub tenant_id: String,
    pub provider: String,
    pub binding: Binding,
    pub sealed: Vec<u8>,
    pub(super) position: Position,
}

/// Where a pass over a column has got to (keyset pagination, so that every row is visited once
/// per pass even when some can't be rewrapped).
#[derive(Debug, Clone)]
pub struct Position(pub(super) Key);

#[derive(Debug, Clone)]
pub(super) enum Key {
    Connection(i64),
    RefreshToken(i64, i64),
    Pending(Vec<u8>),
}

impl Position {
    pub fn start(column: SealedColumn) -> Self {
        Self(match column {
            SealedColumn::AccessToken => Key::Connection(i64::MIN),
            SealedColumn::RefreshToken => Key::RefreshToken(i64::MIN, i64::MIN),
            // Every state hash sorts after the empty one.
            SealedColumn::PkceVerifier => Key::Pending(Vec::new()),
        })
    }

    /// The column this pass is over.
    pub fn column(&self) -> SealedColumn {
        match self.0 {
            Key::Connection(_) => SealedColumn::AccessToken,
            Key::RefreshToken(..) => SealedColumn::RefreshToken,
            Key::Pending(_) => SealedColumn::PkceVerifier,
        }
    }
}

/// What one batch did.
#[derive(Debug)]
pub struct Batch {
    /// Rows read (locked) in this batch; 0 means the pass is over.
    pub selected: usize,
    /// Rows whose value was replaced.
    pub rewritten: u64,
    /// Replacements not written because the row changed after it was read.
    pub changed_meanwhile: u64,
    /// Where the next batch starts.
    pub next: Position,
}

impl<'a> SealedValues<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// Counts every sealed value by framing header. The header is cut out in SQL, so only
    /// `(column, header, count)` groups cross the network, however many rows there are.
    pub async fn count_by_header(&self) -> Result<Vec<HeaderCount>, StoreError> {
        dispatch!(self.backend, sealed_values::count_by_header())
    }

    /// One batch of a rewrap pass over `from.column()`: in one short transaction, locks up to
    /// `limit` rows after `from` whose value does not start with `keep_header` (rows another
    /// transaction holds are skipped, not waited for), asks `reseal` for each replacement
    /// (`None` leaves a row alone), and writes them all in one guarded statement.
    pub async fn rewrap_batch(
        &self,
        from: &Position,
        keep_header: &[u8],
        limit: i64,
        reseal: impl FnMut(&SealedRow) -> Option<Vec<u8>>,
    ) -> Result<Batch, StoreError> {
        dispatch!(
            self.backend,
            sealed_values::rewrap_batch(from, keep_header, limit, reseal)
        )
    }
}
