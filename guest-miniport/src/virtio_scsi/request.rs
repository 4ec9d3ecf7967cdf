//! The request path: HwStartIo lays a command out in its slot and adds its chain to
//! the request queue; completions taken off the used ring are matched to their request
//! by head and id (P3), decoded into the SRB and completed.

use core::ptr;

use crate::contract::PlantedBug;
use crate::port::{DataDirection, PortContext, SrbHandle, SrbStatus, StartIo, SENSE_BUFFER_LEN};
use crate::virtio::{Buffer, QueueError, Transport};
use crate::wire::*;

use super::trail::push;
use super::{
    Extension, Request, ResetPhase, Source, MAX_REQUESTS, NO_SLOT, RESP_OFFSET, SLOT_BYTES,
};

impl<T: Transport> Extension<T> {
    /// HwStartIo: the command goes to the device at once, or the SRB is given back
    /// (N2) while there is no room.
    pub(super) fn start_request(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
        if self.dead.is_some() {
            ctx.srb_mut(&srb).srb_status = SrbStatus::HbaError;
            ctx.request_complete(srb);
            ctx.next_request();
            return StartIo::Accepted;
        }
        // The device is being set up again after a reset: nothing can go to it yet.
        if matches!(self.reset, ResetPhase::Device { .. }) {
            self.refused = true;
            return StartIo::Busy(srb);
        }
        let Some(slot) = self.requests.iter().position(|r| r.is_none()) else {
            self.refused = true;
            return StartIo::Busy(srb);
        };
        if self.outstanding() >= usize::from(self.max_outstanding) {
            self.refused = true;
            return StartIo::Busy(srb);
        }
        let s = *ctx.srb(&srb);
        if usize::from(s.cdb_len) > self.cdb_size || s.data.len > 0 && s.data.ptr.is_null() {
            ctx.srb_mut(&srb).srb_status = SrbStatus::InvalidRequest;
            ctx.request_complete(srb);
            ctx.next_request();
            return StartIo::Accepted;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);

        // struct virtio_scsi_cmd_req, LUN in the single-level format of §5.6.6.1.
        let mut req = [0u8; CMD_REQ_HEADER + VIRTIO_SCSI_CDB_SIZE as usize];
        req[0] = 1;
        req[1] = s.target;
        req[2] = 0x40; // flat addressing; LUN < 256, so the high bits are 0
        req[3] = s.lun;
        req[8..16].copy_from_slice(&id.to_le_bytes());
        req[16] = VIRTIO_SCSI_S_SIMPLE;
        req[CMD_REQ_HEADER..CMD_REQ_HEADER + usize::from(s.cdb_len)].copy_from_slice(s.cdb());
        let base = self.slot_ptr(slot);
        // SAFETY: the command and response areas are inside this slot, which no chain
        // on the device references (the slot is free).
        unsafe {
            ptr::copy_nonoverlapping(req.as_ptr(), base, CMD_REQ_HEADER + self.cdb_size);
            ptr::write_bytes(base.add(RESP_OFFSET), 0, CMD_RESP_HEADER + self.sense_size);
        }
        let slot_addr = self.cmd_addr + (slot * SLOT_BYTES) as u64;
        let cmd = Buffer {
            addr: slot_addr,
            len: (CMD_REQ_HEADER + self.cdb_size) as u32,
        };
        let resp = Buffer {
            addr: slot_addr + RESP_OFFSET as u64,
            len: (CMD_RESP_HEADER + self.sense_size) as u32,
        };
        let data = Buffer {
            addr: s.data.device_address,
            len: s.data.len,
        };
        let has_data = s.data.len > 0;
        let added = match s.data.direction {
            DataDirection::Out if has_data => self.request.add(&[cmd, data], &[resp]),
            DataDirection::In if has_data => self.request.add(&[cmd], &[resp, data]),
            _ => self.request.add(&[cmd], &[resp]),
        };
        let head = match added {
            Ok(head) => head,
            Err(_) => {
                self.refused = true;
                return StartIo::Busy(srb);
            }
        };
        let now = ctx.now_us();
        self.stats.first_request_us.get_or_insert(now);
        self.inflight[usize::from(head)] = (slot as u8, id);
        self.requests[slot] = Some(Request {
            id,
            head,
            target: s.target,
            lun: s.lun,
            started_us: now,
            srb,
        });
        self.kick(REQUESTQ);
        // N3/N4: tagged queuing, so ask for more to this LU at once.
        ctx.next_lu_request(s.path, s.target, s.lun);
        self.arm_timer();
        StartIo::Accepted
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < MAX_REQUESTS, so the offset is inside the command pages.
        unsafe { self.cmd_ptr.as_ptr().add(slot * SLOT_BYTES) }
    }

    /// Completes up to `max` requests the used ring returned. Returns how many it
    /// completed.
    pub(super) fn drain_requests(
        &mut self,
        ctx: &mut PortContext<'_>,
        source: Source,
        max: u16,
    ) -> u16 {
        let mut done = 0;
        let mut popped = 0;
        while popped < max {
            let Some(used) = self.request.pop_used() else {
                break;
            };
            popped += 1;
            let head = match used {
                Ok((head, _len)) => head,
                Err(QueueError::UnknownHead(_) | QueueError::Full | QueueError::EmptyChain) => {
                    self.stats.stale_completions += 1;
                    continue;
                }
            };
            let (slot, id) =
                core::mem::replace(&mut self.inflight[usize::from(head)], (NO_SLOT, 0));
            // P3: complete only the request this chain was issued for.
            let by_slot_only = self.settings.bug == PlantedBug::DoubleCompletion;
            let matches = self
                .requests
                .get(usize::from(slot))
                .and_then(|r| r.as_ref())
                .is_some_and(|r| by_slot_only || r.id == id && r.head == head);
            if !matches {
                self.stats.stale_completions += 1;
                continue;
            }
            let Some(req) = self.requests[usize::from(slot)].take() else {
                continue;
            };
            self.complete_found(ctx, source, usize::from(slot), req);
            done += 1;
        }
        if done > 0 {
            self.room_again(ctx);
        }
        done
    }

    /// Planted bug `double-completion`: pops what the watchdog completed in place on
    /// its previous call, unless an interrupt took (and completed) it again since.
    pub(super) fn pop_peeked(&mut self) {
        if let Some((at, left)) = self.peeked.take() {
            if self.request.next_used() == at {
                for _ in 0..left {
                    let _ = self.request.pop_used();
                }
            }
        }
    }

    /// Planted bug `double-completion`: completes the requests the first `n` used
    /// elements name without popping them, and leaves their slots mapped.
    pub(super) fn complete_in_place(&mut self, ctx: &mut PortContext<'_>, n: u16) -> u16 {
        let at = self.request.next_used();
        let mut done = 0;
        let mut read = 0;
        for i in 0..n {
            let Some(head) = self.request.read_ahead(i) else {
                break;
            };
            read += 1;
            let Some(&(slot, _)) = self.inflight.get(head as usize) else {
                continue;
            };
            if let Some(req) = self
                .requests
                .get_mut(usize::from(slot))
                .and_then(Option::take)
            {
                self.complete_found(ctx, Source::Poll, usize::from(slot), req);
                done += 1;
            }
        }
        self.peeked = Some((at, read));
        if done > 0 {
            self.room_again(ctx);
        }
        done
    }

    /// Counts a completion by the way it was found, then completes its SRB.
    fn complete_found(
        &mut self,
        ctx: &mut PortContext<'_>,
        source: Source,
        slot: usize,
        req: Request,
    ) {
        {
            let latency = ctx.now_us().saturating_sub(req.started_us);
            match source {
                Source::Interrupt => {
                    self.stats.completed_by_interrupt += 1;
                    self.trail.latency_interrupt.record(latency);
                }
                Source::Poll => {
                    self.stats.completed_by_poll += 1;
                    self.trail.latency_poll.record(latency);
                    let t = &mut self.trail;
                    push(
                        &mut t.polled_ids,
                        &mut t.polled_len,
                        &mut t.truncated,
                        req.id,
                    );
                }
            }
            self.complete(ctx, slot, req.srb);
        }
    }

    /// N2: room again for the request HwStartIo gave back.
    pub(super) fn room_again(&mut self, ctx: &mut PortContext<'_>) {
        if self.refused {
            self.refused = false;
            ctx.next_request();
        }
    }

    /// Decodes the response of `slot` into the SRB and sends RequestComplete.
    fn complete(&mut self, ctx: &mut PortContext<'_>, slot: usize, srb: SrbHandle) {
        let resp = self.slot_ptr(slot).wrapping_add(RESP_OFFSET);
        let mut hdr = [0u8; CMD_RESP_HEADER];
        // SAFETY: the response area is inside the slot, which the device wrote before
        // returning the chain (pop_used's Acquire orders our reads after it).
        unsafe { ptr::copy_nonoverlapping(resp, hdr.as_mut_ptr(), CMD_RESP_HEADER) };
        let sense_len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let resid = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let status = hdr[10];
        let response = hdr[11];
        let sense_size = self.sense_size;
        let bug = self.settings.bug;
        let mut s = ctx.srb_mut(&srb);
        s.scsi_status = status;
        s.data_transfer_length = if bug == PlantedBug::ResidualIgnored {
            s.data.len
        } else {
            s.data.len.saturating_sub(resid)
        };
        let n = sense_len.min(sense_size).min(SENSE_BUFFER_LEN);
        // SAFETY: `n` is at most sense_size bytes after the header: inside the slot.
        unsafe { ptr::copy_nonoverlapping(resp.add(CMD_RESP_HEADER), s.sense.as_mut_ptr(), n) };
        s.sense_len = n as u8;
        s.srb_status = match response {
            VIRTIO_SCSI_S_OK if status == crate::port::scsi_status::GOOD => SrbStatus::Success,
            VIRTIO_SCSI_S_OK => SrbStatus::Error,
            VIRTIO_SCSI_S_OVERRUN => SrbStatus::DataOverrun,
            VIRTIO_SCSI_S_ABORTED => SrbStatus::Aborted,
            VIRTIO_SCSI_S_BAD_TARGET => SrbStatus::SelectionTimeout,
            VIRTIO_SCSI_S_RESET => SrbStatus::BusReset,
            VIRTIO_SCSI_S_BUSY if bug == PlantedBug::VirtioBusyFatal => SrbStatus::HbaError,
            VIRTIO_SCSI_S_BUSY => SrbStatus::Busy,
            _ if bug == PlantedBug::UnknownResponseOk => SrbStatus::Success,
            // TRANSPORT_FAILURE, TARGET_FAILURE, NEXUS_FAILURE, FAILURE, and any code
            // the spec does not define.
            _ => SrbStatus::HbaError,
        };
        drop(s);
        ctx.request_complete(srb);
    }

    /// Completes every outstanding request with `status` and forgets its chain. A chain
    /// the device returns later is stale and ignored (P3).
    pub(super) fn abandon(
        &mut self,
        ctx: &mut PortContext<'_>,
        status: SrbStatus,
        which: impl Fn(u8, u8) -> bool,
    ) {
        for slot in 0..MAX_REQUESTS {
            if !self.requests[slot]
                .as_ref()
                .is_some_and(|r| which(r.target, r.lun))
            {
                continue;
            }
            if let Some(req) = self.requests[slot].take() {
                self.inflight[usize::from(req.head)] = (NO_SLOT, 0);
                ctx.srb_mut(&req.srb).srb_status = status;
                ctx.request_complete(req.srb);
            }
        }
        self.room_again(ctx);
    }
}
