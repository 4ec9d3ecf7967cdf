//! vhost-user-flakyhba: serves one vhost-user frontend at a time on a socket, and keeps
//! serving after a frontend disconnects.

use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::Arc;

use clap::Parser;
use log::{error, info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use flakyhba_backend::args::{Args, Config, ConfigError};
use flakyhba_backend::scsi::{Lun, ScsiError, Target};
use flakyhba_backend::vhu_scsi::VhostUserScsiBackend;

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("invalid arguments")]
    InvalidArgs(#[from] ConfigError),
    #[error("could not set up the SCSI target")]
    CouldNotCreateTarget(#[from] ScsiError),
    #[error("could not install the signal handler")]
    CouldNotHandleSignals(#[source] std::io::Error),
    #[error("could not listen on {0}")]
    CouldNotListen(PathBuf, #[source] vhost::vhost_user::Error),
    // vhost_user_backend::Error is not a std Error, so it goes into the message.
    #[error("could not create the vhost-user daemon: {0}")]
    CouldNotCreateDaemon(vhost_user_backend::Error),
    #[error("could not accept a frontend: {0}")]
    CouldNotAcceptFrontend(vhost_user_backend::Error),
}

fn main() {
    let args = Args::parse();
    let default_level = if args.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    let result = Config::try_from(args).map_err(RunError::from).and_then(run);
    if let Err(e) = result {
        // Log the whole cause chain on one line.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        error!("{msg}");
        exit(1);
    }
}

fn run(config: Config) -> Result<(), RunError> {
    let luns = config
        .luns
        .iter()
        .map(|l| Lun::open(&l.path, l.read_only))
        .collect::<Result<Vec<_>, _>>()?;
    for (n, (lun, cfg)) in luns.iter().zip(&config.luns).enumerate() {
        info!(
            "LUN {n}: {} ({} blocks{})",
            cfg.path.display(),
            lun.blocks(),
            if lun.read_only() { ", read-only" } else { "" }
        );
    }
    let target = Arc::new(Target::new(luns)?);

    // Before any thread exists, so that every thread inherits the blocked mask.
    exit_on_termination_signals(config.socket_path.clone())?;

    // One listener for the whole run: a new frontend can connect as soon as the previous
    // one is gone. `true` removes a stale socket file.
    let mut listener = Listener::new(&config.socket_path, true)
        .map_err(|e| RunError::CouldNotListen(config.socket_path.clone(), e))?;
    info!("listening on {}", config.socket_path.display());
    loop {
        // A fresh backend and daemon per connection: no state leaks between frontends.
        let backend = Arc::new(VhostUserScsiBackend::new(target.clone(), config.num_queues));
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-flakyhba".to_string(),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(RunError::CouldNotCreateDaemon)?;
        daemon
            .start(&mut listener)
            .map_err(RunError::CouldNotAcceptFrontend)?;
        info!("frontend connected");
        match daemon.wait() {
            // A frontend that goes away is the normal end of a connection.
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("frontend disconnected"),
            Err(e) => warn!("frontend connection ended: {e}"),
        }
        // Dropping the daemon stops and joins its vring workers.
        drop(daemon);
    }
}

/// Blocks SIGINT and SIGTERM in every thread and waits for them on a dedicated one, which
/// removes the socket and exits 0.
fn exit_on_termination_signals(socket: PathBuf) -> Result<(), RunError> {
    let set = termination_signals();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(RunError::CouldNotHandleSignals(
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_termination(set, &socket))
        .map_err(RunError::CouldNotHandleSignals)?;
    Ok(())
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` points to a valid sigset_t; both signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

fn wait_for_termination(set: libc::sigset_t, socket: &Path) {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset_t and `sig` a valid out pointer; the signals
    // are blocked in all threads, so sigwait is the one place that receives them.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        error!("sigwait failed: {}", std::io::Error::from_raw_os_error(rc));
        return;
    }
    info!("signal {sig} received, exiting");
    let _ = std::fs::remove_file(socket);
    exit(0);
}
