//! One load against one socket (`bench --socket`), and every run of the suite.

use std::path::Path;
use std::time::Duration;

use super::frontend::load::{run_load, LoadResult, LoadSpec, Pattern};
use super::frontend::scsi::ScsiAddress;
use super::frontend::{FrontendConfig, ScsiFrontend};
use super::BenchError;

/// One load against one socket (`bench --socket`).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub queues: u16,
    pub queue_depth: u16,
    pub block_bytes: u32,
    pub read_percent: u8,
    pub pattern: Pattern,
    pub duration: Duration,
    pub event_idx: bool,
    pub seed: u64,
    /// No completion for this long on a queue with requests in flight fails the load.
    pub stall: Duration,
}

impl LoadOptions {
    fn frontend_config(&self) -> FrontendConfig {
        FrontendConfig {
            request_queues: self.queues,
            queue_depth: self.queue_depth,
            max_transfer: self.block_bytes,
            event_idx: self.event_idx,
        }
    }

    fn spec(&self) -> LoadSpec {
        LoadSpec {
            lun: ScsiAddress::default(),
            block_bytes: self.block_bytes,
            read_percent: self.read_percent,
            pattern: self.pattern,
            duration: self.duration,
            seed: self.seed,
            stall: self.stall,
        }
    }
}

/// Connects to `socket`, runs the load and disconnects.
pub fn run_on_socket(socket: &Path, opts: &LoadOptions) -> Result<LoadResult, BenchError> {
    let mut fe = ScsiFrontend::connect(socket, opts.frontend_config())?;
    Ok(run_load(&mut fe, &opts.spec())?)
}
