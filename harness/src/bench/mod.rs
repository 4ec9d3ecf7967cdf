//! `flakyhba-harness bench`: drives a vhost-user-scsi backend with the host-side frontend
//! (no guest in the way) and reports IOPS, bandwidth and latency percentiles. `--suite`
//! runs the fixed comparison of `make bench`: our backend against a peer backend and
//! against the host's own read bandwidth of the same image file.

pub mod cases;
pub mod figures;
pub mod frontend;
pub mod report;
pub mod socket;
pub mod suite;

use std::path::PathBuf;
use std::time::Duration;

use crate::launch::listen::ListenError;
use crate::launch::process::ProcessError;
use crate::launch::rundir::RunDirError;

use self::figures::Figures;
use self::frontend::load::Pattern;
use self::frontend::FrontendError;
use self::report::{render_table, write_json};
use self::socket::{run_on_socket, LoadOptions};
use self::suite::{run_suite, SuiteOptions};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("could not read image {0}: {1}")]
    CouldNotReadImage(PathBuf, std::io::Error),
    #[error("could not write {0}: {1}")]
    CouldNotWriteJson(PathBuf, std::io::Error),
    #[error("{name} failed: {source}\n--- server log ---\n{log}")]
    Run {
        name: String,
        source: Box<BenchError>,
        log: String,
    },
    #[error("{0} completions failed (not GOOD) in {1}; the first: {2}")]
    IoErrors(u64, String, String),
    #[error("interrupted by a signal")]
    Interrupted,
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

/// Runs the subcommand; `default_backend` serves when neither --backend nor
/// $FLAKYHBA_BACKEND names one.
pub fn run_cli(args: BenchArgs, default_backend: PathBuf) -> Result<(), BenchError> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err(FrontendError::BadConfig(format!(
            "--duration {} is not a positive number of seconds",
            args.duration
        ))
        .into());
    }
    let duration = Duration::from_secs_f64(args.duration);
    if args.suite {
        let backend = args
            .backend
            .or_else(|| std::env::var_os("FLAKYHBA_BACKEND").map(PathBuf::from))
            .unwrap_or(default_backend);
        let opts = SuiteOptions {
            backend,
            peer: args.peer.filter(|p| !p.trim().is_empty()),
            image: args.image,
            image_bytes: args.image_size,
            repeats: args.repeats,
            duration,
            keep: args.keep,
        };
        let report = run_suite(&opts)?;
        print!("{}", render_table(&report));
        if let Some(path) = &args.json {
            write_json(&report, path)?;
        }
        return Ok(());
    }
    let Some(socket) = args.socket else {
        return Err(FrontendError::BadConfig("--socket or --suite is needed".into()).into());
    };
    let block_bytes = u32::try_from(args.block_size).map_err(|_| {
        FrontendError::BadConfig(format!("--block-size {} too large", args.block_size))
    })?;
    let opts = LoadOptions {
        queues: args.queues,
        queue_depth: args.queue_depth,
        block_bytes,
        read_percent: args.read_percent,
        pattern: match args.pattern {
            PatternArg::Random => Pattern::Random,
            PatternArg::Sequential => Pattern::Sequential,
        },
        duration,
        event_idx: !args.no_event_idx,
        seed: args.seed,
    };
    let result = run_on_socket(&socket, &opts)?;
    let fig = Figures::from_result(&result);
    println!(
        "{} queue(s) x QD{}, {} B {:?} {}% read, {:.1} s: {fig}",
        opts.queues,
        opts.queue_depth,
        opts.block_bytes,
        opts.pattern,
        opts.read_percent,
        result.elapsed.as_secs_f64()
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&fig).expect("figures serialize");
        std::fs::write(path, text + "\n")
            .map_err(|e| BenchError::CouldNotWriteJson(path.to_owned(), e))?;
    }
    if fig.errors > 0 {
        return Err(BenchError::IoErrors(
            fig.errors,
            "bench".into(),
            result.first_error.clone().unwrap_or_default(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
