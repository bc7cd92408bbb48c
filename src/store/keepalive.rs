//! The keeper's work queue: connections whose refresh token nears its end, claimed by one
//! replica at a time through Postgres (no leader), and what a failed keep-alive leaves behind.

use std::time::Duration;

use time::OffsetDateTime;

use super::{Backend, StoreError};

pub struct Keepalive<'a> {
    backend: &'a Backend,
}

/// A connection a keeper claimed: refresh it from `generation`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub tenant_id: String,
    pub provider: String,
    pub generation: i64,
}

/// One claim statement's connections, and until when they are this replica's.
#[derive(Debug, Clone)]
pub struct Claim {
    pub connections: Vec<Claimed>,
    /// The same for every row of one statement (`now()` is the transaction's start).
    pub claimed_until: Option<OffsetDateTime>,
}

impl<'a> Keepalive<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// Claims up to `limit` due connections, most overdue first, for `ttl`: other replicas'
    /// keepers skip them meanwhile (rows another keeper is claiming right now are skipped,
    /// not waited for), and a keep-alive that fails keeps its claim, so the connection is tried
    /// again only once the claim lapses. A connection whose refresh lease is held is being
    /// refreshed already and is left alone. The inner SELECT is a range scan of the partial
    /// index `connections_keepalive_due`, however many connections there are.
    ///
    /// Only connections of `providers` (those configured) are claimed: a connection whose
    /// provider left the configuration can't be refreshed, and claiming it would spend the
    /// keeper's pace on it again and again, ahead of connections that can be kept alive.
    pub async fn claim(&self, limit: i64, ttl: Duration, providers: &[String]) -> Result<Claim, StoreError> {
        dispatch!(self.backend, keepalive::claim(limit, ttl, providers))
    }

    /// Gives back claims this replica took and will not start (it is stopping), so that
    /// another replica need not wait for them to lapse. Only claims still exactly as taken.
    pub async fn release(&self, ids: &[i64], claimed_until: OffsetDateTime) -> Result<u64, StoreError> {
        dispatch!(self.backend, keepalive::release(ids, claimed_until))
    }

    /// Records a failed keep-alive (a stable reason, never a secret) and claims the connection
    /// for `retry_after` from now: the backoff before a keeper tries again. Its due moment
    /// moves to then too, so that claims, which take the most overdue first, reach connections
    /// that have not failed before coming back to it: a provider that stays down can't starve
    /// the keep-alive of the others. Fenced on the
    /// generation the keep-alive started from, so a newer refresh's clean state stays.
    pub async fn note_failure(
        &self,
        connection_id: i64,
        generation: i64,
        reason: &str,
        retry_after: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(
            self.backend,
            keepalive::note_failure(connection_id, generation, reason, retry_after)
        )
    }
}
