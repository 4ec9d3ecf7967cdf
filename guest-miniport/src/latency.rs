//! A fixed-size log-linear latency histogram for `no_std`: 16 buckets per power of two,
//! so a percentile is reported within 1/16 (6.25 %) of the true value.

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Exponents up to 2^40 µs (12 days); longer values land in the last bucket.
const MAX_EXPONENT: u32 = 40;
const BUCKETS: usize = ((MAX_EXPONENT - SUB_BITS + 2) as usize) * SUB as usize;

/// Counts of values (µs) in log-linear buckets, with their exact maximum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: [u32; BUCKETS],
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            total: 0,
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
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at or below which `percent` % of the values lie (bucket upper bound,
    /// never above the maximum); 0 when empty.
    pub fn percentile(&self, percent: u32) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = (self.total * u64::from(percent.min(100)))
            .div_ceil(100)
            .max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return upper_bound(i).min(self.max);
            }
        }
        self.max
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
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        let p50 = h.percentile(50);
        assert!((500..=532).contains(&p50), "{p50}");
        let p99 = h.percentile(99);
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.percentile(100), 1000);
    }
}
