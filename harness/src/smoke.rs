//! One smoke run: backend, then QEMU with the guest image, then the verdict.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest_miniport::contract::{GuestArgs, Workload};

use crate::judge::{self, Expectation, JudgeError, Verdict};
use crate::launch::accel::{self, Accel, AccelChoice};
use crate::launch::binaries::{self, Binaries, SetupError};
use crate::launch::listen::{self, ListenError};
use crate::launch::process::{stop_and_collect, ChildGuard, ProcessError, Stdout};
use crate::launch::qemu::{self, QemuConfig};
use crate::launch::rundir::{RunDir, RunDirError, DISK_BYTES};
use crate::launch::serial::{Serial, SerialError};
use crate::launch::signals;

/// How long QEMU's output may trail its exit.
const SERIAL_DRAIN: Duration = Duration::from_secs(2);
const KVM_DEVICE: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A binary or QEMU is missing (the same check as the scenario runs').
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("could not start the backend: {0}")]
    CouldNotStartBackend(ProcessError),
    #[error("the backend never became ready: {0}")]
    BackendNotReady(ListenError),
    #[error("could not start QEMU: {0}")]
    CouldNotStartQemu(ProcessError),
    #[error("no result from the guest after {secs:.1} s: {source}")]
    NoResult { secs: f64, source: SerialError },
    #[error("QEMU did not exit after the guest's result")]
    QemuDidNotExit,
    #[error("could not stop a child: {0}")]
    CouldNotStop(ProcessError),
    #[error("could not open the disk image {0}: {1}")]
    CouldNotOpenImage(PathBuf, std::io::Error),
    #[error("FAIL: {0}")]
    Judged(#[from] JudgeError),
    #[error("interrupted by a signal")]
    Interrupted,
}

impl RunError {
    fn from_listen(e: ListenError) -> RunError {
        match e {
            ListenError::Process(ProcessError::Interrupted) => RunError::Interrupted,
            e => RunError::BackendNotReady(e),
        }
    }

    fn from_wait(e: ProcessError) -> RunError {
        match e {
            ProcessError::Interrupted => RunError::Interrupted,
            e => RunError::CouldNotStop(e),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SmokeOptions {
    pub irq: bool,
    pub accel: AccelChoice,
    pub seed: u64,
    pub blocks: u32,
    pub backend: PathBuf,
    pub image: PathBuf,
    pub qemu: PathBuf,
    pub timeout: Duration,
    pub keep: Option<PathBuf>,
}

/// A passed run.
#[derive(Debug)]
pub struct SmokeReport {
    pub irq: bool,
    pub accel: Accel,
    pub boot_to_result: Duration,
    pub verdict: Verdict,
}

impl fmt::Display for SmokeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "smoke irq={} accel={}: PASS boot-to-result {:.2} s",
            on_off(self.irq),
            self.accel,
            self.boot_to_result.as_secs_f64()
        )?;
        if let Some(us) = self.verdict.guest_elapsed_us {
            write!(f, " (guest {:.2} s)", us as f64 / 1e6)?;
        }
        write!(
            f,
            ", {} blocks verified in image",
            self.verdict.blocks_verified
        )?;
        if let (Some(i), Some(p)) = (
            self.verdict.completed_by_interrupt,
            self.verdict.completed_by_poll,
        ) {
            write!(f, " ({i} completed by interrupt, {p} by poll)")?;
        }
        Ok(())
    }
}

/// What a failed run leaves for the user: the error and everything needed to see why.
#[derive(Debug)]
pub struct RunFailure {
    pub error: RunError,
    pub qemu_command: Option<String>,
    pub serial: String,
    pub backend_log: Option<String>,
    pub qemu_log: Option<String>,
    /// Set when the run directory was kept (`--keep`).
    pub kept_dir: Option<PathBuf>,
}

impl RunFailure {
    pub fn interrupted(&self) -> bool {
        matches!(self.error, RunError::Interrupted)
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.error)?;
        if let Some(cmd) = &self.qemu_command {
            writeln!(f, "--- QEMU command line\n{cmd}")?;
            writeln!(f, "--- serial output\n{}", self.serial)?;
        }
        if let Some(log) = &self.qemu_log {
            writeln!(f, "--- QEMU log\n{log}")?;
        }
        if let Some(log) = &self.backend_log {
            writeln!(f, "--- backend log\n{log}")?;
        }
        if let Some(dir) = &self.kept_dir {
            writeln!(f, "--- logs kept in {}", dir.display())?;
        }
        Ok(())
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The children and the directory of one run. Field order is drop order: the backend
/// is stopped before QEMU (architecture.md), and the directory goes last.
struct Run {
    backend: Option<ChildGuard>,
    qemu: Option<ChildGuard>,
    serial: Option<Serial>,
    qemu_command: Option<String>,
    dir: RunDir,
}

impl Run {
    fn failure(mut self, error: RunError) -> RunFailure {
        let left = stop_and_collect(&mut self.backend, &mut self.qemu, &mut self.serial);
        RunFailure {
            error,
            qemu_command: self.qemu_command.clone(),
            serial: left.serial,
            backend_log: left.backend_log,
            qemu_log: left.qemu_log,
            kept_dir: self.dir.is_kept().then(|| self.dir.path().to_owned()),
        }
    }
}

/// Runs the smoke scenario once. The failure carries the logs: the run directory is
/// gone by the time the caller sees it (unless kept).
pub fn run_smoke(opts: &SmokeOptions) -> Result<SmokeReport, Box<RunFailure>> {
    let dir = match opts.keep.as_deref() {
        Some(keep) => RunDir::kept(keep),
        None => RunDir::temporary(),
    };
    let dir = dir.map_err(|e| {
        Box::new(RunFailure {
            error: e.into(),
            qemu_command: None,
            serial: String::new(),
            backend_log: None,
            qemu_log: None,
            kept_dir: None,
        })
    })?;
    let mut run = Run {
        backend: None,
        qemu: None,
        serial: None,
        qemu_command: None,
        dir,
    };
    match smoke(&mut run, opts) {
        Ok(report) => Ok(report),
        Err(e) => Err(Box::new(run.failure(e))),
    }
}

fn check_binaries(opts: &SmokeOptions) -> Result<PathBuf, RunError> {
    let bins = Binaries {
        backend: opts.backend.clone(),
        image: opts.image.clone(),
        qemu: opts.qemu.clone(),
    };
    Ok(binaries::check_binaries(&bins)?.qemu)
}

fn smoke(run: &mut Run, opts: &SmokeOptions) -> Result<SmokeReport, RunError> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let qemu_program = check_binaries(opts)?;
    let (accel, why) = accel::choose(opts.accel, Path::new(KVM_DEVICE));
    println!("accel: {accel} ({why})");

    let disk = run.dir.create_disk(DISK_BYTES)?;
    let socket = run.dir.socket_path()?;
    let mut command = Command::new(&opts.backend);
    command
        .arg("--socket-path")
        .arg(&socket)
        .arg("--lun")
        .arg(&disk);
    let backend = run.backend.insert(
        ChildGuard::spawn(
            "backend",
            command,
            &run.dir.log_path("backend"),
            Stdout::Log,
        )
        .map_err(RunError::CouldNotStartBackend)?,
    );
    listen::wait_listening(backend, &socket, deadline).map_err(RunError::from_listen)?;
    println!(
        "backend: pid {} listening on {} after {:.3} s",
        backend.pid(),
        socket.display(),
        start.elapsed().as_secs_f64()
    );

    let guest_args = GuestArgs {
        workload: Workload::Smoke,
        irq: opts.irq,
        seed: opts.seed,
        blocks: opts.blocks,
        ..GuestArgs::default()
    };
    let config = QemuConfig {
        qemu: qemu_program,
        socket,
        guest: qemu::Guest::Image {
            image: opts.image.clone(),
            args: guest_args,
        },
        accel,
        bios: qemu::default_bios(),
    };
    let command_line = config.command_line();
    println!("qemu: {command_line}");
    run.qemu_command = Some(command_line);
    if signals::interrupted() {
        return Err(RunError::Interrupted);
    }
    let serial_log = run.dir.log_path("serial");
    let serial_log = File::create(&serial_log)
        .map_err(|e| RunError::CouldNotStartQemu(ProcessError::CouldNotCreateLog(serial_log, e)))?;
    let qemu_started = Instant::now();
    let qemu = run.qemu.insert(
        ChildGuard::spawn(
            "qemu",
            config.command(),
            &run.dir.log_path("qemu"),
            Stdout::Piped,
        )
        .map_err(RunError::CouldNotStartQemu)?,
    );
    println!("qemu: pid {}", qemu.pid());
    let port = qemu.take_stdout().expect("spawned with a piped stdout");
    let serial = run.serial.insert(Serial::start(port, serial_log));

    let boot_to_result =
        match serial.wait_for("the result line", |l| l.result().is_some(), deadline) {
            Ok(_) => qemu_started.elapsed(),
            // QEMU exited without a result: the judge says so, with the exit status.
            Err(SerialError::ClosedBefore(_)) => qemu_started.elapsed(),
            Err(SerialError::Interrupted) => return Err(RunError::Interrupted),
            Err(source) => {
                return Err(RunError::NoResult {
                    secs: start.elapsed().as_secs_f64(),
                    source,
                })
            }
        };
    let status = qemu
        .wait_until(deadline)
        .map_err(RunError::from_wait)?
        .ok_or(RunError::QemuDidNotExit)?;
    match serial.wait_for_close(deadline.min(Instant::now() + SERIAL_DRAIN)) {
        Ok(()) => {}
        Err(SerialError::Interrupted) => return Err(RunError::Interrupted),
        Err(e) => log::warn!("serial port still open after QEMU exited: {e}"),
    }
    // The guest is gone: the backend goes first, then QEMU (already reaped).
    if let Some(backend) = &mut run.backend {
        backend.kill().map_err(RunError::CouldNotStop)?;
    }

    let mut image = File::open(&disk).map_err(|e| RunError::CouldNotOpenImage(disk.clone(), e))?;
    let verdict = judge::judge_smoke(
        status.code(),
        serial.result(),
        &mut image,
        Expectation {
            seed: opts.seed,
            blocks: opts.blocks,
            irq: opts.irq,
        },
    )?;
    if signals::interrupted() {
        return Err(RunError::Interrupted);
    }
    Ok(SmokeReport {
        irq: opts.irq,
        accel,
        boot_to_result,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_has_the_agreed_shape() {
        let report = SmokeReport {
            irq: true,
            accel: Accel::Kvm,
            boot_to_result: Duration::from_millis(310),
            verdict: Verdict {
                blocks_verified: 64,
                block_size: 512,
                guest_elapsed_us: Some(120_000),
                completed_by_interrupt: None,
                completed_by_poll: None,
            },
        };
        assert_eq!(
            report.to_string(),
            "smoke irq=on accel=kvm: PASS boot-to-result 0.31 s (guest 0.12 s), 64 blocks verified in image"
        );
    }
}
