//! The timer service (T1 to T4) and the checker's independent model of it.

use super::checker::{Checker, Routine, Rule};
#[cfg(test)]
use super::Flaw;

/// The timer service: one RequestTimerCall outstanding per adapter, counted in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerService {
    tick_us: u32,
    now_ticks: u64,
    due_tick: Option<u64>,
    /// A deliberately broken port, for the checker's own tests.
    #[cfg(test)]
    pub(crate) flaw: Option<Flaw>,
}

impl TimerService {
    pub fn new(tick_us: u32) -> Self {
        TimerService {
            tick_us: tick_us.max(1),
            now_ticks: 0,
            due_tick: None,
            #[cfg(test)]
            flaw: None,
        }
    }

    #[cfg(test)]
    fn flawed(&self, f: Flaw) -> bool {
        self.flaw == Some(f)
    }

    /// RequestTimerCall(interval_us). A request that already expired and was dispatched
    /// is not pending any more, so 0 does not stop it (T3).
    pub fn request(&mut self, interval_us: u32) {
        if interval_us == 0 {
            #[cfg(test)]
            if self.flawed(Flaw::IgnoreTimerCancel) {
                return;
            }
            // T3: 0 cancels the pending request.
            self.due_tick = None;
            return;
        }
        #[cfg(test)]
        if self.flawed(Flaw::KeepFirstTimerRequest) && self.due_tick.is_some() {
            return;
        }
        // T2: rounded up to the tick; at least one tick from now.
        #[cfg(test)]
        let ticks = if self.flawed(Flaw::TruncateTimerInterval) {
            u64::from(interval_us / self.tick_us)
        } else {
            u64::from(interval_us.div_ceil(self.tick_us)).max(1)
        };
        #[cfg(not(test))]
        let ticks = u64::from(interval_us.div_ceil(self.tick_us)).max(1);
        // T1: a new request replaces the pending one.
        self.due_tick = Some(self.now_ticks + ticks);
    }

    /// Advances by `ticks`; true when the pending request expired. It is consumed, so
    /// HwTimer runs once per request however many ticks passed (T4).
    pub fn advance(&mut self, ticks: u32) -> bool {
        self.now_ticks += u64::from(ticks);
        match self.due_tick {
            Some(due) if due <= self.now_ticks => {
                #[cfg(test)]
                if self.flawed(Flaw::TimerNotConsumed) {
                    return true;
                }
                self.due_tick = None;
                true
            }
            _ => false,
        }
    }

    pub fn is_pending(&self) -> bool {
        self.due_tick.is_some()
    }

    /// Ticks until the pending request expires.
    pub fn remaining_ticks(&self) -> Option<u64> {
        self.due_tick.map(|d| d.saturating_sub(self.now_ticks))
    }

    pub fn tick_us(&self) -> u32 {
        self.tick_us
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LastOp {
    None,
    Cancelled,
    Fired,
}

/// The checker's own model of T1 to T4, fed with the same requests and ticks as the
/// port's [`TimerService`] but written independently of it: every HwTimer call the port
/// makes must be one this model expects, and every expiry must lead to one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShadowTimer {
    tick_us: u64,
    now_tick: u64,
    due: Option<u64>,
    /// Due tick of the request the latest one replaced.
    replaced: Option<u64>,
    last: LastOp,
    /// Expired in this dispatch; HwTimer is owed even if cancelled now (T3).
    owed: bool,
    cancelled_after_dispatch: bool,
}

impl ShadowTimer {
    pub(crate) fn new(tick_us: u32) -> Self {
        ShadowTimer {
            tick_us: u64::from(tick_us.max(1)),
            now_tick: 0,
            due: None,
            replaced: None,
            last: LastOp::None,
            owed: false,
            cancelled_after_dispatch: false,
        }
    }

    pub(crate) fn request(&mut self, interval_us: u32) {
        if interval_us == 0 {
            if self.due.take().is_some() {
                self.last = LastOp::Cancelled;
            }
            if self.owed {
                self.cancelled_after_dispatch = true;
            }
            self.replaced = None;
            return;
        }
        let ticks = u64::from(interval_us).div_ceil(self.tick_us);
        if let Some(d) = self.due {
            self.replaced = Some(d);
        }
        self.due = Some(self.now_tick + ticks.max(1));
    }

    /// Ticks passed at the start of a dispatch.
    pub(crate) fn ticks(&mut self, n: u32) {
        self.now_tick += u64::from(n);
        if self.due.is_some_and(|d| d <= self.now_tick) {
            self.due = None;
            self.replaced = None;
            self.owed = true;
            self.cancelled_after_dispatch = false;
        }
    }

    /// The port called HwTimer, on `cpu`.
    pub(crate) fn fired(&mut self, checker: &mut Checker, cpu: usize, now_us: u64) {
        if self.owed {
            self.owed = false;
            self.last = LastOp::Fired;
            return;
        }
        let (rule, message) = match self.due {
            Some(_) if self.replaced.is_some_and(|r| r <= self.now_tick) => (
                Rule::T1,
                "HwTimer ran for a request that a later one replaced",
            ),
            Some(_) => (
                Rule::T2,
                "HwTimer ran before its interval, rounded up to the tick",
            ),
            None if self.last == LastOp::Cancelled => (
                Rule::T3,
                "HwTimer ran after RequestTimerCall(0) cancelled it",
            ),
            None => (Rule::T4, "HwTimer ran again without a new RequestTimerCall"),
        };
        checker.record_on(cpu, rule, Routine::Timer, now_us, message, self.now_tick);
    }

    /// End of a dispatch on `cpu`: an expired request must have run HwTimer.
    pub(crate) fn end_dispatch(&mut self, checker: &mut Checker, cpu: usize, now_us: u64) {
        if !self.owed {
            return;
        }
        self.owed = false;
        if self.cancelled_after_dispatch {
            checker.record_on(
                cpu,
                Rule::T3,
                Routine::Port,
                now_us,
                "a dispatched HwTimer was cancelled by RequestTimerCall(0)",
                self.now_tick,
            );
        } else {
            checker.record_on(
                cpu,
                Rule::T4,
                Routine::Port,
                now_us,
                "an expired RequestTimerCall did not run HwTimer",
                self.now_tick,
            );
        }
    }
}
