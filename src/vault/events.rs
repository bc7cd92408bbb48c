//! WatchConnectionEvents: status changes of connections streamed to watchers on any replica.
//!
//! The table `connection_events` is the truth (written in the transaction of each change, read
//! in commit-safe order by `store::ConnectionEvents`). One Postgres listener per replica
//! ([`Vault::listen_for_events`]) turns notifications into wake-ups for every watcher of the
//! replica; each watcher also reads every `events.poll_interval`, which catches a notification
//! lost while the listener reconnected. Each watcher is a task that reads after its position
//! and queues events on a channel of `events.watch_buffer`, which the gRPC stream drains: a
//! consumer that leaves the queue full for [`SLOW_CONSUMER_GRACE`] while events wait is ended
//! with WATCH_TOO_SLOW, so no watcher's memory grows. On shutdown every watcher ends with
//! SHUTTING_DOWN (clients resume elsewhere from their cursor), so that open streams never hold
//! the graceful shutdown up.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{ConnectionKey, ConnectionStatus, Vault, VaultError};
use crate::{
    config::EventsSettings,
    store::{EventBatch, EventPosition, EventRow, Store},
};

/// How long a watcher's full queue may stay full, while events wait, before the watcher is
/// ended as too slow. Long enough for a consumer that reads to drain a burst; a stalled one
/// is ended soon after its HTTP/2 window and its queue are full.
const SLOW_CONSUMER_GRACE: Duration = Duration::from_secs(2);
/// Events read per query.
const BATCH: i64 = 256;
/// The first pause after the listener fails to connect; it doubles up to `events.poll_interval`
/// (watchers poll meanwhile, so nothing is missed, only later).
const LISTEN_RETRY: Duration = Duration::from_millis(250);
/// The first pause before reading again while events are held back behind a running
/// transaction; it doubles up to `events.poll_interval`.
const HELD_RETRY: Duration = Duration::from_millis(20);
/// The version tag of the cursor's text.
const CURSOR_VERSION: &str = "v1";

/// Where a watcher resumes: after the event it names. Its text (`v1.<txid>.<id>`) is opaque to
/// clients; anything else answers EVENT_CURSOR_EXPIRED, as the proto documents for malformed
/// cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCursor(EventPosition);

impl EventCursor {
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut parts = text.split('.');
        let (Some(CURSOR_VERSION), Some(txid), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VaultError::EventCursorExpired);
        };
        // Digits only: no sign, no leading '+', nothing `parse` would also accept.
        let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(txid) || !digits(id) {
            return Err(VaultError::EventCursorExpired);
        }
        match (txid.parse(), id.parse()) {
            (Ok(txid), Ok(id)) => Ok(Self(EventPosition { txid, id })),
            _ => Err(VaultError::EventCursorExpired),
        }
    }
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CURSOR_VERSION}.{}.{}", self.0.txid, self.0.id)
    }
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEventKind {
    Authorized,
    RefreshedByKeepalive,
    ReauthorizationRequired,
    Recovered,
    Disconnected,
    Imported,
}

impl ConnectionEventKind {
    /// The stored name; None for a kind this version does not know (written by a newer one).
    fn from_stored(kind: &str) -> Option<Self> {
        Some(match kind {
            "authorized" => Self::Authorized,
            "refreshed_by_keepalive" => Self::RefreshedByKeepalive,
            "reauthorization_required" => Self::ReauthorizationRequired,
            "recovered" => Self::Recovered,
            "disconnected" => Self::Disconnected,
            "imported" => Self::Imported,
            _ => return None,
        })
    }
}

/// One status change, as a watcher receives it.
#[derive(Debug, Clone)]
pub struct ConnectionEvent {
    pub cursor: EventCursor,
    pub occurred_at: OffsetDateTime,
    pub tenant_id: String,
    pub provider: String,
    pub kind: ConnectionEventKind,
    pub status: ConnectionStatus,
    pub reason: Option<String>,
}

impl ConnectionEvent {
    fn from_row(row: EventRow) -> Option<Self> {
        Some(Self {
            cursor: EventCursor(row.position),
            kind: ConnectionEventKind::from_stored(&row.kind)?,
            status: ConnectionStatus::from_stored(&row.status),
            occurred_at: row.occurred_at,
            tenant_id: row.tenant_id,
            provider: row.provider,
            reason: row.reason,
        })
    }
}

/// A watch as asked, validated at the API boundary (the provider's existence is checked here).
#[derive(Debug, Clone, Default)]
pub struct WatchEvents {
    /// Resume after this event; None starts from now.
    pub cursor: Option<EventCursor>,
    /// Only this provider's events; None: every provider (not the default one).
    pub provider: Option<String>,
    /// Only tenants whose id starts with this.
    pub tenant_prefix: Option<String>,
}

/// The request's filters.
struct EventFilter {
    provider: Option<String>,
    tenant_prefix: Option<String>,
}

impl EventFilter {
    fn passes(&self, row: &EventRow) -> bool {
        self.provider.as_ref().is_none_or(|p| *p == row.provider)
            && self
                .tenant_prefix
                .as_ref()
                .is_none_or(|prefix| row.tenant_id.starts_with(prefix.as_str()))
    }
}

/// Whether the watcher may see a connection's events (the caller's policy); an event it may
/// not see is skipped without a word.
pub type EventVisibility = Arc<dyn Fn(&ConnectionKey) -> bool + Send + Sync>;

/// The replica's side of every watch: the wake-up fan-out, the watcher slots, the shutdown
/// signal.
pub(super) struct EventHub {
    wake: watch::Sender<u64>,
    slots: Arc<Semaphore>,
    max_watchers: usize,
    closing: CancellationToken,
    poll_interval: Duration,
    buffer: usize,
}

impl EventHub {
    pub(super) fn new(settings: &EventsSettings) -> Self {
        Self {
            wake: watch::channel(0).0,
            slots: Arc::new(Semaphore::new(settings.max_watchers)),
            max_watchers: settings.max_watchers,
            closing: CancellationToken::new(),
            poll_interval: settings.poll_interval,
            buffer: settings.watch_buffer.max(1),
        }
    }

    fn wake_all(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Vault {
    /// Starts a watch: checks the provider, takes a watcher slot, finds where to start (now,
    /// or after a cursor that must not be expired) and spawns the watcher. Errors here are the
    /// RPC's status; later ones end the stream.
    pub async fn watch_events(
        &self,
        request: WatchEvents,
        visible: EventVisibility,
    ) -> Result<EventStream, VaultError> {
        if let Some(provider) = &request.provider {
            self.provider_named(provider)?;
        }
        let hub = &self.inner.events;
        if hub.closing.is_cancelled() {
            return Err(VaultError::ShuttingDown);
        }
        let slot = hub
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| VaultError::WatchersLimited)?;
        let filter = EventFilter {
            provider: request.provider,
            tenant_prefix: request.tenant_prefix,
        };
        let store = &self.inner.store;
        let position = match request.cursor {
            None => store.events().head().await?,
            Some(EventCursor(position)) => match store.events().after(position, 0).await? {
                EventBatch::Events { .. } => position,
                EventBatch::Expired | EventBatch::Unknown => return Err(VaultError::EventCursorExpired),
            },
        };
        let (events_tx, events) = mpsc::channel(hub.buffer);
        let (end_tx, end) = oneshot::channel();
        let watcher = Watcher {
            store: store.clone(),
            position,
            filter,
            visible,
            events: events_tx,
            wake: hub.wake.subscribe(),
            closing: hub.closing.clone(),
            poll_interval: hub.poll_interval,
            _slot: slot,
        };
        tokio::spawn(watcher.run(end_tx));
        Ok(EventStream {
            events,
            end: Some(end),
            finished: false,
        })
    }

    /// Ends every watch of this replica with SHUTTING_DOWN and refuses new ones: the first step
    /// of shutdown, so that open streams don't hold the graceful shutdown up.
    pub fn close_event_watches(&self) {
        self.inner.events.closing.cancel();
    }

    /// Watch streams open on this replica.
    pub fn open_event_watches(&self) -> usize {
        let hub = &self.inner.events;
        hub.max_watchers.saturating_sub(hub.slots.available_permits())
    }

    /// Listens for the events' notification until `stop`, waking every watcher of this replica
    /// on each. One database connection (taken from the pool) for the whole replica. After a
    /// lost connection watchers are woken too: a notification may have been missed.
    pub async fn listen_for_events(&self, stop: CancellationToken) {
        let hub = &self.inner.events;
        let mut pause = LISTEN_RETRY;
        loop {
            let connected = tokio::select! {
                c = self.inner.store.event_notifications() => c,
                _ = stop.cancelled() => return,
            };
            match connected {
                Ok(mut notifications) => {
                    tracing::debug!("listening for connection events");
                    hub.wake_all();
                    pause = LISTEN_RETRY;
                    loop {
                        let next = tokio::select! {
                            n = notifications.next() => n,
                            _ = stop.cancelled() => return,
                        };
                        match next {
                            Ok(true) => hub.wake_all(),
                            // Reconnects on the next call.
                            Ok(false) => {
                                tracing::debug!("the event listener's connection was lost; reconnecting");
                                hub.wake_all();
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "the event listener failed; watchers poll meanwhile");
                                hub.wake_all();
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not listen for connection events; watchers poll meanwhile")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            pause = (pause * 2).min(hub.poll_interval);
        }
    }
}

/// One watch's task: reads after its position on every wake-up and poll, queues what the
/// caller may see, and says why it ended (nothing when the consumer went away).
struct Watcher {
    store: Store,
    position: EventPosition,
    filter: EventFilter,
    visible: EventVisibility,
    events: mpsc::Sender<ConnectionEvent>,
    wake: watch::Receiver<u64>,
    closing: CancellationToken,
    poll_interval: Duration,
    /// Held until the task ends: the watcher counts against `events.max_watchers` until then.
    _slot: OwnedSemaphorePermit,
}

/// Why a delivery round stopped short of an error.
enum Round {
    /// Everything finished so far was delivered; wait for more.
    CaughtUp,
    /// Everything finished was delivered, but committed events wait behind an older
    /// transaction still running; its end sends no notification, so read again soon.
    Held,
    /// The stream was dropped (the client went away).
    ConsumerGone,
}

impl Watcher {
    async fn run(mut self, end: oneshot::Sender<VaultError>) {
        let mut wake_alive = true;
        let mut held_pause = HELD_RETRY;
        let outcome = loop {
            // Marked seen before reading, so a notification during the read wakes us again.
            self.wake.borrow_and_update();
            let closing = self.closing.clone();
            let events = self.events.clone();
            let round = tokio::select! {
                r = self.deliver() => r,
                _ = closing.cancelled() => Err(VaultError::ShuttingDown),
                _ = events.closed() => Ok(Round::ConsumerGone),
            };
            drop(events);
            let pause = match round {
                Ok(Round::CaughtUp) => {
                    held_pause = HELD_RETRY;
                    self.poll_interval
                }
                Ok(Round::Held) => {
                    let pause = held_pause;
                    held_pause = (held_pause * 2).min(self.poll_interval);
                    pause.min(self.poll_interval)
                }
                Ok(Round::ConsumerGone) => return,
                Err(e) => break e,
            };
            tokio::select! {
                changed = self.wake.changed(), if wake_alive => {
                    // The hub is gone (the vault is being dropped): polling still works.
                    wake_alive = changed.is_ok();
                }
                _ = tokio::time::sleep(pause) => {}
                _ = self.events.closed() => return,
                _ = self.closing.cancelled() => break VaultError::ShuttingDown,
            }
        };
        // An internal error is logged, with the id its caller sees, where it becomes a status.
        tracing::debug!(reason = outcome.reason(), "an event watch ended");
        // Before the queue's sender is dropped (with self), so that the stream sees the reason
        // no later than the end of the queue.
        let _ = end.send(outcome);
    }

    /// Reads and queues batches until caught up.
    async fn deliver(&mut self) -> Result<Round, VaultError> {
        loop {
            let (rows, held) = match self.store.events().after(self.position, BATCH).await? {
                EventBatch::Events { rows, held } => (rows, held),
                EventBatch::Expired | EventBatch::Unknown => return Err(VaultError::EventCursorExpired),
            };
            let full_batch = rows.len() as i64 == BATCH;
            for row in rows {
                self.position = row.position;
                if !self.filter.passes(&row)
                    || !(self.visible)(&ConnectionKey::from_stored(&row.tenant_id, &row.provider))
                {
                    continue;
                }
                let Some(event) = ConnectionEvent::from_row(row) else {
                    continue;
                };
                match self.events.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Round::ConsumerGone),
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        match tokio::time::timeout(SLOW_CONSUMER_GRACE, self.events.send(event)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Ok(Round::ConsumerGone),
                            Err(_) => return Err(VaultError::WatchTooSlow),
                        }
                    }
                }
            }
            if !full_batch {
                return Ok(if held { Round::Held } else { Round::CaughtUp });
            }
        }
    }
}

/// The events of one watch, then (maybe) why it ended. The reason comes first once known: a
/// watcher ended as too slow or by shutdown is told so at once, and resumes from the last
/// cursor it received.
pub struct EventStream {
    events: mpsc::Receiver<ConnectionEvent>,
    end: Option<oneshot::Receiver<VaultError>>,
    finished: bool,
}

impl EventStream {
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Option<VaultError> {
        let end = self.end.as_mut()?;
        match Pin::new(end).poll(cx) {
            Poll::Ready(Ok(e)) => {
                self.end = None;
                Some(e)
            }
            // The watcher ended without a word: the consumer went away first.
            Poll::Ready(Err(_)) => {
                self.end = None;
                None
            }
            Poll::Pending => None,
        }
    }
}

impl futures::Stream for EventStream {
    type Item = Result<ConnectionEvent, VaultError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(e) = this.poll_end(cx) {
            this.finished = true;
            return Poll::Ready(Some(Err(e)));
        }
        match this.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => {
                // The watcher is gone; its reason, if any, was sent before its queue closed.
                this.finished = true;
                Poll::Ready(this.poll_end(cx).map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let cursor = EventCursor(EventPosition { txid: 7412, id: 93 });
        assert_eq!(cursor.to_string(), "v1.7412.93");
        assert_eq!(EventCursor::parse("v1.7412.93").unwrap(), cursor);
        for bad in [
            "",
            "v1",
            "v1.1",
            "v1.1.2.3",
            "v2.1.2",
            "v1.-1.2",
            "v1.+1.2",
            "v1.1.",
            "v1. 1.2",
            "v1.1.99999999999999999999",
            "v1.99999999999999999999999.1",
        ] {
            assert!(
                matches!(EventCursor::parse(bad), Err(VaultError::EventCursorExpired)),
                "{bad:?} was accepted"
            );
        }
    }
}
