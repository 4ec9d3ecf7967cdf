//! The reset hold and SRB timeouts: an SRB past its timeout resets the bus (P1); after
//! HwResetBus or ResetDetected new requests wait out the hold, and what the miniport
//! still holds when it ends is taken back and reported (P2, N5).

use crate::platform::Platform;

#[cfg(test)]
use super::Flaw;
use super::{Miniport, Port, Routine, Rule, SlotState, SrbStatus, MAX_SRBS};

/// A reset hold period (P2 after HwResetBus, N5 after ResetDetected).
#[derive(Clone, Copy, Debug)]
pub(super) struct Hold {
    pub(super) until_us: u64,
    pub(super) rule: Rule,
    /// Slots active when the reset happened: each must be completed before the end.
    pub(super) slots: u32,
}

impl<M: Miniport> Port<M> {
    /// Whether new requests are held now (P2, N5).
    pub(super) fn holding(&self) -> bool {
        self.core.state.lock().holding()
    }

    /// P1: SRBs past their timeout reset the bus. The checker's own view: an SRB past
    /// its timeout by more than a tick with no reset since is a port violation. Both
    /// judge by the interrupt CPU's clock: a completion it has not looked at yet is not
    /// late.
    pub(super) fn check_timeouts(&self, platform: &mut dyn Platform) {
        let cpu = platform.cpu();
        let now = self.core.interrupts_taken_until(cpu, platform.now_us());
        let expired = {
            let st = self.core.state.lock();
            #[cfg(test)]
            let broken = st.flawed(Flaw::NoTimeoutReset);
            #[cfg(not(test))]
            let broken = false;
            if st.hold.is_none() && !broken {
                st.slots
                    .iter()
                    .find(|s| {
                        s.state == SlotState::Active
                            && now.saturating_sub(s.started_us) > u64::from(s.srb.timeout_us)
                    })
                    .map(|s| s.srb.path)
            } else {
                None
            }
        };
        if let Some(path) = expired {
            self.core.state.lock().stats.srb_timeouts += 1;
            self.reset_bus(platform, path);
        }
        let mut guard = self.core.state.lock();
        let st = &mut *guard;
        let grace = u64::from(st.config.tick_us);
        for i in 0..MAX_SRBS {
            let s = &mut st.slots[i];
            let deadline = s.started_us + u64::from(s.srb.timeout_us) + grace;
            if s.state == SlotState::Active
                && !s.timeout_flagged
                && now > deadline
                && st.last_reset_us < deadline
                && st.hold.is_none()
            {
                s.timeout_flagged = true;
                let tag = s.srb.tag;
                st.checker.record_on(
                    cpu,
                    Rule::P1,
                    Routine::Port,
                    now,
                    "SRB outstanding past its timeout without HwResetBus",
                    u64::from(tag),
                );
            }
        }
    }

    /// End of a reset hold: what the miniport still holds is a violation (P2 or N5);
    /// the port takes it back with SRB_STATUS_BUS_RESET. The hold ends once the
    /// interrupt CPU has looked at every interrupt that came before its end.
    pub(super) fn check_hold(&self, platform: &mut dyn Platform) {
        let now = platform.now_us();
        let taken = self.core.interrupts_taken_until(platform.cpu(), now);
        let mut guard = self.core.state.lock();
        let st = &mut *guard;
        let Some(hold) = st.hold else {
            return;
        };
        if taken < hold.until_us {
            return;
        }
        st.hold = None;
        for i in 0..MAX_SRBS {
            if hold.slots & (1 << i) == 0 || st.slots[i].state != SlotState::Active {
                continue;
            }
            let tag = st.slots[i].srb.tag;
            let message = if hold.rule == Rule::N5 {
                "request active at ResetDetected not completed by the end of the reset hold"
            } else {
                "request still outstanding when the reset hold ended"
            };
            st.checker.record_on(
                platform.cpu(),
                hold.rule,
                Routine::Port,
                now,
                message,
                u64::from(tag),
            );
            st.slots[i].srb.srb_status = SrbStatus::BusReset;
            st.stats.reclaimed += 1;
            st.finish_slot(i as u8);
        }
        st.next_request = true;
    }

    /// HwResetBus on `path` (asked for by the caller, or after an SRB timeout, P1).
    /// Starts the reset hold: what is still active when it ends is a violation (P2).
    pub fn reset_bus(&self, platform: &mut dyn Platform, path: u8) -> bool {
        let now = platform.now_us();
        let slots = {
            let mut st = self.core.state.lock();
            st.stats.bus_resets += 1;
            st.last_reset_us = now;
            st.active_mask()
        };
        let ok = self.call(platform, Routine::ResetBus, |m, ctx| m.reset_bus(ctx, path));
        // A ResetDetected from inside HwResetBus is part of this reset.
        let mut st = self.core.state.lock();
        st.hold = Some(Hold {
            until_us: now + u64::from(st.config.reset_hold_us),
            rule: Rule::P2,
            slots: slots & st.active_mask(),
        });
        st.next_request = true;
        ok
    }
}
