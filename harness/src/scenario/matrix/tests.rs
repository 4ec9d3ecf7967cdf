//! The matrix's records, plans and reports.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::plan::{plan, select, Planned, SelectError};
use super::record::{summary, Checked, RunRecord, NEGATIVE_PASSED};
use crate::scenario::expect::{Expectation, Metrics};
use crate::scenario::file::{implicit_expectations, Scenario};

fn scenario(negative: bool) -> Scenario {
    let text = format!(
        "description = \"d\"\nexpect = [\"guest.completed_by_poll >= 1\"]\n{}",
        if negative {
            "[negative]\nguest = { poll = \"off\" }\nexpect = ['guest.result == \"fail\"']\n"
        } else {
            ""
        }
    );
    Scenario::parse(Path::new("drop-all.toml"), &text).unwrap()
}

fn passing_metrics() -> Metrics {
    let mut m = Metrics::new();
    for (k, v) in [
        ("run.qemu_exit", json!(33)),
        ("guest.result", json!("pass")),
        ("guest.violations", json!(0)),
        ("guest.stall_max_us", json!(5)),
        ("image.mismatches", json!(0)),
        ("image.verified", json!(64)),
        ("image.expected", json!(64)),
        ("guest.completed_by_poll", json!(3)),
    ] {
        m.insert(k.into(), v);
    }
    m
}

fn record(negative: bool, metrics: Metrics) -> RunRecord {
    let s = scenario(true);
    let judge = |list: &[Expectation], implicit| -> Vec<Checked> {
        list.iter()
            .map(|e| Checked {
                judged: e.judge(&metrics),
                implicit,
            })
            .collect()
    };
    let variant = if negative {
        s.negative.as_ref().unwrap()
    } else {
        &s.positive
    };
    let mut checked = Vec::new();
    if !negative {
        checked.extend(judge(&implicit_expectations(), true));
    }
    checked.extend(judge(&variant.expect, false));
    let met_positive = negative.then(|| {
        let mut all = judge(&implicit_expectations(), true);
        all.extend(judge(&s.positive.expect, false));
        all
    });
    RunRecord {
        name: "drop-all".into(),
        scenario: "drop-all".into(),
        description: "d".into(),
        negative,
        long: false,
        repeat: None,
        dir: "/tmp/x".into(),
        wall: Duration::from_millis(420),
        guest_args: None,
        qemu_command: None,
        error: None,
        checked,
        met_positive,
        metrics,
        key_figures: vec!["guest.completed_by_poll=3".into()],
        tails: Vec::new(),
    }
}

#[test]
fn a_negative_control_that_meets_the_positive_expectations_fails() {
    // The fault did not bite: the run passed like the positive one (and its own
    // expectation of a failure is not met either).
    let r = record(true, passing_metrics());
    assert!(!r.passed());
    let failures = r.failures();
    assert!(
        failures.contains(&NEGATIVE_PASSED.to_owned()),
        "{failures:?}"
    );
    // Even when its own expectations hold, meeting all positive ones fails it.
    let mut r = record(true, passing_metrics());
    r.checked.clear();
    assert_eq!(r.failures(), [NEGATIVE_PASSED]);
}

#[test]
fn a_negative_control_that_shows_its_failure_passes() {
    let mut m = passing_metrics();
    m.insert("guest.result".into(), json!("fail"));
    m.insert("run.qemu_exit".into(), json!(35));
    let r = record(true, m);
    assert!(r.passed(), "{:?}", r.failures());
}

#[test]
fn a_negative_control_whose_failure_is_another_fails() {
    // It failed to meet the positive expectations, but not the way it should.
    let mut m = passing_metrics();
    m.insert("guest.violations".into(), json!(2));
    let r = record(true, m);
    assert!(!r.passed());
    assert_eq!(
        r.failures(),
        [r#"expectation "guest.result == \"fail\"" failed: guest.result = "pass""#]
    );
}

#[test]
fn positive_runs_carry_the_implicit_expectations() {
    let r = record(false, passing_metrics());
    assert!(r.passed(), "{:?}", r.failures());
    let mut m = passing_metrics();
    m.remove("guest.stall_max_us");
    let r = record(false, m);
    assert_eq!(
        r.failures(),
        [r#"expectation "guest.stall_max_us <= 1000" failed: guest.stall_max_us = (missing)"#]
    );
    let json = r.to_json();
    assert_eq!(json["verdict"], "fail");
    assert_eq!(json["expectations"][3]["implicit"], true);
    assert_eq!(
        json["expectations"][3]["observed"]["guest.stall_max_us"],
        Value::Null
    );
}

#[test]
fn only_and_skip_select_by_name_and_refuse_unknown_names() {
    let named = |n: &str| {
        Scenario::parse(Path::new(&format!("{n}.toml")), "description = \"d\"\n").unwrap()
    };
    let all = || vec![named("a"), named("b"), named("c")];
    let names = |v: Vec<Scenario>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(names(select(all(), &[], &[]).unwrap()), ["a", "b", "c"]);
    assert_eq!(
        names(select(all(), &["b".into(), "c".into()], &[]).unwrap()),
        ["b", "c"]
    );
    assert_eq!(
        names(select(all(), &[], &["b".into()]).unwrap()),
        ["a", "c"]
    );
    let err = select(all(), &["d".into()], &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--only d: no such scenario (known: a, b, c)"
    );
    assert!(matches!(
        select(all(), &["a".into()], &["a".into()]),
        Err(SelectError::NothingToRun)
    ));
}

#[test]
fn runs_are_planned_with_negatives_and_repeats() {
    let runs = plan(&[scenario(true), scenario(false)], 1);
    let names: Vec<String> = runs.iter().map(Planned::dir_name).collect();
    assert_eq!(names, ["drop-all", "drop-all-negative", "drop-all"]);
    let runs = plan(&[scenario(true)], 2);
    let names: Vec<String> = runs.iter().map(Planned::dir_name).collect();
    assert_eq!(
        names,
        [
            "drop-all-r1",
            "drop-all-negative-r1",
            "drop-all-r2",
            "drop-all-negative-r2"
        ]
    );
}

#[test]
fn junit_has_one_testcase_per_run_with_escaped_failures() {
    let good = record(false, passing_metrics());
    let bad = record(true, passing_metrics());
    let xml = super::report::junit(&[good, bad], Duration::from_secs(1));
    assert!(
        xml.contains(r#"<testsuite name="flakyhba.matrix" tests="2" failures="1""#),
        "{xml}"
    );
    assert!(
        xml.contains(
            r#"<testcase classname="flakyhba.matrix.drop-all" name="drop-all" time="0.420" />"#
        ),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure message="expectation &quot;guest.result == \&quot;fail\&quot;&quot; failed: guest.result = &quot;pass&quot;; a negative control passed"#),
        "{xml}"
    );
    assert_eq!(xml.matches("<testcase ").count(), 2);
    assert_eq!(xml.matches("</testcase>").count(), 1);
    let json = super::report::json(&[record(false, passing_metrics())]);
    assert_eq!(json[0]["name"], "drop-all");
    assert_eq!(json[0]["metrics"]["guest.completed_by_poll"], 3);
}

#[test]
fn progress_and_summary_lines() {
    let r = record(false, passing_metrics());
    assert_eq!(
        r.progress_line(3, 17),
        format!(
            "[ 3/17] {:<34} PASS    0.42 s  guest.completed_by_poll=3",
            "drop-all"
        )
    );
    let mut slow = record(true, passing_metrics());
    slow.wall = Duration::from_millis(2500);
    let table = summary(&[r, slow], Duration::from_secs(3));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("scenario  run       result  wall s  key figures"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("drop-all  positive  PASS      0.42"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("drop-all  negative  FAIL      2.50"),
        "{table}"
    );
    assert!(
        lines[4].contains("1 passed, 1 failed; 0 of 1 negative controls"),
        "{table}"
    );
    assert!(lines[5].contains("drop-all (2.50 s)"), "{table}");
}
