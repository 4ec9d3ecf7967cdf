//! One test per rule of docs/miniport-rules.md, named after its id, and for each rule a
//! mutant: a deliberately broken miniport (or, for the port's own duties, a
//! deliberately broken port, see [`Flaw`]) that the checker must flag. A mutant test
//! that passed without the checker flagging the rule would prove nothing, so each one
//! asserts the exact rule id.
//!
//! This file holds the test miniport ([`Model`]) and the helpers; the tests are grouped
//! by rule family: `timer` (T1 to T7), `interrupts` (S1, I1 to I4), `notifications`
//! (N1 to N7) and `port_duties` (P1 to P4).

mod interrupts;
mod notifications;
mod port_duties;
mod timer;

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

impl SerialMiniport for Model {
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

fn port_with(m: Model, config: PortConfig) -> (Port<Serial<Model>>, SimPlatform) {
    let world = World::new(8, config.tick_us);
    let mut m = m;
    m.world = Some(world.clone());
    let mut p = SimPlatform(world);
    let port = Port::with_config(Serial::new(m), config);
    port.initialize(&mut p).unwrap();
    (port, p)
}

fn port(m: Model) -> (Port<Serial<Model>>, SimPlatform) {
    port_with(m, PortConfig::new(TICK))
}

fn flawed(m: Model, flaw: Flaw) -> (Port<Serial<Model>>, SimPlatform) {
    let world = World::new(8, TICK);
    let mut m = m;
    m.world = Some(world.clone());
    let mut p = SimPlatform(world);
    let mut port = Port::new(Serial::new(m), TICK);
    port.set_flaw(flaw);
    port.initialize(&mut p).unwrap();
    (port, p)
}

fn ticks(port: &mut Port<Serial<Model>>, p: &mut SimPlatform, n: u32) {
    for _ in 0..n {
        let e = p.wait_for_events();
        port.dispatch(p, e);
    }
}

fn vector(port: &mut Port<Serial<Model>>, p: &mut SimPlatform, v: u32) {
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

fn assert_clean(port: &Port<Serial<Model>>) {
    let v: Vec<_> = port.checker().violations().collect();
    assert_eq!(port.checker().count(), 0, "{v:?}");
}

fn assert_flags(port: &Port<Serial<Model>>, rule: Rule) {
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

fn irq_model() -> Model {
    Model {
        interrupts: true,
        complete_in: CompleteIn::Interrupt,
        ..Model::default()
    }
}

fn stale_model() -> (Port<Serial<Model>>, SimPlatform) {
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

/// A short hold, and no retries: the rules look at the first completion.
fn reset_config() -> PortConfig {
    PortConfig {
        reset_hold_us: 50_000,
        bus_reset_retries: 0,
        ..PortConfig::new(TICK)
    }
}
