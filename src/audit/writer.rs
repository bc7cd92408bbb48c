//! The audit writer: one task per process that turns queued events and closed windows into
//! rows, written in INSERTs of at most `ROWS_PER_INSERT` rows. While the database is away rows
//! wait in a bounded buffer; past it the oldest are dropped and counted, because the calls
//! being audited must not wait.

use std::{
    mem,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{lock, AuditEvent, Shared};
use crate::store::{AuditRow, Store};

/// Most queued events taken into one INSERT.
const BATCH: usize = 512;
/// Most rows in one INSERT. A statement's parameters are encoded into its pooled connection's
/// write buffer, which keeps its size afterwards: a closed window of 50,000 keys written as one
/// statement left a ~14 MiB buffer on every connection that ever wrote one, and the process
/// grew with each (found with heaptrack; docs/performance.md).
const ROWS_PER_INSERT: usize = 1_000;

pub(super) struct Options {
    pub flush_interval: Duration,
    pub retry_capacity: usize,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    store: Store,
    mut events: mpsc::Receiver<(OffsetDateTime, AuditEvent)>,
    options: Options,
    stop: CancellationToken,
) {
    let replica = Uuid::new_v4();
    let mut pending: Vec<AuditRow> = Vec::new();
    let mut window_start = OffsetDateTime::now_utc();
    let mut tick = tokio::time::interval(options.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut received = Vec::with_capacity(BATCH);
    // After a failed write, queued events wait for the next tick instead of each paying the
    // pool's acquire timeout again.
    let mut healthy = true;
    loop {
        tokio::select! {
            n = events.recv_many(&mut received, BATCH) => {
                if n == 0 {
                    break;
                }
                pending.extend(received.drain(..).map(|(at, e)| row(&e, at, None, 1, replica)));
                if healthy {
                    healthy = write(&store, &mut pending, &shared, options.retry_capacity).await;
                }
            }
            _ = tick.tick() => {
                let window_end = OffsetDateTime::now_utc();
                close_window(&shared, &mut pending, window_start, window_end, replica);
                window_start = window_end;
                lock(&shared.seen).clear();
                healthy = write(&store, &mut pending, &shared, options.retry_capacity).await;
                report_dropped(&shared);
            }
            _ = stop.cancelled() => break,
        }
    }
    // Shutting down: what is queued and the open window, in one last write.
    while let Ok((at, e)) = events.try_recv() {
        pending.push(row(&e, at, None, 1, replica));
    }
    close_window(&shared, &mut pending, window_start, OffsetDateTime::now_utc(), replica);
    write(&store, &mut pending, &shared, options.retry_capacity).await;
    report_dropped(&shared);
}

/// Takes every counted key out of the current window.
pub(super) fn drain(shared: &Shared) -> Vec<(AuditEvent, u64)> {
    let mut out = Vec::new();
    for shard in &shared.windows {
        let taken = mem::take(&mut *lock(shard));
        out.extend(taken);
    }
    shared.keys.store(0, Ordering::Relaxed);
    out
}

/// Turns the window's counts into rows, in the order of the per-tenant index
/// (`audit_events_tenant`: the tenant, then the time, which all of a window's rows share), so
/// that each INSERT walks that index instead of landing on pages at random. On a scratch copy
/// of the table (1.5 million rows, 50,000-row windows in INSERTs of 1,000) that took about
/// 2 us off the ~10 us Postgres spends on a row (docs/performance.md, the cold cache's CPU per
/// call); sorting a full window costs the writer a few milliseconds.
pub(super) fn close_window(
    shared: &Shared,
    pending: &mut Vec<AuditRow>,
    start: OffsetDateTime,
    end: OffsetDateTime,
    replica: Uuid,
) {
    let mut window = drain(shared);
    window.sort_unstable_by(|(a, _), (b, _)| a.tenant_id.cmp(&b.tenant_id));
    for (event, count) in window {
        event.log(count, Some((start, end)));
        pending.push(row(&event, start, Some(end), count, replica));
    }
}

fn row(e: &AuditEvent, at: OffsetDateTime, window_end: Option<OffsetDateTime>, count: u64, replica: Uuid) -> AuditRow {
    AuditRow {
        occurred_at: at,
        window_end,
        event: e.kind.as_str(),
        caller: e.caller.to_string(),
        tenant_id: e.tenant_id.as_deref().map(str::to_owned),
        provider: e.provider.as_deref().map(str::to_owned),
        outcome: e.outcome.to_owned(),
        detail: e.detail.as_deref().map(str::to_owned),
        count: i64::try_from(count).unwrap_or(i64::MAX),
        replica,
    }
}

/// Writes `pending`, oldest first, `ROWS_PER_INSERT` rows per statement; on failure keeps the
/// newest `capacity` of the rows not yet written for the next try. Returns whether every row
/// was written.
async fn write(store: &Store, pending: &mut Vec<AuditRow>, shared: &Shared, capacity: usize) -> bool {
    while !pending.is_empty() {
        let n = pending.len().min(ROWS_PER_INSERT);
        if let Err(e) = store.audit().insert(&pending[..n]).await {
            tracing::warn!(error = %e, rows = pending.len(), "could not write audit rows; keeping them for the next try");
            if pending.len() > capacity {
                let excess = pending.len() - capacity;
                pending.drain(..excess);
                shared.dropped.fetch_add(excess as u64, Ordering::Relaxed);
            }
            return false;
        }
        pending.drain(..n);
    }
    true
}

fn report_dropped(shared: &Shared) {
    let dropped = shared.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        tracing::error!(
            target: super::LOG_TARGET,
            dropped,
            "AUDIT EVENTS DROPPED: the audit queue or retry buffer was full (database unreachable or too slow)"
        );
    }
}
