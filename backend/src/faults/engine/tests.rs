//! The engine: matching, triggers, the cost of a plan that matches nothing, extreme values
//! and the clock; the kinds, the trace and the screen in the files below.

use std::time::Duration;

use super::*;
use crate::faults::plan::*;
use crate::faults::tests::{
    allocations, engine, fired_reads, ms, plan, read, write, READ_10, WRITE_10,
};

mod kinds;
mod screen;
mod trace;

// ---- matching ----

#[test]
fn matching_by_queue_target_lun_opcode_lba_direction() {
    let p = plan(
        r#"
[[fault]]
kind = "lose"
queue = 3
target = 1
lun = 2
opcode = "write-10"
lba = [100, 199]
direction = "write"
"#,
    );
    let m = p.faults[0].matcher;
    let base = RequestInfo::command(3, 1, 1, 2, WRITE_10)
        .with_lba(96, 8)
        .with_data(DataDirection::Write, 4096);
    assert!(m.matches(&base));
    assert!(m.matches(&base.with_lba(199, 1)));
    assert!(!m.matches(&base.with_lba(200, 8)), "past the range");
    assert!(!m.matches(&base.with_lba(90, 10)), "ends at 99");
    assert!(
        !m.matches(&base.with_lba(150, 0)),
        "a command of 0 blocks transfers none in the range"
    );
    assert!(!m.matches(&RequestInfo { queue: 2, ..base }));
    assert!(!m.matches(&RequestInfo { target: 0, ..base }));
    assert!(!m.matches(&RequestInfo { lun: 0, ..base }));
    assert!(!m.matches(&RequestInfo {
        opcode: Some(READ_10),
        ..base
    }));
    assert!(!m.matches(&base.with_data(DataDirection::Read, 4096)));
    assert!(!m.matches(&RequestInfo { lba: None, ..base }));
    assert!(!m.matches(&RequestInfo::tmf(3, 1, TmfKind::AbortTask, 1, 2)));
}

#[test]
fn matching_by_request_class_and_tmf_subtype() {
    let p = plan(
        r#"
[[fault]]
kind = "drop-interrupt"
queue = "control"
tmf = "abort-task"

[[fault]]
kind = "drop-interrupt"
request = "an"

[[fault]]
kind = "delay"
queue = "request"
delay_ms = 1
"#,
    );
    let abort = RequestInfo::tmf(0, 1, TmfKind::AbortTask, 0, 0);
    let reset = RequestInfo::tmf(0, 2, TmfKind::LogicalUnitReset, 0, 0);
    let an = RequestInfo::an(0, 3, 0, 0);
    let cmd = RequestInfo::command(2, 4, 0, 0, 0);
    let [a, b, c] = [0, 1, 2].map(|i| p.faults[i].matcher);
    assert!(a.matches(&abort) && !a.matches(&reset) && !a.matches(&an) && !a.matches(&cmd));
    assert!(b.matches(&an) && !b.matches(&abort) && !b.matches(&cmd));
    assert!(c.matches(&cmd) && c.matches(&RequestInfo { queue: 7, ..cmd }) && !c.matches(&abort));
    assert_eq!(TmfKind::from_virtio(5), TmfKind::LogicalUnitReset);
    assert_eq!(TmfKind::from_virtio(99), TmfKind::Other(99));
    assert!(!a.matches(&RequestInfo::tmf(0, 1, TmfKind::Other(0), 0, 0)));
}

#[test]
fn armed_plan_that_matches_nothing_does_not_allocate() {
    let mut e = engine(
        r#"
[[fault]]
kind = "lose"
target = 7

[[fault]]
kind = "drop-interrupt"
opcode = "write-16"
probability = 0.5

[[fault]]
kind = "delay"
queue = "control"
delay_ms = 3

[[fault]]
kind = "hang-tmf"
"#,
    );
    let reqs: Vec<RequestInfo> = (0..1000).map(|i| read(i, i * 8)).collect();
    let before = allocations();
    let mut normal = 0;
    for (i, r) in reqs.iter().enumerate() {
        normal += usize::from(e.on_request(r, ms(i as u64)).is_normal());
    }
    assert_eq!(allocations() - before, 0);
    assert_eq!(normal, 1000);
    assert_eq!(e.stats().commands, 1000);
}

// ---- triggers ----

#[test]
fn trigger_always() {
    let mut e = engine("[[fault]]\nkind = \"lose\"\n");
    assert_eq!(fired_reads(&mut e, 5), vec![1, 2, 3, 4, 5]);
}

#[test]
fn trigger_every_nth() {
    let mut e = engine("[[fault]]\nkind = \"drop-interrupt\"\nevery = 3\n");
    assert_eq!(fired_reads(&mut e, 10), vec![3, 6, 9]);
}

#[test]
fn trigger_after_n() {
    let mut e = engine("[[fault]]\nkind = \"lose\"\nafter = 7\n");
    assert_eq!(fired_reads(&mut e, 9), vec![8, 9]);
}

#[test]
fn trigger_after_then_every() {
    let mut e = engine("[[fault]]\nkind = \"lose\"\nafter = 2\nevery = 2\n");
    assert_eq!(fired_reads(&mut e, 9), vec![4, 6, 8]);
}

#[test]
fn trigger_at_most_n_times() {
    let mut e = engine("[[fault]]\nkind = \"lose\"\nevery = 2\ntimes = 2\n");
    assert_eq!(fired_reads(&mut e, 10), vec![2, 4]);
    assert_eq!(e.faults().next().map(|f| (f.seen, f.fired)), Some((10, 2)));
}

#[test]
fn trigger_one_shot() {
    let mut e = engine("[[fault]]\nkind = \"lose\"\nafter = 1\nonce = true\n");
    assert_eq!(fired_reads(&mut e, 5), vec![2]);
}

#[test]
fn trigger_time_window() {
    // fired_reads sends read i at i ms.
    let mut e = engine("[[fault]]\nkind = \"lose\"\nwindow_ms = [3, 6]\n");
    assert_eq!(fired_reads(&mut e, 9), vec![3, 4, 5]);
    // Matches outside the window are not counted for `every`.
    let mut e = engine("[[fault]]\nkind = \"lose\"\nwindow_ms = [3, 9]\nevery = 2\n");
    assert_eq!(fired_reads(&mut e, 10), vec![4, 6, 8]);
}

#[test]
fn trigger_probability() {
    let mut never = engine("[[fault]]\nkind = \"lose\"\nprobability = 0.0\n");
    assert!(fired_reads(&mut never, 200).is_empty());
    let mut always = engine("[[fault]]\nkind = \"lose\"\nprobability = 1.0\n");
    assert_eq!(fired_reads(&mut always, 200).len(), 200);
    let mut some = engine("seed = 9\n[[fault]]\nkind = \"lose\"\nprobability = 0.3\n");
    let n = fired_reads(&mut some, 2000).len();
    assert!((500..700).contains(&n), "{n} of 2000 at p=0.3");
}

#[test]
fn trigger_state_sequence() {
    // blkdebug style: the first write moves to state 2; reads fail only in state 2, and
    // the second such read moves on to state 3, where nothing fires.
    let mut e = engine(
        r#"
[[fault]]
kind = "delay"
opcode = "write-10"
delay_ms = 1
state = 1
set_state = 2

[[fault]]
kind = "status"
opcode = "read-10"
status = "busy"
state = 2

[[fault]]
kind = "drop-interrupt"
opcode = "read-10"
state = 2
every = 2
set_state = 3
"#,
    );
    assert!(e.on_request(&read(1, 0), ms(1)).is_normal());
    assert_eq!(e.state(), 1);
    assert_eq!(e.on_request(&write(2, 0), ms(2)).delay, ms(1));
    assert_eq!(e.state(), 2);
    let d = e.on_request(&read(3, 0), ms(3));
    assert_eq!(d.completion, Completion::Status(StatusOverride::Busy));
    assert!(!d.drop_interrupt);
    let d = e.on_request(&read(4, 0), ms(4));
    assert_eq!(d.completion, Completion::Status(StatusOverride::Busy));
    assert!(
        d.drop_interrupt,
        "the state change applies after the request"
    );
    assert_eq!(e.state(), 3);
    assert!(e.on_request(&read(5, 0), ms(5)).is_normal());
    assert!(e.on_request(&write(6, 0), ms(6)).is_normal());
}

// ---- limits and the clock ----

#[test]
fn extreme_values_do_not_panic() {
    const MAX: u64 = i64::MAX as u64;
    // A plan cannot give these (see `plan::bounds`): the faults are read with small
    // values and raised past the bounds, as a plan built in code could be.
    let mut p = plan(
        r#"
[[fault]]
kind = "delay"
distribution = "uniform"
min_ms = 0
max_ms = 1

[[fault]]
kind = "delay"
distribution = "long-tail"
min_ms = 1
max_ms = 1
alpha = 1.0

[[fault]]
kind = "slow-tmf"
duration_ms = 1
new_commands = "hold"
window_ms = [0, 1]

[[fault]]
kind = "spurious-interrupt"
interval_ms = 1
burst = 1

[[fault]]
kind = "drop-interrupt"
lba = [0, 18446744073709551615]
every = 1
after = 1
"#,
    );
    let huge_ms = Duration::from_millis(MAX);
    for f in &mut p.faults {
        match &mut f.action {
            FaultAction::Delay(DelayDist::Uniform { max, .. }) => *max = huge_ms,
            FaultAction::Delay(DelayDist::LongTail { min, max, alpha }) => {
                (*min, *max, *alpha) = (huge_ms, huge_ms, 1e-300);
            }
            FaultAction::SlowTmf { duration, .. } => {
                *duration = huge_ms;
                f.trigger.window = Some((Duration::ZERO, huge_ms));
            }
            FaultAction::SpuriousInterrupt {
                burst, schedule, ..
            } => {
                *burst = u32::MAX;
                schedule.first = huge_ms;
                schedule.interval = Some(huge_ms);
            }
            _ => {
                (f.trigger.every, f.trigger.after) = (Some(MAX), MAX);
            }
        }
    }
    let mut e = FaultEngine::new(p);
    let huge = Duration::from_secs(u64::MAX / 4);
    for (i, now) in [Duration::ZERO, ms(1), huge].into_iter().enumerate() {
        let _ = e.on_request(
            &RequestInfo::tmf(0, i as u64, TmfKind::ITNexusReset, 0, 0),
            now,
        );
        let _ = e.on_request(&read(i as u64, u64::MAX).with_lba(u64::MAX, u64::MAX), now);
        let _ = e.on_tick(now);
    }
    assert!(e.stats().fired.delay >= 2);
}

#[test]
fn engine_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<FaultEngine>();
    assert_send::<Trace>();
}

#[test]
fn the_clock_is_needed_only_for_commands_a_rule_matches() {
    let mut e = engine("[[fault]]\nkind = \"delay\"\nlun = 7\ndelay_ms = 5\n");
    let other = read(1, 0);
    let seven = RequestInfo::command(2, 2, 0, 7, READ_10);
    assert!(!e.needs_time(&other));
    assert!(e.needs_time(&seven));
    // Given no time, the unmatched command is decided as it would be at any time.
    assert!(e.on_request(&other, Duration::ZERO).is_normal());
    assert_eq!(e.on_request(&seven, ms(1)).delay, ms(5));
    e.set_trace(Some(Trace::to_writer(Box::new(std::io::sink()))));
    assert!(e.needs_time(&other), "a trace records arrival times");
}
