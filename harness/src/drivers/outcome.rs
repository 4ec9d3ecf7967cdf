//! A cell's outcome and how it is decided: from the driver's own reading of its output,
//! what the watcher saw (a stall), and whether the fault could reach the driver at all,
//! as the cell's trace shows. Nothing here is typed in for a driver.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::scenario::expect::Metrics;

/// What became of a driver under a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
pub enum Outcome {
    /// The workload completed; its data verified in the guest and on the image.
    Survived,
    /// The driver returned the error to its caller, and the disk still works afterwards.
    ErrorReported,
    /// The workload ended, but wrongly: data that reads back wrong, a disk that no
    /// longer works after an error, or a LU change the driver did not follow.
    Failed,
    /// No progress for a bounded time; the run was killed.
    Hung,
    /// A guest panic or oops, a CPU exception, or a firmware reset.
    Crashed,
    /// The fault cannot reach this driver.
    NotApplicable,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Survived,
        Outcome::ErrorReported,
        Outcome::Failed,
        Outcome::Hung,
        Outcome::Crashed,
        Outcome::NotApplicable,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Outcome::Survived => "survived",
            Outcome::ErrorReported => "error-reported",
            Outcome::Failed => "failed",
            Outcome::Hung => "hung",
            Outcome::Crashed => "crashed",
            Outcome::NotApplicable => "n/a",
        }
    }

    pub fn from_word(word: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.word() == word)
    }
}

impl From<Outcome> for &'static str {
    fn from(o: Outcome) -> &'static str {
        o.word()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What a fault needs from a driver to reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The driver sends task management functions (the TMF faults act on them).
    Tmf,
    /// The driver takes events on the event queue (hot-plug announcements).
    Events,
}

impl Need {
    pub fn from_word(word: &str) -> Option<Need> {
        match word {
            "tmf" => Some(Need::Tmf),
            "events" => Some(Need::Events),
            _ => None,
        }
    }

    /// Why the fault could not reach the driver, when the cell's metrics show it; None
    /// when it could (or they cannot tell). Events: the backend posts one for a LU change
    /// only when the driver negotiated VIRTIO_SCSI_F_HOTPLUG (F_CHANGE for a resize), and
    /// traces every one it could not post (`event-lost`), so a change with neither record
    /// while the driver ran on means the driver never asked for them.
    pub fn unmet(self, m: &Metrics) -> Option<String> {
        let n = |key: &str| m.get(key).and_then(Value::as_u64).unwrap_or(0);
        match self {
            Need::Tmf if n("trace.tmfs") == 0 => Some(format!(
                "the driver sent no TMF ({} commands, no tmf-start in the trace), so no TMF \
                 fault could fire",
                n("trace.requests")
            )),
            Need::Events if n("trace.events") > 0 || n("cell.lu_changes") == 0 => None,
            Need::Events if n("trace.events_lost_reason.queue-not-ready") > 0 => Some(
                "the driver never started its event queue: the backend lost the LU change's \
                 event (event-lost: queue-not-ready)"
                    .into(),
            ),
            Need::Events if n("trace.events_lost") == 0 && n("cell.ran_after_change_ms") >= 100 => {
                Some(format!(
                    "the driver did not negotiate hot-plug events: the backend posted no event \
                     for the LU change and lost none, while the driver ran on for {} ms",
                    n("cell.ran_after_change_ms")
                ))
            }
            _ => None,
        }
    }
}

/// The driver's own reading of a cell that ran to its end (or was stopped).
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Survived(String),
    ErrorReported(String),
    Failed(String),
    Crashed(String),
    /// The guest never reported: it was stopped or killed at the deadline.
    Unfinished,
}

/// The outcome of a cell and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    pub outcome: Outcome,
    pub reason: String,
}

/// A crash shows whatever the fault; then a fault that could not reach the driver; then
/// a guest that never finished (hung, with `hung_reason`); else the driver's verdict.
pub fn decide(
    verdict: &Verdict,
    need: Option<Need>,
    trace: &Metrics,
    hung_reason: impl FnOnce() -> String,
) -> Decided {
    let decided = |outcome, reason: &str| Decided {
        outcome,
        reason: reason.to_owned(),
    };
    if let Verdict::Crashed(why) = verdict {
        return decided(Outcome::Crashed, why);
    }
    if let Some(why) = need.and_then(|n| n.unmet(trace)) {
        return decided(Outcome::NotApplicable, &why);
    }
    match verdict {
        Verdict::Survived(why) => decided(Outcome::Survived, why),
        Verdict::ErrorReported(why) => decided(Outcome::ErrorReported, why),
        Verdict::Failed(why) => decided(Outcome::Failed, why),
        Verdict::Unfinished => decided(Outcome::Hung, &hung_reason()),
        Verdict::Crashed(_) => unreachable!("returned above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trace(pairs: &[(&str, u64)]) -> Metrics {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect()
    }

    #[test]
    fn words_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_word(o.word()), Some(o));
        }
        assert_eq!(Outcome::from_word("ok"), None);
        assert_eq!(serde_json::to_value(Outcome::NotApplicable).unwrap(), "n/a");
    }

    #[test]
    fn a_tmf_fault_is_na_only_when_the_trace_holds_no_tmf() {
        let none = trace(&[("trace.tmfs", 0), ("trace.requests", 12)]);
        let why = Need::Tmf.unmet(&none).unwrap();
        assert!(why.contains("12 commands"), "{why}");
        assert_eq!(Need::Tmf.unmet(&trace(&[("trace.tmfs", 1)])), None);
    }

    #[test]
    fn an_event_fault_is_na_only_when_the_driver_shows_it_takes_no_events() {
        let change = ("cell.lu_changes", 1);
        let lost = trace(&[
            change,
            ("trace.events", 0),
            ("trace.events_lost", 1),
            ("trace.events_lost_reason.queue-not-ready", 1),
        ]);
        assert!(Need::Events
            .unmet(&lost)
            .unwrap()
            .contains("queue-not-ready"));
        let never = trace(&[
            change,
            ("trace.events", 0),
            ("cell.ran_after_change_ms", 480),
        ]);
        let why = Need::Events.unmet(&never).unwrap();
        assert!(why.contains("ran on for 480 ms"), "{why}");
        // Posted; lost for another reason (no frontend); the driver gone right after the
        // change; or no change made: the cell does not show it.
        assert_eq!(
            Need::Events.unmet(&trace(&[change, ("trace.events", 1)])),
            None
        );
        let gone = trace(&[
            change,
            ("trace.events_lost", 1),
            ("trace.events_lost_reason.no-frontend", 1),
            ("cell.ran_after_change_ms", 480),
        ]);
        assert_eq!(Need::Events.unmet(&gone), None);
        let quick = trace(&[change, ("cell.ran_after_change_ms", 30)]);
        assert_eq!(Need::Events.unmet(&quick), None);
        assert_eq!(
            Need::Events.unmet(&trace(&[("cell.ran_after_change_ms", 480)])),
            None
        );
    }

    #[test]
    fn a_crash_wins_then_na_then_hung_then_the_verdict() {
        let no_tmf = trace(&[("trace.tmfs", 0)]);
        let crash = Verdict::Crashed("Kernel panic".into());
        let d = decide(&crash, Some(Need::Tmf), &no_tmf, || unreachable!());
        assert_eq!(d.outcome, Outcome::Crashed);
        let d = decide(
            &Verdict::Unfinished,
            Some(Need::Tmf),
            &no_tmf,
            || unreachable!(),
        );
        assert_eq!(d.outcome, Outcome::NotApplicable);
        let d = decide(&Verdict::Unfinished, None, &no_tmf, || "stalled".into());
        assert_eq!(
            d,
            Decided {
                outcome: Outcome::Hung,
                reason: "stalled".into()
            }
        );
        let ok = Verdict::Survived("64 blocks".into());
        assert_eq!(
            decide(&ok, None, &no_tmf, || unreachable!()).outcome,
            Outcome::Survived
        );
    }
}
