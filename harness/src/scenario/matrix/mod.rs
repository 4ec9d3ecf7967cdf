//! Scenario runs and the matrix: each run starts the backend with the scenario's faults
//! and a trace, boots the guest image with its arguments, gathers the metrics (guest
//! report, trace, disk image), judges the expectations, and leaves its directory:
//! backend.log, qemu.log, serial.log, trace.jsonl, plan.toml (when the scenario gives a
//! whole plan), backend-command.txt, qemu-command.txt, result.json and timeline.svg. A
//! negative control passes only when it shows its own failure and does not meet the
//! positive run's expectations.

pub mod console;
pub mod execute;
pub mod plan;
pub mod record;
pub mod report;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use self::execute::{execute, Gathered};
use self::plan::Planned;
use self::record::{key_figures, log_tails, Checked, RunRecord};
use super::expect::Metrics;
use super::file::{cpu_expectations, implicit_expectations};
use super::metrics::Trace;
use super::timeline;
use crate::launch::accel::Accel;
use crate::launch::binaries::Binaries;
use crate::launch::boot::RunError;
use crate::launch::signals;

#[derive(Clone, Debug)]
pub struct MatrixOptions {
    pub bins: Binaries,
    pub accel: Accel,
    /// Every run's directory goes here.
    pub out: PathBuf,
    /// Replaces the guest's and the backend's seed of every scenario.
    pub seed: Option<u64>,
    /// `key=value` guest arguments applied after the scenario's.
    pub guest: Vec<(String, String)>,
    /// Replaces every scenario's harness deadline.
    pub timeout: Option<Duration>,
    pub repeat: u32,
    pub jobs: usize,
    pub keep_image: bool,
}

/// Runs one planned run to its record. Only an interrupt is an error.
pub fn run_one(run: &Planned, opts: &MatrixOptions) -> Result<RunRecord, RunError> {
    let dir = opts.out.join(run.dir_name());
    let start = Instant::now();
    let mut g = Gathered {
        metrics: Metrics::new(),
        qemu_command: None,
        guest_args: None,
        args: None,
        trace: Trace::default(),
        timeline: None,
    };
    let outcome = execute(run, opts, &dir, &mut g);
    if matches!(outcome, Err(RunError::Interrupted)) || signals::interrupted() {
        return Err(RunError::Interrupted);
    }
    let variant = run.variant();
    let mut checked: Vec<Checked> = Vec::new();
    if !run.negative && run.scenario.implicit {
        let cpus = g.args.as_ref().map(cpu_expectations).unwrap_or_default();
        checked.extend(
            implicit_expectations()
                .iter()
                .chain(&cpus)
                .map(|e| Checked {
                    judged: e.judge(&g.metrics),
                    implicit: true,
                }),
        );
    }
    checked.extend(variant.expect.iter().map(|e| Checked {
        judged: e.judge(&g.metrics),
        implicit: false,
    }));
    let met_positive = run.negative.then(|| {
        implicit_expectations()
            .iter()
            .map(|e| (e, true))
            .chain(run.scenario.positive.expect.iter().map(|e| (e, false)))
            .map(|(e, implicit)| Checked {
                judged: e.judge(&g.metrics),
                implicit,
            })
            .collect()
    });
    let key_figures = key_figures(&variant.expect, &g.metrics);
    let mut record = RunRecord {
        name: run.dir_name(),
        scenario: run.scenario.name.clone(),
        description: variant.description.clone(),
        negative: run.negative,
        long: run.scenario.long,
        repeat: run.repeat,
        dir: dir.clone(),
        wall: start.elapsed(),
        guest_args: g.guest_args.clone(),
        qemu_command: g.qemu_command.clone(),
        error: outcome.err().map(|e| e.to_string()),
        checked,
        met_positive,
        metrics: g.metrics,
        key_figures,
        tails: Vec::new(),
    };
    if dir.is_dir() {
        let title = format!(
            "{}{}: {}",
            run.scenario.name,
            if run.negative {
                " (negative control)"
            } else {
                ""
            },
            variant.description
        );
        let guest = g.timeline.as_ref().map(|(t, f)| (t, *f));
        if let Err(e) = timeline::write(&dir.join("timeline.svg"), &title, &g.trace, guest) {
            log::warn!("{e}");
        }
        if !record.passed() {
            record.tails = log_tails(&dir);
        }
        let text = serde_json::to_string_pretty(&record.to_json()).expect("JSON values encode");
        if let Err(e) = std::fs::write(dir.join("result.json"), text + "\n") {
            log::warn!("could not write {}: {e}", dir.join("result.json").display());
        }
    }
    Ok(record)
}

/// Runs every planned run, `opts.jobs` at a time, calling `progress` as each ends (in
/// the order they end). Stops early on a signal; the records so far are returned.
pub fn run_all(
    runs: &[Planned],
    opts: &MatrixOptions,
    mut progress: impl FnMut(usize, &RunRecord),
) -> (Vec<RunRecord>, bool) {
    let next = Mutex::new(0usize);
    let (tx, rx) = mpsc::channel::<(usize, Result<RunRecord, RunError>)>();
    let mut records: Vec<Option<RunRecord>> = vec![None; runs.len()];
    let mut interrupted = false;
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.clamp(1, runs.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                if signals::interrupted() {
                    break;
                }
                let i = {
                    let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(run) = runs.get(i) else { break };
                // Children die with the thread that spawned them (PR_SET_PDEATHSIG);
                // this thread outlives them: run_one reaps both before returning.
                let outcome = run_one(run, opts);
                let stop = outcome.is_err();
                if tx.send((i, outcome)).is_err() || stop {
                    break;
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, outcome) in rx {
            match outcome {
                Ok(record) => {
                    done += 1;
                    progress(done, &record);
                    records[i] = Some(record);
                }
                Err(_) => interrupted = true,
            }
        }
    });
    (
        records.into_iter().flatten().collect(),
        interrupted || signals::interrupted(),
    )
}

#[cfg(test)]
mod tests;
