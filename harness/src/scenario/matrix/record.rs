//! A finished run as the matrix reports it: its verdict and why, its progress line,
//! details and JSON object, and the summary table of all runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::launch::process;
use crate::scenario::expect::{self, Expectation, Judged, Metrics};

/// Lines of each log shown when a run fails.
const TAIL_LINES: usize = 30;
/// The budget for a scenario that is not slow by design; measured, not asserted.
pub const SHORT_RUN_BUDGET: Duration = Duration::from_secs(2);
/// Key figures shown per run.
const KEY_FIGURES: usize = 3;

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

fn compact(value: Option<&Value>) -> String {
    match value {
        Some(Value::Array(items)) if items.len() > 4 => format!("[{} items]", items.len()),
        v => expect::show(v),
    }
}

/// `path=value` of the first metrics the expectations name: what a progress line shows.
pub fn key_figures(expect: &[Expectation], metrics: &Metrics) -> Vec<String> {
    expect
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
        .map(|p| format!("{p}={}", compact(expect::lookup(metrics, p).as_ref())))
        .collect()
}

/// The last lines of each log a failed run left in `dir`, for its details.
pub fn log_tails(dir: &Path) -> Vec<(String, String)> {
    let mut tails = Vec::new();
    for name in ["serial", "backend", "qemu"] {
        let path = dir.join(format!("{name}.log"));
        let text = process::read_log(&path);
        if path.is_file() && !text.trim().is_empty() {
            tails.push((format!("{name}.log"), process::tail(&text, TAIL_LINES)));
        }
    }
    tails
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
