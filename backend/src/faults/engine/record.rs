//! What the request path reports back: completions, signals, TMF answers and events,
//! counted and (with a trace) written as records.

use std::borrow::Cow;
use std::time::Duration;

use super::draw::micros;
use super::{FaultEngine, SignalOutcome, Stats};
use crate::errors::error_chain;
use crate::faults::plan::VirtioEvent;
use crate::faults::trace::{Trace, TraceEvent, TraceRecord};

/// Write one trace record if tracing; an I/O error is counted and logged once, never fatal.
pub(super) fn emit(
    trace: &mut Option<Trace>,
    stats: &mut Stats,
    now: Duration,
    event: TraceEvent<'_>,
) {
    if let Some(t) = trace {
        if let Err(e) = t.write(&TraceRecord {
            t_us: micros(now),
            event,
        }) {
            if stats.trace_errors == 0 {
                log::error!("{}; further trace errors are only counted", error_chain(&e));
            }
            stats.trace_errors += 1;
        }
    }
}

impl FaultEngine {
    /// A request went onto the used ring. `response` is the virtio response's name.
    pub fn record_complete(
        &mut self,
        queue: u16,
        id: u64,
        response: &str,
        status: Option<u8>,
        residual: Option<u32>,
        now: Duration,
    ) {
        self.stats.completions += 1;
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::Complete {
                queue,
                id,
                response: response.into(),
                status,
                residual,
            },
        );
    }

    /// Whether the guest was signalled for a completion (`id`, when known).
    pub fn record_signal(
        &mut self,
        queue: u16,
        id: Option<u64>,
        outcome: SignalOutcome,
        now: Duration,
    ) {
        let event = match outcome {
            SignalOutcome::Sent => {
                self.stats.signals_sent += 1;
                TraceEvent::Signal { queue, id }
            }
            SignalOutcome::SuppressedByFault => {
                self.stats.signals_suppressed_fault += 1;
                TraceEvent::SignalSuppressed {
                    queue,
                    id,
                    reason: "fault".into(),
                }
            }
            SignalOutcome::SuppressedByEventIdx => {
                self.stats.signals_suppressed_event_idx += 1;
                TraceEvent::SignalSuppressed {
                    queue,
                    id,
                    reason: "event-idx".into(),
                }
            }
        };
        emit(&mut self.trace, &mut self.stats, now, event);
    }

    /// A TMF was answered (`response`: the virtio response's name).
    pub fn record_tmf_end(&mut self, queue: u16, id: u64, response: &str, now: Duration) {
        self.stats.tmfs_answered += 1;
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::TmfEnd {
                queue,
                id,
                response: response.into(),
            },
        );
    }

    /// An event went onto the event queue.
    pub fn record_event_posted(&mut self, event: &VirtioEvent, now: Duration) {
        self.stats.events_posted += 1;
        let (target, lun) = event.address();
        let detail = event_detail(event);
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::Event {
                event: event.name().into(),
                target,
                lun,
                detail,
            },
        );
    }

    /// An event could not be posted (`reason`: see the trace's `event-lost`).
    pub fn record_event_lost(&mut self, event: &VirtioEvent, reason: &'static str, now: Duration) {
        self.stats.events_lost += 1;
        let (target, lun) = event.address();
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::EventLost {
                event: event.name().into(),
                target,
                lun,
                detail: event_detail(event),
                reason: reason.into(),
            },
        );
    }
}

/// The trace's `detail` of an event: the reset reason, or asc/ascq.
fn event_detail(event: &VirtioEvent) -> Option<Cow<'static, str>> {
    match *event {
        VirtioEvent::TransportReset { reason, .. } => Some(Cow::Borrowed(reason.name())),
        VirtioEvent::ParamChange { asc, ascq, .. } => {
            Some(Cow::Owned(format!("{asc:#04x}/{ascq:#04x}")))
        }
        VirtioEvent::EventsMissed => None,
    }
}
