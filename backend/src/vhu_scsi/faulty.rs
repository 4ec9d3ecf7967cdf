//! The request path with the fault engine: each popped chain becomes a `RequestInfo`, the
//! engine decides, and the decision is applied here. Requests that do not complete at once
//! wait in the per-queue in-flight tables for the worker's timer, an abort or a reset.
//!
//! Locks: the engine, each in-flight table, the vring cache and each vring are taken one at
//! a time, never nested.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use log::{debug, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Address, Bytes, GuestAddressSpace, GuestMemoryMmap, Le32};
use vmm_sys_util::timerfd::TimerFd;

use super::inflight::{InflightEntry, Work};
use super::passes::ChainServer;
use super::*;
use crate::faults::{
    CommandShape, Completion, Corruption, DataDirection, RequestInfo, ResetReason, StatusOverride,
    TickAction, TmfFailure, TmfKind, TmfOutcome, VirtioEvent, VirtioResponse,
};
use crate::scsi::{DataError, DataOut, LunAddress};

/// Shortest timer interval: a zero `it_value` would disarm a timerfd.
const MIN_TIMER: Duration = Duration::from_micros(1);
/// Longest: a time_t holds it (a request held until `Duration::MAX` is woken for nothing
/// every 2^32 s instead of failing to arm the timer).
const MAX_TIMER: Duration = Duration::from_secs(1 << 32);

pub(super) fn new_timer() -> Result<TimerFd, VhuScsiError> {
    let errno = |e: vmm_sys_util::errno::Error| io::Error::from_raw_os_error(e.errno());
    let timer = TimerFd::new().map_err(|e| VhuScsiError::CouldNotCreateTimer(errno(e)))?;
    // Non-blocking: a timer re-armed between epoll_wait and our read must not stall the
    // worker (timerfd_settime resets the expiration count).
    // SAFETY: F_GETFL/F_SETFL on a timerfd we own; no pointers are passed.
    let ok = unsafe {
        let fd = timer.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(VhuScsiError::CouldNotCreateTimer(io::Error::last_os_error()));
    }
    Ok(timer)
}

/// Which worker serves `queue` (see `queues_per_thread`).
pub(super) fn thread_of(queue: usize) -> usize {
    queue.saturating_sub(FIRST_REQUEST_QUEUE)
}

/// Records a served command's completion (its response, status and residual).
fn record_served(engine: &mut FaultEngine, queue: usize, tag: u64, served: &Served, now: Duration) {
    match served.resp {
        Some(r) => engine.record_complete(
            queue as u16,
            tag,
            cmd_response_name(r.response),
            (r.response == VIRTIO_SCSI_S_OK).then_some(r.status),
            Some(u32::from(r.resid)),
            now,
        ),
        None => engine.record_complete(queue as u16, tag, "none", None, None, now),
    }
}

/// The fault path's batch of one pass over a queue: the interrupt decision of its
/// completions ([`SignalBatch`]) and, since without a trace a completion is only counted,
/// how many there were, and how many commands the queue's [`CommandScreen`] let by the
/// engine (each only counted); all reach the engine under one lock per batch.
pub(super) struct FaultBatch<'a> {
    queue: usize,
    signals: SignalBatch,
    commands: u64,
    completions: u64,
    /// The queue's screen, held for the whole kick (only this worker takes it).
    screen: MutexGuard<'a, CommandScreen>,
}

impl<'a> FaultBatch<'a> {
    fn new(queue: usize, event_idx: bool, screen: MutexGuard<'a, CommandScreen>) -> Self {
        FaultBatch {
            queue,
            signals: SignalBatch::new(event_idx),
            commands: 0,
            completions: 0,
            screen,
        }
    }
}

/// Serves chains with the engine consulted on each ([`FaultBatch`] for the interrupt
/// decisions and the counts), and notes whether any was held.
struct FaultServer<'a> {
    backend: &'a VhostUserScsiBackend,
    vring: &'a VringRwLock,
    batch: FaultBatch<'a>,
    /// A request was parked in an in-flight table: the worker's timer is re-armed.
    parked: bool,
}

impl ChainServer for FaultServer<'_> {
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: Chain) -> Result<(), VhuScsiError> {
        let (backend, vring, queue) = (self.backend, self.vring, self.batch.queue);
        let parked = if queue == CONTROL_QUEUE {
            backend
                .flush_batch(vring, &mut self.batch)
                .and_then(|()| backend.control_with_faults(vring, mem, chain))
        } else {
            backend.command_with_faults(queue, vring, mem, chain, &mut self.batch)
        }?;
        self.parked |= parked;
        Ok(())
    }

    fn end_pass(&mut self) -> Result<(), VhuScsiError> {
        self.backend.flush_batch(self.vring, &mut self.batch)
    }
}

fn queues_of(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |bit| mask >> bit & 1 == 1)
}

impl VhostUserScsiBackend {
    /// `process_queue` with the engine consulted on every chain.
    pub(super) fn process_queue_with_faults(
        &self,
        queue: usize,
        vring: &VringRwLock,
    ) -> Result<(), VhuScsiError> {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut server = FaultServer {
            backend: self,
            vring,
            batch: FaultBatch::new(queue, event_idx, lock(&self.screens[queue])),
            parked: false,
        };
        self.serve_passes(queue, vring, event_idx, &mut server)?;
        if server.parked {
            self.rearm_timer(thread_of(queue))?;
        }
        Ok(())
    }

    /// Takes the interrupt decision for the completions `batch` holds and gives the
    /// engine the batch's counts, under one lock.
    fn flush_batch(&self, vring: &VringRwLock, batch: &mut FaultBatch) -> Result<(), VhuScsiError> {
        let outcome = batch.signals.flush(vring)?;
        self.count_batch(batch, outcome);
        Ok(())
    }

    /// Gives the engine the batch's command and completion counts and, if one was taken,
    /// its interrupt decision.
    fn count_batch(&self, batch: &mut FaultBatch, outcome: Option<SignalOutcome>) {
        if outcome.is_none() && batch.completions == 0 && batch.commands == 0 {
            return;
        }
        let mut engine = self.engine();
        engine.count_commands(std::mem::take(&mut batch.commands));
        engine.count_completions(std::mem::take(&mut batch.completions));
        if let Some(outcome) = outcome {
            let now = if engine.tracing() {
                self.faults.epoch.now()
            } else {
                Duration::ZERO
            };
            engine.record_signal(batch.queue as u16, None, outcome, now);
        }
    }

    /// The queue's screen, rebuilt first (under the engine's lock) if the plan changed.
    #[inline]
    fn screen<'b>(&self, batch: &'b mut FaultBatch<'_>) -> &'b CommandScreen {
        if !batch.screen.is_current() {
            batch.screen.refresh(&self.engine());
        }
        &batch.screen
    }

    /// One request-queue chain. Returns whether it was parked in the in-flight table.
    /// Without a trace, a command completed at once joins `batch`: its interrupt is
    /// decided with the rest of the pass, and its completion counted with the batch's.
    /// With a trace (whose records name the command each completion and signal was for)
    /// and for a command whose interrupt a fault drops, the decision is taken for it
    /// alone, after the batch's. The chain is walked and its header read once, before the
    /// engine is asked: the engine's description of the command and its execution read
    /// the same buffers.
    ///
    /// A command the queue's [`CommandScreen`] passes (no rule can match it, no trace, no
    /// slow TMF) is served without the engine: only counted, with the batch.
    fn command_with_faults(
        &self,
        queue: usize,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        chain: Chain,
        batch: &mut FaultBatch,
    ) -> Result<bool, VhuScsiError> {
        // Dropped once the command is on its used ring or parked (see `Executing`).
        let slot = self.executing.slot(queue);
        let head = chain.head_index();
        let cdb_size = self.cdb_size();
        let mut buffers = ChainBuffers::scan(mem, chain.clone());
        let header = read_command_header(&mut buffers, cdb_size);
        // Served as without faults.
        let serve_plain = |buffers: &mut ChainBuffers<'_, _>,
                           header: Option<&VirtioScsiCmdReq>,
                           slot: Option<&ExecutingSlot<'_>>| {
            let how = Disposition::EXECUTE;
            serve_scanned(
                &self.target,
                mem,
                head,
                buffers,
                header,
                None,
                how,
                cdb_size,
                slot,
            )
        };
        let screen = self.screen(batch);
        // Nothing would read the command's description or the time: only count it.
        if screen.idle() {
            batch.commands += 1;
            let served = serve_plain(&mut buffers, header.as_ref(), Some(&slot));
            return self
                .complete_into_batch(vring, head, &served, batch)
                .map(|()| false);
        }
        let Some(req) = &header else {
            let tracing = screen.tracing();
            // Malformed: served as without faults, so it fails the usual way.
            let served = serve_plain(&mut buffers, None, Some(&slot));
            if tracing {
                self.flush_batch(vring, batch)?;
                self.complete_alone(queue, vring, head, &served, 0, false)?;
            } else {
                self.complete_into_batch(vring, head, &served, batch)?;
            }
            return Ok(false);
        };
        let (target, lun) = address_of(&req.lun);
        // Before the engine decides (a slow TMF's BUSY) and the target looks at the LU: a
        // TMF either waits for this command or this command sees what the TMF did. An
        // address that names no LU is marked as target 0xff, which costs a TMF for that
        // address a wait at most.
        slot.begin(target, lun);
        // Looked at again after the mark: a slow TMF that began meanwhile either made the
        // screen stale (this command then goes to the engine, which answers BUSY or holds
        // it) or sees the mark and waits for the command.
        let shape = ScannedCommand {
            target,
            lun,
            req,
            buffers: &buffers,
            cdb_size,
        };
        if self.screen(batch).passes(&shape) {
            batch.commands += 1;
            let served = serve_plain(&mut buffers, header.as_ref(), None);
            return self
                .complete_into_batch(vring, head, &served, batch)
                .map(|()| false);
        }
        let info = request_info(queue as u16, &buffers, req, cdb_size);
        let mut engine = self.engine();
        // A plan armed for other commands does not read the clock for this one.
        let now = if engine.needs_time(&info) {
            self.faults.epoch.now()
        } else {
            Duration::ZERO
        };
        let d = engine.on_request(&info, now);
        let tracing = engine.tracing();
        drop(engine);
        let park = |due, work| InflightEntry {
            head,
            tag: info.id,
            target: info.target,
            lun: info.lun,
            due,
            work,
            chain: chain.clone(),
        };
        let entry = match d.completion {
            Completion::Lose => park(
                None,
                Work::Lost {
                    drop_interrupt: d.drop_interrupt,
                },
            ),
            completion if !d.delay.is_zero() => park(
                Some(now.saturating_add(d.delay)),
                Work::Command {
                    completion,
                    drop_interrupt: d.drop_interrupt,
                },
            ),
            completion => {
                let how = disposition(completion);
                let kept = Some(chain);
                let served = serve_scanned(
                    &self.target,
                    mem,
                    head,
                    &mut buffers,
                    header.as_ref(),
                    kept,
                    how,
                    cdb_size,
                    None,
                );
                if tracing || d.drop_interrupt {
                    // The batch's completions keep their interrupt: only this one's is
                    // dropped.
                    self.flush_batch(vring, batch)?;
                    let drop_interrupt = d.drop_interrupt;
                    self.complete_alone(queue, vring, head, &served, info.id, drop_interrupt)?;
                } else {
                    self.complete_into_batch(vring, head, &served, batch)?;
                }
                return Ok(false);
            }
        };
        // Parked before the slot ends: a TMF waiting for the slot then finds it held.
        lock(&self.inflight[queue]).insert(entry);
        drop(slot);
        Ok(true)
    }

    /// Completes a served command into `batch`: its completion is counted, and its
    /// signal decided, with the batch's. No trace is written in this mode (a completion
    /// record would carry only a count).
    #[inline]
    fn complete_into_batch(
        &self,
        vring: &VringRwLock,
        head: u16,
        served: &Served,
        batch: &mut FaultBatch,
    ) -> Result<(), VhuScsiError> {
        batch.completions += 1;
        if let Some(outcome) = batch.signals.complete(vring, head, served.used)? {
            self.count_batch(batch, Some(outcome));
        }
        Ok(())
    }

    /// Serves a command, completes it and traces the completion and the signal. `slot`:
    /// mark the command executing once its LU is known (when not marked already).
    #[allow(clippy::too_many_arguments)]
    fn finish_command<M>(
        &self,
        queue: usize,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<M>,
        tag: u64,
        how: Disposition,
        drop_interrupt: bool,
        slot: Option<&ExecutingSlot<'_>>,
    ) -> Result<(), VhuScsiError>
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        let head = chain.head_index();
        let served = serve_command(&self.target, mem, chain, how, self.cdb_size(), slot);
        self.complete_alone(queue, vring, head, &served, tag, drop_interrupt)
    }

    /// Completes a served command with its own interrupt decision and traces the
    /// completion and the signal.
    fn complete_alone(
        &self,
        queue: usize,
        vring: &VringRwLock,
        head: u16,
        served: &Served,
        tag: u64,
        drop_interrupt: bool,
    ) -> Result<(), VhuScsiError> {
        let outcome = complete_and_notify(vring, head, served.used, drop_interrupt)?;
        let mut engine = self.engine();
        // The time is only for the trace's records (the counters do not need it).
        let now = if engine.tracing() {
            self.faults.epoch.now()
        } else {
            Duration::ZERO
        };
        record_served(&mut engine, queue, tag, served, now);
        engine.record_signal(queue as u16, Some(tag), outcome, now);
        Ok(())
    }

    /// One control-queue chain. Returns whether a TMF was parked.
    fn control_with_faults(
        &self,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        chain: Chain,
    ) -> Result<bool, VhuScsiError> {
        let head = chain.head_index();
        let now = self.faults.epoch.now();
        // No room for an answer: nothing is done, as without faults.
        if let Err(reason) = control_response_room(mem, &chain) {
            warn!("control {head}: {reason}");
            let outcome = complete_and_notify(vring, head, 0, false)?;
            self.engine()
                .record_signal(CONTROL_QUEUE as u16, None, outcome, now);
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
                let outcome = complete_and_notify(vring, head, used, d.drop_interrupt)?;
                let mut engine = self.engine();
                engine.record_complete(CONTROL_QUEUE as u16, 0, "ok", None, None, now);
                engine.record_signal(CONTROL_QUEUE as u16, Some(0), outcome, now);
                return Ok(false);
            }
            Err(reason) => {
                let used = write_control(mem, chain, Err(reason));
                let outcome = complete_and_notify(vring, head, used, false)?;
                self.engine()
                    .record_signal(CONTROL_QUEUE as u16, None, outcome, now);
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
            head,
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
                self.answer_tmf(vring, mem, chain, tag, response, d.drop_interrupt)?;
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
                    self.answer_tmf(vring, mem, chain, tag, response, d.drop_interrupt)?;
                    return Ok(false);
                }
                park(Some(now.saturating_add(d.delay)), response)
            }
        };
        lock(&self.inflight[CONTROL_QUEUE]).insert(entry);
        Ok(true)
    }

    fn answer_tmf<M>(
        &self,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<M>,
        tag: u64,
        response: u8,
        drop_interrupt: bool,
    ) -> Result<(), VhuScsiError>
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        let head = chain.head_index();
        let used = write_control(
            mem,
            chain,
            Ok(ControlResponse::Tmf(VirtioScsiCtrlTmfResp { response })),
        );
        let outcome = complete_and_notify(vring, head, used, drop_interrupt)?;
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
    fn cancel(
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
            entry.tag,
            how,
            drop_interrupt,
            None,
        )
    }

    /// Completes a held request whose time has come.
    fn complete_due(&self, queue: usize, entry: InflightEntry<Chain>) -> Result<(), VhuScsiError> {
        let Some(vring) = self.vring(queue) else {
            warn!("queue {queue}: no vring for held request {}", entry.tag);
            return Ok(());
        };
        let atomic = self.memory().ok_or(VhuScsiError::NoMemory)?;
        let mem = atomic.memory();
        match entry.work {
            Work::Command {
                completion,
                drop_interrupt,
            } => self.finish_command(
                queue,
                &vring,
                &mem,
                entry.chain,
                entry.tag,
                disposition(completion),
                drop_interrupt,
                None,
            ),
            Work::Tmf {
                response,
                drop_interrupt,
            } => self.answer_tmf(
                &vring,
                &mem,
                entry.chain,
                entry.tag,
                response,
                drop_interrupt,
            ),
            // Never due.
            Work::Lost { .. } => Ok(()),
        }
    }

    /// The worker's timer fired: run the engine's ticks (worker 0) and complete what is due.
    pub fn on_timer(&self, thread: usize) -> Result<(), VhuScsiError> {
        if let Some(t) = self.timers.get(thread) {
            // Consume the expiration; EAGAIN (re-armed meanwhile) is fine.
            let _ = lock(t).wait();
        }
        let now = self.faults.epoch.now();
        if thread == 0 && self.faults.active {
            let actions = self.engine().on_tick(now);
            for action in actions {
                self.apply_tick(action, now)?;
            }
        }
        let mask = self.queue_masks.get(thread).copied().unwrap_or(0);
        for queue in queues_of(mask).filter(|&q| q != EVENT_QUEUE) {
            loop {
                let slot = self.executing.slot(queue);
                let due = {
                    let mut table = lock(&self.inflight[queue]);
                    let entry = table.take_due(now);
                    // Marked while the table is locked: a TMF that no longer finds the
                    // command held finds it executing.
                    if let Some(
                        e @ InflightEntry {
                            work: Work::Command { .. },
                            ..
                        },
                    ) = &entry
                    {
                        slot.begin(e.target, e.lun);
                    }
                    entry
                };
                let Some(entry) = due else { break };
                if let Err(e) = self.complete_due(queue, entry) {
                    log::error!("queue {queue}: {e}");
                }
                drop(slot);
            }
        }
        self.rearm_timer(thread)
    }

    /// Arms worker `thread`'s timer for its earliest due request (worker 0: or tick).
    pub(super) fn rearm_timer(&self, thread: usize) -> Result<(), VhuScsiError> {
        let Some(timer) = self.timers.get(thread) else {
            return Ok(());
        };
        let mask = self.queue_masks.get(thread).copied().unwrap_or(0);
        let mut due = queues_of(mask)
            .filter_map(|q| self.inflight.get(q).and_then(|t| lock(t).earliest_due()))
            .min();
        let now = self.faults.epoch.now();
        if thread == 0 {
            let tick = self.engine().next_due();
            let poll = self.faults.poll.map(|p| now.saturating_add(p));
            due = [due, tick, poll].into_iter().flatten().min();
        }
        let mut timer = lock(timer);
        let result = match due {
            Some(at) => timer.reset(at.saturating_sub(now).clamp(MIN_TIMER, MAX_TIMER), None),
            None => timer.clear(),
        };
        result.map_err(|e| VhuScsiError::CouldNotArmTimer(io::Error::from_raw_os_error(e.errno())))
    }

    fn apply_tick(&self, action: TickAction, now: Duration) -> Result<(), VhuScsiError> {
        match action {
            TickAction::SpuriousSignal { queue, count } => {
                let Some(vring) = self.vring(usize::from(queue)) else {
                    debug!("spurious interrupt on queue {queue}: queue not started");
                    return Ok(());
                };
                // No used entry: the driver's HwInterrupt must find nothing and say so (I1).
                for _ in 0..count {
                    vring
                        .signal_used_queue()
                        .map_err(VhuScsiError::CouldNotSignalUsedQueue)?;
                }
                Ok(())
            }
            TickAction::PostEvent(event) => self.post_event(event, now),
        }
    }

    /// Puts `event` in a buffer the driver left on the event queue. With none there, the
    /// event is lost (traced as `event-lost`) and the next one carries
    /// VIRTIO_SCSI_T_EVENTS_MISSED (5.6.6.3).
    pub fn post_event(&self, event: VirtioEvent, now: Duration) -> Result<(), VhuScsiError> {
        let vring = self.vring(EVENT_QUEUE);
        let atomic = self.memory();
        let (Some(vring), Some(atomic)) = (vring, atomic) else {
            self.event_lost(&event, "no-frontend", now);
            return Ok(());
        };
        if !vring.get_ref().get_queue().ready() {
            self.event_lost(&event, "queue-not-ready", now);
            return Ok(());
        }
        let mem = atomic.memory();
        let chain = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(mem.clone());
        let Some(chain) = chain else {
            self.event_lost(&event, "no-buffer", now);
            return Ok(());
        };
        let missed = self.events_missed.swap(false, Ordering::Relaxed);
        let wire = event_wire(&event, missed);
        let head = chain.head_index();
        let used = match chain.writer(&mem) {
            Ok(mut w) => match w.write_obj(wire) {
                Ok(()) => size_of::<VirtioScsiEvent>() as u32,
                Err(e) => {
                    warn!("event buffer {head}: {e}");
                    0
                }
            },
            Err(e) => {
                warn!("event buffer {head}: {e}");
                0
            }
        };
        // A buffer that cannot take the event goes back empty, and the event is lost.
        if used == 0 {
            self.event_lost(&event, "bad-buffer", now);
        }
        let outcome = complete_and_notify(&vring, head, used, false)?;
        let mut engine = self.engine();
        if used > 0 {
            engine.record_event_posted(&event, now);
        }
        engine.record_signal(EVENT_QUEUE as u16, None, outcome, now);
        Ok(())
    }

    /// `event` found no way onto the event queue: the next one says events were missed.
    fn event_lost(&self, event: &VirtioEvent, reason: &'static str, now: Duration) {
        debug!("{} event lost ({reason}): events missed", event.name());
        self.events_missed.store(true, Ordering::Relaxed);
        self.engine().record_event_lost(event, reason, now);
    }

    /// Keeps a clone of each vring a worker serves (see the `vrings` field).
    pub(super) fn remember_vrings(&self, mask: u64, vrings: &[VringRwLock]) {
        let mut cache = lock(&self.vrings);
        for (queue, vring) in queues_of(mask).zip(vrings) {
            if let Some(slot @ None) = cache.get_mut(queue) {
                *slot = Some(vring.clone());
            }
        }
    }

    fn vring(&self, queue: usize) -> Option<VringRwLock> {
        lock(&self.vrings).get(queue).cloned().flatten()
    }

    /// Device reset (or the frontend went away): every held request and TMF is dropped
    /// unanswered, as a reset discards them (virtio 2.4), and slow TMFs end.
    pub fn drop_all_inflight(&self) {
        let dropped: usize = self.inflight.iter().map(|t| lock(t).clear()).sum();
        self.events_missed.store(false, Ordering::Relaxed);
        if dropped > 0 {
            debug!("device reset: {dropped} held requests dropped");
        }
        if self.faults.active {
            let now = self.faults.epoch.now();
            self.engine().on_device_reset(now);
        }
    }

    /// The frontend went away. A connection that never set up guest memory had no driver,
    /// so it is no device reset (the harness probes the socket by connecting).
    pub fn on_disconnect(&self) {
        let held = self.inflight.iter().any(|t| !lock(t).is_empty());
        if held || self.memory().is_some() {
            self.drop_all_inflight();
        }
    }

    /// Number of requests held on `queue` (tests and diagnostics).
    pub fn inflight_len(&self, queue: usize) -> usize {
        self.inflight.get(queue).map_or(0, |t| lock(t).len())
    }
}

/// (target, LUN) for the engine; an address that names no LU gets target 0xff.
fn address_of(lun: &[u8; 8]) -> (u8, u16) {
    decode_lun(lun).map_or((u8::MAX, 0), |a| (a.target, a.lun))
}

/// Reads the request header, whose CDB area has `cdb_size` bytes, off the readable buffer
/// of a scanned command chain; `None` if it has no readable header or a readable
/// descriptor outside guest memory (it will then fail without the engine, its buffers
/// untouched: [`execute_request`] reads the header again and reports why). Allocates
/// nothing and walks no descriptor again.
#[inline]
fn read_command_header<M>(
    buffers: &mut ChainBuffers<'_, M>,
    cdb_size: usize,
) -> Option<VirtioScsiCmdReq>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    buffers.readable_bytes?;
    let data_out = buffers.readable.as_mut().ok()?;
    let header = VIRTIO_SCSI_CMD_REQ_FIXED + cdb_size;
    data_out
        .read_or_keep(header, |b| read_header(b, cdb_size))
        .ok()
}

/// A scanned command as the queue's [`CommandScreen`] looks at it.
struct ScannedCommand<'a, 'm, M>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    target: u8,
    lun: u16,
    req: &'a VirtioScsiCmdReq,
    buffers: &'a ChainBuffers<'m, M>,
    cdb_size: usize,
}

impl<M> CommandShape for ScannedCommand<'_, '_, M>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    fn target(&self) -> u8 {
        self.target
    }
    fn lun(&self) -> u16 {
        self.lun
    }
    fn opcode(&self) -> u8 {
        self.req.cdb[0]
    }
    fn direction(&self) -> DataDirection {
        data_direction(self.buffers, self.cdb_size).0
    }
    fn blocks(&self) -> Option<(u64, u64)> {
        cdb_blocks(&self.req.cdb)
    }
}

/// The direction of a scanned command's data and how many bytes it has (those after the
/// `cdb_size` header, or after the response). Not inlined: the screen asks for it only
/// when a fault looks at the direction, and a copy inlined in its loop would be worked out
/// ahead for every command.
#[inline(never)]
fn data_direction<M>(buffers: &ChainBuffers<'_, M>, cdb_size: usize) -> (DataDirection, usize)
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let readable = buffers.readable_bytes.unwrap_or(0);
    let header = VIRTIO_SCSI_CMD_REQ_FIXED + cdb_size;
    let writable = buffers.writable.as_ref().map_or(0, DataIn::remaining);
    let out_len = readable.saturating_sub(header);
    let in_len = writable.saturating_sub(size_of::<VirtioScsiCmdResp>());
    if out_len > 0 {
        (DataDirection::Write, out_len)
    } else if in_len > 0 {
        (DataDirection::Read, in_len)
    } else {
        (DataDirection::None, 0)
    }
}

/// What the engine needs to know about a command with request header `req` (read off
/// `buffers` by [`read_command_header`]).
fn request_info<M>(
    queue: u16,
    buffers: &ChainBuffers<'_, M>,
    req: &VirtioScsiCmdReq,
    cdb_size: usize,
) -> RequestInfo
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let (target, lun) = address_of(&req.lun);
    let (direction, len) = data_direction(buffers, cdb_size);
    let info = RequestInfo::command(queue, u64::from(req.id), target, lun, req.cdb[0])
        .with_data(direction, u32::try_from(len).unwrap_or(u32::MAX));
    match cdb_blocks(&req.cdb) {
        Some((lba, blocks)) => info.with_lba(lba, blocks),
        None => info,
    }
}

/// First block and block count of the reads and writes (SBC-3), for `lba` matching.
pub fn cdb_blocks(cdb: &[u8; VIRTIO_SCSI_CDB_SIZE]) -> Option<(u64, u64)> {
    let be = |b: &[u8]| b.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x));
    match cdb[0] {
        // READ(6), WRITE(6): 21-bit LBA; a length of 0 means 256 blocks.
        0x08 | 0x0a => {
            let blocks = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
            Some((be(&cdb[1..4]) & 0x1f_ffff, blocks))
        }
        // READ(10), WRITE(10), WRITE AND VERIFY(10), VERIFY(10), WRITE SAME(10).
        0x28 | 0x2a | 0x2e | 0x2f | 0x41 => Some((be(&cdb[2..6]), be(&cdb[7..9]))),
        // READ(12), WRITE(12), VERIFY(12).
        0xa8 | 0xaa | 0xaf => Some((be(&cdb[2..6]), be(&cdb[6..10]))),
        // READ(16), WRITE(16), WRITE AND VERIFY(16), VERIFY(16), WRITE SAME(16).
        0x88 | 0x8a | 0x8e | 0x8f | 0x93 => Some((be(&cdb[2..10]), be(&cdb[10..14]))),
        _ => None,
    }
}

/// How a command with this engine verdict is served.
fn disposition(completion: Completion) -> Disposition {
    match completion {
        Completion::Normal => Disposition::EXECUTE,
        // Reads: the guest receives flipped bytes; writes: flipped bytes are stored.
        Completion::Corrupt(c) => Disposition::Execute {
            corrupt: Some(c),
            extra_residual: 0,
        },
        Completion::Status(StatusOverride::ShortTransfer { residual }) => Disposition::Execute {
            corrupt: None,
            extra_residual: residual,
        },
        Completion::Status(s) => Disposition::Respond(status_response(s)),
        // Lost commands are held, never served; one that gets here was cancelled.
        Completion::Lose => {
            Disposition::Respond(VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_ABORTED))
        }
    }
}

/// The response a `status` fault forces; the command is not executed.
pub fn status_response(s: StatusOverride) -> VirtioScsiCmdResp {
    match s {
        StatusOverride::Virtio(v) => VirtioScsiCmdResp::with_response(virtio_response_code(v)),
        StatusOverride::CheckCondition {
            sense_key,
            asc,
            ascq,
        } => {
            let mut resp = VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_OK);
            resp.status = s.scsi_status().unwrap_or(0x02);
            let fixed = Sense::new(sense_key, asc, ascq).to_fixed();
            resp.sense[..fixed.len()].copy_from_slice(&fixed);
            resp.sense_len = Le32::from(fixed.len() as u32);
            resp
        }
        other => {
            let mut resp = VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_OK);
            resp.status = other.scsi_status().unwrap_or(0);
            resp
        }
    }
}

fn virtio_response_code(v: VirtioResponse) -> u8 {
    match v {
        VirtioResponse::Overrun => VIRTIO_SCSI_S_OVERRUN,
        VirtioResponse::Aborted => VIRTIO_SCSI_S_ABORTED,
        VirtioResponse::BadTarget => VIRTIO_SCSI_S_BAD_TARGET,
        VirtioResponse::Reset => VIRTIO_SCSI_S_RESET,
        VirtioResponse::Busy => VIRTIO_SCSI_S_BUSY,
        VirtioResponse::TransportFailure => VIRTIO_SCSI_S_TRANSPORT_FAILURE,
        VirtioResponse::TargetFailure => VIRTIO_SCSI_S_TARGET_FAILURE,
        VirtioResponse::NexusFailure => VIRTIO_SCSI_S_NEXUS_FAILURE,
        VirtioResponse::Failure => VIRTIO_SCSI_S_FAILURE,
    }
}

/// The trace's name of a request-queue response code.
pub fn cmd_response_name(code: u8) -> &'static str {
    match code {
        VIRTIO_SCSI_S_OK => "ok",
        VIRTIO_SCSI_S_OVERRUN => "overrun",
        VIRTIO_SCSI_S_ABORTED => "aborted",
        VIRTIO_SCSI_S_BAD_TARGET => "bad-target",
        VIRTIO_SCSI_S_RESET => "reset",
        VIRTIO_SCSI_S_BUSY => "busy",
        VIRTIO_SCSI_S_TRANSPORT_FAILURE => "transport-failure",
        VIRTIO_SCSI_S_TARGET_FAILURE => "target-failure",
        VIRTIO_SCSI_S_NEXUS_FAILURE => "nexus-failure",
        VIRTIO_SCSI_S_FAILURE => "failure",
        _ => "unknown",
    }
}

/// The trace's name of a TMF response code.
pub fn tmf_response_name(code: u8) -> &'static str {
    match code {
        VIRTIO_SCSI_S_FUNCTION_COMPLETE => "function-complete",
        VIRTIO_SCSI_S_BAD_TARGET => "bad-target",
        VIRTIO_SCSI_S_FAILURE => "failure",
        VIRTIO_SCSI_S_FUNCTION_SUCCEEDED => "function-succeeded",
        VIRTIO_SCSI_S_FUNCTION_REJECTED => "function-rejected",
        VIRTIO_SCSI_S_INCORRECT_LUN => "incorrect-lun",
        _ => "unknown",
    }
}

/// `struct virtio_scsi_event` for `event` (5.6.6.3).
pub fn event_wire(event: &VirtioEvent, missed: bool) -> VirtioScsiEvent {
    let missed_flag = if missed {
        VIRTIO_SCSI_T_EVENTS_MISSED
    } else {
        0
    };
    let (target, lun) = event.address();
    let lun = encode_lun(ScsiAddress { target, lun });
    let (kind, reason) = match *event {
        VirtioEvent::TransportReset { reason, .. } => (
            VIRTIO_SCSI_T_TRANSPORT_RESET,
            match reason {
                ResetReason::Hard => VIRTIO_SCSI_EVT_RESET_HARD,
                ResetReason::Rescan => VIRTIO_SCSI_EVT_RESET_RESCAN,
                ResetReason::Removed => VIRTIO_SCSI_EVT_RESET_REMOVED,
            },
        ),
        // The sense code is in bits 0-7, its qualifier in 8-15.
        VirtioEvent::ParamChange { asc, ascq, .. } => (
            VIRTIO_SCSI_T_PARAM_CHANGE,
            u32::from(asc) | u32::from(ascq) << 8,
        ),
        VirtioEvent::EventsMissed => {
            return VirtioScsiEvent {
                event: Le32::from(VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED),
                lun: [0; 8],
                reason: Le32::from(0),
            }
        }
    };
    VirtioScsiEvent {
        event: Le32::from(kind | missed_flag),
        lun,
        reason: Le32::from(reason),
    }
}

/// The data-out of a write whose stored data a `corrupt` fault changes. Only what goes to
/// the backing file is changed (not parameter lists read with `read_bytes`), and only the
/// first chunk, so a request gets `bytes` flips as on a read.
pub(super) struct CorruptingDataOut<'a> {
    inner: &'a mut dyn DataOut,
    corruption: Option<Corruption>,
}

impl<'a> CorruptingDataOut<'a> {
    pub(super) fn new(inner: &'a mut dyn DataOut, corruption: Corruption) -> Self {
        CorruptingDataOut {
            inner,
            corruption: Some(corruption),
        }
    }
}

/// Bounce buffer of a corrupted write, on the worker's stack.
const CORRUPT_CHUNK: usize = 16 * 1024;

impl DataOut for CorruptingDataOut<'_> {
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.inner.read_bytes(buf)
    }

    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        let mut bounce = [0u8; CORRUPT_CHUNK];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CORRUPT_CHUNK);
            self.inner.read_bytes(&mut bounce[..n])?;
            if let Some(c) = self.corruption.take() {
                c.apply(&mut bounce[..n]);
            }
            file.write_all_at(&bounce[..n], offset + done as u64)
                .map_err(DataError::File)?;
            done += n;
        }
        Ok(())
    }
}

/// Flips bytes of the `len` data-in bytes that follow the `skip`-byte response.
pub(super) fn corrupt_data_in<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    skip: usize,
    len: usize,
    corruption: Corruption,
) where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if len == 0 {
        return;
    }
    // A corrupt fault is opt-in (allow_corruption), so this copy is off the normal path.
    let mut buf = vec![0u8; len];
    let regions: Vec<_> = chain
        .filter(|d| d.is_write_only())
        .map(|d| (d.addr(), d.len() as usize))
        .collect();
    let walk = |buf: &mut [u8], write: bool| -> Result<(), vm_memory::GuestMemoryError> {
        let (mut skip, mut done) = (skip, 0usize);
        for &(addr, dlen) in &regions {
            if skip >= dlen {
                skip -= dlen;
                continue;
            }
            let n = (dlen - skip).min(len - done);
            let at = addr.unchecked_add(skip as u64);
            if write {
                mem.write_slice(&buf[done..done + n], at)?;
            } else {
                mem.read_slice(&mut buf[done..done + n], at)?;
            }
            skip = 0;
            done += n;
            if done == len {
                break;
            }
        }
        Ok(())
    };
    let result = walk(&mut buf, false).and_then(|()| {
        corruption.apply(&mut buf);
        walk(&mut buf, true)
    });
    if let Err(e) = result {
        warn!("could not corrupt data-in: {e}");
    }
}
