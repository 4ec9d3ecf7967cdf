//! The port on several CPUs: which CPU takes what, what each one ran, and the log of
//! which CPU ran each routine (for the timeline).

use super::checker::Routine;

/// The CPU that submits requests and runs HwStartIo and the port's queue: the one the
/// machine booted on.
pub const RUNNER_CPU: usize = 0;

/// Which CPU takes what. CPU numbers past the platform's last CPU are the platform's
/// business; the guest's runner keeps them in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    /// The CPUs the port runs on (the platform's).
    pub cpus: usize,
    /// Every MSI-X message the miniport asks for is addressed to this CPU, so its
    /// HwInterrupt, and the deferred callbacks it asks for (I3, I4), run there.
    pub interrupt_cpu: usize,
    /// This CPU's ticks drive the timer service (T1 to T4): HwTimer runs there, and so
    /// do the port's timeouts and reset hold (P1, P2).
    pub timer_cpu: usize,
}

impl Default for Routing {
    /// One CPU, which takes everything.
    fn default() -> Self {
        Routing {
            cpus: 1,
            interrupt_cpu: 0,
            timer_cpu: 0,
        }
    }
}

/// Routine calls on one CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub interrupts: u64,
    pub timer_calls: u64,
    pub start_io_calls: u64,
    /// HwEnableInterruptsCallback and HwDisableInterruptsCallback.
    pub deferred_calls: u64,
}

impl CpuStats {
    pub(super) fn count(&mut self, routine: Routine) {
        match routine {
            Routine::Interrupt => self.interrupts += 1,
            Routine::Timer => self.timer_calls += 1,
            Routine::StartIo => self.start_io_calls += 1,
            Routine::EnableInterruptsCallback | Routine::DisableInterruptsCallback => {
                self.deferred_calls += 1
            }
            Routine::FindAdapter | Routine::Initialize | Routine::ResetBus | Routine::Port => {}
        }
    }
}

/// One call of a routine the timeline shows: when, for how long, and on which CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutineCall {
    pub start_us: u64,
    pub us: u32,
    pub routine: Routine,
    pub cpu: u8,
}

/// Calls the log keeps; later ones are counted as dropped.
pub const MAX_CALLS: usize = 512;

/// The first [`MAX_CALLS`] calls of the routines whose CPU is a choice of the routing:
/// HwInterrupt, HwTimer, HwResetBus and the deferred callbacks (HwStartIo always runs
/// on [`RUNNER_CPU`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct CallLog {
    calls: [RoutineCall; MAX_CALLS],
    len: usize,
    dropped: u64,
}

impl CallLog {
    pub(super) const fn new() -> Self {
        const NONE: RoutineCall = RoutineCall {
            start_us: 0,
            us: 0,
            routine: Routine::Port,
            cpu: 0,
        };
        CallLog {
            calls: [NONE; MAX_CALLS],
            len: 0,
            dropped: 0,
        }
    }

    pub(super) fn push(&mut self, call: RoutineCall) {
        if matches!(
            call.routine,
            Routine::FindAdapter | Routine::Initialize | Routine::StartIo | Routine::Port
        ) {
            return;
        }
        match self.calls.get_mut(self.len) {
            Some(c) => {
                *c = call;
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }

    pub(super) fn calls(&self) -> &[RoutineCall] {
        &self.calls[..self.len]
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}
