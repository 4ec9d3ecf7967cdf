//! What the engine decides: for a request, its delay, completion, interrupt and TMF
//! answer; for a tick, what to signal or post.

use std::time::Duration;

use super::draw::splitmix64;
use crate::faults::plan::{NewCommandPolicy, StatusOverride, TmfFailure, VirtioEvent};

/// How a command completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Completion {
    #[default]
    Normal,
    /// Never complete; only ABORT_TASK, a LU or nexus reset, or a device reset ends it.
    Lose,
    Status(StatusOverride),
    Corrupt(Corruption),
}

/// Deterministic corruption of a data buffer (reads: what the guest gets; writes: what is
/// stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corruption {
    pub seed: u64,
    /// Number of byte positions to flip (positions may repeat on tiny buffers).
    pub bytes: u32,
}

impl Corruption {
    pub fn apply(&self, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        for i in 0..u64::from(self.bytes) {
            let x = splitmix64(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let pos = (x % buf.len() as u64) as usize;
            // A zero mask would leave the byte intact.
            let mask = ((x >> 32) as u8).max(1);
            buf[pos] ^= mask;
        }
    }
}

/// How a TMF is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TmfOutcome {
    #[default]
    Normal,
    /// Answer after `duration`; meanwhile the engine applies `new_commands` to the LU
    /// (the whole target for an I_T nexus reset).
    Slow {
        duration: Duration,
        new_commands: NewCommandPolicy,
    },
    /// Never answer until a device reset.
    Hang,
    Fail(TmfFailure),
}

/// The engine's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestDecision {
    /// Wait this long before completing (zero: no delay).
    pub delay: Duration,
    pub completion: Completion,
    /// Put the completion on the used ring but do not signal the call eventfd.
    pub drop_interrupt: bool,
    pub tmf: TmfOutcome,
}

impl RequestDecision {
    pub fn is_normal(&self) -> bool {
        *self == RequestDecision::default()
    }
}

/// What a tick asks the request path to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickAction {
    /// Write the queue's call eventfd `count` times with no new used entry.
    SpuriousSignal { queue: u16, count: u32 },
    /// Put this event on the event queue.
    PostEvent(VirtioEvent),
}

/// Whether a completion signalled the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOutcome {
    Sent,
    /// A `drop-interrupt` fault suppressed it.
    SuppressedByFault,
    /// EVENT_IDX said the guest did not ask for it.
    SuppressedByEventIdx,
}
