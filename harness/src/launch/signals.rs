//! SIGINT/SIGTERM/SIGHUP set a flag that every wait loop checks, so the harness unwinds
//! through its guards (children killed, run directory removed) instead of dying mid-run.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a run cut short by a signal (the shell's 128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("could not install the handler for signal {0}: {1}")]
    CouldNotInstallHandler(i32, std::io::Error),
}

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the flag-setting handler for SIGINT, SIGTERM and SIGHUP.
pub fn install_handlers() -> Result<(), SignalError> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid starting value (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        // SA_RESTART: blocking reads in reader threads keep going; the flag is polled.
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised and the handler only does an atomic
        // store; a null old-action pointer is allowed.
        let rc = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(SignalError::CouldNotInstallHandler(
                signal,
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// True once one of the handled signals arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
