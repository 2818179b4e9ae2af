//! The engine's one backoff policy: pauses that double from `initial` up to `max_delay`, each
//! lengthened by up to a fifth at random (so that retries of many failures spread out), for at
//! most `max_attempts` attempts. A saga step that times out, a consumer's failing message, an
//! outside-world participant's failed call, the relay while its transport is away and a
//! process waiting for its database at start-up all wait by it.

use std::time::Duration;

/// Attempt n+1 follows attempt n after `initial × 2^(n-1)`, capped at `max_delay`, plus up to
/// 20 % jitter; `max_attempts` attempts in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Pause after the first failed attempt; it doubles with each further one.
    pub initial: Duration,
    /// Attempts in all, the first one included; at least 1 (`u32::MAX`: no limit).
    pub max_attempts: u32,
    /// The longest pause between two attempts, before jitter.
    pub max_delay: Duration,
}

impl Backoff {
    /// `max_attempts` attempts in all (at least one), pausing `initial` after the first failure
    /// and doubling up to 60 s.
    pub fn exponential(initial: Duration, max_attempts: u32) -> Self {
        Backoff {
            initial,
            max_attempts: max_attempts.max(1),
            max_delay: Duration::from_secs(60),
        }
    }

    /// As many attempts as it takes, pausing `initial` after the first failure and doubling up
    /// to `max_delay`.
    pub fn unlimited(initial: Duration, max_delay: Duration) -> Self {
        Backoff {
            initial,
            max_attempts: u32::MAX,
            max_delay,
        }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        Self::exponential(Duration::ZERO, 1)
    }

    /// The same policy with pauses capped at `max_delay`.
    pub fn max_delay(self, max_delay: Duration) -> Self {
        Backoff { max_delay, ..self }
    }

    /// Whether another attempt may follow attempt `attempt` (counted from 1).
    pub fn allows_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The pause after attempt `attempt` (counted from 1) failed; `jitter` is in [0, 1).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_delay);
        base + base.mul_f64(0.2 * jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay`] with a random jitter.
    pub fn random_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_jitter_adds_at_most_a_fifth() {
        let b = Backoff::unlimited(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(4, 0.0), Duration::from_millis(800));
        assert_eq!(b.delay(5, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(40, 0.0), Duration::from_secs(1));
        assert!(b.delay(1, 0.999_999) < Duration::from_millis(120));
        assert!(b.delay(1, 0.999_999) > Duration::from_micros(119_990));
        assert!(b.allows_after(1_000_000));
        let three = Backoff::exponential(Duration::from_millis(10), 3);
        assert!(three.allows_after(2) && !three.allows_after(3));
        assert!(!Backoff::none().allows_after(1));
    }
}
