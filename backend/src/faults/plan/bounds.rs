//! The largest value each count, rate, size and duration of a plan may have: far beyond
//! what a test needs, and small enough that no plan keeps a worker busy for ever (a
//! burst of four billion signals) or takes the clock past what it can hold. Checked when
//! the plan is read, so an error names the key's file:line:col; docs/fault-plan.md lists
//! the same bounds.

use std::ops::RangeInclusive;

use super::errors::KeyError;
use super::raw::RawFault;

/// Faults in a plan, and in the engine at once (each request looks at every one).
pub const MAX_FAULTS: usize = 1024;
/// `every`, `after`, `times`: matches counted.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// `delay_ms`, `min_ms`, `max_ms`, `duration_ms`: one hour.
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// `at_ms` and `window_ms`: a year after backend start.
pub const MAX_MOMENT_MS: u64 = 365 * 24 * 3_600_000;
/// `interval_ms`: a day.
pub const MAX_INTERVAL_MS: u64 = 24 * 3_600_000;
/// `burst`: spurious signals at one opportunity (at most 100 per millisecond).
pub const MAX_BURST: u32 = 100;
/// `bytes`: bytes a `corrupt` fault flips in one request.
pub const MAX_CORRUPT_BYTES: u32 = 4096;
/// `residual`: the most one request moves (the device's max_sectors, 0xffff blocks of 512).
pub const MAX_RESIDUAL: u32 = 0xffff * 512;
/// `alpha`, the long tail's shape.
pub const ALPHA: RangeInclusive<f64> = 0.1..=10.0;
/// `name`: bytes of a fault's name, which every trace record of it repeats.
pub const MAX_NAME_BYTES: usize = 256;

/// Refuses the first key above its bound.
pub(super) fn check(raw: &RawFault) -> Result<(), KeyError> {
    let window_end = raw.window_ms.map(|[s, e]| s.max(e));
    let limits: [(&'static str, Option<u64>, u64, &str); 13] = [
        ("every", raw.every, MAX_COUNT, " matches"),
        ("after", raw.after, MAX_COUNT, " matches"),
        ("times", raw.times, MAX_COUNT, " times"),
        ("delay_ms", raw.delay_ms, MAX_DELAY_MS, " ms (an hour)"),
        ("min_ms", raw.min_ms, MAX_DELAY_MS, " ms (an hour)"),
        ("max_ms", raw.max_ms, MAX_DELAY_MS, " ms (an hour)"),
        (
            "duration_ms",
            raw.duration_ms,
            MAX_DELAY_MS,
            " ms (an hour)",
        ),
        ("window_ms", window_end, MAX_MOMENT_MS, " ms (a year)"),
        ("at_ms", raw.at_ms, MAX_MOMENT_MS, " ms (a year)"),
        (
            "interval_ms",
            raw.interval_ms,
            MAX_INTERVAL_MS,
            " ms (a day)",
        ),
        (
            "burst",
            raw.burst.map(u64::from),
            u64::from(MAX_BURST),
            " signals",
        ),
        (
            "bytes",
            raw.bytes.map(u64::from),
            u64::from(MAX_CORRUPT_BYTES),
            " bytes",
        ),
        (
            "residual",
            raw.residual.map(u64::from),
            u64::from(MAX_RESIDUAL),
            " bytes",
        ),
    ];
    for (key, value, max, unit) in limits {
        if let Some(v) = value.filter(|&v| v > max) {
            return Err(KeyError::at(
                key,
                format!("{v} is above the limit, {max}{unit}"),
            ));
        }
    }
    if let Some(name) = raw.name.as_ref().filter(|n| n.len() > MAX_NAME_BYTES) {
        return Err(KeyError::at(
            "name",
            format!(
                "{} bytes is above the limit, {MAX_NAME_BYTES} bytes",
                name.len()
            ),
        ));
    }
    match raw.alpha {
        Some(a) if !ALPHA.contains(&a) => Err(KeyError::at(
            "alpha",
            format!("{a} is not between {} and {}", ALPHA.start(), ALPHA.end()),
        )),
        _ => Ok(()),
    }
}
