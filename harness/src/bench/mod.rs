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

use std::path::{Path, PathBuf};

use crate::launch::listen::ListenError;
use crate::launch::process::ProcessError;
use crate::launch::rundir::RunDirError;

use self::figures::Figures;
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

/// `bench --suite`: runs the suite and prints its table (and writes the JSON file).
pub fn bench_suite(opts: &SuiteOptions, json: Option<&Path>) -> Result<(), BenchError> {
    let report = run_suite(opts)?;
    print!("{}", render_table(&report));
    if let Some(path) = json {
        write_json(&report, path)?;
    }
    Ok(())
}

/// `bench --socket`: one load against the backend at `socket`, its figures on one line
/// (and in the JSON file). Failed completions fail it.
pub fn bench_socket(
    socket: &Path,
    opts: &LoadOptions,
    json: Option<&Path>,
) -> Result<(), BenchError> {
    let result = run_on_socket(socket, opts)?;
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
    if let Some(path) = json {
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
