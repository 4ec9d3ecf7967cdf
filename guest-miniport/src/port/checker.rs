//! The rule checker: records every violation of docs/miniport-rules.md with its rule
//! id, the routine it happened in, the time and a message, and measures the time spent
//! in each miniport routine (P4). Allocation-free: a fixed number of violations is kept,
//! the count goes on past it.

/// The 23 rules of docs/miniport-rules.md, by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// T1: one timer request per adapter; a new RequestTimerCall replaces the pending one.
    T1,
    /// T2: the interval is in microseconds, rounded up to the port's tick.
    T2,
    /// T3: an interval of 0 cancels the pending request, unless it is already dispatched.
    T3,
    /// T4: HwTimer runs once per RequestTimerCall, and may call RequestTimerCall again.
    T4,
    /// T5: HwTimer never runs at the same time as HwInterrupt.
    T5,
    /// T6: multi-channel HwStartIo may overlap HwTimer; the miniport guards shared state.
    T6,
    /// T7: a miniport that polls instead of taking interrupts keeps a HwTimer call pending.
    T7,
    /// S1: no StallExecution over 1 ms outside HwFindAdapter and HwInitialize.
    S1,
    /// I1: HwInterrupt claims only an interrupt its own HBA raised.
    I1,
    /// I2: HwInterrupt does the least work it can and returns quickly.
    I2,
    /// I3: long interrupt work is deferred through CallEnableInterrupts, not polled for.
    I3,
    /// I4: no HwInterrupt while the deferred enable/disable callbacks own the HBA.
    I4,
    /// N1: after RequestComplete the miniport never touches that SRB again.
    N1,
    /// N2: NextRequest readies the miniport for a request to a target that is not busy.
    N2,
    /// N3: NextLuRequest (another request to that LU) only with tagged queuing.
    N3,
    /// N4: an SRB completed successfully is paired with NextRequest or NextLuRequest.
    N4,
    /// N5: after ResetDetected the miniport still completes every active request.
    N5,
    /// N6: RequestTimerCall only from a miniport that has a HwTimer.
    N6,
    /// N7: CallEnableInterrupts from HwInterrupt, CallDisableInterrupts from its callback.
    N7,
    /// P1: an SRB outstanding past its timeout makes the port reset the bus.
    P1,
    /// P2: new requests wait out the reset hold; one outstanding at its end is a bug.
    P2,
    /// P3: every SRB is completed exactly once, with a valid status.
    P3,
    /// P4: the port measures the time the miniport spends in each routine.
    P4,
}

impl Rule {
    pub const ALL: [Rule; 23] = [
        Rule::T1,
        Rule::T2,
        Rule::T3,
        Rule::T4,
        Rule::T5,
        Rule::T6,
        Rule::T7,
        Rule::S1,
        Rule::I1,
        Rule::I2,
        Rule::I3,
        Rule::I4,
        Rule::N1,
        Rule::N2,
        Rule::N3,
        Rule::N4,
        Rule::N5,
        Rule::N6,
        Rule::N7,
        Rule::P1,
        Rule::P2,
        Rule::P3,
        Rule::P4,
    ];

    pub const fn id(self) -> &'static str {
        match self {
            Rule::T1 => "T1",
            Rule::T2 => "T2",
            Rule::T3 => "T3",
            Rule::T4 => "T4",
            Rule::T5 => "T5",
            Rule::T6 => "T6",
            Rule::T7 => "T7",
            Rule::S1 => "S1",
            Rule::I1 => "I1",
            Rule::I2 => "I2",
            Rule::I3 => "I3",
            Rule::I4 => "I4",
            Rule::N1 => "N1",
            Rule::N2 => "N2",
            Rule::N3 => "N3",
            Rule::N4 => "N4",
            Rule::N5 => "N5",
            Rule::N6 => "N6",
            Rule::N7 => "N7",
            Rule::P1 => "P1",
            Rule::P2 => "P2",
            Rule::P3 => "P3",
            Rule::P4 => "P4",
        }
    }
}

/// Where a violation happened: a miniport routine, or the port itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routine {
    FindAdapter,
    Initialize,
    StartIo,
    Interrupt,
    Timer,
    ResetBus,
    EnableInterruptsCallback,
    DisableInterruptsCallback,
    /// The port's own work between routines (dispatch, timeouts, reset hold).
    Port,
}

impl Routine {
    /// Every routine, in the order of their codes (`routine as u8`).
    pub const ALL: [Routine; 9] = [
        Routine::FindAdapter,
        Routine::Initialize,
        Routine::StartIo,
        Routine::Interrupt,
        Routine::Timer,
        Routine::ResetBus,
        Routine::EnableInterruptsCallback,
        Routine::DisableInterruptsCallback,
        Routine::Port,
    ];

    /// The routine whose code (`routine as u8`) is `code`; the port for an unknown one.
    pub const fn from_code(code: u8) -> Routine {
        if (code as usize) < Routine::ALL.len() {
            Routine::ALL[code as usize]
        } else {
            Routine::Port
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Routine::FindAdapter => "HwFindAdapter",
            Routine::Initialize => "HwInitialize",
            Routine::StartIo => "HwStartIo",
            Routine::Interrupt => "HwInterrupt",
            Routine::Timer => "HwTimer",
            Routine::ResetBus => "HwResetBus",
            Routine::EnableInterruptsCallback => "HwEnableInterruptsCallback",
            Routine::DisableInterruptsCallback => "HwDisableInterruptsCallback",
            Routine::Port => "port",
        }
    }

    /// The routines during which a stall over 1 ms is allowed (S1).
    pub const fn is_initialization(self) -> bool {
        matches!(self, Routine::FindAdapter | Routine::Initialize)
    }
}

/// One broken rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub routine: Routine,
    /// The CPU it happened on.
    pub cpu: u8,
    pub time_us: u64,
    pub message: &'static str,
    /// A number the message refers to (an SRB tag, microseconds, a vector), or 0.
    pub value: u64,
}

/// Violations kept in full; later ones are only counted.
pub const MAX_VIOLATIONS: usize = 32;

/// Limits the checker applies. The defaults are the documents' numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerConfig {
    /// S1: longest StallExecution outside initialization.
    pub max_stall_us: u32,
    /// I2: longest HwInterrupt call.
    pub max_interrupt_us: u64,
    /// I3: most stall time HwInterrupt may spend polling before it must defer the work
    /// through CallEnableInterrupts ("over about 50 us").
    pub max_interrupt_poll_us: u64,
    /// P4: longest call of any other routine outside initialization.
    pub max_routine_us: u64,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            max_stall_us: 1_000,
            max_interrupt_us: 1_000,
            max_interrupt_poll_us: 50,
            max_routine_us: 100_000,
        }
    }
}

/// Calls, total and longest time of one routine (P4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutineTime {
    pub calls: u64,
    pub total_us: u64,
    pub max_us: u64,
}

impl RoutineTime {
    fn add(&mut self, us: u64) {
        self.calls += 1;
        self.total_us += us;
        self.max_us = self.max_us.max(us);
    }
}

/// Time measured in each routine (P4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutineTimes {
    pub start_io: RoutineTime,
    pub interrupt: RoutineTime,
    pub timer: RoutineTime,
    pub reset_bus: RoutineTime,
    pub deferred: RoutineTime,
    /// Longest single StallExecution.
    pub max_stall_us: u32,
    pub total_stall_us: u64,
}

/// The record of violations and routine times.
#[derive(Clone, Copy, Debug)]
pub struct Checker {
    pub config: CheckerConfig,
    kept: [Option<Violation>; MAX_VIOLATIONS],
    count: u64,
    times: RoutineTimes,
}

impl Default for Checker {
    fn default() -> Self {
        Checker::new(CheckerConfig::default())
    }
}

impl Checker {
    pub const fn new(config: CheckerConfig) -> Self {
        Checker {
            config,
            kept: [None; MAX_VIOLATIONS],
            count: 0,
            times: RoutineTimes {
                start_io: ZERO,
                interrupt: ZERO,
                timer: ZERO,
                reset_bus: ZERO,
                deferred: ZERO,
                max_stall_us: 0,
                total_stall_us: 0,
            },
        }
    }

    /// Records a violation on CPU 0 (see [`Checker::record_on`]); the tests' shorthand.
    #[cfg(test)]
    pub fn record(
        &mut self,
        rule: Rule,
        routine: Routine,
        time_us: u64,
        message: &'static str,
        value: u64,
    ) {
        self.record_on(0, rule, routine, time_us, message, value);
    }

    /// Records a violation that happened on `cpu`; it is also logged at once, so a
    /// guest that hangs later still shows it.
    pub fn record_on(
        &mut self,
        cpu: usize,
        rule: Rule,
        routine: Routine,
        time_us: u64,
        message: &'static str,
        value: u64,
    ) {
        log::warn!(
            "rule {} violated in {} on CPU {cpu} at {time_us} us: {message} ({value})",
            rule.id(),
            routine.name()
        );
        if let Some(slot) = self.kept.get_mut(self.count as usize) {
            *slot = Some(Violation {
                rule,
                routine,
                cpu: cpu as u8,
                time_us,
                message,
                value,
            });
        }
        self.count += 1;
    }

    /// Every violation so far, including those not kept.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The violations kept, oldest first.
    pub fn violations(&self) -> impl Iterator<Item = Violation> + '_ {
        self.kept.iter().flatten().copied()
    }

    /// Whether `rule` was violated (among the kept violations).
    pub fn flagged(&self, rule: Rule) -> bool {
        self.violations().any(|v| v.rule == rule)
    }

    pub fn times(&self) -> RoutineTimes {
        self.times
    }

    /// Accounts one StallExecution on `cpu` (S1, P4).
    pub(crate) fn stall(&mut self, cpu: usize, routine: Routine, now_us: u64, us: u32) {
        self.times.total_stall_us += u64::from(us);
        self.times.max_stall_us = self.times.max_stall_us.max(us);
        if us > self.config.max_stall_us && !routine.is_initialization() {
            self.record_on(
                cpu,
                Rule::S1,
                routine,
                now_us,
                "StallExecution over 1 ms outside initialization",
                u64::from(us),
            );
        }
    }

    /// Accounts one routine call on `cpu` of `us` microseconds, `stalled_us` of which
    /// were StallExecution (I2, I3, P4).
    pub(crate) fn routine_done(
        &mut self,
        cpu: usize,
        routine: Routine,
        end_us: u64,
        us: u64,
        stalled_us: u64,
        deferred: bool,
    ) {
        let slot = match routine {
            Routine::StartIo => &mut self.times.start_io,
            Routine::Interrupt => &mut self.times.interrupt,
            Routine::Timer => &mut self.times.timer,
            Routine::ResetBus => &mut self.times.reset_bus,
            Routine::EnableInterruptsCallback | Routine::DisableInterruptsCallback => {
                &mut self.times.deferred
            }
            Routine::FindAdapter | Routine::Initialize | Routine::Port => return,
        };
        slot.add(us);
        if routine == Routine::Interrupt {
            if us > self.config.max_interrupt_us {
                self.record_on(
                    cpu,
                    Rule::I2,
                    routine,
                    end_us,
                    "HwInterrupt did not return quickly (us)",
                    us,
                );
            }
            if stalled_us > self.config.max_interrupt_poll_us && !deferred {
                self.record_on(
                    cpu,
                    Rule::I3,
                    routine,
                    end_us,
                    "HwInterrupt polled the HBA instead of deferring through CallEnableInterrupts (us)",
                    stalled_us,
                );
            }
        } else if us > self.config.max_routine_us {
            self.record_on(
                cpu,
                Rule::P4,
                routine,
                end_us,
                "routine ran longer than the port's limit (us)",
                us,
            );
        }
    }
}

const ZERO: RoutineTime = RoutineTime {
    calls: 0,
    total_us: 0,
    max_us: 0,
};
