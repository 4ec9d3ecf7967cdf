use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flakyhba_harness::accel::AccelChoice;
use flakyhba_harness::linux::{self, run_linux, LinuxOptions};
use flakyhba_harness::matrix::{Binaries, MatrixOptions};
use flakyhba_harness::scenario;
use flakyhba_harness::signals::{self, EXIT_INTERRUPTED};
use flakyhba_harness::smoke::{run_smoke, SmokeOptions};
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

/// Where the binaries come from, for `run` and `matrix`.
#[derive(clap::Args, Debug)]
struct BinaryArgs {
    /// Backend binary [default: $FLAKYHBA_BACKEND, else target/release/vhost-user-flakyhba]
    #[arg(long)]
    backend: Option<PathBuf>,
    /// Guest image [default: $FLAKYHBA_IMAGE, else target/x86_64-unknown-none/release/flakyhba-guest]
    #[arg(long)]
    image: Option<PathBuf>,
    /// QEMU binary, a path or a name looked up on PATH.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

/// What `run` and `matrix` share about scenario runs.
#[derive(clap::Args, Debug)]
struct ScenarioArgs {
    /// Directory of the scenario files.
    #[arg(long, value_name = "DIR")]
    scenarios: Option<PathBuf>,
    /// Directory of the run directories [default: target/qemu-test].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// A guest argument applied after the scenario's, as on the kernel command line
    /// (`--guest qd=4`); repeatable.
    #[arg(long = "guest", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    guest: Vec<(String, String)>,
    /// Leave each run's disk image in its directory (it is removed after the check).
    #[arg(long)]
    keep_image: bool,
}

#[derive(clap::Args, Debug)]
struct MatrixArgs {
    /// Only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    only: Vec<String>,
    /// Leave these scenarios out (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    skip: Vec<String>,
    /// QEMU accelerator; `auto` uses KVM when /dev/kvm works (TCG on nested paravirtual
    /// KVM), else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Replaces the guest's and the backend's seed in every scenario.
    #[arg(long)]
    seed: Option<u64>,
    /// Runs each scenario N times (directories NAME-rK).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Runs at once. The default, 1, keeps the guest's timing undisturbed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// Writes a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Writes a JSON report (one object per run).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Replaces every scenario's deadline, in seconds.
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<f64>,
    #[command(flatten)]
    scenario: ScenarioArgs,
    #[command(flatten)]
    bins: BinaryArgs,
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

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
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
        Cmd::Matrix(args) => matrix(args),
        Cmd::Bench(args) => bench(args),
        Cmd::Linux(args) => linux(args),
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

fn binaries(args: BinaryArgs) -> Binaries {
    Binaries {
        backend: default_path(
            args.backend,
            "FLAKYHBA_BACKEND",
            "target/release/vhost-user-flakyhba",
        ),
        image: default_path(
            args.image,
            "FLAKYHBA_IMAGE",
            "target/x86_64-unknown-none/release/flakyhba-guest",
        ),
        qemu: args.qemu,
    }
}

fn smoke(args: RunArgs) -> ExitCode {
    let bins = binaries(args.bins);
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

/// The scenario runner's options; `None` with the message printed when they are wrong.
fn matrix_options(
    scenario: ScenarioArgs,
    bins: BinaryArgs,
    accel: AccelChoice,
    seed: Option<u64>,
    timeout: Option<f64>,
    extra_guest: Vec<(String, String)>,
) -> Result<(MatrixOptions, PathBuf), String> {
    let bins =
        flakyhba_harness::matrix::check_binaries(&binaries(bins)).map_err(|e| e.to_string())?;
    let (accel, why) = flakyhba_harness::accel::choose(accel, Path::new("/dev/kvm"));
    println!("accel: {accel} ({why})");
    let mut guest = extra_guest;
    guest.extend(scenario.guest);
    let opts = MatrixOptions {
        bins,
        accel,
        out: scenario
            .out
            .unwrap_or_else(|| workspace_root().join("target/qemu-test")),
        seed,
        guest,
        timeout: timeout.map(Duration::from_secs_f64),
        repeat: 1,
        jobs: 1,
        keep_image: scenario.keep_image,
    };
    let dir = scenario
        .scenarios
        .unwrap_or_else(|| workspace_root().join("harness/scenarios"));
    Ok((opts, dir))
}

fn run_scenario(args: RunArgs) -> ExitCode {
    let mut extra = Vec::new();
    if let Some(irq) = args.irq {
        extra.push(("irq".to_owned(), irq.word().to_owned()));
    }
    if let Some(blocks) = args.blocks {
        extra.push(("blocks".to_owned(), blocks.to_string()));
    }
    let (opts, dir) = match matrix_options(
        args.scenario_args,
        args.bins,
        args.accel,
        args.seed,
        args.timeout,
        extra,
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("flakyhba-harness: {e}");
            return ExitCode::FAILURE;
        }
    };
    match scenario::find(&dir, &args.scenario) {
        Ok(s) => run_runs(&flakyhba_harness::matrix::plan(&[s], 1), &opts, None, None),
        Err(e) => {
            eprintln!("flakyhba-harness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn matrix(args: MatrixArgs) -> ExitCode {
    let (mut opts, dir) = match matrix_options(
        args.scenario,
        args.bins,
        args.accel,
        args.seed,
        args.timeout,
        Vec::new(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("flakyhba-harness: {e}");
            return ExitCode::FAILURE;
        }
    };
    opts.repeat = args.repeat;
    opts.jobs = args.jobs as usize;
    let all = match scenario::load_dir(&dir) {
        Ok(all) => all,
        Err(e) => {
            eprintln!("flakyhba-harness: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selected = match flakyhba_harness::matrix::select(all, &args.only, &args.skip) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flakyhba-harness: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runs = flakyhba_harness::matrix::plan(&selected, opts.repeat);
    run_runs(&runs, &opts, args.junit.as_deref(), args.json.as_deref())
}

fn run_runs(
    runs: &[flakyhba_harness::matrix::Planned],
    opts: &MatrixOptions,
    junit: Option<&Path>,
    json: Option<&Path>,
) -> ExitCode {
    use flakyhba_harness::{matrix, report};
    println!("{} run(s), results in {}", runs.len(), opts.out.display());
    let start = std::time::Instant::now();
    let total = runs.len();
    let (records, interrupted) = matrix::run_all(runs, opts, |i, record| {
        println!("{}", record.progress_line(i, total));
        if !record.passed() {
            print!("{}", record.details());
        }
    });
    let wall = start.elapsed();
    if interrupted {
        eprintln!("flakyhba-harness: interrupted");
        return ExitCode::from(EXIT_INTERRUPTED as u8);
    }
    println!();
    print!("{}", matrix::summary(&records, wall));
    let mut ok = records.iter().all(|r| r.passed());
    if let Some(path) = junit {
        if let Err(e) = report::write(path, &report::junit(&records, wall)) {
            eprintln!("flakyhba-harness: {e}");
            ok = false;
        }
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report::json(&records)).expect("JSON encodes");
        if let Err(e) = report::write(path, &(text + "\n")) {
            eprintln!("flakyhba-harness: {e}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
