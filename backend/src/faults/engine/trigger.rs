//! When a fault fires: its trigger, evaluated once per opportunity (a match, or a
//! scheduled moment of a time-driven fault).

use std::time::Duration;

use super::draw::{draw, unit, STREAM_PROBABILITY};
use crate::faults::plan::Trigger;

/// Trigger evaluation: state, window, after, every, times, probability (plan.rs documents
/// the order). Counts the opportunity and the firing.
pub(super) fn trigger_fires(
    t: &Trigger,
    id: u32,
    seen: &mut u64,
    fired: &mut u64,
    state: u32,
    seed: u64,
    now: Duration,
) -> bool {
    if t.state.is_some_and(|s| s != state) {
        return false;
    }
    if t.window
        .is_some_and(|(start, end)| now < start || now >= end)
    {
        return false;
    }
    *seen += 1;
    if *seen <= t.after {
        return false;
    }
    if t.every
        .is_some_and(|n| !(*seen - t.after).is_multiple_of(n))
    {
        return false;
    }
    if t.times.is_some_and(|max| *fired >= max) {
        return false;
    }
    if t.probability
        .is_some_and(|p| unit(draw(seed, id, *seen, STREAM_PROBABILITY)) >= p)
    {
        return false;
    }
    *fired += 1;
    true
}
