//! Bus resets: HwResetBus sends a LOGICAL UNIT RESET (or I_T NEXUS RESET) TMF per LU
//! with requests outstanding and returns at once (S1); the answers are taken from the
//! control queue by interrupt or poll, and a failed or unanswered TMF escalates to a
//! virtio device reset, after which the device is set up again.

use core::ptr;

use crate::contract::PlantedBug;
use crate::port::{PortContext, SrbStatus};
use crate::virtio::{Buffer, Transport, MAX_QUEUE_SIZE};
use crate::wire::*;

use super::trail::push;
use super::{
    Extension, ResetPhase, ResetTmf, Source, VirtioScsiError, DEVICE_RESET_TIMEOUT_US, MAX_TMFS,
    NO_SLOT, TMF_RESP_OFFSET, TMF_SLOT_BYTES,
};

impl<T: Transport> Extension<T> {
    /// HwResetBus: sends the TMFs and returns; never waits for their answers (S1).
    pub(super) fn start_bus_reset(&mut self, ctx: &mut PortContext<'_>) -> bool {
        if self.dead.is_some() {
            return false;
        }
        if self.reset != ResetPhase::Idle {
            // Already resetting: the running reset covers this one.
            return true;
        }
        let now = ctx.now_us();
        // The LUs (targets, for a nexus reset) with requests outstanding; LUN 0 of
        // target 0 when there are none, so a reset always reaches the device.
        let nexus = self.settings.reset == ResetTmf::ItNexus;
        let mut lus = [None::<(u8, u8)>; MAX_TMFS];
        let mut n = 0;
        for r in self.requests.iter().flatten() {
            let lu = (r.target, if nexus { 0 } else { r.lun });
            if !lus[..n].contains(&Some(lu)) && n < MAX_TMFS {
                lus[n] = Some(lu);
                n += 1;
            }
        }
        if n == 0 {
            lus[0] = Some((0, 0));
        }
        self.reset_lus = lus;
        self.reset = ResetPhase::Tmf {
            started_us: now,
            deadline_us: now + self.settings.tmf_timeout_us,
            failed: false,
            nexus,
        };
        let subtype = if nexus {
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET
        } else {
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET
        };
        for (target, lun) in lus.into_iter().flatten() {
            if !self.send_tmf(subtype, target, lun) {
                // No room on the control queue: go straight to the device reset.
                self.device_reset(ctx, now);
                return true;
            }
        }
        self.kick(CONTROLQ);
        self.arm_timer();
        if self.settings.bug == PlantedBug::TmfSpin {
            self.spin_for_tmfs(ctx);
        }
        true
    }

    /// Planted bug `tmf-spin`: waits in HwResetBus for the answers, stalling between
    /// looks, until the reset ends or its TMF deadline passes (S1, P4).
    fn spin_for_tmfs(&mut self, ctx: &mut PortContext<'_>) {
        while let ResetPhase::Tmf { deadline_us, .. } = self.reset {
            if ctx.now_us() >= deadline_us {
                break;
            }
            ctx.stall_execution(100);
            self.drain_control(ctx, Source::Poll);
        }
    }

    /// Sends one TMF on the control queue. False when the queue or the TMF slots are
    /// full.
    fn send_tmf(&mut self, subtype: u32, target: u8, lun: u8) -> bool {
        let Some(slot) = self.tmfs.iter().position(Option::is_none) else {
            return false;
        };
        let mut req = [0u8; TMF_REQ_SIZE];
        req[0..4].copy_from_slice(&VIRTIO_SCSI_T_TMF.to_le_bytes());
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8] = 1;
        req[9] = target;
        req[10] = 0x40; // flat addressing, as for commands
        req[11] = lun;
        let base = self.tmf_slot_ptr(slot);
        // SAFETY: the slot is inside the TMF page and free (no chain references it).
        // The response byte starts as a value no device sends, to tell it was written.
        unsafe {
            ptr::copy_nonoverlapping(req.as_ptr(), base, TMF_REQ_SIZE);
            base.add(TMF_RESP_OFFSET).write_volatile(u8::MAX);
        }
        let addr = self.tmf_addr + (slot * TMF_SLOT_BYTES) as u64;
        let out = Buffer {
            addr,
            len: TMF_REQ_SIZE as u32,
        };
        let resp = Buffer {
            addr: addr + TMF_RESP_OFFSET as u64,
            len: 1,
        };
        let Ok(head) = self.control.add(&[out], &[resp]) else {
            return false;
        };
        self.tmfs[slot] = Some(head);
        self.stats.tmfs_sent += 1;
        true
    }

    fn tmf_slot_ptr(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < MAX_TMFS, and MAX_TMFS * TMF_SLOT_BYTES fits in the TMF page.
        unsafe { self.tmf_ptr.as_ptr().add(slot * TMF_SLOT_BYTES) }
    }

    /// Takes the TMF answers off the control queue; when the last one is in, finishes
    /// the bus reset.
    pub(super) fn drain_control(&mut self, ctx: &mut PortContext<'_>, source: Source) -> bool {
        let mut any = false;
        while let Some(used) = self.control.pop_used() {
            any = true;
            let Ok((head, _)) = used else {
                self.stats.stale_completions += 1;
                continue;
            };
            let Some(slot) = self.tmfs.iter().position(|&t| t == Some(head)) else {
                self.stats.stale_completions += 1;
                continue;
            };
            self.tmfs[slot] = None;
            // SAFETY: the response byte is inside the TMF page; the device wrote it
            // before returning the chain.
            let response = unsafe { self.tmf_slot_ptr(slot).add(TMF_RESP_OFFSET).read_volatile() };
            if matches!(
                response,
                VIRTIO_SCSI_S_FUNCTION_COMPLETE | VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
            ) {
                self.stats.tmfs_completed += 1;
            } else {
                self.stats.tmfs_failed += 1;
                if let ResetPhase::Tmf { failed, .. } = &mut self.reset {
                    *failed = true;
                }
            }
        }
        if let ResetPhase::Tmf {
            started_us,
            failed,
            nexus,
            ..
        } = self.reset
        {
            if self.tmfs.iter().all(Option::is_none) {
                if failed && source == Source::Interrupt {
                    // I2: a device reset sets the whole device up again, too much for
                    // HwInterrupt on a busy host (found by explore); HwTimer, armed while
                    // the reset lasts, escalates at its next tick.
                    self.arm_timer();
                } else {
                    self.finish_tmf_reset(ctx, source, started_us, failed, nexus);
                }
            }
        }
        any
    }

    /// Every TMF is answered. The device put what they aborted on the used ring before
    /// answering; take it, then complete as reset whatever the device kept (N5).
    fn finish_tmf_reset(
        &mut self,
        ctx: &mut PortContext<'_>,
        source: Source,
        started_us: u64,
        failed: bool,
        nexus: bool,
    ) {
        self.drain_requests(ctx, source, u16::MAX);
        if failed {
            self.device_reset(ctx, started_us);
            return;
        }
        let reset = self.reset_lus;
        self.abandon(ctx, SrbStatus::BusReset, |t, l| {
            reset
                .iter()
                .flatten()
                .any(|&(rt, rl)| rt == t && (nexus || rl == l))
        });
        self.end_reset(ctx, started_us);
    }

    fn end_reset(&mut self, ctx: &mut PortContext<'_>, started_us: u64) {
        let now = ctx.now_us();
        let took = now.saturating_sub(started_us);
        self.stats.resets += 1;
        self.stats.reset_max_us = self.stats.reset_max_us.max(took);
        self.stats.reset_total_us += took;
        let t = &mut self.trail;
        push(
            &mut t.resets,
            &mut t.resets_len,
            &mut t.truncated,
            (started_us, now),
        );
        self.reset = ResetPhase::Idle;
    }

    /// Escalation: a virtio device reset drops everything the device held, so every
    /// outstanding request is completed as reset; the device is set up again as soon as
    /// its status reads 0 (now, or at a later HwTimer: never a stall).
    fn device_reset(&mut self, ctx: &mut PortContext<'_>, started_us: u64) {
        self.stats.device_resets += 1;
        self.transport.set_status(0);
        self.tmfs = [None; MAX_TMFS];
        self.reset_lus = [None; MAX_TMFS];
        self.abandon(ctx, SrbStatus::BusReset, |_, _| true);
        self.inflight = [(NO_SLOT, 0); MAX_QUEUE_SIZE];
        self.watch_mark = None;
        self.peeked = None;
        let now = ctx.now_us();
        self.reset = ResetPhase::Device {
            started_us,
            deadline_us: now + DEVICE_RESET_TIMEOUT_US,
        };
        // The HBA saw a bus reset: N5's hold, if HwResetBus's is over.
        ctx.reset_detected();
        self.continue_device_reset(ctx);
    }

    pub(super) fn continue_device_reset(&mut self, ctx: &mut PortContext<'_>) {
        let ResetPhase::Device {
            started_us,
            deadline_us,
        } = self.reset
        else {
            return;
        };
        if self.transport.status() != 0 {
            if ctx.now_us() >= deadline_us {
                self.give_up(ctx, VirtioScsiError::DeviceResetTimeout);
            }
            return;
        }
        self.control.reset();
        self.event.reset();
        self.request.reset();
        match self.negotiate().and_then(|_| self.bring_up(ctx)) {
            Ok(()) => {
                self.end_reset(ctx, started_us);
                self.room_again(ctx);
            }
            Err(e) => self.give_up(ctx, e),
        }
    }

    fn give_up(&mut self, ctx: &mut PortContext<'_>, e: VirtioScsiError) {
        log::error!("virtio-scsi: adapter lost after a device reset: {e}");
        self.dead = Some(e);
        self.reset = ResetPhase::Idle;
        self.room_again(ctx);
    }

    /// The bus reset's TMFs did not all come back in time.
    pub(super) fn check_tmf_deadline(&mut self, ctx: &mut PortContext<'_>) {
        if let ResetPhase::Tmf {
            started_us,
            deadline_us,
            ..
        } = self.reset
        {
            if ctx.now_us() >= deadline_us {
                self.stats.tmf_timeouts += 1;
                self.device_reset(ctx, started_us);
            }
        }
    }
}
