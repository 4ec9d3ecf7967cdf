//! The port's locks on several CPUs: which ones each routine runs under (Storport's
//! table, [`Locks::for_routine`]), the checker's own view of who runs where (T5), and
//! [`InterruptShared`], the state a miniport shares with HwInterrupt.
//!
//! | routine | half duplex, one channel | full duplex | multi-channel |
//! |---|---|---|---|
//! | HwInterrupt, HwDisableInterruptsCallback | interrupt | interrupt | interrupt |
//! | HwTimer, HwResetBus | StartIo + interrupt | StartIo | (as the duplex says) |
//! | HwStartIo | StartIo | StartIo | none |
//! | HwEnableInterruptsCallback | StartIo | StartIo | StartIo |
//! | HwInitialize | interrupt | interrupt | interrupt |
//!
//! The StartIo lock is always taken before the interrupt lock, and the port's own state
//! lock is never held while either is taken, so they cannot deadlock.

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::platform::{Platform, MAX_CPUS};

use super::checker::Routine;
use super::miniport::Synchronization;

/// The locks a routine runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Locks {
    pub(super) start_io: bool,
    pub(super) interrupt: bool,
}

impl Locks {
    /// Storport's table (StorPortAcquireSpinLock's remarks), for `sync`.
    pub(super) fn for_routine(sync: Synchronization, routine: Routine) -> Locks {
        let half = !sync.full_duplex;
        let (start_io, interrupt) = match routine {
            Routine::FindAdapter | Routine::Port => (false, false),
            Routine::Initialize | Routine::Interrupt | Routine::DisableInterruptsCallback => {
                (false, true)
            }
            Routine::StartIo => (!sync.multi_channel, false),
            Routine::Timer | Routine::ResetBus => (true, half),
            Routine::EnableInterruptsCallback => (true, false),
        };
        Locks {
            start_io,
            interrupt,
        }
    }
}

/// Tries before a waiter gives its CPU back to the machine.
const SPINS: u32 = 200;

/// One of the port's locks (the interrupt lock, the StartIo lock): a spin lock whose
/// waiters, after a few tries, give their CPU back to the machine
/// ([`Platform::pause`]) until the holder lets go and wakes them. On a virtual machine
/// whose CPUs outnumber the host's free ones, a waiter that kept spinning would keep the
/// holder's CPU from running at all.
pub(super) struct PortLock {
    lock: spin::Mutex<()>,
    /// CPUs paused on the lock, one bit each.
    waiting: AtomicU32,
}

/// A [`PortLock`] held; give it back with [`PortLock::release`].
pub(super) struct Held<'a> {
    _guard: spin::MutexGuard<'a, ()>,
}

impl PortLock {
    pub(super) const fn new() -> Self {
        PortLock {
            lock: spin::Mutex::new(()),
            waiting: AtomicU32::new(0),
        }
    }

    pub(super) fn acquire(&self, platform: &mut dyn Platform) -> Held<'_> {
        let me = 1 << platform.cpu();
        let mut tries = 0;
        loop {
            if let Some(g) = self.lock.try_lock() {
                return Held { _guard: g };
            }
            if tries < SPINS {
                tries += 1;
                core::hint::spin_loop();
                continue;
            }
            // Announced before the last try, with interrupts masked, so the wake of a
            // release after it is pending when the pause starts, and ends it.
            let was_enabled = platform.disable_interrupts();
            self.waiting.fetch_or(me, Ordering::SeqCst);
            let got = self.lock.try_lock();
            if got.is_none() {
                platform.pause();
            }
            self.waiting.fetch_and(!me, Ordering::SeqCst);
            platform.restore_interrupts(was_enabled);
            if let Some(g) = got {
                return Held { _guard: g };
            }
        }
    }

    /// Lets go, and wakes the CPUs paused on the lock.
    pub(super) fn release(&self, held: Held<'_>, platform: &dyn Platform) {
        drop(held);
        // The unlock is a release store; without a full fence the load below may be
        // served before it is visible (x86's store buffer), reading no waiter while the
        // waiter's last try still sees the lock held: it would pause with no wake.
        core::sync::atomic::fence(Ordering::SeqCst);
        let waiting = self.waiting.load(Ordering::SeqCst);
        (0..MAX_CPUS)
            .filter(|c| waiting & (1 << c) != 0)
            .for_each(|c| platform.wake(c));
    }
}

const IDLE: u32 = 0;
const INTERRUPT_LOCK: u32 = 1 << 8;

fn code(routine: Routine, interrupt_lock: bool) -> u32 {
    (routine as u32 + 1) | if interrupt_lock { INTERRUPT_LOCK } else { 0 }
}

/// The routine each CPU runs now, and whether it holds the interrupt lock: the
/// checker's view of T5, apart from the lock that carries it out.
#[derive(Debug)]
pub(super) struct Running {
    cpus: [AtomicU32; MAX_CPUS],
}

impl Running {
    pub(super) const fn new() -> Self {
        Running {
            cpus: [const { AtomicU32::new(IDLE) }; MAX_CPUS],
        }
    }

    /// Marks `routine` running on `cpu`. Returns true when it runs at the same time as
    /// a routine on another CPU that T5 keeps it apart from: HwTimer under the interrupt
    /// lock (half duplex) and HwInterrupt.
    pub(super) fn enter(&self, cpu: usize, routine: Routine, interrupt_lock: bool) -> bool {
        let me = code(routine, interrupt_lock);
        // SeqCst: of two CPUs entering at once, at least one sees the other.
        self.cpus[cpu].store(me, Ordering::SeqCst);
        let timer_locked = code(Routine::Timer, true);
        let interrupt = code(Routine::Interrupt, true);
        self.cpus.iter().enumerate().any(|(other, c)| {
            let them = c.load(Ordering::SeqCst);
            other != cpu
                && ((me == timer_locked && them == interrupt)
                    || (me == interrupt && them == timer_locked))
        })
    }

    pub(super) fn exit(&self, cpu: usize) {
        self.cpus[cpu].store(IDLE, Ordering::SeqCst);
    }
}

/// What a miniport shares with HwInterrupt: Storport's device extension as far as the
/// interrupt touches it. HwInterrupt and every routine that goes through
/// [`PortContext::synchronize_access`](super::PortContext::synchronize_access) reach it
/// holding the port's interrupt lock, so none of them is in it while another is (T5).
///
/// It also has a lock of its own, which those paths always find free. That keeps it
/// sound whatever a miniport does, and lets the checker see a breach of T5 when it
/// happens: a routine that goes in without the interrupt lock
/// ([`PortContext::unsynchronized_access`](super::PortContext::unsynchronized_access))
/// while another is in it makes one of them wait, and that wait is the violation.
pub struct InterruptShared<T> {
    data: spin::Mutex<T>,
    /// The routine (its code) in or entering the state with the interrupt lock, and one
    /// without it; 0 for none.
    locked: AtomicU8,
    unlocked: AtomicU8,
    /// Times an opener found the state taken (tests wait for it).
    #[cfg(test)]
    contended: AtomicU32,
}

impl<T> InterruptShared<T> {
    pub const fn new(value: T) -> Self {
        InterruptShared {
            data: spin::Mutex::new(value),
            locked: AtomicU8::new(0),
            unlocked: AtomicU8::new(0),
            #[cfg(test)]
            contended: AtomicU32::new(0),
        }
    }

    /// Times an opener found the state taken.
    #[cfg(test)]
    pub(super) fn contended(&self) -> u32 {
        self.contended.load(Ordering::SeqCst)
    }

    /// The state, for its owner outside the routines: before the port runs, after it,
    /// or from a [`Miniport`](super::Miniport) method the port calls holding the
    /// interrupt lock.
    pub fn lock(&self) -> spin::MutexGuard<'_, T> {
        self.data.lock()
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Opens the state for `routine`, which holds the interrupt lock or not. Returns the
    /// routine that broke T5 when the state was not free: the one without the lock.
    pub(super) fn open(
        &self,
        routine: Routine,
        interrupt_lock: bool,
    ) -> (SharedGuard<'_, T>, Option<Routine>) {
        let (mine, theirs) = if interrupt_lock {
            (&self.locked, &self.unlocked)
        } else {
            (&self.unlocked, &self.locked)
        };
        mine.store(routine as u8 + 1, Ordering::SeqCst);
        let mut breach = None;
        let guard = loop {
            if let Some(g) = self.data.try_lock() {
                break g;
            }
            #[cfg(test)]
            self.contended.fetch_add(1, Ordering::SeqCst);
            // Held by an owner's read (no mark) is not a breach: wait it out.
            let other = theirs.load(Ordering::SeqCst);
            if breach.is_none() && other != 0 {
                breach = Some(if interrupt_lock {
                    Routine::from_code(other - 1)
                } else {
                    routine
                });
            }
            core::hint::spin_loop();
        };
        (SharedGuard { guard, mark: mine }, breach)
    }
}

/// The state opened by a routine; its mark goes when it closes.
pub(super) struct SharedGuard<'a, T> {
    guard: spin::MutexGuard<'a, T>,
    mark: &'a AtomicU8,
}

impl<T> core::ops::Deref for SharedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> core::ops::DerefMut for SharedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for SharedGuard<'_, T> {
    fn drop(&mut self) {
        self.mark.store(0, Ordering::SeqCst);
    }
}
