use std::fmt::Display;
use std::process::ExitCode;

use clap::Parser;
use flakyhba_harness::bench::{self, BenchError};
use flakyhba_harness::cli::{
    BenchArgs, Cli, Cmd, DriversArgs, ExploreArgs, LinuxBenchArgs, MatrixArgs, RunArgs, SoakArgs,
    SMOKE,
};
use flakyhba_harness::drivers::{card, report as card_report};
use flakyhba_harness::explore::{render_summary, run_campaign, ExploreError};
use flakyhba_harness::launch::boot::RunFailure;
use flakyhba_harness::launch::signals::{self, EXIT_INTERRUPTED};
use flakyhba_harness::linux::{self, run_linux};
use flakyhba_harness::scenario::file;
use flakyhba_harness::scenario::matrix::console::run_and_report;
use flakyhba_harness::scenario::matrix::plan::{plan, select};
use flakyhba_harness::scenario::smoke::run_smoke;
use flakyhba_harness::soak::{run_soak, SoakError};

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
        Cmd::Linux(args) => {
            let opts = args.options();
            let hotplug = if opts.hotplug { " hotplug" } else { "" };
            let what = format!("linux queues={}{hotplug}", opts.queues);
            report(run_linux(&opts), &what)
        }
        Cmd::BenchLinux(args) => bench_linux(args),
        Cmd::Drivers(args) => drivers(args),
        Cmd::Soak(args) => soak(args),
        Cmd::Explore(args) => explore(args),
    }
}

/// Exit status of `explore` on bad input.
const EXIT_BAD_INPUT: u8 = 2;

fn explore(args: ExploreArgs) -> ExitCode {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let opts = match args.options(command) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("flakyhba-harness explore: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    match run_campaign(&opts) {
        Ok(summary) => {
            print!("{}", render_summary(&opts, &summary));
            if summary.interrupted {
                interrupted()
            } else if summary.seen.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(ExploreError::Interrupted) => interrupted(),
        Err(e) => fail(e),
    }
}

fn soak(args: SoakArgs) -> ExitCode {
    let opts = args.options();
    println!(
        "soak: {:.1} min, {} queues x QD{}, {} MiB LUN, seed {}",
        args.minutes,
        opts.queues,
        opts.queue_depth,
        opts.lun_bytes >> 20,
        opts.seed
    );
    let mut progress = |line: &str| println!("{line}");
    match run_soak(opts, &mut progress) {
        Ok(counts) => {
            println!("soak passed: {counts}, 0 lost or torn");
            ExitCode::SUCCESS
        }
        Err(f) if signals::interrupted() || matches!(f.error, SoakError::Interrupted) => {
            interrupted()
        }
        Err(f) => fail(format_args!("soak FAILED: {f}")),
    }
}

fn interrupted() -> ExitCode {
    eprintln!("flakyhba-harness: interrupted");
    ExitCode::from(EXIT_INTERRUPTED as u8)
}

fn fail(e: impl Display) -> ExitCode {
    eprintln!("flakyhba-harness: {e}");
    ExitCode::FAILURE
}

/// A run's report on stdout, or its failure on stderr after `what`.
fn report(outcome: Result<impl Display, Box<RunFailure>>, what: &str) -> ExitCode {
    match outcome {
        Ok(report) if !signals::interrupted() => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(_) => interrupted(),
        Err(failure) if failure.interrupted() || signals::interrupted() => interrupted(),
        Err(failure) => {
            eprint!("{what}: {failure}");
            ExitCode::FAILURE
        }
    }
}

fn smoke(args: RunArgs) -> ExitCode {
    let opts = args.smoke_options();
    let irq = if opts.irq { "on" } else { "off" };
    report(run_smoke(&opts), &format!("smoke irq={irq}"))
}

/// `run NAME|FILE`: the scenario's runs (and its negative control).
fn run_scenario(args: RunArgs) -> ExitCode {
    let name_or_file = args.scenario.clone();
    let (opts, dir) = match args.scenario_run().options() {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    match file::find(&dir, &name_or_file) {
        Ok(s) => run_and_report(&plan(&[s], 1), &opts, None, None),
        Err(e) => fail(e),
    }
}

fn matrix(args: MatrixArgs) -> ExitCode {
    let (mut opts, dir) = match args.scenario_run().options() {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    opts.repeat = args.repeat;
    opts.jobs = args.jobs as usize;
    let selected = file::load_dir(&dir)
        .map_err(|e| e.to_string())
        .and_then(|all| select(all, &args.only, &args.skip).map_err(|e| e.to_string()));
    match selected {
        Ok(selected) => run_and_report(
            &plan(&selected, opts.repeat),
            &opts,
            args.junit.as_deref(),
            args.json.as_deref(),
        ),
        Err(e) => fail(e),
    }
}

fn bench_linux(args: LinuxBenchArgs) -> ExitCode {
    let opts = args.options();
    match linux::bench::run_linux_bench(&opts) {
        Ok(_) if signals::interrupted() => interrupted(),
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
            // QEMU's device failing is a finding about it; ours failing is a defect.
            let ours = report.failures_of(linux::bench::Device::Ours);
            if ours > 0 {
                eprintln!("bench-linux: {ours} boot(s) on our backend failed");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(failure) if failure.interrupted() || signals::interrupted() => interrupted(),
        Err(failure) => {
            eprint!("bench-linux: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// The driver card: a line per cell as it ends, the table, the reports.
fn drivers(args: DriversArgs) -> ExitCode {
    let opts = args.options();
    println!(
        "accel: tcg for every driver (OVMF and a stock Linux kernel fail under this \
         machine's nested KVM); cells in {}",
        opts.out.display()
    );
    let card = match card::run_card(&opts, |done, total, cell| {
        println!("{}", card_report::progress_line(done, total, cell))
    }) {
        Ok(card) => card,
        Err(e) => return fail(e),
    };
    print!("{}", card_report::terminal(&card));
    if let Err(e) = card_report::write(&card, &opts.out) {
        return fail(format!(
            "could not write the reports in {}: {e}",
            opts.out.display()
        ));
    }
    println!(
        "reports: {}",
        card_report::markdown_path(&opts.out).display()
    );
    if card.interrupted || signals::interrupted() {
        interrupted()
    } else if card.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    let result = run_bench(&args);
    // A signal ends a load wherever it is waiting (BenchError::Interrupted, or the
    // frontend's), and the run counts as interrupted, not failed.
    if signals::interrupted() {
        return interrupted();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flakyhba-harness bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: &BenchArgs) -> Result<(), BenchError> {
    let duration = args.duration()?;
    let json = args.json.as_deref();
    if args.suite {
        return bench::bench_suite(&args.suite_options(duration), json);
    }
    let Some(socket) = &args.socket else {
        return Err(bench::frontend::FrontendError::BadConfig(
            "--socket or --suite is needed".into(),
        )
        .into());
    };
    bench::bench_socket(socket, &args.load_options(duration)?, json)
}
