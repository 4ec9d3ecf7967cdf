//! `flakyhba-harness soak` (`make soak`): data integrity under everything the backend and
//! its frontend can do to each other. One thread drives the harness's frontend on several
//! request queues with stamped writes and checked reads of random ranges ([`io`]), while
//! faults that leave data alone are switched on and off over the control socket
//! ([`faults`]), LUs and the device are reset, the frontend disconnects and reconnects, and
//! the backend is killed with SIGKILL and restarted on the same image ([`backend`]).
//!
//! Every completion, every checkpoint (after each restart and now and then: faults off,
//! SYNCHRONIZE CACHE, every block read through the backend) and the end (every block of
//! the image file, the backend stopped) is checked against the [`model`]: an acknowledged
//! write is there unless a later write to the block was issued; one never acknowledged left
//! the old or the new data, and nothing else. SIGKILL does not empty the host's page cache,
//! so the soak holds every acknowledged write to that, not only those a SYNCHRONIZE CACHE
//! followed; losing power is out of its reach.

pub mod backend;
pub mod faults;
pub mod io;
pub mod model;
pub mod stamp;

use std::fmt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bench::frontend::load::Rng;
use crate::bench::frontend::queue::DataDir;
use crate::bench::frontend::scsi;
use crate::bench::frontend::{FrontendConfig, FrontendError, ScsiFrontend};
use crate::launch::process::ProcessError;
use crate::launch::rundir::{RunDir, RunDirError};
use crate::launch::signals;

use self::backend::{Backend, BackendError, BackendSetup};
use self::faults::ActiveFaults;
use self::io::{Connection, Escalation, IoCounts, IoError, Workload};
use self::model::{Mismatch, Model};
use self::stamp::BLOCK;
use crate::launch::control::ControlError;

/// How long the I/O may take to drain before a checkpoint.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a (re)connection may take: the backend may still be tearing down the last
/// frontend, or starting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the loop sleeps waiting for a completion (interrupts may be dropped).
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error("LOST OR TORN DATA: {0}")]
    Lost(Box<Mismatch>),
    #[error(transparent)]
    Io(IoError),
    #[error("{0}")]
    BackendDied(String),
    #[error("{0} commands still in flight {QUIESCE_TIMEOUT:?} after the I/O stopped")]
    CouldNotQuiesce(usize),
    #[error("could not read the image {0}: {1}")]
    Image(PathBuf, std::io::Error),
    #[error("bad options: {0}")]
    BadOptions(String),
    #[error("interrupted by a signal")]
    Interrupted,
}

impl From<IoError> for SoakError {
    fn from(e: IoError) -> Self {
        match e {
            IoError::Mismatch(m) => SoakError::Lost(m),
            IoError::Frontend(FrontendError::Interrupted) => SoakError::Interrupted,
            IoError::Frontend(f) => SoakError::Frontend(f),
            e => SoakError::Io(e),
        }
    }
}

impl From<Mismatch> for SoakError {
    fn from(m: Mismatch) -> Self {
        SoakError::Lost(Box::new(m))
    }
}

/// How often each disturbance comes: a uniformly drawn interval between the two bounds.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub fault_switch: (Duration, Duration),
    pub lu_reset: (Duration, Duration),
    pub device_reset: (Duration, Duration),
    pub reconnect: (Duration, Duration),
    pub kill: (Duration, Duration),
    pub checkpoint: (Duration, Duration),
}

/// An interval that never ends within a soak: the disturbance is left out.
pub const NEVER: (Duration, Duration) =
    (Duration::from_secs(1 << 32), Duration::from_secs(1 << 32));

fn ms(a: u64, b: u64) -> (Duration, Duration) {
    (Duration::from_millis(a), Duration::from_millis(b))
}

impl Default for Pace {
    /// `make soak`'s: in 10 minutes some 2,000 fault switches, 250 LU and 110 device
    /// resets, 80 reconnects and 40 kills.
    fn default() -> Self {
        Pace {
            fault_switch: ms(100, 500),
            lu_reset: ms(1000, 4000),
            device_reset: ms(3000, 8000),
            reconnect: ms(4000, 10_000),
            kill: ms(10_000, 20_000),
            checkpoint: ms(20_000, 40_000),
        }
    }
}

/// What `soak` runs.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub duration: Duration,
    pub backend: PathBuf,
    pub queues: u16,
    pub queue_depth: u16,
    /// Size of the LUN (its image file); small, so that blocks are rewritten often.
    pub lun_bytes: u64,
    pub max_blocks: u32,
    pub read_percent: u64,
    pub seed: u64,
    pub keep: Option<PathBuf>,
    pub pace: Pace,
    /// A progress line this often.
    pub progress: Duration,
}

/// The soak's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SoakCounts {
    pub io: IoCounts,
    /// Faults the backends applied (their engines' `fired`, all kinds).
    pub faults_injected: u64,
    pub fault_switches: u64,
    pub device_resets: u64,
    pub reconnects: u64,
    pub kills: u64,
    pub checkpoints: u64,
    pub syncs: u64,
    /// Blocks checked against the model by checkpoints and the final look at the image
    /// (reads during the I/O count in `io.blocks_read`).
    pub blocks_verified: u64,
}

impl SoakCounts {
    /// LU resets, ABORT TASKs and device resets.
    pub fn resets(&self) -> u64 {
        self.io.lu_resets + self.io.aborts + self.device_resets
    }

    /// Every block checked against the model: by reads, checkpoints and the image.
    pub fn all_blocks_verified(&self) -> u64 {
        self.io.blocks_read + self.blocks_verified
    }
}

impl fmt::Display for SoakCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let io = &self.io;
        write!(
            f,
            "faults injected {} (switched {}), resets {} ({} LU, {} ABORT TASK, {} device; \
             {} TMFs refused, {} hung), reconnects {}, kills {}, writes {} ({} acknowledged), \
             reads {}, checkpoints {} ({} SYNCHRONIZE CACHE), blocks verified {}",
            self.faults_injected,
            self.fault_switches,
            self.resets(),
            io.lu_resets,
            io.aborts,
            self.device_resets,
            io.tmfs_refused,
            io.tmfs_hung,
            self.reconnects,
            self.kills,
            io.writes,
            io.acknowledged,
            io.reads,
            self.checkpoints,
            self.syncs,
            self.all_blocks_verified()
        )
    }
}

/// The disturbances, each with its own schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    FaultSwitch,
    LuReset,
    DeviceReset,
    Reconnect,
    Kill,
    Checkpoint,
}

const ACTIONS: [Action; 6] = [
    Action::FaultSwitch,
    Action::LuReset,
    Action::DeviceReset,
    Action::Reconnect,
    Action::Kill,
    Action::Checkpoint,
];

impl Pace {
    fn bounds(&self, a: Action) -> (Duration, Duration) {
        match a {
            Action::FaultSwitch => self.fault_switch,
            Action::LuReset => self.lu_reset,
            Action::DeviceReset => self.device_reset,
            Action::Reconnect => self.reconnect,
            Action::Kill => self.kill,
            Action::Checkpoint => self.checkpoint,
        }
    }

    fn next(&self, a: Action, rng: &mut Rng, now: Instant) -> Instant {
        let (lo, hi) = self.bounds(a);
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        now + Duration::from_millis(rng.between(lo, hi.max(lo)))
    }
}

/// A running soak: the run directory, the backend, the frontend connection and the model.
pub struct Soak {
    opts: SoakOptions,
    // Field order is drop order: the connection and the backend go before the directory.
    conn: Option<Connection>,
    backend: Backend,
    dir: RunDir,
    image: PathBuf,
    socket: PathBuf,
    model: Model,
    rng: Rng,
    generation: u64,
    faults: ActiveFaults,
    counts: SoakCounts,
    due: [Instant; ACTIONS.len()],
    /// The last disturbance and when, for a failure's message.
    last: Option<(&'static str, Instant)>,
}

/// A failed soak: the error, and what was going on.
#[derive(Debug, thiserror::Error)]
#[error("{error}\n({context})")]
pub struct SoakFailure {
    pub error: SoakError,
    pub context: String,
}

mod run;
pub use run::{run_soak, verify_image};
