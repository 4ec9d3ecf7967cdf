//! One cell of the card: a driver under a row's fault. The backend starts with the
//! row's faults, a trace and a control socket; QEMU boots the driver under TCG; a
//! [`Watcher`] follows the trace and the serial port, makes the row's LU change or adds
//! its faults at the workload's first data request, and stops a stalled cell. Then the
//! driver reads its outcome, the trace says what was outstanding in a hung cell, and the
//! row file's expectations are judged. The cell's directory keeps backend.log,
//! qemu.log, serial.log (the guest log), firmware.log (a firmware's debug port),
//! trace.jsonl, timeline.svg, the command lines and result.json.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flakyhba_backend::faults::trace::TraceEvent;
use serde_json::{json, Value};

use super::driver::{CellSetup, Driver, DriverId, Evidence, LuChange};
use super::outcome::{decide, Decided, Outcome, Verdict};
use super::outstanding::Outstanding;
use super::rows::Row;
use super::watch::{Acted, Stop, Watcher};
use crate::launch::accel::Accel;
use crate::launch::boot::{backend_command, Boot, End, GuestExit, RunError};
use crate::launch::control;
use crate::launch::qemu::{self, QemuConfig};
use crate::launch::rundir::{create_sparse, RunDir};
use crate::launch::signals;
use crate::scenario::expect::{Judged, Metrics};
use crate::scenario::matrix::execute::{prepare_dir, write_file};
use crate::scenario::metrics::{ms, trace_metrics, Trace};
use crate::scenario::timeline;

/// Every driver runs under TCG: OVMF and a stock Linux kernel fail under this machine's
/// nested KVM, and one accelerator keeps the columns comparable.
pub const ACCEL: Accel = Accel::Tcg;
/// The second LU of the hot-plug rows.
const SPARE_FILE: &str = "spare.img";
const SPARE_BYTES: u64 = 8 << 20;
/// How much a capacity change grows LUN 0, in blocks.
const GROW_BLOCKS: u64 = 2048;
/// How long the backend may take to listen.
const BACKEND_READY: Duration = Duration::from_secs(10);

pub struct CellOptions<'a> {
    pub backend: &'a Path,
    pub qemu: &'a Path,
    /// The card's directory; a cell's is `out/ROW/DRIVER`.
    pub out: &'a Path,
    pub keep_image: bool,
}

#[derive(Clone, Debug)]
pub struct CellRecord {
    pub row: String,
    pub driver: DriverId,
    pub dir: PathBuf,
    pub wall: Duration,
    pub expected: Outcome,
    /// None when the cell could not be run (`error` says why).
    pub outcome: Option<Outcome>,
    pub reason: String,
    pub error: Option<String>,
    /// The row's expectations for this driver, judged.
    pub checked: Vec<Judged>,
    pub acted: Vec<Acted>,
    pub metrics: Metrics,
}

impl CellRecord {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.outcome == Some(self.expected)
            && self.checked.iter().all(|j| j.passed)
    }

    /// Why the cell did not pass, one message per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push(format!("could not run: {e}"));
        }
        if let Some(o) = self.outcome.filter(|&o| o != self.expected) {
            out.push(format!("outcome {o}, expected {}", self.expected));
        }
        out.extend(
            self.checked
                .iter()
                .filter(|j| !j.passed)
                .map(Judged::failure_message),
        );
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "row": self.row,
            "driver": self.driver.name(),
            "outcome": self.outcome.map(Outcome::word),
            "expected": self.expected.word(),
            "passed": self.passed(),
            "reason": self.reason,
            "error": self.error,
            "wall_s": (self.wall.as_secs_f64() * 10.0).round() / 10.0,
            "dir": self.dir,
            "expectations": self.checked.iter().map(|j| json!({
                "expectation": j.text,
                "passed": j.passed,
                "observed": j.observed.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or(Value::Null))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "actions": self.acted.iter().map(|a| json!({
                "request": a.request,
                "reply": a.reply.as_ref().map_or_else(|e| json!({"error": e}), Clone::clone),
                "trigger_us": a.trigger_us,
            })).collect::<Vec<_>>(),
            "metrics": self.metrics,
        })
    }
}

/// What a cell gathered, kept when it fails part way.
#[derive(Default)]
struct Gathered {
    metrics: Metrics,
    trace: Trace,
    acted: Vec<Acted>,
    decided: Option<Decided>,
    disk: Option<PathBuf>,
}

/// Runs one cell to its record. Only an interrupt is an error.
pub fn run_cell(
    driver: &dyn Driver,
    row: &Row,
    opts: &CellOptions<'_>,
) -> Result<CellRecord, RunError> {
    let dir = opts.out.join(&row.name).join(driver.id().name());
    let start = Instant::now();
    let mut g = Gathered::default();
    let ran = execute(driver, row, opts, &dir, &mut g);
    if !opts.keep_image {
        // LUN 0 once checked, and the hot-plug rows' LUN 1.
        let spare = dir.join(SPARE_FILE);
        for image in g.disk.iter().chain(spare.exists().then_some(&spare)) {
            if let Err(e) = std::fs::remove_file(image) {
                log::warn!("could not remove {}: {e}", image.display());
            }
        }
    }
    if matches!(ran, Err(RunError::Interrupted)) || signals::interrupted() {
        return Err(RunError::Interrupted);
    }
    let expectation = row.expectation(driver.id());
    let (outcome, reason) = match &g.decided {
        Some(d) => (Some(d.outcome), d.reason.clone()),
        None => (None, String::new()),
    };
    if let Some(o) = outcome {
        g.metrics
            .insert("cell.outcome".into(), Value::from(o.word()));
        g.metrics
            .insert("cell.reason".into(), Value::from(reason.as_str()));
    }
    let record = CellRecord {
        row: row.name.clone(),
        driver: driver.id(),
        dir: dir.clone(),
        wall: start.elapsed(),
        expected: expectation.outcome,
        outcome,
        reason,
        error: ran.err().map(|e| e.to_string()),
        checked: expectation
            .expect
            .iter()
            .map(|e| e.judge(&g.metrics))
            .collect(),
        acted: g.acted,
        metrics: g.metrics,
    };
    if dir.is_dir() {
        let title = format!("{} × {}: {}", row.name, driver.id(), row.description);
        if let Err(e) = timeline::write(&dir.join("timeline.svg"), &title, &g.trace, None) {
            log::warn!("{e}");
        }
        let text = serde_json::to_string_pretty(&record.to_json()).expect("JSON values encode");
        if let Err(e) = std::fs::write(dir.join("result.json"), text + "\n") {
            log::warn!("could not write {}: {e}", dir.join("result.json").display());
        }
    }
    Ok(record)
}

/// The LUNs besides LUN 0 that the backend starts with, and the control requests of the
/// row's LU change.
fn lu_change(
    lu: Option<LuChange>,
    dir: &Path,
    disk: &Path,
) -> Result<(Vec<String>, Vec<Value>), RunError> {
    let Some(lu) = lu else {
        return Ok((Vec::new(), Vec::new()));
    };
    let spare = dir.join(SPARE_FILE);
    let blocks = std::fs::metadata(disk)
        .map_err(|e| RunError::CouldNotPrepare(disk.to_owned(), e))?
        .len()
        / 512;
    if lu != LuChange::Resize {
        create_sparse(&spare, SPARE_BYTES)
            .map_err(|e| RunError::CouldNotPrepare(spare.clone(), e))?;
    }
    Ok(match lu {
        LuChange::Add => (Vec::new(), vec![control::add_lun_request(0, 1, &spare)]),
        LuChange::Remove => (
            vec![control::lun_spec(0, 1, &spare)],
            vec![control::remove_lun_request(0, 1)],
        ),
        LuChange::Resize => (
            Vec::new(),
            vec![control::resize_lun_request(0, 0, blocks + GROW_BLOCKS)],
        ),
    })
}

/// The cell itself, up to its decided outcome; `g` keeps what is known if it fails.
fn execute(
    driver: &dyn Driver,
    row: &Row,
    opts: &CellOptions<'_>,
    dir: &Path,
    g: &mut Gathered,
) -> Result<(), RunError> {
    let start = Instant::now();
    prepare_dir(dir)?;
    let profile = driver.profile();
    let faults = row.faults(&profile).map_err(RunError::BadGuestArgs)?;
    let added = row.at_data(&profile).map_err(RunError::BadGuestArgs)?;
    let disk = driver.prepare_disk(dir)?;
    g.disk = Some(disk.clone());
    let (more_luns, mut actions) = lu_change(row.lu, dir, &disk)?;
    actions.extend(added.into_iter().map(|f| json!({"cmd": "add", "fault": f})));

    // Sockets in a short temporary directory (sun_path is 108 bytes), removed on drop.
    let sockets = RunDir::temporary()?;
    let socket = sockets.socket_path()?;
    let control = sockets.control_socket_path()?;
    let trace_path = dir.join("trace.jsonl");
    let lun0 = qemu::option_value(&disk).to_string_lossy().into_owned();
    let luns = std::iter::once(lun0).chain(more_luns);
    let mut command = backend_command(opts.backend, &socket, luns);
    command.arg("--trace").arg(&trace_path);
    command.arg("--control-socket").arg(&control);
    for f in &faults {
        command.arg("--fault").arg(f);
    }
    command.args(driver.backend_args());
    write_file(
        &dir.join("backend-command.txt"),
        &format!("{}\n", qemu::command_line(&command)),
    )?;
    let mut boot = Boot::new(driver.id().title());
    let ready = Instant::now() + BACKEND_READY;
    boot.start_backend(command, &dir.join("backend.log"), &socket, ready)?;

    let setup = CellSetup { dir, lu: row.lu };
    let config = QemuConfig::new(opts.qemu.to_owned(), socket, driver.guest(&setup)?, ACCEL);
    write_file(
        &dir.join("qemu-command.txt"),
        &format!("{}\n", config.command_line()),
    )?;
    boot.start_qemu(
        config.command(),
        &dir.join("serial.log"),
        &dir.join("qemu.log"),
    )?;
    let mut watcher = Watcher::new(
        &trace_path,
        &control,
        profile.data,
        actions,
        driver.boot_allowance(),
    );
    let deadline = Instant::now() + driver.deadline();
    let exit = boot.wait_guest_watched(deadline, End::Traced, |lines| watcher.look(lines))?;
    g.acted = std::mem::take(&mut watcher.acted);

    g.trace = Trace::read(&trace_path)
        .map_err(|e| RunError::CouldNotReadTrace(trace_path.display().to_string(), e))?;
    g.metrics.extend(trace_metrics(&g.trace));
    run_metrics(&mut g.metrics, &exit, watcher.stop, start.elapsed());
    action_metrics(&mut g.metrics, &g.acted, &g.trace);
    let resized_to = g
        .acted
        .iter()
        .filter(|a| a.request["cmd"] == "resize-lun")
        .find_map(|a| a.reply.as_ref().ok()?["blocks"].as_u64());
    let evidence = Evidence {
        lines: boot.lines(),
        exit,
        disk: &disk,
        resized_to,
    };
    let reading = driver.read(&evidence)?;
    g.metrics.extend(reading.metrics);
    let outstanding = (reading.verdict == Verdict::Unfinished).then(|| {
        let o = Outstanding::from_trace(&g.trace);
        g.metrics.extend(o.metrics());
        o
    });
    let hung = || hung_reason(watcher.stop, driver.deadline(), outstanding);
    let mut decided = decide(&reading.verdict, row.need, &g.metrics, hung);
    if let Some(a) = g.acted.iter().find(|a| a.reply.is_err()) {
        decided.reason = format!("{} (the backend refused {})", decided.reason, a.request);
    }
    g.decided = Some(decided);
    Ok(())
}

/// Why a cell that never finished is hung: what stopped it, and what the trace shows
/// outstanding.
fn hung_reason(stop: Option<Stop>, deadline: Duration, outstanding: Option<Outstanding>) -> String {
    let how = match stop {
        Some(Stop::NoCommand { allowance }) => format!(
            "no SCSI command within {} s of QEMU's start",
            allowance.as_secs()
        ),
        Some(Stop::Stalled { quiet, at }) => format!(
            "no progress for {} s (stopped {:.1} s after QEMU's start)",
            quiet.as_secs(),
            at.as_secs_f64()
        ),
        None => format!(
            "still running at the cell's deadline ({} s)",
            deadline.as_secs()
        ),
    };
    let summary = outstanding.map_or_else(String::new, |o| o.summary());
    format!("{how}; {summary}")
}

/// `cell.lu_changes` (LU changes the backend made) and `cell.ran_after_change_ms` (from
/// the data request that set the actions off to the driver's last command or
/// completion in the trace).
fn action_metrics(m: &mut Metrics, acted: &[Acted], trace: &Trace) {
    let changes = acted
        .iter()
        .filter(|a| {
            a.reply.is_ok()
                && a.request["cmd"]
                    .as_str()
                    .is_some_and(|c| c.ends_with("-lun"))
        })
        .count();
    m.insert("cell.lu_changes".into(), Value::from(changes));
    let Some(trigger) = acted.first().map(|a| a.trigger_us) else {
        return;
    };
    let last = trace
        .records
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                TraceEvent::Request { .. } | TraceEvent::Complete { .. }
            )
        })
        .map(|r| r.t_us)
        .max()
        .unwrap_or(trigger);
    m.insert(
        "cell.ran_after_change_ms".into(),
        Value::from(last.saturating_sub(trigger) / 1000),
    );
}

/// `run.*`: the cell's wall time, QEMU's exit, and whether the watcher stopped it.
fn run_metrics(m: &mut Metrics, exit: &GuestExit, stop: Option<Stop>, wall: Duration) {
    m.insert("run.wall_ms".into(), ms(wall.as_micros() as u64));
    m.insert("run.timed_out".into(), Value::Bool(exit.timed_out));
    if let Some(code) = exit.code() {
        m.insert("run.qemu_exit".into(), Value::from(code));
    }
    let stopped = match stop {
        None => "no",
        Some(Stop::NoCommand { .. }) => "no-command",
        Some(Stop::Stalled { .. }) => "stalled",
    };
    m.insert("run.stopped".into(), Value::from(stopped));
}
