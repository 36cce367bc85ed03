//! Rate control: per app, a request limit that refuses (the API answers 429) and a pacer that
//! waits (publish and broadcast deliveries are spread over time rather than dropped); per
//! client address, a [`KeyedLimit`] on new connections, whose memory is bounded.
//!
//! All are governor's GCRA limiters on tokio's clock, so that tests can pause time.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

/// Nanoseconds since a [`TokioClock`] was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Since(u64);

impl Add<Nanos> for Since {
    type Output = Since;

    fn add(self, other: Nanos) -> Since {
        Since(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for Since {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Since(self.0.checked_sub(duration.as_u64()).unwrap_or(self.0))
    }
}

/// tokio's clock as governor's time source.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Since;

    fn now(&self) -> Since {
        Since(self.origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Since>>;

fn limiter(per_sec: NonZeroU32, burst: NonZeroU32) -> (Limiter, TokioClock) {
    let clock = TokioClock {
        origin: tokio::time::Instant::now(),
    };
    let quota = Quota::per_second(per_sec).allow_burst(burst);
    (RateLimiter::direct_with_clock(quota, clock), clock)
}

/// Refuses requests over a rate.
#[derive(Debug)]
pub struct RequestLimit {
    limiter: Limiter,
    clock: TokioClock,
}

impl RequestLimit {
    /// `None` when `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32, burst: u32) -> Option<RequestLimit> {
        let per_sec = NonZeroU32::new(per_sec)?;
        let (limiter, clock) = limiter(per_sec, NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Some(RequestLimit { limiter, clock })
    }

    /// Takes `n` requests at once (a batch of `n` pushes), or says how long until they would
    /// be allowed; `None` when `n` is more than the burst, which never allows them at once.
    pub fn check_n(&self, n: u32) -> Result<(), Option<Duration>> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Some(not_until.wait_time_from(self.clock.now()))),
            Err(_) => Err(None),
        }
    }

    /// Takes one request, or says how long until one would be allowed.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Spreads deliveries over time at a rate.
#[derive(Debug)]
pub struct Pacer {
    limiter: Limiter,
    clock: TokioClock,
    burst: NonZeroU32,
}

impl Pacer {
    /// `None` when `per_sec` is 0 (no pacing).
    pub fn new(per_sec: u32, burst: u32) -> Option<Pacer> {
        let per_sec = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let (limiter, clock) = limiter(per_sec, burst);
        Some(Pacer {
            limiter,
            clock,
            burst,
        })
    }

    /// The most deliveries one [`Pacer::take`] should ask for, so that a chunk goes out as
    /// soon as the pace allows it.
    pub fn chunk(&self) -> usize {
        self.burst.get() as usize
    }

    /// Waits until `n` more deliveries fit the pace, and takes them. Asking for more than the
    /// burst waits for it in burst-sized steps.
    pub async fn take(&self, n: usize) {
        let mut left = n;
        while left > 0 {
            let step = left.min(self.burst.get() as usize);
            // `step` is between 1 and the burst, so it is non-zero and always fits.
            let want = NonZeroU32::new(step as u32).unwrap_or(NonZeroU32::MIN);
            match self.limiter.check_n(want) {
                Ok(Ok(())) => left -= step,
                Ok(Err(not_until)) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
                }
                // Unreachable with step <= burst; taking one at a time still terminates.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    left -= 1;
                }
            }
        }
    }
}

/// A rate per key (a client address) that refuses over it, holding at most `cap` keys.
///
/// # Memory
/// Each key tracked costs one map entry (its GCRA state, a `u64`). Keys whose state is back to
/// a fresh one are forgotten by a sweep that runs at most once per [`KeyedLimit::SWEEP_EVERY`],
/// from [`KeyedLimit::check`] itself (no task). While `cap` keys are tracked, a key not among
/// them is let through untracked rather than refused, so that a flood of new addresses can
/// neither grow the map nor lock out clients it has never seen; known keys stay limited.
#[derive(Debug)]
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, CappedStore<K>, TokioClock, NoOpMiddleware<Since>>,
    clock: TokioClock,
    /// When the next sweep may run, in the clock's nanoseconds.
    next_sweep: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// The longest time between two sweeps of forgotten keys.
    pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

    /// `None` when `per_sec` is 0 (no limit). A burst of 0 counts as 1.
    pub fn new(per_sec: u32, burst: u32, cap: usize) -> Option<KeyedLimit<K>> {
        let per_sec = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        let quota = Quota::per_second(per_sec).allow_burst(burst);
        let store = CappedStore {
            map: Mutex::default(),
            cap,
        };
        Some(KeyedLimit {
            limiter: RateLimiter::new(quota, store, clock),
            clock,
            next_sweep: AtomicU64::new(0),
        })
    }

    /// Takes one for `key`, or says how long until one would be allowed.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = self.clock.now();
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now.0 >= due
            && self
                .next_sweep
                .compare_exchange(
                    due,
                    now.0.saturating_add(Self::SWEEP_EVERY.as_nanos() as u64),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let before = self.limiter.len();
            self.limiter.retain_recent();
            // Give memory back after a flood, not after every sweep.
            if self.limiter.len() < before / 4 {
                self.limiter.shrink_to_fit();
            }
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// governor's state per key, in a map that never holds more than `cap` keys.
#[derive(Debug)]
struct CappedStore<K> {
    /// Key -> its theoretical arrival time (GCRA), in the limiter's nanoseconds.
    map: Mutex<HashMap<K, u64>>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> StateStore for CappedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(key) {
            Some(tat) => {
                let (t, next) = f(Some(Nanos::from(*tat)))?;
                *tat = next.as_u64();
                Ok(t)
            }
            None => {
                // A fresh key always conforms (the burst is at least 1).
                let (t, next) = f(None)?;
                if map.len() < self.cap {
                    map.insert(key.clone(), next.as_u64());
                }
                Ok(t)
            }
        }
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for CappedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, tat| *tat > drop_below.as_u64());
    }

    fn shrink_to_fit(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_keyed_limit_refuses_each_key_past_its_burst_and_forgets_idle_keys() {
        let limit = KeyedLimit::<u32>::new(2, 3, 100).expect("a limit");
        for _ in 0..3 {
            assert_eq!(limit.check(&1), Ok(()));
        }
        let wait = limit.check(&1).expect_err("the fourth is over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500));
        // Another key has its own burst.
        assert_eq!(limit.check(&2), Ok(()));
        assert_eq!(limit.len(), 2);
        tokio::time::advance(Duration::from_secs(3)).await;
        // Both are back to fresh: the next check sweeps them, then tracks the one it takes.
        assert_eq!(limit.check(&3), Ok(()));
        assert_eq!(limit.len(), 1);
        assert!(KeyedLimit::<u32>::new(0, 3, 100).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_keyed_limit_lets_new_keys_through_untracked_and_keeps_limiting_known_ones() {
        let limit = KeyedLimit::<u32>::new(1, 1, 10).expect("a limit");
        for key in 0..10 {
            assert_eq!(limit.check(&key), Ok(()));
        }
        for key in 10..1000 {
            assert_eq!(limit.check(&key), Ok(()), "a new key past the cap");
        }
        assert_eq!(limit.len(), 10, "the map stays at its cap");
        assert!(limit.check(&0).is_err(), "a tracked key is still limited");
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_limit_refuses_past_the_burst_and_recovers() {
        let limit = RequestLimit::new(10, 5).expect("a limit");
        for _ in 0..5 {
            assert_eq!(limit.check(), Ok(()));
        }
        let wait = limit.check().expect_err("the sixth is over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        tokio::time::advance(wait).await;
        assert_eq!(limit.check(), Ok(()));
        assert!(RequestLimit::new(0, 5).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spreads_a_large_take_over_time() {
        let pacer = Pacer::new(1000, 100).expect("a pacer");
        let start = tokio::time::Instant::now();
        pacer.take(100).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst goes at once");
        pacer.take(1000).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1010),
            "1,000 more at 1,000/s took {took:?}"
        );
    }
}
