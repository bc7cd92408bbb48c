//! Retention of rotated refresh tokens: the ciphertexts of superseded generations are purged
//! once outside both bounds; their rows (the history) stay.

use std::time::Duration;

use time::OffsetDateTime;

use super::{Backend, StoreError};

pub struct Retention<'a> {
    backend: &'a Backend,
}

/// Where a sweep has got to in the superseded tokens still holding a ciphertext, in the order
/// they were superseded: `None` before the first statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepPosition(pub(super) Option<(OffsetDateTime, i64, i64)>);

/// What one purge statement did.
#[derive(Debug, Clone, Copy)]
pub struct Purged {
    /// Ciphertexts purged.
    pub purged: u64,
    /// Superseded tokens looked at (purged or kept): fewer than the limit means the sweep is
    /// done.
    pub examined: u64,
    /// Where the next statement of the same sweep starts.
    pub next: SweepPosition,
}

impl<'a> Retention<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// Looks at up to `limit` superseded refresh tokens still holding a ciphertext, superseded
    /// more than `keep_for` ago, after `from` in the order they were superseded; purges
    /// (token = NULL, purged_at = now()) those not among the newest `keep_generations`
    /// superseded generations of their connection. Outside BOTH bounds, then; the current
    /// token (superseded_at NULL) is never touched.
    ///
    /// Bounded by what it looks at, not by what it purges: tokens kept by the generation bound
    /// stay candidates by age, and a statement that had to walk past all of them to fill its
    /// purge quota would be one long statement. The candidates come in order from the partial
    /// index `refresh_tokens_superseded`. A concurrent sweep on another replica waits for the
    /// rows this one updates and then skips them (their token is NULL by then).
    pub async fn purge_superseded(
        &self,
        keep_generations: u32,
        keep_for: Duration,
        limit: i64,
        from: SweepPosition,
    ) -> Result<Purged, StoreError> {
        dispatch!(
            self.backend,
            retention::purge_superseded(keep_generations, keep_for, limit, from)
        )
    }
}
