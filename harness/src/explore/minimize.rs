//! From a finding to its file: shrink the first case that showed it (every step logged
//! to `<out>/found/<hash>.log`), run the shrunk case again to see it reproduce, run it
//! with the planted bug taken out to learn the correct outcome, and write the scenario
//! file `<out>/found/<hash>.toml` beside the directory of one failing run of it.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_miniport::contract::PlantedBug;

use super::campaign::{ExploreOptions, Seen};
use super::case::Case;
use super::found::{failure_fields, scenario_text, Fixed, Provenance};
use super::oracle::Verdict;
use super::run::{rerun, run_case};
use super::shrink::{shrink, Shrunk, Step};
use super::ExploreError;
use crate::launch::boot::RunError;

/// A shrunk finding and where it was written.
#[derive(Clone, Debug)]
pub struct Written {
    pub signature: String,
    pub case: Case,
    /// None when the shrunk case did not break the clause again.
    pub file: Option<PathBuf>,
    /// From the campaign's start.
    pub done_after: Duration,
}

fn run_err(e: RunError) -> ExploreError {
    match e {
        RunError::Interrupted => ExploreError::Interrupted,
        e => ExploreError::Run(e.to_string()),
    }
}

/// Shrinks `seen`'s case and writes its file.
pub fn shrink_finding(
    opts: &ExploreOptions,
    seen: &Seen,
    start: Instant,
) -> Result<Written, ExploreError> {
    let clause = seen.finding.clause;
    let hash0 = seen.case.short_hash();
    let found_dir = opts.out.join("found");
    std::fs::create_dir_all(&found_dir).map_err(|e| ExploreError::Write(found_dir.clone(), e))?;
    let log_path = found_dir.join(format!("{hash0}.log"));
    let mut log = File::create(&log_path).map_err(|e| ExploreError::Write(log_path.clone(), e))?;
    eprintln!(
        "shrinking {} (plan {}) ...",
        seen.finding.signature(),
        seen.index
    );
    let shrunk = shrink_logged(opts, seen, &mut log)?;
    let case = shrunk.case.clone();
    let confirm = rerun(
        &case,
        opts.reruns,
        None,
        &format!("c{hash0}"),
        opts.jobs,
        &opts.runner,
    )
    .map_err(run_err)?;
    let matched = confirm
        .iter()
        .filter(|r| r.verdict.clause() == Some(clause))
        .count();
    let kept = shrunk.steps.iter().filter(|s| s.kept).count();
    let mut written = Written {
        signature: seen.finding.signature(),
        case: case.clone(),
        file: None,
        done_after: start.elapsed(),
    };
    let _ = writeln!(
        log,
        "shrunk to {} fault(s) in {kept} kept steps of {} ({} runs); reruns of the shrunk \
         case broke `{clause}` {matched} of {}\n{}guest: {}",
        case.faults.len(),
        shrunk.steps.len(),
        shrunk.runs,
        confirm.len(),
        case.plan_text(),
        case.guest
    );
    if matched == 0 {
        let _ = writeln!(
            log,
            "not written: the shrunk case did not break the clause again"
        );
        return Ok(written);
    }
    let provenance = Provenance {
        finding: &seen.finding,
        command: opts.command.clone(),
        index: seen.index,
        steps_kept: kept,
        steps_tried: shrunk.steps.len(),
        runs: shrunk.runs,
        reproduced: (matched, confirm.len()),
        fixed: fixed_outcome(opts, &case, &hash0)?,
    };
    let path = write_found(opts, &case, provenance)?;
    let _ = writeln!(log, "written: {}", path.display());
    // The log goes by the shrunk case's name, beside its file.
    let named = path.with_extension("log");
    if let Err(e) = std::fs::rename(&log_path, &named) {
        log::warn!("could not rename {}: {e}", log_path.display());
    }
    eprintln!(
        "  shrunk to {} fault(s): {} ({matched} of {} reruns broke `{clause}`)",
        case.faults.len(),
        path.display(),
        confirm.len()
    );
    written.file = Some(path);
    written.done_after = start.elapsed();
    Ok(written)
}

/// The shrink itself, each step logged.
fn shrink_logged(
    opts: &ExploreOptions,
    seen: &Seen,
    log: &mut File,
) -> Result<Shrunk, ExploreError> {
    let clause = seen.finding.clause;
    let hash0 = seen.case.short_hash();
    let _ = writeln!(
        log,
        "finding {} at plan {}: {}\nshrinking (a step is kept only if {} reruns break \
         `{clause}`):\n{}guest: {}",
        seen.finding.signature(),
        seen.index,
        seen.finding.detail,
        opts.reruns,
        seen.case.plan_text(),
        seen.case.guest
    );
    let mut failure: Option<RunError> = None;
    let mut tries = 0usize;
    let mut run = |c: &Case, n: usize| -> Vec<Verdict> {
        if failure.is_some() {
            return Vec::new();
        }
        tries += 1;
        let tag = format!("s{hash0}-{tries}");
        match rerun(c, n, Some(clause), &tag, opts.jobs, &opts.runner) {
            Ok(runs) => runs.into_iter().map(|r| r.verdict).collect(),
            Err(e) => {
                failure = Some(e);
                Vec::new()
            }
        }
    };
    let mut note = |s: &Step| {
        let verdict = if s.kept { "kept    " } else { "rejected" };
        let _ = writeln!(
            log,
            "{verdict} {} ({}/{} runs broke it)",
            s.change, s.matched, s.runs
        );
    };
    let shrunk = shrink(&seen.case, clause, opts.reruns, &mut run, &mut note);
    match failure {
        Some(e) => Err(run_err(e)),
        None => Ok(shrunk),
    }
}

/// One failing run of the shrunk case, kept as `found/<hash>/`, and its scenario file
/// `found/<hash>.toml`.
fn write_found(
    opts: &ExploreOptions,
    case: &Case,
    provenance: Provenance<'_>,
) -> Result<PathBuf, ExploreError> {
    let found_dir = opts.out.join("found");
    let hash = case.short_hash();
    let mut keep_opts = opts.runner.clone();
    keep_opts.out = found_dir.clone();
    let last = run_case(case, &hash, &keep_opts, |_| true).map_err(run_err)?;
    // The values this run saw, when it broke the same clause.
    let seen_now = last
        .verdict
        .finding()
        .filter(|f| f.clause == provenance.finding.clause)
        .cloned();
    let finding = seen_now.unwrap_or_else(|| provenance.finding.clone());
    let text = scenario_text(
        case,
        &Provenance {
            finding: &finding,
            ..provenance
        },
    );
    let path = found_dir.join(format!("{hash}.toml"));
    std::fs::write(&path, text).map_err(|e| ExploreError::Write(path.clone(), e))?;
    Ok(path)
}

/// What the shrunk case does with the planted bug taken out.
fn fixed_outcome(opts: &ExploreOptions, case: &Case, tag: &str) -> Result<Fixed, ExploreError> {
    if case.guest.bug == PlantedBug::None {
        return Ok(Fixed::Unknown);
    }
    let mut fixed = case.clone();
    fixed.guest.bug = PlantedBug::None;
    let runs = rerun(
        &fixed,
        opts.reruns,
        None,
        &format!("n{tag}"),
        opts.jobs,
        &opts.runner,
    )
    .map_err(run_err)?;
    if let Some(f) = runs.iter().find_map(|r| r.verdict.finding()) {
        return Ok(Fixed::AlsoFound(format!("{}: {}", f.signature(), f.detail)));
    }
    let failing: Vec<_> = runs
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Tolerated(_)))
        .map(|r| failure_fields(&r.metrics))
        .collect();
    let Some(first) = failing.first() else {
        return Ok(Fixed::Passes);
    };
    // Only the fields every failing run agrees on.
    let fields = first
        .iter()
        .filter(|f| failing.iter().all(|o| o.contains(f)))
        .cloned()
        .collect();
    Ok(Fixed::Fails {
        fields,
        sometimes_passes: failing.len() < runs.len(),
    })
}
