//! Determinism (same plan, seed and requests: same decisions and trace) and the trace's
//! records.

use crate::faults::engine::*;
use crate::faults::plan::*;
use crate::faults::tests::{engine, ms, read, write, SharedBuf};
use crate::faults::trace::{parse_line, Trace, TraceEvent};

const MIXED_PLAN: &str = r#"
seed = 1234
allow_corruption = true

[[fault]]
kind = "drop-interrupt"
probability = 0.3

[[fault]]
kind = "delay"
distribution = "long-tail"
min_ms = 1
max_ms = 50
probability = 0.5

[[fault]]
kind = "status"
status = "busy"
opcode = "write-10"
probability = 0.1

[[fault]]
kind = "corrupt"
opcode = "read-10"
probability = 0.05

[[fault]]
kind = "slow-tmf"
tmf = "lu-reset"
duration_ms = 3

[[fault]]
kind = "spurious-interrupt"
interval_ms = 7
probability = 0.5
"#;

/// Drive an engine through a fixed request sequence with a fake clock; return the
/// decisions, tick actions and trace text.
fn run_script(seed: Option<u64>) -> (Vec<RequestDecision>, Vec<TickAction>, String) {
    let buf = SharedBuf::default();
    let mut e = engine(MIXED_PLAN);
    if let Some(s) = seed {
        e.set_seed(s);
    }
    e.set_trace(Some(Trace::to_writer(Box::new(buf.clone()))));
    let mut decisions = Vec::new();
    let mut ticks = Vec::new();
    for i in 0..400u64 {
        let now = Duration::from_micros(i * 1500);
        let req = match i % 5 {
            0 | 1 => read(i, i * 8),
            2 | 3 => write(i, i * 8),
            _ => RequestInfo::tmf(0, i, TmfKind::LogicalUnitReset, 0, 0),
        };
        let d = e.on_request(&req, now);
        decisions.push(d);
        let outcome = if d.drop_interrupt {
            SignalOutcome::SuppressedByFault
        } else {
            SignalOutcome::Sent
        };
        e.record_complete(req.queue, req.id, "ok", Some(0), None, now + d.delay);
        e.record_signal(req.queue, Some(req.id), outcome, now + d.delay);
        ticks.extend(e.on_tick(now));
    }
    e.on_device_reset(ms(700));
    e.flush_trace().unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (decisions, ticks, text)
}

#[test]
fn same_plan_seed_and_requests_give_same_decisions_and_trace() {
    let first = run_script(None);
    let second = run_script(None);
    assert_eq!(first.0, second.0);
    assert_eq!(first.1, second.1);
    assert_eq!(first.2, second.2, "trace bytes differ");
    // The script exercises every kind in the plan.
    assert!(first.0.iter().any(|d| d.drop_interrupt));
    assert!(first
        .0
        .iter()
        .any(|d| matches!(d.completion, Completion::Corrupt(_))));
    assert!(first
        .0
        .iter()
        .any(|d| matches!(d.tmf, TmfOutcome::Slow { .. })));
    assert!(first
        .0
        .iter()
        .any(|d| d.completion == Completion::Status(StatusOverride::Busy)));
    assert!(!first.1.is_empty());
    // Another seed decides differently.
    let other = run_script(Some(99));
    assert_ne!(first.0, other.0);
}

#[test]
fn trace_lines_parse_and_cover_the_events() {
    let (_, _, text) = run_script(None);
    let mut seen = std::collections::BTreeSet::new();
    let mut last_t = 0;
    for line in text.lines() {
        let rec = parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        seen.insert(v["ev"].as_str().unwrap().to_owned());
        if matches!(rec.event, TraceEvent::Request { .. }) {
            assert!(rec.t_us >= last_t, "arrivals are in time order");
            last_t = rec.t_us;
        }
    }
    for ev in [
        "request",
        "complete",
        "fault",
        "signal",
        "signal-suppressed",
        "spurious-signal",
        "tmf-start",
        "device-reset",
    ] {
        assert!(seen.contains(ev), "no `{ev}` record in the trace");
    }
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        r#"{"t_us":0,"ev":"request","queue":2,"id":0,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":0,"blocks":8,"dir":"read"}"#
    );
}
