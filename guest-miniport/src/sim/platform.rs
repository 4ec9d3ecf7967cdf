//! Deterministic virtual time and interrupt delivery for the simulated machine.

use crate::platform::{CpuWork, Events, Platform};

use super::device::{SharedWorld, MSI_BASE_VECTOR};

/// Deterministic virtual time: `wait_for_events` returns pending interrupts at once,
/// otherwise jumps to the next tick or to the next held request or TMF that is due,
/// whichever comes first.
pub struct SimPlatform(pub SharedWorld);

impl Platform for SimPlatform {
    fn now_us(&self) -> u64 {
        self.0.borrow().now_us
    }
    fn stall_us(&mut self, us: u32) {
        let mut w = self.0.borrow_mut();
        w.now_us += u64::from(us);
        w.stalled_us += u64::from(us);
    }
    fn tick_us(&self) -> u32 {
        self.0.borrow().tick_us
    }
    fn wait_for_events(&mut self) -> Events {
        let mut w = self.0.borrow_mut();
        if w.pending_vectors == 0 {
            let next = w
                .next_due()
                .map_or(w.next_tick_us, |d| d.min(w.next_tick_us));
            w.now_us = w.now_us.max(next);
            w.complete_due();
        } else {
            // Interrupt latency.
            w.now_us += 5;
        }
        let mut ticks = 0;
        while w.next_tick_us <= w.now_us {
            ticks += 1;
            w.next_tick_us += u64::from(w.tick_us);
        }
        Events {
            ticks,
            vectors: core::mem::take(&mut w.pending_vectors),
        }
    }
    fn msi_message(&self, entry: u16, cpu: usize) -> Option<(u64, u32)> {
        (entry < 32 && cpu == 0).then_some((0xfee0_0000, MSI_BASE_VECTOR + u32::from(entry)))
    }
    fn with_secondaries(&mut self, _: &dyn CpuWork, body: &mut dyn FnMut(&mut dyn Platform)) {
        body(self);
    }
}
