//! The engine's counters, read by the control socket's `stats`.

use crate::faults::plan::FaultKind;

/// Decisions taken, per fault kind (serialized with the kinds' plan names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KindCounts {
    pub drop_interrupt: u64,
    pub delay: u64,
    pub lose: u64,
    pub slow_tmf: u64,
    pub hang_tmf: u64,
    pub fail_tmf: u64,
    pub spurious_interrupt: u64,
    pub status: u64,
    pub event: u64,
    pub corrupt: u64,
}

impl KindCounts {
    pub fn get_mut(&mut self, kind: FaultKind) -> &mut u64 {
        match kind {
            FaultKind::DropInterrupt => &mut self.drop_interrupt,
            FaultKind::Delay => &mut self.delay,
            FaultKind::Lose => &mut self.lose,
            FaultKind::SlowTmf => &mut self.slow_tmf,
            FaultKind::HangTmf => &mut self.hang_tmf,
            FaultKind::FailTmf => &mut self.fail_tmf,
            FaultKind::SpuriousInterrupt => &mut self.spurious_interrupt,
            FaultKind::Status => &mut self.status,
            FaultKind::Event => &mut self.event,
            FaultKind::Corrupt => &mut self.corrupt,
        }
    }
}

/// Counters, read by the control socket's `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub commands: u64,
    pub tmfs: u64,
    pub an_requests: u64,
    pub completions: u64,
    /// Faults applied, per kind.
    pub fired: KindCounts,
    /// Faults that fired but lost to an earlier one deciding the same thing.
    pub shadowed: u64,
    /// Commands answered BUSY, or held, because a slow TMF was in progress on their LU.
    pub busy_during_slow_tmf: u64,
    pub held_during_slow_tmf: u64,
    pub signals_sent: u64,
    pub signals_suppressed_fault: u64,
    pub signals_suppressed_event_idx: u64,
    pub spurious_signals: u64,
    pub events_posted: u64,
    /// Events that found no way onto the event queue (trace `event-lost`).
    #[serde(default)]
    pub events_lost: u64,
    pub tmfs_answered: u64,
    pub device_resets: u64,
    pub trace_errors: u64,
}
