//! vhost-user-flakyhba: serves one vhost-user frontend at a time on a socket, and keeps
//! serving after a frontend disconnects.

use std::os::unix::net::UnixListener;
use std::process::exit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use log::{debug, error, info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use flakyhba_backend::args::paths::{self, PathError, VHOST_USER_SOCKET};
use flakyhba_backend::args::{Args, Config, ConfigError, USAGE_EXIT_CODE};
use flakyhba_backend::control::{ControlError, ControlServer};
use flakyhba_backend::errors::error_chain;
use flakyhba_backend::faults::{Epoch, FaultEngine, Plan, Trace, TraceError};
use flakyhba_backend::listen::{self, Backoff, BoundSocket, Refuser, SocketError};
use flakyhba_backend::scsi::{Lun, ScsiError, Target};
use flakyhba_backend::vhu_scsi::{FaultContext, VhostUserScsiBackend, VhuScsiError};

/// With a control socket, faults and events can be added at any time; the tick timer
/// looks at the engine at least this often.
const CONTROL_POLL: Duration = Duration::from_millis(20);

/// How long a second frontend may wait while one is served before it is refused: the
/// served one may be just leaving, and then the newcomer is served after it.
const SECOND_FRONTEND_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("invalid arguments")]
    InvalidArgs(#[from] ConfigError),
    #[error("refused")]
    Refused(#[from] PathError),
    #[error("could not set up the SCSI target")]
    CouldNotCreateTarget(#[from] ScsiError),
    #[error("could not install the signal handler")]
    CouldNotHandleSignals(#[source] std::io::Error),
    #[error("could not listen")]
    CouldNotListen(#[source] SocketError),
    // vhost_user_backend::Error is not a std Error, so it goes into the message.
    #[error("could not create the vhost-user daemon: {0}")]
    CouldNotCreateDaemon(vhost_user_backend::Error),
    #[error("could not create the trace")]
    CouldNotCreateTrace(#[source] TraceError),
    #[error("could not start the control socket")]
    CouldNotStartControlSocket(#[source] ControlError),
    #[error("could not create the device")]
    CouldNotCreateBackend(#[source] VhuScsiError),
    #[error("could not register a worker timer")]
    CouldNotRegisterTimer(#[source] std::io::Error),
}

impl RunError {
    /// [`USAGE_EXIT_CODE`] when the backend refused what it was given, 1 when something
    /// failed.
    fn exit_code(&self) -> i32 {
        let refused = match self {
            RunError::InvalidArgs(_) => true,
            RunError::Refused(e) => e.is_refusal(),
            RunError::CouldNotCreateTarget(e) => e.is_refusal(),
            RunError::CouldNotListen(e) => e.is_refusal(),
            RunError::CouldNotCreateTrace(e) => e.is_refusal(),
            RunError::CouldNotStartControlSocket(ControlError::Socket(e)) => e.is_refusal(),
            _ => false,
        };
        if refused {
            USAGE_EXIT_CODE
        } else {
            1
        }
    }
}

fn main() {
    let args = Args::parse();
    let default_level = if args.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    let config = Config::try_from(args).unwrap_or_else(|e| fail(&RunError::from(e)));
    // A bad plan is the user's input error: one line naming file:line:col, exit 2.
    let plan = config.faults.plan().unwrap_or_else(|e| {
        eprintln!("{}", error_chain(&e));
        exit(USAGE_EXIT_CODE)
    });
    if let Err(e) = run(config, plan) {
        fail(&e);
    }
}

/// Logs the whole cause chain on one line and exits.
fn fail(e: &RunError) -> ! {
    error!("{}", error_chain(e));
    exit(e.exit_code())
}

/// Start-up, in an order that touches nothing before every check passed: the paths,
/// then the images (opened and locked, nothing written), then the sockets, the trace.
fn run(config: Config, plan: Plan) -> Result<(), RunError> {
    paths::check(&config)?;
    let luns = config
        .luns
        .iter()
        .map(Lun::open_spec)
        .collect::<Result<Vec<_>, _>>()?;
    let target = Arc::new(Target::new(luns)?);
    for (_, lun) in target.luns() {
        info!(
            "LUN {}: {} blocks of {} bytes{}",
            lun.name(),
            lun.blocks(),
            lun.block_size(),
            if lun.read_only() { ", read-only" } else { "" }
        );
    }

    let epoch = Epoch::start();
    let active = config.faults.needs_engine(&plan);
    if !plan.is_empty() {
        info!(
            "fault plan: {} faults, seed {}",
            plan.faults.len(),
            plan.seed
        );
    }
    let engine = Arc::new(Mutex::new(FaultEngine::new(plan)));

    // Before any thread exists, so that every thread inherits the blocked mask.
    let sockets = Arc::new(Mutex::new(Vec::new()));
    exit_on_termination_signals(sockets.clone(), engine.clone())?;
    let (listener, bound) = listen::bind(&config.socket_path, VHOST_USER_SOCKET, false)
        .map_err(RunError::CouldNotListen)?;
    // Removed when run returns; on a signal, by the signal thread.
    let _socket = RemoveOnDrop(bound.clone());
    lock(&sockets).push(bound);
    // Kept for the whole run: dropping it closes the socket.
    let _control = match &config.faults.control_socket {
        Some(path) => {
            let server =
                ControlServer::start_with_target(path, engine.clone(), Some(target.clone()))
                    .map_err(RunError::CouldNotStartControlSocket)?;
            info!("control socket on {}", path.display());
            lock(&sockets).push(server.socket().clone());
            Some(server)
        }
        None => None,
    };
    // The trace last: it empties an earlier trace, which a failure to bind a socket
    // must leave as it was.
    if let Some(path) = &config.faults.trace {
        let trace = Trace::create(path).map_err(RunError::CouldNotCreateTrace)?;
        lock(&engine).set_trace(Some(trace));
    }
    let faults = FaultContext {
        engine: engine.clone(),
        epoch,
        active,
        poll: config.faults.control_socket.as_ref().map(|_| CONTROL_POLL),
    };
    // The refuser's handle on the same socket (see `serve`).
    let spare = listener.try_clone().map_err(|source| {
        RunError::CouldNotListen(SocketError::CouldNotBind {
            what: VHOST_USER_SOCKET,
            path: config.socket_path.display().to_string(),
            source,
        })
    })?;
    info!("listening on {}", config.socket_path.display());
    serve(
        Listener::from(listener),
        &spare,
        &target,
        config.num_queues,
        &faults,
    )
}

/// Removes the socket it holds, while it is still ours, when dropped.
struct RemoveOnDrop(BoundSocket);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.0.remove();
    }
}

/// Serves one frontend at a time for ever, on one listener: a new frontend can connect as
/// soon as the previous one is gone, and one that connects meanwhile is refused.
fn serve(
    mut listener: Listener,
    spare: &UnixListener,
    target: &Arc<Target>,
    num_queues: u16,
    faults: &FaultContext,
) -> Result<(), RunError> {
    let mut backoff = Backoff::new(VHOST_USER_SOCKET);
    let mut served = false;
    loop {
        // A device that cannot be made at start-up is an error; later (no file
        // descriptor left, say) it is retried, and the serving loop goes on.
        let (backend, mut daemon) = match new_device(target, num_queues, faults) {
            Ok(device) => device,
            Err(e) if !served => return Err(e),
            Err(e) => {
                std::thread::sleep(backoff.failed(&format_args!("{e}")));
                continue;
            }
        };
        // A new frontend is a power-on from the guest's point of view. Raised before the
        // accept: `start` hands the connection to a thread of its own at once, and a quick
        // frontend's first command could otherwise be served before the unit attention
        // exists and a later one hit it.
        target.power_on();
        debug!("waiting for a frontend");
        // A failed accept (no file descriptor left, say) never ends the serving loop.
        while let Err(e) = daemon.start(&mut listener) {
            std::thread::sleep(backoff.failed(&format_args!("accept failed: {e}")));
        }
        backoff.succeeded();
        served = true;
        info!("frontend connected");
        let refuser = spare
            .try_clone()
            .and_then(|l| Refuser::start(l, VHOST_USER_SOCKET, SECOND_FRONTEND_GRACE))
            .map_err(|e| warn!("{VHOST_USER_SOCKET}: a second frontend will wait: {e}"))
            .ok();
        match daemon.wait() {
            // A frontend that goes away is the normal end of a connection.
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("frontend disconnected"),
            Err(e) => warn!("frontend connection ended: {e}"),
        }
        drop(refuser);
        // Dropping the daemon stops and joins its vring workers.
        drop(daemon);
        // The frontend is gone: what the device held is dropped as on a device reset.
        backend.on_disconnect();
        if let Err(e) = lock(&faults.engine).flush_trace() {
            warn!("{}", error_chain(&e));
        }
    }
}

/// A fresh device and daemon for the next frontend: no state leaks between frontends.
fn new_device(
    target: &Arc<Target>,
    num_queues: u16,
    faults: &FaultContext,
) -> Result<
    (
        Arc<VhostUserScsiBackend>,
        VhostUserDaemon<Arc<VhostUserScsiBackend>>,
    ),
    RunError,
> {
    let backend = Arc::new(
        VhostUserScsiBackend::with_faults(target.clone(), num_queues, faults.clone())
            .map_err(RunError::CouldNotCreateBackend)?,
    );
    let daemon = VhostUserDaemon::new(
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
    Ok((backend, daemon))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Blocks SIGINT and SIGTERM in every thread and waits for them on a dedicated one, which
/// flushes the trace, removes the sockets this process bound (while still its own) and
/// exits 0.
fn exit_on_termination_signals(
    sockets: Arc<Mutex<Vec<BoundSocket>>>,
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
        .spawn(move || wait_for_termination(set, &sockets, &engine))
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
    sockets: &Mutex<Vec<BoundSocket>>,
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
        warn!("{}", error_chain(&e));
    }
    for socket in lock(sockets).iter() {
        socket.remove();
    }
    exit(0);
}
