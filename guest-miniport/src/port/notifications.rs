//! The notifications a miniport routine sends the port (ScsiPortNotification), its
//! StallExecution, and its access to the SRBs it holds: everything goes through
//! [`PortContext`], which checks the miniport's side of each rule as it is used.

use crate::platform::Platform;

use super::{Hold, InterruptPhase, LuAddress, PortState, Routine, Rule, Srb, SrbHandle, SrbStatus};

/// What a miniport routine may do to the port: the notifications of
/// ScsiPortNotification, StallExecution, and access to the SRBs it holds.
pub struct PortContext<'a> {
    pub(super) platform: &'a mut dyn Platform,
    pub(super) state: &'a mut PortState,
}

impl PortContext<'_> {
    fn violation(&mut self, rule: Rule, message: &'static str, value: u64) {
        let now = self.platform.now_us();
        let routine = self.state.routine;
        self.state
            .checker
            .record(rule, routine, now, message, value);
    }

    /// The SRB behind a handle the miniport holds. A handle the port already took back
    /// reads a blank SRB and is reported (N1).
    pub fn srb(&self, srb: &SrbHandle) -> &Srb {
        if !self.state.owns(srb) {
            self.state.stale_reads.set(self.state.stale_reads.get() + 1);
            return &self.state.limbo;
        }
        &self.state.slots[usize::from(srb.slot)].srb
    }

    pub fn srb_mut(&mut self, srb: &SrbHandle) -> &mut Srb {
        if !self.state.owns(srb) {
            self.violation(
                Rule::N1,
                "miniport wrote an SRB after the port took it back",
                u64::from(srb.tag),
            );
            return &mut self.state.limbo;
        }
        &mut self.state.slots[usize::from(srb.slot)].srb
    }

    /// RequestComplete: the port owns the SRB again (N1: the handle is consumed).
    pub fn request_complete(&mut self, srb: SrbHandle) {
        if !self.state.owns(&srb) {
            // P3: the port completed it already (after a reset hold); once only.
            self.violation(
                Rule::P3,
                "RequestComplete for an SRB the port had already completed",
                u64::from(srb.tag),
            );
            return;
        }
        let slot = usize::from(srb.slot);
        if self.state.slots[slot].srb.srb_status == SrbStatus::Pending {
            self.violation(
                Rule::P3,
                "RequestComplete with SRB_STATUS_PENDING",
                u64::from(srb.tag),
            );
            self.state.slots[slot].srb.srb_status = SrbStatus::HbaError;
        }
        if self.state.owed_next == Some(srb.slot)
            && self.state.slots[slot].srb.srb_status == SrbStatus::Success
        {
            self.state.owed_completed = true;
        }
        if !self.state.retry_slot(srb.slot) {
            self.state.finish_slot(srb.slot);
        }
    }

    /// BusChangeDetected: devices on the bus may have come, gone or changed; the port's
    /// owner should rescan ([`Port::take_bus_change`](super::Port::take_bus_change)).
    pub fn bus_change_detected(&mut self) {
        self.state.stats.bus_changes += 1;
        self.state.bus_change = true;
    }

    fn next_sent(&mut self) {
        self.state.next_request = true;
        self.state.owed_next = None;
        self.state.owed_completed = false;
    }

    /// NextRequest: ready for a request to a target that is not busy (N2).
    pub fn next_request(&mut self) {
        self.next_sent();
    }

    /// NextLuRequest: ready for another request to this LU (N3), and so also for other
    /// LUs. Without tagged queuing it counts as NextRequest only, and is reported.
    pub fn next_lu_request(&mut self, path: u8, target: u8, lun: u8) {
        self.next_sent();
        if !self.state.caps.is_some_and(|c| c.tagged_queuing) {
            self.violation(
                Rule::N3,
                "NextLuRequest without tagged queuing",
                u64::from(lun),
            );
            return;
        }
        let address = LuAddress { path, target, lun };
        if let Some(i) = self.state.lu_index(address) {
            if let Some(l) = self.state.lus[i].as_mut() {
                l.ready = true;
            }
        }
    }

    /// RequestTimerCall(HwTimer, interval_us): T1 to T3.
    pub fn request_timer_call(&mut self, interval_us: u32) {
        self.state.stats.timer_requests += 1;
        if !self.state.has_timer {
            self.violation(
                Rule::N6,
                "RequestTimerCall from a miniport without HwTimer",
                u64::from(interval_us),
            );
            return;
        }
        self.state.timer.request(interval_us);
        self.state.shadow.request(interval_us);
    }

    /// ResetDetected: the HBA saw a bus reset. New requests are held for the reset hold
    /// period; the active ones must still be completed by then (N5).
    pub fn reset_detected(&mut self) {
        self.state.stats.resets_detected += 1;
        if self.state.hold.is_none() {
            let now = self.platform.now_us();
            self.state.hold = Some(Hold {
                until_us: now + u64::from(self.state.config.reset_hold_us),
                rule: Rule::N5,
                slots: self.state.active_mask(),
            });
        }
    }

    /// CallEnableInterrupts, from HwInterrupt: run HwEnableInterruptsCallback deferred,
    /// with HwInterrupt held off (I3, N7).
    pub fn call_enable_interrupts(&mut self) {
        if self.state.routine != Routine::Interrupt || self.state.phase != InterruptPhase::Normal {
            self.violation(Rule::N7, "CallEnableInterrupts outside HwInterrupt", 0);
            return;
        }
        self.state.routine_deferred = true;
        self.state.phase = InterruptPhase::EnableRequested;
    }

    /// CallDisableInterrupts, from HwEnableInterruptsCallback: run
    /// HwDisableInterruptsCallback, after which HwInterrupt is called again (I4, N7).
    pub fn call_disable_interrupts(&mut self) {
        if self.state.routine != Routine::EnableInterruptsCallback {
            self.violation(
                Rule::N7,
                "CallDisableInterrupts outside HwEnableInterruptsCallback",
                0,
            );
            return;
        }
        self.state.phase = InterruptPhase::DisableRequested;
    }

    /// StallExecution: busy-waits, and the port accounts for it (S1, P4).
    pub fn stall_execution(&mut self, us: u32) {
        let st = &mut self.state.stats;
        st.stall_calls += 1;
        st.stall_us_total += u64::from(us);
        st.stall_us_max = st.stall_us_max.max(us);
        self.state.routine_stall_us += u64::from(us);
        if us > self.state.checker.config.max_stall_us {
            let now = self.platform.now_us();
            self.state.checker.stall(self.state.routine, now, us);
        } else {
            self.state.checker.stall(self.state.routine, 0, us);
        }
        self.platform.stall_us(us);
    }

    pub fn now_us(&self) -> u64 {
        self.platform.now_us()
    }

    /// The platform's MSI-X message for `entry` (for the miniport to program the HBA).
    /// The entry counts as the miniport's own interrupt from then on (I1).
    pub fn msi_message(&mut self, entry: u16) -> Option<(u64, u32)> {
        let m = self.platform.msi_message(entry);
        if m.is_some() && entry < 32 {
            self.state.own_vectors |= 1 << entry;
        }
        m
    }

    /// The line-based (INTx) interrupt: platform event `entry` is this HBA's shared
    /// line from now on (I1: HwInterrupt must still tell from the HBA whether it was).
    pub fn connect_line_interrupt(&mut self, entry: u16) {
        if entry < 32 {
            self.state.own_vectors |= 1 << entry;
        }
    }

    /// Whether a RequestTimerCall is pending.
    pub fn timer_pending(&self) -> bool {
        self.state.timer.is_pending()
    }
}
