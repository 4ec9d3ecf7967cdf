//! What a hung cell left outstanding, from the backend's trace: commands never completed,
//! TMFs never answered, and the completions after their queue's last interrupt, each
//! with why its signal was withheld (a fault, or EVENT_IDX: not due, as the driver had
//! not asked for one; such a driver may still have seen it while handling the last).

use std::collections::{BTreeMap, HashMap};

use flakyhba_backend::faults::trace::TraceEvent;
use serde_json::Value;

use crate::scenario::expect::Metrics;
use crate::scenario::metrics::{Trace, FIRST_REQUEST_QUEUE};

/// How many of each kind the summary names one by one.
const NAMED: usize = 4;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outstanding {
    /// Commands without a completion: "read-10 LBA 8192+8 (queue 2, id 5) since 1.200 s".
    pub held: Vec<String>,
    /// TMFs without an answer.
    pub tmfs: Vec<String>,
    /// Completions after the last interrupt of their queue.
    pub unsignalled: Vec<String>,
    /// Of those, the ones whose interrupt a fault dropped.
    pub dropped: usize,
}

struct Request {
    what: String,
    t_us: u64,
}

fn describe(op: Option<&str>, lba: Option<u64>, blocks: Option<u64>) -> String {
    let op = op.unwrap_or("command");
    match lba {
        Some(lba) => format!("{op} LBA {lba}+{}", blocks.unwrap_or(0)),
        None => op.to_owned(),
    }
}

fn secs(us: u64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}

impl Outstanding {
    pub fn from_trace(trace: &Trace) -> Outstanding {
        let mut requests: HashMap<(u16, u64), Request> = HashMap::new();
        let mut tmfs: BTreeMap<(u16, u64), String> = BTreeMap::new();
        // Per request queue: completions since its last signal, and why each was quiet.
        let mut quiet: BTreeMap<u16, Vec<(String, bool)>> = BTreeMap::new();
        let mut completed: HashMap<(u16, u64), String> = HashMap::new();
        for r in &trace.records {
            match &r.event {
                TraceEvent::Request {
                    queue,
                    id,
                    op,
                    lba,
                    blocks,
                    ..
                } if *queue >= FIRST_REQUEST_QUEUE => {
                    let what = describe(op.as_deref(), *lba, *blocks);
                    requests.insert((*queue, *id), Request { what, t_us: r.t_us });
                }
                TraceEvent::Complete { queue, id, .. } => {
                    if let Some(req) = requests.remove(&(*queue, *id)) {
                        completed.insert((*queue, *id), req.what);
                    }
                }
                TraceEvent::Signal { queue, .. } => {
                    quiet.remove(queue);
                }
                TraceEvent::SignalSuppressed { queue, id, reason } => {
                    let what = id
                        .and_then(|id| completed.get(&(*queue, id)).cloned())
                        .unwrap_or_else(|| "a completion".into());
                    let what = format!("{what} (queue {queue}, {reason})");
                    quiet
                        .entry(*queue)
                        .or_default()
                        .push((what, reason == "fault"));
                }
                TraceEvent::TmfStart {
                    queue,
                    id,
                    tmf,
                    target,
                    lun,
                } => {
                    let what = format!("{tmf} of {target}:{lun} since {}", secs(r.t_us));
                    tmfs.insert((*queue, *id), what);
                }
                TraceEvent::TmfEnd { queue, id, .. } => {
                    tmfs.remove(&(*queue, *id));
                }
                _ => {}
            }
        }
        let mut held: Vec<_> = requests.into_iter().collect();
        held.sort_by_key(|(_, r)| r.t_us);
        let unsignalled: Vec<(String, bool)> = quiet.into_values().flatten().collect();
        Outstanding {
            held: held
                .into_iter()
                .map(|((q, id), r)| {
                    format!("{} (queue {q}, id {id}) since {}", r.what, secs(r.t_us))
                })
                .collect(),
            tmfs: tmfs.into_values().collect(),
            dropped: unsignalled.iter().filter(|(_, f)| *f).count(),
            unsignalled: unsignalled.into_iter().map(|(w, _)| w).collect(),
        }
    }

    /// `hung.*`: how many of each.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        m.insert("hung.held".into(), Value::from(self.held.len()));
        m.insert("hung.tmfs".into(), Value::from(self.tmfs.len()));
        m.insert(
            "hung.unsignalled".into(),
            Value::from(self.unsignalled.len()),
        );
        m.insert("hung.dropped".into(), Value::from(self.dropped));
        m
    }

    /// One sentence for the report: "outstanding: ..." or that nothing was.
    pub fn summary(&self) -> String {
        fn some(what: &str, items: &[String]) -> Option<String> {
            if items.is_empty() {
                return None;
            }
            let mut named: Vec<&str> = items.iter().take(NAMED).map(String::as_str).collect();
            let more = items.len().saturating_sub(NAMED);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            named.dedup();
            Some(format!(
                "{} {what}: {}{tail}",
                items.len(),
                named.join("; ")
            ))
        }
        let parts: Vec<String> = [
            some("command(s) never completed", &self.held),
            some("TMF(s) never answered", &self.tmfs),
            some(
                &format!(
                    "completion(s) after the queue's last interrupt ({} of their interrupts \
                     dropped by the fault, the rest not due)",
                    self.dropped
                ),
                &self.unsignalled,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "nothing outstanding in the trace".into()
        } else {
            format!("outstanding: {}", parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(lines: &[&str]) -> Trace {
        Trace::parse(&lines.join("\n"))
    }

    const READ: &str = r#"{"t_us":1000,"ev":"request","queue":2,"id":5,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":8192,"blocks":8,"dir":"read"}"#;
    const WRITE: &str = r#"{"t_us":1500,"ev":"request","queue":2,"id":6,"kind":"cmd","target":0,"lun":0,"op":"write-10","opcode":42,"lba":12288,"blocks":8,"dir":"write"}"#;

    #[test]
    fn a_command_never_completed_is_named() {
        let o = Outstanding::from_trace(&trace(&[READ]));
        assert_eq!(o.held, ["read-10 LBA 8192+8 (queue 2, id 5) since 0.001 s"]);
        assert!(o
            .summary()
            .starts_with("outstanding: 1 command(s) never completed: read-10"));
        assert_eq!(o.metrics()["hung.held"], 1);
    }

    #[test]
    fn completions_after_the_last_interrupt_are_named_with_their_reason() {
        let o = Outstanding::from_trace(&trace(&[
            READ,
            r#"{"t_us":1100,"ev":"complete","queue":2,"id":5,"response":"ok","status":0}"#,
            r#"{"t_us":1101,"ev":"signal","queue":2,"id":5}"#,
            WRITE,
            r#"{"t_us":1600,"ev":"complete","queue":2,"id":6,"response":"ok","status":0}"#,
            r#"{"t_us":1601,"ev":"signal-suppressed","queue":2,"id":6,"reason":"fault"}"#,
            r#"{"t_us":1700,"ev":"tmf-start","queue":0,"id":9,"tmf":"lu-reset","target":0,"lun":0}"#,
        ]));
        assert!(o.held.is_empty());
        assert_eq!(o.unsignalled, ["write-10 LBA 12288+8 (queue 2, fault)"]);
        assert_eq!(o.dropped, 1);
        assert_eq!(o.tmfs, ["lu-reset of 0:0 since 0.002 s"]);
        let s = o.summary();
        assert!(s.contains("1 TMF(s) never answered"), "{s}");
        assert!(
            s.contains("(1 of their interrupts dropped by the fault"),
            "{s}"
        );
    }

    #[test]
    fn an_empty_trace_has_nothing_outstanding() {
        let o = Outstanding::from_trace(&Trace::default());
        assert_eq!(o.summary(), "nothing outstanding in the trace");
        assert_eq!(o.metrics()["hung.unsignalled"], 0);
    }
}
