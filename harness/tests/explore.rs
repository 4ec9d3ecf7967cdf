//! `flakyhba-harness explore` end to end: a short seeded campaign against each of two
//! planted bugs finds it, shrinks it to at most two faults, and writes a scenario file
//! that replays it (it fails while the bug is there and passes with `--guest bug=none`);
//! and bad input gets a one-line error and exit status 2. Needs the release backend and
//! guest image, as the other QEMU tests do.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{backend, image, Scratch, HARNESS};

fn harness(args: &[&str], tmp: &Path) -> Output {
    Command::new(HARNESS)
        .args(args)
        .env("FLAKYHBA_BACKEND", backend())
        .env("FLAKYHBA_IMAGE", image())
        .env("TMPDIR", tmp)
        .output()
        .expect("run flakyhba-harness")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn bad_input_gets_one_line_and_exit_status_2() {
    let s = Scratch::new("explore-bad");
    let out = s.root.join("out");
    let out = out.to_str().unwrap();
    for (args, says) in [
        (vec!["--runs", "0", "--out", out], "--runs 0"),
        (vec!["--shard", "3/2", "--out", out], "--shard 3/2"),
        (
            vec!["--guest", "bug=nope", "--out", out],
            "unknown bug \"nope\"",
        ),
        (
            vec!["--out", "/proc/flakyhba-explore"],
            "--out /proc/flakyhba-explore",
        ),
    ] {
        let mut all = vec!["explore"];
        all.extend(&args);
        let o = harness(&all, &s.tmpdir());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("flakyhba-harness explore: "), "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The `.toml` files of a campaign's `found/`.
fn found_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("found"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A campaign with `bug` planted finds it (exit 1), and its shrunk scenario replays.
fn finds_shrinks_and_replays(bug: &str, seed: &str) {
    let s = Scratch::new(&format!("explore-{bug}"));
    let out = s.root.join("out");
    let planted = format!("bug={bug}");
    let o = harness(
        &[
            "explore",
            "--guest",
            &planted,
            "--seed",
            seed,
            "--runs",
            "40",
            "--max-findings",
            "1",
            "--jobs",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        &s.tmpdir(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("shrunk to"), "{}", text(&o));
    // Runs already under way when the first finding came may add another.
    let files = found_files(&out);
    assert!(!files.is_empty(), "{}", text(&o));
    for file in &files {
        let scenario = std::fs::read_to_string(file).unwrap();
        let faults = scenario.matches("[[fault]]").count();
        assert!((1..=2).contains(&faults), "{faults} faults:\n{scenario}");
        assert!(scenario.contains(&format!("bug = \"{bug}\"")), "{scenario}");
        assert!(file.with_extension("log").is_file(), "the shrink log");
        assert!(file.with_extension("").is_dir(), "a failing run of it");
    }
    let file = &files[0];
    let runs = std::fs::read_to_string(out.join("runs.jsonl")).unwrap();
    assert!(
        runs.lines().any(|l| l.contains("\"verdict\":\"found\"")),
        "{runs}"
    );

    // The replay fails while the bug is there, and passes with it taken out.
    let file = file.to_str().unwrap();
    let replay = s.root.join("replay");
    let replay = replay.to_str().unwrap();
    let with_bug = harness(&["run", file, "--out", replay], &s.tmpdir());
    assert_eq!(with_bug.status.code(), Some(1), "{}", text(&with_bug));
    let fixed = harness(
        &["run", file, "--guest", "bug=none", "--out", replay],
        &s.tmpdir(),
    );
    assert_eq!(fixed.status.code(), Some(0), "{}", text(&fixed));
}

#[test]
fn a_campaign_finds_virtio_busy_fatal_and_its_scenario_replays() {
    finds_shrinks_and_replays("virtio-busy-fatal", "1");
}

#[test]
fn a_campaign_finds_unknown_response_ok_and_its_scenario_replays() {
    finds_shrinks_and_replays("unknown-response-ok", "1");
}
