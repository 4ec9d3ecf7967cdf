//! The command line: every subcommand's flags, their defaults (an environment variable
//! or a path below the workspace root) and the options each run is given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use guest_miniport::contract::{GuestArgs, PlantedBug};

use crate::bench::frontend::load::{Pattern, DEFAULT_STALL};
use crate::bench::frontend::FrontendError;
use crate::bench::socket::LoadOptions;
use crate::bench::suite::SuiteOptions;
use crate::bench::BenchError;
use crate::drivers::card::CardOptions;
use crate::drivers::driver::DriverId;
use crate::explore::generate::GenOptions;
use crate::explore::{prepare_out, ExploreOptions};
use crate::launch::accel::{self, AccelChoice, KVM_DEVICE};
use crate::launch::binaries::{check_binaries, Binaries};
use crate::linux::bench::{self as linux_bench, LinuxBenchOptions, QEMU_DRIVE_OPTIONS};
use crate::linux::{self, LinuxOptions};
use crate::scenario::matrix::MatrixOptions;
use crate::scenario::smoke::SmokeOptions;
use crate::soak::{Pace, SoakOptions, NEVER};

/// The built-in scenario of `run` that needs no scenario file.
pub const SMOKE: &str = "smoke";

/// Starts the flakyhba backend and QEMU with the guest image, runs a scenario and
/// judges it. Exits 0 when it passed, 1 when it failed, 130 when interrupted.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Drive a vhost-user-scsi backend from the host with the built-in frontend (no QEMU,
    /// no guest): IOPS, bandwidth, latency percentiles. `--suite` runs `make bench`.
    Bench(BenchArgs),
    /// Run one scenario: a file of harness/scenarios by NAME, a scenario FILE, or
    /// `smoke` (the built-in smoke check, without a fault plan).
    Run(RunArgs),
    /// Run every scenario of harness/scenarios (`make qemu-test`): a progress line per
    /// run, a summary table, and reports. Exits 1 if any run failed.
    Matrix(MatrixArgs),
    /// Boot a stock Debian kernel (built by linux-guest/build.sh) under TCG and drive the
    /// Linux SCSI stack against the backend: sg3_utils, ext4, fio with verify.
    Linux(LinuxArgs),
    /// `make bench-linux`: the stock Linux guest runs the same fio jobs against our backend
    /// and against QEMU's built-in virtio-scsi (cache=none, aio=native) on the same image.
    BenchLinux(LinuxBenchArgs),
    /// `make soak`: the data-integrity soak. Stamped writes and checked reads through the
    /// built-in frontend while faults come and go, LUs and the device are reset, the
    /// frontend reconnects and the backend is killed (-9) and restarted. Exits 1 on the
    /// first lost or torn block.
    Soak(SoakArgs),
    /// The driver card (`make drivers`): our miniport, Linux's virtio_scsi, SeaBIOS's and
    /// OVMF's virtio-scsi drivers against every fault of harness/drivers, under TCG. Prints
    /// the table and writes a Markdown and a JSON report into `--out`; exits 1 if any cell differs from its
    /// row file.
    Drivers(DriversArgs),
    /// Find the faults that break the miniport (`make explore`): random fault plans and
    /// guest arguments judged by the generic oracle; each finding shrunk to a small
    /// scenario file in OUT/found/. Exits 0 when nothing was found, 1 when something
    /// was, 2 on bad input.
    Explore(ExploreArgs),
}

/// `flakyhba-harness drivers`.
#[derive(clap::Args, Debug)]
pub struct DriversArgs {
    /// Only these rows (names of harness/drivers/NAME.toml, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "ROW,...")]
    pub only: Vec<String>,
    /// Only these drivers (comma-separated).
    #[arg(
        long = "driver",
        value_enum,
        value_delimiter = ',',
        value_name = "DRIVER,..."
    )]
    pub drivers: Vec<DriverId>,
    /// Only the cells the row files mark `subset = true` (`make test` runs these).
    #[arg(long)]
    pub subset: bool,
    /// Directory of the row files [default: harness/drivers].
    #[arg(long, value_name = "DIR")]
    pub rows: Option<PathBuf>,
    /// Directory of the reports and of every cell's directory [default: target/drivers].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Output directory of linux-guest/build.sh [default: $FLAKYHBA_LINUX_GUEST, else target/linux-guest]
    #[arg(long)]
    pub guest_dir: Option<PathBuf>,
    /// Output directory of firmware-guest/build.sh [default: $FLAKYHBA_FIRMWARE_GUEST, else target/firmware-guest]
    #[arg(long)]
    pub firmware_dir: Option<PathBuf>,
    /// Directory of Debian's OVMF images.
    #[arg(long, default_value = "/usr/share/OVMF")]
    pub ovmf_dir: PathBuf,
    /// Leave each cell's disk image in its directory (it is removed after the check).
    #[arg(long)]
    pub keep_image: bool,
    #[command(flatten)]
    pub bins: BinaryArgs,
}

/// `flakyhba-harness explore`.
#[derive(clap::Args, Debug)]
pub struct ExploreArgs {
    /// Seed of the campaign: plan I of seed S is always the same plan.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Plans in the campaign (a shard runs every Nth of them).
    #[arg(long, default_value_t = 100)]
    pub runs: u64,
    /// Runs at once [default: the CPUs].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// K/N: only plans K-1, K-1+N, K-1+2N, ..., so that N machines share a campaign.
    #[arg(long, default_value = "1/1", value_name = "K/N")]
    pub shard: String,
    /// Where runs.jsonl, summary.json and found/ go [default: target/explore].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A guest argument applied over every generated case's, as on the kernel command
    /// line (`--guest bug=NAME` plants a bug, `--guest irq=off`); repeatable.
    #[arg(long = "guest", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub guest: Vec<(String, String)>,
    /// Plans may corrupt data (`corrupt` faults); left out by default.
    #[arg(long)]
    pub allow_corruption: bool,
    /// Report findings without shrinking them.
    #[arg(long)]
    pub no_shrink: bool,
    /// Reruns in which a shrink step must break the same oracle clause to be kept.
    #[arg(long, default_value_t = 3)]
    pub reruns: usize,
    /// Stop starting runs once this many distinct findings were seen.
    #[arg(long, value_name = "N")]
    pub max_findings: Option<usize>,
    /// How many distinct findings are shrunk (the first seen).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub shrink_limit: usize,
    /// QEMU accelerator; `auto` uses KVM when /dev/kvm works (TCG on nested paravirtual
    /// KVM), else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    #[command(flatten)]
    pub bins: BinaryArgs,
}

#[derive(clap::Args, Debug)]
pub struct LinuxArgs {
    /// Request queues of the device; the guest gets as many CPUs and fio as many jobs.
    #[arg(long, default_value_t = 1, value_parser = parse_queues)]
    pub queues: u16,
    /// SCSI command timeout of the guest's disk, in seconds (/sys/block/sdX/device/timeout).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub scsi_timeout: Option<u32>,
    /// Also drive the SCSI error handler: the backend loses one read (`--fault lose`);
    /// Linux's timeout does not abort it (virtio_scsi resets the timer), so the guest
    /// resets the LU, which must end the read, and I/O must carry on.
    #[arg(long)]
    pub held_read: bool,
    /// Hot-plug instead of the usual steps: over the backend's control socket the harness
    /// adds LUN 1, removes it and grows LUN 0 as the guest asks, and the guest must see
    /// 0:0:0:1 appear (and use it), go, and /sys/block/sda/size follow.
    #[arg(long, conflicts_with = "held_read")]
    pub hotplug: bool,
    #[command(flatten)]
    pub guest: LinuxGuestArgs,
    /// Overall deadline of the run in seconds; on expiry everything is killed.
    #[arg(long, default_value_t = 300.0, value_parser = parse_seconds)]
    pub timeout: f64,
    /// Keep the run directory (logs, disk image) in DIR instead of a removed temp dir.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// What `linux` and `bench-linux` boot the stock Linux guest with.
#[derive(clap::Args, Debug)]
pub struct LinuxGuestArgs {
    /// Backend binary [default: $FLAKYHBA_BACKEND, else target/release/vhost-user-flakyhba]
    #[arg(long)]
    pub backend: Option<PathBuf>,
    /// Output directory of linux-guest/build.sh [default: $FLAKYHBA_LINUX_GUEST, else target/linux-guest]
    #[arg(long)]
    pub guest_dir: Option<PathBuf>,
    /// QEMU binary, a path or a name looked up on PATH.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn word(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A scenario name (a file of --scenarios), a scenario file, or `smoke`.
    #[arg(value_name = "NAME|FILE")]
    pub scenario: String,
    /// `off`: the miniport requests no interrupts and completes everything by HwTimer
    /// polling (for a scenario file: the same as `--guest irq=off`).
    #[arg(long, value_enum)]
    pub irq: Option<OnOff>,
    /// QEMU accelerator; `auto` uses KVM when /dev/kvm works (TCG on nested paravirtual
    /// KVM), else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Seed of the data pattern and of the LBA choice (for a scenario file: also the
    /// backend's seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Blocks the scenario writes and checks (for a scenario file: `--guest blocks=N`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub blocks: Option<u32>,
    /// Overall deadline of a run in seconds; on expiry everything is killed
    /// [default: 30 for smoke, else the scenario's].
    #[arg(long, value_parser = parse_seconds)]
    pub timeout: Option<f64>,
    /// `smoke` only: keep the run directory (logs, disk image) in DIR instead of a
    /// removed temp dir. Scenario runs always keep theirs under --out.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    #[command(flatten)]
    pub scenario_args: ScenarioArgs,
    #[command(flatten)]
    pub bins: BinaryArgs,
}

/// Where the binaries come from.
#[derive(clap::Args, Clone, Debug)]
pub struct BinaryArgs {
    /// Backend binary [default: $FLAKYHBA_BACKEND, else target/release/vhost-user-flakyhba]
    #[arg(long)]
    pub backend: Option<PathBuf>,
    /// Guest image [default: $FLAKYHBA_IMAGE, else target/x86_64-unknown-none/release/flakyhba-guest]
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// QEMU binary, a path or a name looked up on PATH.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
}

/// What `run` and `matrix` share about scenario runs.
#[derive(clap::Args, Clone, Debug)]
pub struct ScenarioArgs {
    /// Directory of the scenario files [default: harness/scenarios].
    #[arg(long, value_name = "DIR")]
    pub scenarios: Option<PathBuf>,
    /// Directory of the run directories [default: target/qemu-test].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A guest argument applied after the scenario's, as on the kernel command line
    /// (`--guest qd=4`); repeatable.
    #[arg(long = "guest", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub guest: Vec<(String, String)>,
    /// Leave each run's disk image in its directory (it is removed after the check).
    #[arg(long)]
    pub keep_image: bool,
}

#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// Only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub only: Vec<String>,
    /// Leave these scenarios out (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub skip: Vec<String>,
    /// QEMU accelerator; `auto` uses KVM when /dev/kvm works (TCG on nested paravirtual
    /// KVM), else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Replaces the guest's and the backend's seed in every scenario.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Runs each scenario N times (directories NAME-rK).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Runs at once. The default, 1, keeps the guest's timing undisturbed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// Writes a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Writes a JSON report (one object per run).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Replaces every scenario's deadline, in seconds.
    #[arg(long, value_parser = parse_seconds)]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    #[command(flatten)]
    pub bins: BinaryArgs,
}

/// `flakyhba-harness bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Drive the vhost-user-scsi backend listening on PATH (one load, one report).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "suite",
        conflicts_with = "suite"
    )]
    pub socket: Option<PathBuf>,
    /// Run the `make bench` comparison instead: start our backend (and --peer) on one
    /// image file for every run of every case.
    #[arg(long)]
    pub suite: bool,
    /// Request queues, each driven by its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=62))]
    pub queues: u16,
    /// Requests kept in flight on each queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=341))]
    pub queue_depth: u16,
    /// Bytes per request: a number with an optional k or M suffix (4k, 1M).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub block_size: u64,
    /// Percentage of reads; the rest are writes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
    /// LBA order.
    #[arg(long, value_enum, default_value = "random")]
    pub pattern: PatternArg,
    /// Seconds of load (of each run with --suite).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX (a kick and a call per request).
    #[arg(long)]
    pub no_event_idx: bool,
    /// Seed of the LBA and read/write draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds without a completion (interrupts without one do not count) after which a
    /// queue with requests in flight has stalled and the load fails.
    #[arg(long, default_value_t = DEFAULT_STALL.as_secs_f64(), value_parser = parse_seconds)]
    pub stall_timeout: f64,
    /// --suite: our backend binary [default: $FLAKYHBA_BACKEND, else target/release/vhost-user-flakyhba]
    #[arg(long)]
    pub backend: Option<PathBuf>,
    /// --suite: a peer vhost-user-scsi backend: a shell command to which
    /// `--socket-path S IMAGE` is appended; started afresh for every run.
    #[arg(long, value_name = "COMMAND")]
    pub peer: Option<String>,
    /// --suite: the image file (filled with data when missing or smaller than --image-size).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// --suite: size of the image file.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub image_size: u64,
    /// --suite: runs of each case (median, min and max are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// --suite: keep the logs (and the image, unless --image) in DIR.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PatternArg {
    Random,
    Sequential,
}

/// `flakyhba-harness bench-linux`.
#[derive(clap::Args, Debug)]
pub struct LinuxBenchArgs {
    /// Request queues of both devices; the guest gets as many CPUs and fio as many jobs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub queues: u16,
    /// Seconds of each fio job (after a 2 s ramp).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub runtime: u32,
    /// Boots per device (the devices alternate; median, min and max are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeats: u32,
    #[command(flatten)]
    pub guest: LinuxGuestArgs,
    /// `-drive` options of QEMU's built-in device (cache=none: O_DIRECT, no host page
    /// cache, as the comparison is usually quoted; our backend reads through it).
    #[arg(long, default_value = QEMU_DRIVE_OPTIONS)]
    pub qemu_drive: String,
    /// Deadline of each boot in seconds; on expiry the boot is killed, reported as hung and
    /// left out, and the suite goes on [default: 73 + 2 x (runtime + 12)].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub boot_timeout: Option<u64>,
    /// Keep the run directory (logs, image) in DIR instead of a removed temp dir.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}
/// `flakyhba-harness soak`.
#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// How long to soak, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub minutes: f64,
    /// Seed of the workload and of the faults' draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Request queues, all driven at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub queues: u16,
    /// Requests kept in flight on each queue.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queue_depth: u16,
    /// Size of the LUN: small, so that blocks are rewritten often.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub lun_size: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub progress: f64,
    /// Backend binary [default: $FLAKYHBA_BACKEND, else target/release/vhost-user-flakyhba]
    #[arg(long)]
    pub backend: Option<PathBuf>,
    /// Leave these disturbances out (comma-separated), e.g. to tell which one a failure
    /// needs.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WHAT,...")]
    pub without: Vec<Disturbance>,
    /// Keep the run directory (image, backend logs) in DIR instead of a removed temp dir.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// What `soak --without` can leave out.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disturbance {
    Faults,
    LuReset,
    DeviceReset,
    Reconnect,
    Kill,
}

impl SoakArgs {
    pub fn options(&self) -> SoakOptions {
        SoakOptions {
            duration: Duration::from_secs_f64(self.minutes * 60.0),
            backend: backend(self.backend.clone()),
            queues: self.queues,
            queue_depth: self.queue_depth,
            lun_bytes: self.lun_size,
            max_blocks: 64,
            read_percent: 40,
            seed: self.seed,
            keep: self.keep.clone(),
            pace: self.pace(),
            progress: Duration::from_secs_f64(self.progress),
        }
    }
}

impl SoakArgs {
    fn pace(&self) -> Pace {
        let mut pace = Pace::default();
        for d in &self.without {
            let slot = match d {
                Disturbance::Faults => &mut pace.fault_switch,
                Disturbance::LuReset => &mut pace.lu_reset,
                Disturbance::DeviceReset => &mut pace.device_reset,
                Disturbance::Reconnect => &mut pace.reconnect,
                Disturbance::Kill => &mut pace.kill,
            };
            *slot = NEVER;
        }
        pace
    }
}

/// 1 or 4: the two shapes the scenario is written for (one queue; one per CPU of four).
fn parse_queues(s: &str) -> Result<u16, String> {
    match s {
        "1" => Ok(1),
        "4" => Ok(4),
        _ => Err(format!("{s:?}: the Linux scenario runs with 1 or 4 queues")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `4096`, `4k`, `1M`, `256M`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size (a positive number, optional k/M/G)"))
}

/// The workspace root, fixed at compile time (harness/ is one level below it).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
}

/// The path a flag gives, else the environment variable `env`, else `relative` below the
/// workspace root.
fn default_path(flag: Option<PathBuf>, env: &str, relative: &str) -> PathBuf {
    flag.or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| workspace_root().join(relative))
}

/// The backend binary: `--backend`, $FLAKYHBA_BACKEND, or the release build.
fn backend(flag: Option<PathBuf>) -> PathBuf {
    default_path(
        flag,
        "FLAKYHBA_BACKEND",
        "target/release/vhost-user-flakyhba",
    )
}

/// The Linux guest's directory and the command that builds it.
fn linux_guest_dir(flag: Option<PathBuf>) -> (PathBuf, String) {
    let root = workspace_root();
    match flag.or_else(|| std::env::var_os("FLAKYHBA_LINUX_GUEST").map(PathBuf::from)) {
        Some(dir) => {
            let build = linux::build_command(root, &dir);
            (dir, build)
        }
        None => linux::default_guest_dir(root),
    }
}

impl BinaryArgs {
    /// The binaries a flag, an environment variable or the release build names.
    pub fn binaries(self) -> Binaries {
        Binaries {
            backend: backend(self.backend),
            image: default_path(
                self.image,
                "FLAKYHBA_IMAGE",
                "target/x86_64-unknown-none/release/flakyhba-guest",
            ),
            qemu: self.qemu,
        }
    }
}

/// What `run NAME|FILE` and `matrix` share.
pub struct ScenarioRun {
    pub scenario: ScenarioArgs,
    pub bins: BinaryArgs,
    pub accel: AccelChoice,
    pub seed: Option<u64>,
    pub timeout: Option<f64>,
    /// Guest arguments from `run`'s own flags (`--irq`, `--blocks`).
    pub guest: Vec<(String, String)>,
}

impl ScenarioRun {
    /// The runner's options and the scenario directory; the message when they are wrong.
    /// Prints the accelerator chosen.
    pub fn options(self) -> Result<(MatrixOptions, PathBuf), String> {
        let root = workspace_root();
        let bins = check_binaries(&self.bins.binaries()).map_err(|e| e.to_string())?;
        let (accel, why) = accel::choose(self.accel, Path::new(KVM_DEVICE));
        println!("accel: {accel} ({why})");
        let mut guest = self.guest;
        guest.extend(self.scenario.guest);
        let opts = MatrixOptions {
            bins,
            accel,
            out: self
                .scenario
                .out
                .unwrap_or_else(|| root.join("target/qemu-test")),
            seed: self.seed,
            guest,
            timeout: self.timeout.map(Duration::from_secs_f64),
            repeat: 1,
            jobs: 1,
            keep_image: self.scenario.keep_image,
        };
        let dir = self
            .scenario
            .scenarios
            .unwrap_or_else(|| root.join("harness/scenarios"));
        Ok((opts, dir))
    }
}

impl RunArgs {
    /// The smoke run (`run smoke`).
    pub fn smoke_options(self) -> SmokeOptions {
        let bins = self.bins.binaries();
        SmokeOptions {
            irq: self.irq != Some(OnOff::Off),
            accel: self.accel,
            seed: self.seed.unwrap_or(GuestArgs::default().seed),
            blocks: self.blocks.unwrap_or(GuestArgs::default().blocks),
            backend: bins.backend,
            image: bins.image,
            qemu: bins.qemu,
            timeout: Duration::from_secs_f64(self.timeout.unwrap_or(30.0)),
            keep: self.keep,
        }
    }

    /// A scenario file's runs (`run NAME|FILE`): `--irq` and `--blocks` become guest
    /// arguments.
    pub fn scenario_run(self) -> ScenarioRun {
        let mut guest = Vec::new();
        if let Some(irq) = self.irq {
            guest.push(("irq".to_owned(), irq.word().to_owned()));
        }
        if let Some(blocks) = self.blocks {
            guest.push(("blocks".to_owned(), blocks.to_string()));
        }
        ScenarioRun {
            scenario: self.scenario_args,
            bins: self.bins,
            accel: self.accel,
            seed: self.seed,
            timeout: self.timeout,
            guest,
        }
    }
}

impl MatrixArgs {
    /// What the matrix shares with `run NAME|FILE`.
    pub fn scenario_run(&self) -> ScenarioRun {
        ScenarioRun {
            scenario: self.scenario.clone(),
            bins: self.bins.clone(),
            accel: self.accel,
            seed: self.seed,
            timeout: self.timeout,
            guest: Vec::new(),
        }
    }
}

/// `K/N` with 1 <= K <= N.
fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--shard {s}: expected K/N with 1 <= K <= N");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n) = (
        k.parse::<u64>().map_err(|_| bad())?,
        n.parse::<u64>().map_err(|_| bad())?,
    );
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

impl ExploreArgs {
    /// The campaign's options, or a one-line message when the input is bad (exit 2).
    /// Prints the accelerator chosen.
    pub fn options(self, command: String) -> Result<ExploreOptions, String> {
        if self.runs == 0 {
            return Err("--runs 0: a campaign needs at least one run".into());
        }
        if self.reruns == 0 {
            return Err("--reruns 0: a shrink step needs at least one run".into());
        }
        let shard = parse_shard(&self.shard)?;
        let line = self
            .guest
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let fixed = GuestArgs::parse(&line).map_err(|e| {
            let known: Vec<&str> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
            format!("--guest {line}: {e} (planted bugs: {})", known.join(", "))
        })?;
        let out = self
            .out
            .unwrap_or_else(|| workspace_root().join("target/explore"));
        prepare_out(&out).map_err(|e| e.to_string())?;
        let bins = check_binaries(&self.bins.binaries()).map_err(|e| e.to_string())?;
        let (accel, why) = accel::choose(self.accel, Path::new(KVM_DEVICE));
        println!("accel: {accel} ({why})");
        let jobs = self
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Ok(ExploreOptions {
            runner: MatrixOptions {
                bins,
                accel,
                out: out.join("runs"),
                seed: None,
                guest: Vec::new(),
                timeout: None,
                repeat: 1,
                jobs: 1,
                keep_image: false,
            },
            out,
            gen: GenOptions {
                seed: self.seed,
                bug: fixed.bug,
                allow_corruption: self.allow_corruption,
            },
            overrides: self.guest,
            runs: self.runs,
            shard,
            jobs: jobs.max(1),
            shrink: !self.no_shrink,
            reruns: self.reruns,
            max_findings: self.max_findings,
            shrink_limit: self.shrink_limit,
            command,
        })
    }
}

impl LinuxArgs {
    pub fn options(self) -> LinuxOptions {
        let (guest_dir, build_command) = linux_guest_dir(self.guest.guest_dir);
        LinuxOptions {
            queues: self.queues,
            scsi_timeout_s: self.scsi_timeout,
            held_read: self.held_read,
            hotplug: self.hotplug,
            backend: backend(self.guest.backend),
            guest_dir,
            qemu: self.guest.qemu,
            timeout: Duration::from_secs_f64(self.timeout),
            keep: self.keep,
            build_command,
        }
    }
}

impl LinuxBenchArgs {
    pub fn options(&self) -> LinuxBenchOptions {
        let (guest_dir, build_command) = linux_guest_dir(self.guest.guest_dir.clone());
        LinuxBenchOptions {
            queues: self.queues,
            runtime_s: self.runtime,
            repeats: self.repeats,
            backend: backend(self.guest.backend.clone()),
            guest_dir,
            qemu: self.guest.qemu.clone(),
            qemu_drive: self.qemu_drive.clone(),
            boot_timeout: linux_bench::boot_timeout(self.boot_timeout, self.runtime),
            keep: self.keep.clone(),
            build_command,
        }
    }
}

impl DriversArgs {
    pub fn options(self) -> CardOptions {
        let root = workspace_root();
        let (linux_guest, linux_build) = linux_guest_dir(self.guest_dir);
        let bins = self.bins.binaries();
        CardOptions {
            backend: bins.backend,
            image: bins.image,
            qemu: bins.qemu,
            linux_guest,
            linux_build,
            firmware: default_path(
                self.firmware_dir,
                "FLAKYHBA_FIRMWARE_GUEST",
                "target/firmware-guest",
            ),
            ovmf: self.ovmf_dir,
            rows: self.rows.unwrap_or_else(|| root.join("harness/drivers")),
            out: self.out.unwrap_or_else(|| root.join("target/drivers")),
            only: self.only,
            drivers: self.drivers,
            subset: self.subset,
            keep_image: self.keep_image,
            root: root.to_owned(),
        }
    }
}

impl BenchArgs {
    /// Seconds of load, checked.
    pub fn duration(&self) -> Result<Duration, BenchError> {
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            return Err(FrontendError::BadConfig(format!(
                "--duration {} is not a positive number of seconds",
                self.duration
            ))
            .into());
        }
        Ok(Duration::from_secs_f64(self.duration))
    }

    /// `--suite`: the `make bench` comparison.
    pub fn suite_options(&self, duration: Duration) -> SuiteOptions {
        SuiteOptions {
            backend: backend(self.backend.clone()),
            peer: self.peer.clone().filter(|p| !p.trim().is_empty()),
            image: self.image.clone(),
            image_bytes: self.image_size,
            repeats: self.repeats,
            duration,
            keep: self.keep.clone(),
        }
    }

    /// `--socket`: one load.
    pub fn load_options(&self, duration: Duration) -> Result<LoadOptions, BenchError> {
        let block_bytes = u32::try_from(self.block_size).map_err(|_| {
            FrontendError::BadConfig(format!("--block-size {} too large", self.block_size))
        })?;
        Ok(LoadOptions {
            queues: self.queues,
            queue_depth: self.queue_depth,
            block_bytes,
            read_percent: self.read_percent,
            pattern: match self.pattern {
                PatternArg::Random => Pattern::Random,
                PatternArg::Sequential => Pattern::Sequential,
            },
            duration,
            event_idx: !self.no_event_idx,
            seed: self.seed,
            stall: Duration::from_secs_f64(self.stall_timeout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_flags_are_key_value_pairs() {
        assert_eq!(
            parse_key_value("qd=4"),
            Ok(("qd".to_owned(), "4".to_owned()))
        );
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_owned(), "b=c".to_owned()))
        );
        assert!(parse_key_value("qd").is_err());
        assert!(parse_key_value("=4").is_err());
    }

    #[test]
    fn shards_are_k_of_n() {
        assert_eq!(parse_shard("1/1"), Ok((1, 1)));
        assert_eq!(parse_shard("3/4"), Ok((3, 4)));
        for bad in ["3/2", "0/2", "1", "a/b", "2/0", "-1/2"] {
            let e = parse_shard(bad).unwrap_err();
            assert!(e.starts_with(&format!("--shard {bad}:")), "{e}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("12x").is_err());
    }
}
