//! HwInterrupt: claims an interrupt only when the device has something new for it
//! (I1), per MSI-X vector or from the ISR status on the shared INTx line.

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
                    self.drain_requests(ctx, Source::Interrupt, u16::MAX);
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
                    self.drain_requests(ctx, Source::Interrupt, u16::MAX);
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
}
