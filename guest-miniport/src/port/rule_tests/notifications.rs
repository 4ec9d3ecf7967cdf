//! N1 to N7: the notifications a miniport sends, and the SRBs it may touch.

use super::*;

/// N1 is a compile-time guarantee: `request_complete` takes the handle by value and
/// `SrbHandle` is neither `Copy` nor `Clone`. The mutant is the compile-fail doc test
/// on [`SrbHandle`]. The run-time residue is a handle the port took back itself at the
/// end of a reset hold; touching it is reported and reaches no other SRB.
#[test]
fn n1_completed_srb_is_out_of_the_miniports_reach() {
    let (port, mut p) = port(Model {
        poll_us: 10_000,
        ..Model::default()
    });
    let tag = port.submit(srb(0)).unwrap();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(port.poll_completed().map(|s| s.tag), Some(tag));
    assert_clean(&port);
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
    let (port, mut p) = port(Model {
        poll_us: 10_000,
        ..Model::default()
    });
    let a = port.submit(srb(0)).unwrap();
    let b = port.submit(srb(0)).unwrap();
    let d = port.submit(srb(1)).unwrap();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    // LU 0 is busy after `a`, so NextRequest lets `d` (LU 1) overtake.
    assert_eq!(port.miniport().lock().started, [a, d, b]);
    assert_eq!(port.miniport().lock().max_held, 2);
    assert_clean(&port);
}

#[test]
fn n2_mutant_port_sending_to_a_busy_lu_is_flagged() {
    let (port, mut p) = flawed(
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
    let (port, mut p) = port(Model {
        tagged: true,
        queue_depth: 3,
        next: Next::Lu,
        poll_us: 10_000,
        ..Model::default()
    });
    let tags: Vec<Tag> = (0..7).map(|_| port.submit(srb(0)).unwrap()).collect();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(port.miniport().lock().started, tags);
    assert_eq!(port.miniport().lock().max_held, 3);
    assert_clean(&port);
}

#[test]
fn n3_mutant_next_lu_request_without_tagged_queuing_is_flagged() {
    let (port, mut p) = port(Model {
        next: Next::Lu,
        poll_us: 10_000,
        ..Model::default()
    });
    port.submit(srb(0)).unwrap();
    port.submit(srb(0)).unwrap();
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(
        port.miniport().lock().max_held,
        1,
        "no second request to the LU"
    );
    assert_flags(&port, Rule::N3);
}

#[test]
fn n4_next_request_and_request_complete_in_either_order() {
    for next in [Next::Before, Next::After] {
        let (port, mut p) = port(Model {
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
    let (port, mut p) = port(Model {
        complete_in: CompleteIn::StartIo,
        next: Next::None,
        ..Model::default()
    });
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    assert_flags(&port, Rule::N4);
}

#[test]
fn n5_after_reset_detected_active_requests_are_still_completed() {
    let (port, mut p) = port_with(
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
    assert_eq!(port.miniport().lock().timer_at.len(), 1);
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
    assert!(port.miniport().lock().timer_at.is_empty());
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
