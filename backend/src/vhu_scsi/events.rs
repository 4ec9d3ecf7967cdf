//! The event queue: LU changes and fault events, each put in a buffer the driver left
//! there, or lost (and the next one says events were missed).

use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::time::Duration;

use log::{debug, warn};
use vm_memory::{GuestAddressSpace, Le32};

use super::{complete_and_notify, Pop, VhostUserScsiBackend, VhuScsiError, EVENT_QUEUE};
use crate::faults::{ResetReason, VirtioEvent};
use crate::scsi::LuChange;
use crate::virtio::*;

impl VhostUserScsiBackend {
    /// Posts an event for each LU change of the target since the last call: a hot-add is
    /// TRANSPORT_RESET/RESCAN, a hot-remove TRANSPORT_RESET/REMOVED (with
    /// VIRTIO_SCSI_F_HOTPLUG), a capacity change PARAM_CHANGE 2A/09 (with
    /// VIRTIO_SCSI_F_CHANGE). Without the feature the driver gets no event and finds the
    /// change by the unit attention or its next scan (5.6.6.2, 5.6.6.3).
    pub fn announce_lu_changes(&self) -> Result<(), VhuScsiError> {
        if !self.target.has_changes() {
            return Ok(());
        }
        let acked = self.acked_features.load(Ordering::Relaxed);
        let now = self.faults.epoch.now();
        for change in self.target.take_changes() {
            if let Some(event) = lu_change_event(change, acked) {
                self.post_event(event, now)?;
            }
        }
        Ok(())
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
        let mem = atomic.memory();
        let ring = &self.rings[EVENT_QUEUE];
        // The buffer goes back before a stop of the event queue returns (see `RingEpoch`).
        let _pass = ring.pass();
        let (chain, popped) = match ring.pop(&vring, mem.clone()) {
            Pop::Chain(chain, popped) => (chain, popped),
            Pop::Empty => {
                self.event_lost(&event, "no-buffer", now);
                return Ok(());
            }
            Pop::Stopped => {
                self.event_lost(&event, "queue-not-ready", now);
                return Ok(());
            }
        };
        let missed = self.events_missed.swap(false, Ordering::Relaxed);
        let wire = event_wire(&event, missed);
        let head = popped.head();
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
        let Some(outcome) = complete_and_notify(&vring, ring, popped, used, false)? else {
            return Ok(());
        };
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
}

/// The event announcing `change`, if the driver acknowledged the feature it needs.
pub fn lu_change_event(change: LuChange, acked_features: u64) -> Option<VirtioEvent> {
    let has = |bit: u64| acked_features & (1 << bit) != 0;
    match change {
        LuChange::Added(a) if has(VIRTIO_SCSI_F_HOTPLUG) => Some(VirtioEvent::TransportReset {
            target: a.target,
            lun: a.lun,
            reason: ResetReason::Rescan,
        }),
        LuChange::Removed(a) if has(VIRTIO_SCSI_F_HOTPLUG) => Some(VirtioEvent::TransportReset {
            target: a.target,
            lun: a.lun,
            reason: ResetReason::Removed,
        }),
        // CAPACITY DATA HAS CHANGED, the unit attention the LU raised too.
        LuChange::CapacityChanged(a) if has(VIRTIO_SCSI_F_CHANGE) => {
            Some(VirtioEvent::ParamChange {
                target: a.target,
                lun: a.lun,
                asc: 0x2a,
                ascq: 0x09,
            })
        }
        _ => None,
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
    let lun = event_lun(ScsiAddress { target, lun });
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
