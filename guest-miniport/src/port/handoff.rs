//! Lock-free hand-offs for Storport's multi-channel mode, where HwStartIo is not
//! synchronized with HwTimer (T6), and the routine gate that checks which routines may
//! overlap (T5, T6).
//!
//! [`TimerArm`] is the sample miniport's hand-off: whether a RequestTimerCall is pending.
//! HwStartIo arms the timer after queuing work; HwTimer consumes the flag *before* it
//! polls, so work queued concurrently is either seen by that poll or arms a new call.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::checker::Routine;

/// A boolean shared between routines that may run at the same time. Implemented by
/// `AtomicBool`; tests implement it with a scheduler that interleaves every access.
pub trait SharedFlag {
    fn load(&self) -> bool;
    fn store(&self, value: bool);
    /// Sets `new` if the value is `current`; returns whether it did.
    fn compare_exchange(&self, current: bool, new: bool) -> bool;
}

impl SharedFlag for AtomicBool {
    fn load(&self) -> bool {
        // SeqCst: the flag orders against the miniport's queue state (see TimerArm).
        AtomicBool::load(self, Ordering::SeqCst)
    }
    fn store(&self, value: bool) {
        AtomicBool::store(self, value, Ordering::SeqCst)
    }
    fn compare_exchange(&self, current: bool, new: bool) -> bool {
        AtomicBool::compare_exchange(self, current, new, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }
}

/// "A RequestTimerCall is pending", handed between HwStartIo and HwTimer (T6).
#[derive(Debug, Default)]
pub struct TimerArm<F: SharedFlag = AtomicBool> {
    armed: F,
}

impl<F: SharedFlag> TimerArm<F> {
    pub fn new(flag: F) -> Self {
        TimerArm { armed: flag }
    }

    /// True when the caller must send RequestTimerCall: only one routine wins the
    /// compare-and-exchange, so the pending call is not replaced (and postponed, T1)
    /// by every HwStartIo.
    pub fn try_arm(&self) -> bool {
        self.armed.compare_exchange(false, true)
    }

    /// Start of HwTimer: its call is used up. Must come before HwTimer looks for work.
    pub fn consume(&self) {
        self.armed.store(false);
    }

    pub fn is_armed(&self) -> bool {
        self.armed.load()
    }

    /// Sets the flag with a plain store, whatever it held: only the planted bug
    /// `timer-arm-no-cas` arms this way (a racing HwTimer's consume is lost, T6).
    pub fn set(&self) {
        self.armed.store(true);
    }
}

/// The routines running now, as a bit set, checked on every entry. In Storport's
/// multi-channel mode HwStartIo may overlap HwTimer (T6); HwTimer never overlaps
/// HwInterrupt (T5), and nothing else overlaps.
#[derive(Debug, Default)]
pub struct RoutineGate {
    running: AtomicU32,
}

const fn bit(r: Routine) -> u32 {
    1 << (r as u32)
}

impl RoutineGate {
    pub const fn new() -> Self {
        RoutineGate {
            running: AtomicU32::new(0),
        }
    }

    /// Marks `routine` running. Returns the routines it overlaps that it must not.
    pub fn enter(&self, routine: Routine) -> u32 {
        let before = self.running.fetch_or(bit(routine), Ordering::AcqRel);
        let allowed = match routine {
            Routine::StartIo => bit(Routine::Timer),
            Routine::Timer => bit(Routine::StartIo),
            _ => 0,
        };
        before & !allowed
    }

    pub fn exit(&self, routine: Routine) {
        self.running.fetch_and(!bit(routine), Ordering::AcqRel);
    }

    /// Whether an overlap found by [`RoutineGate::enter`] breaks T5 (HwTimer with
    /// HwInterrupt) rather than a general serialization duty.
    pub fn breaks_t5(routine: Routine, overlap: u32) -> bool {
        match routine {
            Routine::Timer => overlap & bit(Routine::Interrupt) != 0,
            Routine::Interrupt => overlap & bit(Routine::Timer) != 0,
            _ => false,
        }
    }
}

/// A spin lock a multi-channel port takes around HwInterrupt and HwTimer (T5).
#[derive(Debug, Default)]
pub struct InterruptLock<F: SharedFlag = AtomicBool> {
    held: F,
}

impl<F: SharedFlag> InterruptLock<F> {
    pub fn new(flag: F) -> Self {
        InterruptLock { held: flag }
    }

    /// Spins until the lock is taken; `spin` runs between attempts.
    pub fn lock(&self, mut spin: impl FnMut()) {
        while !self.held.compare_exchange(false, true) {
            spin();
        }
    }

    pub fn unlock(&self) {
        self.held.store(false);
    }
}
