//! The port on several CPUs, with host threads as CPUs: the locks of each
//! synchronization model (T5, T6), a breach of T5 caught when it happens, the deferred
//! callbacks on the CPU that asked for them (I3, I4), the routing of MSI-X messages and
//! HwTimer, N4 across CPUs, and the per-CPU counts.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;
use std::vec::Vec;

use super::handoff::TimerArm;
use super::*;
use crate::platform::{CpuWork, Events, Platform};

extern crate std;

const TICK: u32 = 1_000;
/// A tick, and an interrupt on MSI-X entry 0.
const A_TICK: Events = Events {
    ticks: 1,
    vectors: 0,
};
const AN_INTERRUPT: Events = Events {
    ticks: 0,
    vectors: 1,
};

/// One batch of `events` on CPU `cpu`.
fn on(port: &Port<Worker>, cpu: usize, start: Instant, events: Events) {
    port.dispatch(&mut ThreadPlatform::new(cpu, start), events);
}

/// One CPU of the host test machine: real time, and the MSI-X messages it handed out.
struct ThreadPlatform {
    cpu: usize,
    start: Instant,
    messages: Arc<Mutex<Vec<(u16, usize)>>>,
}

impl ThreadPlatform {
    fn new(cpu: usize, start: Instant) -> Self {
        ThreadPlatform {
            cpu,
            start,
            messages: Arc::default(),
        }
    }
}

impl Platform for ThreadPlatform {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn stall_us(&mut self, us: u32) {
        let until = self.now_us() + u64::from(us);
        while self.now_us() < until {
            core::hint::spin_loop();
        }
    }
    fn tick_us(&self) -> u32 {
        TICK
    }
    fn wait_for_events(&mut self) -> Events {
        Events::default()
    }
    fn msi_message(&self, entry: u16, cpu: usize) -> Option<(u64, u32)> {
        self.messages.lock().unwrap().push((entry, cpu));
        Some((0xfee0_0000 | (cpu as u64) << 12, 0x40 + u32::from(entry)))
    }
    fn cpu(&self) -> usize {
        self.cpu
    }
    fn cpus(&self) -> usize {
        2
    }
    fn pause(&mut self) {
        std::thread::yield_now();
    }
    fn with_secondaries(&mut self, _: &dyn CpuWork, body: &mut dyn FnMut(&mut dyn Platform)) {
        body(self);
    }
}

/// A miniport whose routines work for a while on what they share with HwInterrupt,
/// so that overlaps have room to happen.
struct Worker {
    sync: Synchronization,
    /// HwTimer reaches the shared state without the interrupt lock (a miniport bug).
    timer_unlocked: bool,
    /// Microseconds each routine spends in the shared state.
    busy_us: u64,
    shared: InterruptShared<Vec<SrbHandle>>,
    timer_arm: TimerArm,
    /// HwInterrupt asks for the deferred callbacks; the CPU each ran on. The enable
    /// callback asks for CallDisableInterrupts on its second call.
    defer: bool,
    deferred: AtomicBool,
    enable_calls: AtomicU32,
    enable_cpu: AtomicU64,
    disable_cpu: AtomicU64,
    timer_cpus: AtomicU32,
    /// HwStartIo waits here, with the SRB handed to HwInterrupt, until another CPU
    /// completed it; only then does it send NextLuRequest. Once something completed,
    /// it no longer waits.
    late_next: Option<Arc<Barrier>>,
    /// HwInterrupt reports a bus reset (ResetDetected) before it completes.
    reset_in_interrupt: bool,
    completed: AtomicBool,
    /// HwTimer and HwInterrupt both wait here at their start: they overlap for sure.
    meet: Option<Arc<Barrier>>,
    /// HwInterrupt stays in the shared state until another routine found it taken.
    hold_until_contended: bool,
    in_shared: AtomicBool,
    /// No interrupts: HwTimer polls (T7).
    polling: bool,
    /// HwTimer waits here twice: once it runs, and before it returns.
    hold_timer: Option<Arc<Barrier>>,
    /// HwStartIo waits (up to half a second) for HwTimer to come in beside it; the
    /// times either found the other inside.
    wait_for_timer: bool,
    start_io_in: AtomicBool,
    timer_in: AtomicBool,
    overlaps: AtomicU32,
}

impl Worker {
    fn new(sync: Synchronization) -> Self {
        Worker {
            sync,
            timer_unlocked: false,
            busy_us: 20,
            shared: InterruptShared::new(Vec::new()),
            timer_arm: TimerArm::default(),
            defer: false,
            deferred: AtomicBool::new(false),
            enable_calls: AtomicU32::new(0),
            enable_cpu: AtomicU64::new(u64::MAX),
            disable_cpu: AtomicU64::new(u64::MAX),
            timer_cpus: AtomicU32::new(0),
            late_next: None,
            reset_in_interrupt: false,
            completed: AtomicBool::new(false),
            meet: None,
            hold_until_contended: false,
            in_shared: AtomicBool::new(false),
            polling: false,
            hold_timer: None,
            wait_for_timer: false,
            start_io_in: AtomicBool::new(false),
            timer_in: AtomicBool::new(false),
            overlaps: AtomicU32::new(0),
        }
    }

    fn work(ctx: &mut PortContext<'_>, us: u64) {
        let until = ctx.now_us() + us;
        while ctx.now_us() < until {
            core::hint::spin_loop();
        }
    }
}

impl Miniport for Worker {
    type Error = &'static str;

    fn find_adapter(&self, _: &mut PortContext<'_>) -> Result<AdapterCapabilities, &'static str> {
        Ok(AdapterCapabilities {
            max_outstanding: 16,
            tagged_queuing: true,
            queue_depth: 16,
            interrupts: !self.polling,
        })
    }

    fn initialize(&self, ctx: &mut PortContext<'_>) -> Result<(), &'static str> {
        if !self.polling {
            ctx.msi_message(0).ok_or("no message")?;
        }
        ctx.request_timer_call(TICK);
        Ok(())
    }

    fn start_io(&self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
        if self.wait_for_timer {
            self.start_io_in.store(true, Ordering::SeqCst);
            let until = ctx.now_us() + 500_000;
            while !self.timer_in.load(Ordering::SeqCst) && ctx.now_us() < until {
                std::thread::yield_now();
            }
            if self.timer_in.load(Ordering::SeqCst) {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            self.start_io_in.store(false, Ordering::SeqCst);
        }
        let s = *ctx.srb(&srb);
        ctx.synchronize_access(&self.shared, |_, held| held.push(srb));
        if let Some(barrier) = self
            .late_next
            .as_ref()
            .filter(|_| !self.completed.load(Ordering::SeqCst))
        {
            barrier.wait(); // HwInterrupt may complete it now...
            barrier.wait(); // ...and has.
        }
        ctx.next_lu_request(s.path, s.target, s.lun);
        StartIo::Accepted
    }

    fn interrupt(&self, ctx: &mut PortContext<'_>, _vector: u16) -> bool {
        if let Some(meet) = &self.meet {
            meet.wait();
        }
        if self.reset_in_interrupt {
            ctx.reset_detected();
        }
        let busy = self.busy_us;
        ctx.synchronize_access(&self.shared, |ctx, held| {
            self.in_shared.store(true, Ordering::SeqCst);
            while self.hold_until_contended && self.shared.contended() == 0 {
                core::hint::spin_loop();
            }
            Self::work(ctx, busy);
            for srb in held.drain(..) {
                ctx.srb_mut(&srb).srb_status = SrbStatus::Success;
                ctx.request_complete(srb);
                self.completed.store(true, Ordering::SeqCst);
            }
        });
        if self.defer && !self.deferred.swap(true, Ordering::SeqCst) {
            ctx.call_enable_interrupts();
        }
        true
    }

    fn timer(&self, ctx: &mut PortContext<'_>) {
        if let Some(meet) = &self.meet {
            meet.wait();
        }
        self.timer_arm.consume();
        if self.wait_for_timer {
            self.timer_in.store(true, Ordering::SeqCst);
            if self.start_io_in.load(Ordering::SeqCst) {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
        if let Some(hold) = &self.hold_timer {
            hold.wait();
            hold.wait();
        }
        self.timer_cpus.fetch_or(1 << ctx.cpu(), Ordering::SeqCst);
        let busy = self.busy_us;
        let work = |ctx: &mut PortContext<'_>, _: &mut Vec<SrbHandle>| Self::work(ctx, busy);
        if self.timer_unlocked {
            ctx.unsynchronized_access(&self.shared, work);
        } else {
            ctx.synchronize_access(&self.shared, work);
        }
        if self.timer_arm.try_arm() {
            ctx.request_timer_call(TICK);
        }
    }

    fn reset_bus(&self, _: &mut PortContext<'_>, _: u8) -> bool {
        true
    }

    fn enable_interrupts_callback(&self, ctx: &mut PortContext<'_>) {
        self.enable_cpu.store(ctx.cpu() as u64, Ordering::SeqCst);
        if self.enable_calls.fetch_add(1, Ordering::SeqCst) == 1 {
            ctx.call_disable_interrupts();
        }
    }

    fn disable_interrupts_callback(&self, ctx: &mut PortContext<'_>) {
        self.disable_cpu.store(ctx.cpu() as u64, Ordering::SeqCst);
    }

    fn synchronization(&self) -> Synchronization {
        self.sync
    }
}

const FULL_DUPLEX: Synchronization = Synchronization {
    full_duplex: true,
    multi_channel: true,
};

/// The port's settings on two CPUs: interrupts on CPU 1, the timer on `timer_cpu`. The
/// routines' times are wall time of host threads that a busy host preempts, so the
/// time limits (I2, P4) are out of these tests' way.
fn config(timer_cpu: usize) -> PortConfig {
    PortConfig {
        routing: Routing {
            cpus: 2,
            interrupt_cpu: 1,
            timer_cpu,
        },
        checker: CheckerConfig {
            max_interrupt_us: 60_000_000,
            max_routine_us: 60_000_000,
            ..CheckerConfig::default()
        },
        ..PortConfig::new(TICK)
    }
}

/// A port over `m` on two CPUs (see [`config`]), initialized.
fn two_cpus(m: Worker, timer_cpu: usize, start: Instant) -> Port<Worker> {
    let port = Port::with_config(m, config(timer_cpu));
    port.initialize(&mut ThreadPlatform::new(RUNNER_CPU, start))
        .unwrap();
    port
}

/// CPU 0 dispatches `rounds` ticks (HwTimer each time) while CPU 1 dispatches as many
/// interrupts; returns the port's checker afterwards.
fn timer_beside_interrupts(port: &Port<Worker>, start: Instant, rounds: u32) -> Checker {
    let cpu = |cpu: usize, events: Events| {
        let mut p = ThreadPlatform::new(cpu, start);
        for _ in 0..rounds {
            port.dispatch(&mut p, events);
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            cpu(
                0,
                Events {
                    ticks: 1,
                    vectors: 0,
                },
            )
        });
        s.spawn(|| {
            cpu(
                1,
                Events {
                    ticks: 0,
                    vectors: 1,
                },
            )
        });
    });
    port.checker()
}

#[test]
fn t5_hwtimer_never_overlaps_hwinterrupt_on_two_cpus() {
    let start = Instant::now();
    let port = two_cpus(Worker::new(Synchronization::HALF_DUPLEX), 0, start);
    let checker = timer_beside_interrupts(&port, start, 300);
    assert_eq!(
        checker.count(),
        0,
        "{:?}",
        checker.violations().collect::<Vec<_>>()
    );
    let stats = port.stats();
    assert!(stats.per_cpu[0].timer_calls > 100, "{stats:?}");
    assert_eq!(stats.per_cpu[1].interrupts, 300);
    assert_eq!(
        (stats.per_cpu[0].interrupts, stats.per_cpu[1].timer_calls),
        (0, 0)
    );
}

/// HwTimer on CPU 0 and HwInterrupt on CPU 1, each dispatched once, at the same time.
fn one_of_each(port: &Port<Worker>, start: Instant) -> Checker {
    std::thread::scope(|s| {
        s.spawn(|| on(port, 0, start, A_TICK));
        s.spawn(|| on(port, 1, start, AN_INTERRUPT));
    });
    port.checker()
}

#[test]
fn t5_mutant_port_without_the_interrupt_lock_is_flagged_on_two_cpus() {
    let start = Instant::now();
    let mut m = Worker::new(Synchronization::HALF_DUPLEX);
    // Both routines wait for each other before they start work: only a port that lets
    // them run together gets past it.
    m.meet = Some(Arc::new(Barrier::new(2)));
    let mut port = Port::with_config(m, config(0));
    port.set_flaw(Flaw::NoInterruptLock);
    port.initialize(&mut ThreadPlatform::new(0, start)).unwrap();
    let checker = one_of_each(&port, start);
    // The port's own view of the overlap: HwTimer under the interrupt lock it skipped.
    assert!(
        checker
            .violations()
            .any(|v| v.rule == Rule::T5 && v.routine == Routine::Port),
        "{:?}",
        checker.violations().collect::<Vec<_>>()
    );
}

#[test]
fn t5_full_duplex_hwtimer_reaches_interrupt_state_through_synchronize_access() {
    let start = Instant::now();
    let port = two_cpus(Worker::new(FULL_DUPLEX), 0, start);
    let checker = timer_beside_interrupts(&port, start, 300);
    assert_eq!(
        checker.count(),
        0,
        "{:?}",
        checker.violations().collect::<Vec<_>>()
    );
}

#[test]
fn t5_mutant_hwtimer_without_the_interrupt_lock_is_flagged_when_it_overlaps() {
    let start = Instant::now();
    let mut m = Worker::new(FULL_DUPLEX);
    m.timer_unlocked = true;
    m.hold_until_contended = true;
    let port = two_cpus(m, 0, start);
    // HwInterrupt is in the shared state first, and stays until HwTimer, going in
    // without the interrupt lock, finds it taken.
    std::thread::scope(|s| {
        s.spawn(|| on(&port, 1, start, AN_INTERRUPT));
        while !port.miniport().in_shared.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        on(&port, 0, start, A_TICK);
    });
    let v: Vec<Violation> = port.checker().violations().collect();
    assert!(
        v.iter()
            .any(|v| v.rule == Rule::T5 && v.routine == Routine::Timer && v.cpu == 0),
        "{v:?}"
    );

    // On one CPU the same miniport never overlaps, and nothing is flagged.
    let mut m = Worker::new(FULL_DUPLEX);
    m.timer_unlocked = true;
    let port = Port::with_config(
        m,
        PortConfig {
            routing: Routing::default(),
            ..config(0)
        },
    );
    let mut p = ThreadPlatform::new(0, start);
    port.initialize(&mut p).unwrap();
    for _ in 0..300 {
        port.dispatch(
            &mut p,
            Events {
                ticks: 1,
                vectors: 1,
            },
        );
    }
    assert!(port.stats().timer_calls > 100);
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn msi_messages_and_hwtimer_go_to_the_cpus_of_the_routing() {
    let start = Instant::now();
    let port = Port::with_config(Worker::new(FULL_DUPLEX), config(1));
    let mut p0 = ThreadPlatform::new(0, start);
    port.initialize(&mut p0).unwrap();
    assert_eq!(*p0.messages.lock().unwrap(), [(0, 1)]);
    // Ticks on CPU 0 do not run HwTimer when the timer is CPU 1's.
    port.dispatch(
        &mut p0,
        Events {
            ticks: 5,
            vectors: 0,
        },
    );
    assert_eq!(port.miniport().timer_cpus.load(Ordering::SeqCst), 0);
    on(&port, 1, start, A_TICK);
    assert_eq!(port.miniport().timer_cpus.load(Ordering::SeqCst), 1 << 1);
    assert_eq!(port.stats().per_cpu[1].timer_calls, 1);
    port.with_calls(|calls, dropped| {
        assert_eq!(dropped, 0);
        assert!(calls
            .iter()
            .any(|c| c.routine == Routine::Timer && c.cpu == 1));
    });
}

#[test]
fn i4_deferred_callbacks_run_on_the_cpu_whose_hwinterrupt_asked() {
    let start = Instant::now();
    let mut m = Worker::new(FULL_DUPLEX);
    m.defer = true;
    let port = two_cpus(m, 0, start);
    let mut p0 = ThreadPlatform::new(0, start);
    let mut p1 = ThreadPlatform::new(1, start);
    port.dispatch(
        &mut p1,
        Events {
            ticks: 0,
            vectors: 1,
        },
    );
    assert_eq!(port.interrupt_phase(), InterruptPhase::EnableCallback);
    // CallEnableInterrupts came from CPU 1: CPU 0 does not run the callbacks, and the
    // interrupts that reach it meanwhile wait (I4).
    port.dispatch(
        &mut p0,
        Events {
            ticks: 0,
            vectors: 1,
        },
    );
    assert_eq!(port.interrupt_phase(), InterruptPhase::EnableCallback);
    assert_eq!(port.miniport().enable_calls.load(Ordering::SeqCst), 1);
    assert_eq!(port.stats().interrupts, 1);
    port.dispatch(&mut p1, Events::default());
    assert_eq!(port.interrupt_phase(), InterruptPhase::Normal);
    let m = port.miniport();
    assert_eq!(m.enable_cpu.load(Ordering::SeqCst), 1);
    assert_eq!(m.disable_cpu.load(Ordering::SeqCst), 1);
    let stats = port.stats();
    // Two enable calls and the disable call on CPU 1; the held interrupt went to
    // HwInterrupt there once the disable callback ran (and did not defer again).
    assert_eq!(stats.per_cpu[1].deferred_calls, 3);
    assert_eq!(stats.per_cpu[0].deferred_calls, 0);
    assert_eq!(stats.interrupts, 2);
    assert_eq!(port.checker().count(), 0);
}

/// The port's checker found nothing; the violations are the message otherwise.
fn assert_nothing_flagged(port: &Port<Worker>) {
    assert_eq!(
        port.checker().count(),
        0,
        "{:?}",
        port.checker().violations().collect::<Vec<_>>()
    );
}

/// A port on two CPUs whose HwStartIo waits on `barrier` (see `Worker::late_next`),
/// with `srbs` requests queued.
fn late_next_port(
    barrier: &Arc<Barrier>,
    reset_in_interrupt: bool,
    srbs: usize,
    start: Instant,
) -> Port<Worker> {
    let mut m = Worker::new(FULL_DUPLEX);
    m.late_next = Some(barrier.clone());
    m.reset_in_interrupt = reset_in_interrupt;
    let port = two_cpus(m, 0, start);
    for _ in 0..srbs {
        port.submit(Srb::new(0, 0, 0, &[0; 6], DataBuffer::NONE))
            .unwrap();
    }
    port
}

/// CPU 0 runs HwStartIo's loop; while its first HwStartIo waits on `barrier`, CPU 1
/// takes an interrupt, then `inside` looks at the port before HwStartIo goes on.
fn interrupt_inside_start_io(
    port: &Port<Worker>,
    barrier: &Barrier,
    start: Instant,
    inside: impl Fn(&Port<Worker>) + Sync,
) {
    std::thread::scope(|s| {
        s.spawn(|| port.start_pending(&mut ThreadPlatform::new(0, start)));
        s.spawn(|| {
            barrier.wait();
            on(port, 1, start, AN_INTERRUPT);
            inside(port);
            barrier.wait();
        });
    });
}

#[test]
fn n4_a_completion_on_another_cpu_before_next_lu_request_is_not_flagged() {
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(2));
    let port = late_next_port(&barrier, false, 1, start);
    interrupt_inside_start_io(&port, &barrier, start, |port| {
        assert!(port.miniport().completed.load(Ordering::SeqCst));
    });
    assert_eq!(port.stats().completed, 1);
    assert_nothing_flagged(&port);
    assert_eq!(
        port.poll_completed().map(|s| s.srb_status),
        Some(SrbStatus::Success)
    );
}

#[test]
fn p2_a_reset_on_another_cpu_stops_the_hwstartio_loop_in_progress() {
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(2));
    let port = late_next_port(&barrier, true, 2, start);
    // CPU 0's loop is inside the first HwStartIo when HwInterrupt on CPU 1 reports a
    // bus reset; the loop must not take the second SRB during the hold.
    interrupt_inside_start_io(&port, &barrier, start, |_| {});
    assert_eq!(port.stats().resets_detected, 1);
    assert_eq!(port.stats().completed, 1);
    assert_eq!(port.active(), 0, "the second SRB waits for the hold's end");
    assert_nothing_flagged(&port);
}

/// HwStartIo on CPU 0 waits for HwTimer, dispatched on CPU 1 once HwStartIo is in;
/// returns how often either found the other inside, and the port's stats.
fn start_io_beside_timer(sync: Synchronization) -> (u32, PortStats) {
    let start = Instant::now();
    let mut m = Worker::new(sync);
    m.wait_for_timer = true;
    let port = two_cpus(m, 1, start);
    port.submit(Srb::new(0, 0, 0, &[0; 6], DataBuffer::NONE))
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| port.start_pending(&mut ThreadPlatform::new(0, start)));
        s.spawn(|| {
            while !port.miniport().start_io_in.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            on(&port, 1, start, A_TICK);
        });
    });
    (
        port.miniport().overlaps.load(Ordering::SeqCst),
        port.stats(),
    )
}

#[test]
fn t6_one_channel_keeps_hwstartio_and_hwtimer_apart_multi_channel_does_not() {
    // Without multi-channel the StartIo lock covers HwTimer: it waits until HwStartIo
    // returned, on whatever CPU it runs.
    let one_channel = Synchronization {
        full_duplex: true,
        multi_channel: false,
    };
    let (overlaps, stats) = start_io_beside_timer(one_channel);
    assert_eq!(overlaps, 0);
    assert_eq!(
        (
            stats.per_cpu[0].start_io_calls,
            stats.per_cpu[1].timer_calls
        ),
        (1, 1),
        "{stats:?}"
    );
    // With it, the two run at the same time, and the miniport guards its own state.
    let (overlaps, stats) = start_io_beside_timer(FULL_DUPLEX);
    assert!(overlaps >= 1, "{stats:?}");
    assert_eq!(stats.per_cpu[1].timer_calls, 1, "{stats:?}");
}

#[test]
fn t7_a_hwtimer_running_on_another_cpu_counts_as_pending() {
    let start = Instant::now();
    let hold = Arc::new(Barrier::new(2));
    let mut m = Worker::new(FULL_DUPLEX);
    m.polling = true;
    m.hold_timer = Some(hold.clone());
    let port = two_cpus(m, 1, start);
    std::thread::scope(|s| {
        // CPU 1 takes the expiry and runs HwTimer, which has not asked for its next
        // call yet when HwStartIo returns on CPU 0 with a request held.
        s.spawn(|| {
            let mut p = ThreadPlatform::new(1, start);
            port.dispatch(
                &mut p,
                Events {
                    ticks: 1,
                    vectors: 0,
                },
            );
        });
        hold.wait();
        assert!(!port.timer().is_pending());
        port.submit(Srb::new(0, 0, 0, &[0; 6], DataBuffer::NONE))
            .unwrap();
        port.start_pending(&mut ThreadPlatform::new(0, start));
        hold.wait();
    });
    assert!(port.timer().is_pending(), "HwTimer asked for its next call");
    assert_eq!(port.active(), 1);
    assert_nothing_flagged(&port);
    // T7 is checked after each round of HwStartIo: the next round finds the call
    // HwTimer asked for pending, so the polling miniport holding a request is not
    // flagged.
    port.start_pending(&mut ThreadPlatform::new(0, start));
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn p2_the_hold_ends_once_the_interrupt_cpu_has_looked_at_its_interrupts() {
    let start = Instant::now();
    let port = Port::with_config(
        Worker::new(FULL_DUPLEX),
        PortConfig {
            reset_hold_us: 1_000,
            ..config(0)
        },
    );
    let mut p0 = ThreadPlatform::new(0, start);
    let mut p1 = ThreadPlatform::new(1, start);
    port.initialize(&mut p0).unwrap();
    port.submit(Srb::new(0, 0, 0, &[0; 6], DataBuffer::NONE))
        .unwrap();
    port.start_pending(&mut p0);
    port.reset_bus(&mut p0, 0);
    std::thread::sleep(std::time::Duration::from_millis(5));
    // The hold is over by the clock, but CPU 1 has not looked at its interrupts since:
    // the SRB it may be completing is not taken back.
    port.dispatch(
        &mut p0,
        Events {
            ticks: 1,
            vectors: 0,
        },
    );
    assert!(port.in_reset_hold());
    assert_eq!(port.active(), 1);
    // CPU 1 completes it; CPU 0's next tick ends the hold with nothing left to reclaim.
    port.dispatch(
        &mut p1,
        Events {
            ticks: 0,
            vectors: 1,
        },
    );
    port.dispatch(
        &mut p0,
        Events {
            ticks: 1,
            vectors: 0,
        },
    );
    assert!(!port.in_reset_hold());
    assert_eq!(port.stats().reclaimed, 0);
    assert_nothing_flagged(&port);
}
