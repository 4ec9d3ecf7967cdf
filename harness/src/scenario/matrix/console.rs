//! The matrix on the terminal: a progress line per run as it ends (with the details of
//! a failed one), the summary table, and the JUnit and JSON reports.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use super::plan::Planned;
use super::record::summary;
use super::{report, run_all, MatrixOptions};
use crate::launch::signals::{self, EXIT_INTERRUPTED};

/// Runs `runs` and reports them; exits 1 if any failed, 130 when interrupted.
pub fn run_and_report(
    runs: &[Planned],
    opts: &MatrixOptions,
    junit: Option<&Path>,
    json: Option<&Path>,
) -> ExitCode {
    println!("{} run(s), results in {}", runs.len(), opts.out.display());
    let start = Instant::now();
    let total = runs.len();
    let (records, interrupted) = run_all(runs, opts, |i, record| {
        println!("{}", record.progress_line(i, total));
        if !record.passed() {
            print!("{}", record.details());
        }
    });
    let wall = start.elapsed();
    if interrupted || signals::interrupted() {
        eprintln!("flakyhba-harness: interrupted");
        return ExitCode::from(EXIT_INTERRUPTED as u8);
    }
    println!();
    print!("{}", summary(&records, wall));
    let mut ok = records.iter().all(|r| r.passed());
    if let Some(path) = junit {
        if let Err(e) = report::write(path, &report::junit(&records, wall)) {
            eprintln!("flakyhba-harness: {e}");
            ok = false;
        }
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report::json(&records)).expect("JSON encodes");
        if let Err(e) = report::write(path, &(text + "\n")) {
            eprintln!("flakyhba-harness: {e}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
