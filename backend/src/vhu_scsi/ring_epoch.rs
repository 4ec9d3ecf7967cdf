//! Ring epochs: which set-up of a queue's rings a popped chain belongs to. A device reset
//! (every queue) and a stopped ring (GET_VRING_BASE) begin a new epoch, and a completion
//! of a chain popped in an earlier one is dropped instead of put on the rings the driver
//! set up since: there it would name a descriptor the driver never made available, or
//! answer a new request with an old one's response.
//!
//! The vring's lock makes this exact: a chain is popped, only from an enabled and ready
//! ring, in the same critical section that reads its epoch; a completion is checked in the
//! same critical section that adds it to the used ring (`completion`); and a new epoch
//! begins under that lock. A completion therefore lands before the epoch ends or never.
//!
//! The pass lock lets a reset or a stop wait for the worker's pass in progress (a timer's
//! completions, an event being posted), so that nothing of it touches the rings after the
//! frontend has been told the ring stopped. A TMF that ends held requests of a request
//! queue does not take that queue's pass lock (it would wait behind a busy pass): its
//! completions rely on the check under the vring lock alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use log::debug;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

use super::{lock, Chain, GuestMemory};

/// A popped chain as its completion names it: its head, and the ring epoch it was popped
/// in. Only [`RingEpoch::pop`] makes one (and tests, `popped_now`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Popped {
    head: u16,
    epoch: u64,
}

impl Popped {
    pub fn head(self) -> u16 {
        self.head
    }

    pub(super) fn epoch(self) -> u64 {
        self.epoch
    }
}

/// What [`RingEpoch::pop`] found.
pub enum Pop {
    Chain(Chain, Popped),
    /// No chain available.
    Empty,
    /// The ring is disabled or not ready (a reset or a stop is under way): the pass ends.
    Stopped,
}

/// One queue's ring epoch and pass lock (and, for the tests, how many completions it
/// dropped).
#[derive(Debug)]
pub struct RingEpoch {
    queue: usize,
    epoch: AtomicU64,
    pass: Mutex<()>,
    #[cfg(test)]
    stale: AtomicU64,
}

impl RingEpoch {
    pub fn new(queue: usize) -> Self {
        RingEpoch {
            queue,
            epoch: AtomicU64::new(0),
            pass: Mutex::new(()),
            #[cfg(test)]
            stale: AtomicU64::new(0),
        }
    }

    /// Held by a worker for one pass over the ring, and by a timer completing held
    /// requests; [`RingEpoch::wait_for_pass`] waits for it.
    pub fn pass(&self) -> MutexGuard<'_, ()> {
        lock(&self.pass)
    }

    /// Pops the next chain of an enabled, ready ring, with the epoch it is popped in.
    pub fn pop<V>(&self, vring: &V, mem: GuestMemoryLoadGuard<GuestMemoryMmap>) -> Pop
    where
        V: VringT<GuestMemory>,
    {
        let mut state = vring.get_mut();
        // The handler disables every ring before a device reset reaches us, and unreadies
        // one before a stop does: a chain popped here is of the epoch read here.
        if !state.is_enabled() || !state.get_queue().ready() {
            return Pop::Stopped;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        match state.get_queue_mut().pop_descriptor_chain(mem) {
            Some(chain) => {
                let head = chain.head_index();
                Pop::Chain(chain, Popped { head, epoch })
            }
            None => Pop::Empty,
        }
    }

    /// Whether a completion of `popped` may go on the ring; called under the vring's lock
    /// (see [`RingEpoch::begin_epoch`]). A stale one is logged (and counted for the tests).
    pub(super) fn admits(&self, popped: Popped) -> bool {
        if self.is_current(popped.epoch) {
            return true;
        }
        #[cfg(test)]
        self.stale.fetch_add(1, Ordering::Relaxed);
        debug!(
            "queue {}: completion of descriptor {} dropped: popped before the ring was reset or stopped",
            self.queue, popped.head
        );
        false
    }

    /// Whether `epoch` is the ring's epoch now.
    pub(super) fn is_current(&self, epoch: u64) -> bool {
        epoch == self.epoch.load(Ordering::Acquire)
    }

    /// Begins a new epoch: completions of the chains popped so far are dropped from now
    /// on. Under `vring`'s lock (the vring every completion path of this queue but the
    /// worker's pass uses), so that no completion's check straddles it; a pass in progress
    /// is waited for with [`RingEpoch::wait_for_pass`].
    pub fn begin_epoch(&self, vring: Option<&VringRwLock>) {
        let guard = vring.map(VringT::get_mut);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(guard);
    }

    /// Returns once the pass in progress (or the timer's completions) has ended.
    pub fn wait_for_pass(&self) {
        drop(self.pass());
    }

    /// Completions dropped because their chain was popped in an earlier epoch.
    #[cfg(test)]
    pub fn stale_completions(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// A ticket for `head` in the current epoch, as if just popped (tests that complete
    /// heads they did not pop).
    #[cfg(test)]
    pub fn popped_now(&self, head: u16) -> Popped {
        Popped {
            head,
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }
}
