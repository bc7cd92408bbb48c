//! The audit trail: every authorization begun or completed, every token handed out, every
//! refresh and re-authorization a caller saw, and every refusal; with when, which caller,
//! which tenant and provider, the outcome and a reason. Written to Postgres (`audit_events`,
//! append-only) and logged on target `token_vault::audit`. Never a token or secret.
//!
//! Two ways in, because the calls differ by orders of magnitude:
//!
//! * [`Audit::record`]: one row per event, for the rare ones (authorizations, refreshes,
//!   re-authorization). Logged at once, queued on a bounded channel; a full queue drops the
//!   event (counted and logged) rather than make the call wait.
//! * [`Audit::count`]: GetAccessToken (tens of thousands a second, from memory), GetConnection
//!   and refusals are counted in memory per caller, tenant, provider, outcome and detail, and
//!   each window (`audit.flush_interval`) becomes one row per distinct key with its count. The
//!   hot path pays a sharded map increment, never a database write or a wait. What is lost is
//!   the exact time of each call within its window; who got which tenant's token, how often,
//!   and when to within the window is kept. A flood of distinct keys is bounded by
//!   `audit.max_aggregate_keys`, past which calls are counted per caller without tenant.
//!
//! The background writer ([`Audit::start`]) batches rows into one INSERT, keeps them across a
//! database outage up to `audit.queue_capacity`, and writes the last window on shutdown.

mod writer;

use std::{
    borrow::Cow,
    collections::{hash_map::Entry, HashMap, HashSet},
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use time::OffsetDateTime;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{config::AuditSettings, store::Store};

/// The log target of audit events, for routing them to their own sink.
pub const LOG_TARGET: &str = "token_vault::audit";
/// Shards of the aggregation map: calls on different threads rarely meet on one lock.
const SHARDS: usize = 32;

/// The aggregation maps' hasher. At 1,000,000 tenants nearly every call is a new key, and
/// SipHash (the standard maps' default) over the key's strings, once to pick the shard and
/// once in it, was a visible share of a cache miss's CPU (docs/performance.md, the cold
/// cache). foldhash is several times cheaper on short strings and, like SipHash's `RandomState`,
/// seeded at random per process, so the callers who choose the tenant ids cannot aim
/// collisions at it.
type KeyHasher = foldhash::fast::RandomState;

/// What happened, as written in `audit_events.event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    BeginAuthorization,
    CompleteAuthorization,
    GetAccessToken,
    GetConnection,
    ListConnections,
    WatchConnectionEvents,
    DeleteConnection,
    ImportConnection,
    /// A caller received a token from a refresh (detail: the new generation).
    Refresh,
    /// A caller was told the connection needs a new authorization (detail: why).
    ReauthorizationRequired,
    /// A call refused by authentication, policy or limits (outcome: the reason).
    Denied,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::BeginAuthorization => "begin_authorization",
            EventKind::CompleteAuthorization => "complete_authorization",
            EventKind::GetAccessToken => "get_access_token",
            EventKind::GetConnection => "get_connection",
            EventKind::ListConnections => "list_connections",
            EventKind::WatchConnectionEvents => "watch_connection_events",
            EventKind::DeleteConnection => "delete_connection",
            EventKind::ImportConnection => "import_connection",
            EventKind::Refresh => "refresh",
            EventKind::ReauthorizationRequired => "reauthorization_required",
            EventKind::Denied => "denied",
        }
    }
}

/// One event, or (when counted) one aggregation key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuditEvent {
    pub kind: EventKind,
    pub caller: Arc<str>,
    /// Shared with the call's connection key, so that counting a call copies no string.
    pub tenant_id: Option<Arc<str>>,
    pub provider: Option<Arc<str>>,
    /// `ok`, or the stable error reason the caller got.
    pub outcome: &'static str,
    pub detail: Option<Cow<'static, str>>,
}

impl AuditEvent {
    pub fn new(kind: EventKind, caller: &Arc<str>, outcome: &'static str) -> Self {
        Self {
            kind,
            caller: caller.clone(),
            tenant_id: None,
            provider: None,
            outcome,
            detail: None,
        }
    }

    pub fn tenant(mut self, tenant_id: impl Into<Arc<str>>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// An empty provider (the request's "default") is left unset.
    pub fn provider(mut self, provider: impl Into<Arc<str>>) -> Self {
        self.provider = Some(provider.into()).filter(|p| !p.is_empty());
        self
    }

    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn log(&self, count: u64, window: Option<(OffsetDateTime, OffsetDateTime)>) {
        tracing::info!(
            target: LOG_TARGET,
            event = self.kind.as_str(),
            caller = %self.caller,
            tenant_id = self.tenant_id.as_deref(),
            provider = self.provider.as_deref(),
            outcome = self.outcome,
            detail = self.detail.as_deref(),
            count,
            window_start = window.map(|w| w.0.unix_timestamp()),
            window_end = window.map(|w| w.1.unix_timestamp()),
            "audit"
        );
    }
}

/// The handle every call site holds; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    shared: Arc<Shared>,
}

struct Shared {
    events: mpsc::Sender<(OffsetDateTime, AuditEvent)>,
    windows: Vec<Mutex<HashMap<AuditEvent, u64, KeyHasher>>>,
    /// Picks a key's shard; seeded apart from the maps' own hashers.
    shard_hasher: KeyHasher,
    keys: AtomicUsize,
    max_keys: usize,
    /// Events dropped because the queue or the retry buffer was full, since the last report.
    dropped: AtomicU64,
    /// Discrete events already recorded this window by `record_once`.
    seen: Mutex<HashSet<AuditEvent>>,
}

impl Audit {
    /// The handle and its writer task, which runs until `stop` and then writes what is left.
    pub fn start(store: Store, settings: &AuditSettings, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let shared = Arc::new(Shared {
            events: tx,
            windows: windows(),
            shard_hasher: KeyHasher::default(),
            keys: AtomicUsize::new(0),
            max_keys: settings.max_aggregate_keys,
            dropped: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
        });
        let task = tokio::spawn(writer::run(
            shared.clone(),
            store,
            rx,
            writer::Options {
                flush_interval: settings.flush_interval,
                retry_capacity: settings.queue_capacity,
            },
            stop,
        ));
        (Self { shared }, task)
    }

    /// A discrete event: logged now, written by the writer soon. Never waits.
    pub fn record(&self, event: AuditEvent) {
        event.log(1, None);
        if self.shared.events.try_send((OffsetDateTime::now_utc(), event)).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Like `record`, but an identical event (same caller, tenant, provider, outcome, detail)
    /// is recorded once per window: every caller waiting on one refresh sees it, and a dead
    /// connection answers every call with the same reason.
    pub fn record_once(&self, event: AuditEvent) {
        let fresh = lock(&self.shared.seen).insert(event.clone());
        if fresh {
            self.record(event);
        }
    }

    /// A call counted into the current window. One hash for the shard and one lookup in it:
    /// at 1,000,000 tenants nearly every call is a new key (docs/performance.md, the cold
    /// cache).
    pub fn count(&self, event: AuditEvent) {
        let mut shard = lock(self.shard(&event));
        let vacant = match shard.entry(event) {
            Entry::Occupied(mut counted) => {
                *counted.get_mut() += 1;
                return;
            }
            Entry::Vacant(vacant) => vacant,
        };
        if self.shared.keys.fetch_add(1, Ordering::Relaxed) < self.shared.max_keys {
            vacant.insert(1);
            return;
        }
        // Bounded memory: keep the caller, kind and outcome; drop what varies without bound.
        let mut event = vacant.into_key();
        drop(shard);
        event.tenant_id = None;
        event.provider = None;
        event.detail = Some(Cow::Borrowed(
            "aggregate key limit reached: tenant and provider not kept",
        ));
        *lock(self.shard(&event)).entry(event).or_insert(0) += 1;
    }

    fn shard(&self, event: &AuditEvent) -> &Mutex<HashMap<AuditEvent, u64, KeyHasher>> {
        let hash = self.shared.shard_hasher.hash_one(event);
        &self.shared.windows[(hash % SHARDS as u64) as usize]
    }
}

fn windows() -> Vec<Mutex<HashMap<AuditEvent, u64, KeyHasher>>> {
    (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect()
}

/// A poisoned lock only means another thread panicked mid-update of a counter map; the
/// counts are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detached(max_keys: usize) -> (Audit, mpsc::Receiver<(OffsetDateTime, AuditEvent)>) {
        let (tx, rx) = mpsc::channel(2);
        let shared = Arc::new(Shared {
            events: tx,
            windows: windows(),
            shard_hasher: KeyHasher::default(),
            keys: AtomicUsize::new(0),
            max_keys,
            dropped: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
        });
        (Audit { shared }, rx)
    }

    #[test]
    fn counts_aggregate_by_key_and_are_bounded() {
        let (audit, _rx) = detached(2);
        let caller: Arc<str> = "billing".into();
        for tenant in ["a", "a", "b", "c", "d"] {
            audit.count(AuditEvent::new(EventKind::GetAccessToken, &caller, "ok").tenant(tenant));
        }
        let rows = writer::drain(&audit.shared);
        let get = |t: Option<&str>| rows.iter().find(|(e, _)| e.tenant_id.as_deref() == t).map(|(_, n)| *n);
        assert_eq!(get(Some("a")), Some(2));
        assert_eq!(get(Some("b")), Some(1));
        assert_eq!(get(None), Some(2), "c and d went to the overflow key: {rows:?}");
        assert!(writer::drain(&audit.shared).is_empty(), "a drain empties the window");
    }

    #[test]
    fn a_closed_window_is_written_in_the_tenant_index_order() {
        let (audit, _rx) = detached(10);
        let caller: Arc<str> = "billing".into();
        for tenant in ["tenant-c", "tenant-a", "tenant-d", "tenant-b"] {
            audit.count(AuditEvent::new(EventKind::GetAccessToken, &caller, "ok").tenant(tenant));
        }
        let mut rows = Vec::new();
        let (start, end) = (OffsetDateTime::UNIX_EPOCH, OffsetDateTime::now_utc());
        writer::close_window(&audit.shared, &mut rows, start, end, uuid::Uuid::nil());
        let tenants: Vec<_> = rows.iter().map(|row| row.tenant_id.as_deref()).collect();
        assert_eq!(
            tenants,
            [Some("tenant-a"), Some("tenant-b"), Some("tenant-c"), Some("tenant-d")]
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let (audit, _rx) = detached(10);
        let caller: Arc<str> = "x".into();
        for _ in 0..5 {
            audit.record(AuditEvent::new(EventKind::BeginAuthorization, &caller, "ok"));
        }
        assert_eq!(audit.shared.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn record_once_dedupes_within_a_window() {
        let (audit, mut rx) = detached(10);
        let caller: Arc<str> = "x".into();
        let e = AuditEvent::new(EventKind::Refresh, &caller, "ok")
            .tenant("t")
            .detail("generation 2");
        audit.record_once(e.clone());
        audit.record_once(e);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
