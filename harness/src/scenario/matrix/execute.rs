//! One scenario run up to its metrics: the run directory, the backend with the
//! scenario's faults and a trace, the guest image under QEMU, and what they left: the
//! guest's report, the trace and the disk image.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest_miniport::contract::{result_fields as f, GuestArgs, REPORT_EVENT_KEY};
use serde_json::{Map, Value};

use super::plan::Planned;
use super::MatrixOptions;
use crate::launch::accel::Accel;
use crate::launch::boot::{backend_command, Boot, End, GuestExit, RunError};
use crate::launch::qemu::{self, QemuConfig};
use crate::launch::rundir::{create_sparse, RunDir, DISK_BYTES};
use crate::launch::serial::SerialLine;
use crate::scenario::expect::Metrics;
use crate::scenario::file::BackendSpec;
use crate::scenario::image::{check_image, MAX_BLOCK_SIZE};
use crate::scenario::metrics::{self, GuestTimeline, Trace};

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
pub struct Gathered {
    pub metrics: Metrics,
    pub qemu_command: Option<String>,
    pub guest_args: Option<String>,
    /// The guest's arguments, once they parsed.
    pub args: Option<GuestArgs>,
    pub trace: Trace,
    pub timeline: Option<(GuestTimeline, u64)>,
}

/// An empty run directory: what an earlier run left there is removed.
pub fn prepare_dir(dir: &Path) -> Result<(), RunError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RunError::CouldNotPrepare(dir.to_owned(), e)),
    }
    std::fs::create_dir_all(dir).map_err(|e| RunError::CouldNotPrepare(dir.to_owned(), e))
}

/// A file of the run directory (a command line, a plan).
pub fn write_file(path: &Path, text: &str) -> Result<(), RunError> {
    std::fs::write(path, text).map_err(|e| RunError::CouldNotPrepare(path.to_owned(), e))
}

/// The run itself, up to the metrics. `partial` keeps what is known if it fails.
pub fn execute(
    run: &Planned,
    opts: &MatrixOptions,
    dir: &Path,
    partial: &mut Gathered,
) -> Result<(), RunError> {
    let variant = run.variant();
    let start = Instant::now();
    let deadline = start + opts.timeout.unwrap_or(variant.timeout);
    prepare_dir(dir)?;
    let mut overrides = opts.guest.clone();
    if let Some(seed) = opts.seed {
        overrides.push(("seed".into(), seed.to_string()));
    }
    let args: GuestArgs = variant
        .guest_args(&overrides)
        .map_err(RunError::BadGuestArgs)?;
    partial.guest_args = Some(args.to_string());
    partial.args = Some(args);
    partial.metrics.extend(metrics::args_metrics(&args));

    // The socket lives in a short temporary directory (sun_path is 108 bytes); the
    // logs in the run's own.
    let sockets = RunDir::temporary()?;
    let socket = sockets.socket_path()?;
    let trace_path = dir.join("trace.jsonl");
    let (command, disk) = backend(&variant.backend, opts, dir, &socket, &trace_path)?;
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
    guest_side(partial, &boot, exit, start.elapsed(), opts.accel);

    partial.trace = Trace::read(&trace_path)
        .map_err(|e| RunError::CouldNotReadTrace(trace_path.display().to_string(), e))?;
    partial
        .metrics
        .extend(metrics::trace_metrics(&partial.trace));
    if let (Some(disk), Some(result)) = (&disk, boot.result()) {
        let image = check_disk(&disk.path, result, &args)?;
        partial.metrics.extend(image);
    }
    Ok(())
}

/// The backend's command line (written to backend-command.txt), with the scenario's
/// faults, a trace, and its LUNs: the scenario's, else a fresh disk image in `dir`.
fn backend(
    spec: &BackendSpec,
    opts: &MatrixOptions,
    dir: &Path,
    socket: &Path,
    trace: &Path,
) -> Result<(Command, Option<Disk>), RunError> {
    let (mut command, disk) = if spec.luns.is_empty() {
        let disk = dir.join("disk.img");
        create_sparse(&disk, DISK_BYTES).map_err(|e| RunError::CouldNotPrepare(disk.clone(), e))?;
        let command = backend_command(&opts.bins.backend, socket, [&disk]);
        let disk = Disk {
            path: disk,
            keep: opts.keep_image,
        };
        (command, Some(disk))
    } else {
        let command = backend_command(&opts.bins.backend, socket, &spec.luns);
        (command, None)
    };
    command.arg("--trace").arg(trace);
    if let Some(plan) = &spec.plan {
        let path = dir.join("plan.toml");
        write_file(&path, plan)?;
        command.arg("--fault-plan").arg(&path);
    }
    for f in &spec.faults {
        command.arg("--fault").arg(f);
    }
    if let Some(seed) = opts.seed.or(spec.seed) {
        command.arg("--seed").arg(seed.to_string());
    }
    command.args(&spec.args);
    write_file(
        &dir.join("backend-command.txt"),
        &format!("{}\n", qemu::command_line(&command)),
    )?;
    Ok((command, disk))
}

/// `run.*` and what the guest said: `guest.*` from its result line, and its timeline
/// line, lined up with the trace by its first request.
fn guest_side(partial: &mut Gathered, boot: &Boot, exit: GuestExit, wall: Duration, accel: Accel) {
    let m = &mut partial.metrics;
    m.insert("run.wall_ms".into(), metrics::ms(wall.as_micros() as u64));
    m.insert("run.timed_out".into(), Value::Bool(exit.timed_out));
    m.insert("run.accel".into(), Value::from(accel.qemu_name()));
    if let Some(code) = exit.code() {
        m.insert("run.qemu_exit".into(), Value::from(code));
    }
    let result = boot.result();
    if let Some(r) = result {
        m.extend(metrics::guest_metrics(r));
    }
    let timeline = boot.lines().iter().find_map(|l| match l {
        SerialLine::Report(map) if map.contains_key(REPORT_EVENT_KEY) => {
            GuestTimeline::from_line(map)
        }
        _ => None,
    });
    if let Some(t) = &timeline {
        m.extend(t.metrics());
    }
    // Without the guest's first request time its timeline cannot be lined up.
    let first_guest = result
        .and_then(|r| r.get(f::FIRST_REQUEST_US))
        .and_then(Value::as_u64);
    partial.timeline = timeline.zip(first_guest);
}

/// `image.*`: the harness's own look at the image, the pattern at every LBA the guest
/// wrote (none when the result line does not say which).
fn check_disk(
    disk: &Path,
    result: &Map<String, Value>,
    args: &GuestArgs,
) -> Result<Metrics, RunError> {
    let block_size = result.get(f::BLOCK_SIZE).and_then(Value::as_u64);
    let lbas: Option<Vec<u64>> = result
        .get(f::LBAS)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect());
    let (Some(bs @ 1..=MAX_BLOCK_SIZE), Some(lbas)) = (block_size, lbas) else {
        return Ok(Metrics::new());
    };
    let err = |e| RunError::CouldNotCheckImage(disk.to_owned(), e);
    let mut image = File::open(disk).map_err(err)?;
    let check = check_image(&mut image, args.seed, bs, &lbas).map_err(err)?;
    let expected = if args.workload.writes() {
        u64::from(args.blocks)
    } else {
        0
    };
    Ok(metrics::image_metrics(&check, expected))
}
