//! The one backoff of orch: waits that double from a first delay up to a cap, optionally
//! spread by a random jitter so that many clients that failed together do not come back
//! together. Task retries, exchange and warehouse requests, stream reconnects, stream
//! restarts and metadata writes all wait this way.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// Each wait is multiplied by a random factor in `1 ± jitter`.
    jitter: f64,
}

impl Backoff {
    /// Waits of `first`, `2 × first`, `4 × first`, ... up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            jitter: 0.0,
        }
    }

    /// The same waits, each spread by up to `fraction` either way (0.25: ±25%).
    pub const fn with_jitter(self, fraction: f64) -> Backoff {
        Backoff {
            jitter: fraction,
            ..self
        }
    }

    /// The wait before retry `n`, counted from 1.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2_u32.saturating_pow(n.saturating_sub(1));
        let delay = self.first.saturating_mul(factor).min(self.max);
        if self.jitter > 0.0 {
            delay.mul_f64(rand::rng().random_range(1.0 - self.jitter..1.0 + self.jitter))
        } else {
            delay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_without_overflow() {
        let backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=5).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60]);
        assert_eq!(backoff.delay(500), Duration::from_secs(60));
        assert_eq!(backoff.delay(0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_spreads_each_wait_within_its_fraction() {
        let backoff =
            Backoff::new(Duration::from_secs(8), Duration::from_secs(60)).with_jitter(0.25);
        for _ in 0..100 {
            let wait = backoff.delay(1);
            assert!(
                wait >= Duration::from_secs(6) && wait <= Duration::from_secs(10),
                "{wait:?}"
            );
        }
    }
}
