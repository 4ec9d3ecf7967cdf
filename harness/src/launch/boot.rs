//! One boot: the backend, then QEMU with the guest's serial port, supervised until the
//! guest's result and QEMU's exit. Every child sits under a kill-on-drop guard, and the
//! backend goes before QEMU (ARCHITECTURE.md). A boot that fails leaves a [`RunFailure`]:
//! the error, the QEMU command line and the logs.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::binaries::SetupError;
use super::control::ControlError;
use super::listen::{self, ListenError};
use super::process::{ChildGuard, ProcessError, Stdout};
use super::qemu::{self, QemuConfig};
use super::rundir::{RunDir, RunDirError};
use super::serial::{Serial, SerialError, SerialLine};
use super::signals;

/// How long QEMU's output may trail its exit, and the backend may take to write out its
/// trace on SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(2);
/// How long a failed boot waits for what QEMU wrote before it was killed.
const FAILURE_DRAIN: Duration = Duration::from_millis(200);
/// How often [`Boot::wait_guest_watched`] lets its watcher look.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// What a watcher of a running guest says after each look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    Continue,
    /// End the boot now, as at the deadline.
    Stop,
}

/// Why a run could not be completed, or failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("could not prepare {0}: {1}")]
    CouldNotPrepare(PathBuf, std::io::Error),
    #[error("{0}")]
    BadGuestArgs(String),
    #[error("could not start the backend: {0}")]
    CouldNotStartBackend(ProcessError),
    #[error("the backend never became ready: {0}")]
    BackendNotReady(ListenError),
    #[error("could not start QEMU: {0}")]
    CouldNotStartQemu(ProcessError),
    #[error("no result from the {guest} after {secs:.1} s: {source}")]
    NoResult {
        guest: &'static str,
        secs: f64,
        source: SerialError,
    },
    #[error("the {guest} never printed {what} ({secs:.1} s): {source}")]
    NoLine {
        guest: &'static str,
        what: &'static str,
        secs: f64,
        source: SerialError,
    },
    #[error("QEMU did not exit after the guest's result")]
    QemuDidNotExit,
    #[error(transparent)]
    Control(ControlError),
    #[error("could not stop a child: {0}")]
    CouldNotStop(ProcessError),
    #[error("could not read the trace {0}: {1}")]
    CouldNotReadTrace(String, std::io::Error),
    #[error("could not open the disk image {0}: {1}")]
    CouldNotOpenImage(PathBuf, std::io::Error),
    #[error("could not check the disk image {0}: {1}")]
    CouldNotCheckImage(PathBuf, std::io::Error),
    /// The verdict: what the guest reported, QEMU's exit or the disk image fails the run.
    #[error("FAIL: {0}")]
    Fail(Box<dyn std::error::Error + Send + Sync>),
    #[error("interrupted by a signal")]
    Interrupted,
}

impl RunError {
    /// A verdict that fails the run.
    pub fn fail(e: impl std::error::Error + Send + Sync + 'static) -> RunError {
        RunError::Fail(Box::new(e))
    }

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

impl From<ControlError> for RunError {
    fn from(e: ControlError) -> RunError {
        match e {
            ControlError::Interrupted => RunError::Interrupted,
            e => RunError::Control(e),
        }
    }
}

/// What a failed run leaves for the user: the error and everything needed to see why.
#[derive(Debug)]
pub struct RunFailure {
    pub error: RunError,
    /// The run's wall time, for the runs that report it.
    pub wall: Option<Duration>,
    pub qemu_command: Option<String>,
    pub serial: String,
    pub backend_log: Option<String>,
    pub qemu_log: Option<String>,
    /// Set when the run directory was kept (`--keep`).
    pub kept_dir: Option<PathBuf>,
}

impl RunFailure {
    /// A failure before any child started: there is nothing to show but the error.
    pub fn new(error: RunError) -> RunFailure {
        RunFailure {
            error,
            wall: None,
            qemu_command: None,
            serial: String::new(),
            backend_log: None,
            qemu_log: None,
            kept_dir: None,
        }
    }

    /// The failure with the run's wall time, for the runs that report it.
    pub fn with_wall(mut self, wall: Duration) -> RunFailure {
        self.wall = Some(wall);
        self
    }

    pub fn interrupted(&self) -> bool {
        matches!(self.error, RunError::Interrupted)
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(wall) = self.wall {
            write!(f, " (wall {:.1} s)", wall.as_secs_f64())?;
        }
        writeln!(f)?;
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

/// What the deadline means to a boot and how its backend is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The guest must report and power off by the deadline, else the boot fails; the
    /// backend is killed after QEMU's exit.
    Strict,
    /// The deadline ends the boot (QEMU is killed) without failing it: the caller judges
    /// `timed_out`. The backend gets SIGTERM so that it writes out its trace.
    Traced,
}

/// How the guest's QEMU ended.
#[derive(Clone, Copy, Debug)]
pub struct GuestExit {
    /// None: QEMU was still running at the deadline and was killed.
    pub status: Option<ExitStatus>,
    /// No result line, or no exit, by the deadline ([`End::Traced`] only).
    pub timed_out: bool,
    /// From QEMU's start to the result line (or to the end of its output).
    pub result_after: Duration,
}

impl GuestExit {
    /// QEMU's exit code; None when it was killed.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// `backend --socket-path SOCKET --lun LUN...`: how every boot starts the backend; the
/// caller adds the rest.
pub fn backend_command<L: AsRef<OsStr>>(
    backend: &Path,
    socket: &Path,
    luns: impl IntoIterator<Item = L>,
) -> Command {
    let mut command = Command::new(backend);
    command.arg("--socket-path").arg(socket);
    for lun in luns {
        command.arg("--lun").arg(lun);
    }
    command
}

/// The processes of one boot. Field order is drop order: the backend is killed before
/// QEMU (ARCHITECTURE.md), and the serial port's reader goes last.
pub struct Boot {
    backend: Option<ChildGuard>,
    qemu: Option<ChildGuard>,
    serial: Option<Serial>,
    qemu_command: Option<String>,
    qemu_started: Option<Instant>,
    /// What the errors call the guest ("guest", "Linux guest").
    guest: &'static str,
    started: Instant,
}

impl Boot {
    /// A boot of `guest`, as errors name it; nothing runs yet.
    pub fn new(guest: &'static str) -> Boot {
        Boot {
            backend: None,
            qemu: None,
            serial: None,
            qemu_command: None,
            qemu_started: None,
            guest,
            started: Instant::now(),
        }
    }

    /// Starts the backend with stdout and stderr to `log`, and waits until it listens
    /// on `socket`.
    pub fn start_backend(
        &mut self,
        command: Command,
        log: &Path,
        socket: &Path,
        deadline: Instant,
    ) -> Result<&mut ChildGuard, RunError> {
        let backend = self.backend.insert(
            ChildGuard::spawn("backend", command, log, Stdout::Log)
                .map_err(RunError::CouldNotStartBackend)?,
        );
        listen::wait_listening(backend, socket, deadline).map_err(RunError::from_listen)?;
        Ok(backend)
    }

    /// Starts QEMU with stderr to `qemu_log` and its stdout, the guest's serial port,
    /// copied to `serial_log` and read line by line. The command line is kept for the
    /// failure report.
    pub fn start_qemu(
        &mut self,
        command: Command,
        serial_log: &Path,
        qemu_log: &Path,
    ) -> Result<&mut ChildGuard, RunError> {
        self.qemu_command = Some(qemu::command_line(&command));
        if signals::interrupted() {
            return Err(RunError::Interrupted);
        }
        let serial_file = File::create(serial_log).map_err(|e| {
            RunError::CouldNotStartQemu(ProcessError::CouldNotCreateLog(serial_log.to_owned(), e))
        })?;
        self.qemu_started = Some(Instant::now());
        let mut qemu = ChildGuard::spawn("qemu", command, qemu_log, Stdout::Piped)
            .map_err(RunError::CouldNotStartQemu)?;
        let port = qemu.take_stdout().expect("spawned with a piped stdout");
        self.serial = Some(Serial::start(port, serial_file));
        Ok(self.qemu.insert(qemu))
    }

    /// Waits for the guest's result line and for QEMU to exit, reads the rest of its
    /// output, then stops the backend ([`End`] says how, and what the deadline means).
    pub fn wait_guest(&mut self, deadline: Instant, end: End) -> Result<GuestExit, RunError> {
        self.wait_guest_watched(deadline, end, |_| Watch::Continue)
    }

    /// [`Boot::wait_guest`], with `watch` called every [`WATCH_INTERVAL`] that brings no
    /// result line, on every serial line so far; [`Watch::Stop`] ends the boot as the
    /// deadline would (a caller that judges a stalled guest stops it early).
    pub fn wait_guest_watched(
        &mut self,
        deadline: Instant,
        end: End,
        mut watch: impl FnMut(&[SerialLine]) -> Watch,
    ) -> Result<GuestExit, RunError> {
        let (Some(qemu), Some(serial)) = (self.qemu.as_mut(), self.serial.as_mut()) else {
            panic!("wait_guest before start_qemu");
        };
        let mut timed_out = false;
        loop {
            let slice = deadline.min(Instant::now() + WATCH_INTERVAL);
            let waited = serial
                .wait_for("the result line", |l| l.result().is_some(), slice)
                .map(|_| ());
            match waited {
                // QEMU exited without a result: the judge says so, with the exit status.
                Ok(()) | Err(SerialError::ClosedBefore(_)) => break,
                Err(SerialError::Interrupted) => return Err(RunError::Interrupted),
                Err(SerialError::TimedOut(_))
                    if Instant::now() < deadline && watch(serial.lines()) == Watch::Continue =>
                {
                    continue
                }
                Err(source) if end == End::Strict => {
                    return Err(RunError::NoResult {
                        guest: self.guest,
                        secs: self.started.elapsed().as_secs_f64(),
                        source,
                    })
                }
                Err(SerialError::TimedOut(_)) => {
                    timed_out = true;
                    break;
                }
            }
        }
        let result_after = self.qemu_started.map_or(Duration::ZERO, |t| t.elapsed());
        let status = if timed_out {
            None
        } else {
            qemu.wait_until(deadline).map_err(RunError::from_wait)?
        };
        if status.is_none() {
            if end == End::Strict {
                return Err(RunError::QemuDidNotExit);
            }
            // Past the deadline: the guest hung, or never exited after its result.
            timed_out = true;
            qemu.kill().map_err(RunError::CouldNotStop)?;
        }
        match serial.wait_for_close(Instant::now() + DRAIN) {
            Ok(()) => {}
            Err(SerialError::Interrupted) => return Err(RunError::Interrupted),
            Err(e) => log::warn!("serial port still open after QEMU exited: {e}"),
        }
        // The guest is gone: the backend goes now, QEMU is already reaped.
        if let Some(backend) = &mut self.backend {
            match end {
                End::Strict => backend.kill(),
                End::Traced => backend.terminate(DRAIN),
            }
            .map_err(RunError::CouldNotStop)?;
        }
        Ok(GuestExit {
            status,
            timed_out,
            result_after,
        })
    }

    /// Boots `config` with its logs in `dir` (serial.log, qemu.log), printing the QEMU
    /// command line and pid, and waits for the guest to report and power off.
    pub fn run_guest(
        &mut self,
        config: &QemuConfig,
        dir: &RunDir,
        deadline: Instant,
    ) -> Result<GuestExit, RunError> {
        self.start_guest(config, dir)?;
        self.wait_guest(deadline, End::Strict)
    }

    /// Starts QEMU as [`Boot::run_guest`] does, without waiting: the caller talks to the
    /// guest ([`Boot::wait_for_line`]) before [`Boot::wait_guest`].
    pub fn start_guest(&mut self, config: &QemuConfig, dir: &RunDir) -> Result<(), RunError> {
        println!("qemu: {}", config.command_line());
        let qemu = self.start_qemu(
            config.command(),
            &dir.log_path("serial"),
            &dir.log_path("qemu"),
        )?;
        println!("qemu: pid {}", qemu.pid());
        Ok(())
    }

    /// Waits for the guest's next line that satisfies `token` (`what` names it in errors).
    pub fn wait_for_line(
        &mut self,
        what: &'static str,
        token: impl Fn(&SerialLine) -> bool,
        deadline: Instant,
    ) -> Result<SerialLine, RunError> {
        let Some(serial) = self.serial.as_mut() else {
            panic!("wait_for_line before start_qemu");
        };
        match serial.wait_for(what, token, deadline) {
            Ok(lines) => Ok(lines.last().expect("wait_for returns the token").clone()),
            Err(SerialError::Interrupted) => Err(RunError::Interrupted),
            Err(source) => Err(RunError::NoLine {
                guest: self.guest,
                what,
                secs: self.started.elapsed().as_secs_f64(),
                source,
            }),
        }
    }

    /// The guest's serial lines so far.
    pub fn lines(&self) -> &[SerialLine] {
        self.serial.as_ref().map_or(&[], Serial::lines)
    }

    /// The guest's last result line so far.
    pub fn result(&self) -> Option<&Map<String, Value>> {
        self.serial.as_ref().and_then(Serial::result)
    }

    /// What a failed boot leaves behind: its children are killed, the backend first,
    /// what QEMU wrote before it died is read (its pipe is closed now), and the logs.
    pub fn failure(mut self, error: RunError, dir: &RunDir) -> RunFailure {
        for guard in [&mut self.backend, &mut self.qemu].into_iter().flatten() {
            if let Err(e) = guard.kill() {
                log::warn!("{e}");
            }
        }
        if let Some(serial) = &mut self.serial {
            let _ = serial.wait_for_close(Instant::now() + FAILURE_DRAIN);
        }
        RunFailure {
            error,
            wall: None,
            qemu_command: self.qemu_command.take(),
            serial: self
                .serial
                .as_ref()
                .map_or_else(String::new, |s| s.transcript().to_owned()),
            backend_log: self.backend.as_ref().map(ChildGuard::read_log),
            qemu_log: self.qemu.as_ref().map(ChildGuard::read_log),
            kept_dir: dir.is_kept().then(|| dir.path().to_owned()),
        }
    }
}

/// Runs `body` on a boot of `guest` in a run directory of its own: `keep` when given
/// (it stays), else a temporary one. An error becomes a [`RunFailure`] with the logs; the
/// boot's children are gone before the directory.
pub fn run_in_dir<T>(
    keep: Option<&Path>,
    guest: &'static str,
    body: impl FnOnce(&mut Boot, &RunDir) -> Result<T, RunError>,
) -> Result<T, Box<RunFailure>> {
    let dir = RunDir::kept_or_temporary(keep).map_err(|e| Box::new(RunFailure::new(e.into())))?;
    let mut boot = Boot::new(guest);
    body(&mut boot, &dir).map_err(|e| Box::new(boot.failure(e, &dir)))
}
