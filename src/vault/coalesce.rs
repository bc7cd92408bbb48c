//! One evaluation per key at a time: callers that ask for a key while its evaluation is in
//! flight wait for that one instead of starting their own.
//!
//! Two kinds of evaluation, because they own different things:
//!
//! * **Attached** ([`Coalescer::run`]): the cache-miss database read. It lives only as long
//!   as someone waits for it. The map keeps a *weak* handle, so when every waiter has given up
//!   (a deadline, a cancelled call) the read is dropped with them and its pooled connection goes
//!   back to the pool. Holding a strong handle here once let thousands of abandoned reads each
//!   keep a connection forever, until the pool was empty and the replica answered nothing.
//! * **Detached** ([`Coalescer::run_detached`]): the refresh. It must finish whether or not
//!   anyone still waits (the provider may already have rotated the refresh token), so it is
//!   spawned on a [`TaskTracker`] that shutdown drains.
//!
//! Either way the map entry is removed by a drop guard, so an evaluation that panics or is
//! dropped can never leave its key pointing at a dead flight.
//!
//! An evaluation is joined only while it is younger than `max_join_age`: one stuck on a dead
//! connection must not hold every later caller of its key.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::{
    future::{BoxFuture, Shared, WeakShared},
    FutureExt,
};
use tokio_util::task::TaskTracker;

/// Keyed by connection, hashed with foldhash (seeded per process) rather than SipHash: every
/// cache miss hashes its key here up to three times (docs/performance.md, the cold cache).
pub(super) type Flights<K, V> = Arc<Mutex<HashMap<K, Flight<V>, foldhash::fast::RandomState>>>;

pub(super) struct Coalescer<K, V: Clone> {
    inflight: Flights<K, V>,
    next_id: AtomicU64,
    max_join_age: Duration,
}

pub(super) struct Flight<V: Clone> {
    id: u64,
    started: Instant,
    handle: Handle<V>,
}

enum Handle<V: Clone> {
    /// Alive while a waiter holds it.
    Attached(WeakShared<BoxFuture<'static, V>>),
    /// A spawned task's outcome.
    Detached(Shared<BoxFuture<'static, V>>),
}

impl<V: Clone> Flight<V> {
    fn joinable(&self, max_join_age: Duration) -> Option<Shared<BoxFuture<'static, V>>> {
        if self.started.elapsed() >= max_join_age {
            return None;
        }
        match &self.handle {
            Handle::Attached(weak) => weak.upgrade(),
            Handle::Detached(shared) => Some(shared.clone()),
        }
    }
}

/// Removes flight `id` of `key` from the map when dropped, unless a newer flight took the key
/// meanwhile. For an attached flight it removes the entry only once no waiter is left.
struct Forget<K: Hash + Eq, V: Clone> {
    inflight: Flights<K, V>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, V: Clone> Drop for Forget<K, V> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let ours = inflight.get(&key).is_some_and(|flight| {
            flight.id == self.id
                && match &flight.handle {
                    Handle::Attached(weak) => weak.upgrade().is_none(),
                    Handle::Detached(_) => true,
                }
        });
        if ours {
            inflight.remove(&key);
        }
    }
}

/// One caller's wait on an attached flight. Dropping it lets go of the evaluation first and
/// then, if it was the last waiter, forgets the flight.
struct Waiter<K: Hash + Eq, V: Clone> {
    evaluation: Option<Shared<BoxFuture<'static, V>>>,
    forget: Forget<K, V>,
}

impl<K: Hash + Eq, V: Clone> Drop for Waiter<K, V> {
    fn drop(&mut self) {
        // Order matters: the evaluation must be released before `forget` checks for waiters.
        self.evaluation = None;
    }
}

impl<K: Hash + Eq + Clone + Send + 'static, V: Clone + Send + Sync + 'static> Coalescer<K, V> {
    pub fn new(max_join_age: Duration) -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::default())),
            next_id: AtomicU64::new(0),
            max_join_age,
        }
    }

    /// Waits for the evaluation of `key` in flight, or starts `evaluate` as it. The evaluation
    /// is driven by whichever of its callers is polled and is dropped when the last of them
    /// leaves, releasing whatever it held.
    pub async fn run(&self, key: K, evaluate: impl FnOnce() -> BoxFuture<'static, V>) -> V {
        let (id, evaluation) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight
                .get(&key)
                .and_then(|f| f.joinable(self.max_join_age).map(|s| (f.id, s)))
            {
                Some(joined) => joined,
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let evaluation = evaluate().shared();
                    let weak = evaluation.downgrade().expect("a fresh Shared has not completed");
                    inflight.insert(
                        key.clone(),
                        Flight {
                            id,
                            started: Instant::now(),
                            handle: Handle::Attached(weak),
                        },
                    );
                    (id, evaluation)
                }
            }
        };
        let mut waiter = Waiter {
            evaluation: Some(evaluation),
            forget: Forget {
                inflight: self.inflight.clone(),
                key: Some(key),
                id,
            },
        };
        let value = match waiter.evaluation.as_mut() {
            Some(evaluation) => evaluation.await,
            None => unreachable!("set just above"),
        };
        // Finished: whoever gets here first forgets the flight, even while other waiters still
        // hold it, so that a caller arriving now reads afresh.
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(waiter.forget.key_ref()).is_some_and(|f| f.id == id) {
            inflight.remove(waiter.forget.key_ref());
        }
        drop(inflight);
        value
    }

    /// The outcome of the evaluation of `key` in flight, or of `evaluate` spawned on `tasks`
    /// now. A spawned evaluation runs to its end whether or not anyone still waits for it; the
    /// key is free again as soon as it ends, panics included. `None` if nothing is in flight
    /// and `may_start` is false (the process is stopping).
    pub fn run_detached(
        &self,
        key: K,
        tasks: &TaskTracker,
        may_start: bool,
        evaluate: impl FnOnce() -> BoxFuture<'static, V>,
        on_panic: impl FnOnce(String) -> V + Send + 'static,
    ) -> Option<Shared<BoxFuture<'static, V>>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = inflight.get(&key).and_then(|f| f.joinable(self.max_join_age)) {
            return Some(running);
        }
        if !may_start {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let forget = Forget {
            inflight: self.inflight.clone(),
            key: Some(key.clone()),
            id,
        };
        let evaluation = evaluate();
        let task = tasks.spawn(async move {
            // Dropped when the evaluation ends, panics or is aborted with the runtime.
            let _forget = forget;
            evaluation.await
        });
        let outcome = async move { task.await.unwrap_or_else(|e| on_panic(e.to_string())) }
            .boxed()
            .shared();
        inflight.insert(
            key,
            Flight {
                id,
                started: Instant::now(),
                handle: Handle::Detached(outcome.clone()),
            },
        );
        Some(outcome)
    }

    /// The evaluation of `key` in flight, if any.
    pub fn joinable(&self, key: &K) -> Option<Shared<BoxFuture<'static, V>>> {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.get(key).and_then(|f| f.joinable(self.max_join_age))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<K: Hash + Eq, V: Clone> Forget<K, V> {
    fn key_ref(&self) -> &K {
        self.key.as_ref().expect("the key is taken only on drop")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_evaluation_and_later_ones_start_a_new_one() {
        let flights = Arc::new(Coalescer::<&str, u32>::new(Duration::from_secs(60)));
        let evaluations = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let (flights, evaluations, mut released) = (flights.clone(), evaluations.clone(), released.clone());
                tokio::spawn(async move {
                    flights
                        .run("acme", || {
                            async move {
                                evaluations.fetch_add(1, Ordering::SeqCst);
                                let _ = released.wait_for(|r| *r).await;
                                7
                            }
                            .boxed()
                        })
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), 7);
        }
        assert_eq!(evaluations.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "a finished evaluation is forgotten");

        let again = flights.run("acme", || async { 8 }.boxed()).await;
        assert_eq!(again, 8, "a caller after the evaluation ended gets a new one");
    }

    /// What it holds (here a permit standing for a pooled connection) goes back as soon as the
    /// last waiter leaves, and the key is forgotten.
    #[tokio::test]
    async fn an_evaluation_whose_callers_all_left_is_dropped_with_what_it_holds() {
        let flights = Coalescer::<&str, u32>::new(Duration::from_secs(60));
        let pool = Arc::new(tokio::sync::Semaphore::new(1));
        let held = pool.clone();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            flights.run("acme", move || {
                async move {
                    let _connection = held.acquire_owned().await.unwrap();
                    std::future::pending::<u32>().await
                }
                .boxed()
            }),
        )
        .await;
        assert!(gave_up.is_err(), "the only caller gave up");
        assert_eq!(
            pool.available_permits(),
            1,
            "the abandoned evaluation released its hold"
        );
        assert_eq!(flights.len(), 0, "and its key is free");
        let fresh = flights.run("acme", || async { 2 }.boxed()).await;
        assert_eq!(fresh, 2);
    }

    #[tokio::test]
    async fn a_stuck_evaluation_is_joined_only_until_it_is_too_old() {
        let flights = Arc::new(Coalescer::<&str, u32>::new(Duration::from_millis(50)));
        let first = tokio::spawn({
            let flights = flights.clone();
            async move { flights.run("acme", || std::future::pending::<u32>().boxed()).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let joined = tokio::time::timeout(Duration::from_millis(10), flights.run("acme", || async { 1 }.boxed())).await;
        assert!(
            joined.is_err(),
            "joined the evaluation in flight rather than starting another"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let fresh = flights.run("acme", || async { 2 }.boxed()).await;
        assert_eq!(fresh, 2, "a stuck evaluation past max_join_age is replaced");
        first.abort();
    }

    #[tokio::test]
    async fn a_detached_evaluation_finishes_without_waiters_and_a_panic_frees_its_key() {
        let flights = Coalescer::<&str, u32>::new(Duration::from_secs(60));
        let tasks = TaskTracker::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let outcome = flights
            .run_detached(
                "acme",
                &tasks,
                true,
                move || {
                    async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = done_tx.send(());
                        3
                    }
                    .boxed()
                },
                |_| 0,
            )
            .expect("started");
        drop(outcome);
        done_rx
            .await
            .expect("the evaluation ran to its end with nobody waiting");
        tasks.close();
        tasks.wait().await;
        assert_eq!(flights.len(), 0);

        let panicked = flights
            .run_detached("acme", &tasks, true, || async { panic!("boom") }.boxed(), |_| 99)
            .expect("started");
        assert_eq!(panicked.await, 99, "a panic becomes the on_panic value");
        assert_eq!(flights.len(), 0, "and never strands the key");
        assert!(
            flights
                .run_detached("acme", &tasks, false, || async { 1 }.boxed(), |_| 0)
                .is_none(),
            "nothing new starts once starting is refused"
        );
    }
}
