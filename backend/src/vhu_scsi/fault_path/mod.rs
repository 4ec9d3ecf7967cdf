//! The request path with the fault engine: each popped chain becomes a `RequestInfo`, the
//! engine decides, and the decision is applied here ([`command`] for request queues,
//! [`tmf`] for the control queue). Requests that do not complete at once wait in the
//! per-queue in-flight tables for the worker's timer ([`timer`]), an abort or a reset.
//!
//! Locks: the engine, each in-flight table, the vring cache and each vring are taken one at
//! a time, never nested.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Duration;

use vhost_user_backend::VringRwLock;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

use super::executing::ExecutingSlot;
use super::passes::ChainServer;
use super::{
    complete_and_notify, lock, serve_command, Chain, Disposition, Popped, Served, SignalBatch,
    VhostUserScsiBackend, VhuScsiError, CONTROL_QUEUE, FIRST_REQUEST_QUEUE,
};
use crate::faults::{CommandScreen, FaultEngine, SignalOutcome};
use crate::virtio::*;

pub(super) mod command;
mod timer;
mod tmf;

pub(super) use timer::new_timer;

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
/// completions ([`SignalBatch`], which also counts them, since without a trace a
/// completion is only counted), and how many commands the queue's [`CommandScreen`] let
/// by the engine (each only counted); all reach the engine under one lock per batch.
pub(super) struct FaultBatch<'a> {
    queue: usize,
    signals: SignalBatch<'a>,
    commands: u64,
    /// The queue's screen, held for the whole kick (only this worker takes it).
    screen: MutexGuard<'a, CommandScreen>,
}

impl<'a> FaultBatch<'a> {
    fn new(
        backend: &'a VhostUserScsiBackend,
        queue: usize,
        event_idx: bool,
        screen: MutexGuard<'a, CommandScreen>,
    ) -> Self {
        FaultBatch {
            queue,
            signals: SignalBatch::new(&backend.rings[queue], event_idx),
            commands: 0,
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
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: Chain,
        popped: Popped,
    ) -> Result<(), VhuScsiError> {
        let (backend, vring, queue) = (self.backend, self.vring, self.batch.queue);
        let parked = if queue == CONTROL_QUEUE {
            backend
                .flush_batch(vring, &mut self.batch)
                .and_then(|()| backend.control_with_faults(vring, mem, chain, popped))
        } else {
            backend.command_with_faults(queue, vring, mem, chain, popped, &mut self.batch)
        }?;
        self.parked |= parked;
        Ok(())
    }

    fn end_pass(&mut self) -> Result<(), VhuScsiError> {
        self.backend.flush_batch(self.vring, &mut self.batch)
    }
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
            batch: FaultBatch::new(self, queue, event_idx, lock(&self.screens[queue])),
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
        let completions = batch.signals.take_added();
        if outcome.is_none() && completions == 0 && batch.commands == 0 {
            return;
        }
        let mut engine = self.engine();
        engine.count_commands(std::mem::take(&mut batch.commands));
        engine.count_completions(completions);
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

    /// Completes a served command into `batch`: its completion is counted, and its
    /// signal decided, with the batch's. No trace is written in this mode (a completion
    /// record would carry only a count).
    #[inline]
    fn complete_into_batch(
        &self,
        vring: &VringRwLock,
        popped: Popped,
        served: &Served,
        batch: &mut FaultBatch,
    ) -> Result<(), VhuScsiError> {
        if let Some(outcome) = batch.signals.complete(vring, popped, served.used)? {
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
        popped: Popped,
        tag: u64,
        how: Disposition,
        drop_interrupt: bool,
        slot: Option<&ExecutingSlot<'_>>,
    ) -> Result<(), VhuScsiError>
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        let served = serve_command(&self.target, mem, chain, how, self.cdb_size(), slot);
        self.complete_alone(queue, vring, popped, &served, tag, drop_interrupt)
    }

    /// Completes a served command with its own interrupt decision and traces the
    /// completion and the signal (neither, when it was stale: see
    /// [`RingEpoch`](super::RingEpoch)).
    fn complete_alone(
        &self,
        queue: usize,
        vring: &VringRwLock,
        popped: Popped,
        served: &Served,
        tag: u64,
        drop_interrupt: bool,
    ) -> Result<(), VhuScsiError> {
        let ring = &self.rings[queue];
        let Some(outcome) = complete_and_notify(vring, ring, popped, served.used, drop_interrupt)?
        else {
            return Ok(());
        };
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
