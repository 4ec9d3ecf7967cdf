//! A fixed-size log-linear latency histogram for `no_std` (the guest's per-path latency)
//! and for the host (the harness's load generator): 16 buckets per power of two, so a
//! percentile is reported within 1/16 (6.25 %) of the true value. Recording never
//! allocates. Values are in whatever unit the caller records (µs in the guest, ns in
//! the harness).

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Exponents up to 2^40; larger values land in the last bucket.
const MAX_EXPONENT: u32 = 40;
const BUCKETS: usize = ((MAX_EXPONENT - SUB_BITS + 2) as usize) * SUB as usize;

/// Counts of values in log-linear buckets, with their exact sum and maximum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    let v = v.min((1 << (MAX_EXPONENT + 1)) - 1);
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let mantissa = (v >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as usize) * SUB as usize + mantissa as usize
}

/// The largest value that lands in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = i / SUB + u64::from(SUB_BITS) - 1;
    let m = i % SUB;
    let width = 1u64 << (e - u64::from(SUB_BITS));
    ((SUB + m) << (e - u64::from(SUB_BITS))) + width - 1
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    /// Adds every value `other` holds.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The exact mean; 0 when empty.
    pub fn mean(&self) -> u64 {
        match self.total {
            0 => 0,
            n => (self.sum / u128::from(n)) as u64,
        }
    }

    /// The value at or below which `parts / per` of the values lie (the bucket's upper
    /// bound, never above the maximum); 0 when empty. `quantile(999, 1000)` is p99.9.
    pub fn quantile(&self, parts: u64, per: u64) -> u64 {
        if self.total == 0 || per == 0 {
            return 0;
        }
        let parts = u128::from(parts.min(per));
        let rank = (u128::from(self.total) * parts)
            .div_ceil(u128::from(per))
            .max(1);
        let mut seen = 0u128;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u128::from(c);
            if seen >= rank {
                return upper_bound(i).min(self.max);
            }
        }
        self.max
    }

    /// [`Histogram::quantile`] in percent.
    pub fn percentile(&self, percent: u64) -> u64 {
        self.quantile(percent, 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 1, 1 << 39, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= last, "{v}");
            last = i;
            if v < 1 << (MAX_EXPONENT + 1) {
                assert!(upper_bound(i) >= v, "{v}: bound {}", upper_bound(i));
                // Within 1/16 of the value.
                assert!(
                    upper_bound(i) - v <= v / 16 + 1,
                    "{v}: bound {}",
                    upper_bound(i)
                );
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50), 0);
        assert_eq!(h.mean(), 0);
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        assert_eq!(h.mean(), 500);
        let p50 = h.percentile(50);
        assert!((500..=532).contains(&p50), "{p50}");
        let p99 = h.percentile(99);
        assert!((990..=1000).contains(&p99), "{p99}");
        let p999 = h.quantile(999, 1000);
        assert!((999..=1000).contains(&p999), "{p999}");
        assert_eq!(h.percentile(100), 1000);
    }

    #[test]
    fn merged_histograms_hold_both() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 1..=100u64 {
            a.record(v * 1000);
        }
        b.record(5_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 101);
        assert_eq!(a.max(), 5_000_000);
        assert_eq!(a.percentile(100), 5_000_000);
        assert_eq!(a.mean(), (5050 * 1000 + 5_000_000) / 101);
    }
}
