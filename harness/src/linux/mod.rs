//! The stock Linux scenario: Debian's kernel with a busybox initramfs (linux-guest/)
//! drives the Linux SCSI stack against the backend under TCG. The guest's /init prints
//! `FLAKYHBA-STEP <name> rc=<N>` per step and a final `{"result":...}` line, then powers
//! off; the harness judges every step itself rather than trusting the guest's summary.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::launch::accel::Accel;
use crate::launch::binaries::{find_qemu, require};
use crate::launch::boot::{backend_command, run_in_dir, Boot, End, RunError, RunFailure};
use crate::launch::qemu::{self, Guest, LinuxBoot, QemuConfig};
use crate::launch::rundir::RunDir;
use crate::launch::signals;

pub mod bench;
pub mod fio;
pub mod hotplug;
pub mod verdict;

use self::verdict::{judge_linux, LinuxExpectation, LinuxVerdict};

/// Files linux-guest/build.sh leaves in its output directory.
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initrd.cpio";
/// Where build.sh puts them by default, relative to the workspace root.
pub const DEFAULT_GUEST_DIR: &str = "target/linux-guest";
pub const BUILD_SCRIPT: &str = "linux-guest/build.sh";
/// The initramfs unpacks to about 90 MiB of tmpfs; fio and the page cache need the rest.
pub const LINUX_MEMORY_MIB: u32 = 512;
/// The LUN: room for ext4 plus four fio files.
pub const LINUX_DISK_BYTES: u64 = 256 * 1024 * 1024;
const _: () = assert!(
    hotplug::RESIZED_BYTES > LINUX_DISK_BYTES,
    "the hot-plug run grows LUN 0"
);
/// The SCSI command timeout the held-read part sets when none was asked for.
pub const HELD_SCSI_TIMEOUT_S: u32 = 5;
/// A stock kernel hangs under this machine's nested KVM; TCG always works.
pub const ACCEL: Accel = Accel::Tcg;
/// What errors call the guest.
pub(crate) const GUEST: &str = "Linux guest";

#[derive(Clone, Debug)]
pub struct LinuxOptions {
    pub queues: u16,
    /// Sets /sys/block/sdX/device/timeout in the guest.
    pub scsi_timeout_s: Option<u32>,
    /// Runs /init's held-read part: the backend loses the first read of its 64 KiB at
    /// [`verdict::HELD_LBA`] (`--fault lose`). Linux's virtio_scsi never aborts on a
    /// timeout (it resets the timer), so the guest sends a LU reset, which must end the
    /// read.
    pub held_read: bool,
    /// Runs /init's hot-plug part instead of its steps ([`hotplug`]): LUN 1 is added,
    /// used and removed, and LUN 0 grown, over the backend's control socket, and the guest
    /// must see each change. Not with `held_read`.
    pub hotplug: bool,
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
            hotplug: self.hotplug,
        }
    }
}

/// A passed run.
#[derive(Debug)]
pub struct LinuxReport {
    pub queues: u16,
    pub hotplug: bool,
    pub wall: Duration,
    pub verdict: LinuxVerdict,
}

impl fmt::Display for LinuxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linux queues={}{} accel={ACCEL}: PASS wall {:.1} s (kernel {}, {} steps, {} of {} queues completed I/O)",
            self.queues,
            if self.hotplug { " hotplug" } else { "" },
            self.wall.as_secs_f64(),
            self.verdict.kernel,
            self.verdict.steps.len(),
            self.verdict.queues_used,
            self.verdict.hw_queues
        )
    }
}

/// Runs the Linux scenario once.
pub fn run_linux(opts: &LinuxOptions) -> Result<LinuxReport, Box<RunFailure>> {
    let start = Instant::now();
    run_in_dir(opts.keep.as_deref(), GUEST, |boot, dir| {
        linux(boot, dir, opts, start)
    })
    .map_err(|failure| Box::new(failure.with_wall(start.elapsed())))
}

/// The stock kernel and initramfs with `append` on `queues` CPUs and request queues.
pub(crate) fn linux_guest(kernel: PathBuf, initrd: PathBuf, append: String, queues: u16) -> Guest {
    Guest::Linux(LinuxBoot {
        kernel,
        initrd,
        append,
        memory_mib: LINUX_MEMORY_MIB,
        cpus: queues,
        num_queues: queues,
    })
}

/// The kernel, the initramfs and the QEMU program, or what is missing.
pub(crate) fn check_inputs(opts: &LinuxOptions) -> Result<(PathBuf, PathBuf, PathBuf), RunError> {
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

fn linux(
    boot: &mut Boot,
    dir: &RunDir,
    opts: &LinuxOptions,
    start: Instant,
) -> Result<LinuxReport, RunError> {
    if opts.hotplug && opts.held_read {
        return Err(RunError::BadGuestArgs(
            "the hot-plug run and the held read are separate runs".into(),
        ));
    }
    let deadline = start + opts.timeout;
    let (kernel, initrd, qemu_program) = check_inputs(opts)?;
    let expect = opts.expectation();
    println!("accel: {ACCEL} (a stock Linux kernel hangs under the nested KVM)");

    let disk = dir.create_disk(LINUX_DISK_BYTES)?;
    let socket = dir.socket_path()?;
    let mut command = backend_command(&opts.backend, &socket, [&disk]);
    command.arg("--num-queues").arg(opts.queues.to_string());
    if let Some(fault) = expect.backend_fault() {
        command.arg("--fault").arg(fault);
    }
    let control = dir.control_socket_path()?;
    let trace = dir.path().join("trace.jsonl");
    if opts.hotplug {
        command.arg("--control-socket").arg(&control);
        command.arg("--trace").arg(&trace);
    }
    let backend = boot.start_backend(command, &dir.log_path("backend"), &socket, deadline)?;
    println!(
        "backend: pid {} listening on {} with {} request queues{}",
        backend.pid(),
        socket.display(),
        opts.queues,
        expect
            .backend_fault()
            .map_or_else(String::new, |f| format!(", --fault {f}"))
    );

    let guest = linux_guest(kernel, initrd, expect.kernel_command_line(), opts.queues);
    let config = QemuConfig::new(qemu_program, socket, guest, ACCEL);
    boot.start_guest(&config, dir)?;
    if opts.hotplug {
        let image = dir.create_image(hotplug::ADDED_IMAGE, hotplug::ADDED_BYTES)?;
        hotplug::drive(boot, &control, &image, deadline)?;
    }
    let exit = boot.wait_guest(deadline, End::Strict)?;
    let verdict = judge_linux(boot.lines(), exit.code(), &expect).map_err(RunError::fail)?;
    if opts.hotplug {
        let text = std::fs::read_to_string(&trace)
            .map_err(|e| RunError::CouldNotReadTrace(trace.display().to_string(), e))?;
        for line in hotplug::judge_events(&text).map_err(RunError::fail)? {
            println!("trace: {line}");
        }
    }
    if signals::interrupted() {
        return Err(RunError::Interrupted);
    }
    Ok(LinuxReport {
        queues: opts.queues,
        hotplug: opts.hotplug,
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

    #[test]
    fn a_missing_kernel_names_the_build_command() {
        let root = Path::new("/repo");
        let (dir, build) = default_guest_dir(root);
        assert_eq!(build, "/repo/linux-guest/build.sh /repo/target/linux-guest");
        let opts = LinuxOptions {
            queues: 1,
            scsi_timeout_s: None,
            held_read: false,
            hotplug: false,
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
            "Linux kernel /repo/target/linux-guest/vmlinux is missing; build it with `/repo/linux-guest/build.sh /repo/target/linux-guest`"
        );
    }

    #[test]
    fn the_hotplug_run_and_the_held_read_do_not_mix() {
        let (guest_dir, build_command) = default_guest_dir(Path::new("/repo"));
        let opts = LinuxOptions {
            queues: 1,
            scsi_timeout_s: None,
            held_read: true,
            hotplug: true,
            backend: "/bin/sh".into(),
            guest_dir,
            qemu: "sh".into(),
            timeout: Duration::from_secs(1),
            keep: None,
            build_command,
        };
        let failure = run_linux(&opts).unwrap_err();
        assert!(
            matches!(&failure.error, RunError::BadGuestArgs(m) if m.contains("separate runs")),
            "{failure}"
        );
        assert!(failure.qemu_command.is_none());
    }
}
