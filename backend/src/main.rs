//! vhost-user-flakyhba: serves one vhost-user frontend at a time on a socket, and keeps
//! serving after a frontend disconnects.

use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use log::{error, info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use flakyhba_backend::args::{Args, Config, ConfigError};
use flakyhba_backend::control::{ControlError, ControlServer};
use flakyhba_backend::faults::{Epoch, FaultEngine, Plan, Trace, TraceError, PLAN_ERROR_EXIT_CODE};
use flakyhba_backend::scsi::{Lun, ScsiError, Target};
use flakyhba_backend::vhu_scsi::{FaultContext, VhostUserScsiBackend, VhuScsiError};

/// With a control socket, faults and events can be added at any time; the tick timer
/// looks at the engine at least this often.
const CONTROL_POLL: Duration = Duration::from_millis(20);

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
    #[error("could not create the trace")]
    CouldNotCreateTrace(#[source] TraceError),
    #[error("could not start the control socket")]
    CouldNotStartControlSocket(#[source] ControlError),
    #[error("could not create the device")]
    CouldNotCreateBackend(#[source] VhuScsiError),
    #[error("could not register a worker timer")]
    CouldNotRegisterTimer(#[source] std::io::Error),
}

fn main() {
    let args = Args::parse();
    let default_level = if args.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    let config = Config::try_from(args).map_err(RunError::from);
    let result = config.and_then(|config| {
        // A bad plan is the user's input error: one line naming file:line:col, exit 2.
        let plan = config.faults.plan().unwrap_or_else(|e| {
            eprintln!("{e}");
            exit(PLAN_ERROR_EXIT_CODE)
        });
        run(config, plan)
    });
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

fn run(config: Config, plan: Plan) -> Result<(), RunError> {
    let luns = config
        .luns
        .iter()
        .map(Lun::open_spec)
        .collect::<Result<Vec<_>, _>>()?;
    for lun in &luns {
        info!(
            "LUN {}: {} blocks of {} bytes{}",
            lun.name(),
            lun.blocks(),
            lun.block_size(),
            if lun.read_only() { ", read-only" } else { "" }
        );
    }
    let target = Arc::new(Target::new(luns)?);

    let epoch = Epoch::start();
    let active = config.faults.needs_engine(&plan);
    if !plan.is_empty() {
        info!(
            "fault plan: {} faults, seed {}",
            plan.faults.len(),
            plan.seed
        );
    }
    let mut engine = FaultEngine::new(plan);
    if let Some(path) = &config.faults.trace {
        engine.set_trace(Some(
            Trace::create(path).map_err(RunError::CouldNotCreateTrace)?,
        ));
    }
    let engine = Arc::new(Mutex::new(engine));

    // Before any thread exists, so that every thread inherits the blocked mask.
    exit_on_termination_signals(
        config.socket_path.clone(),
        config.faults.control_socket.clone(),
        engine.clone(),
    )?;
    // Kept for the whole run: dropping it closes the socket.
    let _control = match &config.faults.control_socket {
        Some(path) => {
            let server =
                ControlServer::start_with_target(path, engine.clone(), Some(target.clone()))
                    .map_err(RunError::CouldNotStartControlSocket)?;
            info!("control socket on {}", path.display());
            Some(server)
        }
        None => None,
    };
    let faults = FaultContext {
        engine: engine.clone(),
        epoch,
        active,
        poll: config.faults.control_socket.as_ref().map(|_| CONTROL_POLL),
    };

    // One listener for the whole run: a new frontend can connect as soon as the previous
    // one is gone. `true` removes a stale socket file.
    let mut listener = Listener::new(&config.socket_path, true)
        .map_err(|e| RunError::CouldNotListen(config.socket_path.clone(), e))?;
    info!("listening on {}", config.socket_path.display());
    loop {
        // A fresh backend and daemon per connection: no state leaks between frontends.
        let backend = Arc::new(
            VhostUserScsiBackend::with_faults(target.clone(), config.num_queues, faults.clone())
                .map_err(RunError::CouldNotCreateBackend)?,
        );
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-flakyhba".to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(RunError::CouldNotCreateDaemon)?;
        // Each worker's timer is one more fd in its epoll set (ids above the queues).
        for (thread, handler) in daemon.get_epoll_handlers().iter().enumerate() {
            if let Some(fd) = backend.timer_fd(thread) {
                handler
                    .register_listener(fd, EventSet::IN, u64::from(backend.timer_event()))
                    .map_err(RunError::CouldNotRegisterTimer)?;
            }
        }
        // A new frontend is a power-on from the guest's point of view. Raised before the
        // accept: `start` hands the connection to a thread of its own at once, and a quick
        // frontend's first command could otherwise be served before the unit attention
        // exists and a later one hit it.
        target.power_on();
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
        // The frontend is gone: what the device held is dropped as on a device reset.
        backend.on_disconnect();
        if let Err(e) = lock(&engine).flush_trace() {
            warn!("{e}");
        }
    }
}

fn lock(engine: &Mutex<FaultEngine>) -> std::sync::MutexGuard<'_, FaultEngine> {
    engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Blocks SIGINT and SIGTERM in every thread and waits for them on a dedicated one, which
/// flushes the trace, removes the sockets and exits 0.
fn exit_on_termination_signals(
    socket: PathBuf,
    control: Option<PathBuf>,
    engine: Arc<Mutex<FaultEngine>>,
) -> Result<(), RunError> {
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
        .spawn(move || wait_for_termination(set, &socket, control.as_deref(), &engine))
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

fn wait_for_termination(
    set: libc::sigset_t,
    socket: &Path,
    control: Option<&Path>,
    engine: &Mutex<FaultEngine>,
) {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset_t and `sig` a valid out pointer; the signals
    // are blocked in all threads, so sigwait is the one place that receives them.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        error!("sigwait failed: {}", std::io::Error::from_raw_os_error(rc));
        return;
    }
    info!("signal {sig} received, exiting");
    // exit() runs no destructors: flush the trace's buffer here.
    if let Err(e) = lock(engine).flush_trace() {
        warn!("{e}");
    }
    let _ = std::fs::remove_file(socket);
    if let Some(c) = control {
        let _ = std::fs::remove_file(c);
    }
    exit(0);
}
