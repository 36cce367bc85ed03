//! Reconnect delays: exponential backoff with full jitter, floored by the server's
//! `retry_after_ms`.
//!
//! Full jitter (a uniform draw in `[0, ceiling)`) spreads a crowd of clients that lost their
//! node at the same instant over the whole window instead of bunching them at its end. A
//! dispatcher may ask for less jitter (see [`Backoff::adopt`]).

use std::time::Duration;

use rand::Rng;

use crate::ReconnectPolicy;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// The random part of a delay, from 0 (always the ceiling) to 1 (full jitter).
    jitter: f64,
    /// Attempts since the last reset.
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: &ReconnectPolicy) -> Self {
        Backoff {
            initial: policy.initial,
            max: policy.max,
            jitter: 1.0,
            attempt: 0,
        }
    }

    /// Switches to the parameters a dispatcher gave, keeping the attempt count. Values out of
    /// range are clamped (`initial` at least 1 ms, `max` at least `initial`, `jitter` within
    /// `[0, 1]`), so that a broken answer cannot make the client spin.
    pub fn adopt(&mut self, initial: Duration, max: Duration, jitter: f64) {
        self.initial = initial.max(Duration::from_millis(1));
        self.max = max.max(self.initial);
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            1.0
        };
    }

    /// The largest ceiling.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Back to the first, shortest ceiling (after a connection that stayed up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next delay: `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt: uniform in `[(1 - jitter) * ceiling, ceiling)`
    /// (`[0, ceiling)` with full jitter), but at least `retry_after` (the server's word wins,
    /// even above `max`). Advances the attempt count.
    pub fn next_delay(&mut self, retry_after: Duration, rng: &mut impl Rng) -> Duration {
        let jittered = self
            .ceiling()
            .mul_f64(1.0 - self.jitter * rng.random::<f64>());
        self.attempt = self.attempt.saturating_add(1);
        jittered.max(retry_after)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy(initial_ms: u64, max_ms: u64) -> ReconnectPolicy {
        ReconnectPolicy {
            enabled: true,
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_max() {
        let mut b = Backoff::new(&policy(100, 1000));
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(Duration::ZERO, &mut rng);
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(&policy(1, 60_000));
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..1000 {
            assert!(b.next_delay(Duration::ZERO, &mut rng) < Duration::from_secs(60));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn delays_stay_within_bounds_and_are_jittered() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut delays = Vec::new();
        for _ in 0..200 {
            let mut b = Backoff::new(&policy(100, 1000));
            for _ in 0..3 {
                b.next_delay(Duration::ZERO, &mut rng);
            }
            // Fourth attempt: ceiling 800 ms.
            let d = b.next_delay(Duration::ZERO, &mut rng);
            assert!(d < Duration::from_millis(800), "{d:?}");
            delays.push(d);
        }
        // Full jitter: spread over the whole window, not bunched at one end.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(600)));
        delays.sort_unstable();
        delays.dedup();
        assert!(delays.len() > 150, "only {} distinct delays", delays.len());
    }

    #[test]
    fn adopted_parameters_replace_the_policy_and_are_clamped() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut b = Backoff::new(&policy(100, 1000));
        b.next_delay(Duration::ZERO, &mut rng);
        b.adopt(Duration::from_millis(40), Duration::from_millis(100), 0.25);
        assert_eq!(
            b.ceiling(),
            Duration::from_millis(80),
            "the attempt count is kept"
        );
        b.next_delay(Duration::ZERO, &mut rng);
        for _ in 0..50 {
            let d = b.next_delay(Duration::ZERO, &mut rng);
            // Ceiling 100 ms from here on, a quarter of it random.
            assert!(
                d > Duration::from_millis(74) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
        b.adopt(Duration::ZERO, Duration::ZERO, f64::NAN);
        assert_eq!(
            (b.ceiling(), b.max()),
            (Duration::from_millis(1), Duration::from_millis(1))
        );
        b.adopt(Duration::from_millis(10), Duration::from_millis(10), 0.0);
        assert_eq!(
            b.next_delay(Duration::ZERO, &mut rng),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut b = Backoff::new(&policy(100, 1000));
        for _ in 0..50 {
            let d = b.next_delay(Duration::from_millis(300), &mut rng);
            assert!(d >= Duration::from_millis(300), "{d:?}");
            assert!(d < Duration::from_millis(1000), "{d:?}");
        }
        // Above max, the server still wins.
        let d = b.next_delay(Duration::from_secs(5), &mut rng);
        assert_eq!(d, Duration::from_secs(5));
    }
}
