//! Dispatch: building a port, running each miniport routine through one wrapper that
//! takes its locks and measures and checks it (P4, I2, I3, N1, N4, T5), initialization,
//! and the dispatch of each CPU's events: interrupts (I1, I4), the deferred callbacks,
//! and HwTimer on the timer's CPU (T3).

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::platform::{CpuWork, Events, Platform, MAX_CPUS};

use super::locks::Locks;
#[cfg(test)]
use super::Flaw;
use super::{
    AdapterCapabilities, CallLog, Checker, DataBuffer, Miniport, Port, PortConfig, PortContext,
    PortCore, PortError, PortLock, PortState, PortStats, Routine, RoutineCall, Rule, Running,
    ShadowTimer, Slot, SlotList, SlotState, Srb, SrbStatus, TimerService, DEFAULT_SRB_TIMEOUT_US,
    MAX_CDB, MAX_LUS, MAX_SRBS, RUNNER_CPU, SENSE_BUFFER_LEN,
};

/// The deferred interrupt flow of CallEnableInterrupts / CallDisableInterrupts (I3, I4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptPhase {
    /// HwInterrupt is called for each interrupt.
    Normal,
    /// HwInterrupt asked for CallEnableInterrupts; the callback runs after it returns.
    EnableRequested,
    /// HwEnableInterruptsCallback owns the HBA: HwInterrupt is not called (I4).
    EnableCallback,
    /// The enable callback asked for CallDisableInterrupts.
    DisableRequested,
}

const BLANK: Srb = Srb {
    path: 0,
    target: 0,
    lun: 0,
    cdb: [0; MAX_CDB],
    cdb_len: 0,
    data: DataBuffer::NONE,
    srb_status: SrbStatus::Pending,
    scsi_status: 0,
    sense: [0; SENSE_BUFFER_LEN],
    sense_len: 0,
    data_transfer_length: 0,
    tag: 0,
    timeout_us: DEFAULT_SRB_TIMEOUT_US,
};

impl PortState {
    fn new(config: PortConfig) -> Self {
        const EMPTY: Slot = Slot {
            state: SlotState::Free,
            srb: BLANK,
            started_us: 0,
            timeout_flagged: false,
            retries: 0,
        };
        PortState {
            slots: [EMPTY; MAX_SRBS],
            queued: SlotList::new(),
            completed: SlotList::new(),
            lus: [None; MAX_LUS],
            next_request: false,
            timer: TimerService::new(config.tick_us),
            shadow: ShadowTimer::new(config.tick_us),
            caps: None,
            has_timer: true,
            active: 0,
            next_tag: 1,
            stats: PortStats::default(),
            checker: Checker::new(config.checker),
            config,
            phase: InterruptPhase::Normal,
            phase_cpu: RUNNER_CPU,
            held_vectors: 0,
            own_vectors: 0,
            owed_next: None,
            owed_completed: false,
            owing_start_io: false,
            hold: None,
            last_reset_us: 0,
            bus_change: false,
            t7_flagged: false,
            timer_dispatched: 0,
            limbo: BLANK,
            calls: CallLog::new(),
            #[cfg(test)]
            flaw: None,
        }
    }
}

impl PortCore {
    /// Runs one miniport routine on the platform's CPU under the locks the miniport's
    /// synchronization gives it; measures it (P4, I2) and checks what it left behind
    /// (I3, N1, N4) and what it ran beside (T5). Two clock reads per call, never per
    /// loop iteration inside it.
    pub(super) fn call<R>(
        &self,
        platform: &mut dyn Platform,
        routine: Routine,
        f: impl FnOnce(&mut PortContext<'_>) -> R,
    ) -> R {
        // Routines Windows runs at DIRQL run with the CPU's interrupts masked.
        let dirql = matches!(
            routine,
            Routine::Interrupt | Routine::Timer | Routine::StartIo | Routine::ResetBus
        );
        let was_enabled = dirql && platform.disable_interrupts();
        let locks = Locks::for_routine(self.sync, routine);
        #[cfg(test)]
        let unlocked = self.flaw == Some(Flaw::NoInterruptLock) && routine == Routine::Timer;
        #[cfg(not(test))]
        let unlocked = false;
        // The StartIo lock first, then the interrupt lock: the order everywhere.
        let start_io_held = locks.start_io.then(|| self.start_io_lock.acquire(platform));
        let interrupt_held =
            (locks.interrupt && !unlocked).then(|| self.interrupt_lock.acquire(platform));
        let cpu = platform.cpu();
        let start = platform.now_us();
        let breaks_t5 = self.running.enter(cpu, routine, locks.interrupt);
        {
            let mut st = self.state.lock();
            if routine == Routine::Interrupt && st.phase == InterruptPhase::EnableCallback {
                st.checker.record_on(
                    cpu,
                    Rule::I4,
                    Routine::Port,
                    start,
                    "HwInterrupt called while HwEnableInterruptsCallback owns the HBA",
                    0,
                );
            }
            if breaks_t5 {
                st.checker.record_on(
                    cpu,
                    Rule::T5,
                    Routine::Port,
                    start,
                    "HwTimer and HwInterrupt ran at the same time",
                    cpu as u64,
                );
            }
            if routine == Routine::StartIo {
                st.owing_start_io = true;
            }
        }
        let mut ctx = PortContext {
            platform: &mut *platform,
            core: self,
            cpu,
            routine,
            interrupt_lock: locks.interrupt,
            stall_us: 0,
            deferred: false,
            stale_reads: Cell::new(0),
        };
        let r = f(&mut ctx);
        let (stall_us, deferred, stale) = (ctx.stall_us, ctx.deferred, ctx.stale_reads.get());
        let end = platform.now_us();
        if dirql {
            platform.restore_interrupts(was_enabled);
        }
        self.routine_done(cpu, routine, start, end, (stall_us, deferred, stale));
        self.running.exit(cpu);
        if let Some(held) = interrupt_held {
            self.interrupt_lock.release(held, platform);
        }
        if let Some(held) = start_io_held {
            self.start_io_lock.release(held, platform);
        }
        r
    }

    /// What the checker looks at when a routine returns: its time (P4, I2, I3), stale
    /// handles it read (N1), and whether an SRB completed without NextRequest (N4).
    fn routine_done(
        &self,
        cpu: usize,
        routine: Routine,
        start: u64,
        end: u64,
        (stall_us, deferred, stale_reads): (u64, bool, u32),
    ) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let us = end.saturating_sub(start);
        st.checker
            .routine_done(cpu, routine, end, us, stall_us, deferred);
        for _ in 0..stale_reads {
            st.checker.record_on(
                cpu,
                Rule::N1,
                routine,
                end,
                "miniport read an SRB after the port took it back",
                0,
            );
        }
        if routine == Routine::StartIo {
            st.owing_start_io = false;
        }
        // N4 is judged once the HwStartIo that owes it returned: on another CPU the
        // completion may come before its NextLuRequest.
        if st.owed_completed && st.owed_next.is_some() && !st.owing_start_io {
            st.checker.record_on(
                cpu,
                Rule::N4,
                routine,
                end,
                "SRB completed successfully without NextRequest or NextLuRequest",
                0,
            );
            st.owed_next = None;
            st.owed_completed = false;
        }
        st.stats.per_cpu[cpu].count(routine);
        st.calls.push(RoutineCall {
            start_us: start,
            us: us.min(u64::from(u32::MAX)) as u32,
            routine,
            cpu: cpu as u8,
        });
    }
}

impl<M: Miniport> Port<M> {
    /// A port whose timer resolution is `tick_us` (T2; the platform's tick), with the
    /// default reset hold and checker limits.
    pub fn new(miniport: M, tick_us: u32) -> Self {
        Self::with_config(miniport, PortConfig::new(tick_us))
    }

    pub fn with_config(miniport: M, config: PortConfig) -> Self {
        let sync = miniport.synchronization();
        Port {
            miniport,
            core: PortCore {
                state: spin::Mutex::new(PortState::new(config)),
                interrupt_lock: PortLock::new(),
                start_io_lock: PortLock::new(),
                running: Running::new(),
                looked_at: [const { AtomicU64::new(0) }; MAX_CPUS],
                sync,
                routing: config.routing,
                #[cfg(test)]
                flaw: None,
            },
        }
    }

    /// Breaks the port on purpose (checker self-tests).
    #[cfg(test)]
    pub(crate) fn set_flaw(&mut self, flaw: Flaw) {
        let st = self.core.state.get_mut();
        st.flaw = Some(flaw);
        st.timer.flaw = Some(flaw);
        self.core.flaw = Some(flaw);
    }

    /// Runs one miniport routine (see [`PortCore::call`]).
    pub(super) fn call<R>(
        &self,
        platform: &mut dyn Platform,
        routine: Routine,
        f: impl FnOnce(&M, &mut PortContext<'_>) -> R,
    ) -> R {
        self.core
            .call(platform, routine, |ctx| f(&self.miniport, ctx))
    }

    /// HwFindAdapter then HwInitialize, on the runner's CPU before any other CPU
    /// dispatches. The miniport is ready for its first request afterwards.
    pub fn initialize(
        &self,
        platform: &mut dyn Platform,
    ) -> Result<AdapterCapabilities, PortError<M::Error>> {
        let has_timer = self.miniport.has_timer();
        self.core.state.lock().has_timer = has_timer;
        let caps = self
            .call(platform, Routine::FindAdapter, |m, ctx| m.find_adapter(ctx))
            .map_err(PortError::FindAdapter)?;
        {
            let mut st = self.core.state.lock();
            st.caps = Some(caps);
            if !caps.interrupts && !has_timer {
                let now = platform.now_us();
                st.checker.record_on(
                    platform.cpu(),
                    Rule::T7,
                    Routine::FindAdapter,
                    now,
                    "miniport without interrupts has no HwTimer to poll with",
                    0,
                );
            }
        }
        self.call(platform, Routine::Initialize, |m, ctx| m.initialize(ctx))
            .map_err(PortError::Initialize)?;
        self.core.state.lock().next_request = true;
        Ok(caps)
    }

    /// HwInterrupt for each vector in `vectors`, unless the enable callback holds them
    /// off (I4).
    fn deliver(&self, platform: &mut dyn Platform, vectors: u32) {
        let mut vectors = vectors;
        while vectors != 0 {
            {
                let mut st = self.core.state.lock();
                #[cfg(test)]
                let hold_off = st.phase != InterruptPhase::Normal
                    && !st.flawed(Flaw::InterruptDuringEnableCallback);
                #[cfg(not(test))]
                let hold_off = st.phase != InterruptPhase::Normal;
                if hold_off {
                    // I4: HwInterrupt waits until HwDisableInterruptsCallback ran.
                    st.held_vectors |= vectors;
                    return;
                }
                st.stats.interrupts += 1;
            }
            let v = vectors.trailing_zeros() as u16;
            vectors &= vectors - 1;
            let claimed = self.call(platform, Routine::Interrupt, |m, ctx| m.interrupt(ctx, v));
            let mut st = self.core.state.lock();
            if !claimed {
                st.stats.interrupts_not_claimed += 1;
            } else if st.own_vectors & (1 << v) == 0 {
                let now = platform.now_us();
                st.checker.record_on(
                    platform.cpu(),
                    Rule::I1,
                    Routine::Interrupt,
                    now,
                    "HwInterrupt claimed an interrupt on a vector its HBA does not use",
                    u64::from(v),
                );
            }
        }
    }

    /// Runs the deferred callbacks the interrupt flow asks for (I3, I4), on the CPU whose
    /// HwInterrupt asked for them.
    fn run_deferred(&self, platform: &mut dyn Platform) {
        let cpu = platform.cpu();
        let enable = {
            let mut st = self.core.state.lock();
            let due = st.phase_cpu == cpu
                && matches!(
                    st.phase,
                    InterruptPhase::EnableRequested | InterruptPhase::EnableCallback
                );
            if due {
                st.phase = InterruptPhase::EnableCallback;
                st.stats.enable_callbacks += 1;
            }
            due
        };
        if enable {
            self.call(platform, Routine::EnableInterruptsCallback, |m, ctx| {
                m.enable_interrupts_callback(ctx)
            });
        }
        let disable = {
            let mut st = self.core.state.lock();
            let due = st.phase_cpu == cpu && st.phase == InterruptPhase::DisableRequested;
            if due {
                st.stats.disable_callbacks += 1;
            }
            due
        };
        if disable {
            self.call(platform, Routine::DisableInterruptsCallback, |m, ctx| {
                m.disable_interrupts_callback(ctx)
            });
            let held = {
                let mut st = self.core.state.lock();
                st.phase = InterruptPhase::Normal;
                core::mem::take(&mut st.held_vectors)
            };
            self.deliver(platform, held);
        }
    }

    /// Dispatches one batch of events that arrived on the platform's CPU. On the timer's
    /// CPU the expiry comes first (from then on the call is dispatched and
    /// RequestTimerCall(0) no longer stops it, T3), then HwInterrupt for each vector,
    /// the deferred interrupt callbacks this CPU asked for, then HwTimer; on the runner's
    /// CPU, HwStartIo for what can start. Another CPU wakes the runner's afterwards, so
    /// it sees the completions, and records when it started the batch
    /// ([`PortCore::interrupts_taken_until`]).
    pub fn dispatch(&self, platform: &mut dyn Platform, events: Events) {
        let cpu = platform.cpu();
        let started = platform.now_us();
        let ticks = if cpu == self.core.routing.timer_cpu {
            events.ticks
        } else {
            0
        };
        let mut fire = false;
        if ticks > 0 {
            let mut st = self.core.state.lock();
            st.shadow.ticks(ticks);
            fire = st.timer.advance(ticks);
            // Taken for dispatch in the same breath as the expiry (T7 counts it pending).
            st.timer_dispatched += u32::from(fire);
        }
        self.deliver(platform, events.vectors);
        self.run_deferred(platform);
        if fire {
            {
                let mut guard = self.core.state.lock();
                let st = &mut *guard;
                st.stats.timer_calls += 1;
                let now = platform.now_us();
                st.shadow.fired(&mut st.checker, cpu, now);
            }
            self.call(platform, Routine::Timer, |m, ctx| m.timer(ctx));
            self.core.state.lock().timer_dispatched -= 1;
        }
        if ticks > 0 {
            {
                let mut guard = self.core.state.lock();
                let st = &mut *guard;
                let now = platform.now_us();
                st.shadow.end_dispatch(&mut st.checker, cpu, now);
            }
            self.check_timeouts(platform);
            self.check_hold(platform);
        }
        if cpu == RUNNER_CPU {
            self.start_queued(platform);
        } else if events.vectors != 0 || ticks > 0 {
            platform.wake(RUNNER_CPU);
        }
        self.core.looked_at[cpu].fetch_max(started, Ordering::SeqCst);
    }

    /// Passes queued SRBs to HwStartIo while the miniport is ready for them, without
    /// waiting for anything.
    pub fn start_pending(&self, platform: &mut dyn Platform) {
        self.start_queued(platform);
    }

    fn idle(&self) -> bool {
        let st = self.core.state.lock();
        st.active == 0 && st.queued.len == 0
    }

    /// Starts what can be started, then waits for one batch of events and dispatches
    /// it. Returns false without waiting when nothing is queued or outstanding and no
    /// timer is pending.
    pub fn run_once(&self, platform: &mut dyn Platform) -> bool {
        self.start_queued(platform);
        if self.idle() && !self.core.state.lock().timer.is_pending() {
            return false;
        }
        let events = platform.wait_for_events();
        self.dispatch(platform, events);
        true
    }

    /// Runs until no SRB is queued or outstanding, or until `deadline_us` of platform
    /// time.
    pub fn run_until_idle(
        &self,
        platform: &mut dyn Platform,
        deadline_us: u64,
    ) -> Result<(), PortError<M::Error>> {
        loop {
            self.start_queued(platform);
            if self.idle() {
                return Ok(());
            }
            if platform.now_us() >= deadline_us {
                return Err(PortError::Deadline);
            }
            let events = platform.wait_for_events();
            self.dispatch(platform, events);
        }
    }
}

/// The other CPUs dispatch their events into the port.
impl<M: Miniport + Sync> CpuWork for Port<M> {
    fn dispatch(&self, platform: &mut dyn Platform, events: Events) {
        Port::dispatch(self, platform, events);
    }
}
