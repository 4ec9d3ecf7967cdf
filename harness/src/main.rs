use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flakyhba_harness::launch::accel::AccelChoice;
use flakyhba_harness::launch::signals::{self, EXIT_INTERRUPTED};
use flakyhba_harness::linux::{self, run_linux, LinuxOptions};
use flakyhba_harness::matrix_cli::{self, BinaryArgs, MatrixArgs, RunScenario, ScenarioArgs};
use flakyhba_harness::scenario::smoke::{run_smoke, SmokeOptions};
use guest_miniport::contract::GuestArgs;

/// Starts the flakyhba backend and QEMU with the guest image, runs a scenario and
/// judges it. Exits 0 when it passed, 1 when it failed, 130 when interrupted.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drive a vhost-user-scsi backend from the host with the built-in frontend (no QEMU,
    /// no guest): IOPS, bandwidth, latency percentiles. `--suite` runs `make bench`.
    Bench(flakyhba_harness::bench::BenchArgs),
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
    BenchLinux(linux::bench::LinuxBenchArgs),
}

#[derive(clap::Args, Debug)]
struct LinuxArgs {
    /// Request queues of the device; the guest gets as many CPUs and fio as many jobs.
    #[arg(long, default_value_t = 1, value_parser = parse_queues)]
    queues: u16,
    /// SCSI command timeout of the guest's disk, in seconds (/sys/block/sdX/device/timeout).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    scsi_timeout: Option<u32>,
    /// Also drive the SCSI error handler: the backend loses one read (`--fault lose`);
    /// Linux's timeout does not abort it (virtio_scsi resets the timer), so the guest
    /// resets the LU, which must end the read, and I/O must carry on.
    #[arg(long)]
    held_read: bool,
    /// Backend binary [default: $FLAKYHBA_BACKEND, else target/release/vhost-user-flakyhba]
    #[arg(long)]
    backend: Option<PathBuf>,
    /// Output directory of linux-guest/build.sh [default: $FLAKYHBA_LINUX_GUEST, else target/linux-guest]
    #[arg(long)]
    guest_dir: Option<PathBuf>,
    /// QEMU binary, a path or a name looked up on PATH.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Overall deadline of the run in seconds; on expiry everything is killed.
    #[arg(long, default_value_t = 300.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Keep the run directory (logs, disk image) in DIR instead of a removed temp dir.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

/// The built-in scenario of `run` that needs no scenario file.
const SMOKE: &str = "smoke";

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn word(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// A scenario name (a file of --scenarios), a scenario file, or `smoke`.
    #[arg(value_name = "NAME|FILE")]
    scenario: String,
    /// `off`: the miniport requests no interrupts and completes everything by HwTimer
    /// polling (for a scenario file: the same as `--guest irq=off`).
    #[arg(long, value_enum)]
    irq: Option<OnOff>,
    /// QEMU accelerator; `auto` uses KVM when /dev/kvm works (TCG on nested paravirtual
    /// KVM), else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Seed of the data pattern and of the LBA choice (for a scenario file: also the
    /// backend's seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Blocks the scenario writes and checks (for a scenario file: `--guest blocks=N`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    blocks: Option<u32>,
    /// Overall deadline of a run in seconds; on expiry everything is killed
    /// [default: 30 for smoke, else the scenario's].
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<f64>,
    /// `smoke` only: keep the run directory (logs, disk image) in DIR instead of a
    /// removed temp dir. Scenario runs always keep theirs under --out.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    #[command(flatten)]
    scenario_args: ScenarioArgs,
    #[command(flatten)]
    bins: BinaryArgs,
}

/// 1 or 4: the two shapes the scenario is written for (one queue; one per CPU of four).
fn parse_queues(s: &str) -> Result<u16, String> {
    match s {
        "1" => Ok(1),
        "4" => Ok(4),
        _ => Err(format!("{s:?}: the Linux scenario runs with 1 or 4 queues")),
    }
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// The workspace root, fixed at compile time (harness/ is one level below it).
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
}

fn default_path(flag: Option<PathBuf>, env: &str, relative: &str) -> PathBuf {
    flag.or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| workspace_root().join(relative))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Err(e) = signals::install_handlers() {
        log::error!("{e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Cmd::Run(args) if args.scenario == SMOKE => smoke(args),
        Cmd::Run(args) => run_scenario(args),
        Cmd::Matrix(args) => matrix_cli::run_matrix(args, workspace_root()),
        Cmd::Bench(args) => bench(args),
        Cmd::Linux(args) => linux(args),
        Cmd::BenchLinux(args) => bench_linux(args),
    }
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

fn bench_linux(args: linux::bench::LinuxBenchArgs) -> ExitCode {
    let (guest_dir, build_command) = linux_guest_dir(args.guest_dir.clone());
    let backend = default_path(
        args.backend.clone(),
        "FLAKYHBA_BACKEND",
        "target/release/vhost-user-flakyhba",
    );
    let opts = args.options(backend, guest_dir, build_command);
    match linux::bench::run_linux_bench(&opts) {
        Ok(_) if signals::interrupted() => {
            eprintln!("flakyhba-harness: interrupted");
            ExitCode::from(EXIT_INTERRUPTED as u8)
        }
        Ok(report) => {
            print!("{}", linux::bench::render_table(&report));
            if let Some(path) = &args.json {
                if let Err(e) = linux::bench::write_json(&report, path) {
                    eprintln!(
                        "flakyhba-harness bench-linux: could not write {}: {e}",
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(failure) if failure.interrupted() || signals::interrupted() => {
            eprintln!("flakyhba-harness: interrupted");
            ExitCode::from(EXIT_INTERRUPTED as u8)
        }
        Err(failure) => {
            eprint!("bench-linux: {failure}");
            ExitCode::FAILURE
        }
    }
}

fn linux(args: LinuxArgs) -> ExitCode {
    let root = workspace_root();
    let (guest_dir, build_command) = match args
        .guest_dir
        .or_else(|| std::env::var_os("FLAKYHBA_LINUX_GUEST").map(PathBuf::from))
    {
        Some(dir) => {
            let build = linux::build_command(root, &dir);
            (dir, build)
        }
        None => linux::default_guest_dir(root),
    };
    let opts = LinuxOptions {
        queues: args.queues,
        scsi_timeout_s: args.scsi_timeout,
        held_read: args.held_read,
        backend: default_path(
            args.backend,
            "FLAKYHBA_BACKEND",
            "target/release/vhost-user-flakyhba",
        ),
        guest_dir,
        qemu: args.qemu,
        timeout: Duration::from_secs_f64(args.timeout),
        keep: args.keep,
        build_command,
    };
    match run_linux(&opts) {
        Ok(report) if !signals::interrupted() => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("flakyhba-harness: interrupted");
            ExitCode::from(EXIT_INTERRUPTED as u8)
        }
        Err(failure) if failure.interrupted() || signals::interrupted() => {
            eprintln!("flakyhba-harness: interrupted");
            ExitCode::from(EXIT_INTERRUPTED as u8)
        }
        Err(failure) => {
            eprint!("linux queues={}: {failure}", opts.queues);
            ExitCode::FAILURE
        }
    }
}

fn run_scenario(args: RunArgs) -> ExitCode {
    let mut guest = Vec::new();
    if let Some(irq) = args.irq {
        guest.push(("irq".to_owned(), irq.word().to_owned()));
    }
    if let Some(blocks) = args.blocks {
        guest.push(("blocks".to_owned(), blocks.to_string()));
    }
    let run = RunScenario {
        name_or_file: args.scenario,
        accel: args.accel,
        seed: args.seed,
        timeout: args.timeout,
        guest,
        scenario: args.scenario_args,
        bins: args.bins,
    };
    matrix_cli::run_scenario(run, workspace_root())
}

fn smoke(args: RunArgs) -> ExitCode {
    let bins = matrix_cli::binaries(args.bins, workspace_root());
    let opts = SmokeOptions {
        irq: args.irq != Some(OnOff::Off),
        accel: args.accel,
        seed: args.seed.unwrap_or(GuestArgs::default().seed),
        blocks: args.blocks.unwrap_or(GuestArgs::default().blocks),
        backend: bins.backend,
        image: bins.image,
        qemu: bins.qemu,
        timeout: Duration::from_secs_f64(args.timeout.unwrap_or(30.0)),
        keep: args.keep,
    };
    match run_smoke(&opts) {
        Ok(report) if !signals::interrupted() => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("flakyhba-harness: interrupted");
            ExitCode::from(EXIT_INTERRUPTED as u8)
        }
        Err(failure) if failure.interrupted() || signals::interrupted() => {
            eprintln!("flakyhba-harness: interrupted");
            ExitCode::from(EXIT_INTERRUPTED as u8)
        }
        Err(failure) => {
            let irq = if opts.irq { "on" } else { "off" };
            eprint!("smoke irq={irq}: {failure}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: flakyhba_harness::bench::BenchArgs) -> ExitCode {
    let default_backend = workspace_root().join("target/release/vhost-user-flakyhba");
    match flakyhba_harness::bench::run_cli(args, default_backend) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flakyhba-harness bench: {e}");
            ExitCode::FAILURE
        }
    }
}
