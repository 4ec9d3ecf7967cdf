//! Backing off after accept errors: a listener whose accept fails (no file descriptors
//! left, say) keeps its pending connection readable, and retrying at once would spin and
//! log without end.

use std::fmt::Display;
use std::time::Duration;

/// The first wait after a failure; each failure in a row doubles it, up to [`MAX_DELAY`].
pub const FIRST_DELAY: Duration = Duration::from_millis(10);
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Exponential back-off for one listener, with one log line per back-off.
#[derive(Debug)]
pub struct Backoff {
    what: &'static str,
    next: Duration,
    failures: u64,
}

impl Backoff {
    /// `what` names the listener in the log.
    pub fn new(what: &'static str) -> Backoff {
        Backoff {
            what,
            next: FIRST_DELAY,
            failures: 0,
        }
    }

    /// After a failure (`what` went wrong): how long to wait before trying again, logged
    /// once here.
    pub fn failed(&mut self, what: &dyn Display) -> Duration {
        let delay = self.next;
        self.failures += 1;
        self.next = (delay * 2).min(MAX_DELAY);
        log::warn!(
            "{}: {what}; retrying in {} ms",
            self.what,
            delay.as_millis()
        );
        delay
    }

    /// After a successful accept: the next failure waits [`FIRST_DELAY`] again.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            log::info!(
                "{}: accepting again after {} failures",
                self.what,
                self.failures
            );
        }
        self.failures = 0;
        self.next = FIRST_DELAY;
    }
}
