//! `flakyhba-harness explore`: which misbehaviour of the HBA breaks the miniport, found
//! automatically. Random fault plans from the whole plan grammar and random guest
//! arguments (`generate`), each run through the matrix's runner and judged by the
//! generic oracle alone (`oracle`: it knows what a plan makes unrecoverable); a failing
//! case is shrunk to a small plan that still fails the same way (`shrink`, `minimize`)
//! and written as a scenario file that replays it (`found`). `campaign` runs the cases
//! of a seed and shard `jobs` at a time and reports.
//!
//! Imports run down only: `campaign` uses `minimize`, `run`, `generate`; `minimize` uses
//! `shrink`, `found`, `run`; all use `case` and `oracle`; this room uses `scenario` (the
//! runner, metrics, scenario files) and `launch`.

pub mod campaign;
pub mod case;
pub mod found;
pub mod generate;
pub mod minimize;
pub mod oracle;
pub mod run;
pub mod shrink;

use std::path::PathBuf;

pub use campaign::{render_summary, run_campaign, ExploreOptions, Summary};

#[derive(Debug, thiserror::Error)]
pub enum ExploreError {
    #[error("--out {0}: {1}")]
    Out(PathBuf, std::io::Error),
    #[error("could not write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("--guest: {0}")]
    BadGuest(String),
    #[error("a run failed to start: {0}")]
    Run(String),
    #[error("interrupted by a signal")]
    Interrupted,
}

/// Checks that `out` can hold the campaign's files: creates it and `out/runs`.
pub fn prepare_out(out: &std::path::Path) -> Result<(), ExploreError> {
    let runs = out.join("runs");
    std::fs::create_dir_all(&runs).map_err(|e| ExploreError::Out(out.to_owned(), e))?;
    let probe = out.join(".explore-probe");
    std::fs::write(&probe, b"").map_err(|e| ExploreError::Out(out.to_owned(), e))?;
    std::fs::remove_file(&probe).map_err(|e| ExploreError::Out(out.to_owned(), e))
}
