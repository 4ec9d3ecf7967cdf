//! Each worker's timer: held requests whose time has come, and (worker 0) the engine's
//! ticks: spurious interrupts and scheduled events.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use log::{debug, warn};
use vhost_user_backend::VringT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::timerfd::TimerFd;

use super::command::disposition;
use crate::faults::TickAction;
use crate::vhu_scsi::inflight::{InflightEntry, Work};
use crate::vhu_scsi::{lock, queues_of, Chain, VhostUserScsiBackend, VhuScsiError, EVENT_QUEUE};

/// Shortest timer interval: a zero `it_value` would disarm a timerfd.
const MIN_TIMER: Duration = Duration::from_micros(1);

/// Longest: a time_t holds it (a request held until `Duration::MAX` is woken for nothing
/// every 2^32 s instead of failing to arm the timer).
const MAX_TIMER: Duration = Duration::from_secs(1 << 32);

pub(in crate::vhu_scsi) fn new_timer() -> Result<TimerFd, VhuScsiError> {
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

impl VhostUserScsiBackend {
    /// Completes a held request whose time has come.
    pub(in crate::vhu_scsi) fn complete_due(
        &self,
        queue: usize,
        entry: InflightEntry<Chain>,
    ) -> Result<(), VhuScsiError> {
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
                entry.popped,
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
                entry.popped,
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
            // A reset or a stop waits for what the timer completes (see `RingEpoch`).
            let _pass = self.rings[queue].pass();
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
    pub(in crate::vhu_scsi) fn rearm_timer(&self, thread: usize) -> Result<(), VhuScsiError> {
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
}
