//! The fault path's screen: without a trace, a command no fault can match is served as the
//! plain path serves it, with the same responses, data, used entries, interrupts and
//! counters; faults added, enabled, disabled or removed on the control socket, and slow
//! TMFs, take effect at the next command.

use serde_json::json;

use super::*;
use crate::control::handle_line;
use crate::faults::Stats;

/// A rig whose device is served by the fault path with `engine` (which has no trace), or
/// without one by the plain path (an empty plan without trace or control socket); the
/// engine, if any, for the test to look at.
fn rig_on(
    engine: Option<FaultEngine>,
    request_queues: u16,
) -> (Rig, Option<Arc<Mutex<FaultEngine>>>) {
    let mut r = rig_with_queues(Plan::default(), request_queues);
    let target = r.f.target.clone();
    let engine = match engine {
        None => {
            r.backend = VhostUserScsiBackend::new(target, request_queues);
            None
        }
        Some(e) => {
            assert!(!e.tracing());
            let engine = Arc::new(Mutex::new(e));
            let ctx = FaultContext::new(engine.clone(), crate::faults::Epoch::start());
            r.backend = VhostUserScsiBackend::with_faults(target, request_queues, ctx).unwrap();
            Some(engine)
        }
    };
    r.backend
        .update_memory(GuestMemoryAtomic::new(r.f.mem.clone()))
        .unwrap();
    (r, engine)
}

fn engine_of(faults: &[&str]) -> FaultEngine {
    let mut e = FaultEngine::new(Plan::default());
    for text in faults {
        e.add_fault(FaultSpec::from_shorthand(text, false).unwrap())
            .unwrap();
    }
    e
}

/// Faults that the workload below never gives a chance: other LUs, targets, queues,
/// opcodes, blocks and request kinds (state and window filters too).
const UNMATCHABLE: &[&str] = &[
    "status:lun=7,status=busy",
    "lose:target=3",
    "delay:queue=3,delay_ms=5",
    "drop-interrupt:opcode=write-16,state=1",
    "status:lba=1000..2000,status=busy,window_ms=0..100000",
    "delay:direction=write,lun=1,delay_ms=1",
    "drop-interrupt:request=tmf",
    "slow-tmf:tmf=lu-reset,duration_ms=50",
    "spurious-interrupt:interval_ms=100000",
];

/// Everything the driver sees of the workload: each request's response and data-in
/// bytes, the used ring and the interrupts, per kick.
fn workload(r: &Rig) -> Vec<Vec<u8>> {
    let q = FIRST_REQUEST_QUEUE;
    let mut seen = Vec::new();
    let mut look = |r: &Rig, posted: &[(Posted, u32)]| {
        for &(p, data_in) in posted {
            let mut resp = vec![0u8; RESP_LEN as usize];
            r.f.mem.read_slice(&mut resp, GuestAddress(p.resp)).unwrap();
            let mut data = vec![0u8; data_in as usize];
            r.f.mem
                .read_slice(&mut data, GuestAddress(p.data_in))
                .unwrap();
            seen.push(resp);
            seen.push(data);
        }
        let used = r.used(q);
        seen.push(format!("{used:?} signals {}", r.signals(q)).into_bytes());
    };
    // Reads, a TUR and an INQUIRY in one pass.
    let mut posted = Vec::new();
    for (id, lba) in [(1, 0), (2, 8), (3, 40)] {
        posted.push((r.command(lun(0), &read10(lba, 8), id, 4096), 4096));
    }
    posted.push((r.tur(4), 0));
    posted.push((
        r.command(lun(1), &[opcode::INQUIRY, 0, 0, 0, 96, 0], 5, 96),
        96,
    ));
    r.kick(q);
    look(r, &posted);
    // A write, read back; an absent LU; a read past the end; a LUN field in another format.
    let data = [0x5au8; 1024];
    let mut posted = vec![(r.command_out(lun(0), &write10(16, 2), 6, &data), 0)];
    posted.push((r.command(lun(0), &read10(16, 2), 7, 1024), 1024));
    posted.push((r.command(lun(5), &read10(0, 1), 8, 512), 512));
    posted.push((r.command(lun(0), &read10(10_000, 1), 9, 512), 512));
    posted.push((r.command([2, 0, 0, 0, 0, 0, 0, 0], &[0], 10, 0), 0));
    r.kick(q);
    look(r, &posted);
    // As many completions as one interrupt decision takes (a full ring of two-descriptor
    // chains).
    let posted: Vec<_> = (0..MAX_UNSIGNALLED)
        .map(|i| (r.tur(100 + u64::from(i)), 0))
        .collect();
    r.kick(q);
    look(r, &posted);
    seen
}

/// The counters the request path keeps (not the engine's own, like faults fired).
fn request_counters(s: &Stats) -> [u64; 5] {
    [
        s.commands,
        s.completions,
        s.signals_sent,
        s.signals_suppressed_fault,
        s.signals_suppressed_event_idx,
    ]
}

#[test]
fn an_unmatchable_plan_serves_as_no_plan_does() {
    let (plain, _) = rig_on(None, 1);
    let (idle, idle_engine) = rig_on(Some(engine_of(&[])), 1);
    let (armed, armed_engine) = rig_on(Some(engine_of(UNMATCHABLE)), 1);
    let expected = workload(&plain);
    assert_eq!(workload(&idle), expected, "idle engine");
    assert_eq!(workload(&armed), expected, "armed, matching nothing");
    let idle_stats = *lock(idle_engine.as_ref().unwrap()).stats();
    let e = lock(armed_engine.as_ref().unwrap());
    assert_eq!(request_counters(e.stats()), request_counters(&idle_stats));
    assert_eq!(*e.stats(), idle_stats, "no fault fired or shadowed");
    assert_eq!(e.stats().commands, 42);
    assert_eq!(e.stats().completions, 42);
    assert!(e.faults().all(|f| f.seen == 0 && f.fired == 0));
    assert_eq!(e.state(), FaultEngine::INITIAL_STATE);
    drop(e);
    // Malformed chains fail the same way (their count is left out above: an idle engine
    // counts them as commands, an armed one, which never describes them, does not).
    let malformed = |r: &Rig| {
        let (hdr, resp) = (r.buf(), r.buf());
        let short = r.post(
            FIRST_REQUEST_QUEUE,
            &[(hdr, 10, false), (resp, RESP_LEN, true)],
        );
        let no_room = r.post(FIRST_REQUEST_QUEUE, &[(hdr, 51, false), (resp, 4, true)]);
        r.kick(FIRST_REQUEST_QUEUE);
        let mut out = vec![0u8; RESP_LEN as usize];
        r.f.mem.read_slice(&mut out, GuestAddress(resp)).unwrap();
        (
            short,
            no_room,
            out,
            r.used(FIRST_REQUEST_QUEUE),
            r.signals(FIRST_REQUEST_QUEUE),
        )
    };
    let expected = malformed(&plain);
    assert_eq!(malformed(&idle), expected);
    assert_eq!(malformed(&armed), expected);
}

#[test]
fn faults_changed_on_the_control_socket_take_effect_at_the_next_command() {
    let (r, engine) = rig_on(Some(engine_of(&["status:lun=7,status=busy"])), 1);
    let engine = engine.unwrap();
    let line = |v: serde_json::Value| {
        let reply = handle_line(&engine, &v.to_string());
        assert_eq!(reply["ok"], true, "{reply}");
        reply
    };
    let status = |id| r.run(lun(0), &[opcode::TEST_UNIT_READY], id, 0).1.status;
    assert_eq!(status(1), 0);
    let id = line(json!({"cmd": "add", "fault": {"kind": "status", "lun": 0, "status": "busy"}}))
        ["id"]
        .as_u64()
        .unwrap();
    assert_eq!(status(2), 0x08, "added: BUSY");
    line(json!({"cmd": "disable", "id": id}));
    assert_eq!(status(3), 0);
    line(json!({"cmd": "enable", "id": id}));
    assert_eq!(status(4), 0x08);
    line(json!({"cmd": "remove", "id": id}));
    assert_eq!(status(5), 0);
    // One pass: the first command passes, the fault added before the next kick sees the rest.
    let a = r.tur(6);
    r.kick(FIRST_REQUEST_QUEUE);
    line(
        json!({"cmd": "add", "fault": {"kind": "status", "opcode": "test-unit-ready", "status": "busy", "every": 2}}),
    );
    let b = r.tur(7);
    let c = r.tur(8);
    r.kick(FIRST_REQUEST_QUEUE);
    let statuses = [a, b, c].map(|p| r.resp(p).status);
    assert_eq!(statuses, [0, 0, 0x08], "every second match from the add on");
    let stats = line(json!({"cmd": "stats"}));
    assert_eq!(stats["stats"]["commands"], 8);
    assert_eq!(stats["stats"]["completions"], 8);
    assert_eq!(stats["stats"]["fired"]["status"], 3);
}

#[test]
fn a_slow_tmf_makes_commands_of_its_lu_busy_without_a_trace() {
    let plan = engine_of(&["slow-tmf:tmf=lu-reset,duration_ms=40"]);
    let (r, engine) = rig_on(Some(plan), 1);
    let engine = engine.unwrap();
    assert_eq!(r.run(lun(0), &[opcode::TEST_UNIT_READY], 1, 0).1.status, 0);
    let reset = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    let busy = r.tur(2);
    let other = r.command(lun(1), &[opcode::TEST_UNIT_READY], 3, 0);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.resp(busy).status, 0x08, "BUSY while the LU reset runs");
    assert_eq!(r.resp(other).status, 0, "another LU is not affected");
    assert!(r.timer_fires_within(Duration::from_secs(5)));
    r.timer();
    assert_eq!(r.tmf_resp(reset), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    // The next command to that LU ends the quiesce and reports the reset.
    let after = r.tur(4);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.resp(after).status, 0x02, "unit attention 29/03");
    let stats = *lock(&engine).stats();
    assert_eq!(stats.busy_during_slow_tmf, 1);
    assert_eq!((stats.commands, stats.completions), (4, 4));
}

#[test]
fn each_request_queue_has_its_own_screen() {
    let plan = engine_of(&["status:queue=3,status=busy"]);
    let (r, engine) = rig_on(Some(plan), 2);
    let on = |q, id| {
        let p = r.command_on(q, lun(0), &[opcode::TEST_UNIT_READY], id, 0);
        r.kick(q);
        r.resp(p).status
    };
    assert_eq!(on(FIRST_REQUEST_QUEUE, 1), 0);
    assert_eq!(on(FIRST_REQUEST_QUEUE + 1, 2), 0x08);
    assert_eq!(on(FIRST_REQUEST_QUEUE, 3), 0);
    let stats = *lock(engine.as_ref().unwrap()).stats();
    assert_eq!((stats.commands, stats.fired.status), (3, 1));
}
