//! When to try connecting again: exponential backoff with full jitter (a uniform draw
//! between zero and the current cap, the cap doubling per failure up to a maximum), so that
//! many clients cut off together do not come back together. The attempt count starts over
//! only after a connection has lasted long enough to count as healthy: a server that accepts
//! and at once drops every connection must not be hammered at the initial delay.

use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// A connection that lasted this long resets the backoff.
    pub healthy_after_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { initial_ms: 100, max_ms: 10_000, healthy_after_ms: 5_000 }
    }
}

#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    /// Failures since the last healthy connection.
    failures: u32,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff { config, failures: 0 }
    }

    /// The cap of the next draw, in ms.
    pub fn cap_ms(&self) -> u64 {
        let doubled = self.config.initial_ms.saturating_mul(1u64.checked_shl(self.failures).unwrap_or(u64::MAX));
        doubled.min(self.config.max_ms)
    }

    /// The wait before the next attempt, in ms, after a connection that lasted `lasted_ms`
    /// (0 when it never opened).
    pub fn next_delay_ms(&mut self, lasted_ms: u64, rng: &mut impl Rng) -> u64 {
        if lasted_ms >= self.config.healthy_after_ms {
            self.failures = 0;
        }
        let cap = self.cap_ms();
        self.failures = self.failures.saturating_add(1);
        rng.gen_range(0..=cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn caps_double_to_the_maximum_and_draws_stay_under_them() {
        let config = BackoffConfig { initial_ms: 100, max_ms: 1_000, healthy_after_ms: 5_000 };
        let mut backoff = Backoff::new(config);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut caps = Vec::new();
        for _ in 0..6 {
            let cap = backoff.cap_ms();
            caps.push(cap);
            assert!(backoff.next_delay_ms(0, &mut rng) <= cap);
        }
        assert_eq!(caps, [100, 200, 400, 800, 1_000, 1_000]);
        // Full jitter: draws spread over the whole range, not bunched at the cap.
        let draws: Vec<u64> = (0..200).map(|_| backoff.next_delay_ms(0, &mut rng)).collect();
        assert!(draws.iter().any(|&d| d < 250) && draws.iter().any(|&d| d > 750), "draws do not spread: {draws:?}");
    }

    #[test]
    fn only_a_healthy_connection_starts_the_backoff_over() {
        let mut backoff = Backoff::new(BackoffConfig { initial_ms: 100, max_ms: 10_000, healthy_after_ms: 5_000 });
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..3 {
            backoff.next_delay_ms(0, &mut rng);
        }
        backoff.next_delay_ms(4_999, &mut rng);
        assert_eq!(backoff.cap_ms(), 1_600, "a short connection is one more failure");
        backoff.next_delay_ms(5_000, &mut rng);
        assert_eq!(backoff.cap_ms(), 200, "a healthy one starts over (this failure counted)");
        let mut huge = Backoff::new(BackoffConfig { initial_ms: 100, max_ms: u64::MAX, healthy_after_ms: 1 });
        for _ in 0..100 {
            huge.next_delay_ms(0, &mut rng);
        }
        assert_eq!(huge.cap_ms(), u64::MAX, "no overflow after many failures");
    }
}
