//! Per-caller limits, so that one misbehaving service can't starve the others: a cap on calls
//! in flight (a semaphore, released when the call ends), an optional rate (GCRA, one atomic
//! word, no lock on the hot path), and BeginAuthorization's own rate, which every configured
//! caller has.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Rpc;

/// Why a call was refused, and when trying again makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many calls in flight; retry when one ends (no useful estimate).
    Concurrency,
    /// Over the rate; the bucket has room again after this long.
    Rate(Duration),
}

#[derive(Debug)]
pub struct Limits {
    in_flight: Option<Arc<Semaphore>>,
    rate: Option<Gcra>,
    /// BeginAuthorization writes a pending-authorization row per call: its rate is what bounds
    /// how fast a caller can grow that table, whatever its other limits.
    begin_rate: Option<Gcra>,
}

/// A sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// Held for the duration of a call.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Limits {
    /// `max_concurrent` 0 means unlimited (insecure-dev only); `per_second` None means no rate.
    pub fn new(max_concurrent: u32, per_second: Option<u32>, burst: Option<u32>, begin: Rate) -> Self {
        Self {
            in_flight: (max_concurrent > 0).then(|| Arc::new(Semaphore::new(max_concurrent as usize))),
            rate: per_second
                .filter(|r| *r > 0)
                .map(|r| Gcra::new(r, burst.unwrap_or(r).max(1))),
            begin_rate: Some(Gcra::new(begin.per_second.max(1), begin.burst.max(1))),
        }
    }

    /// No limit at all: the `insecure-dev` caller. With authentication off every process that
    /// reaches the port can read every token, so a limit would protect nothing; it would only
    /// slow down the local tools and tests that connect hundreds of tenants at once.
    pub fn unlimited() -> Self {
        Self {
            in_flight: None,
            rate: None,
            begin_rate: None,
        }
    }

    /// Never waits: a call over a limit is refused at once, so a flood from one caller turns
    /// into cheap errors for that caller rather than a queue in front of everyone. `rpc` is None
    /// for calls outside the vault's RPCs (reflection), which meet the general limits only.
    pub fn admit(&self, rpc: Option<Rpc>) -> Result<Permit, Refused> {
        if let (Some(Rpc::BeginAuthorization), Some(begin)) = (rpc, &self.begin_rate) {
            begin.check(Instant::now()).map_err(Refused::Rate)?;
        }
        if let Some(rate) = &self.rate {
            rate.check(Instant::now()).map_err(Refused::Rate)?;
        }
        match &self.in_flight {
            None => Ok(Permit(None)),
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(|p| Permit(Some(p)))
                .map_err(|_| Refused::Concurrency),
        }
    }
}

/// The generic cell rate algorithm: `tat` is the theoretical arrival time of the next call
/// (ns since `start`); a call is allowed while it is at most `burst` intervals ahead of now.
#[derive(Debug)]
struct Gcra {
    start: Instant,
    interval_ns: u64,
    capacity_ns: u64,
    tat: AtomicU64,
}

impl Gcra {
    fn new(per_second: u32, burst: u32) -> Self {
        let interval_ns = (1_000_000_000 / u64::from(per_second)).max(1);
        Self {
            start: Instant::now(),
            interval_ns,
            capacity_ns: interval_ns.saturating_mul(u64::from(burst)),
            tat: AtomicU64::new(0),
        }
    }

    fn check(&self, now: Instant) -> Result<(), Duration> {
        let now_ns = u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(self.interval_ns);
            let ahead = next - now_ns;
            if ahead > self.capacity_ns {
                return Err(Duration::from_nanos(ahead - self.capacity_ns));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate() {
        let g = Gcra::new(10, 3);
        let t0 = g.start;
        for _ in 0..3 {
            assert!(g.check(t0).is_ok());
        }
        let wait = g.check(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(g.check(t0 + Duration::from_millis(100)).is_ok());
        assert!(g.check(t0 + Duration::from_millis(100)).is_err());
        // A quiet second refills the whole burst, no more.
        let later = t0 + Duration::from_secs(2);
        for _ in 0..3 {
            assert!(g.check(later).is_ok());
        }
        assert!(g.check(later).is_err());
    }

    const GENEROUS: Rate = Rate {
        per_second: 1000,
        burst: 1000,
    };

    #[test]
    fn calls_in_flight_are_capped_until_they_end() {
        let limits = Limits::new(2, None, None, GENEROUS);
        let a = limits.admit(Some(Rpc::GetAccessToken)).unwrap();
        let _b = limits.admit(Some(Rpc::GetAccessToken)).unwrap();
        assert_eq!(
            limits.admit(Some(Rpc::GetAccessToken)).unwrap_err(),
            Refused::Concurrency
        );
        drop(a);
        assert!(limits.admit(Some(Rpc::GetAccessToken)).is_ok());
    }

    #[test]
    fn begin_authorization_has_its_own_rate_even_without_other_limits() {
        let limits = Limits::new(
            1000,
            None,
            None,
            Rate {
                per_second: 1,
                burst: 2,
            },
        );
        for _ in 0..2 {
            drop(limits.admit(Some(Rpc::BeginAuthorization)).unwrap());
        }
        assert!(matches!(
            limits.admit(Some(Rpc::BeginAuthorization)),
            Err(Refused::Rate(_))
        ));
        // Other calls are not slowed down by it.
        for _ in 0..100 {
            drop(limits.admit(Some(Rpc::GetAccessToken)).unwrap());
            drop(limits.admit(None).unwrap());
        }
    }
}
