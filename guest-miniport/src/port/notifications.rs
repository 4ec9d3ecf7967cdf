//! The notifications a miniport routine sends the port (ScsiPortNotification), its
//! StallExecution, its access to the SRBs it holds and to the state it shares with
//! HwInterrupt (SynchronizeAccess): everything goes through [`PortContext`], which
//! checks the miniport's side of each rule as it is used.
//!
//! Each notification takes the port's state lock for as long as it runs. Whatever locks
//! it, and whatever hands out a guard that holds it, takes `&mut self`, so a routine
//! cannot lock it twice.

use core::cell::Cell;
use core::ops::{Deref, DerefMut};

use crate::platform::Platform;

use super::locks::InterruptShared;
use super::{
    Hold, InterruptPhase, LuAddress, PortCore, PortState, Routine, Rule, Srb, SrbHandle, SrbStatus,
};

/// What a miniport routine may do to the port: the notifications of
/// ScsiPortNotification, StallExecution, SynchronizeAccess, and access to the SRBs it
/// holds.
pub struct PortContext<'a> {
    pub(super) platform: &'a mut dyn Platform,
    pub(super) core: &'a PortCore,
    /// The CPU the routine runs on.
    pub(super) cpu: usize,
    pub(super) routine: Routine,
    /// The routine holds the interrupt lock now (T5).
    pub(super) interrupt_lock: bool,
    /// StallExecution so far in this call (I3, P4).
    pub(super) stall_us: u64,
    /// CallEnableInterrupts in this call (I3).
    pub(super) deferred: bool,
    /// Reads through handles the port had already taken back (N1).
    pub(super) stale_reads: Cell<u32>,
}

/// An SRB the miniport reads; the port's state stays locked while it does.
pub struct SrbRef<'a> {
    state: spin::MutexGuard<'a, PortState>,
    /// `None`: a stale handle, which reads the blank SRB.
    slot: Option<usize>,
}

impl Deref for SrbRef<'_> {
    type Target = Srb;
    fn deref(&self) -> &Srb {
        match self.slot {
            Some(i) => &self.state.slots[i].srb,
            None => &self.state.limbo,
        }
    }
}

/// An SRB the miniport writes; the port's state stays locked while it does.
pub struct SrbMut<'a>(SrbRef<'a>);

impl Deref for SrbMut<'_> {
    type Target = Srb;
    fn deref(&self) -> &Srb {
        &self.0
    }
}

impl DerefMut for SrbMut<'_> {
    fn deref_mut(&mut self) -> &mut Srb {
        let r = &mut self.0;
        match r.slot {
            Some(i) => &mut r.state.slots[i].srb,
            None => &mut r.state.limbo,
        }
    }
}

impl PortContext<'_> {
    fn violation(&mut self, rule: Rule, message: &'static str, value: u64) {
        let now = self.platform.now_us();
        let (cpu, routine) = (self.cpu, self.routine);
        self.core
            .state
            .lock()
            .checker
            .record_on(cpu, rule, routine, now, message, value);
    }

    /// The SRB behind a handle the miniport holds. A handle the port already took back
    /// reads a blank SRB and is reported (N1).
    pub fn srb(&mut self, srb: &SrbHandle) -> SrbRef<'_> {
        let state = self.core.state.lock();
        let slot = state.owns(srb).then_some(usize::from(srb.slot));
        if slot.is_none() {
            self.stale_reads.set(self.stale_reads.get() + 1);
        }
        SrbRef { state, slot }
    }

    pub fn srb_mut(&mut self, srb: &SrbHandle) -> SrbMut<'_> {
        let mut state = self.core.state.lock();
        let slot = state.owns(srb).then_some(usize::from(srb.slot));
        if slot.is_none() {
            let now = self.platform.now_us();
            state.checker.record_on(
                self.cpu,
                Rule::N1,
                self.routine,
                now,
                "miniport wrote an SRB after the port took it back",
                u64::from(srb.tag),
            );
        }
        SrbMut(SrbRef { state, slot })
    }

    /// RequestComplete: the port owns the SRB again (N1: the handle is consumed).
    pub fn request_complete(&mut self, srb: SrbHandle) {
        let now = self.platform.now_us();
        let (cpu, routine) = (self.cpu, self.routine);
        let mut guard = self.core.state.lock();
        let st = &mut *guard;
        if !st.owns(&srb) {
            // P3: the port completed it already (after a reset hold); once only.
            st.checker.record_on(
                cpu,
                Rule::P3,
                routine,
                now,
                "RequestComplete for an SRB the port had already completed",
                u64::from(srb.tag),
            );
            return;
        }
        let slot = usize::from(srb.slot);
        if st.slots[slot].srb.srb_status == SrbStatus::Pending {
            st.checker.record_on(
                cpu,
                Rule::P3,
                routine,
                now,
                "RequestComplete with SRB_STATUS_PENDING",
                u64::from(srb.tag),
            );
            st.slots[slot].srb.srb_status = SrbStatus::HbaError;
        }
        if st.owed_next == Some(srb.slot) && st.slots[slot].srb.srb_status == SrbStatus::Success {
            st.owed_completed = true;
        }
        if !st.retry_slot(srb.slot) {
            st.finish_slot(srb.slot);
        }
    }

    /// BusChangeDetected: devices on the bus may have come, gone or changed; the port's
    /// owner should rescan ([`Port::take_bus_change`](super::Port::take_bus_change)).
    pub fn bus_change_detected(&mut self) {
        let mut st = self.core.state.lock();
        st.stats.bus_changes += 1;
        st.bus_change = true;
    }

    fn next_sent(st: &mut PortState) {
        st.next_request = true;
        st.owed_next = None;
        st.owed_completed = false;
    }

    /// NextRequest: ready for a request to a target that is not busy (N2).
    pub fn next_request(&mut self) {
        Self::next_sent(&mut self.core.state.lock());
    }

    /// NextLuRequest: ready for another request to this LU (N3), and so also for other
    /// LUs. Without tagged queuing it counts as NextRequest only, and is reported.
    pub fn next_lu_request(&mut self, path: u8, target: u8, lun: u8) {
        let tagged = {
            let mut st = self.core.state.lock();
            Self::next_sent(&mut st);
            let tagged = st.caps.is_some_and(|c| c.tagged_queuing);
            let address = LuAddress { path, target, lun };
            if let Some(i) = st.lu_index(address).filter(|_| tagged) {
                if let Some(l) = st.lus[i].as_mut() {
                    l.ready = true;
                }
            }
            tagged
        };
        if !tagged {
            self.violation(
                Rule::N3,
                "NextLuRequest without tagged queuing",
                u64::from(lun),
            );
        }
    }

    /// RequestTimerCall(HwTimer, interval_us): T1 to T3.
    pub fn request_timer_call(&mut self, interval_us: u32) {
        let has_timer = {
            let mut st = self.core.state.lock();
            st.stats.timer_requests += 1;
            if st.has_timer {
                st.timer.request(interval_us);
                st.shadow.request(interval_us);
            }
            st.has_timer
        };
        if !has_timer {
            self.violation(
                Rule::N6,
                "RequestTimerCall from a miniport without HwTimer",
                u64::from(interval_us),
            );
        }
    }

    /// ResetDetected: the HBA saw a bus reset. New requests are held for the reset hold
    /// period; the active ones must still be completed by then (N5).
    pub fn reset_detected(&mut self) {
        let now = self.platform.now_us();
        let mut st = self.core.state.lock();
        st.stats.resets_detected += 1;
        if st.hold.is_none() {
            st.hold = Some(Hold {
                until_us: now + u64::from(st.config.reset_hold_us),
                rule: Rule::N5,
                slots: st.active_mask(),
            });
        }
    }

    /// CallEnableInterrupts, from HwInterrupt: run HwEnableInterruptsCallback deferred,
    /// on this CPU, with HwInterrupt held off (I3, N7).
    pub fn call_enable_interrupts(&mut self) {
        let allowed = {
            let mut st = self.core.state.lock();
            let allowed = self.routine == Routine::Interrupt && st.phase == InterruptPhase::Normal;
            if allowed {
                st.phase = InterruptPhase::EnableRequested;
                st.phase_cpu = self.cpu;
            }
            allowed
        };
        if !allowed {
            self.violation(Rule::N7, "CallEnableInterrupts outside HwInterrupt", 0);
            return;
        }
        self.deferred = true;
    }

    /// CallDisableInterrupts, from HwEnableInterruptsCallback: run
    /// HwDisableInterruptsCallback, after which HwInterrupt is called again (I4, N7).
    pub fn call_disable_interrupts(&mut self) {
        if self.routine != Routine::EnableInterruptsCallback {
            self.violation(
                Rule::N7,
                "CallDisableInterrupts outside HwEnableInterruptsCallback",
                0,
            );
            return;
        }
        self.core.state.lock().phase = InterruptPhase::DisableRequested;
    }

    /// StallExecution: busy-waits, and the port accounts for it (S1, P4).
    pub fn stall_execution(&mut self, us: u32) {
        self.stall_us += u64::from(us);
        {
            let mut guard = self.core.state.lock();
            let st = &mut *guard;
            st.stats.stall_calls += 1;
            st.stats.stall_us_total += u64::from(us);
            st.stats.stall_us_max = st.stats.stall_us_max.max(us);
            let now = if us > st.checker.config.max_stall_us {
                self.platform.now_us()
            } else {
                0
            };
            st.checker.stall(self.cpu, self.routine, now, us);
        }
        self.platform.stall_us(us);
    }

    pub fn now_us(&self) -> u64 {
        self.platform.now_us()
    }

    /// The CPU this routine runs on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Until when every interrupt that reached the CPU that takes the interrupts has gone
    /// to HwInterrupt (µs): now on that CPU itself. A watchdog for lost interrupts judges
    /// by it, so that an interrupt CPU the host has not run for a while does not look as
    /// if it lost them.
    pub fn interrupts_taken_until_us(&self) -> u64 {
        let now = self.platform.now_us();
        self.core.interrupts_taken_until(self.cpu, now)
    }

    /// The platform's MSI-X message for `entry` (for the miniport to program the HBA),
    /// addressed to the CPU the routing gives interrupts. The entry counts as the
    /// miniport's own interrupt from then on (I1).
    pub fn msi_message(&mut self, entry: u16) -> Option<(u64, u32)> {
        let m = self
            .platform
            .msi_message(entry, self.core.routing.interrupt_cpu);
        if m.is_some() && entry < 32 {
            self.core.state.lock().own_vectors |= 1 << entry;
        }
        m
    }

    /// The line-based (INTx) interrupt: platform event `entry` is this HBA's shared
    /// line from now on (I1: HwInterrupt must still tell from the HBA whether it was).
    pub fn connect_line_interrupt(&mut self, entry: u16) {
        if entry < 32 {
            self.core.state.lock().own_vectors |= 1 << entry;
        }
    }

    /// Whether a RequestTimerCall is pending.
    pub fn timer_pending(&mut self) -> bool {
        self.core.state.lock().timer.is_pending()
    }

    /// SynchronizeAccess (StorPortSynchronizeAccess): runs `f` on the state the miniport
    /// shares with HwInterrupt, holding the interrupt lock, which HwInterrupt holds
    /// already (T5).
    pub fn synchronize_access<T, R>(
        &mut self,
        shared: &InterruptShared<T>,
        f: impl FnOnce(&mut PortContext<'_>, &mut T) -> R,
    ) -> R {
        let core = self.core;
        let lock = (!self.interrupt_lock).then(|| core.interrupt_lock.acquire(self.platform));
        let held = core::mem::replace(&mut self.interrupt_lock, true);
        let r = self.open(shared, f);
        self.interrupt_lock = held;
        if let Some(lock) = lock {
            core.interrupt_lock.release(lock, self.platform);
        }
        r
    }

    /// Runs `f` on the state the miniport shares with HwInterrupt without taking the
    /// interrupt lock. Sound, but when another routine is in the state at the same
    /// time, T5 is broken, and the checker says so. Only a miniport bug does this.
    pub fn unsynchronized_access<T, R>(
        &mut self,
        shared: &InterruptShared<T>,
        f: impl FnOnce(&mut PortContext<'_>, &mut T) -> R,
    ) -> R {
        self.open(shared, f)
    }

    fn open<T, R>(
        &mut self,
        shared: &InterruptShared<T>,
        f: impl FnOnce(&mut PortContext<'_>, &mut T) -> R,
    ) -> R {
        let (mut state, breach) = shared.open(self.routine, self.interrupt_lock);
        if let Some(offender) = breach {
            let now = self.platform.now_us();
            self.core.state.lock().checker.record_on(
                self.cpu,
                Rule::T5,
                offender,
                now,
                "state shared with HwInterrupt reached without the interrupt lock while another routine was in it",
                self.cpu as u64,
            );
        }
        f(self, &mut state)
    }
}
