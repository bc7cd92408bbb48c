//! One cache-miss read per connection at a time: the caller that misses first reads the row
//! itself (it *leads*); callers that miss the same key while that read is in flight wait for
//! its result instead of starting reads of their own.
//!
//! The read is polled by its leader, like any other future of the call. Until a second
//! caller shows up, the map entry is a key, an id and a start time: the common miss, with
//! nobody else after the row, takes the map's lock twice, hashes its key three times and
//! allocates only the read's box (docs/performance.md, the cold cache). Waiters share a
//! channel, made by the first of them. (An earlier version wrapped every read in a shared
//! future that anyone could poll: three locks, a shared future and a waker registration on
//! every poll, about 4 % of the vault's CPU on the cold cache.)
//!
//! A read lives as long as someone wants it, and no longer:
//! * when its leader gives up (a deadline, a cancelled call) while others still wait, the read
//!   goes on in a task of its own for them, so a patient caller is never starved by impatient
//!   leaders that keep restarting its read;
//! * when every caller has given up, the read is dropped with the last of them, and its pooled
//!   connection goes straight back to the pool. (Holding reads for callers that had left once
//!   let thousands of abandoned reads each keep a connection, until the pool was empty and the
//!   replica answered nothing.)
//!
//! A read whose leader panicked is not handed on (it cannot be polled again): its waiters
//! start again, and one of them reads afresh.
//!
//! A read is joined only while it is younger than `max_join_age`: one stuck on a dead
//! connection must not hold every later caller of its key. The first caller to find it too
//! old leads a new read in its place; the old read's waiters start again and join that one.

use std::{
    collections::{hash_map::Entry, HashMap},
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::{sync::watch, time::Instant};

type Map<K, V> = Mutex<HashMap<K, Flight<V>, foldhash::fast::RandomState>>;

/// The reads in flight, keyed by connection. Hashed with foldhash (seeded per process) rather
/// than SipHash: every miss hashes its key here three times.
pub(super) struct ReadFlights<K, V> {
    inflight: Arc<Map<K, V>>,
    next_id: AtomicU64,
    max_join_age: Duration,
}

struct Flight<V> {
    /// Which read this is, so that nothing ever forgets a newer read of its key.
    id: u64,
    started: Instant,
    /// Where the read's outcome goes to the waiters; made by the first waiter.
    waiters: Option<Arc<watch::Sender<Outcome<V>>>>,
}

/// What the waiters of a read learn.
enum Outcome<V> {
    Pending,
    Done(V),
    /// The read was replaced for its age: start again (and join the read replacing it).
    Restart,
}

/// What a caller does about a key: read it, or wait for the read in flight.
enum Role<V> {
    Lead(u64),
    Wait(watch::Receiver<Outcome<V>>),
}

impl<K, V> ReadFlights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(max_join_age: Duration) -> Self {
        Self {
            inflight: Arc::default(),
            next_id: AtomicU64::new(0),
            max_join_age,
        }
    }

    /// The result of the read of `key` in flight, or of `read`, led by this caller, if none
    /// is (or the one in flight is too old to join).
    pub async fn run(&self, key: &K, read: impl FnOnce() -> BoxFuture<'static, V>) -> V {
        let id = loop {
            match self.lead_or_join(key) {
                Role::Lead(id) => break id,
                Role::Wait(mut outcome) => {
                    if let Ok(outcome) = outcome.wait_for(|o| !matches!(o, Outcome::Pending)).await {
                        if let Outcome::Done(value) = &*outcome {
                            return value.clone();
                        }
                    }
                    // Replaced for its age, or ended without a result (the read panicked):
                    // start again.
                }
            }
        };
        let mut lead = Lead {
            inflight: &self.inflight,
            key,
            id,
            read: Some(read()),
            polling: false,
        };
        let value = std::future::poll_fn(|cx| match lead.read.as_mut() {
            Some(read) => {
                lead.polling = true;
                let polled = Pin::new(read).poll(cx);
                lead.polling = false;
                polled
            }
            None => unreachable!("the read is taken only when the lead is dropped"),
        })
        .await;
        lead.read = None;
        if let Some(waiters) = forget(&self.inflight, key, id) {
            // Nobody can start waiting any more: the flight is out of the map.
            if waiters.receiver_count() > 0 {
                waiters.send_replace(Outcome::Done(value.clone()));
            }
        }
        value
    }

    fn lead_or_join(&self, key: &K) -> Role<V> {
        let now = Instant::now();
        let mut inflight = lock(&self.inflight);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let lead = Flight {
            id,
            started: now,
            waiters: None,
        };
        let replaced = match inflight.entry(key.clone()) {
            Entry::Occupied(mut entry) if now.saturating_duration_since(entry.get().started) < self.max_join_age => {
                let waiters = entry
                    .get_mut()
                    .waiters
                    .get_or_insert_with(|| Arc::new(watch::channel(Outcome::Pending).0));
                return Role::Wait(waiters.subscribe());
            }
            // Too old to join: this caller reads in its place.
            Entry::Occupied(mut entry) => entry.insert(lead).waiters,
            Entry::Vacant(entry) => {
                entry.insert(lead);
                None
            }
        };
        drop(inflight);
        // Outside the lock. The old read's waiters start again and join this one; if it runs
        // in a task of its own, that task then sees nobody waiting and drops it.
        if let Some(waiters) = replaced {
            waiters.send_replace(Outcome::Restart);
        }
        Role::Lead(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.inflight).len()
    }
}

/// A leader's hold on its read. Dropped before the read ends (the leader gave up), it hands
/// the read to a task of its own if anyone still waits, and otherwise forgets it.
struct Lead<'a, K: Hash + Eq + Clone + Send + Sync + 'static, V: Clone + Send + Sync + 'static> {
    inflight: &'a Arc<Map<K, V>>,
    key: &'a K,
    id: u64,
    read: Option<BoxFuture<'static, V>>,
    /// Still set when the lead is dropped: the read panicked while polled, and cannot be
    /// polled again.
    polling: bool,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static, V: Clone + Send + Sync + 'static> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        let Some(read) = self.read.take() else { return };
        let mut inflight = lock(self.inflight);
        let waited = inflight
            .get(self.key)
            .filter(|flight| flight.id == self.id)
            .and_then(|flight| flight.waiters.clone())
            .filter(|waiters| waiters.receiver_count() > 0);
        let runtime = tokio::runtime::Handle::try_current();
        match (waited, runtime) {
            // Without a runtime there is nowhere to run it. Either way the waiters, their
            // channel closed with the entry, start again.
            (Some(waiters), Ok(runtime)) if !self.polling => {
                drop(inflight);
                // Made here, not in the task: a task dropped before its first poll (the runtime
                // shutting down) still frees the key.
                let forget = Forget {
                    inflight: self.inflight.clone(),
                    key: self.key.clone(),
                    id: self.id,
                };
                runtime.spawn(read_for_waiters(read, waiters, forget));
            }
            _ => {
                let forgotten = remove_if_current(&mut inflight, self.key, self.id);
                drop(inflight);
                drop(forgotten);
            }
        }
    }
}

/// A read its leader gave up on, driven for those still waiting until it ends or the last of
/// them gives up too. However the task ends (the read panics, the runtime shuts down),
/// `forget` frees the key, and the waiters, their channel closed, start again.
async fn read_for_waiters<K: Hash + Eq, V>(
    mut read: BoxFuture<'static, V>,
    waiters: Arc<watch::Sender<Outcome<V>>>,
    forget: Forget<K, V>,
) {
    loop {
        tokio::select! {
            biased;
            value = &mut read => {
                forget.now();
                waiters.send_replace(Outcome::Done(value));
                return;
            }
            () = waiters.closed() => {
                // Callers join under the map's lock, so under it "nobody waits" is final.
                let map = lock(&forget.inflight);
                if waiters.receiver_count() == 0 {
                    drop(map);
                    forget.now();
                    return;
                }
            }
        }
    }
}

/// Forgets read `id` of `key` when dropped (or told to now), unless a newer read replaced it.
struct Forget<K: Hash + Eq, V> {
    inflight: Arc<Map<K, V>>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq, V> Forget<K, V> {
    fn now(&self) {
        drop(forget(&self.inflight, &self.key, self.id));
    }
}

impl<K: Hash + Eq, V> Drop for Forget<K, V> {
    fn drop(&mut self) {
        self.now();
    }
}

/// Takes read `id` of `key` out of the map, unless a newer read replaced it, and returns its
/// waiters' channel, if any waited.
fn forget<K: Hash + Eq, V>(inflight: &Map<K, V>, key: &K, id: u64) -> Option<Arc<watch::Sender<Outcome<V>>>> {
    let mut map = lock(inflight);
    remove_if_current(&mut map, key, id).and_then(|flight| flight.waiters)
}

fn remove_if_current<K: Hash + Eq, V>(
    map: &mut HashMap<K, Flight<V>, foldhash::fast::RandomState>,
    key: &K,
    id: u64,
) -> Option<Flight<V>> {
    if map.get(key).is_some_and(|flight| flight.id == id) {
        return map.remove(key);
    }
    None
}

fn lock<K, V>(inflight: &Map<K, V>) -> MutexGuard<'_, HashMap<K, Flight<V>, foldhash::fast::RandomState>> {
    // Nothing under this lock can panic half-way through a change to the map.
    inflight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use tokio::{sync::Semaphore, task::JoinHandle};

    use super::*;

    type Flights = Arc<ReadFlights<&'static str, u32>>;

    /// The flights under test, a count of the reads they start, and a pool of `connections`
    /// permits that each read holds while it runs.
    fn setup(max_join_age: Duration, connections: usize) -> (Flights, Arc<AtomicUsize>, Arc<Semaphore>) {
        (
            Arc::new(ReadFlights::new(max_join_age)),
            Arc::default(),
            Arc::new(Semaphore::new(connections)),
        )
    }

    /// A caller of "acme" whose read counts itself in `reads`, then holds a permit of `pool`
    /// (standing for a pooled connection) until `release` says so, and answers `value`.
    fn caller(
        flights: &Flights,
        reads: &Arc<AtomicUsize>,
        pool: &Arc<Semaphore>,
        release: &watch::Receiver<bool>,
        value: u32,
    ) -> JoinHandle<u32> {
        let (flights, reads, pool, mut release) = (flights.clone(), reads.clone(), pool.clone(), release.clone());
        tokio::spawn(async move {
            flights
                .run(&"acme", move || {
                    async move {
                        reads.fetch_add(1, Ordering::SeqCst);
                        let _connection = pool.acquire_owned().await.unwrap();
                        let _ = release.wait_for(|r| *r).await;
                        value
                    }
                    .boxed()
                })
                .await
        })
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    async fn answer(caller: JoinHandle<u32>) -> u32 {
        tokio::time::timeout(Duration::from_secs(5), caller)
            .await
            .expect("answered, not stuck")
            .expect("did not panic")
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_read_and_later_ones_start_a_new_one() {
        let (flights, reads, pool) = setup(Duration::from_secs(60), 10);
        let (release, released) = watch::channel(false);
        let callers: Vec<_> = (0..10).map(|i| caller(&flights, &reads, &pool, &released, i)).collect();
        settle().await;
        release.send(true).unwrap();
        for caller in callers {
            assert_eq!(answer(caller).await, 0, "every caller got the first caller's read");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "a finished read is forgotten");

        let again = caller(&flights, &reads, &pool, &released, 8);
        assert_eq!(answer(again).await, 8, "a caller after the read ended gets a new one");
    }

    /// What the read holds goes back as soon as the last caller who wanted it leaves, and its
    /// key is forgotten: the leader first (the read goes on for the others), then the others.
    #[tokio::test]
    async fn a_read_whose_callers_all_left_is_dropped_with_what_it_holds() {
        let (flights, reads, pool) = setup(Duration::from_secs(60), 1);
        let (_release, released) = watch::channel(false);
        let leader = caller(&flights, &reads, &pool, &released, 1);
        settle().await;
        let waiters: Vec<_> = (0..3).map(|_| caller(&flights, &reads, &pool, &released, 2)).collect();
        settle().await;
        leader.abort();
        settle().await;
        assert_eq!(pool.available_permits(), 0, "the read goes on for those waiting");
        for waiter in &waiters {
            waiter.abort();
        }
        settle().await;
        assert_eq!(pool.available_permits(), 1, "the abandoned read released its hold");
        assert_eq!(flights.len(), 0, "and its key is free");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    /// An impatient leader must not cost a patient caller its read: the read its leader gave up
    /// on goes on for the waiters, and callers arriving (and leaving) meanwhile join it instead
    /// of starting reads that the next one to give up would cut short again.
    #[tokio::test]
    async fn a_read_whose_leader_gave_up_goes_on_for_those_waiting() {
        let (flights, reads, pool) = setup(Duration::from_secs(60), 10);
        let (release, released) = watch::channel(false);
        let leader = caller(&flights, &reads, &pool, &released, 1);
        settle().await;
        let patient = caller(&flights, &reads, &pool, &released, 2);
        settle().await;
        leader.abort();
        for value in 3..8 {
            let impatient = caller(&flights, &reads, &pool, &released, value);
            settle().await;
            impatient.abort();
            settle().await;
        }
        release.send(true).unwrap();
        assert_eq!(answer(patient).await, 1, "the patient caller got the first read");
        assert_eq!(reads.load(Ordering::SeqCst), 1, "and nobody read again");
        assert_eq!(flights.len(), 0);
    }

    /// A caller of "acme" whose read panics once `release` says so.
    fn panicking_caller(flights: &Flights, release: &watch::Receiver<bool>) -> JoinHandle<u32> {
        let (flights, mut release) = (flights.clone(), release.clone());
        tokio::spawn(async move {
            flights
                .run(&"acme", move || {
                    async move {
                        let _ = release.wait_for(|r| *r).await;
                        panic!("the read failed")
                    }
                    .boxed()
                })
                .await
        })
    }

    /// A read that panicked cannot be polled again: its waiters read afresh, once for all,
    /// whether its leader was still there or had left.
    #[tokio::test]
    async fn a_read_that_panicked_is_read_again_for_its_waiters() {
        for leader_left in [false, true] {
            let (flights, reads, pool) = setup(Duration::from_secs(60), 10);
            let (release, released) = watch::channel(false);
            let (release_again, released_again) = watch::channel(false);
            let leader = panicking_caller(&flights, &released);
            settle().await;
            let waiters: Vec<_> = (0..5)
                .map(|_| caller(&flights, &reads, &pool, &released_again, 4))
                .collect();
            settle().await;
            if leader_left {
                leader.abort();
                settle().await;
            }
            release.send(true).unwrap();
            let leader = leader.await.unwrap_err();
            assert!(if leader_left {
                leader.is_cancelled()
            } else {
                leader.is_panic()
            });
            settle().await;
            release_again.send(true).unwrap();
            for waiter in waiters {
                assert_eq!(answer(waiter).await, 4, "leader left: {leader_left}");
            }
            assert_eq!(reads.load(Ordering::SeqCst), 1, "one new read for all the waiters");
            assert_eq!(flights.len(), 0);
        }
    }

    /// Past `max_join_age` a read is replaced, not joined, and its waiters join the read that
    /// replaces it: whether its leader is still there (stuck) or gave up, leaving the read to a
    /// task of its own, which then drops it.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_read_is_joined_only_until_it_is_too_old() {
        for leader_left in [false, true] {
            let (flights, reads, pool) = setup(Duration::from_millis(50), 10);
            let (_never, stuck_forever) = watch::channel(false);
            let stuck = caller(&flights, &reads, &pool, &stuck_forever, 1);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let joined = tokio::time::timeout(
                Duration::from_millis(10),
                caller(&flights, &reads, &pool, &stuck_forever, 2),
            )
            .await;
            assert!(
                joined.is_err(),
                "joined the read in flight rather than starting another"
            );
            let waiter = caller(&flights, &reads, &pool, &stuck_forever, 3);
            settle().await;
            if leader_left {
                stuck.abort();
                settle().await;
                assert_eq!(pool.available_permits(), 9, "the stuck read goes on for its waiter");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;

            let (release, released) = watch::channel(false);
            let replacement = caller(&flights, &reads, &pool, &released, 4);
            settle().await;
            assert_eq!(
                reads.load(Ordering::SeqCst),
                2,
                "past max_join_age the stuck read is replaced"
            );
            stuck.abort();
            settle().await;
            assert_eq!(flights.len(), 1, "the stuck read, gone, did not forget its replacement");
            assert_eq!(
                pool.available_permits(),
                9,
                "the stuck read was dropped once nobody waited for it (leader left: {leader_left})"
            );
            release.send(true).unwrap();
            assert_eq!(answer(replacement).await, 4);
            assert_eq!(
                answer(waiter).await,
                4,
                "the stuck read's waiter joined the replacement (leader left: {leader_left})"
            );
            assert_eq!(flights.len(), 0);
            assert_eq!(pool.available_permits(), 10);
        }
    }
}
