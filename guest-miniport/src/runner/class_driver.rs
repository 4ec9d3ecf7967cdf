//! The class driver's side of a run: the DMA buffers, the batch loop that keeps
//! requests in flight and retries what a class driver retries (UNIT ATTENTION at once;
//! BUSY and TASK SET FULL after a pause; MEDIUM ERROR on a read counted, not fatal),
//! single requests, and INQUIRY / READ CAPACITY.

use core::fmt::Write;
use core::ptr::NonNull;

use crate::contract::{GuestArgs, PlantedBug};
use crate::platform::{Dma, Platform};
use crate::port::{scsi_status, DataBuffer, DataDirection, Port, Srb, SrbStatus, Tag, MAX_SRBS};
use crate::report::JsonLine;
use crate::virtio_scsi::VirtioScsiError;

use super::scsi::{check_status, srb_lba, Ascii};
use super::{
    Failure, Outcome, BUSY_RETRY_DELAY_US, MAX_BUSY_RETRIES, MAX_UNIT_ATTENTION_RETRIES,
    SENSE_KEY_MEDIUM_ERROR, SENSE_KEY_UNIT_ATTENTION, TASK_SET_FULL,
};

/// A DMA buffer for one request's data.
#[derive(Clone, Copy)]
pub(super) struct DmaBuf {
    pub(super) addr: u64,
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

impl DmaBuf {
    pub(super) const EMPTY: DmaBuf = DmaBuf {
        addr: 0,
        ptr: NonNull::dangling(),
        len: 0,
    };

    pub(super) fn alloc(dma: &mut dyn Dma, len: usize) -> Option<DmaBuf> {
        let (addr, ptr) = dma.alloc_pages(len.div_ceil(4096).max(1))?;
        Some(DmaBuf { addr, ptr, len })
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes of DMA memory owned by this buffer; no request that uses
        // it is outstanding while the runner looks at it.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(super) fn data(&self, len: u32, direction: DataDirection) -> DataBuffer {
        DataBuffer {
            device_address: self.addr,
            ptr: self.ptr.as_ptr(),
            len,
            direction,
        }
    }
}

/// One request of a batch: in flight, or waiting to be sent again.
#[derive(Clone, Copy)]
pub(super) struct InFlight {
    pub(super) tag: Tag,
    pub(super) index: u32,
    pub(super) unit_attention_retries: u32,
    pub(super) busy_retries: u32,
    /// Waiting until then before it is submitted again (BUSY, TASK SET FULL).
    pub(super) resubmit_at: Option<u64>,
}

/// The bus rescan after BusChangeDetected: REPORT LUNS, then READ CAPACITY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rescan {
    Idle,
    /// Asked for; starts when the side request is free.
    Pending,
    /// Answered BUSY or TASK SET FULL: asked for again from this time (µs).
    Waiting(u64),
    ReportLuns(Tag),
    ReadCapacity(Tag),
}

/// What to do with a completed SRB, the class driver's way.
pub(super) enum Disposition {
    Done,
    RetryNow,
    RetryLater,
    /// A read that failed with MEDIUM ERROR: counted, not verified, not fatal.
    Unreadable,
}

pub(super) struct Runner<'p, 'q, 'a, M: crate::port::Miniport<Error = VirtioScsiError>> {
    pub(super) port: &'p Port<M>,
    pub(super) platform: &'q mut dyn Platform,
    pub(super) deadline: u64,
    pub(super) args: &'a GuestArgs,
    pub(super) outcome: &'a mut Outcome,
    /// For INQUIRY and READ CAPACITY.
    pub(super) small: DmaBuf,
    /// For the rescan's requests, which run beside the others.
    pub(super) rescan_buf: DmaBuf,
    pub(super) rescan: Rescan,
}

/// The phase of a write-and-verify run, for the batch's hooks.
pub(super) struct Phase<'f, 'a> {
    pub(super) op: &'static str,
    pub(super) reads: bool,
    /// Reset the bus once this many requests completed (`reset-under-load`).
    pub(super) reset_after: Option<u32>,
    pub(super) make: &'f mut dyn FnMut(u32, &mut DmaBuf) -> Srb,
    pub(super) done: &'f mut dyn FnMut(u32, &Srb, &mut DmaBuf) -> Result<(), Failure<'a>>,
}

impl<M: crate::port::Miniport<Error = VirtioScsiError>> Runner<'_, '_, '_, M> {
    pub(super) fn srb(&self, cdb: &[u8], data: DataBuffer) -> Srb {
        let mut s = Srb::new(0, 0, 0, cdb, data);
        s.timeout_us = self.args.srb_timeout_ms.saturating_mul(1000);
        s
    }

    pub(super) fn timeout<'a>(&mut self, op: &'static str) -> Failure<'a> {
        Failure::Timeout {
            op,
            in_flight: self.port.in_flight(),
            waiting: self.port.completions_waiting(self.platform),
        }
    }

    pub(super) fn submit<'a>(&mut self, op: &'static str, srb: Srb) -> Result<Tag, Failure<'a>> {
        self.outcome.requests += 1;
        self.port.submit(srb).map_err(|e| Failure::Submit(op, e))
    }

    /// Waits for and dispatches the next events.
    pub(super) fn step(&mut self) {
        if !self.port.run_once(self.platform) {
            // Nothing outstanding (a retry is waiting): let time pass.
            let events = self.platform.wait_for_events();
            self.port.dispatch(self.platform, events);
        }
        if self.port.take_bus_change() && self.rescan == Rescan::Idle {
            self.rescan = Rescan::Pending;
        }
    }

    /// How long a request answered BUSY or TASK SET FULL waits before it is sent again.
    pub(super) fn busy_pause(&self) -> u64 {
        // Planted bug `busy-no-backoff`: sent again at once.
        if self.args.bug == PlantedBug::BusyNoBackoff {
            0
        } else {
            BUSY_RETRY_DELAY_US
        }
    }

    /// Counts a BUSY or TASK SET FULL retry, if `srb` ended so.
    pub(super) fn busy_retry(&mut self, srb: &Srb) -> bool {
        let busy = srb.srb_status == SrbStatus::Busy
            || srb.srb_status == SrbStatus::Error && srb.scsi_status == scsi_status::BUSY;
        let full = srb.srb_status == SrbStatus::Error && srb.scsi_status == TASK_SET_FULL;
        if full {
            self.outcome.queue_full_retries += 1;
        } else if busy {
            self.outcome.busy_retries += 1;
        }
        busy || full
    }

    fn classify(&mut self, srb: &Srb, f: &InFlight, reads: bool) -> Disposition {
        let key = srb.sense_key();
        let check =
            srb.srb_status == SrbStatus::Error && srb.scsi_status == scsi_status::CHECK_CONDITION;
        if check
            && key == Some(SENSE_KEY_UNIT_ATTENTION)
            && f.unit_attention_retries < MAX_UNIT_ATTENTION_RETRIES
        {
            self.outcome.unit_attention_retries += 1;
            return Disposition::RetryNow;
        }
        // Planted bug `write-error-ignored`: the direction is not looked at.
        let any_direction = self.args.bug == PlantedBug::WriteErrorIgnored;
        if check && (reads || any_direction) && key == Some(SENSE_KEY_MEDIUM_ERROR) {
            return Disposition::Unreadable;
        }
        if f.busy_retries < MAX_BUSY_RETRIES && self.busy_retry(srb) {
            return Disposition::RetryLater;
        }
        Disposition::Done
    }

    /// Runs `count` requests, at most `bufs.len()` at a time, visiting indices in
    /// `order`. Retries what `classify` says, and runs the rescan on the side.
    pub(super) fn batch<'a>(
        &mut self,
        bufs: &mut [DmaBuf],
        count: u32,
        order: &dyn Fn(u32) -> u32,
        phase: &mut Phase<'_, 'a>,
    ) -> Result<(), Failure<'a>> {
        let op = phase.op;
        let mut slots: [Option<InFlight>; MAX_SRBS] = [None; MAX_SRBS];
        let width = bufs.len().min(MAX_SRBS);
        let mut next = 0u32;
        let mut finished = 0u32;
        let mut reset_done = false;
        while finished < count {
            while next < count {
                let Some(k) = slots[..width].iter().position(|s| s.is_none()) else {
                    break;
                };
                let index = order(next);
                let srb = (phase.make)(index, &mut bufs[k]);
                let tag = self.submit(op, srb)?;
                slots[k] = Some(InFlight {
                    tag,
                    index,
                    unit_attention_retries: 0,
                    busy_retries: 0,
                    resubmit_at: None,
                });
                next += 1;
            }
            let now = self.platform.now_us();
            for k in 0..width {
                let Some(f) = slots[k] else { continue };
                if f.resubmit_at.is_some_and(|t| t <= now) {
                    let srb = (phase.make)(f.index, &mut bufs[k]);
                    let tag = self.submit(op, srb)?;
                    slots[k] = Some(InFlight {
                        tag,
                        resubmit_at: None,
                        ..f
                    });
                }
            }
            self.advance_rescan()?;
            if now >= self.deadline {
                return Err(self.timeout(op));
            }
            if let Some(after) = phase.reset_after {
                // Reset while the device holds requests.
                self.port.start_pending(self.platform);
                if !reset_done && finished >= after && self.port.active() > 0 {
                    reset_done = true;
                    self.port.reset_bus(self.platform, 0);
                }
            }
            self.step();
            while let Some(srb) = self.port.poll_completed() {
                if self.side_done(&srb)? {
                    continue;
                }
                let Some(k) = slots
                    .iter()
                    .position(|s| s.is_some_and(|s| s.tag == srb.tag && s.resubmit_at.is_none()))
                else {
                    continue;
                };
                let Some(mut f) = slots[k] else { continue };
                match self.classify(&srb, &f, phase.reads) {
                    Disposition::RetryNow => {
                        f.unit_attention_retries += 1;
                        let again = (phase.make)(f.index, &mut bufs[k]);
                        f.tag = self.submit(op, again)?;
                        slots[k] = Some(f);
                    }
                    Disposition::RetryLater => {
                        f.busy_retries += 1;
                        f.resubmit_at = Some(self.platform.now_us() + self.busy_pause());
                        slots[k] = Some(f);
                    }
                    Disposition::Unreadable => {
                        slots[k] = None;
                        finished += 1;
                        let o = &mut *self.outcome;
                        if let Some(e) = o.medium_error_lbas.get_mut(o.medium_errors as usize) {
                            *e = srb_lba(&srb);
                        }
                        o.medium_errors += 1;
                    }
                    Disposition::Done => {
                        slots[k] = None;
                        finished += 1;
                        (phase.done)(f.index, &srb, &mut bufs[k])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One request on the small buffer, with the same retries as a batch.
    fn single<'a>(
        &mut self,
        op: &'static str,
        cdb: &[u8],
        len: u32,
        into: &mut [u8],
    ) -> Result<(), Failure<'a>> {
        let mut small = [self.small];
        let srb = self.srb(cdb, small[0].data(len, DataDirection::In));
        let mut result = [0u8; 64];
        let n = into.len().min(result.len());
        self.batch(
            &mut small,
            1,
            &|i| i,
            &mut Phase {
                op,
                reads: false,
                reset_after: None,
                make: &mut |_, b| {
                    b.bytes()[..len as usize].fill(0);
                    srb
                },
                done: &mut |_, srb, b| {
                    check_status(op, 0, srb)?;
                    result[..n].copy_from_slice(&b.bytes()[..n]);
                    Ok(())
                },
            },
        )?;
        into[..n].copy_from_slice(&result[..n]);
        Ok(())
    }

    /// INQUIRY and READ CAPACITY.
    pub(super) fn identify<'a>(&mut self, out: &mut dyn Write) -> Result<(), Failure<'a>> {
        let mut inquiry = [0u8; 64];
        self.single("INQUIRY", &[0x12, 0, 0, 0, 96, 0], 96, &mut inquiry)?;
        let _ = JsonLine::event(out, "inquiry")
            .u64("peripheral_type", u64::from(inquiry[0] & 0x1f))
            .display("vendor", &Ascii(&inquiry[8..16]))
            .display("product", &Ascii(&inquiry[16..32]))
            .display("revision", &Ascii(&inquiry[32..36]))
            .finish();
        let (capacity, block_size) = self.read_capacity()?;
        self.outcome.block_size = block_size;
        self.outcome.capacity = capacity;
        let _ = JsonLine::event(out, "capacity")
            .u64("capacity", capacity)
            .u64("block_size", u64::from(block_size))
            .finish();
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(Failure::BlockSize(block_size));
        }
        Ok(())
    }

    /// READ CAPACITY(10), then (16) when the disk is too big for it.
    fn read_capacity<'a>(&mut self) -> Result<(u64, u32), Failure<'a>> {
        let mut cap10 = [0u8; 8];
        self.single(
            "READ CAPACITY(10)",
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            8,
            &mut cap10,
        )?;
        let last10 = u32::from_be_bytes([cap10[0], cap10[1], cap10[2], cap10[3]]);
        let block_size = u32::from_be_bytes([cap10[4], cap10[5], cap10[6], cap10[7]]);
        if last10 != u32::MAX {
            return Ok((u64::from(last10) + 1, block_size));
        }
        let mut cap16 = [0u8; 32];
        let cdb = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        self.single("READ CAPACITY(16)", &cdb, 32, &mut cap16)?;
        let mut l = [0u8; 8];
        l.copy_from_slice(&cap16[..8]);
        let block_size = u32::from_be_bytes([cap16[8], cap16[9], cap16[10], cap16[11]]);
        Ok((u64::from_be_bytes(l) + 1, block_size))
    }
}
