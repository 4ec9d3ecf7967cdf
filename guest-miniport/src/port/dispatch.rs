//! Dispatch: building a port, running each miniport routine through one wrapper that
//! measures and checks it (P4, I2, I3, N1, N4, T5), initialization, and the event loop
//! that delivers interrupts (I1, I4), runs the deferred callbacks and HwTimer (T3).

use core::cell::Cell;

use crate::platform::{Events, Platform};

#[cfg(test)]
use super::Flaw;
use super::{
    handoff, AdapterCapabilities, Checker, DataBuffer, Miniport, Port, PortConfig, PortContext,
    PortError, PortState, PortStats, Routine, Rule, ShadowTimer, Slot, SlotList, SlotState, Srb,
    SrbStatus, TimerService, DEFAULT_SRB_TIMEOUT_US, MAX_CDB, MAX_LUS, MAX_SRBS, SENSE_BUFFER_LEN,
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

impl<M: Miniport> Port<M> {
    /// A port whose timer resolution is `tick_us` (T2; the platform's tick), with the
    /// default reset hold and checker limits.
    pub fn new(miniport: M, tick_us: u32) -> Self {
        Self::with_config(miniport, PortConfig::new(tick_us))
    }

    pub fn with_config(miniport: M, config: PortConfig) -> Self {
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
        const EMPTY: Slot = Slot {
            state: SlotState::Free,
            srb: BLANK,
            started_us: 0,
            timeout_flagged: false,
            retries: 0,
        };
        Port {
            miniport,
            state: PortState {
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
                routine: Routine::Port,
                routine_stall_us: 0,
                routine_deferred: false,
                phase: InterruptPhase::Normal,
                held_vectors: 0,
                own_vectors: 0,
                owed_next: None,
                owed_completed: false,
                hold: None,
                last_reset_us: 0,
                bus_change: false,
                t7_flagged: false,
                stale_reads: Cell::new(0),
                limbo: BLANK,
                gate: handoff::RoutineGate::new(),
                #[cfg(test)]
                flaw: None,
            },
        }
    }

    /// Breaks the port on purpose (checker self-tests).
    #[cfg(test)]
    pub(crate) fn set_flaw(&mut self, flaw: Flaw) {
        self.state.flaw = Some(flaw);
        self.state.timer.flaw = Some(flaw);
    }

    /// Runs one miniport routine: measures it (P4, I2), checks what it left behind
    /// (I3, N1, N4). Two clock reads per call, never per loop iteration inside it.
    pub(super) fn call<R>(
        &mut self,
        platform: &mut dyn Platform,
        routine: Routine,
        f: impl FnOnce(&mut M, &mut PortContext<'_>) -> R,
    ) -> R {
        // Routines Windows runs at DIRQL run with the CPU's interrupts masked.
        let dirql = matches!(
            routine,
            Routine::Interrupt | Routine::Timer | Routine::StartIo | Routine::ResetBus
        );
        let was_enabled = dirql && platform.disable_interrupts();
        let start = platform.now_us();
        let st = &mut self.state;
        if routine == Routine::Interrupt && st.phase == InterruptPhase::EnableCallback {
            st.checker.record(
                Rule::I4,
                Routine::Port,
                start,
                "HwInterrupt called while HwEnableInterruptsCallback owns the HBA",
                0,
            );
        }
        // T5: one routine at a time here; the gate is what a multi-channel port uses.
        let overlap = st.gate.enter(routine);
        if handoff::RoutineGate::breaks_t5(routine, overlap) {
            st.checker.record(
                Rule::T5,
                Routine::Port,
                start,
                "HwTimer and HwInterrupt ran at the same time",
                u64::from(overlap),
            );
        }
        st.routine = routine;
        st.routine_stall_us = 0;
        st.routine_deferred = false;
        let mut ctx = PortContext {
            platform: &mut *platform,
            state: &mut self.state,
        };
        let r = f(&mut self.miniport, &mut ctx);
        let end = platform.now_us();
        if dirql {
            platform.restore_interrupts(was_enabled);
        }
        let st = &mut self.state;
        st.checker.routine_done(
            routine,
            end,
            end.saturating_sub(start),
            st.routine_stall_us,
            st.routine_deferred,
        );
        for _ in 0..st.stale_reads.replace(0) {
            st.checker.record(
                Rule::N1,
                routine,
                end,
                "miniport read an SRB after the port took it back",
                0,
            );
        }
        if st.owed_completed && st.owed_next.is_some() {
            st.checker.record(
                Rule::N4,
                routine,
                end,
                "SRB completed successfully without NextRequest or NextLuRequest",
                0,
            );
            st.owed_next = None;
            st.owed_completed = false;
        }
        st.routine = Routine::Port;
        st.gate.exit(routine);
        r
    }

    /// HwFindAdapter then HwInitialize. The miniport is ready for its first request
    /// afterwards.
    pub fn initialize(
        &mut self,
        platform: &mut dyn Platform,
    ) -> Result<AdapterCapabilities, PortError<M::Error>> {
        self.state.has_timer = self.miniport.has_timer();
        let caps = self
            .call(platform, Routine::FindAdapter, |m, ctx| m.find_adapter(ctx))
            .map_err(PortError::FindAdapter)?;
        self.state.caps = Some(caps);
        if !caps.interrupts && !self.state.has_timer {
            let now = platform.now_us();
            self.state.checker.record(
                Rule::T7,
                Routine::FindAdapter,
                now,
                "miniport without interrupts has no HwTimer to poll with",
                0,
            );
        }
        self.call(platform, Routine::Initialize, |m, ctx| m.initialize(ctx))
            .map_err(PortError::Initialize)?;
        self.state.next_request = true;
        Ok(caps)
    }

    /// HwInterrupt for each vector in `vectors`, unless the enable callback holds them
    /// off (I4).
    fn deliver(&mut self, platform: &mut dyn Platform, vectors: u32) {
        let mut vectors = vectors;
        while vectors != 0 {
            #[cfg(test)]
            let hold_off = self.state.phase != InterruptPhase::Normal
                && !self.state.flawed(Flaw::InterruptDuringEnableCallback);
            #[cfg(not(test))]
            let hold_off = self.state.phase != InterruptPhase::Normal;
            if hold_off {
                // I4: HwInterrupt waits until HwDisableInterruptsCallback ran.
                self.state.held_vectors |= vectors;
                return;
            }
            let v = vectors.trailing_zeros() as u16;
            vectors &= vectors - 1;
            self.state.stats.interrupts += 1;
            let claimed = self.call(platform, Routine::Interrupt, |m, ctx| m.interrupt(ctx, v));
            if !claimed {
                self.state.stats.interrupts_not_claimed += 1;
            } else if self.state.own_vectors & (1 << v) == 0 {
                let now = platform.now_us();
                self.state.checker.record(
                    Rule::I1,
                    Routine::Interrupt,
                    now,
                    "HwInterrupt claimed an interrupt on a vector its HBA does not use",
                    u64::from(v),
                );
            }
        }
    }

    /// Runs the deferred callbacks the interrupt flow asks for (I3, I4).
    fn run_deferred(&mut self, platform: &mut dyn Platform) {
        if matches!(
            self.state.phase,
            InterruptPhase::EnableRequested | InterruptPhase::EnableCallback
        ) {
            self.state.phase = InterruptPhase::EnableCallback;
            self.state.stats.enable_callbacks += 1;
            self.call(platform, Routine::EnableInterruptsCallback, |m, ctx| {
                m.enable_interrupts_callback(ctx)
            });
        }
        if self.state.phase == InterruptPhase::DisableRequested {
            self.state.stats.disable_callbacks += 1;
            self.call(platform, Routine::DisableInterruptsCallback, |m, ctx| {
                m.disable_interrupts_callback(ctx)
            });
            self.state.phase = InterruptPhase::Normal;
            let held = core::mem::take(&mut self.state.held_vectors);
            self.deliver(platform, held);
        }
    }

    /// Dispatches one batch of platform events: the timer's expiry first (from then on
    /// the call is dispatched and RequestTimerCall(0) no longer stops it, T3), HwInterrupt
    /// for each vector, the deferred interrupt callbacks, then HwTimer. One routine at a
    /// time (T5).
    pub fn dispatch(&mut self, platform: &mut dyn Platform, events: Events) {
        let mut fire = false;
        if events.ticks > 0 {
            self.state.shadow.ticks(events.ticks);
            fire = self.state.timer.advance(events.ticks);
        }
        self.deliver(platform, events.vectors);
        self.run_deferred(platform);
        if fire {
            self.state.stats.timer_calls += 1;
            let now = platform.now_us();
            self.state.shadow.fired(&mut self.state.checker, now);
            self.call(platform, Routine::Timer, |m, ctx| m.timer(ctx));
        }
        if events.ticks > 0 {
            let now = platform.now_us();
            self.state.shadow.end_dispatch(&mut self.state.checker, now);
            self.check_timeouts(platform);
            self.check_hold(platform);
        }
        self.start_queued(platform);
    }

    /// Passes queued SRBs to HwStartIo while the miniport is ready for them, without
    /// waiting for anything.
    pub fn start_pending(&mut self, platform: &mut dyn Platform) {
        self.start_queued(platform);
    }

    /// Starts what can be started, then waits for one batch of events and dispatches
    /// it. Returns false without waiting when nothing is queued or outstanding and no
    /// timer is pending.
    pub fn run_once(&mut self, platform: &mut dyn Platform) -> bool {
        self.start_queued(platform);
        if self.state.active == 0 && self.state.queued.len == 0 && !self.state.timer.is_pending() {
            return false;
        }
        let events = platform.wait_for_events();
        self.dispatch(platform, events);
        true
    }

    /// Runs until no SRB is queued or outstanding, or until `deadline_us` of platform
    /// time.
    pub fn run_until_idle(
        &mut self,
        platform: &mut dyn Platform,
        deadline_us: u64,
    ) -> Result<(), PortError<M::Error>> {
        loop {
            self.start_queued(platform);
            if self.state.active == 0 && self.state.queued.len == 0 {
                return Ok(());
            }
            if platform.now_us() >= deadline_us {
                return Err(PortError::Deadline);
            }
            let events = platform.wait_for_events();
            self.dispatch(platform, events);
        }
    }

    /// Whether the miniport sent BusChangeDetected since the last call.
    pub fn take_bus_change(&mut self) -> bool {
        core::mem::take(&mut self.state.bus_change)
    }

    /// SRBs queued or held by the miniport.
    pub fn in_flight(&self) -> usize {
        self.state.queued.len + usize::from(self.state.active)
    }

    pub fn active(&self) -> u16 {
        self.state.active
    }

    pub fn stats(&self) -> PortStats {
        self.state.stats
    }

    /// The rule checker: violations and routine times.
    pub fn checker(&self) -> &Checker {
        &self.state.checker
    }

    pub fn interrupt_phase(&self) -> InterruptPhase {
        self.state.phase
    }

    /// Whether new requests are held after a reset (P2, N5).
    pub fn in_reset_hold(&self) -> bool {
        self.state.hold.is_some()
    }

    pub fn timer(&self) -> &TimerService {
        &self.state.timer
    }

    pub fn capabilities(&self) -> Option<AdapterCapabilities> {
        self.state.caps
    }

    pub fn miniport(&self) -> &M {
        &self.miniport
    }

    pub fn miniport_mut(&mut self) -> &mut M {
        &mut self.miniport
    }
}
