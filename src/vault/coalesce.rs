//! One refresh per key at a time: callers that ask for a key while its refresh is in flight
//! wait for that one instead of starting their own.
//!
//! The refresh must finish whether or not anyone still waits (the provider may already have
//! rotated the refresh token), so it is spawned on a [`TaskTracker`] that shutdown drains, and
//! its callers hold a shared handle to the task's outcome. The map entry is removed by a drop
//! guard in the task, so a refresh that panics or is aborted can never leave its key pointing
//! at a dead flight. (The cache-miss read, which must *not* outlive its callers, has its own
//! single flight in `reads.rs`.)
//!
//! A refresh is joined only while it is younger than `max_join_age`: one stuck must not hold
//! every later caller of its key.

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
    future::{BoxFuture, Shared},
    FutureExt,
};
use tokio_util::task::TaskTracker;

/// Keyed by connection, hashed with foldhash (seeded per process) like the reads' map.
type Flights<K, V> = Arc<Mutex<HashMap<K, Flight<V>, foldhash::fast::RandomState>>>;

pub(super) struct Coalescer<K, V: Clone> {
    inflight: Flights<K, V>,
    next_id: AtomicU64,
    max_join_age: Duration,
}

struct Flight<V: Clone> {
    id: u64,
    started: Instant,
    /// The spawned task's outcome.
    outcome: Shared<BoxFuture<'static, V>>,
}

impl<V: Clone> Flight<V> {
    fn joinable(&self, max_join_age: Duration) -> Option<Shared<BoxFuture<'static, V>>> {
        (self.started.elapsed() < max_join_age).then(|| self.outcome.clone())
    }
}

/// Removes flight `id` of `key` from the map when dropped, unless a newer flight took the key
/// meanwhile.
struct Forget<K: Hash + Eq, V: Clone> {
    inflight: Flights<K, V>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq, V: Clone> Drop for Forget<K, V> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(&self.key).is_some_and(|flight| flight.id == self.id) {
            inflight.remove(&self.key);
        }
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
            key: key.clone(),
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
                outcome: outcome.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
