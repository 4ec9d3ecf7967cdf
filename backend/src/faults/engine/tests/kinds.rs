//! Each fault kind's decisions, and which of two faults wins an outcome.

use std::time::Duration;

use crate::faults::engine::*;
use crate::faults::plan::*;
use crate::faults::tests::{engine, ms, read, write};

#[test]
fn kind_drop_interrupt() {
    let mut e = engine("[[fault]]\nkind = \"drop-interrupt\"\nqueue = \"request\"\n");
    let d = e.on_request(&read(1, 0), ms(0));
    assert!(d.drop_interrupt);
    assert_eq!(
        (d.completion, d.delay),
        (Completion::Normal, Duration::ZERO)
    );
    assert!(
        !e.on_request(&RequestInfo::tmf(0, 2, TmfKind::AbortTask, 0, 0), ms(0))
            .drop_interrupt
    );
    assert_eq!(e.stats().fired.drop_interrupt, 1);
}

#[test]
fn kind_delay_fixed_uniform_long_tail() {
    let mut e = engine("[[fault]]\nkind = \"delay\"\ndelay_ms = 7\n");
    assert_eq!(e.on_request(&read(1, 0), ms(0)).delay, ms(7));

    let mut e =
        engine("[[fault]]\nkind = \"delay\"\ndistribution = \"uniform\"\nmin_ms = 2\nmax_ms = 4\n");
    let delays: Vec<Duration> = (0..500)
        .map(|i| e.on_request(&read(i, 0), ms(0)).delay)
        .collect();
    assert!(delays.iter().all(|d| (ms(2)..=ms(4)).contains(d)));
    assert!(delays.iter().any(|d| *d < ms(3)) && delays.iter().any(|d| *d > ms(3)));

    let mut e = engine(
        "[[fault]]\nkind = \"delay\"\ndistribution = \"long-tail\"\nmin_ms = 1\nmax_ms = 100\nalpha = 1.0\n",
    );
    let mut delays: Vec<Duration> = (0..1000)
        .map(|i| e.on_request(&read(i, 0), ms(0)).delay)
        .collect();
    assert!(delays.iter().all(|d| (ms(1)..=ms(100)).contains(d)));
    delays.sort();
    // Pareto(alpha 1): the median is 2x the scale, and about 1% reach the 100x cap.
    assert!(delays[500] > Duration::from_micros(1700) && delays[500] < Duration::from_micros(2300));
    assert!(delays.iter().filter(|d| **d == ms(100)).count() >= 3);

    // Two delays add up; a delay also applies to TMFs.
    let mut e = engine(
        "[[fault]]\nkind = \"delay\"\ndelay_ms = 2\n[[fault]]\nkind = \"delay\"\ndelay_ms = 3\n",
    );
    assert_eq!(
        e.on_request(&RequestInfo::tmf(0, 1, TmfKind::AbortTask, 0, 0), ms(0))
            .delay,
        ms(5)
    );
    assert_eq!(e.stats().fired.delay, 2);
}

#[test]
fn kind_lose() {
    let mut e = engine("[[fault]]\nkind = \"lose\"\nopcode = \"write-10\"\n");
    assert_eq!(
        e.on_request(&write(1, 0), ms(0)).completion,
        Completion::Lose
    );
    assert!(e.on_request(&read(2, 0), ms(0)).is_normal());
    assert_eq!(e.stats().fired.lose, 1);
}

#[test]
fn kind_slow_tmf_with_busy_then_release() {
    let mut e = engine("[[fault]]\nkind = \"slow-tmf\"\ntmf = \"lu-reset\"\nduration_ms = 100\n");
    let d = e.on_request(
        &RequestInfo::tmf(0, 1, TmfKind::LogicalUnitReset, 0, 0),
        ms(10),
    );
    assert_eq!(
        d.tmf,
        TmfOutcome::Slow {
            duration: ms(100),
            new_commands: NewCommandPolicy::Busy
        }
    );
    assert_eq!(
        e.on_request(&read(2, 0), ms(50)).completion,
        Completion::Status(StatusOverride::Busy)
    );
    let other_lun = RequestInfo {
        lun: 1,
        ..read(3, 0)
    };
    assert!(e.on_request(&other_lun, ms(50)).is_normal());
    assert!(
        e.on_request(&read(4, 0), ms(110)).is_normal(),
        "the reset has finished"
    );
    assert_eq!(e.stats().busy_during_slow_tmf, 1);
    assert_eq!(e.stats().fired.slow_tmf, 1);
}

#[test]
fn kind_slow_tmf_with_hold_and_nexus_scope() {
    let mut e = engine("[[fault]]\nkind = \"slow-tmf\"\ntmf = \"i-t-nexus-reset\"\nduration_ms = 100\nnew_commands = \"hold\"\n");
    let d = e.on_request(&RequestInfo::tmf(0, 1, TmfKind::ITNexusReset, 0, 0), ms(0));
    assert!(matches!(
        d.tmf,
        TmfOutcome::Slow {
            new_commands: NewCommandPolicy::Hold,
            ..
        }
    ));
    // Every LUN of the target waits for the rest of the reset; other targets do not.
    let d = e.on_request(
        &RequestInfo {
            lun: 5,
            ..read(2, 0)
        },
        ms(30),
    );
    assert_eq!((d.delay, d.completion), (ms(70), Completion::Normal));
    assert!(e
        .on_request(
            &RequestInfo {
                target: 1,
                ..read(3, 0)
            },
            ms(30)
        )
        .is_normal());
    // A device reset ends the slow TMF at once.
    e.on_device_reset(ms(40));
    assert!(e.on_request(&read(4, 0), ms(41)).is_normal());
    assert_eq!(e.stats().held_during_slow_tmf, 1);
}

#[test]
fn kind_hang_tmf() {
    let mut e = engine("[[fault]]\nkind = \"hang-tmf\"\ntmf = \"lu-reset\"\n");
    assert_eq!(
        e.on_request(
            &RequestInfo::tmf(0, 1, TmfKind::LogicalUnitReset, 0, 0),
            ms(0)
        )
        .tmf,
        TmfOutcome::Hang
    );
    assert!(e
        .on_request(&RequestInfo::tmf(0, 2, TmfKind::AbortTask, 0, 0), ms(0))
        .is_normal());
    assert_eq!(e.stats().fired.hang_tmf, 1);
}

#[test]
fn kind_fail_tmf() {
    let mut e = engine("[[fault]]\nkind = \"fail-tmf\"\ntmf = \"abort-task\"\n[[fault]]\nkind = \"fail-tmf\"\nresponse = \"failed\"\n");
    assert_eq!(
        e.on_request(&RequestInfo::tmf(0, 1, TmfKind::AbortTask, 0, 0), ms(0))
            .tmf,
        TmfOutcome::Fail(TmfFailure::FunctionRejected)
    );
    assert_eq!(
        e.stats().shadowed,
        1,
        "the second fault fired but lost to the first"
    );
    assert_eq!(
        e.on_request(
            &RequestInfo::tmf(0, 2, TmfKind::LogicalUnitReset, 0, 0),
            ms(0)
        )
        .tmf,
        TmfOutcome::Fail(TmfFailure::Failure)
    );
    assert_eq!(e.stats().fired.fail_tmf, 2);
}

#[test]
fn kind_spurious_interrupt_rate_and_burst() {
    let mut e = engine("[[fault]]\nkind = \"spurious-interrupt\"\nqueue = \"request\"\ninterval_ms = 10\nburst = 3\n");
    assert_eq!(e.next_due(), Some(ms(10)));
    assert!(e.on_tick(ms(5)).is_empty());
    assert_eq!(
        e.on_tick(ms(10)),
        vec![TickAction::SpuriousSignal { queue: 2, count: 3 }]
    );
    assert!(e.on_tick(ms(15)).is_empty());
    // A late tick is one opportunity, and the schedule stays on its grid.
    assert_eq!(e.on_tick(ms(47)).len(), 1);
    assert_eq!(e.next_due(), Some(ms(50)));
    assert_eq!(e.stats().spurious_signals, 6);
    assert_eq!(e.stats().fired.spurious_interrupt, 2);
    // Triggers apply to the opportunities.
    let mut e = engine("[[fault]]\nkind = \"spurious-interrupt\"\nqueue = 4\ninterval_ms = 1\nevery = 2\ntimes = 2\n");
    let fired: Vec<u64> = (1..=10).filter(|&t| !e.on_tick(ms(t)).is_empty()).collect();
    assert_eq!(fired, vec![2, 4]);
}

#[test]
fn kind_status_variants() {
    let cases = [
        (
            "status = \"check-condition\"\nsense_key = 3\nasc = 0x11\nascq = 1",
            StatusOverride::CheckCondition {
                sense_key: 3,
                asc: 0x11,
                ascq: 1,
            },
        ),
        ("status = \"busy\"", StatusOverride::Busy),
        ("status = \"task-set-full\"", StatusOverride::TaskSetFull),
        (
            "status = \"reservation-conflict\"",
            StatusOverride::ReservationConflict,
        ),
        (
            "status = \"bad-target\"",
            StatusOverride::Virtio(VirtioResponse::BadTarget),
        ),
        (
            "status = \"transport-failure\"",
            StatusOverride::Virtio(VirtioResponse::TransportFailure),
        ),
        (
            "status = \"target-failure\"",
            StatusOverride::Virtio(VirtioResponse::TargetFailure),
        ),
        (
            "status = \"reset\"",
            StatusOverride::Virtio(VirtioResponse::Reset),
        ),
        (
            "status = \"short-transfer\"\nresidual = 512",
            StatusOverride::ShortTransfer { residual: 512 },
        ),
    ];
    for (keys, want) in cases {
        let mut e = engine(&format!("[[fault]]\nkind = \"status\"\n{keys}\n"));
        assert_eq!(
            e.on_request(&read(1, 0), ms(0)).completion,
            Completion::Status(want),
            "{keys}"
        );
        assert_eq!(e.stats().fired.status, 1);
    }
    assert_eq!(StatusOverride::TaskSetFull.scsi_status(), Some(0x28));
    assert_eq!(
        StatusOverride::Virtio(VirtioResponse::Reset).scsi_status(),
        None
    );
}

#[test]
fn kind_event_scheduled_and_fired_from_control() {
    let mut e = engine("[[fault]]\nkind = \"event\"\nevent = \"transport-reset\"\nreason = \"removed\"\ntarget = 2\nat_ms = 100\n");
    assert!(e.on_tick(ms(99)).is_empty());
    let ev = VirtioEvent::TransportReset {
        target: 2,
        lun: 0,
        reason: ResetReason::Removed,
    };
    assert_eq!(e.on_tick(ms(100)), vec![TickAction::PostEvent(ev)]);
    assert!(e.on_tick(ms(1000)).is_empty(), "at_ms alone is one-shot");
    assert_eq!(e.next_due(), None);
    e.queue_event(VirtioEvent::EventsMissed).unwrap();
    assert_eq!(e.next_due(), Some(Duration::ZERO));
    assert_eq!(
        e.on_tick(ms(1001)),
        vec![TickAction::PostEvent(VirtioEvent::EventsMissed)]
    );
    e.record_event_posted(&ev, ms(1002));
    assert_eq!((e.stats().fired.event, e.stats().events_posted), (2, 1));
    // Events the driver never takes are bounded.
    for _ in 0..MAX_PENDING_EVENTS {
        e.queue_event(VirtioEvent::EventsMissed).unwrap();
    }
    assert_eq!(
        e.queue_event(VirtioEvent::EventsMissed),
        Err(EngineError::TooManyEvents)
    );
}

#[test]
fn kind_corrupt_is_deterministic_and_changes_data() {
    let text = "allow_corruption = true\nseed = 5\n[[fault]]\nkind = \"corrupt\"\nopcode = \"read-10\"\nbytes = 3\n";
    let mut a = engine(text);
    let mut b = engine(text);
    let (Completion::Corrupt(ca), Completion::Corrupt(cb)) = (
        a.on_request(&read(1, 0), ms(0)).completion,
        b.on_request(&read(1, 0), ms(0)).completion,
    ) else {
        panic!("no corruption decided")
    };
    assert_eq!(ca, cb);
    let clean = vec![0x5a_u8; 4096];
    let (mut x, mut y) = (clean.clone(), clean.clone());
    ca.apply(&mut x);
    cb.apply(&mut y);
    assert_eq!(x, y);
    let changed = x.iter().zip(&clean).filter(|(p, q)| p != q).count();
    assert!((1..=3).contains(&changed), "{changed}");
    // The next decision flips other bytes.
    let Completion::Corrupt(next) = a.on_request(&read(2, 0), ms(0)).completion else {
        panic!()
    };
    assert_ne!(next.seed, ca.seed);
    ca.apply(&mut []);
}

#[test]
fn exclusive_outcomes_first_fault_wins() {
    let mut e = engine(
        "[[fault]]\nkind = \"status\"\nstatus = \"busy\"\n[[fault]]\nkind = \"lose\"\n[[fault]]\nkind = \"drop-interrupt\"\n",
    );
    let d = e.on_request(&read(1, 0), ms(0));
    assert_eq!(d.completion, Completion::Status(StatusOverride::Busy));
    assert!(d.drop_interrupt);
    let s = e.stats();
    assert_eq!(
        (
            s.fired.status,
            s.fired.lose,
            s.fired.drop_interrupt,
            s.shadowed
        ),
        (1, 0, 1, 1)
    );
}
