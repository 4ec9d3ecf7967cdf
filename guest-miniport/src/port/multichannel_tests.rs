//! T5 and T6 on real threads: Storport's multi-channel mode runs HwStartIo at the same
//! time as HwTimer, so the sample miniport's [`TimerArm`] hand-off and the port's
//! [`InterruptLock`] are checked with an exhaustive interleaving explorer (a small
//! stateless model checker: every access to shared state is a scheduling point, and
//! every schedule is run once, depth first) and with free-running threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::vec::Vec;

use super::checker::{Checker, Routine, Rule};
use super::handoff::{InterruptLock, RoutineGate, SharedFlag, TimerArm};

extern crate std;

std::thread_local! {
    static TID: Cell<usize> = const { Cell::new(usize::MAX) };
}

struct SchedState {
    waiting: Vec<bool>,
    spinning: Vec<bool>,
    done: Vec<bool>,
    current: Option<usize>,
    prefix: Vec<usize>,
    /// (choice, number of choices) at each scheduling decision.
    trace: Vec<(usize, usize)>,
}

/// Runs one thread at a time; the others wait at their next scheduling point.
struct Sched {
    m: Mutex<SchedState>,
    cv: Condvar,
}

const MAX_DECISIONS: usize = 200;

impl Sched {
    fn new(threads: usize, prefix: Vec<usize>) -> Arc<Sched> {
        Arc::new(Sched {
            m: Mutex::new(SchedState {
                waiting: std::vec![false; threads],
                spinning: std::vec![false; threads],
                done: std::vec![false; threads],
                current: None,
                prefix,
                trace: Vec::new(),
            }),
            cv: Condvar::new(),
        })
    }

    fn pick(s: &mut SchedState) {
        let n = s.waiting.len();
        if !(0..n).all(|i| s.done[i] || s.waiting[i]) {
            return;
        }
        let ready: Vec<usize> = (0..n).filter(|&i| s.waiting[i] && !s.done[i]).collect();
        // A spinning thread only runs when nothing else can: it waits for the others.
        let busy: Vec<usize> = ready.iter().copied().filter(|&i| !s.spinning[i]).collect();
        let candidates = if busy.is_empty() { ready } else { busy };
        if candidates.is_empty() {
            return;
        }
        assert!(s.trace.len() < MAX_DECISIONS, "schedule does not terminate");
        let d = s.trace.len();
        let k = s.prefix.get(d).copied().unwrap_or(0);
        s.trace.push((k, candidates.len()));
        s.current = Some(candidates[k]);
    }

    /// A scheduling point: called before every access to shared state.
    fn point(&self, spinning: bool) {
        let tid = TID.with(|t| t.get());
        if tid == usize::MAX {
            return; // the test's own thread, after the run
        }
        let mut s = self.m.lock().unwrap();
        s.waiting[tid] = true;
        s.spinning[tid] = spinning;
        if s.current == Some(tid) {
            s.current = None;
        }
        if s.current.is_none() {
            Self::pick(&mut s);
            self.cv.notify_all();
        }
        while s.current != Some(tid) {
            s = self.cv.wait(s).unwrap();
        }
        s.waiting[tid] = false;
    }

    fn finish(&self) {
        let tid = TID.with(|t| t.get());
        let mut s = self.m.lock().unwrap();
        s.done[tid] = true;
        s.current = None;
        Self::pick(&mut s);
        self.cv.notify_all();
    }
}

/// A flag whose every access is a scheduling point.
struct ModelFlag {
    v: AtomicBool,
    sched: Arc<Sched>,
}

impl ModelFlag {
    fn new(sched: &Arc<Sched>, v: bool) -> Self {
        ModelFlag {
            v: AtomicBool::new(v),
            sched: sched.clone(),
        }
    }
}

impl SharedFlag for ModelFlag {
    fn load(&self) -> bool {
        self.sched.point(false);
        self.v.load(Ordering::SeqCst)
    }
    fn store(&self, value: bool) {
        self.sched.point(false);
        self.v.store(value, Ordering::SeqCst)
    }
    fn compare_exchange(&self, current: bool, new: bool) -> bool {
        self.sched.point(false);
        self.v
            .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// A counter whose every access is a scheduling point.
struct ModelCount {
    v: AtomicU32,
    sched: Arc<Sched>,
}

impl ModelCount {
    fn add(&self, n: u32) {
        self.sched.point(false);
        self.v.fetch_add(n, Ordering::SeqCst);
    }
    fn take(&self) -> u32 {
        self.sched.point(false);
        self.v.swap(0, Ordering::SeqCst)
    }
    fn load(&self) -> u32 {
        self.sched.point(false);
        self.v.load(Ordering::SeqCst)
    }
}

/// Runs `body(tid, state)` on `threads` threads under every schedule. Returns the
/// number of schedules, or the first schedule after which `ok` failed.
fn explore<S: Send + Sync + 'static>(
    threads: usize,
    make: impl Fn(&Arc<Sched>) -> S,
    body: fn(usize, &S),
    ok: fn(&S) -> bool,
) -> Result<usize, Vec<usize>> {
    let mut prefix: Vec<usize> = Vec::new();
    let mut runs = 0;
    loop {
        runs += 1;
        let sched = Sched::new(threads, prefix.clone());
        let state = Arc::new(make(&sched));
        let handles: Vec<_> = (0..threads)
            .map(|tid| {
                let (sched, state) = (sched.clone(), state.clone());
                std::thread::spawn(move || {
                    TID.with(|t| t.set(tid));
                    sched.point(false);
                    body(tid, &state);
                    sched.finish();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let trace = sched.m.lock().unwrap().trace.clone();
        if !ok(&state) {
            return Err(trace.iter().map(|&(k, _)| k).collect());
        }
        // Depth first: bump the deepest decision that has an untried alternative.
        let Some(d) = trace.iter().rposition(|&(k, n)| k + 1 < n) else {
            return Ok(runs);
        };
        prefix = trace[..d].iter().map(|&(k, _)| k).collect();
        prefix.push(trace[d].0 + 1);
    }
}

// ------------------------------------------------------------------------------- T6

/// HwStartIo (thread 0) queues one request and arms the timer; HwTimer (thread 1),
/// running for the pending call, consumes it, completes what it finds, and re-arms if
/// work is left. `late_consume` is the mutant: it consumes the call after its poll.
struct T6Model {
    arm: TimerArm<ModelFlag>,
    work: ModelCount,
    late_consume: bool,
}

fn t6_make(late_consume: bool) -> impl Fn(&Arc<Sched>) -> T6Model {
    move |sched| T6Model {
        arm: TimerArm::new(ModelFlag::new(sched, true)),
        work: ModelCount {
            v: AtomicU32::new(0),
            sched: sched.clone(),
        },
        late_consume,
    }
}

fn t6_body(tid: usize, m: &T6Model) {
    if tid == 0 {
        // HwStartIo
        m.work.add(1);
        let _ = m.arm.try_arm();
    } else {
        // HwTimer
        if !m.late_consume {
            m.arm.consume();
        }
        m.work.take();
        if m.work.load() > 0 {
            let _ = m.arm.try_arm();
        }
        if m.late_consume {
            m.arm.consume();
        }
    }
}

/// No request is left without a pending HwTimer to find it.
fn t6_ok(m: &T6Model) -> bool {
    m.work.load() == 0 || m.arm.is_armed()
}

/// The checker's verdict on one explored hand-off.
fn t6_check(late_consume: bool) -> (Checker, usize) {
    let mut checker = Checker::default();
    match explore(2, t6_make(late_consume), t6_body, t6_ok) {
        Ok(runs) => (checker, runs),
        Err(schedule) => {
            checker.record(
                Rule::T6,
                Routine::Timer,
                0,
                "HwStartIo and HwTimer hand-off loses a request under an interleaving",
                schedule.len() as u64,
            );
            (checker, 0)
        }
    }
}

#[test]
fn t6_start_io_and_hwtimer_hand_off_without_a_lock() {
    let (checker, runs) = t6_check(false);
    assert_eq!(checker.count(), 0);
    assert!(runs >= 10, "explored only {runs} schedules");

    // And free-running on real threads, with the hand-off the miniport uses.
    const N: u32 = 20_000;
    let arm = Arc::new(TimerArm::<AtomicBool>::new(AtomicBool::new(false)));
    let work = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU32::new(0));
    let start_io = {
        let (arm, work, done) = (arm.clone(), work.clone(), done.clone());
        std::thread::spawn(move || {
            for _ in 0..N {
                work.fetch_add(1, Ordering::SeqCst);
                arm.try_arm();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let timer = {
        let (arm, work, done, completed) =
            (arm.clone(), work.clone(), done.clone(), completed.clone());
        std::thread::spawn(move || loop {
            let finished = done.load(Ordering::SeqCst);
            if arm.is_armed() {
                arm.consume();
                completed.fetch_add(work.swap(0, Ordering::SeqCst), Ordering::SeqCst);
                if work.load(Ordering::SeqCst) > 0 {
                    arm.try_arm();
                }
            } else if finished {
                return;
            } else {
                std::hint::spin_loop();
            }
        })
    };
    start_io.join().unwrap();
    timer.join().unwrap();
    assert_eq!(work.load(Ordering::SeqCst), 0, "a request was stranded");
    assert_eq!(completed.load(Ordering::SeqCst), N);
}

#[test]
fn t6_mutant_consuming_the_timer_after_the_poll_is_flagged() {
    let (checker, _) = t6_check(true);
    assert!(checker.flagged(Rule::T6));
}

// ------------------------------------------------------------------------------- T5

/// A multi-channel port's interrupt path (thread 0: HwInterrupt) and timer path
/// (thread 1: HwTimer). Both take the port's [`InterruptLock`] unless the port is
/// broken; the [`RoutineGate`] records what overlaps.
struct T5Model {
    lock: InterruptLock<ModelFlag>,
    gate: RoutineGate,
    sched: Arc<Sched>,
    use_lock: bool,
    checker: Mutex<Checker>,
}

fn t5_body(tid: usize, m: &T5Model) {
    let routine = if tid == 0 {
        Routine::Interrupt
    } else {
        Routine::Timer
    };
    if m.use_lock {
        m.lock.lock(|| m.sched.point(true));
    }
    let overlap = m.gate.enter(routine);
    if RoutineGate::breaks_t5(routine, overlap) {
        m.checker.lock().unwrap().record(
            Rule::T5,
            routine,
            0,
            "HwTimer and HwInterrupt ran at the same time",
            u64::from(overlap),
        );
    }
    m.sched.point(false); // the routine's body
    m.gate.exit(routine);
    if m.use_lock {
        m.lock.unlock();
    }
}

fn t5_check(use_lock: bool) -> (Checker, usize) {
    let make = move |sched: &Arc<Sched>| T5Model {
        lock: InterruptLock::new(ModelFlag::new(sched, false)),
        gate: RoutineGate::new(),
        sched: sched.clone(),
        use_lock,
        checker: Mutex::new(Checker::default()),
    };
    // Explore every schedule, collecting what the gate reported in any of them.
    let found = Arc::new(Mutex::new(Checker::default()));
    let runs = {
        let found = found.clone();
        let mut prefix: Vec<usize> = Vec::new();
        let mut runs = 0;
        loop {
            runs += 1;
            let sched = Sched::new(2, prefix.clone());
            let state = Arc::new(make(&sched));
            let hs: Vec<_> = (0..2)
                .map(|tid| {
                    let (sched, state) = (sched.clone(), state.clone());
                    std::thread::spawn(move || {
                        TID.with(|t| t.set(tid));
                        sched.point(false);
                        t5_body(tid, &state);
                        sched.finish();
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            let c = *state.checker.lock().unwrap();
            let mut f = found.lock().unwrap();
            for v in c.violations() {
                f.record(v.rule, v.routine, v.time_us, v.message, v.value);
            }
            let trace = sched.m.lock().unwrap().trace.clone();
            let Some(d) = trace.iter().rposition(|&(k, n)| k + 1 < n) else {
                break runs;
            };
            prefix = trace[..d].iter().map(|&(k, _)| k).collect();
            prefix.push(trace[d].0 + 1);
        }
    };
    let c = *found.lock().unwrap();
    (c, runs)
}

#[test]
fn t5_hwtimer_never_runs_with_hwinterrupt() {
    let (checker, runs) = t5_check(true);
    assert_eq!(checker.count(), 0);
    assert!(runs >= 2);
    // The gate lets HwStartIo overlap HwTimer in multi-channel mode (T6), nothing else.
    let gate = RoutineGate::new();
    assert_eq!(gate.enter(Routine::Timer), 0);
    assert_eq!(gate.enter(Routine::StartIo), 0);
    assert_ne!(gate.enter(Routine::Interrupt), 0);
}

#[test]
fn t5_mutant_port_without_the_interrupt_lock_is_flagged() {
    let (checker, _) = t5_check(false);
    assert!(checker.flagged(Rule::T5));
}
