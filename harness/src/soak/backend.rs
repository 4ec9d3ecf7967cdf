//! The backend under the soak: one process at a time under a kill-on-drop guard, on the
//! same image, vhost-user socket and control socket across restarts, so that a killed
//! backend's successor serves the same disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::launch::listen::{wait_listening, ListenError};
use crate::launch::process::{tail, ChildGuard, ProcessError, Stdout};

use crate::launch::control::{faults_fired, Control, ControlError};

/// How long a backend may take to listen on both sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the backend's log an error carries.
const LOG_TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{0}\n--- backend log ---\n{1}")]
    Listen(ListenError, String),
    #[error("{0}\n--- backend log ---\n{1}")]
    Control(ControlError, String),
}

/// Where the backend runs and what it serves.
#[derive(Clone, Debug)]
pub struct BackendSetup {
    pub binary: PathBuf,
    pub image: PathBuf,
    pub socket: PathBuf,
    pub control: PathBuf,
    /// Log files go here, one per backend started (backend-N.log).
    pub logs: PathBuf,
    pub queues: u16,
    pub seed: u64,
}

/// The running backend and its control connection.
pub struct Backend {
    setup: BackendSetup,
    child: ChildGuard,
    pub control: Control,
    /// Backends started so far (this one included).
    pub started: u64,
    /// Faults fired by the backends before this one.
    fired_before: u64,
}

impl Backend {
    pub fn start(setup: BackendSetup) -> Result<Backend, BackendError> {
        let (child, control) = spawn(&setup, 1)?;
        Ok(Backend {
            setup,
            child,
            control,
            started: 1,
            fired_before: 0,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Faults fired by every backend so far (this one's counters read now).
    pub fn faults_fired(&mut self) -> Result<u64, ControlError> {
        let stats: Value = self.control.stats()?;
        Ok(self.fired_before + faults_fired(&stats))
    }

    /// kill -9, then a new backend on the same image and sockets, polled until it
    /// listens on both. Its counters are read first.
    pub fn kill_and_restart(&mut self) -> Result<(), BackendError> {
        self.fired_before = self
            .faults_fired()
            .map_err(|e| BackendError::Control(e, self.child.read_log()))?;
        self.child.kill()?;
        self.started += 1;
        let (child, control) = spawn(&self.setup, self.started)?;
        self.child = child;
        self.control = control;
        Ok(())
    }

    /// Whether the backend is still running (a crash is the soak's failure too).
    pub fn check_alive(&mut self) -> Result<Option<String>, ProcessError> {
        Ok(self.child.try_wait()?.map(|status| {
            format!(
                "the backend exited ({status})\n--- backend log ---\n{}",
                tail(&self.child.read_log(), LOG_TAIL_LINES)
            )
        }))
    }

    /// SIGTERM, so that it removes its sockets.
    pub fn stop(&mut self) -> Result<(), ProcessError> {
        self.child.terminate(Duration::from_secs(5)).map(drop)
    }
}

fn spawn(setup: &BackendSetup, n: u64) -> Result<(ChildGuard, Control), BackendError> {
    let mut cmd = Command::new(&setup.binary);
    cmd.arg("--socket-path")
        .arg(&setup.socket)
        .arg("--control-socket")
        .arg(&setup.control)
        .arg("--lun")
        .arg(&setup.image)
        .arg("--num-queues")
        .arg(setup.queues.to_string())
        .arg("--seed")
        .arg(setup.seed.wrapping_add(n).to_string());
    let log = log_path(&setup.logs, n);
    let mut child = ChildGuard::spawn("backend", cmd, &log, Stdout::Log)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    // Readiness is polled: the vhost-user socket listening (seen in /proc, never probed),
    // then a control connection.
    if let Err(e) = wait_listening(&mut child, &setup.socket, deadline) {
        return Err(BackendError::Listen(
            e,
            tail(&child.read_log(), LOG_TAIL_LINES),
        ));
    }
    match Control::connect(&setup.control, deadline) {
        Ok(control) => Ok((child, control)),
        Err(e) => Err(BackendError::Control(
            e,
            tail(&child.read_log(), LOG_TAIL_LINES),
        )),
    }
}

fn log_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("backend-{n}.log"))
}
