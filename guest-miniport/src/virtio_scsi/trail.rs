//! What the miniport counts and keeps for the guest's report: counters, the request
//! ids the poll found, when HwTimer polled, the reset spans, and latency per path.

use crate::latency::Histogram;

use super::{MAX_POLLED_IDS, MAX_POLLS, MAX_RESET_SPANS};

/// What the miniport counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioScsiStats {
    pub completed_by_interrupt: u64,
    pub completed_by_poll: u64,
    /// `deferred=on`: completions HwDisableInterruptsCallback found when it looked at
    /// the used ring again after unmasking (they are in `completed_by_interrupt` too).
    pub completed_after_unmask: u64,
    /// Used elements that named no outstanding request; ignored (P3).
    pub stale_completions: u64,
    pub events: u64,
    pub events_missed: u64,
    pub transport_resets: u64,
    pub param_changes: u64,
    pub config_changes: u64,
    pub notifications: u64,
    pub tmfs_sent: u64,
    /// Answered FUNCTION COMPLETE or FUNCTION SUCCEEDED.
    pub tmfs_completed: u64,
    /// Answered with anything else (REJECTED, FAILED, ...).
    pub tmfs_failed: u64,
    /// Bus resets whose TMFs were not all answered within `tmf_timeout_us`.
    pub tmf_timeouts: u64,
    pub device_resets: u64,
    /// Bus resets from HwResetBus to their end (TMFs answered, or device back).
    pub resets: u64,
    pub reset_max_us: u64,
    pub reset_total_us: u64,
    /// Guest time of the first request handed to the device.
    pub first_request_us: Option<u64>,
}

/// What the miniport keeps for the report: which requests the poll found, when HwTimer
/// polled, and the reset spans.
#[derive(Clone, Debug)]
pub struct Trail {
    pub(super) polled_ids: [u64; MAX_POLLED_IDS],
    pub(super) polled_len: usize,
    pub(super) polls: [(u64, u16); MAX_POLLS],
    pub(super) polls_len: usize,
    pub(super) resets: [(u64, u64); MAX_RESET_SPANS],
    pub(super) resets_len: usize,
    pub(super) truncated: bool,
    /// Latency from HwStartIo to the completion found, per completion path.
    pub latency_interrupt: Histogram,
    pub latency_poll: Histogram,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            polled_ids: [0; MAX_POLLED_IDS],
            polled_len: 0,
            polls: [(0, 0); MAX_POLLS],
            polls_len: 0,
            resets: [(0, 0); MAX_RESET_SPANS],
            resets_len: 0,
            truncated: false,
            latency_interrupt: Histogram::default(),
            latency_poll: Histogram::default(),
        }
    }
}

pub(super) fn push<T: Copy>(list: &mut [T], len: &mut usize, truncated: &mut bool, v: T) {
    match list.get_mut(*len) {
        Some(e) => {
            *e = v;
            *len += 1;
        }
        None => *truncated = true,
    }
}

impl Trail {
    /// Virtio request ids of the first completions the HwTimer poll found.
    pub fn polled_ids(&self) -> &[u64] {
        &self.polled_ids[..self.polled_len]
    }
    /// HwTimer calls that polled the request queue: (guest µs, completions found).
    pub fn polls(&self) -> &[(u64, u16)] {
        &self.polls[..self.polls_len]
    }
    /// Bus resets: (start µs, end µs).
    pub fn resets(&self) -> &[(u64, u64)] {
        &self.resets[..self.resets_len]
    }
    /// Some list was full and dropped entries.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}
