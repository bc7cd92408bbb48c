//! Table `connection_events`, read in commit-safe order: every status change of a connection,
//! written by the transaction that made it (`connections.rs`), read here by watchers and
//! pruned by the retention sweep. Each store keeps the order its own way (see
//! `postgres/events.rs` and `sqlite/events.rs`): once a reader has passed a position, no row
//! can ever appear behind it.

use time::OffsetDateTime;

use super::{Backend, StoreError};

/// Wake-ups for event watchers. Postgres: notifications of new events, on one connection of
/// its own (outside the vault's pool, so that a listener held for the replica's whole life never
/// takes a connection from the calls). SQLite has no LISTEN/NOTIFY: a tick, and watchers poll.
pub struct EventNotifications {
    inner: Notifications,
}

enum Notifications {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::postgres::PgListener),
    #[cfg(feature = "sqlite")]
    Poll(tokio::time::Interval),
}

/// How often SQLite's watchers read again: events are rare, a read is a local index lookup.
#[cfg(feature = "sqlite")]
const SQLITE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

impl EventNotifications {
    pub(super) async fn listen(backend: &Backend) -> Result<Self, StoreError> {
        let inner = match backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => Notifications::Postgres(super::postgres::events::listen(pool).await?),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => {
                let mut tick = tokio::time::interval(SQLITE_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Notifications::Poll(tick)
            }
        };
        Ok(Self { inner })
    }

    /// The next notification (true), or false when the connection was lost: the next call
    /// reconnects and listens again, and notifications sent meanwhile are lost.
    pub async fn next(&mut self) -> Result<bool, StoreError> {
        match &mut self.inner {
            #[cfg(feature = "postgres")]
            Notifications::Postgres(listener) => Ok(listener.try_recv().await?.is_some()),
            #[cfg(feature = "sqlite")]
            Notifications::Poll(tick) => {
                tick.tick().await;
                Ok(true)
            }
        }
    }
}

/// A place in the events' order: after (txid, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventPosition {
    pub txid: u64,
    pub id: i64,
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub position: EventPosition,
    pub occurred_at: OffsetDateTime,
    pub tenant_id: String,
    pub provider: String,
    /// `authorized`, `refreshed_by_keepalive`, … (the table's check constraint).
    pub kind: String,
    /// The connection's status after the change.
    pub status: String,
    pub reason: Option<String>,
}

/// One read after a position.
#[derive(Debug)]
pub enum EventBatch {
    /// The next finished events, in order (possibly none).
    Events {
        rows: Vec<EventRow>,
        /// Events after the position are committed but held back behind a transaction still
        /// running (anywhere on the Postgres cluster): read again soon, as no notification
        /// will say when it ends.
        held: bool,
    },
    /// The sweep deleted events after the position: the reader can't continue from it.
    Expired,
    /// The position names a transaction this database never started (a forged cursor, or one
    /// from another database).
    Unknown,
}

pub struct ConnectionEvents<'a> {
    backend: &'a Backend,
}

impl<'a> ConnectionEvents<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// "Now": every event of a transaction finished so far lies before it, every later one
    /// after it. Never before the pruned mark: a transaction older than the newest deleted event
    /// still running (possible only with a retention shorter than that transaction's life)
    /// must not make a fresh start look expired.
    pub async fn head(&self) -> Result<EventPosition, StoreError> {
        dispatch!(self.backend, events::head())
    }

    /// Up to `limit` finished events after `after`, in order; or why the position can't be read
    /// from. Whether the sweep passed the position is read in the same statement (one snapshot)
    /// as the events, so a sweep committing in between can't make events vanish unnoticed.
    /// Unfiltered: a watcher filters what it reads, so that its position moves past events it
    /// does not want instead of scanning them again on every read.
    pub async fn after(&self, after: EventPosition, limit: i64) -> Result<EventBatch, StoreError> {
        dispatch!(self.backend, events::after(after, limit))
    }

    /// Deletes up to `batch` events that occurred more than `keep` ago and moves the pruned
    /// mark past them, in one statement; returns how many were deleted. Replicas sweeping at
    /// once skip each other's rows.
    pub async fn delete_older_than(&self, keep: std::time::Duration, batch: i64) -> Result<u64, StoreError> {
        dispatch!(self.backend, events::delete_older_than(keep, batch))
    }
}
