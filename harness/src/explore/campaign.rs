//! A campaign: the shard's cases run `jobs` at a time, each judged by the oracle, with a
//! progress line and a line per new finding; `<out>/runs.jsonl` gets one line per run
//! (its plan's hash and verdict, so two campaigns can be compared). Then the first case
//! of each distinct finding is shrunk, and written to `<out>/found/`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::case::Case;
use super::generate::{generate, GenOptions};
use super::minimize::{shrink_finding, Written};
use super::oracle::{Finding, Verdict};
use super::run::{confirmed, run_case, Ran};
use super::ExploreError;
use crate::launch::boot::RunError;
use crate::launch::signals;
use crate::scenario::matrix::MatrixOptions;

/// What `flakyhba-harness explore` was asked for.
#[derive(Clone, Debug)]
pub struct ExploreOptions {
    /// How each run is made; its `out` is `<out>/runs`.
    pub runner: MatrixOptions,
    pub out: PathBuf,
    pub gen: GenOptions,
    /// Guest arguments applied over every generated case's (`--guest`).
    pub overrides: Vec<(String, String)>,
    pub runs: u64,
    /// `(K, N)`: this shard takes plans K-1, K-1+N, ... (1-based K).
    pub shard: (u64, u64),
    pub jobs: usize,
    pub shrink: bool,
    /// Reruns a shrink step must break the same clause in.
    pub reruns: usize,
    /// Stop starting runs once this many distinct findings were seen.
    pub max_findings: Option<usize>,
    /// How many distinct findings are shrunk.
    pub shrink_limit: usize,
    /// The command line, for the found files' headers.
    pub command: String,
}

/// The first case of a distinct finding, and how often it was seen.
#[derive(Clone, Debug)]
pub struct Seen {
    pub finding: Finding,
    pub index: u64,
    pub case: Case,
    pub after: Duration,
    pub count: u64,
    /// The next cases that showed it, shrunk in turn when the first does not reproduce.
    pub more: Vec<(u64, Case)>,
}

/// Other cases of a finding kept for shrinking, besides its first.
const MORE_CASES: usize = 2;

/// What a campaign did.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: u64,
    pub passed: u64,
    pub tolerated: u64,
    /// Timing violations that did not come back ([`Verdict::Noise`]).
    pub noise: u64,
    pub found: u64,
    pub elapsed: Duration,
    /// Distinct findings, in the order they were first seen.
    pub seen: Vec<Seen>,
    pub shrunk: Vec<Written>,
    pub interrupted: bool,
}

impl Summary {
    pub fn runs_per_second(&self) -> f64 {
        self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Case `index` of the campaign: generated, then the `--guest` overrides.
pub fn case_at(opts: &ExploreOptions, index: u64) -> Result<Case, ExploreError> {
    let mut case = generate(&opts.gen, index);
    if !opts.overrides.is_empty() {
        let mut words = case.guest_words();
        words.extend(opts.overrides.iter().cloned());
        let line = words
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        case.guest = guest_miniport::contract::GuestArgs::parse(&line)
            .map_err(|e| ExploreError::BadGuest(e.to_string()))?;
        if !opts.overrides.iter().any(|(k, _)| k == "deadline_ms") {
            case.guest.deadline_ms = super::generate::deadline_for(&case);
        }
    }
    Ok(case)
}

/// The plans of this shard, in order.
fn indices(opts: &ExploreOptions) -> Vec<u64> {
    let (k, n) = opts.shard;
    (0..opts.runs).filter(|i| i % n == k - 1).collect()
}

struct Done {
    index: u64,
    case: Case,
    ran: Result<Ran, RunError>,
}

/// Runs the campaign, then shrinks and writes what it found.
pub fn run_campaign(opts: &ExploreOptions) -> Result<Summary, ExploreError> {
    let start = Instant::now();
    let list = indices(opts);
    let runs_log = opts.out.join("runs.jsonl");
    let mut log = File::create(&runs_log).map_err(|e| ExploreError::Write(runs_log.clone(), e))?;
    let mut sum = Summary::default();
    let mut progress = Progress::new(list.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Done>();
    std::thread::scope(|scope| -> Result<(), ExploreError> {
        for _ in 0..opts.jobs.clamp(1, list.len().max(1)) {
            let tx = tx.clone();
            let (next, stop, list) = (&next, &stop, &list);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if stop.load(Ordering::SeqCst) || signals::interrupted() {
                    break;
                }
                let Some(&index) = list.get(i) else { break };
                let Ok(case) = case_at(opts, index) else {
                    break;
                };
                let name = format!("p{index:06}");
                let ran = run_case(&case, &name, &opts.runner, |v| v.finding().is_some())
                    .and_then(|r| confirmed(&case, r, &name, &opts.runner));
                if tx.send(Done { index, case, ran }).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for done in rx {
            let ran = match done.ran {
                Ok(r) => r,
                Err(RunError::Interrupted) => {
                    sum.interrupted = true;
                    stop.store(true, Ordering::SeqCst);
                    continue;
                }
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(ExploreError::Run(e.to_string()));
                }
            };
            record(
                &mut sum,
                &mut log,
                done.index,
                &done.case,
                &ran,
                start.elapsed(),
            )?;
            progress.tick(&sum, start.elapsed());
            if opts.max_findings.is_some_and(|m| sum.seen.len() >= m) {
                stop.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    })?;
    progress.finish();
    sum.interrupted |= signals::interrupted();
    sum.elapsed = start.elapsed();
    if opts.shrink && !sum.interrupted {
        shrink_all(opts, &mut sum, start)?;
    }
    write_summary(opts, &sum)?;
    Ok(sum)
}

/// Shrinks each distinct finding (the first `shrink_limit`): its first case, else, when
/// that one does not break the clause again, the next ones that showed it.
fn shrink_all(
    opts: &ExploreOptions,
    sum: &mut Summary,
    start: Instant,
) -> Result<(), ExploreError> {
    for seen in sum.seen.iter().take(opts.shrink_limit) {
        let mut written = None;
        let cases =
            std::iter::once((seen.index, &seen.case)).chain(seen.more.iter().map(|(i, c)| (*i, c)));
        for (index, case) in cases {
            let one = Seen {
                index,
                case: case.clone(),
                more: Vec::new(),
                ..seen.clone()
            };
            match shrink_finding(opts, &one, start) {
                Ok(w) => {
                    let done = w.file.is_some();
                    written = Some(w);
                    if done {
                        break;
                    }
                }
                Err(ExploreError::Interrupted) => {
                    sum.interrupted = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        sum.shrunk.extend(written);
    }
    Ok(())
}

/// Counts a run, logs it to runs.jsonl, and notes a new finding.
fn record(
    sum: &mut Summary,
    log: &mut File,
    index: u64,
    case: &Case,
    ran: &Ran,
    at: Duration,
) -> Result<(), ExploreError> {
    sum.runs += 1;
    let (verdict, clause, detail) = match &ran.verdict {
        Verdict::Pass => {
            sum.passed += 1;
            ("pass", None, None)
        }
        Verdict::Tolerated(why) => {
            sum.tolerated += 1;
            ("tolerated", None, Some(why.clone()))
        }
        Verdict::Noise(why) => {
            sum.noise += 1;
            ("noise", None, Some(why.clone()))
        }
        Verdict::Found(f) => {
            sum.found += 1;
            note_finding(sum, f, index, case, ran, at);
            ("found", Some(f.signature()), Some(f.detail.clone()))
        }
    };
    let line = json!({
        "index": index,
        "case": case.short_hash(),
        "verdict": verdict,
        "finding": clause,
        "detail": detail,
        "wall_ms": ran.wall.as_millis() as u64,
    });
    writeln!(log, "{line}").map_err(|e| ExploreError::Write(PathBuf::from("runs.jsonl"), e))
}

fn note_finding(sum: &mut Summary, f: &Finding, index: u64, case: &Case, ran: &Ran, at: Duration) {
    let sig = f.signature();
    if let Some(s) = sum.seen.iter_mut().find(|s| s.finding.signature() == sig) {
        s.count += 1;
        if s.more.len() < MORE_CASES {
            s.more.push((index, case.clone()));
        }
        return;
    }
    eprintln!(
        "{}finding at plan {index} after {:.1} s: {sig}: {} (run directory {})",
        clear_line(),
        at.as_secs_f64(),
        f.detail,
        ran.dir.display()
    );
    sum.seen.push(Seen {
        finding: f.clone(),
        index,
        case: case.clone(),
        after: at,
        count: 1,
        more: Vec::new(),
    });
}

fn clear_line() -> &'static str {
    if std::io::stderr().is_terminal() {
        "\r\x1b[K"
    } else {
        ""
    }
}

/// The progress line: rewritten in place on a terminal, else a line now and then.
struct Progress {
    total: usize,
    tty: bool,
    last: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, sum: &Summary, elapsed: Duration) {
        let line = format!(
            "[{:>6}/{}] {:.1} runs/s, {} tolerated, {} noise, {} failing runs ({} distinct findings)",
            sum.runs,
            self.total,
            sum.runs as f64 / elapsed.as_secs_f64().max(1e-9),
            sum.tolerated,
            sum.noise,
            sum.found,
            sum.seen.len()
        );
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else if self.last.elapsed() >= Duration::from_secs(10) || sum.runs as usize == self.total
        {
            eprintln!("{line}");
            self.last = Instant::now();
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// `<out>/summary.json`.
fn write_summary(opts: &ExploreOptions, sum: &Summary) -> Result<(), ExploreError> {
    let findings: Vec<_> = sum
        .seen
        .iter()
        .map(|s| {
            let shrunk = sum
                .shrunk
                .iter()
                .find(|x| x.signature == s.finding.signature());
            json!({
                "finding": s.finding.signature(),
                "clause": s.finding.clause.name(),
                "detail": s.finding.detail,
                "first_plan": s.index,
                "runs": s.count,
                "first_after_s": s.after.as_secs_f64(),
                "file": shrunk.and_then(|x| x.file.as_ref()).map(|p| p.display().to_string()),
                "faults": shrunk.map(|x| x.case.faults.len()),
                "shrunk_after_s": shrunk.map(|x| x.done_after.as_secs_f64()),
            })
        })
        .collect();
    let v = json!({
        "seed": opts.gen.seed,
        "runs": sum.runs,
        "shard": format!("{}/{}", opts.shard.0, opts.shard.1),
        "jobs": opts.jobs,
        "passed": sum.passed,
        "tolerated": sum.tolerated,
        "noise": sum.noise,
        "failing_runs": sum.found,
        "elapsed_s": sum.elapsed.as_secs_f64(),
        "runs_per_second": sum.runs_per_second(),
        "interrupted": sum.interrupted,
        "findings": findings,
    });
    let path = opts.out.join("summary.json");
    let text = serde_json::to_string_pretty(&v).expect("JSON values encode") + "\n";
    std::fs::write(&path, text).map_err(|e| ExploreError::Write(path, e))
}

/// The summary printed at the end.
pub fn render_summary(opts: &ExploreOptions, sum: &Summary) -> String {
    let mut out = format!(
        "explore: {} runs in {:.1} s ({:.1} runs/s, jobs {}): {} passed, {} tolerated \
         (failed the way their plan makes unavoidable), {} timing violations that did not \
         come back (host load), {} failing runs, {} distinct findings\n",
        sum.runs,
        sum.elapsed.as_secs_f64(),
        sum.runs_per_second(),
        opts.jobs,
        sum.passed,
        sum.tolerated,
        sum.noise,
        sum.found,
        sum.seen.len()
    );
    let counts: BTreeMap<String, u64> = sum
        .seen
        .iter()
        .map(|s| (s.finding.signature(), s.count))
        .collect();
    for s in &sum.seen {
        let sig = s.finding.signature();
        out += &format!(
            "  {sig}: {} runs, first at plan {} after {:.1} s\n    {}\n",
            counts[&sig],
            s.index,
            s.after.as_secs_f64(),
            s.finding.detail
        );
        if let Some(x) = sum.shrunk.iter().find(|x| x.signature == sig) {
            match &x.file {
                Some(p) => {
                    out += &format!(
                        "    shrunk to {} fault(s) after {:.1} s: {}\n",
                        x.case.faults.len(),
                        x.done_after.as_secs_f64(),
                        p.display()
                    )
                }
                None => out += "    not written: the shrunk case did not reproduce\n",
            }
        }
    }
    if sum.interrupted {
        out += "interrupted\n";
    }
    out
}
