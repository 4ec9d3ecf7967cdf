//! HwInterrupt: claims an interrupt only when the device has something new for it
//! (I1), per MSI-X vector or from the ISR status on the shared INTx line. With
//! `deferred=on` it only masks the request queue and asks for the deferred callbacks,
//! whose work is here too (I3, I4).

use crate::port::PortContext;
use crate::virtio::Transport;
use crate::wire::*;

use super::{Extension, InterruptMode, Source};

impl<T: Transport> Extension<T> {
    /// HwInterrupt for MSI-X table entry (or platform event) `vector`.
    pub(super) fn take_interrupt(&mut self, ctx: &mut PortContext<'_>, vector: u16) -> bool {
        match self.settings.interrupts {
            InterruptMode::None => false,
            InterruptMode::Intx => {
                // I1: one line for everything; the ISR says whether it was us, and why
                // (reading it clears it). Each bit is looked at on its own.
                let isr = self.transport.read_isr();
                let mut mine = false;
                if isr & VIRTIO_PCI_ISR_QUEUE != 0 {
                    self.drain_control(ctx, Source::Interrupt);
                    self.drain_events(ctx);
                    self.take_requests(ctx);
                    mine = true;
                }
                if isr & VIRTIO_PCI_ISR_CONFIG != 0 {
                    self.stats.config_changes += 1;
                    self.config_generation = self.transport.config_generation();
                    mine = true;
                }
                mine
            }
            InterruptMode::Msix => {
                // I1: ours only if a queue on this vector has new used entries, or the
                // config generation moved.
                let mut mine = false;
                if self.queue_vector[usize::from(CONTROLQ)] == vector && self.control.can_pop() {
                    mine |= self.drain_control(ctx, Source::Interrupt);
                }
                if self.queue_vector[usize::from(EVENTQ)] == vector && self.event.can_pop() {
                    mine |= self.drain_events(ctx);
                }
                if self.queue_vector[usize::from(REQUESTQ)] == vector && self.request.can_pop() {
                    self.take_requests(ctx);
                    mine = true;
                }
                if self.config_vector == vector {
                    let generation = self.transport.config_generation();
                    if generation != self.config_generation {
                        self.config_generation = generation;
                        self.stats.config_changes += 1;
                        mine = true;
                    }
                }
                mine
            }
        }
    }

    /// HwInterrupt's part for the request queue: completes what the device returned, or
    /// with `deferred=on` masks the queue at the device and leaves the completing to
    /// HwEnableInterruptsCallback (I3; N7: CallEnableInterrupts from HwInterrupt).
    fn take_requests(&mut self, ctx: &mut PortContext<'_>) {
        if self.settings.deferred {
            self.request.suppress_interrupts();
            ctx.call_enable_interrupts();
        } else {
            self.drain_requests(ctx, Source::Interrupt, u16::MAX);
        }
    }

    /// HwEnableInterruptsCallback's work (I4): HwInterrupt is held off, and the queue
    /// stays masked, while it completes what the device returned.
    pub(super) fn finish_deferred(&mut self, ctx: &mut PortContext<'_>) {
        self.drain_requests(ctx, Source::Interrupt, u16::MAX);
    }

    /// HwDisableInterruptsCallback's work (I4): unmasks the request queue, then looks
    /// at the used ring once more. A completion that came after the enable callback's
    /// drain and before the unmask raised no interrupt, and none will come for it
    /// (`recheck` false is the planted bug `deferred-no-recheck`).
    pub(super) fn resume_interrupts(&mut self, ctx: &mut PortContext<'_>, recheck: bool) {
        self.request.unsuppress_interrupts();
        if recheck {
            let found = self.drain_requests(ctx, Source::Interrupt, u16::MAX);
            self.stats.completed_after_unmask += u64::from(found);
        }
    }
}
