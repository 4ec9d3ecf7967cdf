//! The port driver, on the ScsiPort/Storport model. Rule ids (T1.., N1..) refer to
//! docs/miniport-rules.md.
//!
//! - `srb`: SCSI request blocks, and the handle a miniport holds while it owns one (N1).
//! - `miniport`: the [`Miniport`] trait (HwFindAdapter, HwInitialize, HwStartIo,
//!   HwInterrupt, HwTimer, HwResetBus and the deferred interrupt callbacks).
//! - `notifications`: [`PortContext`], what a routine may do to the port.
//! - `queue`: SRB slots, which SRB goes to HwStartIo next (N2, N3), polling (T7).
//! - `dispatch`: [`Port`] itself: the wrapper every routine runs through, and the
//!   dispatch of each CPU's events: interrupts, deferred callbacks and HwTimer.
//! - `locks`: which of the port's locks each routine runs under on several CPUs (T5,
//!   T6), and [`InterruptShared`], what a miniport shares with HwInterrupt.
//! - `cpus`: which CPU takes what ([`Routing`]), and what each one ran.
//! - `hold`: SRB timeouts (P1) and the reset hold (P2, N5).
//! - [`timer`]: the timer service (T1 to T4); [`checker`]: the rule checker;
//!   [`handoff`]: the lock-free pieces of Storport's multi-channel mode (T5, T6).
//!
//! Every miniport routine runs through one wrapper that takes its locks, measures it
//! (P4) and lets the checker see what the miniport did; the port's own duties (timer
//! service, deferred interrupt callbacks, request timeouts and the reset hold) are
//! checked by the same checker against an independent model, so a broken port is
//! caught as well. The port is shared by every CPU: its own state sits behind one lock
//! that is never held while a miniport routine runs.

use core::fmt;

use crate::platform::Platform;

pub mod checker;
mod cpus;
mod dispatch;
pub mod handoff;
mod hold;
mod locks;
mod miniport;
#[cfg(test)]
mod multichannel_tests;
mod notifications;
mod queue;
#[cfg(test)]
mod rule_tests;
#[cfg(test)]
mod smp_tests;
mod srb;
#[cfg(test)]
mod tests;
pub mod timer;

pub use checker::{Checker, CheckerConfig, Routine, RoutineTimes, Rule, Violation};
use timer::ShadowTimer;
pub use timer::TimerService;

use cpus::CallLog;
pub use cpus::{CpuStats, RoutineCall, Routing, RUNNER_CPU};
pub use dispatch::InterruptPhase;
use hold::Hold;
pub use locks::InterruptShared;
use locks::{PortLock, Running};
pub use miniport::{
    AdapterCapabilities, Miniport, Serial, SerialMiniport, StartIo, Synchronization,
};
pub use notifications::{PortContext, SrbMut, SrbRef};
use queue::{LuState, Slot, SlotList, SlotState};
pub use srb::{
    scsi_status, DataBuffer, DataDirection, LuAddress, Srb, SrbHandle, SrbStatus, Tag,
    DEFAULT_SRB_TIMEOUT_US, MAX_CDB, MAX_LUS, MAX_SRBS, SENSE_BUFFER_LEN,
};

/// Default reset hold period: ScsiPort holds requests 4 s after a bus reset.
pub const DEFAULT_RESET_HOLD_US: u32 = 4_000_000;
/// Default number of times the port retries an SRB the miniport completed with
/// SRB_STATUS_BUS_RESET.
pub const DEFAULT_BUS_RESET_RETRIES: u32 = 4;

/// Counters the port keeps about the miniport's behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub submitted: u64,
    pub completed: u64,
    pub start_io_calls: u64,
    pub start_io_busy: u64,
    pub interrupts: u64,
    /// HwInterrupt returned false (not ours).
    pub interrupts_not_claimed: u64,
    pub timer_calls: u64,
    pub timer_requests: u64,
    pub stall_calls: u64,
    pub stall_us_total: u64,
    pub stall_us_max: u32,
    pub resets_detected: u64,
    pub bus_resets: u64,
    /// Bus resets the port started because an SRB timed out (P1).
    pub srb_timeouts: u64,
    /// SRBs the port took back from the miniport when a reset hold ended (P2, N5).
    pub reclaimed: u64,
    /// SRBs completed with SRB_STATUS_BUS_RESET that the port queued again.
    pub bus_reset_retries: u64,
    /// BusChangeDetected notifications.
    pub bus_changes: u64,
    pub enable_callbacks: u64,
    pub disable_callbacks: u64,
    /// What each CPU ran.
    pub per_cpu: [CpuStats; crate::platform::MAX_CPUS],
}

/// Why the port refused or gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortError<E> {
    /// All [`MAX_SRBS`] slots are in use.
    QueueFull,
    /// More distinct LUs than [`MAX_LUS`] have requests.
    TooManyLus,
    NotInitialized,
    /// `run_until_idle` passed its deadline with requests outstanding.
    Deadline,
    FindAdapter(E),
    Initialize(E),
}

impl<E: fmt::Display> fmt::Display for PortError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::QueueFull => write!(f, "port queue full"),
            PortError::TooManyLus => write!(f, "too many logical units"),
            PortError::NotInitialized => write!(f, "adapter not initialized"),
            PortError::Deadline => write!(f, "requests still outstanding at the deadline"),
            PortError::FindAdapter(e) => write!(f, "HwFindAdapter failed: {e}"),
            PortError::Initialize(e) => write!(f, "HwInitialize failed: {e}"),
        }
    }
}

/// Port settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Timer resolution (T2): the platform's tick.
    pub tick_us: u32,
    /// How long new requests are held after a bus reset or ResetDetected (P2, N5).
    pub reset_hold_us: u32,
    /// How often an SRB completed with SRB_STATUS_BUS_RESET is queued again before the
    /// port hands it back with that status.
    pub bus_reset_retries: u32,
    pub checker: CheckerConfig,
    /// Which CPU takes the interrupts and the timer.
    pub routing: Routing,
}

impl PortConfig {
    pub fn new(tick_us: u32) -> Self {
        PortConfig {
            tick_us,
            reset_hold_us: DEFAULT_RESET_HOLD_US,
            bus_reset_retries: DEFAULT_BUS_RESET_RETRIES,
            checker: CheckerConfig::default(),
            routing: Routing::default(),
        }
    }
}

/// A deliberately broken port, so tests can show the checker catches a port that
/// breaks its side of a rule.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flaw {
    /// T1: a new RequestTimerCall does not replace the pending one.
    KeepFirstTimerRequest,
    /// T2: the interval is truncated to the tick instead of rounded up.
    TruncateTimerInterval,
    /// T3: RequestTimerCall(0) is ignored.
    IgnoreTimerCancel,
    /// T4: an expired request stays pending and fires on every tick.
    TimerNotConsumed,
    /// I4: HwInterrupt is called while HwEnableInterruptsCallback owns the HBA.
    InterruptDuringEnableCallback,
    /// N2: a second request goes to a busy LU without tagged queuing.
    IgnoreLuBusy,
    /// P1: timed-out SRBs do not lead to HwResetBus.
    NoTimeoutReset,
    /// P2: requests are started during the reset hold.
    NoResetHold,
    /// T5: HwTimer (half duplex) runs without the interrupt lock.
    NoInterruptLock,
}

/// The port's state that notifications act on.
pub struct PortState {
    slots: [Slot; MAX_SRBS],
    queued: SlotList,
    completed: SlotList,
    lus: [Option<LuState>; MAX_LUS],
    /// NextRequest received since the last HwStartIo (N2).
    next_request: bool,
    timer: TimerService,
    shadow: ShadowTimer,
    caps: Option<AdapterCapabilities>,
    has_timer: bool,
    active: u16,
    next_tag: Tag,
    stats: PortStats,
    checker: Checker,
    config: PortConfig,
    phase: InterruptPhase,
    /// The CPU whose HwInterrupt asked for CallEnableInterrupts: the deferred callbacks
    /// run there (I3, I4).
    phase_cpu: usize,
    /// Vectors that arrived while HwInterrupt was held off (I4).
    held_vectors: u32,
    /// MSI-X entries the miniport asked messages for: its own interrupts (I1).
    own_vectors: u32,
    /// N4: the SRB last accepted by HwStartIo, until NextRequest/NextLuRequest.
    owed_next: Option<u8>,
    owed_completed: bool,
    /// The HwStartIo that owes it still runs: another CPU's completion is judged when
    /// it returns.
    owing_start_io: bool,
    hold: Option<Hold>,
    last_reset_us: u64,
    /// BusChangeDetected since the owner last looked.
    bus_change: bool,
    /// T7 reported for the current stretch without a pending HwTimer.
    t7_flagged: bool,
    /// HwTimer calls taken for dispatch and not yet returned: on another CPU, HwTimer
    /// may be running (and about to ask for its next call) while HwStartIo returns (T7).
    timer_dispatched: u32,
    /// What a stale handle reads and writes instead of another request's SRB.
    limbo: Srb,
    /// Which CPU ran which routine, for the timeline.
    calls: CallLog,
    #[cfg(test)]
    flaw: Option<Flaw>,
}

/// What every CPU shares of a port, apart from the miniport: its state, behind a lock
/// never held while a routine runs, and the locks routines run under.
pub struct PortCore {
    state: spin::Mutex<PortState>,
    /// T5: HwInterrupt, HwTimer in half duplex, SynchronizeAccess.
    interrupt_lock: PortLock,
    /// HwStartIo (one channel), HwTimer, HwResetBus, the enable callback (T6).
    start_io_lock: PortLock,
    running: Running,
    /// When each CPU started the latest batch of events it has dispatched to the end
    /// (µs): every interrupt that had reached it by then has gone to HwInterrupt.
    looked_at: [core::sync::atomic::AtomicU64; crate::platform::MAX_CPUS],
    sync: Synchronization,
    routing: Routing,
    #[cfg(test)]
    flaw: Option<Flaw>,
}

/// A port driving one adapter through miniport `M`, on one CPU or several: every
/// method takes `&self`, so each CPU's loop can dispatch its own events.
pub struct Port<M: Miniport> {
    miniport: M,
    core: PortCore,
}

impl PortCore {
    /// Until when every interrupt that reached the interrupt CPU has gone to HwInterrupt,
    /// as `cpu` sees it at `now`: `now` on that CPU itself, which is looking now. What
    /// the port or a miniport decides by time about completions (a reset hold's end, an
    /// SRB's timeout, a lost interrupt) it decides by this clock, so that an interrupt
    /// CPU the host has not run for a while is not taken for one that got nothing.
    pub(super) fn interrupts_taken_until(&self, cpu: usize, now: u64) -> u64 {
        let irq = self.routing.interrupt_cpu;
        if irq == cpu {
            return now;
        }
        self.looked_at[irq]
            .load(core::sync::atomic::Ordering::SeqCst)
            .min(now)
    }
}

impl<M: Miniport> Port<M> {
    /// Whether the miniport sent BusChangeDetected since the last call.
    pub fn take_bus_change(&self) -> bool {
        core::mem::take(&mut self.core.state.lock().bus_change)
    }

    /// SRBs queued or held by the miniport.
    pub fn in_flight(&self) -> usize {
        let st = self.core.state.lock();
        st.queued.len + usize::from(st.active)
    }

    pub fn active(&self) -> u16 {
        self.core.state.lock().active
    }

    pub fn stats(&self) -> PortStats {
        self.core.state.lock().stats
    }

    /// The rule checker as it stands: violations and routine times.
    pub fn checker(&self) -> Checker {
        self.core.state.lock().checker
    }

    pub fn interrupt_phase(&self) -> InterruptPhase {
        self.core.state.lock().phase
    }

    /// Whether new requests are held after a reset (P2, N5).
    pub fn in_reset_hold(&self) -> bool {
        self.core.state.lock().hold.is_some()
    }

    /// The timer service as it stands.
    pub fn timer(&self) -> TimerService {
        self.core.state.lock().timer
    }

    pub fn capabilities(&self) -> Option<AdapterCapabilities> {
        self.core.state.lock().caps
    }

    /// Which CPU takes what.
    pub fn routing(&self) -> Routing {
        self.core.routing
    }

    /// The calls of the routines whose CPU the routing chooses, in order, and how many
    /// more there were than the log keeps.
    pub fn with_calls<R>(&self, f: impl FnOnce(&[RoutineCall], u64) -> R) -> R {
        let st = self.core.state.lock();
        f(st.calls.calls(), st.calls.dropped())
    }

    /// [`Miniport::resetting`], asked holding the interrupt lock.
    pub fn resetting(&self, platform: &mut dyn Platform) -> bool {
        let held = self.core.interrupt_lock.acquire(platform);
        let resetting = self.miniport.resetting();
        self.core.interrupt_lock.release(held, platform);
        resetting
    }

    /// [`Miniport::completions_waiting`], asked holding the interrupt lock.
    pub fn completions_waiting(&self, platform: &mut dyn Platform) -> u32 {
        let held = self.core.interrupt_lock.acquire(platform);
        let waiting = self.miniport.completions_waiting();
        self.core.interrupt_lock.release(held, platform);
        waiting
    }

    pub fn miniport(&self) -> &M {
        &self.miniport
    }

    pub fn miniport_mut(&mut self) -> &mut M {
        &mut self.miniport
    }
}
