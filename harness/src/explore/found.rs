//! A shrunk finding as a scenario file (`<out>/found/<short-hash>.toml`, the format of
//! harness/scenarios/): its description says which oracle clause failed and what was
//! seen; its expectations say what a correct miniport does, so `flakyhba-harness run`
//! on it fails while the bug is there and passes once it is fixed.

use std::fmt::Write;

use serde_json::Value;

use super::case::Case;
use super::oracle::{stall_expectation, Finding};
use crate::scenario::expect::Metrics;

/// What the runs with the bug taken out (`bug=none`) showed, when a bug was planted.
#[derive(Clone, Debug, PartialEq)]
pub enum Fixed {
    /// No bug planted: nothing to compare with.
    Unknown,
    /// Every run passed: the implicit expectations say it all.
    Passes,
    /// Some or all ended in a failure the plan makes unavoidable: its fields, and
    /// whether some runs passed.
    Fails {
        fields: Vec<(String, Value)>,
        sometimes_passes: bool,
    },
    /// The oracle found something there too: the finding is not the bug's alone.
    AlsoFound(String),
}

/// The result line's fields that say how a run failed.
const FAILURE_FIELDS: [&str; 5] = [
    "guest.failure",
    "guest.failed_op",
    "guest.failed_srb_status",
    "guest.failed_scsi_status",
    "guest.failed_sense_key",
];

/// The failure fields of a run's metrics.
pub fn failure_fields(m: &Metrics) -> Vec<(String, Value)> {
    FAILURE_FIELDS
        .iter()
        .filter_map(|k| m.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect()
}

/// Where the finding came from and how it was shrunk, for the file's header.
pub struct Provenance<'a> {
    pub finding: &'a Finding,
    pub command: String,
    pub index: u64,
    pub steps_kept: usize,
    pub steps_tried: usize,
    pub runs: usize,
    /// Runs of the shrunk case that broke the clause, of those made.
    pub reproduced: (usize, usize),
    pub fixed: Fixed,
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// The expectations of the file, and whether it keeps the implicit ones.
fn expectations(p: &Provenance<'_>) -> (bool, Vec<String>) {
    let clause = p.finding.clause.expectation();
    let Fixed::Fails {
        fields,
        sometimes_passes,
    } = &p.fixed
    else {
        return (true, vec![clause]);
    };
    // The correct outcome is a failure the plan makes unavoidable: everything the
    // oracle owes besides, then that failure.
    let mut list: Vec<String> = vec![
        "run.timed_out == false".to_owned(),
        "guest.violations == 0".to_owned(),
        stall_expectation(),
        // No image check when the run failed before READ CAPACITY answered.
        "image.mismatches == 0 || guest.block_size == 0".to_owned(),
    ];
    if !list.iter().any(|e| e.starts_with(&clause)) && clause != "guest.result == \"pass\"" {
        list.push(clause);
    }
    for (k, v) in fields {
        let want = format!("{k} == {v}");
        list.push(if *sometimes_passes {
            format!("guest.result == \"pass\" || {want}")
        } else {
            want
        });
    }
    if !sometimes_passes {
        list.insert(0, "guest.result == \"fail\"".into());
    }
    (false, list)
}

/// The scenario file's text.
pub fn scenario_text(case: &Case, p: &Provenance<'_>) -> String {
    let f = p.finding;
    let mut out = String::new();
    let _ = writeln!(out, "# Found by `{}` (run {}).", p.command, p.index);
    let _ = writeln!(
        out,
        "# Oracle clause broken: {} ({}). Seen: {}",
        f.clause,
        f.clause.expectation(),
        f.detail
    );
    let _ = writeln!(
        out,
        "# Shrunk in {} kept steps of {} tried ({} runs); the shrunk case broke the same \
         clause in {} of {} runs.",
        p.steps_kept, p.steps_tried, p.runs, p.reproduced.0, p.reproduced.1
    );
    match &p.fixed {
        Fixed::Unknown => {}
        Fixed::Passes => {
            let _ = writeln!(out, "# With `--guest bug=none` it passes.");
        }
        Fixed::Fails { .. } => {
            let _ = writeln!(
                out,
                "# With `--guest bug=none` the run ends in the failure the plan makes \
                 unavoidable; the expectations below say so (implicit = false)."
            );
        }
        Fixed::AlsoFound(what) => {
            let _ = writeln!(out, "# With `--guest bug=none` the oracle finds: {what}");
        }
    }
    let _ = writeln!(out, "# Replay: flakyhba-harness run THIS_FILE");
    let _ = writeln!(
        out,
        "description = {}",
        toml_str(&format!("explore: {}: {}", f.signature(), f.detail))
    );
    let _ = writeln!(out, "timeout_s = {:.1}", case.timeout().as_secs_f64());
    let (implicit, expect) = expectations(p);
    if !implicit {
        out.push_str("implicit = false\n");
    }
    out.push_str("expect = [\n");
    for e in expect {
        let _ = writeln!(out, "    {},", toml_str(&e));
    }
    out.push_str("]\n\n[guest]\n");
    for (k, v) in case.guest_words() {
        if v.parse::<u64>().is_ok() {
            let _ = writeln!(out, "{k} = {v}");
        } else {
            let _ = writeln!(out, "{k} = {}", toml_str(&v));
        }
    }
    let _ = writeln!(out, "\n[backend]\nseed = {}", case.seed);
    if !case.faults.is_empty() {
        let _ = write!(out, "plan = '''\n{}'''\n", case.plan_text());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explore::case::{FaultTable, Value as V};
    use crate::explore::oracle::Clause;
    use crate::scenario::file::Scenario;
    use guest_miniport::contract::{GuestArgs, PlantedBug};
    use serde_json::json;
    use std::path::Path;

    fn case() -> Case {
        let mut f = FaultTable::new("status");
        f.set("status", V::str("virtio-busy"));
        f.set("once", V::Bool(true));
        Case {
            faults: vec![f],
            guest: GuestArgs {
                bug: PlantedBug::VirtioBusyFatal,
                ..GuestArgs::default()
            },
            seed: 4,
            allow_corruption: false,
        }
    }

    fn provenance(finding: &Finding, fixed: Fixed) -> Provenance<'_> {
        Provenance {
            finding,
            command: "flakyhba-harness explore --seed 1".into(),
            index: 12,
            steps_kept: 3,
            steps_tried: 9,
            runs: 20,
            reproduced: (3, 3),
            fixed,
        }
    }

    fn finding() -> Finding {
        Finding {
            clause: Clause::Failure,
            key: "command READ hba_error".into(),
            detail: "READ lba 5: srb status hba_error".into(),
        }
    }

    #[test]
    fn the_file_is_a_scenario_the_harness_loads() {
        let c = case();
        let f = finding();
        let text = scenario_text(&c, &provenance(&f, Fixed::Passes));
        let s = Scenario::parse(Path::new("found/0123456789.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(s.implicit);
        assert_eq!(s.positive.guest_args(&[]).unwrap(), c.guest);
        assert_eq!(
            s.positive.backend.plan.as_deref(),
            Some(c.plan_text().as_str())
        );
        assert_eq!(s.positive.backend.seed, Some(4));
        assert!(s.positive.description.contains("READ lba 5"));
        assert_eq!(s.positive.expect[0].text(), "guest.result == \"pass\"");
        // The replay's own override takes the bug out.
        let fixed = s
            .positive
            .guest_args(&[("bug".into(), "none".into())])
            .unwrap();
        assert_eq!(fixed.bug, PlantedBug::None);
    }

    #[test]
    fn a_plan_whose_correct_outcome_is_a_failure_says_which() {
        let c = case();
        let f = finding();
        let fields = vec![
            ("guest.failure".to_owned(), json!("command")),
            ("guest.failed_op".to_owned(), json!("WRITE")),
        ];
        let fixed = Fixed::Fails {
            fields: fields.clone(),
            sometimes_passes: false,
        };
        let text = scenario_text(&c, &provenance(&f, fixed));
        let s = Scenario::parse(Path::new("found/x.toml"), &text).unwrap();
        assert!(!s.implicit);
        let expect: Vec<&str> = s.positive.expect.iter().map(|e| e.text()).collect();
        assert_eq!(expect[0], "guest.result == \"fail\"");
        assert!(
            expect.contains(&"guest.failed_op == \"WRITE\""),
            "{expect:?}"
        );
        assert!(expect.contains(&"guest.violations == 0"));
        let sometimes = Fixed::Fails {
            fields,
            sometimes_passes: true,
        };
        let text = scenario_text(&c, &provenance(&f, sometimes));
        let s = Scenario::parse(Path::new("found/x.toml"), &text).unwrap();
        let expect: Vec<&str> = s.positive.expect.iter().map(|e| e.text()).collect();
        assert!(expect.contains(&"guest.result == \"pass\" || guest.failure == \"command\""));
    }
}
