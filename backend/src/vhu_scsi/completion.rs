//! The one completion path of the device: a completion goes onto the used ring, if its
//! chain was popped in the ring's current epoch ([`RingEpoch`]), then EVENT_IDX (and a
//! `drop-interrupt` fault) decide whether the driver gets an interrupt. Each completion,
//! with the interrupt decision taken for it, is one critical section of the vring's lock.

use vhost_user_backend::{VringState, VringT};

use super::ring_epoch::{Popped, RingEpoch};
use super::{GuestMemory, VhuScsiError};
use crate::faults::SignalOutcome;

/// Completions in a row before the interrupt decision is taken even though the pass over
/// the available ring goes on: bounds the latency batching adds to the first of them.
pub const MAX_UNSIGNALLED: u16 = 32;

/// Completions that are on the used ring but not yet offered to the interrupt decision.
///
/// Without EVENT_IDX every decision writes the eventfd (unless the driver set
/// NO_INTERRUPT), so the decision is taken once per pass over the available ring (or
/// every [`MAX_UNSIGNALLED`] completions), as Linux's vhost-scsi does.
///
/// With EVENT_IDX the first completions of a pass are decided one by one, until an
/// interrupt is sent: the driver wakes as early as it asked to and refills the ring while
/// the device is still at work. The rest of the pass is decided at its end (or every
/// [`MAX_UNSIGNALLED`]), which bounds the eventfd writes of a pass to about two. Measured
/// in `make bench`, same run, against each extreme: deciding only at the end of a pass ran
/// 4k random reads at QD32 on one queue at 0.51x (the device idled on an empty ring for
/// every batch); deciding every completion ran four queues at a third of the rate (the
/// eventfd writes took the two cores).
#[derive(Debug)]
pub struct SignalBatch<'a> {
    ring: &'a RingEpoch,
    pending: u16,
    /// The epoch of the pending completions: a new one since makes their decision moot.
    pending_epoch: u64,
    /// Completions put on the used ring (stale ones are not), for the fault engine's count.
    added: u64,
    event_idx: bool,
    /// An interrupt was sent in this pass: the rest waits for the end of the pass.
    sent_in_pass: bool,
}

impl<'a> SignalBatch<'a> {
    /// A batch for the ring whose epochs `ring` keeps, with or without EVENT_IDX.
    pub fn new(ring: &'a RingEpoch, event_idx: bool) -> Self {
        SignalBatch {
            ring,
            pending: 0,
            pending_epoch: 0,
            added: 0,
            event_idx,
            sent_in_pass: false,
        }
    }

    /// Puts a completion on the used ring (unless it is stale); the interrupt decision is
    /// taken now when the batch is full (with EVENT_IDX, until an interrupt was sent in
    /// this pass: at once) and returned; otherwise it waits for [`SignalBatch::flush`].
    pub fn complete<V>(
        &mut self,
        vring: &V,
        popped: Popped,
        used_len: u32,
    ) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        let ring = self.ring;
        let decided = add_used_then(vring, ring, popped, used_len, |state| {
            self.pending += 1;
            self.pending_epoch = popped.epoch();
            self.added += 1;
            let limit = if self.event_idx && !self.sent_in_pass {
                1
            } else {
                MAX_UNSIGNALLED
            };
            if self.pending < limit {
                return Ok(None);
            }
            self.decide(state)
        })?;
        let outcome = decided.flatten();
        if outcome == Some(SignalOutcome::Sent) {
            self.sent_in_pass = true;
        }
        Ok(outcome)
    }

    /// The end of a pass: takes the interrupt decision for the completions waiting, if
    /// any (`None` when nothing was waiting, or when a new ring epoch began since they
    /// were added), and starts the next pass afresh.
    pub fn flush<V>(&mut self, vring: &V) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        self.sent_in_pass = false;
        if self.pending == 0 {
            return Ok(None);
        }
        let mut state = vring.get_mut();
        if !self.ring.is_current(self.pending_epoch) {
            self.pending = 0;
            return Ok(None);
        }
        self.decide(&mut state)
    }

    /// Completions put on the used ring since the last call.
    pub fn take_added(&mut self) -> u64 {
        std::mem::take(&mut self.added)
    }

    /// The signal is sent when EVENT_IDX says the driver wants it.
    fn decide(
        &mut self,
        state: &mut VringState<GuestMemory>,
    ) -> Result<Option<SignalOutcome>, VhuScsiError> {
        if self.pending == 0 {
            return Ok(None);
        }
        self.pending = 0;
        notify_if_needed(state, false).map(Some)
    }
}

/// The one completion path of the device: add the used element, then let EVENT_IDX decide
/// whether the driver wants an interrupt, and only then signal the call eventfd
/// (`signal_used_queue` always signals). A `drop-interrupt` fault skips the signal here,
/// leaving the used entry for the driver's timer poll to find. `None`: the chain was
/// popped in an earlier ring epoch, and nothing was added or signalled.
pub fn complete_and_notify<V>(
    vring: &V,
    ring: &RingEpoch,
    popped: Popped,
    used_len: u32,
    drop_interrupt: bool,
) -> Result<Option<SignalOutcome>, VhuScsiError>
where
    V: VringT<GuestMemory>,
{
    add_used_then(vring, ring, popped, used_len, |state| {
        notify_if_needed(state, drop_interrupt)
    })
}

/// The only place that adds to a used ring: under the vring's lock, the element goes on
/// if `popped` is of the ring's current epoch, and `then` runs in the same critical
/// section. `None`: it was stale, and dropped.
fn add_used_then<V, R>(
    vring: &V,
    ring: &RingEpoch,
    popped: Popped,
    used_len: u32,
    then: impl FnOnce(&mut VringState<GuestMemory>) -> Result<R, VhuScsiError>,
) -> Result<Option<R>, VhuScsiError>
where
    V: VringT<GuestMemory>,
{
    let mut state = vring.get_mut();
    if !ring.admits(popped) {
        return Ok(None);
    }
    state
        .add_used(popped.head(), used_len)
        .map_err(VhuScsiError::CouldNotAddUsed)?;
    then(&mut state).map(Some)
}

/// The interrupt decision for the used entries added since the last one: signal the call
/// eventfd if EVENT_IDX says the driver wants it and no `drop-interrupt` fault drops it.
fn notify_if_needed(
    state: &mut VringState<GuestMemory>,
    drop_interrupt: bool,
) -> Result<SignalOutcome, VhuScsiError> {
    let needed = state
        .needs_notification()
        .map_err(VhuScsiError::CouldNotCheckNotification)?;
    if !needed {
        return Ok(SignalOutcome::SuppressedByEventIdx);
    }
    if drop_interrupt {
        return Ok(SignalOutcome::SuppressedByFault);
    }
    state
        .signal_used_queue()
        .map_err(VhuScsiError::CouldNotSignalUsedQueue)?;
    Ok(SignalOutcome::Sent)
}
