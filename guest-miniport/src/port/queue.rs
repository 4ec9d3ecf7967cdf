//! SRB slots and queueing: the port's bookkeeping of every SRB from submission to
//! its return, which SRB the miniport may take next (N2, N3), starting them through
//! HwStartIo, and the polling duty of a miniport without interrupts (T7).

use crate::platform::Platform;

#[cfg(test)]
use super::Flaw;
use super::{
    scsi_status, LuAddress, Miniport, Port, PortError, PortState, Routine, Rule, Srb, SrbHandle,
    SrbStatus, StartIo, Tag, MAX_SRBS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    Queued,
    /// Given to HwStartIo; the miniport holds the handle.
    Active,
    Completed,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    pub(super) state: SlotState,
    pub(super) srb: Srb,
    pub(super) started_us: u64,
    /// P1 already reported for this SRB.
    pub(super) timeout_flagged: bool,
    /// Times the port queued it again after a bus reset.
    pub(super) retries: u32,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct LuState {
    pub(super) address: LuAddress,
    pub(super) active: u16,
    /// NextLuRequest received since the last HwStartIo to this LU.
    pub(super) ready: bool,
}

/// Slot indices in arrival order; removal from the middle shifts (at most MAX_SRBS).
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotList {
    pub(super) items: [u8; MAX_SRBS],
    pub(super) len: usize,
}

impl SlotList {
    pub(super) const fn new() -> Self {
        SlotList {
            items: [0; MAX_SRBS],
            len: 0,
        }
    }
    pub(super) fn push_back(&mut self, slot: u8) {
        self.items[self.len] = slot;
        self.len += 1;
    }
    pub(super) fn push_front(&mut self, slot: u8) {
        self.items.copy_within(0..self.len, 1);
        self.items[0] = slot;
        self.len += 1;
    }
    pub(super) fn remove(&mut self, at: usize) -> u8 {
        let slot = self.items[at];
        self.items.copy_within(at + 1..self.len, at);
        self.len -= 1;
        slot
    }
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.items[..self.len]
    }
}

impl PortState {
    pub(super) fn lu_index(&self, address: LuAddress) -> Option<usize> {
        self.lus
            .iter()
            .position(|l| l.is_some_and(|l| l.address == address))
    }

    #[cfg(test)]
    pub(super) fn flawed(&self, f: Flaw) -> bool {
        self.flaw == Some(f)
    }

    /// Whether `h` still names an SRB the miniport owns.
    pub(super) fn owns(&self, h: &SrbHandle) -> bool {
        let s = &self.slots[usize::from(h.slot)];
        s.state == SlotState::Active && s.srb.tag == h.tag
    }

    pub(super) fn active_mask(&self) -> u32 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SlotState::Active)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The miniport (or the end of a reset hold) gave an SRB back: it no longer counts
    /// as active on its LU.
    pub(super) fn release_slot(&mut self, slot: u8) {
        let lu = self.slots[usize::from(slot)].srb.lu();
        if let Some(l) = self.lu_index(lu).and_then(|i| self.lus[i].as_mut()) {
            l.active = l.active.saturating_sub(1);
        }
        self.active = self.active.saturating_sub(1);
        if let Some(h) = self.hold.as_mut() {
            h.slots &= !(1 << slot);
        }
    }

    /// The port takes an SRB back into its completed list.
    pub(super) fn finish_slot(&mut self, slot: u8) {
        self.release_slot(slot);
        self.slots[usize::from(slot)].state = SlotState::Completed;
        self.completed.push_back(slot);
        self.stats.completed += 1;
    }

    /// An SRB completed with SRB_STATUS_BUS_RESET goes to the front of the queue again,
    /// as it was submitted, while it has retries left. Returns false when it has none.
    pub(super) fn retry_slot(&mut self, slot: u8) -> bool {
        let s = &self.slots[usize::from(slot)];
        if s.srb.srb_status != SrbStatus::BusReset || s.retries >= self.config.bus_reset_retries {
            return false;
        }
        self.release_slot(slot);
        let s = &mut self.slots[usize::from(slot)];
        s.state = SlotState::Queued;
        s.retries += 1;
        s.timeout_flagged = false;
        s.srb.srb_status = SrbStatus::Pending;
        s.srb.scsi_status = scsi_status::GOOD;
        s.srb.sense_len = 0;
        s.srb.data_transfer_length = 0;
        self.queued.push_front(slot);
        self.stats.bus_reset_retries += 1;
        true
    }
}

impl PortState {
    fn lu_queued(&self, lu: LuAddress) -> bool {
        self.queued
            .as_slice()
            .iter()
            .any(|&s| self.slots[usize::from(s)].srb.lu() == lu)
    }

    /// Whether a reset hold stops the queue (P2).
    pub(super) fn holding(&self) -> bool {
        #[cfg(test)]
        if self.flawed(Flaw::NoResetHold) {
            return false;
        }
        self.hold.is_some()
    }

    /// The position in the queue of the first SRB the miniport may take now. A hold
    /// is looked at here, under the same lock as the take: on several CPUs a reset can
    /// begin on another CPU while HwStartIo's loop runs (P2).
    fn next_startable(&self) -> Option<usize> {
        if self.holding() {
            return None;
        }
        let caps = self.caps?;
        if self.active >= caps.max_outstanding {
            return None;
        }
        #[cfg(test)]
        let ignore_busy = self.flawed(Flaw::IgnoreLuBusy);
        #[cfg(not(test))]
        let ignore_busy = false;
        self.queued.as_slice().iter().position(|&s| {
            let lu = self.slots[usize::from(s)].srb.lu();
            let Some(l) = self.lu_index(lu).and_then(|i| self.lus[i]) else {
                return false;
            };
            // N2: NextRequest opens a target that is not busy. N3: NextLuRequest opens
            // that LU up to its queue depth.
            (self.next_request && (l.active == 0 || ignore_busy))
                || (caps.tagged_queuing && l.ready && l.active < caps.queue_depth)
        })
    }

    /// Takes the next startable SRB off the queue and makes it active: the handle for
    /// HwStartIo, and its LU's index. Checks the port's own view of N2 and P2 first.
    fn take_startable(&mut self, cpu: usize, now: u64) -> Option<(SrbHandle, Option<usize>)> {
        let at = self.next_startable()?;
        let slot = self.queued.remove(at);
        let lu = self.slots[usize::from(slot)].srb.lu();
        let li = self.lu_index(lu);
        // The checker's own view of N2 and P2, independent of next_startable.
        if let Some(l) = li.and_then(|i| self.lus[i]) {
            let may_queue = self.caps.is_some_and(|c| c.tagged_queuing) && l.ready;
            if l.active > 0 && !may_queue {
                self.checker.record_on(
                    cpu,
                    Rule::N2,
                    Routine::Port,
                    now,
                    "port sent a second request to a busy LU without tagged queuing",
                    u64::from(lu.lun),
                );
            }
        }
        if self.hold.is_some() {
            self.checker.record_on(
                cpu,
                Rule::P2,
                Routine::Port,
                now,
                "port started a request during the reset hold",
                0,
            );
        }
        let s = &mut self.slots[usize::from(slot)];
        s.state = SlotState::Active;
        s.started_us = now;
        let handle = SrbHandle {
            slot,
            tag: s.srb.tag,
        };
        self.next_request = false;
        if let Some(l) = li.and_then(|i| self.lus[i].as_mut()) {
            l.ready = false;
            l.active += 1;
        }
        self.active += 1;
        self.stats.start_io_calls += 1;
        self.owed_next = Some(slot);
        self.owed_completed = false;
        Some((handle, li))
    }

    /// HwStartIo gave `handle` back: it goes to the front of the queue and waits for
    /// the miniport's next NextRequest. False when the handle was already completed.
    fn give_back(&mut self, cpu: usize, now: u64, handle: SrbHandle, li: Option<usize>) -> bool {
        self.stats.start_io_busy += 1;
        if self.owed_next == Some(handle.slot) {
            self.owed_next = None;
        }
        if !self.owns(&handle) {
            // Completed and handed back: N1's run-time residue.
            self.checker.record_on(
                cpu,
                Rule::N1,
                Routine::StartIo,
                now,
                "HwStartIo gave back an SRB it had completed",
                u64::from(handle.tag),
            );
            return false;
        }
        self.slots[usize::from(handle.slot)].state = SlotState::Queued;
        self.queued.push_front(handle.slot);
        if let Some(l) = li.and_then(|i| self.lus[i].as_mut()) {
            l.active -= 1;
        }
        self.active -= 1;
        // Wait for the miniport's next NextRequest before trying again.
        self.next_request = false;
        true
    }
}

impl<M: Miniport> Port<M> {
    /// Queues `srb`; returns its tag. It is started when the miniport is ready.
    pub fn submit(&self, mut srb: Srb) -> Result<Tag, PortError<M::Error>> {
        let mut guard = self.core.state.lock();
        let st = &mut *guard;
        if st.caps.is_none() {
            return Err(PortError::NotInitialized);
        }
        let lu = srb.lu();
        if st.lu_index(lu).is_none() {
            let free = st
                .lus
                .iter()
                .position(|l| l.is_none_or(|l| l.active == 0 && !st.lu_queued(l.address)))
                .ok_or(PortError::TooManyLus)?;
            st.lus[free] = Some(LuState {
                address: lu,
                active: 0,
                ready: false,
            });
        }
        let slot = st
            .slots
            .iter()
            .position(|s| s.state == SlotState::Free)
            .ok_or(PortError::QueueFull)?;
        let tag = st.next_tag;
        st.next_tag = st.next_tag.wrapping_add(1).max(1);
        srb.tag = tag;
        srb.srb_status = SrbStatus::Pending;
        st.slots[slot] = Slot {
            state: SlotState::Queued,
            srb,
            started_us: 0,
            timeout_flagged: false,
            retries: 0,
        };
        st.queued.push_back(slot as u8);
        st.stats.submitted += 1;
        Ok(tag)
    }

    /// Passes queued SRBs to HwStartIo while the miniport is ready for them. The
    /// port's state is unlocked while HwStartIo runs.
    pub(super) fn start_queued(&self, platform: &mut dyn Platform) {
        if self.holding() {
            return;
        }
        let cpu = platform.cpu();
        loop {
            let now = platform.now_us();
            let Some((handle, li)) = self.core.state.lock().take_startable(cpu, now) else {
                break;
            };
            match self.call(platform, Routine::StartIo, |m, ctx| m.start_io(ctx, handle)) {
                StartIo::Accepted => {}
                StartIo::Busy(handle) => {
                    self.core.state.lock().give_back(cpu, now, handle, li);
                    break;
                }
            }
        }
        self.check_polling(platform);
    }

    /// T7: a miniport without interrupts finds completions only from HwTimer. A call
    /// dispatched and still running counts as pending: it may ask for the next one.
    pub(super) fn check_polling(&self, platform: &mut dyn Platform) {
        let mut guard = self.core.state.lock();
        let st = &mut *guard;
        let polling = st.caps.is_some_and(|c| !c.interrupts);
        let pending = st.timer.is_pending() || st.timer_dispatched > 0;
        if polling && st.active > 0 && !pending {
            if !st.t7_flagged {
                st.t7_flagged = true;
                let now = platform.now_us();
                st.checker.record_on(
                    platform.cpu(),
                    Rule::T7,
                    Routine::Port,
                    now,
                    "miniport without interrupts holds requests and no HwTimer is pending",
                    u64::from(st.active),
                );
            }
        } else {
            st.t7_flagged = false;
        }
    }

    /// Takes back the oldest completed SRB.
    pub fn poll_completed(&self) -> Option<Srb> {
        let mut st = self.core.state.lock();
        if st.completed.len == 0 {
            return None;
        }
        let slot = st.completed.remove(0);
        let s = &mut st.slots[usize::from(slot)];
        s.state = SlotState::Free;
        Some(s.srb)
    }
}
