//! The command each request-queue worker is executing at this moment, so that a TMF on the
//! control queue (another worker) can wait until it is on its used ring before answering:
//! a TMF's effects are complete when its answer is (SAM-5 7.1).
//!
//! A worker serves its queue one command at a time, so one slot per queue is enough. Only
//! the queue's own worker writes its slot; a TMF reads every slot and sleeps on the condvar.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a TMF waits for commands still executing before it gives up and fails: the
/// guest must not be able to stop the control queue with a stuck LU.
pub const TMF_WAIT_BOUND: Duration = Duration::from_secs(2);

/// A slot's value: bits 0..16 the LUN, 16..24 the target, bit 24 set while a command
/// executes, bits 32..64 how many commands the queue has begun (so that a waiter can tell
/// the command it saw from the next one on the same queue).
const BUSY: u64 = 1 << 24;
const ADDRESS: u64 = BUSY - 1;

/// Queues a slot mask can cover (control, event and 62 request queues).
const MAX_SLOTS: usize = 64;

#[derive(Debug)]
pub struct Executing {
    slots: Vec<AtomicU64>,
    /// TMFs sleeping on `ended`: an ending command only takes the lock when one is.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    ended: Condvar,
    bound: Duration,
}

impl Executing {
    pub fn new(queues: usize) -> Executing {
        Executing {
            slots: (0..queues.min(MAX_SLOTS))
                .map(|_| AtomicU64::new(0))
                .collect(),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            ended: Condvar::new(),
            bound: TMF_WAIT_BOUND,
        }
    }

    /// Another bound for [`Executing::wait_for`] (tests of a stuck LU).
    pub fn with_bound(mut self, bound: Duration) -> Executing {
        self.bound = bound;
        self
    }

    /// The slot of `queue`, for its worker while it serves one command. Nothing is marked
    /// until [`ExecutingSlot::begin`]; dropping the slot ends what was begun.
    pub fn slot(&self, queue: usize) -> ExecutingSlot<'_> {
        ExecutingSlot { set: self, queue }
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// TMFs waiting right now (tests synchronise on it instead of sleeping).
    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    fn begin(&self, queue: usize, target: u8, lun: u16) {
        let Some(slot) = self.slots.get(queue) else {
            return;
        };
        let begun = (slot.load(Ordering::Relaxed) >> 32).wrapping_add(1);
        slot.store(
            begun << 32 | BUSY | u64::from(target) << 16 | u64::from(lun),
            Ordering::SeqCst,
        );
        // Pairs with the fence in `wait_for`: either the TMF sees this command and waits
        // for it, or this command sees what the TMF did before looking (its unit
        // attention, the held commands it took).
        fence(Ordering::SeqCst);
    }

    fn end(&self, queue: usize) {
        let Some(slot) = self.slots.get(queue) else {
            return;
        };
        let v = slot.load(Ordering::Relaxed);
        if v & BUSY == 0 {
            return;
        }
        slot.store(v & !(BUSY | ADDRESS), Ordering::SeqCst);
        // Both SeqCst: a waiter that read the slot before this store had already counted
        // itself in `waiters`, so it is notified; one that reads it after sees the change.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.ended.notify_all();
        }
    }

    /// Waits until every command of `target` (of LUN `lun`, if given) that is executing
    /// now is on its used ring, for at most the bound. Commands begun after this call are
    /// not waited for: they see the TMF's effects. Returns how many were still executing
    /// when the bound ran out (0: all done).
    pub fn wait_for(&self, target: u8, lun: Option<u16>) -> usize {
        fence(Ordering::SeqCst);
        let matches = |v: u64| {
            v & BUSY != 0 && (v >> 16) as u8 == target && lun.is_none_or(|l| v as u16 == l)
        };
        let mut seen = [0u64; MAX_SLOTS];
        let mut pending = 0u64;
        for (i, slot) in self.slots.iter().enumerate() {
            let v = slot.load(Ordering::SeqCst);
            if matches(v) {
                seen[i] = v;
                pending |= 1 << i;
            }
        }
        if pending == 0 {
            return 0;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + self.bound;
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            for (i, slot) in self.slots.iter().enumerate() {
                if pending & 1 << i != 0 && slot.load(Ordering::SeqCst) != seen[i] {
                    pending &= !(1 << i);
                }
            }
            let now = Instant::now();
            if pending == 0 || now >= deadline {
                break;
            }
            guard = self
                .ended
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        pending.count_ones() as usize
    }
}

/// One queue's slot while its worker serves one command; see [`Executing::slot`].
#[derive(Debug)]
pub struct ExecutingSlot<'a> {
    set: &'a Executing,
    queue: usize,
}

impl ExecutingSlot<'_> {
    /// The command is now executing on the LU at `target`/`lun`: a TMF for it waits until
    /// this slot is dropped, which must be after its completion is on the used ring.
    /// Called at most once per slot.
    pub fn begin(&self, target: u8, lun: u16) {
        self.set.begin(self.queue, target, lun);
    }
}

impl Drop for ExecutingSlot<'_> {
    fn drop(&mut self) {
        self.set.end(self.queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_for_commands_of_the_lu_and_only_those_begun_before() {
        let e = Executing::new(4);
        assert_eq!(e.wait_for(0, Some(0)), 0, "nothing executing");
        let other = e.slot(2);
        other.begin(0, 1);
        assert_eq!(e.wait_for(0, Some(0)), 0, "another LU");
        assert_eq!(e.wait_for(1, None), 0, "another target");
        drop(other);
        // A slot dropped without a command begun ends nothing.
        drop(e.slot(3));
        assert_eq!(e.wait_for(0, None), 0);
    }

    #[test]
    fn a_waiting_tmf_wakes_when_the_command_ends() {
        // A bound no test run reaches: only the end can wake the TMF.
        let e = Executing::new(4).with_bound(Duration::from_secs(60));
        let slot = e.slot(3);
        slot.begin(0, 5);
        std::thread::scope(|s| {
            let tmf = s.spawn(|| e.wait_for(0, Some(5)));
            while e.waiters() == 0 && !tmf.is_finished() {
                std::thread::yield_now();
            }
            assert!(!tmf.is_finished(), "still waiting for queue 3");
            drop(slot);
            assert_eq!(tmf.join().unwrap(), 0, "woken by the end, not the bound");
        });
        assert_eq!(e.waiters(), 0);
    }

    #[test]
    fn the_next_command_on_the_queue_does_not_keep_the_tmf_waiting() {
        let e = Executing::new(4).with_bound(Duration::from_secs(60));
        let first = e.slot(3);
        first.begin(0, 0);
        std::thread::scope(|s| {
            let tmf = s.spawn(|| e.wait_for(0, Some(0)));
            while e.waiters() == 0 && !tmf.is_finished() {
                std::thread::yield_now();
            }
            drop(first);
            // Same LU, same queue, begun after the TMF looked.
            let next = e.slot(3);
            next.begin(0, 0);
            assert_eq!(tmf.join().unwrap(), 0);
        });
    }

    #[test]
    fn a_stuck_command_ends_the_wait_at_the_bound() {
        let e = Executing::new(4).with_bound(Duration::from_millis(1));
        let stuck = e.slot(2);
        stuck.begin(0, 0);
        assert_eq!(e.wait_for(0, Some(0)), 1);
        assert_eq!(e.waiters(), 0);
        drop(stuck);
    }
}
