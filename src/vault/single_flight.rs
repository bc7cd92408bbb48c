//! One evaluation per key at a time: callers that ask for a key while its evaluation is in
//! flight wait for that one instead of starting their own.
//!
//! GetAccessToken uses it for the database read behind a cache miss. When a hot tenant's cache
//! entry lapses (`vault.cache_max_age`), or a stampede arrives before anything is cached, every
//! caller that misses at that moment would otherwise read the same row, and the refresh lease
//! statement would queue for a pooled connection behind all of those reads.
//!
//! An evaluation is joined only while it is younger than `max_join_age`: one stuck on a dead
//! connection must not hold every later caller of its key.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};

pub(super) struct SingleFlight<K, V: Clone> {
    inflight: Mutex<HashMap<K, Flight<V>>>,
    next_id: AtomicU64,
    max_join_age: Duration,
}

struct Flight<V: Clone> {
    id: u64,
    started: Instant,
    result: Shared<BoxFuture<'static, V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    pub fn new(max_join_age: Duration) -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            max_join_age,
        }
    }

    /// Waits for the evaluation of `key` in flight, or starts `evaluate` as it. The evaluation
    /// is driven by whichever of its callers is polled, so it completes as long as one of them
    /// still waits; if all leave, the next caller for the key (within `max_join_age`) drives it
    /// on.
    pub async fn run(&self, key: K, evaluate: impl FnOnce() -> BoxFuture<'static, V>) -> V {
        let (id, result) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(flight) if flight.started.elapsed() < self.max_join_age => (flight.id, flight.result.clone()),
                _ => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let result = evaluate().shared();
                    let flight = Flight {
                        id,
                        started: Instant::now(),
                        result: result.clone(),
                    };
                    inflight.insert(key.clone(), flight);
                    (id, result)
                }
            }
        };
        let value = result.await;
        // Whoever finishes first removes the entry; a newer evaluation under the same key is
        // left alone.
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(&key).is_some_and(|flight| flight.id == id) {
            inflight.remove(&key);
        }
        value
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        let flights = Arc::new(SingleFlight::<&str, u32>::new(Duration::from_secs(60)));
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

    #[tokio::test]
    async fn an_evaluation_whose_callers_all_left_is_joined_until_it_is_too_old() {
        let flights = SingleFlight::<&str, u32>::new(Duration::from_millis(50));
        let started = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            flights.run("acme", || std::future::pending::<u32>().boxed()),
        )
        .await;
        assert!(started.is_err(), "the only caller gave up");
        assert_eq!(flights.len(), 1);
        // The stuck evaluation is still the one in flight: a new caller joins it.
        let joined = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            flights.run("acme", || async { 1 }.boxed()),
        )
        .await;
        assert!(
            joined.is_err(),
            "joined the evaluation in flight rather than starting another"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let fresh = flights.run("acme", || async { 2 }.boxed()).await;
        assert_eq!(fresh, 2, "a stuck evaluation past max_join_age is replaced");
        assert_eq!(flights.len(), 0);
    }
}
