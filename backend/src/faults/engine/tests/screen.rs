//! The command screen: what it lets by is only counted, and it goes stale when the plan
//! or a quiesce changes.

use crate::faults::engine::*;
use crate::faults::plan::*;
use crate::faults::tests::{engine, ms, read, READ_10, WRITE_10};

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
