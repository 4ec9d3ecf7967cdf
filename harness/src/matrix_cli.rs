//! The command line of `flakyhba-harness matrix` and of `run NAME|FILE`: flags, defaults
//! below the workspace root, progress lines, the summary table and the reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::launch::accel::{self, AccelChoice};
use crate::launch::binaries::{check_binaries, Binaries};
use crate::launch::signals::{self, EXIT_INTERRUPTED};
use crate::scenario::file;
use crate::scenario::matrix::plan::{plan, select, Planned};
use crate::scenario::matrix::record::summary;
use crate::scenario::matrix::report;
use crate::scenario::matrix::{self, MatrixOptions};

const KVM_DEVICE: &str = "/dev/kvm";

/// Where the binaries come from.
#[derive(clap::Args, Debug)]
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
#[derive(clap::Args, Debug)]
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

/// `run NAME|FILE`: what the `run` subcommand passes on for a scenario file.
#[derive(Debug)]
pub struct RunScenario {
    pub name_or_file: String,
    pub accel: AccelChoice,
    pub seed: Option<u64>,
    pub timeout: Option<f64>,
    /// Guest arguments from `run`'s own flags (`--irq`, `--blocks`).
    pub guest: Vec<(String, String)>,
    pub scenario: ScenarioArgs,
    pub bins: BinaryArgs,
}

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn default_path(flag: Option<PathBuf>, env: &str, root: &Path, relative: &str) -> PathBuf {
    flag.or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| root.join(relative))
}

/// The binaries a flag, an environment variable or the release build names.
pub fn binaries(args: BinaryArgs, root: &Path) -> Binaries {
    Binaries {
        backend: default_path(
            args.backend,
            "FLAKYHBA_BACKEND",
            root,
            "target/release/vhost-user-flakyhba",
        ),
        image: default_path(
            args.image,
            "FLAKYHBA_IMAGE",
            root,
            "target/x86_64-unknown-none/release/flakyhba-guest",
        ),
        qemu: args.qemu,
    }
}

struct Common {
    scenario: ScenarioArgs,
    bins: BinaryArgs,
    accel: AccelChoice,
    seed: Option<u64>,
    timeout: Option<f64>,
    guest: Vec<(String, String)>,
}

/// The runner's options and the scenario directory; the message when they are wrong.
fn options(c: Common, root: &Path) -> Result<(MatrixOptions, PathBuf), String> {
    let bins = check_binaries(&binaries(c.bins, root)).map_err(|e| e.to_string())?;
    let (accel, why) = accel::choose(c.accel, Path::new(KVM_DEVICE));
    println!("accel: {accel} ({why})");
    let mut guest = c.guest;
    guest.extend(c.scenario.guest);
    let opts = MatrixOptions {
        bins,
        accel,
        out: c
            .scenario
            .out
            .unwrap_or_else(|| root.join("target/qemu-test")),
        seed: c.seed,
        guest,
        timeout: c.timeout.map(Duration::from_secs_f64),
        repeat: 1,
        jobs: 1,
        keep_image: c.scenario.keep_image,
    };
    let dir = c
        .scenario
        .scenarios
        .unwrap_or_else(|| root.join("harness/scenarios"));
    Ok((opts, dir))
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("flakyhba-harness: {e}");
    ExitCode::FAILURE
}

/// `flakyhba-harness run NAME|FILE`: the scenario's runs (and its negative control).
pub fn run_scenario(args: RunScenario, root: &Path) -> ExitCode {
    let common = Common {
        scenario: args.scenario,
        bins: args.bins,
        accel: args.accel,
        seed: args.seed,
        timeout: args.timeout,
        guest: args.guest,
    };
    let (opts, dir) = match options(common, root) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    match file::find(&dir, &args.name_or_file) {
        Ok(s) => run_runs(&plan(&[s], 1), &opts, None, None),
        Err(e) => fail(e),
    }
}

/// `flakyhba-harness matrix`.
pub fn run_matrix(args: MatrixArgs, root: &Path) -> ExitCode {
    let common = Common {
        scenario: args.scenario,
        bins: args.bins,
        accel: args.accel,
        seed: args.seed,
        timeout: args.timeout,
        guest: Vec::new(),
    };
    let (mut opts, dir) = match options(common, root) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    opts.repeat = args.repeat;
    opts.jobs = args.jobs as usize;
    let selected = file::load_dir(&dir)
        .map_err(|e| e.to_string())
        .and_then(|all| select(all, &args.only, &args.skip).map_err(|e| e.to_string()));
    match selected {
        Ok(selected) => run_runs(
            &plan(&selected, opts.repeat),
            &opts,
            args.junit.as_deref(),
            args.json.as_deref(),
        ),
        Err(e) => fail(e),
    }
}

fn run_runs(
    runs: &[Planned],
    opts: &MatrixOptions,
    junit: Option<&Path>,
    json: Option<&Path>,
) -> ExitCode {
    println!("{} run(s), results in {}", runs.len(), opts.out.display());
    let start = Instant::now();
    let total = runs.len();
    let (records, interrupted) = matrix::run_all(runs, opts, |i, record| {
        println!("{}", record.progress_line(i, total));
        if !record.passed() {
            print!("{}", record.details());
        }
    });
    let wall = start.elapsed();
    if interrupted || signals::interrupted() {
        eprintln!("flakyhba-harness: interrupted");
        return ExitCode::from(EXIT_INTERRUPTED as u8);
    }
    println!();
    print!("{}", summary(&records, wall));
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
}
