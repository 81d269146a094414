//! A log-bucketed latency histogram (HDR-style): exact below 128 ns, then 64 buckets per
//! power of two, so every value is kept within 1/64 (1.6 %). Recording is a shift, a count
//! of leading zeros and an increment.

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Indices 0..128 are exact; above, (exponent, 64 mantissas) pairs up to 2^64.
const BUCKETS: usize = ((63 - SUB_BITS as usize) << SUB_BITS) + 2 * SUB as usize;

pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        ((u64::from(shift) << SUB_BITS) + (v >> shift)) as usize
    }

    /// The lowest value of bucket `i`, and its width.
    fn bounds(i: usize) -> (u64, u64) {
        let i = i as u64;
        if i < 2 * SUB {
            return (i, 1);
        }
        let shift = (i >> SUB_BITS) - 1;
        let mantissa = (i & (SUB - 1)) + SUB;
        (mantissa << shift, 1 << shift)
    }

    /// Records one value (nanoseconds).
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, at most the maximum.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bounds(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut expected_low = 0;
        for i in 0..BUCKETS - 1 {
            let (low, width) = Histogram::bounds(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert_eq!(Histogram::index(low), i);
            assert_eq!(Histogram::index(low + width - 1), i);
            assert!(width == 1 || width * 64 <= low, "bucket {i} too wide");
            expected_low = low + width;
        }
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.count(), 10_000);
    }
}
