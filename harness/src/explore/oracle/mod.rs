//! The generic oracle: no per-scenario expectations, only what every run owes. A run
//! passes, or fails in a way its plan makes unrecoverable ([`Allowance`], derived from the
//! plan alone), or is a finding: the backend failed, the run hung, a rule was broken, a
//! routine stalled over 1 ms, data was lost or misplaced, an error was hidden from the
//! caller, or the guest failed in a way the plan cannot cause. Each finding names the
//! clause it broke and the values seen; the shrinker keeps a step only when a run breaks
//! the same clause.

mod allowance;
#[cfg(test)]
mod tests;

use std::fmt;

use guest_miniport::contract::{qemu_status_for, EXIT_PASS};
use serde_json::Value;

use crate::scenario::expect::Metrics;
pub use allowance::{could_match, final_status, Allowance, FinalStatus, Op};

/// The longest single stall the oracle accepts (S1), in µs.
pub const MAX_STALL_US: u64 = 1000;

/// The expectation that no single stall went over [`MAX_STALL_US`].
pub fn stall_expectation() -> String {
    format!("guest.stall_max_us <= {MAX_STALL_US}")
}

/// The part of the oracle a finding broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Clause {
    /// The backend died or reported an error, or the run could not be made at all.
    Backend,
    /// No result before the harness's deadline, or requests outstanding at the guest's
    /// own deadline when the plan fits in it.
    Hang,
    /// The port's rule checker recorded a violation.
    Rule,
    /// A routine stalled over 1 ms.
    Stall,
    /// Data lost or misplaced: the image or the guest's read-back differs, or blocks the
    /// guest says it wrote are missing.
    Data,
    /// A fault that must fail the run fired, and the guest passed.
    Hidden,
    /// The guest failed in a way the plan cannot cause.
    Failure,
}

impl Clause {
    pub const ALL: [Clause; 7] = [
        Clause::Backend,
        Clause::Hang,
        Clause::Rule,
        Clause::Stall,
        Clause::Data,
        Clause::Hidden,
        Clause::Failure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Clause::Backend => "backend",
            Clause::Hang => "hang",
            Clause::Rule => "rule",
            Clause::Stall => "stall",
            Clause::Data => "data",
            Clause::Hidden => "hidden-error",
            Clause::Failure => "unexplained-failure",
        }
    }

    /// The expectation a replay of the finding judges this clause by (the implicit
    /// expectations cover the rest).
    pub fn expectation(self) -> String {
        match self {
            Clause::Backend | Clause::Failure | Clause::Hidden => {
                "guest.result == \"pass\"".to_owned()
            }
            Clause::Hang => "run.timed_out == false".to_owned(),
            Clause::Rule => "guest.violations == 0".to_owned(),
            Clause::Stall => stall_expectation(),
            Clause::Data => "image.mismatches == 0".to_owned(),
        }
    }
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken clause and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub clause: Clause,
    /// Tells findings of one clause apart (the rule, the failure, ...): with the clause,
    /// what the campaign counts as one finding.
    pub key: String,
    pub detail: String,
}

impl Finding {
    /// `clause` or `clause (key)`.
    pub fn signature(&self) -> String {
        if self.key.is_empty() {
            self.clause.to_string()
        } else {
            format!("{} ({})", self.clause, self.key)
        }
    }
}

/// The oracle's word on one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Failed, the way the plan makes unavoidable: why.
    Tolerated(String),
    Found(Finding),
    /// A violation of a rule judged by a routine's measured time alone (I2, P4) that
    /// did not come back when the case was run again: the host's load, not the
    /// miniport (the guest's clock runs on while its vCPU is preempted).
    Noise(String),
}

/// Rules the checker judges by a routine's measured wall time, which a loaded host
/// stretches.
pub const TIMED_RULES: [&str; 2] = ["I2", "P4"];

/// Whether every violation of a run is of a rule judged by measured time.
pub fn timed_violations_only(m: &Metrics) -> bool {
    let count = num(m, "guest.violations").unwrap_or(0);
    let list = m.get("guest.violation_list").and_then(Value::as_array);
    list.is_some_and(|l| {
        count > 0
            && l.len() as u64 == count
            && l.iter()
                .all(|v| v["rule"].as_str().is_some_and(|r| TIMED_RULES.contains(&r)))
    })
}

impl Verdict {
    pub fn finding(&self) -> Option<&Finding> {
        match self {
            Verdict::Found(f) => Some(f),
            _ => None,
        }
    }

    pub fn clause(&self) -> Option<Clause> {
        self.finding().map(|f| f.clause)
    }
}

/// What the oracle looks at: the run's metrics, the harness's error (a run that could
/// not be made), and whether the backend's log shows it failed.
pub struct Observed<'a> {
    pub metrics: &'a Metrics,
    pub error: Option<&'a str>,
    pub backend_failed: Option<String>,
}

fn found(clause: Clause, key: &str, detail: String) -> Verdict {
    Verdict::Found(Finding {
        clause,
        key: key.to_owned(),
        detail,
    })
}

fn num(m: &Metrics, key: &str) -> Option<u64> {
    m.get(key).and_then(Value::as_u64)
}

fn text<'m>(m: &'m Metrics, key: &str) -> Option<&'m str> {
    m.get(key).and_then(Value::as_str)
}

/// Judges one run against what its plan allows.
pub fn judge(allow: &Allowance, run: &Observed<'_>) -> Verdict {
    let m = run.metrics;
    if let Some(e) = run.error {
        return found(
            Clause::Backend,
            "run",
            format!("the run could not be made: {e}"),
        );
    }
    if let Some(e) = &run.backend_failed {
        return found(Clause::Backend, "log", e.clone());
    }
    if m.get("run.timed_out") == Some(&Value::Bool(true)) {
        return found(
            Clause::Hang,
            "harness deadline",
            "no result line before the harness's deadline (run.timed_out = true)".into(),
        );
    }
    if let Some(v @ 1..) = num(m, "guest.violations") {
        return found(Clause::Rule, first_rule(m), violation_detail(m, v));
    }
    if let Some(s) = num(m, "guest.stall_max_us").filter(|&s| s > MAX_STALL_US) {
        return found(Clause::Stall, "", format!("guest.stall_max_us = {s}"));
    }
    if let Some(v) = data_loss(allow, m) {
        return v;
    }
    match text(m, "guest.result") {
        Some("pass") => passed(allow, m),
        Some(_) => failed(allow, m),
        None => found(
            Clause::Failure,
            "no result",
            format!(
                "no result line (QEMU exit {})",
                m.get("run.qemu_exit")
                    .map_or("missing".into(), Value::to_string)
            ),
        ),
    }
}

fn first_rule(m: &Metrics) -> &str {
    m.get("guest.violation_list")
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .and_then(|v| v["rule"].as_str())
        .unwrap_or("")
}

fn violation_detail(m: &Metrics, count: u64) -> String {
    let first = m
        .get("guest.violation_list")
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .map(|v| {
            format!(
                ": first {} in {}: {}",
                v["rule"].as_str().unwrap_or("?"),
                v["routine"].as_str().unwrap_or("?"),
                v["message"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_default();
    format!("guest.violations = {count}{first}")
}

/// The data clause: the image, the guest's read-back, the blocks written.
fn data_loss(allow: &Allowance, m: &Metrics) -> Option<Verdict> {
    if let Some(n @ 1..) = num(m, "image.mismatches") {
        if !allow.corrupt_writes && !allow.corrupt_reads {
            let lbas = m
                .get("image.mismatched_lbas")
                .map_or(String::new(), |l| format!(" at {l}"));
            return Some(found(
                Clause::Data,
                "image",
                format!("image.mismatches = {n}{lbas}"),
            ));
        }
    }
    let failure = text(m, "guest.failure");
    if failure == Some("mismatch") && !allow.corrupt_reads && !allow.corrupt_writes {
        let reason = text(m, "guest.reason").unwrap_or("?");
        return Some(found(
            Clause::Data,
            "read-back",
            format!("the guest's read-back: {reason}"),
        ));
    }
    let (verified, expected) = (num(m, "image.verified"), num(m, "image.expected"));
    if text(m, "guest.result") == Some("pass") && verified != expected {
        return Some(found(
            Clause::Data,
            "lost writes",
            format!(
                "image.verified = {}, image.expected = {}",
                verified.map_or("missing".into(), |v| v.to_string()),
                expected.map_or("missing".into(), |v| v.to_string())
            ),
        ));
    }
    None
}

fn passed(allow: &Allowance, m: &Metrics) -> Verdict {
    let exit = num(m, "run.qemu_exit");
    if exit != u64::try_from(qemu_status_for(EXIT_PASS)).ok() {
        return found(
            Clause::Failure,
            "exit status",
            format!("the guest passed but QEMU exited {exit:?}"),
        );
    }
    for id in &allow.must_fail {
        if let Some(n @ 1..) = num(m, &format!("trace.fault.{id}")) {
            return found(
                Clause::Hidden,
                &format!("fault #{id}"),
                format!("fault #{id} fired {n} times, each a failure the caller must see, and the guest passed"),
            );
        }
    }
    Verdict::Pass
}

fn failed(allow: &Allowance, m: &Metrics) -> Verdict {
    let reason = text(m, "guest.reason").unwrap_or("?").to_owned();
    let op = text(m, "guest.failed_op").and_then(Op::from_name);
    let why = match text(m, "guest.failure") {
        Some("timeout" | "reset-not-ended") => {
            if allow.timeouts {
                return Verdict::Tolerated(format!("{reason} (the plan may outlast the deadline)"));
            }
            return found(
                Clause::Hang,
                "guest deadline",
                format!(
                    "{reason}, though the plan's worst case ({} ms) fits the deadline",
                    allow.budget_ms
                ),
            );
        }
        Some("command") => command_failure(allow, m, op),
        Some("short-transfer") => op
            .filter(|op| allow.short_transfers.contains(op))
            .map(|_| "a short transfer the plan injects"),
        Some("mismatch" | "lun-gone" | "block-size")
            if allow.corrupt_reads || allow.corrupt_writes =>
        {
            Some("data the plan corrupts")
        }
        _ => None,
    };
    match why {
        Some(why) => Verdict::Tolerated(format!("{reason}: {why}")),
        None => {
            let key = ["guest.failure", "guest.failed_srb_status"]
                .iter()
                .filter_map(|k| text(m, k))
                .collect::<Vec<_>>()
                .join(" ");
            found(
                Clause::Failure,
                &key,
                format!("{reason}: the plan cannot cause this"),
            )
        }
    }
}

/// Why the plan explains a command's final status, if it does.
fn command_failure(allow: &Allowance, m: &Metrics, op: Option<Op>) -> Option<&'static str> {
    let op = op?;
    let srb = text(m, "guest.failed_srb_status")?;
    let scsi = num(m, "guest.failed_scsi_status").map(|s| s as u8);
    let key = num(m, "guest.failed_sense_key").map(|k| k as u8);
    if srb == "bus_reset" && allow.bus_reset_final {
        return Some("more bus resets than the port retries");
    }
    if srb == "error" && scsi == Some(2) && key == Some(6) && allow.unit_attention_final {
        return Some("more unit attentions than the class driver retries");
    }
    allow
        .finals
        .iter()
        .any(|f| {
            f.op == op
                && f.srb_status == srb
                && (f.srb_status != "error" || f.scsi_status == scsi && f.sense_key == key)
        })
        .then_some("an error status the plan injects")
}
