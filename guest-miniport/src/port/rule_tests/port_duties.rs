//! P1 to P4: the port's own duties (timeouts, the reset hold, completing once,
//! measuring each routine).

use super::*;

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
    assert_eq!(port.miniport().lock().resets, 1);
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
    assert_eq!(port.miniport().lock().resets, 0);
    assert_flags(&port, Rule::P1);
}

#[test]
fn p2_new_requests_are_held_after_a_bus_reset() {
    let (port, mut p) = port_with(
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
    let started_at = port.miniport().lock().timer_at[0] - 10_000;
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
    let (port, mut p) = flawed(
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
    let (port, mut p) = port(Model {
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
    let (port, mut p) = port(Model {
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
