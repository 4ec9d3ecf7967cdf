//! One run of a case, through the matrix's runner (`scenario::matrix::run_one`), judged
//! by the oracle; and a case run several times at once, for the shrinker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::case::Case;
use super::oracle::{judge, timed_violations_only, Allowance, Clause, Observed, Verdict};
use crate::launch::boot::RunError;
use crate::scenario::expect::Metrics;
use crate::scenario::file::Scenario;
use crate::scenario::matrix::plan::Planned;
use crate::scenario::matrix::{run_one, MatrixOptions};

/// A judged run.
#[derive(Clone, Debug)]
pub struct Ran {
    pub verdict: Verdict,
    pub metrics: Metrics,
    pub wall: Duration,
    pub dir: PathBuf,
}

/// What the backend's log says went wrong, if anything: a panic or an error line.
fn backend_failure(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("panicked at") || l.contains(" ERROR "))
        .map(|l| format!("backend.log: {}", l.trim()))
}

/// Runs `case` in `opts.out/NAME`, judges it, and removes the directory unless `keep`
/// says to keep it for this verdict. Only an interrupt is an error.
pub fn run_case(
    case: &Case,
    name: &str,
    opts: &MatrixOptions,
    keep: impl Fn(&Verdict) -> bool,
) -> Result<Ran, RunError> {
    let plan = case
        .plan()
        .map_err(|e| RunError::BadGuestArgs(format!("the case's plan is invalid: {e}")))?;
    let planned = Planned {
        scenario: Scenario {
            name: name.to_owned(),
            path: PathBuf::new(),
            long: false,
            implicit: false,
            positive: case.variant("explore"),
            negative: None,
        },
        negative: false,
        repeat: None,
    };
    let record = run_one(&planned, opts)?;
    let allow = Allowance::derive(&plan, &case.guest);
    let verdict = judge(
        &allow,
        &Observed {
            metrics: &record.metrics,
            error: record.error.as_deref(),
            backend_failed: backend_failure(&record.dir.join("backend.log")),
        },
    );
    if !keep(&verdict) {
        if let Err(e) = std::fs::remove_dir_all(&record.dir) {
            log::warn!("could not remove {}: {e}", record.dir.display());
        }
    }
    Ok(Ran {
        verdict,
        metrics: record.metrics,
        wall: record.wall,
        dir: record.dir,
    })
}

/// Reruns needed to believe a violation judged by measured time alone.
pub const TIMED_RERUNS: usize = 2;

/// A run's verdict, confirmed: a violation judged by measured time alone counts only
/// when every rerun of the case breaks the same rule again; else it is noise.
pub fn confirmed(case: &Case, ran: Ran, name: &str, opts: &MatrixOptions) -> Result<Ran, RunError> {
    let Some(f) = ran.verdict.finding() else {
        return Ok(ran);
    };
    if f.clause != Clause::Rule || !timed_violations_only(&ran.metrics) {
        return Ok(ran);
    }
    let again = rerun(case, TIMED_RERUNS, None, &format!("{name}-t"), 1, opts)?;
    let same = |r: &Ran| r.verdict.finding().is_some_and(|g| g.key == f.key);
    if again.len() == TIMED_RERUNS && again.iter().all(same) {
        return Ok(ran);
    }
    let why = format!(
        "{} did not come back in {TIMED_RERUNS} reruns: host load",
        f.detail
    );
    if let Err(e) = std::fs::remove_dir_all(&ran.dir) {
        log::warn!("could not remove {}: {e}", ran.dir.display());
    }
    Ok(Ran {
        verdict: Verdict::Noise(why),
        ..ran
    })
}

/// Runs `case` up to `n` times, `jobs` at once, stopping once a run does not break
/// `want` (when given). The runs' directories are removed.
pub fn rerun(
    case: &Case,
    n: usize,
    want: Option<Clause>,
    tag: &str,
    jobs: usize,
    opts: &MatrixOptions,
) -> Result<Vec<Ran>, RunError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let out: Mutex<Vec<(usize, Result<Ran, RunError>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, n.max(1)) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= n || stop.load(Ordering::SeqCst) {
                    break;
                }
                let ran = run_case(case, &format!("{tag}-{k}"), opts, |_| false);
                let miss = match &ran {
                    Ok(r) => want.is_some_and(|w| r.verdict.clause() != Some(w)),
                    Err(_) => true,
                };
                if miss {
                    stop.store(true, Ordering::SeqCst);
                }
                out.lock().unwrap_or_else(|p| p.into_inner()).push((k, ran));
            });
        }
    });
    let mut all = out.into_inner().unwrap_or_else(|p| p.into_inner());
    all.sort_by_key(|(k, _)| *k);
    all.into_iter().map(|(_, r)| r).collect()
}
