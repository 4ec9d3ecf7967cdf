//! Scenario files end to end, with the real backend and guest image (FLAKYHBA_BACKEND /
//! FLAKYHBA_IMAGE or the release paths): a wrong expectation fails the run and names
//! itself and the value seen, a negative control that does not fail fails the matrix,
//! a good matrix passes with its reports and run directories, and the planted race bugs
//! go unnoticed on one CPU.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{HarnessRun, Scratch};

/// Runs the harness with `args` plus the binaries and `--out`; returns (exit code,
/// stdout, stderr).
fn harness(scratch: &Scratch, args: &[&OsStr]) -> (i32, String, String) {
    let (backend, image) = (common::backend(), common::image());
    let out = scratch.root.join("out");
    let mut all: Vec<&OsStr> = args.to_vec();
    all.extend([
        OsStr::new("--backend"),
        backend.as_os_str(),
        OsStr::new("--image"),
        image.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    let run = HarnessRun::start(&scratch.tmpdir(), &all);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120));
    assert!(
        scratch.leftovers().is_empty(),
        "left in TMPDIR: {:?}",
        scratch.leftovers()
    );
    (status.code().expect("exited"), stdout, stderr)
}

fn write_scenario(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_wrong_expectation_fails_naming_the_expectation_and_the_observed_value() {
    let scratch = Scratch::new("wrong-expect");
    let file = write_scenario(
        &scratch.root.join("scenarios"),
        "wrong",
        r#"
description = "an expectation no run can meet"
timeout_s = 30
expect = ["trace.requests >= 1", "guest.completed_by_interrupt == 123456789"]

[guest]
workload = "smoke"
"#,
    );
    let (code, stdout, stderr) = harness(&scratch, &[OsStr::new("run"), file.as_os_str()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let needle = "expectation \"guest.completed_by_interrupt == 123456789\" failed: \
                  guest.completed_by_interrupt = ";
    let at = stdout.find(needle).unwrap_or_else(|| panic!("{stdout}"));
    let observed: String = stdout[at + needle.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(!observed.is_empty(), "no observed value: {stdout}");
    assert_ne!(observed, "123456789");
    // Only that expectation failed, and the failure shows how to reproduce it.
    assert_eq!(stdout.matches("failed: ").count(), 1, "{stdout}");
    assert!(stdout.contains("--- QEMU command line\n"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("wrong ") && l.contains(" positive  FAIL ")),
        "no summary row: {stdout}"
    );

    let dir = scratch.root.join("out/wrong");
    for file in [
        "backend.log",
        "qemu.log",
        "serial.log",
        "trace.jsonl",
        "backend-command.txt",
        "qemu-command.txt",
        "result.json",
        "timeline.svg",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{file} missing in {}",
            dir.display()
        );
    }
    let backend_command = std::fs::read_to_string(dir.join("backend-command.txt")).unwrap();
    assert!(
        backend_command.contains(" --socket-path ") && backend_command.contains(" --trace "),
        "the backend's command line is kept: {backend_command}"
    );
    assert!(
        !dir.join("disk.img").exists(),
        "the image is removed after the check"
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["verdict"], "fail");
    let failed: Vec<&serde_json::Value> = result["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{result:#}");
    assert_eq!(
        failed[0]["observed"]["guest.completed_by_interrupt"]
            .as_u64()
            .map(|v| v.to_string()),
        Some(observed)
    );
    let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap();
    assert!(
        svg.contains("queue 2 (requests)"),
        "the timeline shows the requests"
    );
}

#[test]
fn a_negative_control_that_passes_fails_the_matrix() {
    let scratch = Scratch::new("neg-passes");
    let dir = scratch.root.join("scenarios");
    // No fault at all: the "negative control" cannot fail, so the harness must say the
    // fault did not bite.
    write_scenario(
        &dir,
        "toothless",
        r#"
description = "a negative control without a fault"
timeout_s = 30
expect = ["trace.requests >= 1"]

[guest]
workload = "smoke"

[negative]
guest = { seed = 5 }
expect = ['guest.result == "fail"']
"#,
    );
    let (code, stdout, stderr) = harness(
        &scratch,
        &[
            OsStr::new("matrix"),
            OsStr::new("--scenarios"),
            dir.as_os_str(),
        ],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("a negative control passed: the fault did not bite"),
        "{stdout}"
    );
    assert!(stdout.contains("toothless  positive  PASS"), "{stdout}");
    assert!(stdout.contains("toothless  negative  FAIL"), "{stdout}");
    assert!(
        stdout.contains("0 of 1 negative controls showed their failure"),
        "{stdout}"
    );
}

#[test]
fn a_good_matrix_passes_with_its_reports() {
    let scratch = Scratch::new("good-matrix");
    let dir = scratch.root.join("scenarios");
    for (name, irq) in [("with-irq", "on"), ("without-irq", "off")] {
        write_scenario(
            &dir,
            name,
            &format!(
                r#"
description = "smoke, irq={irq}"
timeout_s = 30
expect = ["trace.requests >= 1", "guest.completed_by_poll + guest.completed_by_interrupt >= 1"]

[guest]
workload = "smoke"
irq = "{irq}"
"#
            ),
        );
    }
    let junit = scratch.root.join("reports/junit.xml");
    let json = scratch.root.join("reports/results.json");
    let (code, stdout, stderr) = harness(
        &scratch,
        &[
            OsStr::new("matrix"),
            OsStr::new("--scenarios"),
            dir.as_os_str(),
            OsStr::new("--skip"),
            OsStr::new("without-irq"),
            OsStr::new("--repeat"),
            OsStr::new("2"),
            OsStr::new("--seed"),
            OsStr::new("9"),
            OsStr::new("--junit"),
            junit.as_os_str(),
            OsStr::new("--json"),
            json.as_os_str(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("[1/2] with-irq-r1 "), "{stdout}");
    assert!(stdout.contains("[2/2] with-irq-r2 "), "{stdout}");
    assert!(!stdout.contains("without-irq"), "{stdout}");
    assert!(stdout.contains("2 runs in "), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"tests="2" failures="0""#), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r["verdict"], "pass", "{r:#}");
        // --seed reaches the guest (its echo) and the backend's command line.
        assert_eq!(r["metrics"]["guest.seed"], 9);
        assert_eq!(r["metrics"]["args.seed"], 9);
    }
    let backend_log = scratch.root.join("out/with-irq-r1/backend.log");
    assert!(backend_log.is_file());
}

/// The race scenarios of harness/scenarios plant `timer-unlocked` and `timer-arm-no-cas`
/// in their negative controls, which the matrix proves caught on two CPUs. On one CPU
/// the port never runs the routines involved at the same time, so the same bugs pass
/// unnoticed: each negative control meets every expectation of its positive run.
#[test]
fn the_race_bugs_go_unnoticed_on_one_cpu() {
    let scratch = Scratch::new("races-one-cpu");
    let scenarios = common::workspace_root().join("harness/scenarios");
    let json = scratch.root.join("results.json");
    let (code, stdout, stderr) = harness(
        &scratch,
        &[
            OsStr::new("matrix"),
            OsStr::new("--scenarios"),
            scenarios.as_os_str(),
            OsStr::new("--only"),
            OsStr::new("race-timer-unlocked,race-timer-arm-no-cas"),
            OsStr::new("--guest"),
            OsStr::new("cpus=1"),
            OsStr::new("--json"),
            json.as_os_str(),
        ],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("0 of 2 negative controls showed their failure"),
        "{stdout}"
    );
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        assert_eq!(r["metrics"]["guest.cpus"], 1, "{r:#}");
        if r["negative"] == false {
            assert_eq!(r["verdict"], "pass", "{r:#}");
            continue;
        }
        let bug = match r["scenario"].as_str().unwrap() {
            "race-timer-unlocked" => "timer-unlocked",
            _ => "timer-arm-no-cas",
        };
        assert_eq!(r["metrics"]["guest.bug"], bug, "{r:#}");
        assert_eq!(r["metrics"]["guest.result"], "pass", "{r:#}");
        assert_eq!(r["metrics"]["guest.violations"], 0, "{r:#}");
        let failures = r["failures"].to_string();
        assert!(failures.contains("the fault did not bite"), "{r:#}");
    }
}
