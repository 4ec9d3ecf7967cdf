//! Tests across the fault modules.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `Write` into shared memory, to read a trace back.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use super::engine::*;
use super::plan::*;
use super::trace::{parse_line, Trace, TraceEvent};

/// Counts allocations per thread, so the test of the armed-but-idle cost (issue item 9) is
/// not disturbed by tests running on other threads.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a const-initialized thread local, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr`/`layout` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

pub(crate) fn plan(text: &str) -> Plan {
    Plan::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn engine(text: &str) -> FaultEngine {
    FaultEngine::new(plan(text))
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

pub(crate) const READ_10: u8 = 0x28;
const WRITE_10: u8 = 0x2a;

pub(crate) fn read(id: u64, lba: u64) -> RequestInfo {
    RequestInfo::command(2, id, 0, 0, READ_10)
        .with_lba(lba, 8)
        .with_data(DataDirection::Read, 4096)
}

pub(crate) fn write(id: u64, lba: u64) -> RequestInfo {
    RequestInfo::command(2, id, 0, 0, WRITE_10)
        .with_lba(lba, 8)
        .with_data(DataDirection::Write, 4096)
}

/// Which of `n` reads (ids 1..=n) got a non-normal decision.
fn fired_reads(e: &mut FaultEngine, n: u64) -> Vec<u64> {
    (1..=n)
        .filter(|&i| !e.on_request(&read(i, i), ms(i)).is_normal())
        .collect()
}

pub(crate) fn err_text(text: &str) -> String {
    Plan::from_toml_str(text).unwrap_err().to_string()
}

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

// ---- kinds ----

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
    e.queue_event(VirtioEvent::EventsMissed);
    assert_eq!(e.next_due(), Some(Duration::ZERO));
    assert_eq!(
        e.on_tick(ms(1001)),
        vec![TickAction::PostEvent(VirtioEvent::EventsMissed)]
    );
    e.record_event_posted(&ev, ms(1002));
    assert_eq!((e.stats().fired.event, e.stats().events_posted), (2, 1));
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

// ---- determinism and the trace ----

const MIXED_PLAN: &str = r#"
seed = 1234
allow_corruption = true

[[fault]]
kind = "drop-interrupt"
probability = 0.3

[[fault]]
kind = "delay"
distribution = "long-tail"
min_ms = 1
max_ms = 50
probability = 0.5

[[fault]]
kind = "status"
status = "busy"
opcode = "write-10"
probability = 0.1

[[fault]]
kind = "corrupt"
opcode = "read-10"
probability = 0.05

[[fault]]
kind = "slow-tmf"
tmf = "lu-reset"
duration_ms = 3

[[fault]]
kind = "spurious-interrupt"
interval_ms = 7
probability = 0.5
"#;

/// Drive an engine through a fixed request sequence with a fake clock; return the
/// decisions, tick actions and trace text.
fn run_script(seed: Option<u64>) -> (Vec<RequestDecision>, Vec<TickAction>, String) {
    let buf = SharedBuf::default();
    let mut e = engine(MIXED_PLAN);
    if let Some(s) = seed {
        e.set_seed(s);
    }
    e.set_trace(Some(Trace::to_writer(Box::new(buf.clone()))));
    let mut decisions = Vec::new();
    let mut ticks = Vec::new();
    for i in 0..400u64 {
        let now = Duration::from_micros(i * 1500);
        let req = match i % 5 {
            0 | 1 => read(i, i * 8),
            2 | 3 => write(i, i * 8),
            _ => RequestInfo::tmf(0, i, TmfKind::LogicalUnitReset, 0, 0),
        };
        let d = e.on_request(&req, now);
        decisions.push(d);
        let outcome = if d.drop_interrupt {
            SignalOutcome::SuppressedByFault
        } else {
            SignalOutcome::Sent
        };
        e.record_complete(req.queue, req.id, "ok", Some(0), None, now + d.delay);
        e.record_signal(req.queue, Some(req.id), outcome, now + d.delay);
        ticks.extend(e.on_tick(now));
    }
    e.on_device_reset(ms(700));
    e.flush_trace().unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (decisions, ticks, text)
}

#[test]
fn same_plan_seed_and_requests_give_same_decisions_and_trace() {
    let first = run_script(None);
    let second = run_script(None);
    assert_eq!(first.0, second.0);
    assert_eq!(first.1, second.1);
    assert_eq!(first.2, second.2, "trace bytes differ");
    // The script exercises every kind in the plan.
    assert!(first.0.iter().any(|d| d.drop_interrupt));
    assert!(first
        .0
        .iter()
        .any(|d| matches!(d.completion, Completion::Corrupt(_))));
    assert!(first
        .0
        .iter()
        .any(|d| matches!(d.tmf, TmfOutcome::Slow { .. })));
    assert!(first
        .0
        .iter()
        .any(|d| d.completion == Completion::Status(StatusOverride::Busy)));
    assert!(!first.1.is_empty());
    // Another seed decides differently.
    let other = run_script(Some(99));
    assert_ne!(first.0, other.0);
}

#[test]
fn trace_lines_parse_and_cover_the_events() {
    let (_, _, text) = run_script(None);
    let mut seen = std::collections::BTreeSet::new();
    let mut last_t = 0;
    for line in text.lines() {
        let rec = parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        seen.insert(v["ev"].as_str().unwrap().to_owned());
        if matches!(rec.event, TraceEvent::Request { .. }) {
            assert!(rec.t_us >= last_t, "arrivals are in time order");
            last_t = rec.t_us;
        }
    }
    for ev in [
        "request",
        "complete",
        "fault",
        "signal",
        "signal-suppressed",
        "spurious-signal",
        "tmf-start",
        "device-reset",
    ] {
        assert!(seen.contains(ev), "no `{ev}` record in the trace");
    }
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        r#"{"t_us":0,"ev":"request","queue":2,"id":0,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":0,"blocks":8,"dir":"read"}"#
    );
}

#[test]
fn extreme_values_do_not_panic() {
    const MAX: i64 = i64::MAX;
    let mut e = engine(&format!(
        r#"
[[fault]]
kind = "delay"
distribution = "uniform"
min_ms = 0
max_ms = {MAX}

[[fault]]
kind = "delay"
distribution = "long-tail"
min_ms = {MAX}
max_ms = {MAX}
alpha = 1e-300

[[fault]]
kind = "slow-tmf"
duration_ms = {MAX}
new_commands = "hold"
window_ms = [0, {MAX}]

[[fault]]
kind = "spurious-interrupt"
interval_ms = {MAX}
burst = 4294967295

[[fault]]
kind = "drop-interrupt"
lba = [0, 18446744073709551615]
every = {MAX}
after = {MAX}
"#
    ));
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

// ---- the command screen ----

/// What `on_request` may change, to compare before and after a request.
fn snapshot(e: &FaultEngine) -> (Stats, u32, Vec<(u32, u64, u64)>) {
    let faults = e.faults().map(|f| (f.id, f.seen, f.fired)).collect();
    (*e.stats(), e.state(), faults)
}

/// A command the screen passes is one `on_request` only counts: no decision, no trigger
/// counter, no state, no other stat. Checked against plans that use every matching key,
/// every trigger (state and window included, which come before the match is counted) and
/// slow TMFs that quiesce LUs, with a random mix of commands, TMFs and AN requests.
#[test]
fn a_command_the_screen_passes_is_only_counted() {
    let pool = [
        "status:lun=7,status=busy",
        "status:target=3,status=busy,every=2",
        "delay:opcode=write-10,delay_ms=1,state=2",
        "drop-interrupt:queue=3,probability=0.5",
        "lose:lba=100..199,after=1",
        "status:direction=write,status=busy,window_ms=5..10,set_state=2",
        "delay:request=any,queue=control,delay_ms=2",
        "drop-interrupt:request=tmf,set_state=1",
        "slow-tmf:tmf=lu-reset,duration_ms=4,new_commands=busy",
        "delay:opcode=read-10,lun=1,delay_ms=1,times=3,set_state=3",
        "spurious-interrupt:interval_ms=3",
    ];
    let mut x = 0x5eed_u64;
    let mut next = |n: u64| {
        // xorshift64: a fixed sequence, so a failure repeats.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let (mut passed, mut engine_asked) = (0, 0);
    for round in 0..60 {
        let mut e = FaultEngine::new(Plan::default());
        for (i, text) in pool.iter().enumerate() {
            if next(3) == 0 || (round == 0 && i == 0) {
                e.add_fault(FaultSpec::from_shorthand(text, false).unwrap())
                    .unwrap();
            }
        }
        let mut screens: Vec<CommandScreen> = (0..5).map(|q| CommandScreen::new(&e, q)).collect();
        for i in 0..400u64 {
            let now = Duration::from_micros(i * 50);
            let req = match next(10) {
                0 => RequestInfo::tmf(0, i, TmfKind::LogicalUnitReset, 0, next(3) as u16),
                1 => RequestInfo::an(0, i, 0, 0),
                _ => {
                    let opcode = [READ_10, WRITE_10, 0x00, 0x12][next(4) as usize];
                    let dir = [
                        DataDirection::Read,
                        DataDirection::Write,
                        DataDirection::None,
                    ];
                    let info = RequestInfo::command(
                        2 + next(3) as u16,
                        i,
                        next(4) as u8,
                        next(9) as u16,
                        opcode,
                    )
                    .with_data(dir[next(3) as usize], 4096);
                    match next(2) {
                        0 => info.with_lba(next(300), 1 + next(16)),
                        _ => info,
                    }
                }
            };
            if i % 97 == 13 && e.faults().count() > 0 {
                let id = e.faults().next().map(|f| f.id).unwrap();
                e.set_enabled(id, next(2) == 0).unwrap();
            }
            let screen = &mut screens[usize::from(req.queue).min(4)];
            if !screen.is_current() {
                screen.refresh(&e);
            }
            let passes = screen.passes_request(&req);
            let before = snapshot(&e);
            let d = e.on_request(&req, now);
            if passes {
                passed += 1;
                let (mut stats, state, faults) = before;
                stats.commands += 1;
                assert!(d.is_normal(), "round {round}, {req:?}: {d:?}");
                assert_eq!(snapshot(&e), (stats, state, faults), "{req:?}");
            } else {
                engine_asked += 1;
            }
        }
    }
    assert!(
        passed > 1000 && engine_asked > 1000,
        "{passed} / {engine_asked}"
    );
}

#[test]
fn the_screen_goes_stale_when_the_plan_or_a_quiesce_changes() {
    let mut e = engine("[[fault]]\nkind = \"slow-tmf\"\ntmf = \"lu-reset\"\nduration_ms = 5\n");
    let mut s = CommandScreen::new(&e, 2);
    let cmd = read(1, 0);
    assert!(s.is_current() && s.passes_request(&cmd) && !s.idle());
    let stale = |s: &mut CommandScreen, e: &FaultEngine| {
        let was = !s.is_current();
        s.refresh(e);
        assert!(s.is_current());
        was
    };
    // A slow TMF quiesces its LU: commands go to the engine (BUSY) until it ends.
    e.on_request(
        &RequestInfo::tmf(0, 2, TmfKind::LogicalUnitReset, 0, 0),
        ms(1),
    );
    assert!(stale(&mut s, &e) && !s.passes_request(&cmd));
    assert_eq!(
        e.on_request(&cmd, ms(2)).completion,
        Completion::Status(StatusOverride::Busy)
    );
    assert!(!stale(&mut s, &e), "still quiesced");
    assert!(e.on_request(&cmd, ms(7)).is_normal());
    assert!(
        stale(&mut s, &e) && s.passes_request(&cmd),
        "the quiesce ended"
    );
    // A device reset ends quiesces too.
    e.on_request(
        &RequestInfo::tmf(0, 3, TmfKind::LogicalUnitReset, 0, 0),
        ms(8),
    );
    assert!(stale(&mut s, &e));
    e.on_device_reset(ms(9));
    assert!(stale(&mut s, &e) && s.passes_request(&cmd));
    // Rules added, disabled, enabled and removed.
    let id = e
        .add_fault(FaultSpec::from_shorthand("lose:lun=0", false).unwrap())
        .unwrap();
    assert!(stale(&mut s, &e) && !s.passes_request(&cmd));
    e.set_enabled(id, false).unwrap();
    assert!(stale(&mut s, &e) && s.passes_request(&cmd));
    e.set_enabled(id, true).unwrap();
    assert!(stale(&mut s, &e) && !s.passes_request(&cmd));
    e.remove_fault(id).unwrap();
    assert!(stale(&mut s, &e) && s.passes_request(&cmd));
    // What does not change what a command can match leaves the screen as it is.
    e.set_seed(9);
    e.on_tick(ms(20));
    e.on_request(&cmd, ms(21));
    assert!(!stale(&mut s, &e));
    // A trace records every request.
    e.set_trace(Some(Trace::to_writer(Box::new(std::io::sink()))));
    assert!(stale(&mut s, &e) && !s.passes_request(&cmd) && s.tracing());
    // An engine dropped (or replaced) makes a screen of it stale.
    let other = FaultEngine::new(Plan::default());
    drop(e);
    assert!(stale(&mut s, &other) && s.idle() && s.passes_request(&cmd));
    let cmd_elsewhere = RequestInfo { queue: 3, ..cmd };
    assert!(
        !s.passes_request(&cmd_elsewhere),
        "another queue's screen decides"
    );
}
