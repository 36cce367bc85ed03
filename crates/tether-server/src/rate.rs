//! Per-app rate control: a request limit that refuses (the API answers 429), and a pacer that
//! waits (publish and broadcast deliveries are spread over time rather than dropped).
//!
//! Both are governor's GCRA limiters on tokio's clock, so that tests can pause time.

use std::num::NonZeroU32;
use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
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

#[cfg(test)]
mod tests {
    use super::*;

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
