//! Counter-based randomness: every draw is a function of the seed, the fault, its
//! opportunity number and the use (stream), so no fault's draws shift another's.

use std::time::Duration;

use crate::faults::plan::DelayDist;

// Separate random streams per use, so adding a draw for one use never shifts another.
pub(super) const STREAM_PROBABILITY: u64 = 1;
pub(super) const STREAM_DELAY: u64 = 2;
pub(super) const STREAM_CORRUPT: u64 = 3;

pub(super) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) fn draw(seed: u64, fault: u32, seq: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ stream.rotate_left(56)) ^ u64::from(fault)) ^ seq)
}

/// A draw as a number in [0, 1).
pub(super) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

pub(super) fn sample_delay(dist: DelayDist, x: u64) -> Duration {
    match dist {
        DelayDist::Fixed(d) => d,
        DelayDist::Uniform { min, max } => {
            let span = micros(max - min);
            min + Duration::from_micros(x % span.saturating_add(1))
        }
        DelayDist::LongTail { min, max, alpha } => {
            // Pareto: min / u^(1/alpha) with u in (0, 1], capped at max.
            let u = 1.0 - unit(x);
            let d = min.as_secs_f64() / u.powf(1.0 / alpha);
            if d.is_finite() && d < max.as_secs_f64() {
                Duration::from_secs_f64(d).max(min)
            } else {
                max
            }
        }
    }
}
pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
