//! T1 to T7: the timer service and the miniport's use of HwTimer (T5 and T6 run on
//! threads in `multichannel_tests`).

use super::*;

#[test]
fn t1_new_request_replaces_pending() {
    let (mut port, mut p) = port(timer_model(&[30_000, 50_000]));
    ticks(&mut port, &mut p, 8);
    assert_eq!(port.miniport().lock().timer_at, [50_000]);
    assert_clean(&port);
}

#[test]
fn t1_mutant_port_keeping_the_first_request_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[30_000, 50_000]), Flaw::KeepFirstTimerRequest);
    ticks(&mut port, &mut p, 8);
    assert_eq!(port.miniport().lock().timer_at, [30_000]);
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
    assert_eq!(port.miniport().lock().timer_at, [20_000, 30_000]);
    assert_clean(&port);

    // A finer tick is a port setting.
    let (mut port, mut p) = port_with(timer_model(&[1_500]), PortConfig::new(500));
    ticks(&mut port, &mut p, 5);
    assert_eq!(port.miniport().lock().timer_at, [1_500]);
    assert_eq!(port.timer().tick_us(), 500);
    assert_clean(&port);
}

#[test]
fn t2_mutant_port_truncating_the_interval_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[15_000]), Flaw::TruncateTimerInterval);
    ticks(&mut port, &mut p, 3);
    assert_eq!(port.miniport().lock().timer_at, [10_000]);
    assert_flags(&port, Rule::T2);
}

#[test]
fn t3_zero_interval_cancels_unless_dispatched() {
    let (mut port, mut p) = port(timer_model(&[30_000, 0]));
    assert!(!port.timer().is_pending());
    ticks(&mut port, &mut p, 5);
    assert!(port.miniport().lock().timer_at.is_empty());
    assert_clean(&port);

    // Expired in this dispatch: RequestTimerCall(0) from HwInterrupt, which the port
    // runs before HwTimer, no longer stops it.
    struct CancelInIsr(Vec<u64>);
    impl SerialMiniport for CancelInIsr {
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
    let port = Port::new(Serial::new(CancelInIsr(Vec::new())), TICK);
    port.initialize(&mut p).unwrap();
    port.dispatch(
        &mut p,
        Events {
            ticks: 1,
            vectors: 1,
        },
    );
    assert_eq!(port.miniport().lock().0.len(), 1);
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn t3_mutant_port_ignoring_cancel_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[30_000, 0]), Flaw::IgnoreTimerCancel);
    ticks(&mut port, &mut p, 5);
    assert_eq!(port.miniport().lock().timer_at, [30_000]);
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
    assert_eq!(
        port.miniport().lock().timer_at,
        [10_000, 30_000, 50_000, 70_000]
    );
    // Many ticks at once still make one call.
    let (port, mut p) = port_with(timer_model(&[10_000]), PortConfig::new(TICK));
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
    assert_eq!(port.miniport().lock().timer_at.len(), 1);
    assert_clean(&port);
}

#[test]
fn t4_mutant_port_not_consuming_the_request_is_flagged() {
    let (mut port, mut p) = flawed(timer_model(&[10_000]), Flaw::TimerNotConsumed);
    ticks(&mut port, &mut p, 3);
    assert_eq!(port.miniport().lock().timer_at.len(), 3);
    assert_flags(&port, Rule::T4);
}

// T5 and T6 run on threads: see `port::multichannel_tests`.

#[test]
fn t7_polling_miniport_keeps_a_timer_pending() {
    let (port, mut p) = port(Model {
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
    let (port, mut p) = port(Model::default());
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
