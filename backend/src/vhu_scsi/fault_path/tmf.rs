//! A control-queue chain on the fault path: TMFs that fail, hang or answer late, and what
//! a TMF does to the held requests it names.

use std::ops::Deref;
use std::time::Duration;

use log::{debug, warn};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::command::address_of;
use super::tmf_response_name;
use crate::faults::{RequestInfo, TmfFailure, TmfKind, TmfOutcome};
use crate::scsi::LunAddress;
use crate::vhu_scsi::control_queue::{
    an_response, control_response_room, parse_control, tmf_refusal, wait_for_executing,
    write_control, ControlRequest, ControlResponse,
};
use crate::vhu_scsi::inflight::{InflightEntry, Work};
use crate::vhu_scsi::{
    complete_and_notify, lock, Chain, Disposition, Popped, VhostUserScsiBackend, VhuScsiError,
    CONTROL_QUEUE, FIRST_REQUEST_QUEUE,
};
use crate::virtio::*;

impl VhostUserScsiBackend {
    /// One control-queue chain. Returns whether a TMF was parked.
    pub(super) fn control_with_faults(
        &self,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        chain: Chain,
        popped: Popped,
    ) -> Result<bool, VhuScsiError> {
        let head = popped.head();
        let ring = &self.rings[CONTROL_QUEUE];
        let now = self.faults.epoch.now();
        // No room for an answer: nothing is done, as without faults.
        if let Err(reason) = control_response_room(mem, &chain) {
            warn!("control {head}: {reason}");
            if let Some(outcome) = complete_and_notify(vring, ring, popped, 0, false)? {
                self.engine()
                    .record_signal(CONTROL_QUEUE as u16, None, outcome, now);
            }
            return Ok(false);
        }
        let req = match parse_control(mem, chain.clone()) {
            Ok(ControlRequest::Tmf(req)) => req,
            Ok(ControlRequest::An(an)) => {
                let lun = an.lun;
                let (target, lun) = address_of(&lun);
                let d = self
                    .engine()
                    .on_request(&RequestInfo::an(CONTROL_QUEUE as u16, 0, target, lun), now);
                let used = write_control(mem, chain, Ok(an_response()));
                let drop_interrupt = d.drop_interrupt;
                if let Some(outcome) =
                    complete_and_notify(vring, ring, popped, used, drop_interrupt)?
                {
                    let mut engine = self.engine();
                    engine.record_complete(CONTROL_QUEUE as u16, 0, "ok", None, None, now);
                    engine.record_signal(CONTROL_QUEUE as u16, Some(0), outcome, now);
                }
                return Ok(false);
            }
            Err(reason) => {
                let used = write_control(mem, chain, Err(reason));
                if let Some(outcome) = complete_and_notify(vring, ring, popped, used, false)? {
                    self.engine()
                        .record_signal(CONTROL_QUEUE as u16, None, outcome, now);
                }
                return Ok(false);
            }
        };
        let tmf = TmfKind::from_virtio(u32::from(req.subtype));
        let tag = u64::from(req.id);
        let lun = req.lun;
        let (target, lun) = address_of(&lun);
        let info = RequestInfo::tmf(CONTROL_QUEUE as u16, tag, tmf, target, lun);
        let d = self.engine().on_request(&info, now);
        // Only what the engine lets through acts: a failed or hung TMF does nothing.
        let base = tmf_refusal(&self.target, &req).unwrap_or(VIRTIO_SCSI_S_FUNCTION_COMPLETE);
        let park = |due: Option<Duration>, response| InflightEntry {
            popped,
            tag,
            target,
            lun,
            due,
            work: Work::Tmf {
                response,
                drop_interrupt: d.drop_interrupt,
            },
            chain: chain.clone(),
        };
        let entry = match d.tmf {
            TmfOutcome::Fail(f) => {
                let response = match f {
                    TmfFailure::FunctionRejected => VIRTIO_SCSI_S_FUNCTION_REJECTED,
                    TmfFailure::Failure => VIRTIO_SCSI_S_FAILURE,
                };
                self.answer_tmf(vring, mem, chain, popped, tag, response, d.drop_interrupt)?;
                return Ok(false);
            }
            // A hung TMF does nothing: only a device reset ends it (and what it would
            // have aborted).
            TmfOutcome::Hang => park(None, base),
            TmfOutcome::Slow { duration, .. } => {
                // The work is done at once; only the answer is late. Meanwhile the
                // engine answers new commands to the LU BUSY, or holds them.
                let response = self.tmf_effects(tmf, tag, target, lun, base)?;
                park(
                    Some(now.saturating_add(duration).saturating_add(d.delay)),
                    response,
                )
            }
            TmfOutcome::Normal => {
                let response = self.tmf_effects(tmf, tag, target, lun, base)?;
                if d.delay.is_zero() {
                    self.answer_tmf(vring, mem, chain, popped, tag, response, d.drop_interrupt)?;
                    return Ok(false);
                }
                park(Some(now.saturating_add(d.delay)), response)
            }
        };
        lock(&self.inflight[CONTROL_QUEUE]).insert(entry);
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_tmf<M>(
        &self,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<M>,
        popped: Popped,
        tag: u64,
        response: u8,
        drop_interrupt: bool,
    ) -> Result<(), VhuScsiError>
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        let used = write_control(
            mem,
            chain,
            Ok(ControlResponse::Tmf(VirtioScsiCtrlTmfResp { response })),
        );
        let ring = &self.rings[CONTROL_QUEUE];
        let Some(outcome) = complete_and_notify(vring, ring, popped, used, drop_interrupt)? else {
            return Ok(());
        };
        let now = self.faults.epoch.now();
        let mut engine = self.engine();
        engine.record_tmf_end(CONTROL_QUEUE as u16, tag, tmf_response_name(response), now);
        engine.record_signal(CONTROL_QUEUE as u16, Some(tag), outcome, now);
        Ok(())
    }

    /// Acts on the tasks a TMF names and returns its response. Every cancelled request,
    /// and every command of the TMF's LUs another worker was executing, is on its used ring
    /// before this returns, so before the TMF's answer.
    ///
    /// The order matters: the unit attention first (a command begun after the wait sees
    /// it); held commands taken before the wait (one a timer is taking out is then seen
    /// executing); and again after it (one parked by a command that was executing is then
    /// in the table).
    fn tmf_effects(
        &self,
        tmf: TmfKind,
        tag: u64,
        target: u8,
        lun: u16,
        base: u8,
    ) -> Result<u8, VhuScsiError> {
        if base != VIRTIO_SCSI_S_FUNCTION_COMPLETE {
            return Ok(base);
        }
        let addr = LunAddress { target, lun };
        let request_queues = FIRST_REQUEST_QUEUE..self.num_queues();
        let (scope, cancelled_with) = match tmf {
            TmfKind::AbortTask => {
                if self.abort_task(target, lun, tag)? {
                    return Ok(base);
                }
                let response = wait_for_executing(&self.executing, tmf.name(), target, Some(lun));
                self.abort_task(target, lun, tag)?;
                return Ok(response);
            }
            TmfKind::AbortTaskSet | TmfKind::ClearTaskSet => (Some(lun), VIRTIO_SCSI_S_ABORTED),
            TmfKind::LogicalUnitReset => {
                if let Err(e) = self.target.lu_reset(addr) {
                    debug!("LU reset of {addr:?}: {e}");
                }
                (Some(lun), VIRTIO_SCSI_S_RESET)
            }
            TmfKind::ITNexusReset => {
                self.target.nexus_reset(target);
                (None, VIRTIO_SCSI_S_RESET)
            }
            // A held task is one the device still has: the query succeeds (SAM-5 7.9).
            TmfKind::QueryTask => {
                if request_queues
                    .into_iter()
                    .any(|q| lock(&self.inflight[q]).has_tag(target, lun, tag))
                {
                    return Ok(VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
                }
                return Ok(base);
            }
            TmfKind::QueryTaskSet => {
                if request_queues
                    .into_iter()
                    .any(|q| lock(&self.inflight[q]).has_lun(target, lun))
                {
                    return Ok(VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
                }
                return Ok(base);
            }
            TmfKind::ClearAca | TmfKind::Other(_) => return Ok(base),
        };
        self.cancel_matching(target, scope, cancelled_with)?;
        let response = wait_for_executing(&self.executing, tmf.name(), target, scope);
        self.cancel_matching(target, scope, cancelled_with)?;
        Ok(response)
    }

    /// ABORT TASK: the held command with this tag, on any request queue, is completed
    /// ABORTED. Returns whether one was.
    fn abort_task(&self, target: u8, lun: u16, tag: u64) -> Result<bool, VhuScsiError> {
        for q in FIRST_REQUEST_QUEUE..self.num_queues() {
            let held = lock(&self.inflight[q]).take_tag(target, lun, tag);
            if let Some(e) = held {
                self.cancel(q, e, VIRTIO_SCSI_S_ABORTED)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn cancel_matching(
        &self,
        target: u8,
        lun: Option<u16>,
        response: u8,
    ) -> Result<(), VhuScsiError> {
        for q in FIRST_REQUEST_QUEUE..self.num_queues() {
            loop {
                let held = lock(&self.inflight[q]).take_matching(target, lun);
                let Some(e) = held else { break };
                self.cancel(q, e, response)?;
            }
        }
        Ok(())
    }

    /// Completes a held command with `response` (ABORTED or RESET) without executing it.
    pub(in crate::vhu_scsi) fn cancel(
        &self,
        queue: usize,
        entry: InflightEntry<Chain>,
        response: u8,
    ) -> Result<(), VhuScsiError> {
        let Some(vring) = self.vring(queue) else {
            warn!("queue {queue}: no vring to cancel request {}", entry.tag);
            return Ok(());
        };
        let atomic = self.memory().ok_or(VhuScsiError::NoMemory)?;
        let mem = atomic.memory();
        let how = Disposition::Respond(VirtioScsiCmdResp::with_response(response));
        let drop_interrupt = entry.work.drop_interrupt();
        self.finish_command(
            queue,
            &vring,
            &mem,
            entry.chain,
            entry.popped,
            entry.tag,
            how,
            drop_interrupt,
            None,
        )
    }
}
