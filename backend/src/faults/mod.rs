//! The fault engine: a plan of faults (file, `--fault` shorthand, presets), deterministic
//! decisions per request and per tick, and a JSON-lines trace; the control socket
//! (`control`) changes the plan while the device runs. The request path calls
//! [`FaultEngine::on_request`] for each request and [`FaultEngine::on_tick`] from its
//! timer; it reports what it did with the `record_*` methods so that the trace shows
//! signals, completions and resets.

pub mod cli;
pub mod engine;
pub mod plan;
pub mod presets;
pub mod trace;

#[cfg(test)]
pub(crate) mod tests;

pub use engine::{
    CommandScreen, CommandShape, Completion, Corruption, EngineError, Epoch, FaultEngine,
    KindCounts, RequestDecision, RequestInfo, RequestKind, SignalOutcome, Stats, TickAction,
    TmfOutcome,
};
pub use plan::{
    DataDirection, FaultKind, FaultSpec, NewCommandPolicy, Plan, PlanError, ResetReason,
    StatusOverride, TmfFailure, TmfKind, VirtioEvent, VirtioResponse,
};
pub use trace::{Trace, TraceError, TraceEvent, TraceRecord};
