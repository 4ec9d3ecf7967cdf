//! The stock Linux scenario: Debian's kernel with a busybox initramfs (linux-guest/)
//! drives the Linux SCSI stack against the backend under TCG. The guest's /init prints
//! `FLAKYHBA-STEP <name> rc=<N>` per step and a final `{"result":...}` line, then powers
//! off; the harness judges every step itself rather than trusting the guest's summary.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::launch::accel::Accel;
use crate::launch::binaries::{find_qemu, require, SetupError};
use crate::launch::listen::{self, ListenError};
use crate::launch::process::{stop_and_collect, ChildGuard, Leftovers, ProcessError, Stdout};
use crate::launch::qemu::{self, Guest, LinuxBoot, QemuConfig};
use crate::launch::rundir::{RunDir, RunDirError};
use crate::launch::serial::{Serial, SerialError, SerialLine};
use crate::launch::signals;

pub mod bench;

/// Files linux-guest/build.sh leaves in its output directory.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.gz";
/// Where build.sh puts them by default, relative to the workspace root.
pub const DEFAULT_GUEST_DIR: &str = "target/linux-guest";
pub const BUILD_SCRIPT: &str = "linux-guest/build.sh";
/// The marker of a step line on the serial port.
pub const STEP_MARKER: &str = "FLAKYHBA-STEP ";
/// The initramfs unpacks to about 90 MiB of tmpfs; fio and the page cache need the rest.
pub const LINUX_MEMORY_MIB: u32 = 512;
/// The LUN: room for ext4 plus four fio files.
pub const LINUX_DISK_BYTES: u64 = 256 * 1024 * 1024;
/// The SCSI command timeout the held-read part sets when none was asked for.
pub const HELD_SCSI_TIMEOUT_S: u32 = 5;
/// Where the held-read part reads 64 KiB: far from what the boot-time probes touch, and
/// it runs before mkfs, so the backend's one lost read is the guest's.
pub const HELD_LBA: u64 = 409_600;
/// A stock kernel hangs under this machine's nested KVM; TCG always works.
pub const ACCEL: Accel = Accel::Tcg;

/// Steps every run must show with rc=0, in the order /init runs them.
const BASE_STEPS: &[&str] = &[
    "modules",
    "find-disk",
    "sg_inq",
    "sg_vpd-sv",
    "sg_vpd-di-listed",
    "sg_readcap",
    "sg_luns",
    "sg_opcodes",
    "sg_modes",
    "sg_turs",
    "sg_sync",
    "sg_unmap",
    "mkfs",
    "e2fsck",
    "mount",
    "fio",
    "umount",
    "e2fsck-after",
    "queues",
    "dmesg",
];
/// Steps of the held read (`flakyhba.hold=LBA`).
const HELD_STEPS: &[&str] = &[
    "held-pending",
    "lu-reset",
    "held-read",
    "reset-answered",
    "held-after-turs",
];

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
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
    #[error("no result from the Linux guest after {secs:.1} s: {source}")]
    NoResult { secs: f64, source: SerialError },
    #[error("QEMU did not exit after the guest's result")]
    QemuDidNotExit,
    #[error("could not stop a child: {0}")]
    CouldNotStop(ProcessError),
    #[error("FAIL: {0}")]
    Judged(#[from] LinuxJudgeError),
    #[error("FAIL: {0}")]
    BenchJudged(#[from] bench::BenchJudgeError),
    #[error("could not prepare the bench image: {0}")]
    BenchImage(String),
    #[error("interrupted by a signal")]
    Interrupted,
}

impl LinuxError {
    fn from_listen(e: ListenError) -> LinuxError {
        match e {
            ListenError::Process(ProcessError::Interrupted) => LinuxError::Interrupted,
            e => LinuxError::BackendNotReady(e),
        }
    }

    fn from_wait(e: ProcessError) -> LinuxError {
        match e {
            ProcessError::Interrupted => LinuxError::Interrupted,
            e => LinuxError::CouldNotStop(e),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinuxJudgeError {
    #[error("steps failed: {}{}", list_failed(failed), list_missing(missing))]
    Steps {
        failed: Vec<StepResult>,
        missing: Vec<String>,
    },
    #[error("the guest printed no result line")]
    NoResultLine,
    #[error("the guest reports {result:?} (failed: {failed})")]
    GuestFailed { result: String, failed: String },
    #[error(
        "asked for {asked} queues; the disk has {hw} hardware queues and {used} completed I/O"
    )]
    Queues { asked: u16, hw: u64, used: u64 },
    #[error("QEMU exited with {0:?} instead of 0 (the guest powers off after its result)")]
    QemuExit(Option<i32>),
}

fn list_failed(failed: &[StepResult]) -> String {
    failed
        .iter()
        .map(|s| format!("{} rc={}", s.name, s.rc))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_missing(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!("; never ran: {}", missing.join(", "))
    }
}

/// One `FLAKYHBA-STEP` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepResult {
    pub name: String,
    pub rc: i32,
}

impl StepResult {
    /// Parses `FLAKYHBA-STEP <name> rc=<N>`; the kernel may print on the same console,
    /// so the marker is looked for anywhere in the line.
    pub fn parse(line: &str) -> Option<StepResult> {
        let rest = &line[line.find(STEP_MARKER)? + STEP_MARKER.len()..];
        let mut words = rest.split_whitespace();
        let name = words.next()?;
        let rc = words.next()?.strip_prefix("rc=")?.parse().ok()?;
        Some(StepResult {
            name: name.to_owned(),
            rc,
        })
    }
}

/// What a run must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxExpectation {
    pub queues: u16,
    pub scsi_timeout_s: Option<u32>,
    pub held_read: bool,
}

impl LinuxExpectation {
    pub fn required_steps(&self) -> Vec<&'static str> {
        let mut steps = BASE_STEPS.to_vec();
        if self.scsi_timeout_s.is_some() {
            steps.push("timeout");
        }
        if self.held_read {
            steps.extend_from_slice(HELD_STEPS);
        }
        steps
    }

    /// The backend's `--fault` for the held read: lose (hold until ABORT_TASK or a
    /// reset) the first read that touches the guest's 64 KiB at [`HELD_LBA`].
    pub fn backend_fault(&self) -> Option<String> {
        self.held_read.then(|| {
            format!(
                "lose:direction=read,lba={HELD_LBA}..{},once=true",
                HELD_LBA + 127
            )
        })
    }

    /// The kernel command line: the serial console, QEMU exits on a panic (-no-reboot),
    /// and /init's switches.
    pub fn kernel_command_line(&self) -> String {
        let mut line = format!("console=ttyS0 panic=-1 flakyhba.queues={}", self.queues);
        if let Some(s) = self.scsi_timeout_s {
            line.push_str(&format!(" flakyhba.timeout={s}"));
        }
        if self.held_read {
            line.push_str(&format!(" flakyhba.hold={HELD_LBA}"));
        }
        line
    }
}

/// A passed run, as judged.
#[derive(Clone, Debug, PartialEq)]
pub struct LinuxVerdict {
    pub steps: Vec<StepResult>,
    pub kernel: String,
    pub hw_queues: u64,
    pub queues_used: u64,
}

fn number(result: &Map<String, Value>, key: &str) -> u64 {
    result.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Judges a run from the serial lines and QEMU's exit code: every step it printed and
/// every step the expectation requires has rc=0, the result line says pass, the disk had
/// the queues asked for and each completed I/O, and QEMU exited by the guest's poweroff.
pub fn judge_linux(
    lines: &[SerialLine],
    exit_code: Option<i32>,
    expect: &LinuxExpectation,
) -> Result<LinuxVerdict, LinuxJudgeError> {
    let steps: Vec<StepResult> = lines
        .iter()
        .filter_map(|l| match l {
            SerialLine::Log(text) => StepResult::parse(text),
            SerialLine::Report(_) => None,
        })
        .collect();
    let failed: Vec<StepResult> = steps.iter().filter(|s| s.rc != 0).cloned().collect();
    let missing: Vec<String> = expect
        .required_steps()
        .into_iter()
        .filter(|name| !steps.iter().any(|s| s.name == *name))
        .map(str::to_owned)
        .collect();
    if !failed.is_empty() || !missing.is_empty() {
        return Err(LinuxJudgeError::Steps { failed, missing });
    }
    let result = lines
        .iter()
        .rev()
        .find_map(SerialLine::result)
        .ok_or(LinuxJudgeError::NoResultLine)?;
    let verdict = result.get("result").and_then(Value::as_str).unwrap_or("");
    if verdict != "pass" {
        return Err(LinuxJudgeError::GuestFailed {
            result: verdict.to_owned(),
            failed: result
                .get("failed")
                .map_or_else(String::new, Value::to_string),
        });
    }
    let (hw, used) = (number(result, "hw_queues"), number(result, "queues_used"));
    let asked = u64::from(expect.queues);
    if hw != asked || used != asked {
        return Err(LinuxJudgeError::Queues {
            asked: expect.queues,
            hw,
            used,
        });
    }
    if exit_code != Some(0) {
        return Err(LinuxJudgeError::QemuExit(exit_code));
    }
    Ok(LinuxVerdict {
        steps,
        kernel: result
            .get("kernel")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        hw_queues: hw,
        queues_used: used,
    })
}

#[derive(Clone, Debug)]
pub struct LinuxOptions {
    pub queues: u16,
    /// Sets /sys/block/sdX/device/timeout in the guest.
    pub scsi_timeout_s: Option<u32>,
    /// Runs /init's held-read part: the backend loses the first read of its 64 KiB at
    /// [`HELD_LBA`] (`--fault lose`). Linux's virtio_scsi never aborts on a timeout (it
    /// resets the timer), so the guest sends a LU reset, which must end the read.
    pub held_read: bool,
    pub backend: PathBuf,
    /// linux-guest/build.sh's output directory.
    pub guest_dir: PathBuf,
    pub qemu: PathBuf,
    pub timeout: Duration,
    pub keep: Option<PathBuf>,
    /// The command that builds `guest_dir`, shown when it is missing.
    pub build_command: String,
}

impl LinuxOptions {
    pub fn expectation(&self) -> LinuxExpectation {
        LinuxExpectation {
            queues: self.queues,
            scsi_timeout_s: self
                .scsi_timeout_s
                .or(self.held_read.then_some(HELD_SCSI_TIMEOUT_S)),
            held_read: self.held_read,
        }
    }
}

/// A passed run.
#[derive(Debug)]
pub struct LinuxReport {
    pub queues: u16,
    pub wall: Duration,
    pub verdict: LinuxVerdict,
}

impl fmt::Display for LinuxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linux queues={} accel={ACCEL}: PASS wall {:.1} s (kernel {}, {} steps, {} of {} queues completed I/O)",
            self.queues,
            self.wall.as_secs_f64(),
            self.verdict.kernel,
            self.verdict.steps.len(),
            self.verdict.queues_used,
            self.verdict.hw_queues
        )
    }
}

/// A failed run with everything needed to see why.
#[derive(Debug)]
pub struct LinuxFailure {
    pub error: LinuxError,
    pub wall: Duration,
    pub qemu_command: Option<String>,
    pub serial: String,
    pub backend_log: Option<String>,
    pub qemu_log: Option<String>,
    pub kept_dir: Option<PathBuf>,
}

impl LinuxFailure {
    pub fn interrupted(&self) -> bool {
        matches!(self.error, LinuxError::Interrupted)
    }
}

impl fmt::Display for LinuxFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} (wall {:.1} s)", self.error, self.wall.as_secs_f64())?;
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

/// One boot's processes: the backend (when it is ours), QEMU and its serial port. Field
/// order is drop order: backend before QEMU (architecture.md).
#[derive(Default)]
pub(crate) struct Boot {
    backend: Option<ChildGuard>,
    qemu: Option<ChildGuard>,
    serial: Option<Serial>,
    qemu_command: Option<String>,
}

impl Boot {
    /// Starts the backend and waits until it listens on `socket`.
    pub(crate) fn start_backend(
        &mut self,
        command: Command,
        log: &Path,
        socket: &Path,
        deadline: Instant,
    ) -> Result<&mut ChildGuard, LinuxError> {
        let backend = self.backend.insert(
            ChildGuard::spawn("backend", command, log, Stdout::Log)
                .map_err(LinuxError::CouldNotStartBackend)?,
        );
        listen::wait_listening(backend, socket, deadline).map_err(LinuxError::from_listen)?;
        Ok(backend)
    }

    /// Boots `command` (QEMU) with its serial port logged to `serial_log`, waits for the
    /// result line and for QEMU to exit, then stops the backend. `spawned` sees QEMU as
    /// soon as it runs. Returns QEMU's exit code; [`Boot::lines`] has what the guest said.
    pub(crate) fn run_guest(
        &mut self,
        command: Command,
        serial_log: PathBuf,
        qemu_log: &Path,
        deadline: Instant,
        spawned: impl FnOnce(&ChildGuard),
    ) -> Result<Option<i32>, LinuxError> {
        let start = Instant::now();
        self.qemu_command = Some(qemu::command_line(&command));
        if signals::interrupted() {
            return Err(LinuxError::Interrupted);
        }
        let serial_file = File::create(&serial_log).map_err(|e| {
            LinuxError::CouldNotStartQemu(ProcessError::CouldNotCreateLog(serial_log, e))
        })?;
        let qemu = self.qemu.insert(
            ChildGuard::spawn("qemu", command, qemu_log, Stdout::Piped)
                .map_err(LinuxError::CouldNotStartQemu)?,
        );
        spawned(qemu);
        let port = qemu.take_stdout().expect("spawned with a piped stdout");
        let serial = self.serial.insert(Serial::start(port, serial_file));
        match serial.wait_for("the result line", |l| l.result().is_some(), deadline) {
            // A guest that died without a result: the judge says which step it reached.
            Ok(_) | Err(SerialError::ClosedBefore(_)) => {}
            Err(SerialError::Interrupted) => return Err(LinuxError::Interrupted),
            Err(source) => {
                return Err(LinuxError::NoResult {
                    secs: start.elapsed().as_secs_f64(),
                    source,
                })
            }
        }
        let status = qemu
            .wait_until(deadline)
            .map_err(LinuxError::from_wait)?
            .ok_or(LinuxError::QemuDidNotExit)?;
        match serial.wait_for_close(deadline.min(Instant::now() + Duration::from_secs(2))) {
            Ok(()) => {}
            Err(SerialError::Interrupted) => return Err(LinuxError::Interrupted),
            Err(e) => log::warn!("serial port still open after QEMU exited: {e}"),
        }
        if let Some(backend) = &mut self.backend {
            backend.kill().map_err(LinuxError::CouldNotStop)?;
        }
        Ok(status.code())
    }

    /// The guest's serial lines so far.
    pub(crate) fn lines(&self) -> &[SerialLine] {
        self.serial.as_ref().map_or(&[], Serial::lines)
    }

    /// What a failed boot left behind, its processes stopped.
    pub(crate) fn failure(
        mut self,
        error: LinuxError,
        wall: Duration,
        dir: &RunDir,
    ) -> LinuxFailure {
        let left = stop_and_collect(&mut self.backend, &mut self.qemu, &mut self.serial);
        LinuxFailure::new(error, wall, self.qemu_command.clone(), left, dir)
    }
}

/// Field order is drop order: the processes before the directory.
struct Run {
    boot: Boot,
    dir: RunDir,
}

impl LinuxFailure {
    /// A failed boot with what it left behind.
    pub(crate) fn new(
        error: LinuxError,
        wall: Duration,
        qemu_command: Option<String>,
        left: Leftovers,
        dir: &RunDir,
    ) -> LinuxFailure {
        LinuxFailure {
            error,
            wall,
            qemu_command,
            serial: left.serial,
            backend_log: left.backend_log,
            qemu_log: left.qemu_log,
            kept_dir: dir.is_kept().then(|| dir.path().to_owned()),
        }
    }
}

/// Runs the Linux scenario once.
pub fn run_linux(opts: &LinuxOptions) -> Result<LinuxReport, Box<LinuxFailure>> {
    let start = Instant::now();
    let dir = match opts.keep.as_deref() {
        Some(keep) => RunDir::kept(keep),
        None => RunDir::temporary(),
    };
    let dir = dir.map_err(|e| {
        Box::new(LinuxFailure {
            error: e.into(),
            wall: start.elapsed(),
            qemu_command: None,
            serial: String::new(),
            backend_log: None,
            qemu_log: None,
            kept_dir: None,
        })
    })?;
    let mut run = Run {
        boot: Boot::default(),
        dir,
    };
    match linux(&mut run, opts, start) {
        Ok(report) => Ok(report),
        Err(e) => Err(Box::new(run.boot.failure(e, start.elapsed(), &run.dir))),
    }
}

/// The kernel, the initramfs and the QEMU program, or what is missing.
pub(crate) fn check_inputs(opts: &LinuxOptions) -> Result<(PathBuf, PathBuf, PathBuf), LinuxError> {
    require(
        "backend",
        &opts.backend,
        "cargo build --release -p flakyhba-backend",
    )?;
    let kernel = opts.guest_dir.join(KERNEL_FILE);
    let initrd = opts.guest_dir.join(INITRD_FILE);
    require("Linux kernel", &kernel, &opts.build_command)?;
    require("Linux initramfs", &initrd, &opts.build_command)?;
    Ok((kernel, initrd, find_qemu(&opts.qemu)?))
}

fn linux(run: &mut Run, opts: &LinuxOptions, start: Instant) -> Result<LinuxReport, LinuxError> {
    let deadline = start + opts.timeout;
    let (kernel, initrd, qemu_program) = check_inputs(opts)?;
    let expect = opts.expectation();
    println!("accel: {ACCEL} (a stock Linux kernel hangs under the nested KVM)");

    let disk = run.dir.create_disk(LINUX_DISK_BYTES)?;
    let socket = run.dir.socket_path()?;
    let mut command = Command::new(&opts.backend);
    command
        .arg("--socket-path")
        .arg(&socket)
        .arg("--lun")
        .arg(&disk)
        .arg("--num-queues")
        .arg(opts.queues.to_string());
    if let Some(fault) = expect.backend_fault() {
        command.arg("--fault").arg(fault);
    }
    let backend =
        run.boot
            .start_backend(command, &run.dir.log_path("backend"), &socket, deadline)?;
    println!(
        "backend: pid {} listening on {} with {} request queues{}",
        backend.pid(),
        socket.display(),
        opts.queues,
        expect
            .backend_fault()
            .map_or_else(String::new, |f| format!(", --fault {f}"))
    );

    let config = QemuConfig {
        qemu: qemu_program,
        socket,
        guest: Guest::Linux(LinuxBoot {
            kernel,
            initrd,
            append: expect.kernel_command_line(),
            memory_mib: LINUX_MEMORY_MIB,
            cpus: opts.queues,
            num_queues: opts.queues,
        }),
        accel: ACCEL,
        bios: qemu::default_bios(),
    };
    println!("qemu: {}", config.command_line());
    let code = run.boot.run_guest(
        config.command(),
        run.dir.log_path("serial"),
        &run.dir.log_path("qemu"),
        deadline,
        |qemu| println!("qemu: pid {}", qemu.pid()),
    )?;
    let verdict = judge_linux(run.boot.lines(), code, &expect)?;
    if signals::interrupted() {
        return Err(LinuxError::Interrupted);
    }
    Ok(LinuxReport {
        queues: opts.queues,
        wall: start.elapsed(),
        verdict,
    })
}

/// The default output directory of build.sh under `root`, and the command that fills it.
pub fn default_guest_dir(root: &Path) -> (PathBuf, String) {
    let dir = root.join(DEFAULT_GUEST_DIR);
    let build = build_command(root, &dir);
    (dir, build)
}

/// The exact command that builds the Linux guest into `dir`.
pub fn build_command(root: &Path, dir: &Path) -> String {
    format!(
        "{} {}",
        qemu::shell_quote(root.join(BUILD_SCRIPT).as_os_str()),
        qemu::shell_quote(dir.as_os_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS_RESULT: &str = r#"{"result":"pass","kernel":"6.1.0-56-amd64","queues":4,"hw_queues":4,"queues_used":4,"steps":21,"failed":[]}"#;

    fn expect(queues: u16) -> LinuxExpectation {
        LinuxExpectation {
            queues,
            scsi_timeout_s: None,
            held_read: false,
        }
    }

    fn transcript(expect: &LinuxExpectation, result: &str) -> Vec<SerialLine> {
        let mut lines = vec![SerialLine::parse("[    5.4] scsi host0: Virtio SCSI HBA")];
        for name in expect.required_steps() {
            lines.push(SerialLine::parse(&format!("{STEP_MARKER}{name} rc=0")));
        }
        lines.push(SerialLine::parse("FLAKYHBA-STEP sg_vpd-sn rc=0"));
        lines.push(SerialLine::parse(result));
        lines
    }

    #[test]
    fn step_lines_parse_even_behind_kernel_output() {
        assert_eq!(
            StepResult::parse("FLAKYHBA-STEP sg_vpd-b0 rc=5"),
            Some(StepResult {
                name: "sg_vpd-b0".into(),
                rc: 5
            })
        );
        assert_eq!(
            StepResult::parse("[ 3.1] random: crng init doneFLAKYHBA-STEP fio rc=0")
                .map(|s| s.name),
            Some("fio".into())
        );
        assert_eq!(StepResult::parse("FLAKYHBA-STEP fio"), None);
        assert_eq!(StepResult::parse("FLAKYHBA-STEP fio rc=x"), None);
        assert_eq!(StepResult::parse("+ fio --name=verify"), None);
    }

    #[test]
    fn a_complete_passing_run_is_judged_pass() {
        let e = expect(4);
        let verdict = judge_linux(&transcript(&e, PASS_RESULT), Some(0), &e).unwrap();
        assert_eq!(verdict.kernel, "6.1.0-56-amd64");
        assert_eq!((verdict.hw_queues, verdict.queues_used), (4, 4));
        assert_eq!(verdict.steps.len(), e.required_steps().len() + 1);
    }

    #[test]
    fn any_failed_step_fails_even_when_the_guest_says_pass() {
        let e = expect(4);
        let mut lines = transcript(&e, PASS_RESULT);
        lines.insert(3, SerialLine::parse("FLAKYHBA-STEP sg_vpd-b2 rc=5"));
        assert_eq!(
            judge_linux(&lines, Some(0), &e),
            Err(LinuxJudgeError::Steps {
                failed: vec![StepResult {
                    name: "sg_vpd-b2".into(),
                    rc: 5
                }],
                missing: vec![],
            })
        );
    }

    #[test]
    fn a_required_step_that_never_ran_fails() {
        let e = LinuxExpectation {
            held_read: true,
            scsi_timeout_s: Some(5),
            ..expect(4)
        };
        let lines: Vec<SerialLine> = transcript(&e, PASS_RESULT)
            .into_iter()
            .filter(|l| !matches!(l, SerialLine::Log(t) if t.contains("held-read")))
            .collect();
        let err = judge_linux(&lines, Some(0), &e).unwrap_err();
        assert_eq!(
            err,
            LinuxJudgeError::Steps {
                failed: vec![],
                missing: vec!["held-read".into()]
            }
        );
        assert_eq!(err.to_string(), "steps failed: ; never ran: held-read");
    }

    #[test]
    fn result_queues_and_exit_code_are_checked() {
        let e = expect(4);
        let no_result: Vec<SerialLine> = transcript(&e, PASS_RESULT)
            .into_iter()
            .filter(|l| l.result().is_none())
            .collect();
        assert_eq!(
            judge_linux(&no_result, Some(0), &e),
            Err(LinuxJudgeError::NoResultLine)
        );
        let guest_fail = PASS_RESULT.replace(r#""result":"pass""#, r#""result":"fail""#);
        assert!(matches!(
            judge_linux(&transcript(&e, &guest_fail), Some(0), &e),
            Err(LinuxJudgeError::GuestFailed { .. })
        ));
        let one_queue_used = PASS_RESULT.replace(r#""queues_used":4"#, r#""queues_used":1"#);
        assert_eq!(
            judge_linux(&transcript(&e, &one_queue_used), Some(0), &e),
            Err(LinuxJudgeError::Queues {
                asked: 4,
                hw: 4,
                used: 1
            })
        );
        assert_eq!(
            judge_linux(&transcript(&e, PASS_RESULT), Some(1), &e),
            Err(LinuxJudgeError::QemuExit(Some(1)))
        );
    }

    #[test]
    fn command_line_carries_the_switches() {
        assert_eq!(
            expect(1).kernel_command_line(),
            "console=ttyS0 panic=-1 flakyhba.queues=1"
        );
        let opts = LinuxOptions {
            queues: 4,
            scsi_timeout_s: None,
            held_read: true,
            backend: "b".into(),
            guest_dir: "g".into(),
            qemu: "q".into(),
            timeout: Duration::from_secs(1),
            keep: None,
            build_command: String::new(),
        };
        let e = opts.expectation();
        assert_eq!(
            e.kernel_command_line(),
            "console=ttyS0 panic=-1 flakyhba.queues=4 flakyhba.timeout=5 flakyhba.hold=409600"
        );
        assert_eq!(
            e.backend_fault().as_deref(),
            Some("lose:direction=read,lba=409600..409727,once=true")
        );
        assert_eq!(expect(1).backend_fault(), None);
        assert!(e.required_steps().contains(&"timeout"));
        assert!(e.required_steps().contains(&"reset-answered"));
    }

    #[test]
    fn a_missing_kernel_names_the_build_command() {
        let root = Path::new("/repo");
        let (dir, build) = default_guest_dir(root);
        assert_eq!(build, "/repo/linux-guest/build.sh /repo/target/linux-guest");
        let opts = LinuxOptions {
            queues: 1,
            scsi_timeout_s: None,
            held_read: false,
            backend: "/bin/sh".into(),
            guest_dir: dir,
            qemu: "sh".into(),
            timeout: Duration::from_secs(1),
            keep: None,
            build_command: build,
        };
        let err = check_inputs(&opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Linux kernel /repo/target/linux-guest/vmlinuz is missing; build it with `/repo/linux-guest/build.sh /repo/target/linux-guest`"
        );
    }
}
