//! The one completion path of the device: a completion goes onto the used ring, then
//! EVENT_IDX (and a `drop-interrupt` fault) decide whether the driver gets an interrupt.

use vhost_user_backend::VringT;

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
pub struct SignalBatch {
    pending: u16,
    event_idx: bool,
    /// An interrupt was sent in this pass: the rest waits for the end of the pass.
    sent_in_pass: bool,
}

impl SignalBatch {
    /// A batch for a ring with or without EVENT_IDX.
    pub fn new(event_idx: bool) -> Self {
        SignalBatch {
            pending: 0,
            event_idx,
            sent_in_pass: false,
        }
    }

    /// Puts a completion on the used ring; the interrupt decision is taken now when the
    /// batch is full (with EVENT_IDX, until an interrupt was sent in this pass: at once)
    /// and returned; otherwise it waits for [`SignalBatch::flush`].
    pub fn complete<V>(
        &mut self,
        vring: &V,
        head: u16,
        used_len: u32,
    ) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        vring
            .add_used(head, used_len)
            .map_err(VhuScsiError::CouldNotAddUsed)?;
        self.pending += 1;
        let limit = if self.event_idx && !self.sent_in_pass {
            1
        } else {
            MAX_UNSIGNALLED
        };
        if self.pending < limit {
            return Ok(None);
        }
        let outcome = self.decide(vring)?;
        if outcome == Some(SignalOutcome::Sent) {
            self.sent_in_pass = true;
        }
        Ok(outcome)
    }

    /// The end of a pass: takes the interrupt decision for the completions waiting, if
    /// any (`None` when nothing was waiting), and starts the next pass afresh.
    pub fn flush<V>(&mut self, vring: &V) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        self.sent_in_pass = false;
        self.decide(vring)
    }

    /// The signal is sent when EVENT_IDX says the driver wants it.
    fn decide<V>(&mut self, vring: &V) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        if self.pending == 0 {
            return Ok(None);
        }
        self.pending = 0;
        notify_if_needed(vring, false).map(Some)
    }
}

/// The one completion path of the device: add the used element, then let EVENT_IDX decide
/// whether the driver wants an interrupt, and only then signal the call eventfd
/// (`signal_used_queue` always signals). A `drop-interrupt` fault skips the signal here,
/// leaving the used entry for the driver's timer poll to find.
pub fn complete_and_notify<V>(
    vring: &V,
    head: u16,
    used_len: u32,
    drop_interrupt: bool,
) -> Result<SignalOutcome, VhuScsiError>
where
    V: VringT<GuestMemory>,
{
    vring
        .add_used(head, used_len)
        .map_err(VhuScsiError::CouldNotAddUsed)?;
    notify_if_needed(vring, drop_interrupt)
}

/// The interrupt decision for the used entries added since the last one: signal the call
/// eventfd if EVENT_IDX says the driver wants it and no `drop-interrupt` fault drops it.
fn notify_if_needed<V>(vring: &V, drop_interrupt: bool) -> Result<SignalOutcome, VhuScsiError>
where
    V: VringT<GuestMemory>,
{
    let needed = vring
        .needs_notification()
        .map_err(VhuScsiError::CouldNotCheckNotification)?;
    if !needed {
        return Ok(SignalOutcome::SuppressedByEventIdx);
    }
    if drop_interrupt {
        return Ok(SignalOutcome::SuppressedByFault);
    }
    vring
        .signal_used_queue()
        .map_err(VhuScsiError::CouldNotSignalUsedQueue)?;
    Ok(SignalOutcome::Sent)
}
