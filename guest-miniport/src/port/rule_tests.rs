//! One test per rule of docs/miniport-rules.md, named after its id, and for each rule a
//! mutant: a deliberately broken miniport (or, for the port's own duties, a
//! deliberately broken port, see [`Flaw`]) that the checker must flag. A mutant test
//! that passed without the checker flagging the rule would prove nothing, so each one
//! asserts the exact rule id.

use super::*;
use crate::platform::{Events, Platform};
use crate::sim::{SharedWorld, SimPlatform, World};
extern crate std;
use std::vec::Vec;

const TICK: u32 = 10_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum CompleteIn {
    #[default]
    Timer,
    StartIo,
    Interrupt,
    Never,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Next {
    /// NextRequest before RequestComplete.
    #[default]
    Before,
    /// RequestComplete, then NextRequest.
    After,
    Lu,
    None,
}

/// A miniport whose behaviour the tests set, correct by default.
#[derive(Default)]
struct Model {
    world: Option<SharedWorld>,
    tagged: bool,
    queue_depth: u16,
    interrupts: bool,
    no_timer: bool,
    init_timer_calls: Vec<u32>,
    init_stall_us: u32,
    complete_in: CompleteIn,
    next: Next,
    status: Option<SrbStatus>,
    /// Polling interval HwTimer re-arms with while it holds SRBs (0: never re-arms).
    poll_us: u32,
    /// Extra RequestTimerCalls from HwTimer, in order, one per call.
    timer_script: Vec<u32>,
    timer_stall_us: u32,
    timer_busy_us: u64,
    isr_stalls: u32,
    isr_busy_us: u64,
    isr_claims_all: bool,
    defer: bool,
    /// Enable callback runs this many times before asking CallDisableInterrupts.
    enable_runs_before_disable: u32,
    disable_from_timer: bool,
    reset_completes: bool,
    reset_detected_in_timer: bool,
    /// Keep handles the port took back and touch them in HwTimer.
    touch_stale: bool,
    /// RequestTimerCall from HwResetBus (0: none).
    reset_rearm_us: u32,
    // what happened
    timer_at: Vec<u64>,
    isr_at: Vec<u64>,
    enable_at: Vec<u64>,
    disable_at: Vec<u64>,
    started: Vec<Tag>,
    held: Vec<SrbHandle>,
    max_held: usize,
    resets: u32,
}

impl Model {
    fn finish(&mut self, ctx: &mut PortContext<'_>, h: SrbHandle) {
        ctx.srb_mut(&h).srb_status = self.status.unwrap_or(SrbStatus::Success);
        ctx.request_complete(h);
        if self.next == Next::After {
            ctx.next_request();
        }
    }

    fn finish_all(&mut self, ctx: &mut PortContext<'_>) {
        for h in core::mem::take(&mut self.held) {
            self.finish(ctx, h);
        }
    }

    fn busy(&self, us: u64) {
        if let Some(w) = &self.world {
            w.borrow_mut().now_us += us;
        }
    }
}

impl Miniport for Model {
    type Error = &'static str;

    fn find_adapter(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, &'static str> {
        if self.init_stall_us > 0 {
            ctx.stall_execution(self.init_stall_us);
        }
        Ok(AdapterCapabilities {
            max_outstanding: 16,
            tagged_queuing: self.tagged,
            queue_depth: self.queue_depth.max(1),
            interrupts: self.interrupts,
        })
    }

    fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), &'static str> {
        if self.interrupts {
            ctx.msi_message(0).ok_or("no msi")?;
        }
        for &us in &self.init_timer_calls {
            ctx.request_timer_call(us);
        }
        Ok(())
    }

    fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
        self.started.push(srb.tag());
        let s = *ctx.srb(&srb);
        match self.next {
            Next::Before => ctx.next_request(),
            Next::Lu => ctx.next_lu_request(s.path, s.target, s.lun),
            Next::After | Next::None => {}
        }
        if self.complete_in == CompleteIn::StartIo {
            self.finish(ctx, srb);
            return StartIo::Accepted;
        }
        self.held.push(srb);
        self.max_held = self.max_held.max(self.held.len());
        if self.complete_in != CompleteIn::StartIo && self.poll_us > 0 && !ctx.timer_pending() {
            ctx.request_timer_call(self.poll_us);
        }
        if self.next == Next::After && self.complete_in != CompleteIn::StartIo {
            // Completion comes later; the notification may come first as well.
            ctx.next_request();
        }
        StartIo::Accepted
    }

    fn interrupt(&mut self, ctx: &mut PortContext<'_>, vector: u16) -> bool {
        self.isr_at.push(ctx.now_us());
        if self.isr_claims_all {
            return true;
        }
        if vector != 0 {
            return false; // I1: not this HBA's vector
        }
        for _ in 0..self.isr_stalls {
            ctx.stall_execution(10);
        }
        self.busy(self.isr_busy_us);
        if self.defer {
            ctx.call_enable_interrupts();
            return true;
        }
        if self.complete_in == CompleteIn::Interrupt {
            self.finish_all(ctx);
        }
        true
    }

    fn enable_interrupts_callback(&mut self, ctx: &mut PortContext<'_>) {
        self.enable_at.push(ctx.now_us());
        for _ in 0..20 {
            ctx.stall_execution(10); // polling is fine here (I3)
        }
        if self.enable_runs_before_disable > 0 {
            self.enable_runs_before_disable -= 1;
            return;
        }
        self.finish_all(ctx);
        ctx.call_disable_interrupts();
    }

    fn disable_interrupts_callback(&mut self, ctx: &mut PortContext<'_>) {
        self.disable_at.push(ctx.now_us());
    }

    fn timer(&mut self, ctx: &mut PortContext<'_>) {
        self.timer_at.push(ctx.now_us());
        if self.timer_stall_us > 0 {
            ctx.stall_execution(self.timer_stall_us);
        }
        self.busy(self.timer_busy_us);
        if self.disable_from_timer {
            ctx.call_disable_interrupts();
        }
        if self.reset_detected_in_timer {
            self.reset_detected_in_timer = false;
            ctx.reset_detected();
        }
        if self.touch_stale {
            if !self.held.is_empty() {
                let h = self.held.remove(0);
                let _ = ctx.srb(&h).tag; // N1: read after the port took it back
                ctx.srb_mut(&h).srb_status = SrbStatus::Success; // N1: write
                ctx.request_complete(h); // P3: completed a second time
            }
            return;
        }
        if self.complete_in == CompleteIn::Timer {
            self.finish_all(ctx);
        }
        if !self.timer_script.is_empty() {
            let us = self.timer_script.remove(0);
            ctx.request_timer_call(us);
        } else if self.poll_us > 0 && !self.held.is_empty() {
            ctx.request_timer_call(self.poll_us);
        }
    }

    fn reset_bus(&mut self, ctx: &mut PortContext<'_>, _path: u8) -> bool {
        self.resets += 1;
        if self.reset_completes {
            for h in core::mem::take(&mut self.held) {
                ctx.srb_mut(&h).srb_status = SrbStatus::BusReset;
                ctx.request_complete(h);
            }
        }
        ctx.reset_detected();
        if self.reset_rearm_us > 0 {
            ctx.request_timer_call(self.reset_rearm_us);
        }
        true
    }

    fn has_timer(&self) -> bool {
        !self.no_timer
    }
}

fn port_with(m: Model, config: PortConfig) -> (Port<Model>, SimPlatform) {
    let world = World::new(8, config.tick_us);
    let mut m = m;
    m.world = Some(world.clone());
    let mut p = SimPlatform(world);
    let mut port = Port::with_config(m, config);
    port.initialize(&mut p).unwrap();
    (port, p)
}

fn port(m: Model) -> (Port<Model>, SimPlatform) {
    port_with(m, PortConfig::new(TICK))
}

fn flawed(m: Model, flaw: Flaw) -> (Port<Model>, SimPlatform) {
    let world = World::new(8, TICK);
    let mut m = m;
    m.world = Some(world.clone());
    let mut p = SimPlatform(world);
    let mut port = Port::new(m, TICK);
    port.set_flaw(flaw);
    port.initialize(&mut p).unwrap();
    (port, p)
}

fn ticks(port: &mut Port<Model>, p: &mut SimPlatform, n: u32) {
    for _ in 0..n {
        let e = p.wait_for_events();
        port.dispatch(p, e);
    }
}

fn vector(port: &mut Port<Model>, p: &mut SimPlatform, v: u32) {
    port.dispatch(
        p,
        Events {
            ticks: 0,
            vectors: 1 << v,
        },
    );
}

fn srb(lun: u8) -> Srb {
    Srb::new(0, 0, lun, &[0; 6], DataBuffer::NONE)
}

fn assert_clean(port: &Port<Model>) {
    let v: Vec<_> = port.checker().violations().collect();
    assert_eq!(port.checker().count(), 0, "{v:?}");
}

fn assert_flags(port: &Port<Model>, rule: Rule) {
    let v: Vec<_> = port.checker().violations().collect();
    assert!(
        port.checker().flagged(rule),
        "{} not flagged: {v:?}",
        rule.id()
    );
}

fn timer_model(calls: &[u32]) -> Model {
    Model {
        init_timer_calls: calls.to_vec(),
        ..Model::default()
    }
}

// ---------------------------------------------------------------------------- T1..T7

#[test]
fn t1_new_request_replaces_pending() {
    let (mut port, mut p) = port(timer_model(&[30_000, 50_000]));
    ticks(&mut port, &mut p, 8);
    assert_eq!(port.miniport().timer_at, [50_000]);
    assert_clean(&port);
}

#[test]
fn t1_mutant_port_keeping_the_first_request_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[30_000, 50_000]), Flaw::KeepFirstTimerRequest);
    ticks(&mut port, &mut p, 8);
    assert_eq!(port.miniport().timer_at, [30_000]);
    assert_flags(&port, Rule::T1);
}

#[test]
fn t2_interval_is_rounded_up_to_the_tick() {
    let (mut port, mut p) = port(Model {
        init_timer_calls: std::vec![15_000],
        timer_script: std::vec![1],
        ..Model::default()
    });
    ticks(&mut port, &mut p, 5);
    // 15 ms -> 2 ticks; 1 us -> 1 tick.
    assert_eq!(port.miniport().timer_at, [20_000, 30_000]);
    assert_clean(&port);

    // A finer tick is a port setting.
    let (mut port, mut p) = port_with(timer_model(&[1_500]), PortConfig::new(500));
    ticks(&mut port, &mut p, 5);
    assert_eq!(port.miniport().timer_at, [1_500]);
    assert_eq!(port.timer().tick_us(), 500);
    assert_clean(&port);
}

#[test]
fn t2_mutant_port_truncating_the_interval_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[15_000]), Flaw::TruncateTimerInterval);
    ticks(&mut port, &mut p, 3);
    assert_eq!(port.miniport().timer_at, [10_000]);
    assert_flags(&port, Rule::T2);
}

#[test]
fn t3_zero_interval_cancels_unless_dispatched() {
    let (mut port, mut p) = port(timer_model(&[30_000, 0]));
    assert!(!port.timer().is_pending());
    ticks(&mut port, &mut p, 5);
    assert!(port.miniport().timer_at.is_empty());
    assert_clean(&port);

    // Expired in this dispatch: RequestTimerCall(0) from HwInterrupt, which the port
    // runs before HwTimer, no longer stops it.
    struct CancelInIsr(Vec<u64>);
    impl Miniport for CancelInIsr {
        type Error = &'static str;
        fn find_adapter(
            &mut self,
            _: &mut PortContext<'_>,
        ) -> Result<AdapterCapabilities, &'static str> {
            Ok(AdapterCapabilities {
                max_outstanding: 1,
                tagged_queuing: false,
                queue_depth: 1,
                interrupts: true,
            })
        }
        fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), &'static str> {
            ctx.msi_message(0);
            ctx.request_timer_call(10_000);
            Ok(())
        }
        fn start_io(&mut self, _: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
            StartIo::Busy(srb)
        }
        fn interrupt(&mut self, ctx: &mut PortContext<'_>, _: u16) -> bool {
            ctx.request_timer_call(0);
            true
        }
        fn timer(&mut self, ctx: &mut PortContext<'_>) {
            self.0.push(ctx.now_us());
        }
        fn reset_bus(&mut self, _: &mut PortContext<'_>, _: u8) -> bool {
            true
        }
    }
    let mut p = SimPlatform(World::new(8, TICK));
    let mut port = Port::new(CancelInIsr(Vec::new()), TICK);
    port.initialize(&mut p).unwrap();
    port.dispatch(
        &mut p,
        Events {
            ticks: 1,
            vectors: 1,
        },
    );
    assert_eq!(port.miniport().0.len(), 1);
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn t3_mutant_port_ignoring_cancel_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[30_000, 0]), Flaw::IgnoreTimerCancel);
    ticks(&mut port, &mut p, 5);
    assert_eq!(port.miniport().timer_at, [30_000]);
    assert_flags(&port, Rule::T3);
}

#[test]
fn t4_hwtimer_runs_once_per_request_and_may_rearm() {
    let (mut port, mut p) = port(Model {
        init_timer_calls: std::vec![10_000],
        timer_script: std::vec![20_000, 20_000, 20_000],
        ..Model::default()
    });
    ticks(&mut port, &mut p, 10);
    assert_eq!(port.miniport().timer_at, [10_000, 30_000, 50_000, 70_000]);
    // Many ticks at once still make one call.
    let (mut port, mut p) = port_with(timer_model(&[10_000]), PortConfig::new(TICK));
    port.dispatch(
        &mut p,
        Events {
            ticks: 7,
            vectors: 0,
        },
    );
    port.dispatch(
        &mut p,
        Events {
            ticks: 7,
            vectors: 0,
        },
    );
    assert_eq!(port.miniport().timer_at.len(), 1);
    assert_clean(&port);
}

#[test]
fn t4_mutant_port_not_consuming_the_request_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[10_000]), Flaw::TimerNotConsumed);
    ticks(&mut port, &mut p, 3);
    assert_eq!(port.miniport().timer_at.len(), 3);
    assert_flags(&port, Rule::T4);
}

// T5 and T6 run on threads: see the `multichannel` tests below.

#[test]
fn t7_polling_miniport_keeps_a_timer_pending() {
    let (mut port, mut p) = port(Model {
        poll_us: 10_000,
        ..Model::default()
    });
    for _ in 0..4 {
        port.submit(srb(0)).unwrap();
    }
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(port.stats().completed, 4);
    assert_clean(&port);
}

#[test]
fn t7_mutant_polling_miniport_without_a_timer_is_flagged() {
    // Never arms HwTimer while it holds requests: they would hang.
    let (mut port, mut p) = port(Model::default());
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    assert_flags(&port, Rule::T7);
    // And one without a HwTimer routine at all is flagged at HwFindAdapter.
    let (port, _p) = port_with(
        Model {
            no_timer: true,
            ..Model::default()
        },
        PortConfig::new(TICK),
    );
    assert_flags(&port, Rule::T7);
}

// ---------------------------------------------------------------------------- S1

#[test]
fn s1_stall_over_1ms_is_allowed_only_in_initialization() {
    let (mut port, mut p) = port(Model {
        init_stall_us: 5_000,
        init_timer_calls: std::vec![10_000],
        timer_stall_us: 1_000,
        ..Model::default()
    });
    ticks(&mut port, &mut p, 2);
    assert_eq!(port.checker().times().max_stall_us, 5_000);
    assert_clean(&port);
}

#[test]
fn s1_mutant_stalling_5ms_in_hwtimer_is_flagged() {
    let (mut port, mut p) = port(Model {
        init_timer_calls: std::vec![10_000],
        timer_stall_us: 5_000,
        ..Model::default()
    });
    ticks(&mut port, &mut p, 2);
    assert_flags(&port, Rule::S1);
    let v = port.checker().violations().next().unwrap();
    assert_eq!((v.routine, v.value), (Routine::Timer, 5_000));
}

// ---------------------------------------------------------------------------- I1..I4

fn irq_model() -> Model {
    Model {
        interrupts: true,
        complete_in: CompleteIn::Interrupt,
        ..Model::default()
    }
}

#[test]
fn i1_interrupt_of_another_device_is_not_claimed() {
    let (mut port, mut p) = port(irq_model());
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 5); // someone else's vector
    assert_eq!(port.stats().interrupts_not_claimed, 1);
    vector(&mut port, &mut p, 0);
    assert_eq!(port.stats().completed, 1);
    assert_clean(&port);
}

#[test]
fn i1_mutant_claiming_every_interrupt_is_flagged() {
    let (mut port, mut p) = port(Model {
        isr_claims_all: true,
        ..irq_model()
    });
    vector(&mut port, &mut p, 5);
    assert_flags(&port, Rule::I1);
}

#[test]
fn i2_hwinterrupt_time_is_measured_and_short() {
    let (mut port, mut p) = port(Model {
        isr_busy_us: 200,
        ..irq_model()
    });
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 0);
    let t = port.checker().times().interrupt;
    assert_eq!((t.calls, t.max_us), (1, 200));
    assert_clean(&port);
}

#[test]
fn i2_mutant_hwinterrupt_running_2ms_is_flagged() {
    let (mut port, mut p) = port(Model {
        isr_busy_us: 2_000,
        ..irq_model()
    });
    vector(&mut port, &mut p, 0);
    assert_flags(&port, Rule::I2);
}

#[test]
fn i3_long_work_is_deferred_through_call_enable_interrupts() {
    let (mut port, mut p) = port(Model {
        defer: true,
        isr_stalls: 2,
        ..irq_model()
    });
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 0);
    let m = port.miniport();
    assert_eq!((m.enable_at.len(), m.disable_at.len()), (1, 1));
    assert_eq!(port.stats().completed, 1);
    assert_eq!(port.interrupt_phase(), InterruptPhase::Normal);
    assert_clean(&port);
}

#[test]
fn i3_mutant_polling_in_hwinterrupt_without_deferring_is_flagged() {
    let (mut port, mut p) = port(Model {
        isr_stalls: 20, // 200 us of polling
        ..irq_model()
    });
    vector(&mut port, &mut p, 0);
    assert_flags(&port, Rule::I3);
}

fn deferring_model() -> Model {
    Model {
        defer: true,
        enable_runs_before_disable: 2,
        ..irq_model()
    }
}

#[test]
fn i4_hwinterrupt_is_held_off_while_the_enable_callback_runs() {
    let (mut port, mut p) = port(deferring_model());
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 0);
    assert_eq!(port.interrupt_phase(), InterruptPhase::EnableCallback);
    // Interrupts arriving now are held until HwDisableInterruptsCallback ran.
    vector(&mut port, &mut p, 0);
    assert_eq!(port.miniport().isr_at.len(), 1);
    vector(&mut port, &mut p, 0);
    let m = port.miniport();
    assert_eq!((m.enable_at.len(), m.disable_at.len()), (3, 1));
    // The held interrupt is delivered once the HBA's interrupts are back on.
    assert_eq!(m.isr_at.len(), 2);
    assert!(m.isr_at[1] >= m.disable_at[0]);
    assert_clean(&port);
}

#[test]
fn i4_mutant_port_calling_hwinterrupt_during_the_callback_is_flagged() {
    let (mut port, mut p) = flawed(deferring_model(), Flaw::InterruptDuringEnableCallback);
    vector(&mut port, &mut p, 0);
    vector(&mut port, &mut p, 0);
    assert_flags(&port, Rule::I4);
}

// ---------------------------------------------------------------------------- N1..N7

/// N1 is a compile-time guarantee: `request_complete` takes the handle by value and
/// `SrbHandle` is neither `Copy` nor `Clone`. The mutant is the compile-fail doc test
/// on [`SrbHandle`]. The run-time residue is a handle the port took back itself at the
/// end of a reset hold; touching it is reported and reaches no other SRB.
#[test]
fn n1_completed_srb_is_out_of_the_miniports_reach() {
    let (mut port, mut p) = port(Model {
        poll_us: 10_000,
        ..Model::default()
    });
    let tag = port.submit(srb(0)).unwrap();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(port.poll_completed().map(|s| s.tag), Some(tag));
    assert_clean(&port);
}

fn stale_model() -> (Port<Model>, SimPlatform) {
    port_with(
        Model {
            complete_in: CompleteIn::Never,
            touch_stale: true,
            reset_rearm_us: 40_000,
            ..Model::default()
        },
        PortConfig {
            reset_hold_us: 20_000,
            ..PortConfig::new(TICK)
        },
    )
}

#[test]
fn n1_mutant_touching_an_srb_the_port_took_back_is_flagged() {
    let (mut port, mut p) = stale_model();
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    port.reset_bus(&mut p, 0); // the miniport keeps the handle
    ticks(&mut port, &mut p, 2); // the hold ends: the port takes the SRB back
    assert_eq!(port.stats().reclaimed, 1);
    assert!(port.poll_completed().is_some());
    // The slot is reused by a new SRB the miniport now also holds.
    let fresh = port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    assert_eq!(port.active(), 1);
    ticks(&mut port, &mut p, 2); // HwTimer reads, writes, completes the stale handle
    assert_flags(&port, Rule::N1);
    assert_eq!(
        port.active(),
        1,
        "the stale completion did not reach SRB {fresh}"
    );
    assert!(port.poll_completed().is_none());
}

#[test]
fn n2_one_request_per_lu_without_tagged_queuing() {
    let (mut port, mut p) = port(Model {
        poll_us: 10_000,
        ..Model::default()
    });
    let a = port.submit(srb(0)).unwrap();
    let b = port.submit(srb(0)).unwrap();
    let d = port.submit(srb(1)).unwrap();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    // LU 0 is busy after `a`, so NextRequest lets `d` (LU 1) overtake.
    assert_eq!(port.miniport().started, [a, d, b]);
    assert_eq!(port.miniport().max_held, 2);
    assert_clean(&port);
}

#[test]
fn n2_mutant_port_sending_to_a_busy_lu_is_flagged() {
    let (mut port, mut p) = flawed(
        Model {
            poll_us: 10_000,
            ..Model::default()
        },
        Flaw::IgnoreLuBusy,
    );
    port.submit(srb(0)).unwrap();
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    assert_flags(&port, Rule::N2);
}

#[test]
fn n3_next_lu_request_with_tagged_queuing_fills_the_queue_depth() {
    let (mut port, mut p) = port(Model {
        tagged: true,
        queue_depth: 3,
        next: Next::Lu,
        poll_us: 10_000,
        ..Model::default()
    });
    let tags: Vec<Tag> = (0..7).map(|_| port.submit(srb(0)).unwrap()).collect();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(port.miniport().started, tags);
    assert_eq!(port.miniport().max_held, 3);
    assert_clean(&port);
}

#[test]
fn n3_mutant_next_lu_request_without_tagged_queuing_is_flagged() {
    let (mut port, mut p) = port(Model {
        next: Next::Lu,
        poll_us: 10_000,
        ..Model::default()
    });
    port.submit(srb(0)).unwrap();
    port.submit(srb(0)).unwrap();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(port.miniport().max_held, 1, "no second request to the LU");
    assert_flags(&port, Rule::N3);
}

#[test]
fn n4_next_request_and_request_complete_in_either_order() {
    for next in [Next::Before, Next::After] {
        let (mut port, mut p) = port(Model {
            complete_in: CompleteIn::StartIo,
            next,
            ..Model::default()
        });
        for _ in 0..3 {
            port.submit(srb(0)).unwrap();
        }
        port.run_until_idle(&mut p, 1_000_000).unwrap();
        assert_eq!(port.stats().completed, 3, "{next:?}");
        assert_clean(&port);
    }
}

#[test]
fn n4_mutant_completing_without_next_request_is_flagged() {
    let (mut port, mut p) = port(Model {
        complete_in: CompleteIn::StartIo,
        next: Next::None,
        ..Model::default()
    });
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    assert_flags(&port, Rule::N4);
}

/// A short hold, and no retries: the rules look at the first completion.
fn reset_config() -> PortConfig {
    PortConfig {
        reset_hold_us: 50_000,
        bus_reset_retries: 0,
        ..PortConfig::new(TICK)
    }
}

#[test]
fn n5_after_reset_detected_active_requests_are_still_completed() {
    let (mut port, mut p) = port_with(
        Model {
            init_timer_calls: std::vec![10_000],
            reset_detected_in_timer: true,
            poll_us: 10_000,
            ..Model::default()
        },
        reset_config(),
    );
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p); // HwTimer: ResetDetected with the SRB active
    assert!(port.in_reset_hold());
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert!(!port.in_reset_hold() || port.in_flight() == 0);
    assert_eq!(port.stats().completed, 1);
    assert_clean(&port);
}

#[test]
fn n5_mutant_abandoning_active_requests_after_reset_detected_is_flagged() {
    let (mut port, mut p) = port_with(
        Model {
            init_timer_calls: std::vec![10_000],
            reset_detected_in_timer: true,
            complete_in: CompleteIn::Never,
            ..Model::default()
        },
        reset_config(),
    );
    let tag = port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    ticks(&mut port, &mut p, 6);
    assert_flags(&port, Rule::N5);
    let s = port.poll_completed().unwrap();
    assert_eq!((s.tag, s.srb_status), (tag, SrbStatus::BusReset));
}

#[test]
fn n6_request_timer_call_runs_the_miniports_hwtimer() {
    let (mut port, mut p) = port(timer_model(&[10_000]));
    ticks(&mut port, &mut p, 2);
    assert_eq!(port.miniport().timer_at.len(), 1);
    assert_eq!(port.stats().timer_requests, 1);
    assert_clean(&port);
}

#[test]
fn n6_mutant_request_timer_call_without_hwtimer_is_flagged() {
    let (mut port, mut p) = port(Model {
        no_timer: true,
        interrupts: true,
        init_timer_calls: std::vec![10_000],
        ..Model::default()
    });
    ticks(&mut port, &mut p, 2);
    assert!(port.miniport().timer_at.is_empty());
    assert_flags(&port, Rule::N6);
}

#[test]
fn n7_enable_from_hwinterrupt_disable_from_the_enable_callback() {
    let (mut port, mut p) = port(Model {
        defer: true,
        ..irq_model()
    });
    vector(&mut port, &mut p, 0);
    assert_eq!(port.stats().enable_callbacks, 1);
    assert_eq!(port.stats().disable_callbacks, 1);
    assert_clean(&port);
}

#[test]
fn n7_mutant_call_disable_interrupts_from_hwtimer_is_flagged() {
    let (mut port, mut p) = port(Model {
        init_timer_calls: std::vec![10_000],
        disable_from_timer: true,
        ..irq_model()
    });
    ticks(&mut port, &mut p, 2);
    assert_flags(&port, Rule::N7);
    assert_eq!(port.stats().disable_callbacks, 0);
}

// ---------------------------------------------------------------------------- P1..P4

fn hung_model(reset_completes: bool) -> Model {
    Model {
        complete_in: CompleteIn::Never,
        reset_completes,
        poll_us: 10_000,
        ..Model::default()
    }
}

fn short_timeout_srb() -> Srb {
    Srb {
        timeout_us: 30_000,
        ..srb(0)
    }
}

#[test]
fn p1_timed_out_srb_resets_the_bus() {
    let (mut port, mut p) = port_with(hung_model(true), reset_config());
    let tag = port.submit(short_timeout_srb()).unwrap();
    port.run_once(&mut p);
    ticks(&mut port, &mut p, 5);
    assert_eq!(port.miniport().resets, 1);
    assert_eq!(port.stats().srb_timeouts, 1);
    let s = port.poll_completed().unwrap();
    assert_eq!((s.tag, s.srb_status), (tag, SrbStatus::BusReset));
    assert_clean(&port);
}

#[test]
fn p1_mutant_port_without_timeouts_is_flagged() {
    let (mut port, mut p) = flawed(hung_model(true), Flaw::NoTimeoutReset);
    port.submit(short_timeout_srb()).unwrap();
    port.run_once(&mut p);
    ticks(&mut port, &mut p, 6);
    assert_eq!(port.miniport().resets, 0);
    assert_flags(&port, Rule::P1);
}

#[test]
fn p2_new_requests_are_held_after_a_bus_reset() {
    let (mut port, mut p) = port_with(
        Model {
            poll_us: 10_000,
            reset_completes: true,
            ..Model::default()
        },
        reset_config(),
    );
    port.reset_bus(&mut p, 0);
    let t0 = p.now_us();
    port.submit(srb(0)).unwrap();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    let started_at = port.miniport().timer_at[0] - 10_000;
    assert!(started_at >= t0 + 50_000, "started during the hold");
    assert_clean(&port);
}

#[test]
fn p2_mutant_reset_bus_leaving_requests_outstanding_is_flagged() {
    let (mut port, mut p) = port_with(hung_model(false), reset_config());
    let tag = port.submit(short_timeout_srb()).unwrap();
    port.run_once(&mut p);
    ticks(&mut port, &mut p, 12);
    assert_flags(&port, Rule::P2);
    let s = port.poll_completed().unwrap();
    assert_eq!((s.tag, s.srb_status), (tag, SrbStatus::BusReset));
    // And a port that does not hold requests after the reset is flagged too.
    let (mut port, mut p) = flawed(
        Model {
            poll_us: 10_000,
            reset_completes: true,
            ..Model::default()
        },
        Flaw::NoResetHold,
    );
    port.reset_bus(&mut p, 0);
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    assert_flags(&port, Rule::P2);
}

#[test]
fn p3_each_srb_is_completed_once_with_a_valid_status() {
    let (mut port, mut p) = port(Model {
        poll_us: 10_000,
        ..Model::default()
    });
    let tags: Vec<Tag> = (0..5).map(|_| port.submit(srb(0)).unwrap()).collect();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    let done: Vec<Tag> = core::iter::from_fn(|| port.poll_completed())
        .map(|s| {
            assert_eq!(s.srb_status, SrbStatus::Success);
            s.tag
        })
        .collect();
    assert_eq!(done, tags);
    assert_eq!(port.poll_completed(), None);
    assert_clean(&port);
}

#[test]
fn p3_mutant_completing_with_pending_status_is_flagged() {
    let (mut port, mut p) = port(Model {
        complete_in: CompleteIn::StartIo,
        status: Some(SrbStatus::Pending),
        ..Model::default()
    });
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    assert_flags(&port, Rule::P3);
    assert_eq!(
        port.poll_completed().unwrap().srb_status,
        SrbStatus::HbaError
    );
}

#[test]
fn p3_mutant_completing_an_srb_twice_is_flagged() {
    let (mut port, mut p) = stale_model();
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    port.reset_bus(&mut p, 0);
    ticks(&mut port, &mut p, 4); // reclaimed at the end of the hold, then HwTimer
    assert_eq!(port.stats().reclaimed, 1);
    assert_flags(&port, Rule::P3);
    assert_eq!(port.stats().completed, 1, "completed once only");
}

#[test]
fn p4_time_in_each_routine_is_measured() {
    let (mut port, mut p) = port(Model {
        init_timer_calls: std::vec![10_000],
        timer_busy_us: 300,
        timer_stall_us: 700,
        ..Model::default()
    });
    ticks(&mut port, &mut p, 2);
    let t = port.checker().times();
    assert_eq!(
        (t.timer.calls, t.timer.max_us, t.timer.total_us),
        (1, 1_000, 1_000)
    );
    assert_eq!(t.max_stall_us, 700);
    assert_clean(&port);
}

#[test]
fn p4_mutant_hwtimer_running_200ms_is_flagged() {
    let (mut port, mut p) = port(Model {
        init_timer_calls: std::vec![10_000],
        timer_busy_us: 200_000,
        ..Model::default()
    });
    ticks(&mut port, &mut p, 2);
    assert_flags(&port, Rule::P4);
}
