//! What the timeline shows, gathered from the trace and the guest's timeline line: a bar
//! per request and TMF, packed into rows, the signals, events and device resets.

use std::collections::{BTreeMap, HashMap};

use flakyhba_backend::faults::trace::TraceEvent;
use plotters::style::RGBColor;

use super::{BUSY, CHECK_CONDITION, MAX_ROWS, NEVER, NOT_OK, OK, ROUTINE_COLORS, TMF};
use crate::scenario::metrics::{GuestTimeline, Trace, FIRST_REQUEST_QUEUE};

/// A bar on the time axis, in ms.
#[derive(Clone, Debug)]
pub(super) struct Bar {
    pub(super) start: f64,
    pub(super) end: Option<f64>,
    pub(super) color: RGBColor,
    pub(super) label: Option<String>,
}

/// Greedy interval packing: each bar goes to the first row free at its start.
pub(super) fn pack(bars: &[Bar], end_of_time: f64, min_width: f64) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..bars.len()).collect();
    order.sort_by(|&a, &b| bars[a].start.total_cmp(&bars[b].start));
    let mut row_end: Vec<f64> = Vec::new();
    let mut rows = vec![0; bars.len()];
    for i in order {
        let b = &bars[i];
        let end = b.end.unwrap_or(end_of_time).max(b.start + min_width);
        let row = match row_end.iter().position(|&e| e <= b.start) {
            Some(r) => r,
            None if row_end.len() < MAX_ROWS => {
                row_end.push(f64::NEG_INFINITY);
                row_end.len() - 1
            }
            None => MAX_ROWS - 1,
        };
        row_end[row] = row_end[row].max(end);
        rows[i] = row;
    }
    (rows, row_end.len().max(1))
}

fn request_color(response: &str, status: Option<u8>) -> RGBColor {
    match (response, status) {
        ("ok", Some(0) | None) => OK,
        ("ok", Some(2)) => CHECK_CONDITION,
        // BUSY, TASK SET FULL
        ("ok", Some(0x08 | 0x28)) => BUSY,
        _ => NOT_OK,
    }
}

/// A request queue's requests and the signals on it.
pub(super) struct Queue {
    pub(super) bars: Vec<Bar>,
    /// (time, bar index) of suppressed signals.
    pub(super) suppressed_fault: Vec<(f64, usize)>,
    pub(super) suppressed_event_idx: Vec<(f64, usize)>,
    pub(super) spurious: Vec<f64>,
}

impl Queue {
    pub(super) fn new() -> Queue {
        Queue {
            bars: Vec::new(),
            suppressed_fault: Vec::new(),
            suppressed_event_idx: Vec::new(),
            spurious: Vec::new(),
        }
    }
}

/// What the picture shows, gathered from the trace.
pub(super) struct Picture {
    pub(super) queues: BTreeMap<u16, Queue>,
    pub(super) tmfs: Vec<Bar>,
    pub(super) events: Vec<(f64, String)>,
    pub(super) device_resets: Vec<f64>,
    /// The last record's time, in ms since the first request.
    pub(super) end: f64,
}

/// What `trace` shows, in ms since the trace time `origin_us`.
pub(super) fn gather(trace: &Trace, origin_us: u64) -> Picture {
    let t = |us: u64| (us as f64 - origin_us as f64) / 1000.0;
    let mut p = Picture {
        queues: BTreeMap::new(),
        tmfs: Vec::new(),
        events: Vec::new(),
        device_resets: Vec::new(),
        end: 0.0,
    };
    let mut open: HashMap<(u16, u64), usize> = HashMap::new();
    let mut latest: HashMap<(u16, u64), usize> = HashMap::new();
    let mut open_tmfs: HashMap<(u16, u64), usize> = HashMap::new();
    for r in &trace.records {
        let now = t(r.t_us);
        p.end = p.end.max(now);
        match &r.event {
            TraceEvent::Request { queue, id, .. } if *queue >= FIRST_REQUEST_QUEUE => {
                let q = p.queues.entry(*queue).or_insert_with(Queue::new);
                q.bars.push(Bar {
                    start: now,
                    end: None,
                    color: NEVER,
                    label: None,
                });
                open.insert((*queue, *id), q.bars.len() - 1);
                latest.insert((*queue, *id), q.bars.len() - 1);
            }
            TraceEvent::Complete {
                queue,
                id,
                response,
                status,
                ..
            } => {
                if let Some(i) = open.remove(&(*queue, *id)) {
                    let q = p.queues.get_mut(queue).expect("opened above");
                    q.bars[i].end = Some(now);
                    q.bars[i].color = request_color(response, *status);
                }
            }
            TraceEvent::SignalSuppressed { queue, id, reason } => {
                let Some(&i) = id.and_then(|id| latest.get(&(*queue, id))) else {
                    continue;
                };
                let q = p.queues.get_mut(queue).expect("a request was seen");
                if reason == "fault" {
                    q.suppressed_fault.push((now, i));
                } else {
                    q.suppressed_event_idx.push((now, i));
                }
            }
            // Time-driven records before the first request fall left of the axis.
            TraceEvent::SpuriousSignal { .. } | TraceEvent::Event { .. } if now < 0.0 => {}
            TraceEvent::SpuriousSignal { queue, .. } => p
                .queues
                .entry((*queue).max(FIRST_REQUEST_QUEUE))
                .or_insert_with(Queue::new)
                .spurious
                .push(now),
            TraceEvent::TmfStart { queue, id, tmf, .. } => {
                p.tmfs.push(Bar {
                    start: now,
                    end: None,
                    color: NEVER,
                    label: Some(tmf.to_string()),
                });
                open_tmfs.insert((*queue, *id), p.tmfs.len() - 1);
            }
            TraceEvent::TmfEnd {
                queue,
                id,
                response,
            } => {
                if let Some(i) = open_tmfs.remove(&(*queue, *id)) {
                    p.tmfs[i].end = Some(now);
                    p.tmfs[i].color = TMF;
                    if let Some(l) = &mut p.tmfs[i].label {
                        l.push_str(&format!(" → {response}"));
                    }
                }
            }
            TraceEvent::DeviceReset {} => p.device_resets.push(now),
            TraceEvent::Event { event, detail, .. } => p.events.push((
                now,
                match detail {
                    Some(d) => format!("{event} ({d})"),
                    None => event.to_string(),
                },
            )),
            _ => {}
        }
    }
    for b in &mut p.tmfs {
        if b.end.is_none() {
            if let Some(l) = &mut b.label {
                l.push_str(" (never answered)");
            }
        }
    }
    p
}

/// The guest's timeline on the trace's clock, in ms since the trace's first request.
pub(super) struct GuestSide {
    pub(super) polls: Vec<(f64, u64)>,
    pub(super) resets: Vec<(f64, f64)>,
    /// Routine calls: a bar on the band of the CPU that ran it, coloured by routine.
    pub(super) calls: Vec<(Bar, usize)>,
    /// CPUs with a band: up to the highest that ran a call.
    pub(super) cpus: usize,
}

impl GuestSide {
    /// `guest`'s times moved onto the trace's clock: `first` is the guest's time of the
    /// trace's first request.
    pub(super) fn new(guest: &GuestTimeline, first: u64) -> GuestSide {
        let t = |us: u64| (us as f64 - first as f64) / 1000.0;
        GuestSide {
            polls: guest
                .polls
                .iter()
                .map(|&(at, found)| (t(at), found))
                .collect(),
            resets: guest.resets.iter().map(|&(a, b)| (t(a), t(b))).collect(),
            calls: guest
                .calls
                .iter()
                .map(|&(at, us, routine, cpu)| {
                    let bar = Bar {
                        start: t(at),
                        end: Some(t(at + us)),
                        color: routine_color(routine),
                        label: None,
                    };
                    (bar, cpu)
                })
                .collect(),
            cpus: guest.calls.iter().map(|c| c.3 + 1).max().unwrap_or(0),
        }
    }

    /// When the guest's last poll, reset or routine call ended.
    pub(super) fn end(&self) -> f64 {
        let polls = self.polls.iter().map(|p| p.0);
        let resets = self.resets.iter().map(|r| r.1);
        let calls = self.calls.iter().filter_map(|c| c.0.end);
        polls
            .chain(resets)
            .chain(calls)
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The colour of routine `routine` (an index into `timeline_fields::CALL_ROUTINES`).
pub(super) fn routine_color(routine: usize) -> RGBColor {
    ROUTINE_COLORS
        .get(routine)
        .copied()
        .unwrap_or(ROUTINE_COLORS[ROUTINE_COLORS.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_bars_get_their_own_rows() {
        let bar = |start, end| Bar {
            start,
            end: Some(end),
            color: OK,
            label: None,
        };
        let bars = [
            bar(0.0, 10.0),
            bar(1.0, 2.0),
            bar(3.0, 4.0),
            bar(11.0, 12.0),
        ];
        let (rows, count) = pack(&bars, 20.0, 0.1);
        assert_eq!(rows, [0, 1, 1, 0]);
        assert_eq!(count, 2);
        // A never-ending bar occupies its row to the end.
        let open = [
            Bar {
                end: None,
                ..bar(0.0, 0.0)
            },
            bar(5.0, 6.0),
        ];
        assert_eq!(pack(&open, 20.0, 0.1).0, [0, 1]);
    }
}
