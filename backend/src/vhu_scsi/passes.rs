//! The passes of one kick over a request or control queue's avail ring, written once for
//! the plain path and the fault path: each pops chains and hands them to a
//! [`ChainServer`], which is what differs between the two. A pass holds its queue's pass
//! lock ([`RingEpoch`]): a device reset or a stopped ring waits for it to end.

use log::warn;
use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::control_queue::serve_control;
use super::ring_epoch::{Pop, Popped, RingEpoch};
use super::{
    serve_command, Chain, Disposition, GuestMemory, SignalBatch, VhostUserScsiBackend,
    VhuScsiError, CONTROL_QUEUE,
};

/// What serves the chains of one queue's vring during
/// [`VhostUserScsiBackend::serve_passes`].
pub(super) trait ChainServer {
    /// Serves one chain, `popped` in the ring epoch it names: completes it (its interrupt
    /// may wait for the end of the pass) or holds it.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: Chain,
        popped: Popped,
    ) -> Result<(), VhuScsiError>;

    /// The end of a pass, also of one that failed: what is on the used ring gets its
    /// interrupt decision.
    fn end_pass(&mut self) -> Result<(), VhuScsiError>;
}

impl VhostUserScsiBackend {
    /// Serves every available chain of `queue` on `vring` with `server`, pass after pass
    /// while EVENT_IDX reports chains that arrived meanwhile ([`Passes`]). A pass ends
    /// early when the ring is disabled or stopped, and the kick with it.
    pub(super) fn serve_passes(
        &self,
        queue: usize,
        vring: &VringRwLock,
        event_idx: bool,
        server: &mut impl ChainServer,
    ) -> Result<(), VhuScsiError> {
        let atomic = self.memory().ok_or(VhuScsiError::NoMemory)?;
        let ring: &RingEpoch = &self.rings[queue];
        let mut passes = Passes::default();
        loop {
            // Until the decision about another pass: a reset or a stop returns only once
            // nothing of this pass can touch the ring any more.
            let _pass = ring.pass();
            if event_idx {
                vring
                    .disable_notification()
                    .map_err(VhuScsiError::CouldNotToggleNotification)?;
            }
            let mem = atomic.memory();
            let mut popped = 0;
            let mut stopped = false;
            let pass = loop {
                // The queue lock is released before completing, since add_used takes it again.
                let (chain, ticket) = match ring.pop(vring, mem.clone()) {
                    Pop::Chain(chain, ticket) => (chain, ticket),
                    Pop::Empty => break Ok(()),
                    Pop::Stopped => {
                        stopped = true;
                        break Ok(());
                    }
                };
                popped += 1;
                if let Err(e) = server.serve(&mem, chain, ticket) {
                    break Err(e);
                }
            };
            // What is on the used ring gets its interrupt even when the pass failed.
            server.end_pass()?;
            pass?;
            if stopped || !passes.another(queue, vring, event_idx, popped)? {
                return Ok(());
            }
        }
    }
}

/// Serves chains without the fault engine, deciding interrupts per [`SignalBatch`].
pub(super) struct PlainServer<'a> {
    pub(super) backend: &'a VhostUserScsiBackend,
    pub(super) queue: usize,
    pub(super) vring: &'a VringRwLock,
    pub(super) cdb_size: usize,
    pub(super) batch: SignalBatch<'a>,
}

impl ChainServer for PlainServer<'_> {
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: Chain,
        popped: Popped,
    ) -> Result<(), VhuScsiError> {
        let backend = self.backend;
        // Dropped after the completion is on the used ring (or on an error); its
        // interrupt may wait for the end of the pass.
        let slot = backend.executing.slot(self.queue);
        let used_len = if self.queue == CONTROL_QUEUE {
            serve_control(&backend.target, mem, chain, Some(&backend.executing))
        } else {
            let how = Disposition::EXECUTE;
            serve_command(&backend.target, mem, chain, how, self.cdb_size, Some(&slot)).used
        };
        let completed = self.batch.complete(self.vring, popped, used_len);
        drop(slot);
        completed.map(drop)
    }

    fn end_pass(&mut self) -> Result<(), VhuScsiError> {
        self.batch.flush(self.vring).map(drop)
    }
}

/// Whether a queue handler makes another pass over the avail ring. With EVENT_IDX,
/// re-enabling notifications reports chains that arrived meanwhile, and the handler looks
/// again. But an avail index more than a ring ahead of the device's makes every pop fail
/// (virtio-queue refuses it) while the index still says "more": two empty passes in a
/// row end the handler until the next kick instead of spinning forever.
#[derive(Debug, Default)]
struct Passes {
    empty_in_a_row: u32,
}

impl Passes {
    fn another<V>(
        &mut self,
        queue: usize,
        vring: &V,
        event_idx: bool,
        popped: usize,
    ) -> Result<bool, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        if !event_idx {
            return Ok(false);
        }
        self.empty_in_a_row = if popped == 0 {
            self.empty_in_a_row + 1
        } else {
            0
        };
        let more = vring
            .enable_notification()
            .map_err(VhuScsiError::CouldNotToggleNotification)?;
        if more && self.empty_in_a_row >= 2 {
            warn!("queue {queue}: the driver's avail ring offers chains that cannot be popped");
            return Ok(false);
        }
        Ok(more)
    }
}
