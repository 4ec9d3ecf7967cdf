//! The bus rescan after the miniport's BusChangeDetected (REPORT LUNS, then READ
//! CAPACITY), run beside the workload's own requests, and the wait for an idle adapter
//! at the end of a run.

use crate::port::{DataDirection, Srb, SrbStatus};
use crate::virtio_scsi::VirtioScsiError;

use super::class_driver::{Rescan, Runner};
use super::scsi::check_status;
use super::{Failure, SENSE_KEY_UNIT_ATTENTION};

impl<M: crate::port::Miniport<Error = VirtioScsiError>> Runner<'_, '_, '_, M> {
    /// Starts the next request of a pending rescan when the small buffer is free.
    pub(super) fn advance_rescan<'a>(&mut self) -> Result<(), Failure<'a>> {
        if let Rescan::Waiting(at) = self.rescan {
            if self.platform.now_us() >= at {
                self.rescan = Rescan::Pending;
            }
        }
        if self.rescan == Rescan::Pending {
            // REPORT LUNS, 64 bytes: the header and seven LUNs.
            let cdb = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
            let srb = self.srb(&cdb, self.rescan_buf.data(64, DataDirection::In));
            self.rescan_buf.bytes()[..64].fill(0);
            let tag = self.submit("REPORT LUNS", srb)?;
            self.rescan = Rescan::ReportLuns(tag);
        }
        Ok(())
    }

    /// Takes a completion of the rescan's side requests. Returns whether it was one.
    pub(super) fn side_done<'a>(&mut self, srb: &Srb) -> Result<bool, Failure<'a>> {
        let retry_ua = srb.srb_status == SrbStatus::Error
            && srb.sense_key() == Some(SENSE_KEY_UNIT_ATTENTION)
            || srb.srb_status == SrbStatus::BusReset;
        let ours =
            matches!(self.rescan, Rescan::ReportLuns(t) | Rescan::ReadCapacity(t) if t == srb.tag);
        // BUSY and TASK SET FULL: the rescan starts again after the class driver's pause
        // (found by explore: a BUSY REPORT LUNS used to fail the run).
        if ours && self.busy_retry(srb) {
            self.rescan = Rescan::Waiting(self.platform.now_us() + self.busy_pause());
            return Ok(true);
        }
        match self.rescan {
            Rescan::ReportLuns(tag) if tag == srb.tag => {
                if retry_ua {
                    self.rescan = Rescan::Pending;
                    return Ok(true);
                }
                check_status("REPORT LUNS", 0, srb)?;
                let b = self.rescan_buf.bytes();
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                // LUN 0 in single-level format is eight zero bytes.
                let has_lun0 = b[8..64]
                    .chunks(8)
                    .take(len / 8)
                    .any(|l| l.iter().all(|&x| x == 0));
                if !has_lun0 {
                    return Err(Failure::LunGone);
                }
                let cdb = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let srb = self.srb(&cdb, self.rescan_buf.data(8, DataDirection::In));
                let tag = self.submit("READ CAPACITY(10)", srb)?;
                self.rescan = Rescan::ReadCapacity(tag);
                Ok(true)
            }
            Rescan::ReadCapacity(tag) if tag == srb.tag => {
                if retry_ua {
                    self.rescan = Rescan::Pending;
                    return Ok(true);
                }
                check_status("READ CAPACITY(10)", 0, srb)?;
                self.outcome.rescans += 1;
                self.rescan = Rescan::Idle;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Ends with no rescan pending.
    pub(super) fn finish_rescan<'a>(&mut self) -> Result<(), Failure<'a>> {
        loop {
            if self.port.take_bus_change() && self.rescan == Rescan::Idle {
                self.rescan = Rescan::Pending;
            }
            if self.rescan == Rescan::Idle {
                return Ok(());
            }
            self.advance_rescan()?;
            if self.platform.now_us() >= self.deadline {
                return Err(self.timeout("rescan"));
            }
            self.step();
            while let Some(srb) = self.port.poll_completed() {
                self.side_done(&srb)?;
            }
        }
    }

    /// Waits until a bus reset still under way has ended, so the run ends on an idle
    /// adapter (a reset whose TMF hangs without a timer to give up on it never does).
    pub(super) fn quiesce<'a>(&mut self) -> Result<(), Failure<'a>> {
        while self.port.resetting(self.platform) || self.port.in_flight() > 0 {
            if self.platform.now_us() >= self.deadline {
                return Err(Failure::ResetNotEnded);
            }
            self.step();
            while let Some(srb) = self.port.poll_completed() {
                self.side_done(&srb)?;
            }
        }
        Ok(())
    }
}
