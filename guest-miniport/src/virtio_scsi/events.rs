//! The event queue: buffers posted for the device's events, and what each event means
//! to the port (ResetDetected, BusChangeDetected).

use core::ptr;

use crate::port::PortContext;
use crate::virtio::{Buffer, Transport};
use crate::wire::*;

use super::{Extension, EVENT_BUFFERS, NO_SLOT};

impl<T: Transport> Extension<T> {
    pub(super) fn post_event_buffer(&mut self, i: u8) {
        let buf = Buffer {
            addr: self.event_addr + (usize::from(i) * EVENT_SIZE) as u64,
            len: EVENT_SIZE as u32,
        };
        if let Ok(head) = self.event.add(&[], &[buf]) {
            self.event_heads[usize::from(head)] = i;
        }
    }

    pub(super) fn drain_events(&mut self, ctx: &mut PortContext<'_>) -> bool {
        let mut any = false;
        while let Some(used) = self.event.pop_used() {
            any = true;
            let Ok((head, _)) = used else {
                self.stats.stale_completions += 1;
                continue;
            };
            let i = core::mem::replace(&mut self.event_heads[usize::from(head)], NO_SLOT);
            if usize::from(i) >= EVENT_BUFFERS {
                self.stats.stale_completions += 1;
                continue;
            }
            let at = usize::from(i) * EVENT_SIZE;
            let mut raw = [0u8; EVENT_SIZE];
            // SAFETY: event buffer `i` is inside the event page; the device wrote it
            // before returning it. Cleared before the buffer goes back to the device.
            unsafe {
                let p = self.event_ptr.as_ptr().add(at);
                ptr::copy_nonoverlapping(p, raw.as_mut_ptr(), EVENT_SIZE);
                ptr::write_bytes(p, 0, EVENT_SIZE);
            }
            self.post_event_buffer(i);
            let event = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if event & VIRTIO_SCSI_T_EVENTS_MISSED != 0 {
                // Something happened that we were not told: look at the bus again.
                self.stats.events_missed += 1;
                ctx.bus_change_detected();
            }
            if event == VIRTIO_SCSI_T_NO_EVENT {
                continue;
            }
            self.stats.events += 1;
            match event & !VIRTIO_SCSI_T_EVENTS_MISSED {
                VIRTIO_SCSI_T_TRANSPORT_RESET => {
                    // The target was reset, added or removed (rescan, hard, removed):
                    // N5 holds new requests while the active ones still complete, and
                    // the port's owner rescans the bus.
                    self.stats.transport_resets += 1;
                    ctx.reset_detected();
                    ctx.bus_change_detected();
                    // N5: every active request must complete before the hold ends, and
                    // a device that announces a reset may still hold a command it lost
                    // (found by explore). Reset the LUs with requests outstanding, so the
                    // device returns them, or a device reset ends them, in time.
                    if self.outstanding() > 0 {
                        self.start_bus_reset(ctx);
                    }
                }
                VIRTIO_SCSI_T_PARAM_CHANGE => {
                    self.stats.param_changes += 1;
                    ctx.bus_change_detected();
                }
                _ => {}
            }
        }
        if any {
            self.kick(EVENTQ);
        }
        any
    }
}
