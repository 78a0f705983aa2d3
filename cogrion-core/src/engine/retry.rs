//! How transient failures are retried.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter, bounded in attempts.
///
/// Attempt `n` (from 1) that fails transiently waits a random delay in
/// `[0, min(max_delay, initial_delay × 2^(n-1))]`, or longer if the error asked
/// for it (`Retry-After`, a held lease); after `max_attempts` failed attempts the
/// step fails for good with [`Error::Exhausted`](crate::Error::Exhausted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts before giving up (at least 1).
    pub max_attempts: u32,
    /// The ceiling of the first wait.
    pub initial_delay: Duration,
    /// The ceiling of any wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// A policy with these bounds.
    pub fn new(max_attempts: u32, initial_delay: Duration, max_delay: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay,
            max_delay,
        }
    }

    /// The wait after failed attempt `attempt` (from 1), drawn from `rng`, at least
    /// `at_least`.
    pub fn delay(&self, attempt: u32, at_least: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let exp = self.initial_delay.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let ceiling = exp.min(self.max_delay);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.random_range(0..=millis));
        jittered.max(at_least.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_are_bounded_and_grow() {
        let p = RetryPolicy::new(8, Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=20 {
            let ceiling = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_secs(2));
            for _ in 0..50 {
                assert!(p.delay(attempt, None, &mut rng) <= ceiling);
            }
        }
        assert!(p.delay(1, Some(Duration::from_secs(9)), &mut rng) >= Duration::from_secs(9));
        // Full jitter spreads a thundering herd: not all the same.
        let spread: std::collections::BTreeSet<_> =
            (0..50).map(|_| p.delay(5, None, &mut rng)).collect();
        assert!(spread.len() > 10);
    }
}
