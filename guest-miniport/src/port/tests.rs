//! The port's behaviour tests (carried over from the first port model).
use super::*;

use crate::platform::{Events, Platform};
use crate::sim::{SimPlatform, World};
extern crate std;
use std::vec::Vec;

/// A miniport that records what the port does to it.
#[derive(Default)]
struct Recorder {
    tagged: bool,
    queue_depth: u16,
    /// RequestTimerCalls to make in HwInitialize.
    init_timer_calls: Vec<u32>,
    /// Times HwTimer re-arms itself.
    rearm: u32,
    rearm_interval_us: u32,
    timer_at_us: Vec<u64>,
    started: Vec<Tag>,
    held: Vec<SrbHandle>,
    /// Most SRBs held at once.
    max_held: usize,
    /// Complete this many requests with SRB_STATUS_BUS_RESET first.
    bus_resets: u32,
}

impl SerialMiniport for Recorder {
    type Error = &'static str;

    fn find_adapter(
        &mut self,
        _ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, &'static str> {
        Ok(AdapterCapabilities {
            max_outstanding: 16,
            tagged_queuing: self.tagged,
            queue_depth: self.queue_depth,
            interrupts: false,
        })
    }
    fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), &'static str> {
        for &us in &self.init_timer_calls {
            ctx.request_timer_call(us);
        }
        Ok(())
    }
    fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
        self.started.push(srb.tag());
        let s = *ctx.srb(&srb);
        let (p, t, l) = (s.path, s.target, s.lun);
        self.held.push(srb);
        self.max_held = self.max_held.max(self.held.len());
        if self.tagged {
            ctx.next_lu_request(p, t, l);
        } else {
            ctx.next_request();
        }
        ctx.request_timer_call(10_000);
        StartIo::Accepted
    }
    fn interrupt(&mut self, _ctx: &mut PortContext<'_>, _vector: u16) -> bool {
        false
    }
    fn timer(&mut self, ctx: &mut PortContext<'_>) {
        self.timer_at_us.push(ctx.now_us());
        for srb in self.held.drain(..) {
            ctx.srb_mut(&srb).srb_status = if self.bus_resets > 0 {
                self.bus_resets -= 1;
                SrbStatus::BusReset
            } else {
                SrbStatus::Success
            };
            ctx.request_complete(srb);
        }
        if self.rearm > 0 {
            self.rearm -= 1;
            ctx.request_timer_call(self.rearm_interval_us);
        }
    }
    fn reset_bus(&mut self, _ctx: &mut PortContext<'_>, _path: u8) -> bool {
        true
    }
}

fn new_port(m: Recorder) -> (Port<Serial<Recorder>>, SimPlatform) {
    let mut p = SimPlatform(World::new(8, 10_000));
    let port = Port::new(Serial::new(m), 10_000);
    port.initialize(&mut p).unwrap();
    (port, p)
}

fn run_all(port: &mut Port<Serial<Recorder>>, p: &mut SimPlatform) {
    for _ in 0..1000 {
        if !port.run_once(p) {
            return;
        }
    }
    panic!("port never went idle");
}

#[test]
fn t1_new_request_replaces_the_pending_one() {
    let (mut port, mut p) = new_port(Recorder {
        init_timer_calls: std::vec![30_000, 50_000],
        ..Recorder::default()
    });
    run_all(&mut port, &mut p);
    assert_eq!(port.miniport().lock().timer_at_us, [50_000]);
}

#[test]
fn t2_interval_is_rounded_up_to_the_tick() {
    let (mut port, mut p) = new_port(Recorder {
        init_timer_calls: std::vec![15_000],
        rearm: 1,
        rearm_interval_us: 1,
        ..Recorder::default()
    });
    run_all(&mut port, &mut p);
    // 15 ms -> 2 ticks; 1 us -> 1 tick.
    assert_eq!(port.miniport().lock().timer_at_us, [20_000, 30_000]);
}

#[test]
fn t3_zero_interval_cancels() {
    let (port, mut p) = new_port(Recorder {
        init_timer_calls: std::vec![30_000, 0],
        ..Recorder::default()
    });
    assert!(!port.timer().is_pending());
    assert!(!port.run_once(&mut p), "nothing to wait for");
    port.dispatch(
        &mut p,
        Events {
            ticks: 10,
            vectors: 0,
        },
    );
    assert!(port.miniport().lock().timer_at_us.is_empty());
}

#[test]
fn t4_hwtimer_runs_once_per_request_and_may_rearm() {
    let (mut port, mut p) = new_port(Recorder {
        init_timer_calls: std::vec![10_000],
        rearm: 3,
        rearm_interval_us: 20_000,
        ..Recorder::default()
    });
    run_all(&mut port, &mut p);
    assert_eq!(
        port.miniport().lock().timer_at_us,
        [10_000, 30_000, 50_000, 70_000]
    );
    assert_eq!(port.stats().timer_calls, 4);

    // Many ticks at once still make one call.
    let (port, mut p) = new_port(Recorder {
        init_timer_calls: std::vec![10_000],
        ..Recorder::default()
    });
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
    assert_eq!(port.miniport().lock().timer_at_us.len(), 1);
}

fn srb(lun: u8) -> Srb {
    Srb::new(0, 0, lun, &[0; 6], DataBuffer::NONE)
}

#[test]
fn n2_one_request_per_lu_without_tagged_queuing() {
    let (mut port, mut p) = new_port(Recorder::default());
    let a = port.submit(srb(0)).unwrap();
    let b = port.submit(srb(0)).unwrap();
    let c = port.submit(srb(0)).unwrap();
    let d = port.submit(srb(1)).unwrap();
    run_all(&mut port, &mut p);
    let m = port.miniport().lock();
    // LU 0 is busy after `a`, so NextRequest lets `d` (LU 1) overtake.
    assert_eq!(m.started, [a, d, b, c]);
    assert_eq!(m.max_held, 2);
    let done: Vec<Tag> = core::iter::from_fn(|| port.poll_completed())
        .map(|s| {
            assert_eq!(s.srb_status, SrbStatus::Success);
            s.tag
        })
        .collect();
    assert_eq!(done, [a, d, b, c]);
    assert_eq!(port.in_flight(), 0);
}

#[test]
fn n3_next_lu_request_fills_the_queue_depth() {
    let (mut port, mut p) = new_port(Recorder {
        tagged: true,
        queue_depth: 3,
        ..Recorder::default()
    });
    let tags: Vec<Tag> = (0..7).map(|_| port.submit(srb(0)).unwrap()).collect();
    run_all(&mut port, &mut p);
    assert_eq!(port.miniport().lock().started, tags);
    assert_eq!(port.miniport().lock().max_held, 3);
    assert_eq!(port.stats().completed, 7);
}

#[test]
fn submit_refuses_when_all_slots_are_taken() {
    let (port, _p) = new_port(Recorder::default());
    for _ in 0..MAX_SRBS {
        port.submit(srb(0)).unwrap();
    }
    assert_eq!(port.submit(srb(0)), Err(PortError::QueueFull));
}

#[test]
fn stall_execution_is_accounted() {
    struct Staller;
    impl SerialMiniport for Staller {
        type Error = &'static str;
        fn find_adapter(
            &mut self,
            ctx: &mut PortContext<'_>,
        ) -> Result<AdapterCapabilities, &'static str> {
            ctx.stall_execution(300);
            ctx.stall_execution(700);
            Ok(AdapterCapabilities {
                max_outstanding: 1,
                tagged_queuing: false,
                queue_depth: 1,
                interrupts: true,
            })
        }
        fn initialize(&mut self, _: &mut PortContext<'_>) -> Result<(), &'static str> {
            Err("no")
        }
        fn start_io(&mut self, _: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
            StartIo::Busy(srb)
        }
        fn interrupt(&mut self, _: &mut PortContext<'_>, _: u16) -> bool {
            false
        }
        fn timer(&mut self, _: &mut PortContext<'_>) {}
        fn reset_bus(&mut self, _: &mut PortContext<'_>, _: u8) -> bool {
            false
        }
    }
    let mut p = SimPlatform(World::new(8, 10_000));
    let port = Port::new(Serial::new(Staller), 10_000);
    assert_eq!(port.initialize(&mut p), Err(PortError::Initialize("no")));
    let s = port.stats();
    assert_eq!(
        (s.stall_calls, s.stall_us_total, s.stall_us_max),
        (2, 1000, 700)
    );
    assert_eq!(p.now_us(), 1000);
}

#[test]
fn srbs_completed_with_bus_reset_are_retried_by_the_port() {
    // Two bus-reset completions, within the default budget: the third try succeeds,
    // and the owner sees one completion with the same tag.
    let (mut port, mut p) = new_port(Recorder {
        bus_resets: 2,
        ..Recorder::default()
    });
    let tag = port.submit(srb(0)).unwrap();
    run_all(&mut port, &mut p);
    let s = port.poll_completed().unwrap();
    assert_eq!((s.tag, s.srb_status), (tag, SrbStatus::Success));
    assert!(port.poll_completed().is_none());
    assert_eq!(port.stats().bus_reset_retries, 2);
    assert_eq!(port.miniport().lock().started, [tag, tag, tag]);

    // Past the budget, the bus-reset status goes back to the owner.
    let budget = DEFAULT_BUS_RESET_RETRIES;
    let (mut port, mut p) = new_port(Recorder {
        bus_resets: budget + 1,
        ..Recorder::default()
    });
    let tag = port.submit(srb(0)).unwrap();
    run_all(&mut port, &mut p);
    let s = port.poll_completed().unwrap();
    assert_eq!((s.tag, s.srb_status), (tag, SrbStatus::BusReset));
    assert_eq!(port.stats().bus_reset_retries, u64::from(budget));
    assert_eq!(port.miniport().lock().started.len() as u32, budget + 1);
}
