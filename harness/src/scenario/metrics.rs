//! The metrics of a scenario run, by path: `guest.*` from the guest's result line,
//! `trace.*` from the backend's trace, `image.*` from the harness's own look at the disk
//! image, `args.*` from the guest arguments and `run.*` from the harness. Expectations
//! (scenario::expect) are judged on them; docs/scenarios.md lists every name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use flakyhba_backend::faults::trace::{parse_line, TraceEvent, TraceRecord};
use guest_miniport::contract::{result_fields as f, timeline_fields as tf, GuestArgs};
use serde_json::{Map, Number, Value};

use super::expect::Metrics;
use super::image::ImageCheck;

pub use flakyhba_backend::virtio::FIRST_REQUEST_QUEUE;

/// A parsed trace; lines that are not records are kept for the report.
#[derive(Debug, Default)]
pub struct Trace {
    pub records: Vec<TraceRecord<'static>>,
    /// (1-based line number, the parse error) of lines that are not records.
    pub bad_lines: Vec<(usize, String)>,
}

impl Trace {
    pub fn parse(text: &str) -> Trace {
        let mut trace = Trace::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Ok(r) => trace.records.push(r),
                Err(e) => trace.bad_lines.push((n + 1, e.to_string())),
            }
        }
        trace
    }

    /// A missing file is an empty trace (the backend never started, or wrote nothing).
    pub fn read(path: &Path) -> std::io::Result<Trace> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Trace::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Trace::default()),
            Err(e) => Err(e),
        }
    }

    /// `t_us` of the first `request` record: where the guest's I/O begins.
    pub fn first_request_us(&self) -> Option<u64> {
        self.records.iter().find_map(|r| match r.event {
            TraceEvent::Request { .. } => Some(r.t_us),
            _ => None,
        })
    }
}

/// Milliseconds with microsecond precision, as a JSON number.
pub fn ms(us: u64) -> Value {
    Number::from_f64(us as f64 / 1000.0).map_or(Value::Null, Value::Number)
}

fn set(items: &BTreeSet<u64>) -> Value {
    Value::Array(items.iter().map(|&i| Value::from(i)).collect())
}

#[derive(Default)]
struct Span {
    min_us: Option<u64>,
    max_us: Option<u64>,
}

impl Span {
    fn add(&mut self, us: u64) {
        self.min_us = Some(self.min_us.map_or(us, |m| m.min(us)));
        self.max_us = Some(self.max_us.map_or(us, |m| m.max(us)));
    }

    fn insert(&self, m: &mut Metrics, prefix: &str) {
        if let (Some(min), Some(max)) = (self.min_us, self.max_us) {
            m.insert(format!("{prefix}min_ms"), ms(min));
            m.insert(format!("{prefix}max_ms"), ms(max));
        }
    }
}

#[derive(Default)]
struct FaultStats {
    fired: u64,
    ids: BTreeSet<u64>,
    lbas: BTreeSet<u64>,
    latency: Span,
}

/// One request of the trace, from its `request` record to its `complete` record.
struct Pending {
    t_us: u64,
    lba: Option<u64>,
    /// Kinds of the (unshadowed) faults that fired on it.
    faults: Vec<String>,
}

fn count(m: &mut Metrics, key: String) {
    let v = m.entry(key).or_insert(Value::from(0u64));
    *v = Value::from(v.as_u64().unwrap_or(0) + 1);
}

/// Every `trace.*` metric.
pub fn trace_metrics(trace: &Trace) -> Metrics {
    let mut tally = Tally::new(&trace.records);
    for (i, r) in trace.records.iter().enumerate() {
        tally.add(i, r);
    }
    tally.into_metrics(trace)
}

/// Suppressed signals of one reason: how many, and the request ids they were for.
#[derive(Default)]
struct Suppressed {
    count: u64,
    ids: BTreeSet<u64>,
}

/// What [`trace_metrics`] counts, record by record.
#[derive(Default)]
struct Tally {
    /// The counts kept by name as they come (responses, statuses, events).
    m: Metrics,
    /// Index of the first `request` record.
    first_request: Option<usize>,
    /// Index of the last record that is not a device reset.
    last_other: Option<usize>,
    requests: u64,
    completions: u64,
    signals: u64,
    suppressed_fault: Suppressed,
    suppressed_event_idx: Suppressed,
    spurious: u64,
    device_resets: u64,
    device_resets_total: u64,
    tmfs: u64,
    tmf_open: HashMap<(u16, u64), (String, u64)>,
    tmf_spans: BTreeMap<String, (u64, Span)>,
    faults: BTreeMap<String, FaultStats>,
    shadowed: u64,
    events: u64,
    events_lost: u64,
    pending: HashMap<(u16, u64), Pending>,
    latency: Span,
}

impl Tally {
    fn new(records: &[TraceRecord<'_>]) -> Tally {
        Tally {
            first_request: records
                .iter()
                .position(|r| matches!(r.event, TraceEvent::Request { .. })),
            // Device resets when QEMU connects come before the first request; the one when
            // it disconnects comes after the last record of anything else.
            last_other: records
                .iter()
                .rposition(|r| !matches!(r.event, TraceEvent::DeviceReset {})),
            ..Tally::default()
        }
    }

    /// Record `i` of the trace.
    fn add(&mut self, i: usize, r: &TraceRecord<'_>) {
        match &r.event {
            TraceEvent::Request { queue, id, lba, .. } => {
                self.requests += 1;
                if *queue >= FIRST_REQUEST_QUEUE {
                    let p = Pending {
                        t_us: r.t_us,
                        lba: *lba,
                        faults: Vec::new(),
                    };
                    self.pending.insert((*queue, *id), p);
                }
            }
            TraceEvent::Complete {
                queue,
                id,
                response,
                status,
                ..
            } => self.complete(r.t_us, (*queue, *id), response, *status),
            TraceEvent::Fault {
                queue,
                id,
                fault,
                kind,
                shadowed,
                ..
            } => {
                if !*shadowed {
                    count(&mut self.m, format!("trace.fault.{fault}"));
                }
                self.fault(*queue, *id, kind, *shadowed)
            }
            TraceEvent::Signal { .. } => self.signals += 1,
            TraceEvent::SignalSuppressed { queue, id, reason } => {
                let s = match reason.as_ref() {
                    "fault" => &mut self.suppressed_fault,
                    _ => &mut self.suppressed_event_idx,
                };
                s.count += 1;
                if let (FIRST_REQUEST_QUEUE.., Some(id)) = (*queue, *id) {
                    s.ids.insert(id);
                }
            }
            TraceEvent::SpuriousSignal { count, .. } => self.spurious += u64::from(*count),
            TraceEvent::TmfStart { queue, id, tmf, .. } => {
                self.tmfs += 1;
                self.tmf_spans.entry(tmf.to_string()).or_default().0 += 1;
                self.tmf_open
                    .insert((*queue, *id), (tmf.to_string(), r.t_us));
            }
            TraceEvent::TmfEnd {
                queue,
                id,
                response,
            } => {
                count(&mut self.m, format!("trace.tmf_responses.{response}"));
                if let Some((tmf, start)) = self.tmf_open.remove(&(*queue, *id)) {
                    let span = &mut self.tmf_spans.entry(tmf).or_default().1;
                    span.add(r.t_us.saturating_sub(start));
                }
            }
            TraceEvent::DeviceReset {} => {
                self.device_resets_total += 1;
                let during_run = self.first_request.is_some_and(|f| i > f)
                    && self.last_other.is_some_and(|l| i < l);
                if during_run {
                    self.device_resets += 1;
                }
            }
            TraceEvent::Event { event, .. } => {
                self.events += 1;
                count(&mut self.m, format!("trace.events.{event}"));
            }
            TraceEvent::EventLost { event, reason, .. } => {
                self.events_lost += 1;
                count(&mut self.m, format!("trace.events_lost.{event}"));
                count(&mut self.m, format!("trace.events_lost_reason.{reason}"));
            }
        }
    }

    fn complete(&mut self, t_us: u64, key: (u16, u64), response: &str, status: Option<u8>) {
        self.completions += 1;
        count(&mut self.m, format!("trace.responses.{response}"));
        if let Some(s) = status {
            count(&mut self.m, format!("trace.status.{s}"));
        }
        if let Some(p) = self.pending.remove(&key) {
            let us = t_us.saturating_sub(p.t_us);
            self.latency.add(us);
            for kind in p.faults {
                self.faults.entry(kind).or_default().latency.add(us);
            }
        }
    }

    fn fault(&mut self, queue: Option<u16>, id: Option<u64>, kind: &str, shadowed: bool) {
        if shadowed {
            self.shadowed += 1;
            return;
        }
        let stats = self.faults.entry(kind.to_string()).or_default();
        stats.fired += 1;
        if let (Some(q @ FIRST_REQUEST_QUEUE..), Some(id)) = (queue, id) {
            stats.ids.insert(id);
            if let Some(p) = self.pending.get_mut(&(q, id)) {
                stats.lbas.extend(p.lba);
                p.faults.push(kind.to_string());
            }
        }
    }

    fn into_metrics(self, trace: &Trace) -> Metrics {
        let records = &trace.records;
        let mut m = self.m;
        let put = |m: &mut Metrics, k: &str, v: Value| {
            m.insert(format!("trace.{k}"), v);
        };
        put(&mut m, "records", Value::from(records.len()));
        put(&mut m, "bad_lines", Value::from(trace.bad_lines.len()));
        put(&mut m, "requests", Value::from(self.requests));
        put(&mut m, "completions", Value::from(self.completions));
        put(&mut m, "uncompleted", Value::from(self.pending.len()));
        put(&mut m, "signals", Value::from(self.signals));
        let (fault, event_idx) = (&self.suppressed_fault, &self.suppressed_event_idx);
        put(&mut m, "signals_suppressed_fault", Value::from(fault.count));
        put(
            &mut m,
            "signals_suppressed_event_idx",
            Value::from(event_idx.count),
        );
        put(&mut m, "suppressed_fault_ids", set(&fault.ids));
        put(&mut m, "suppressed_event_idx_ids", set(&event_idx.ids));
        put(&mut m, "spurious_signals", Value::from(self.spurious));
        put(&mut m, "device_resets", Value::from(self.device_resets));
        put(
            &mut m,
            "device_resets_total",
            Value::from(self.device_resets_total),
        );
        put(&mut m, "tmfs", Value::from(self.tmfs));
        put(&mut m, "tmf_unanswered", Value::from(self.tmf_open.len()));
        for (tmf, (started, span)) in &self.tmf_spans {
            put(&mut m, &format!("tmf.{tmf}.count"), Value::from(*started));
            let open = self.tmf_open.values().filter(|(t, _)| t == tmf).count();
            put(&mut m, &format!("tmf.{tmf}.unanswered"), Value::from(open));
            span.insert(&mut m, &format!("trace.tmf.{tmf}."));
        }
        for (kind, stats) in &self.faults {
            put(&mut m, &format!("faults.{kind}"), Value::from(stats.fired));
            put(&mut m, &format!("faults.{kind}.ids"), set(&stats.ids));
            put(&mut m, &format!("faults.{kind}.lbas"), set(&stats.lbas));
            stats
                .latency
                .insert(&mut m, &format!("trace.faults.{kind}.latency_"));
        }
        put(&mut m, "faults_shadowed", Value::from(self.shadowed));
        put(&mut m, "events", Value::from(self.events));
        put(&mut m, "events_lost", Value::from(self.events_lost));
        self.latency.insert(&mut m, "trace.latency_");
        if let Some(f) = self.first_request {
            let first = records[f].t_us;
            put(&mut m, "first_request_us", Value::from(first));
            let last = records.last().map_or(first, |r| r.t_us);
            put(&mut m, "duration_ms", ms(last.saturating_sub(first)));
        }
        m
    }
}

/// `guest.FIELD` for every field of the result line; an object's fields also as
/// `guest.FIELD.KEY`; and `guest.violation_rules`, the rule ids of the violations the
/// guest listed (`guest.violation_rules ~= "T5"`).
pub fn guest_metrics(result: &Map<String, Value>) -> Metrics {
    let mut m = Metrics::new();
    for (k, v) in result {
        if let Value::Object(inner) = v {
            for (k2, v2) in inner {
                m.insert(format!("guest.{k}.{k2}"), v2.clone());
            }
        }
        m.insert(format!("guest.{k}"), v.clone());
    }
    if let Some(Value::Array(list)) = result.get(f::VIOLATION_LIST) {
        let rules = list
            .iter()
            .filter_map(|v| v.get(f::VIOLATION_RULE).cloned())
            .collect();
        m.insert("guest.violation_rules".into(), Value::Array(rules));
    }
    m
}

/// The guest's timeline line (`{"event":"timeline",...}`), when it sent one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestTimeline {
    /// HwTimer polls of the request queue: (guest µs, completions found).
    pub polls: Vec<(u64, u64)>,
    /// Resets: (HwResetBus µs, end µs).
    pub resets: Vec<(u64, u64)>,
    /// Routine calls whose CPU the routing chooses: (start µs, µs, routine index into
    /// `timeline_fields::CALL_ROUTINES`, CPU).
    pub calls: Vec<(u64, u64, usize, usize)>,
    pub truncated: bool,
}

fn calls(v: Option<&Value>) -> Vec<(u64, u64, usize, usize)> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|c| match c.as_array()?.as_slice() {
            [at, us, routine, cpu] => Some((
                at.as_u64()?,
                us.as_u64()?,
                usize::try_from(routine.as_u64()?).ok()?,
                usize::try_from(cpu.as_u64()?).ok()?,
            )),
            _ => None,
        })
        .collect()
}

fn pairs(v: Option<&Value>) -> Vec<(u64, u64)> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|p| match p.as_array()?.as_slice() {
            [a, b] => Some((a.as_u64()?, b.as_u64()?)),
            _ => None,
        })
        .collect()
}

impl GuestTimeline {
    pub fn from_line(line: &Map<String, Value>) -> Option<GuestTimeline> {
        if line
            .get(guest_miniport::contract::REPORT_EVENT_KEY)?
            .as_str()?
            != tf::EVENT
        {
            return None;
        }
        Some(GuestTimeline {
            polls: pairs(line.get(tf::POLLS)),
            resets: pairs(line.get(tf::RESETS)),
            calls: calls(line.get(tf::CALLS)),
            truncated: line
                .get(tf::TRUNCATED)
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        m.insert("guest.timeline.polls".into(), Value::from(self.polls.len()));
        let found: u64 = self.polls.iter().map(|p| p.1).sum();
        m.insert("guest.timeline.polls_found".into(), Value::from(found));
        m.insert(
            "guest.timeline.resets".into(),
            Value::from(self.resets.len()),
        );
        m.insert(
            "guest.timeline.truncated".into(),
            Value::Bool(self.truncated),
        );
        m.insert("guest.timeline.calls".into(), Value::from(self.calls.len()));
        m
    }
}

/// `args.KEY` for each key of the guest's command line (`on`/`off` as bools).
pub fn args_metrics(args: &GuestArgs) -> Metrics {
    let mut m = Metrics::new();
    for word in args.to_string().split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        let value = match v {
            "on" => Value::Bool(true),
            "off" => Value::Bool(false),
            _ => v
                .parse::<u64>()
                .map_or_else(|_| Value::String(v.to_owned()), Value::from),
        };
        m.insert(format!("args.{k}"), value);
    }
    m
}

/// `image.*`: `verified` and `mismatches` (blocks lacking the pattern, or beyond the end
/// of the image), `duplicates`, and `expected` (the blocks the workload must have
/// written).
pub fn image_metrics(check: &ImageCheck, expected: u64) -> Metrics {
    let mut m = Metrics::new();
    m.insert("image.verified".into(), Value::from(check.verified));
    m.insert(
        "image.mismatches".into(),
        Value::from(check.bad.len() + check.outside.len()),
    );
    m.insert(
        "image.mismatched_lbas".into(),
        Value::Array(
            check
                .bad
                .iter()
                .chain(&check.outside)
                .map(|&l| Value::from(l))
                .collect(),
        ),
    );
    m.insert(
        "image.duplicates".into(),
        Value::from(check.duplicates.len()),
    );
    m.insert("image.expected".into(), Value::from(expected));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A synthetic trace: connect resets, three commands (one interrupt dropped, one
    /// status fault, one delayed), a slow LU reset, an event and a lost one, a spurious burst, a device
    /// reset mid-run, a TMF never answered, and the disconnect reset.
    const TRACE: &str = r#"
{"t_us":100,"ev":"device-reset"}
{"t_us":200,"ev":"device-reset"}
{"t_us":1000,"ev":"request","queue":2,"id":1,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":4096,"blocks":1,"dir":"read"}
{"t_us":1000,"ev":"fault","queue":2,"id":1,"fault":1,"kind":"drop-interrupt"}
{"t_us":1100,"ev":"complete","queue":2,"id":1,"response":"ok","status":0}
{"t_us":1101,"ev":"signal-suppressed","queue":2,"id":1,"reason":"fault"}
{"t_us":1200,"ev":"request","queue":2,"id":2,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":10,"blocks":1,"dir":"read"}
{"t_us":1200,"ev":"fault","queue":2,"id":2,"fault":2,"kind":"status","detail":"check-condition"}
{"t_us":1200,"ev":"fault","queue":2,"id":2,"fault":3,"kind":"lose","shadowed":true}
{"t_us":1250,"ev":"complete","queue":2,"id":2,"response":"ok","status":2}
{"t_us":1251,"ev":"signal-suppressed","queue":2,"id":2,"reason":"event-idx"}
{"t_us":1300,"ev":"request","queue":2,"id":3,"kind":"cmd","target":0,"lun":0,"op":"write-10","opcode":42,"lba":20,"blocks":1,"dir":"write"}
{"t_us":1300,"ev":"fault","queue":2,"id":3,"fault":4,"kind":"delay","delay_us":50000}
{"t_us":1400,"ev":"tmf-start","queue":0,"id":9,"tmf":"lu-reset","target":0,"lun":0}
{"t_us":1500,"ev":"spurious-signal","queue":2,"fault":5,"count":5}
{"t_us":1600,"ev":"event","event":"transport-reset","target":0,"lun":0,"detail":"rescan"}
{"t_us":1700,"ev":"event-lost","event":"param-change","target":0,"lun":0,"reason":"no-buffer"}
{"t_us":51300,"ev":"complete","queue":2,"id":3,"response":"reset","status":0}
{"t_us":51301,"ev":"signal","queue":2,"id":3}
{"t_us":3001400,"ev":"tmf-end","queue":0,"id":9,"response":"function-complete"}
{"t_us":3001401,"ev":"signal","queue":0,"id":9}
{"t_us":3002000,"ev":"tmf-start","queue":0,"id":10,"tmf":"lu-reset","target":0,"lun":0}
{"t_us":3003000,"ev":"device-reset"}
{"t_us":3004000,"ev":"request","queue":2,"id":4,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":30,"blocks":1,"dir":"read"}
not json
{"t_us":3005000,"ev":"device-reset"}
"#;

    fn metrics() -> Metrics {
        let trace = Trace::parse(TRACE);
        assert_eq!(trace.bad_lines.len(), 1);
        assert_eq!(trace.bad_lines[0].0, 26);
        trace_metrics(&trace)
    }

    #[test]
    fn counts_of_requests_completions_and_signals() {
        let m = metrics();
        assert_eq!(m["trace.records"], json!(25));
        assert_eq!(m["trace.bad_lines"], json!(1));
        assert_eq!(m["trace.requests"], json!(4));
        assert_eq!(m["trace.completions"], json!(3));
        assert_eq!(m["trace.uncompleted"], json!(1));
        assert_eq!(m["trace.signals"], json!(2));
        assert_eq!(m["trace.signals_suppressed_fault"], json!(1));
        assert_eq!(m["trace.signals_suppressed_event_idx"], json!(1));
        assert_eq!(m["trace.suppressed_fault_ids"], json!([1]));
        assert_eq!(m["trace.suppressed_event_idx_ids"], json!([2]));
        assert_eq!(m["trace.spurious_signals"], json!(5));
        assert_eq!(m["trace.responses.ok"], json!(2));
        assert_eq!(m["trace.responses.reset"], json!(1));
        assert_eq!(m["trace.status.0"], json!(2));
        assert_eq!(m["trace.status.2"], json!(1));
        assert_eq!(m["trace.events"], json!(1));
        assert_eq!(m["trace.events.transport-reset"], json!(1));
        assert_eq!(m["trace.events_lost"], json!(1));
        assert_eq!(m["trace.events_lost.param-change"], json!(1));
        assert_eq!(m["trace.events_lost_reason.no-buffer"], json!(1));
        assert_eq!(m["trace.first_request_us"], json!(1000));
        assert_eq!(m["trace.duration_ms"], json!(3004.0));
        assert_eq!(m["trace.latency_min_ms"], json!(0.05));
        assert_eq!(m["trace.latency_max_ms"], json!(50.0));
    }

    #[test]
    fn device_resets_count_only_those_during_the_run() {
        let m = metrics();
        assert_eq!(m["trace.device_resets_total"], json!(4));
        // Not the two at connect, nor the one at disconnect.
        assert_eq!(m["trace.device_resets"], json!(1));
    }

    #[test]
    fn tmfs_are_timed_by_queue_and_id() {
        let m = metrics();
        assert_eq!(m["trace.tmfs"], json!(2));
        assert_eq!(m["trace.tmf.lu-reset.count"], json!(2));
        assert_eq!(m["trace.tmf.lu-reset.min_ms"], json!(3000.0));
        assert_eq!(m["trace.tmf.lu-reset.max_ms"], json!(3000.0));
        assert_eq!(m["trace.tmf.lu-reset.unanswered"], json!(1));
        assert_eq!(m["trace.tmf_unanswered"], json!(1));
        assert_eq!(m["trace.tmf_responses.function-complete"], json!(1));
    }

    #[test]
    fn faults_count_unshadowed_firings_with_their_requests() {
        let m = metrics();
        assert_eq!(m["trace.faults.drop-interrupt"], json!(1));
        assert_eq!(m["trace.faults.drop-interrupt.ids"], json!([1]));
        assert_eq!(m["trace.faults.status"], json!(1));
        assert_eq!(m["trace.faults.status.lbas"], json!([10]));
        assert_eq!(m["trace.faults.delay.latency_min_ms"], json!(50.0));
        assert!(!m.contains_key("trace.faults.lose"), "shadowed");
        assert_eq!(m["trace.faults_shadowed"], json!(1));
    }

    #[test]
    fn each_fault_id_counts_its_unshadowed_firings() {
        let m = metrics();
        assert_eq!(m["trace.fault.1"], json!(1));
        assert_eq!(m["trace.fault.2"], json!(1));
        assert_eq!(m["trace.fault.4"], json!(1));
        assert!(!m.contains_key("trace.fault.3"), "shadowed");
    }

    #[test]
    fn an_empty_trace_has_counts_but_no_times() {
        let m = trace_metrics(&Trace::default());
        assert_eq!(m["trace.requests"], json!(0));
        assert_eq!(m["trace.device_resets"], json!(0));
        assert!(!m.contains_key("trace.first_request_us"));
        assert!(!m.contains_key("trace.latency_max_ms"));
    }

    #[test]
    fn guest_fields_become_metrics() {
        let line = json!({"result": "pass", "lbas": [1, 2], "violations": 0,
                          "times": {"a": 1},
                          "violation_list": [{"rule": "T5", "cpu": 1}, {"rule": "T7"}]});
        let m = guest_metrics(line.as_object().unwrap());
        assert_eq!(m["guest.violation_rules"], json!(["T5", "T7"]));
        assert_eq!(m["guest.result"], json!("pass"));
        assert_eq!(m["guest.lbas"], json!([1, 2]));
        assert_eq!(m["guest.times.a"], json!(1));
    }

    #[test]
    fn the_guest_timeline_line_is_read() {
        let line = json!({"event": "timeline", "polls": [[10, 0], [20, 3], "x"],
                          "resets": [[5, 7]], "calls": [[9, 2, 0, 1], [11, 3, 1]],
                          "truncated": true});
        let t = GuestTimeline::from_line(line.as_object().unwrap()).unwrap();
        assert_eq!(t.polls, [(10, 0), (20, 3)]);
        assert_eq!(t.resets, [(5, 7)]);
        assert_eq!(t.calls, [(9, 2, 0, 1)]);
        assert!(t.truncated);
        assert_eq!(t.metrics()["guest.timeline.polls_found"], json!(3));
        assert_eq!(t.metrics()["guest.timeline.calls"], json!(1));
        let other = json!({"event": "adapter"});
        assert_eq!(GuestTimeline::from_line(other.as_object().unwrap()), None);
    }

    #[test]
    fn args_become_metrics_with_bools_for_on_off() {
        let m = args_metrics(&GuestArgs {
            poll: false,
            queue_depth: 3,
            ..GuestArgs::default()
        });
        assert_eq!(m["args.poll"], json!(false));
        assert_eq!(m["args.irq"], json!(true));
        assert_eq!(m["args.qd"], json!(3));
        assert_eq!(m["args.workload"], json!("smoke"));
    }
}
