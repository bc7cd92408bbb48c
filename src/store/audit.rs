//! The audit trail's table: rows appended in batches, and the retention sweep (the only
//! delete the table's trigger lets through).

use time::OffsetDateTime;
use uuid::Uuid;

use super::{Backend, StoreError};

pub struct AuditEvents<'a> {
    backend: &'a Backend,
}

/// One row of `audit_events`.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub occurred_at: OffsetDateTime,
    /// Set for an aggregated row: the end of its window.
    pub window_end: Option<OffsetDateTime>,
    pub event: &'static str,
    pub caller: String,
    pub tenant_id: Option<String>,
    pub provider: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
    pub count: i64,
    pub replica: Uuid,
}

impl<'a> AuditEvents<'a> {
    pub(super) fn new(backend: &'a Backend) -> Self {
        Self { backend }
    }

    /// Appends `rows` in one statement (one round trip, however many rows).
    pub async fn insert(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        dispatch!(self.backend, audit::insert(rows))
    }

    /// Deletes rows recorded more than `keep` ago; returns how many. The setting tells the
    /// append-only trigger that this delete is the sweep; it lasts only for this transaction.
    pub async fn delete_older_than(&self, keep: std::time::Duration) -> Result<u64, StoreError> {
        dispatch!(self.backend, audit::delete_older_than(keep))
    }
}
