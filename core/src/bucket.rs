//! A rate limit on the core's clock: a token bucket of `burst` tokens refilled at `rate_per_s`,
//! kept as one number (the generic cell rate algorithm: the time at which the bucket would be
//! full again), so it costs 8 bytes and no float.

const NS_PER_S: u64 = 1_000_000_000;

/// A limit: `rate_per_s` on average, up to `burst` at once. `rate_per_s` 0: no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub rate_per_s: u64,
    pub burst: u64,
}

impl Limit {
    pub fn is_unlimited(&self) -> bool {
        self.rate_per_s == 0
    }
}

/// One bucket's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again if nothing more is taken (ns on the core's clock).
    full_at_ns: u64,
}

impl Bucket {
    /// Takes one token at `now_ns`, or says in how many ns one will be there.
    pub fn take(&mut self, limit: Limit, now_ns: u64) -> Result<(), u64> {
        if limit.is_unlimited() {
            return Ok(());
        }
        let interval_ns = (NS_PER_S / limit.rate_per_s).max(1);
        let tolerance_ns = interval_ns.saturating_mul(limit.burst.max(1) - 1);
        let full_at_ns = self.full_at_ns.max(now_ns);
        let earliest_ns = full_at_ns.saturating_sub(tolerance_ns);
        if earliest_ns > now_ns {
            return Err(earliest_ns - now_ns);
        }
        self.full_at_ns = full_at_ns + interval_ns;
        Ok(())
    }

    /// True when the bucket is full at `now_ns` (its state says nothing then: it may go).
    pub fn is_full(&self, now_ns: u64) -> bool {
        self.full_at_ns <= now_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_a_wait_hint() {
        let limit = Limit { rate_per_s: 10, burst: 3 };
        let mut bucket = Bucket::default();
        let t0 = 5 * NS_PER_S;
        for _ in 0..3 {
            assert_eq!(bucket.take(limit, t0), Ok(()));
        }
        let wait = bucket.take(limit, t0).unwrap_err();
        assert_eq!(wait, 100_000_000, "one token every 100 ms");
        assert!(bucket.take(limit, t0 + wait).is_ok());
        assert!(bucket.take(limit, t0 + wait).is_err());
        // A second later the bucket is full again: a whole burst.
        let later = t0 + 2 * NS_PER_S;
        assert!(bucket.is_full(later));
        assert!((0..3).all(|_| bucket.take(limit, later).is_ok()));
        assert!(Bucket::default().take(Limit { rate_per_s: 0, burst: 0 }, 0).is_ok(), "0: no limit");
    }
}
