//! Scenario runs and the matrix: each run starts the backend with the scenario's faults
//! and a trace, boots the guest image with its arguments, gathers the metrics (guest
//! report, trace, disk image), judges the expectations, and leaves its directory:
//! backend.log, qemu.log, serial.log, trace.jsonl, plan.toml (when the scenario gives a
//! whole plan), backend-command.txt, qemu-command.txt, result.json and timeline.svg. A negative control passes only when it shows its own
//! failure and does not meet the positive run's expectations.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use guest_miniport::contract::{GuestArgs, REPORT_EVENT_KEY};
use serde_json::{json, Value};

use super::expect::{self, Judged, Metrics};
use super::file::{implicit_expectations, Scenario, Variant};
use super::judge::{check_image, MAX_BLOCK_SIZE};
use super::metrics::{self, GuestTimeline, Trace};
use super::timeline;
use crate::launch::accel::Accel;
use crate::launch::binaries::Binaries;
use crate::launch::boot::{backend_command, Boot, End, RunError};
use crate::launch::process;
use crate::launch::qemu::{self, QemuConfig};
use crate::launch::rundir::{RunDir, DISK_BYTES};
use crate::launch::serial::SerialLine;
use crate::launch::signals;

/// Lines of each log shown when a run fails.
const TAIL_LINES: usize = 30;
/// The issue's budget for a scenario that is not slow by design; measured, not asserted.
pub const SHORT_RUN_BUDGET: Duration = Duration::from_secs(2);
/// Key figures shown per run.
const KEY_FIGURES: usize = 3;

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

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--{flag} {name}: no such scenario (known: {known})")]
    UnknownScenario {
        flag: &'static str,
        name: String,
        known: String,
    },
    #[error("--only and --skip leave no scenario to run")]
    NothingToRun,
}

/// The scenarios `--only` (all when empty) and `--skip` leave; a name that matches no
/// scenario is an error, so a typo never shrinks the matrix silently.
pub fn select(
    all: Vec<Scenario>,
    only: &[String],
    skip: &[String],
) -> Result<Vec<Scenario>, SelectError> {
    let known = || {
        all.iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (flag, names) in [("only", only), ("skip", skip)] {
        if let Some(name) = names.iter().find(|n| !all.iter().any(|s| &s.name == *n)) {
            return Err(SelectError::UnknownScenario {
                flag,
                name: name.clone(),
                known: known(),
            });
        }
    }
    let chosen: Vec<Scenario> = all
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .filter(|s| !skip.contains(&s.name))
        .collect();
    if chosen.is_empty() {
        return Err(SelectError::NothingToRun);
    }
    Ok(chosen)
}

/// One run to do.
#[derive(Clone, Debug)]
pub struct Planned {
    pub scenario: Scenario,
    pub negative: bool,
    /// 1-based, when the matrix repeats.
    pub repeat: Option<u32>,
}

impl Planned {
    /// The directory name: NAME[-negative][-rK].
    pub fn dir_name(&self) -> String {
        let mut name = self.scenario.name.clone();
        if self.negative {
            name.push_str("-negative");
        }
        if let Some(k) = self.repeat {
            name.push_str(&format!("-r{k}"));
        }
        name
    }

    fn variant(&self) -> &Variant {
        match (&self.scenario.negative, self.negative) {
            (Some(n), true) => n,
            _ => &self.scenario.positive,
        }
    }
}

/// Every run of `scenarios`, in order: each scenario's positive run, then its negative
/// control, `repeat` times.
pub fn plan(scenarios: &[Scenario], repeat: u32) -> Vec<Planned> {
    let mut runs = Vec::new();
    for s in scenarios {
        for k in 1..=repeat.max(1) {
            for (negative, _) in s.variants() {
                runs.push(Planned {
                    scenario: s.clone(),
                    negative,
                    repeat: (repeat > 1).then_some(k),
                });
            }
        }
    }
    runs
}

/// An expectation as judged, and whether the harness added it.
#[derive(Clone, Debug)]
pub struct Checked {
    pub judged: Judged,
    pub implicit: bool,
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub name: String,
    pub scenario: String,
    pub description: String,
    pub negative: bool,
    pub long: bool,
    pub repeat: Option<u32>,
    pub dir: PathBuf,
    pub wall: Duration,
    pub guest_args: Option<String>,
    pub qemu_command: Option<String>,
    /// What stopped the run from being judged at all.
    pub error: Option<String>,
    pub checked: Vec<Checked>,
    /// Negative controls only: the positive run's expectations judged on this run.
    pub met_positive: Option<Vec<Checked>>,
    pub metrics: Metrics,
    pub key_figures: Vec<String>,
    /// Log tails, for a failed run.
    pub tails: Vec<(String, String)>,
}

/// The failure message of a negative control that met every expectation of its positive
/// run.
pub const NEGATIVE_PASSED: &str =
    "a negative control passed: the fault did not bite (it met every expectation of the positive run)";

impl RunRecord {
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// Every reason the run failed, one line each.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push(e.clone());
        }
        out.extend(
            self.checked
                .iter()
                .filter(|c| !c.judged.passed)
                .map(|c| c.judged.failure_message()),
        );
        if let Some(met) = &self.met_positive {
            if met.iter().all(|c| c.judged.passed) {
                out.push(NEGATIVE_PASSED.to_owned());
            }
        }
        out
    }

    pub fn verdict(&self) -> &'static str {
        if self.passed() {
            "PASS"
        } else {
            "FAIL"
        }
    }

    /// `[ 3/17] name  PASS  0.42 s  figures`.
    pub fn progress_line(&self, index: usize, total: usize) -> String {
        let width = total.to_string().len();
        let mut line = format!(
            "[{index:>width$}/{total}] {:<34} {}  {:>6.2} s",
            self.name,
            self.verdict(),
            self.wall.as_secs_f64()
        );
        if !self.key_figures.is_empty() {
            line.push_str("  ");
            line.push_str(&self.key_figures.join(" "));
        }
        if self.long {
            line.push_str("  (long by design)");
        }
        line
    }

    /// What to print under a failed run's progress line.
    pub fn details(&self) -> String {
        let mut out = String::new();
        for f in self.failures() {
            out.push_str(&format!("    {f}\n"));
        }
        if let Some(cmd) = &self.qemu_command {
            out.push_str(&format!("--- QEMU command line\n{cmd}\n"));
        }
        for (name, tail) in &self.tails {
            out.push_str(&format!("--- {name} (last {TAIL_LINES} lines)\n{tail}"));
            if !tail.ends_with('\n') {
                out.push('\n');
            }
        }
        out.push_str(&format!("--- logs in {}\n", self.dir.display()));
        out
    }

    pub fn to_json(&self) -> Value {
        let checked = |list: &[Checked]| -> Vec<Value> {
            list.iter()
                .map(|c| {
                    json!({
                        "expectation": c.judged.text,
                        "implicit": c.implicit,
                        "passed": c.judged.passed,
                        "observed": c.judged.observed.iter()
                            .map(|(k, v)| (k.clone(), v.clone().unwrap_or(Value::Null)))
                            .collect::<serde_json::Map<_, _>>(),
                        "message": (!c.judged.passed).then(|| c.judged.failure_message()),
                    })
                })
                .collect()
        };
        json!({
            "name": self.name,
            "scenario": self.scenario,
            "description": self.description,
            "negative": self.negative,
            "long": self.long,
            "repeat": self.repeat,
            "verdict": if self.passed() { "pass" } else { "fail" },
            "failures": self.failures(),
            "error": self.error,
            "wall_ms": self.wall.as_secs_f64() * 1000.0,
            "dir": self.dir,
            "guest_args": self.guest_args,
            "qemu_command": self.qemu_command,
            "expectations": checked(&self.checked),
            "positive_expectations_on_this_run": self.met_positive.as_deref().map(checked),
            "metrics": self.metrics,
        })
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    out.push('\n');
    out
}

fn compact(value: Option<&Value>) -> String {
    match value {
        Some(Value::Array(items)) if items.len() > 4 => format!("[{} items]", items.len()),
        v => expect::show(v),
    }
}

/// The run's disk image, removed on drop (the run ended, failed or was interrupted)
/// unless kept.
struct Disk {
    path: PathBuf,
    keep: bool,
}

impl Drop for Disk {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// What a run gathered before it was judged.
struct Gathered {
    metrics: Metrics,
    qemu_command: Option<String>,
    guest_args: Option<String>,
    trace: Trace,
    timeline: Option<(GuestTimeline, u64)>,
}

fn prepare_dir(dir: &Path) -> Result<(), RunError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RunError::CouldNotPrepare(dir.to_owned(), e)),
    }
    std::fs::create_dir_all(dir).map_err(|e| RunError::CouldNotPrepare(dir.to_owned(), e))
}

fn write_file(path: &Path, text: &str) -> Result<(), RunError> {
    std::fs::write(path, text).map_err(|e| RunError::CouldNotPrepare(path.to_owned(), e))
}

/// The run itself, up to the metrics. `partial` keeps what is known if it fails.
fn execute(
    run: &Planned,
    opts: &MatrixOptions,
    dir: &Path,
    partial: &mut Gathered,
) -> Result<(), RunError> {
    let variant = run.variant();
    let start = Instant::now();
    let timeout = opts.timeout.unwrap_or(variant.timeout);
    let deadline = start + timeout;
    prepare_dir(dir)?;
    let mut overrides = opts.guest.clone();
    if let Some(seed) = opts.seed {
        overrides.push(("seed".into(), seed.to_string()));
    }
    let args: GuestArgs = variant
        .guest_args(&overrides)
        .map_err(RunError::BadGuestArgs)?;
    partial.guest_args = Some(args.to_string());
    partial.metrics.extend(metrics::args_metrics(&args));

    // The socket lives in a short temporary directory (sun_path is 108 bytes); the
    // logs in the run's own.
    let sockets = RunDir::temporary()?;
    let socket = sockets.socket_path()?;
    let trace_path = dir.join("trace.jsonl");
    let backend_spec = &variant.backend;
    let (mut command, disk) = if backend_spec.luns.is_empty() {
        let disk = dir.join("disk.img");
        File::create(&disk)
            .and_then(|f| f.set_len(DISK_BYTES))
            .map_err(|e| RunError::CouldNotPrepare(disk.clone(), e))?;
        let command = backend_command(&opts.bins.backend, &socket, [&disk]);
        let disk = Disk {
            path: disk,
            keep: opts.keep_image,
        };
        (command, Some(disk))
    } else {
        let command = backend_command(&opts.bins.backend, &socket, &backend_spec.luns);
        (command, None)
    };
    command.arg("--trace").arg(&trace_path);
    if let Some(plan) = &backend_spec.plan {
        let path = dir.join("plan.toml");
        write_file(&path, plan)?;
        command.arg("--fault-plan").arg(&path);
    }
    for f in &backend_spec.faults {
        command.arg("--fault").arg(f);
    }
    if let Some(seed) = opts.seed.or(backend_spec.seed) {
        command.arg("--seed").arg(seed.to_string());
    }
    command.args(&backend_spec.args);
    write_file(
        &dir.join("backend-command.txt"),
        &format!("{}\n", qemu::command_line(&command)),
    )?;

    let mut boot = Boot::new("guest");
    boot.start_backend(command, &dir.join("backend.log"), &socket, deadline)?;
    let guest = qemu::Guest::Image {
        image: opts.bins.image.clone(),
        args,
    };
    let config = QemuConfig::new(opts.bins.qemu.clone(), socket, guest, opts.accel);
    let command_line = config.command_line();
    write_file(&dir.join("qemu-command.txt"), &format!("{command_line}\n"))?;
    partial.qemu_command = Some(command_line);
    boot.start_qemu(
        config.command(),
        &dir.join("serial.log"),
        &dir.join("qemu.log"),
    )?;
    let exit = boot.wait_guest(deadline, End::Traced)?;
    let wall = start.elapsed();

    let m = &mut partial.metrics;
    m.insert("run.wall_ms".into(), metrics::ms(wall.as_micros() as u64));
    m.insert("run.timed_out".into(), Value::Bool(exit.timed_out));
    m.insert("run.accel".into(), Value::from(opts.accel.qemu_name()));
    if let Some(code) = exit.code() {
        m.insert("run.qemu_exit".into(), Value::from(code));
    }
    let result = boot.result().cloned();
    if let Some(r) = &result {
        m.extend(metrics::guest_metrics(r));
    }
    let timeline = boot.lines().iter().find_map(|l| match l {
        SerialLine::Report(map) if map.contains_key(REPORT_EVENT_KEY) => {
            GuestTimeline::from_line(map)
        }
        _ => None,
    });
    if let Some(t) = &timeline {
        partial.metrics.extend(t.metrics());
    }
    // Without the guest's first request time its timeline cannot be lined up.
    let first_guest = result
        .as_ref()
        .and_then(|r| r.get(guest_miniport::contract::result_fields::FIRST_REQUEST_US))
        .and_then(Value::as_u64);
    partial.timeline = timeline.zip(first_guest);

    partial.trace = Trace::read(&trace_path)
        .map_err(|e| RunError::CouldNotReadTrace(trace_path.display().to_string(), e))?;
    partial
        .metrics
        .extend(metrics::trace_metrics(&partial.trace));

    // The harness's own look at the image: the pattern at every LBA the guest wrote.
    if let (Some(Disk { path: disk, .. }), Some(r)) = (&disk, &result) {
        use guest_miniport::contract::result_fields as f;
        let block_size = r.get(f::BLOCK_SIZE).and_then(Value::as_u64);
        let lbas: Option<Vec<u64>> = r
            .get(f::LBAS)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect());
        if let (Some(bs @ 1..=MAX_BLOCK_SIZE), Some(lbas)) = (block_size, lbas) {
            let mut image =
                File::open(disk).map_err(|e| RunError::CouldNotCheckImage(disk.clone(), e))?;
            let check = check_image(&mut image, args.seed, bs, &lbas)
                .map_err(|e| RunError::CouldNotCheckImage(disk.clone(), e))?;
            let expected = if args.workload.writes() {
                u64::from(args.blocks)
            } else {
                0
            };
            partial
                .metrics
                .extend(metrics::image_metrics(&check, expected));
        }
    }
    Ok(())
}

/// Runs one planned run to its record. Only an interrupt is an error.
pub fn run_one(run: &Planned, opts: &MatrixOptions) -> Result<RunRecord, RunError> {
    let dir = opts.out.join(run.dir_name());
    let start = Instant::now();
    let mut g = Gathered {
        metrics: Metrics::new(),
        qemu_command: None,
        guest_args: None,
        trace: Trace::default(),
        timeline: None,
    };
    let outcome = execute(run, opts, &dir, &mut g);
    if matches!(outcome, Err(RunError::Interrupted)) || signals::interrupted() {
        return Err(RunError::Interrupted);
    }
    let variant = run.variant();
    let mut checked: Vec<Checked> = Vec::new();
    if !run.negative {
        checked.extend(implicit_expectations().iter().map(|e| Checked {
            judged: e.judge(&g.metrics),
            implicit: true,
        }));
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
    let key_figures = variant
        .expect
        .iter()
        .flat_map(|e| e.metric_paths())
        .fold(Vec::<&str>::new(), |mut acc, p| {
            if !acc.contains(&p) {
                acc.push(p);
            }
            acc
        })
        .into_iter()
        .take(KEY_FIGURES)
        .map(|p| format!("{p}={}", compact(expect::lookup(&g.metrics, p).as_ref())))
        .collect();
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
            for name in ["serial", "backend", "qemu"] {
                let path = dir.join(format!("{name}.log"));
                let text = process::read_log(&path);
                if path.is_file() && !text.trim().is_empty() {
                    record
                        .tails
                        .push((format!("{name}.log"), tail(&text, TAIL_LINES)));
                }
            }
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

/// The summary table and totals.
pub fn summary(records: &[RunRecord], wall: Duration) -> String {
    let rows: Vec<[String; 5]> = records
        .iter()
        .map(|r| {
            [
                r.scenario.clone() + &r.repeat.map_or_else(String::new, |k| format!(" r{k}")),
                if r.negative { "negative" } else { "positive" }.to_owned(),
                r.verdict().to_owned(),
                format!("{:.2}", r.wall.as_secs_f64()),
                r.key_figures.join(" "),
            ]
        })
        .collect();
    let header = ["scenario", "run", "result", "wall s", "key figures"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 3 {
                s.push_str(&format!("{cell:>w$}  "));
            } else if i == 4 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = String::new();
    out.push_str(&line(header));
    out.push_str(&line(
        widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str),
    ));
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    let failed = records.iter().filter(|r| !r.passed()).count();
    let negatives = records.iter().filter(|r| r.negative).count();
    let negatives_ok = records.iter().filter(|r| r.negative && r.passed()).count();
    out.push_str(&format!(
        "{} runs in {:.1} s: {} passed, {failed} failed; {negatives_ok} of {negatives} negative controls showed their failure\n",
        records.len(),
        wall.as_secs_f64(),
        records.len() - failed,
    ));
    let slow: Vec<String> = records
        .iter()
        .filter(|r| !r.long && r.wall > SHORT_RUN_BUDGET)
        .map(|r| format!("{} ({:.2} s)", r.name, r.wall.as_secs_f64()))
        .collect();
    if !slow.is_empty() {
        out.push_str(&format!(
            "over the {} s budget of a scenario that is not long by design: {}\n",
            SHORT_RUN_BUDGET.as_secs(),
            slow.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::expect::Expectation;

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
        let xml = crate::scenario::report::junit(&[good, bad], Duration::from_secs(1));
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
        let json = crate::scenario::report::json(&[record(false, passing_metrics())]);
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
}
