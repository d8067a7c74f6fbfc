//! Latency histograms the core keeps as data (publish → puback, store → delivery): fixed
//! bucket bounds, so two shards' histograms add and the shell exports them unchanged.

/// Upper bounds of the buckets, in nanoseconds (50 µs to 10 s); above the last is `+Inf`.
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Counts of latencies per bucket (not cumulative; the last counts those above every bound)
/// and their sum.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub counts: [u64; LATENCY_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
}

impl LatencyHistogram {
    pub fn record(&mut self, latency_ns: u64) {
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < latency_ns);
        self.counts[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(latency_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Both histograms' counts added (a process's shards).
    pub fn plus(&self, other: &LatencyHistogram) -> LatencyHistogram {
        LatencyHistogram { counts: std::array::from_fn(|at| self.counts[at] + other.counts[at]), sum_ns: self.sum_ns.saturating_add(other.sum_ns) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_bucket_whose_bound_covers_them() {
        let mut histogram = LatencyHistogram::default();
        histogram.record(50_000); // on a bound: that bucket (le is inclusive)
        histogram.record(50_001);
        histogram.record(20_000_000_000);
        assert_eq!(histogram.counts[0], 1);
        assert_eq!(histogram.counts[1], 1);
        assert_eq!(histogram.counts[LATENCY_BOUNDS_NS.len()], 1);
        assert_eq!(histogram.sum_ns, 20_000_100_001);
        assert_eq!(histogram.plus(&histogram).count(), 6);
    }
}
