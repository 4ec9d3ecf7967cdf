//! Refusing connections while the one allowed is being served: vhost-user serves one
//! frontend at a time, and a second frontend left waiting in the listen queue would hang
//! (a second QEMU would never start). It is closed instead, with a log line, so that it
//! fails at once.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::thread::JoinHandle;
use std::time::Duration;

use super::backoff::Backoff;
use super::socket::{Wait, Waker};

/// A thread that closes each connection still waiting after a grace period, until it is
/// stopped (dropped). The grace lets the frontend being served go first when it is just
/// leaving: a frontend that connects as the previous one disconnects is served.
#[derive(Debug)]
pub struct Refuser {
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

impl Refuser {
    /// Starts refusing on `listener` (a clone of the served listener; it stays blocking,
    /// as its flags are shared with the original). `what` names it in the log.
    pub fn start(
        listener: UnixListener,
        what: &'static str,
        grace: Duration,
    ) -> io::Result<Refuser> {
        let waker = Waker::new()?;
        let thread = {
            let waker = waker.clone();
            std::thread::Builder::new()
                .name("refuse-frontends".into())
                .spawn(move || refuse(&listener, &waker, what, grace))?
        };
        Ok(Refuser {
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn refuse(listener: &UnixListener, waker: &Waker, what: &'static str, grace: Duration) {
    let mut backoff = Backoff::new(what);
    loop {
        match waker.wait(Some(listener.as_raw_fd()), None) {
            Ok(Wait::Readable) => {}
            Ok(Wait::TimedOut) => continue,
            Ok(Wait::Woken) => return,
            Err(e) => {
                log::warn!("{what}: cannot wait for connections: {e}");
                return;
            }
        }
        // Someone is waiting. If the frontend being served is leaving, we are stopped
        // within the grace and the newcomer is the next one served.
        match waker.wait(None, Some(grace)) {
            Ok(Wait::TimedOut) => {}
            _ => return,
        }
        match listener.accept() {
            Ok((stream, _)) => {
                backoff.succeeded();
                log::warn!(
                    "{what}: refused a second frontend: one is already connected, and one is served at a time"
                );
                drop(stream);
            }
            Err(e) => {
                let delay = backoff.failed(&format_args!("accept failed: {e}"));
                if waker
                    .wait(None, Some(delay))
                    .map_or(true, |w| w == Wait::Woken)
                {
                    return;
                }
            }
        }
    }
}
