//! TMFs through the queues: what they end, what the LU reports afterwards, and that a
//! command another worker is executing is on its used ring before the TMF's answer.

use std::sync::atomic::{AtomicBool, Ordering};

use super::super::tests::take_warnings;
use super::*;
use crate::scsi::sense::{sense_key, status};

// ---- a TMF waits for the commands other workers are executing ----

/// Queue `q`'s rings in the race rig: room for 256 descriptors.
const RACE_RING: u16 = 256;
fn race_desc(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}
fn race_avail(q: usize) -> u64 {
    race_desc(q) + 0x1000
}
fn race_used(q: usize) -> u64 {
    race_desc(q) + 0x2000
}

/// Commands the request-queue thread sends per round, and how many of them it keeps for
/// after the LU reset's answer (so that one command surely begins after the reset).
const RACE_COMMANDS: u16 = 200;
const RACE_TAIL: u16 = 4;
const RACE_DATA: u32 = 8 * 512;

fn race_vring(atomic: &GuestMemoryAtomic<GuestMemoryMmap>, q: usize) -> VringRwLock {
    let vring = VringRwLock::new(atomic.clone(), RACE_RING).unwrap();
    vring
        .set_queue_info(race_desc(q), race_avail(q), race_used(q))
        .unwrap();
    vring.set_queue_size(RACE_RING);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// Writes chain number `n` of queue `q` (two descriptors) and makes it available.
fn race_post(mem: &GuestMemoryMmap, q: usize, n: u16, descs: [(u64, u32, bool); 2]) {
    let head = (2 * n) % RACE_RING;
    for (i, (addr, len, writable)) in descs.into_iter().enumerate() {
        let idx = head + i as u16;
        let at = race_desc(q) + 16 * u64::from(idx);
        let mut flags = if writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        if i == 0 {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(idx + 1, GuestAddress(at + 14)).unwrap();
    }
    let slot = race_avail(q) + 4 + 2 * u64::from(n % RACE_RING);
    mem.write_obj(head, GuestAddress(slot)).unwrap();
    // The driver's barrier before publishing avail.idx.
    std::sync::atomic::fence(Ordering::SeqCst);
    mem.write_obj(n.wrapping_add(1), GuestAddress(race_avail(q) + 2))
        .unwrap();
}

fn race_used_idx(mem: &GuestMemoryMmap, q: usize) -> u16 {
    std::sync::atomic::fence(Ordering::SeqCst);
    mem.read_obj(GuestAddress(race_used(q) + 2)).unwrap()
}

/// Response buffer (response, then data-in) of command `n`.
fn race_resp(n: u16) -> u64 {
    BUF_BASE + u64::from(n) * 0x2000
}

/// One round: a thread streams READs on request queue 3 (worker 1) while worker 0 answers
/// a LU reset on the control queue. `m` commands are on queue 3's used ring right after the
/// reset's answer. Every command begun before the reset is among them (the reset waited),
/// so the first command not among them began after the reset and reports it; the unit
/// attention 29/03 is at an index `<= m`. Without the wait, a READ begun before the reset
/// could complete GOOD after the answer and push the unit attention past `m`.
fn lu_reset_round(backend: impl FnOnce(&Fixture) -> VhostUserScsiBackend) {
    let f = fixture();
    let q3 = FIRST_REQUEST_QUEUE + 1;
    let backend = backend(&f);
    let atomic = GuestMemoryAtomic::new(f.mem.clone());
    backend.update_memory(atomic.clone()).unwrap();
    let worker0: Vec<VringRwLock> = (0..=FIRST_REQUEST_QUEUE)
        .map(|q| race_vring(&atomic, q))
        .collect();
    let worker1 = [race_vring(&atomic, q3)];
    let answered = AtomicBool::new(false);
    let m = std::thread::scope(|s| {
        let streamer = s.spawn(|| {
            for n in 0..RACE_COMMANDS {
                if n == RACE_COMMANDS - RACE_TAIL {
                    while !answered.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                }
                let hdr = race_resp(n) + 0x1800;
                let mut req = cmd_header(lun(0), &read10(u32::from(n % 56), 8));
                req.id = Le64::from(u64::from(n));
                f.mem.write_obj(req, GuestAddress(hdr)).unwrap();
                let descs = [
                    (hdr, size_of::<VirtioScsiCmdReq>() as u32, false),
                    (race_resp(n), RESP_LEN + RACE_DATA, true),
                ];
                race_post(&f.mem, q3, n, descs);
                backend.handle_event(0, EventSet::IN, &worker1, 1).unwrap();
            }
        });
        while race_used_idx(&f.mem, q3) < 16 && !streamer.is_finished() {
            std::thread::yield_now();
        }
        let (hdr, resp) = (BUF_BASE - 0x2000, BUF_BASE - 0x1000);
        f.mem
            .write_obj(
                tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0)),
                GuestAddress(hdr),
            )
            .unwrap();
        f.mem.write_obj(0xeeu8, GuestAddress(resp)).unwrap();
        race_post(
            &f.mem,
            CONTROL_QUEUE,
            0,
            [(hdr, 24, false), (resp, 1, true)],
        );
        backend
            .handle_event(CONTROL_QUEUE as u16, EventSet::IN, &worker0, 0)
            .unwrap();
        let m = race_used_idx(&f.mem, q3);
        // Before any assertion, so that a failure here cannot leave the streamer waiting.
        answered.store(true, Ordering::Release);
        let answer: u8 = f.mem.read_obj(GuestAddress(resp)).unwrap();
        assert_eq!(answer, VIRTIO_SCSI_S_FUNCTION_COMPLETE);
        streamer.join().unwrap();
        m
    });
    let mut unit_attentions = Vec::new();
    for n in 0..RACE_COMMANDS {
        let resp: VirtioScsiCmdResp = f.mem.read_obj(GuestAddress(race_resp(n))).unwrap();
        assert_eq!(resp.response, VIRTIO_SCSI_S_OK, "command {n}");
        if resp.status != status::GOOD {
            assert_eq!(resp.status, status::CHECK_CONDITION, "command {n}");
            let sense = (resp.sense[2] & 0xf, resp.sense[12], resp.sense[13]);
            assert_eq!(
                sense,
                (sense_key::UNIT_ATTENTION, 0x29, 0x03),
                "command {n}"
            );
            unit_attentions.push(n);
        }
    }
    assert_eq!(race_used_idx(&f.mem, q3), RACE_COMMANDS);
    assert_eq!(unit_attentions.len(), 1, "{unit_attentions:?}");
    assert!(
        unit_attentions[0] <= m,
        "command {} reported the reset, but only {m} were on the ring at its answer: one \
         begun before the reset completed after it",
        unit_attentions[0]
    );
}

/// A device with two request queues whose engine describes every command (a trace).
fn traced_backend(f: &Fixture) -> VhostUserScsiBackend {
    let mut engine = FaultEngine::new(Plan::default());
    engine.set_trace(Some(Trace::to_writer(Box::new(SharedBuf::default()))));
    let ctx = FaultContext::new(Arc::new(Mutex::new(engine)), crate::faults::Epoch::start());
    VhostUserScsiBackend::with_faults(f.target.clone(), 2, ctx).unwrap()
}

#[test]
fn lu_reset_racing_another_queue_answers_after_that_queue_s_commands() {
    for _ in 0..30 {
        lu_reset_round(|f| VhostUserScsiBackend::new(f.target.clone(), 2));
    }
}

#[test]
fn lu_reset_racing_another_queue_with_the_fault_engine() {
    for _ in 0..30 {
        lu_reset_round(traced_backend);
    }
}

/// Plays a worker that is executing a command on queue 3 for LU 0 (its slot taken), while
/// worker 0 serves a TMF on another thread.
fn tmf_waits_for_a_busy_queue(subtype: u32, lu: u16) {
    let mut r = rig_with_queues(Plan::default(), 2);
    // A bound no run reaches: only the command's end can release the TMF.
    r.backend.set_tmf_wait_bound(Duration::from_secs(60));
    let q3 = FIRST_REQUEST_QUEUE + 1;
    let busy = r.backend.executing().slot(q3);
    busy.begin(0, lu);
    let p = r.tmf(subtype, lun(0), 0);
    let (backend, vrings) = (&r.backend, r.worker_vrings(0));
    std::thread::scope(|s| {
        let worker0 = s.spawn(move || {
            backend
                .handle_event(CONTROL_QUEUE as u16, EventSet::IN, vrings, 0)
                .unwrap()
        });
        while backend.executing().waiters() == 0 && !worker0.is_finished() {
            std::thread::yield_now();
        }
        assert_eq!(r.tmf_resp(p), 0xee, "not answered while queue 3 executes");
        assert!(r.used(CONTROL_QUEUE).is_empty());
        drop(busy);
        worker0.join().unwrap();
    });
    assert_eq!(r.tmf_resp(p), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.used(CONTROL_QUEUE), vec![(u32::from(p.head), 1)]);
}

#[test]
fn lu_reset_waits_for_a_command_another_worker_executes() {
    tmf_waits_for_a_busy_queue(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0);
}

#[test]
fn abort_task_set_waits_for_a_command_another_worker_executes() {
    tmf_waits_for_a_busy_queue(VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, 0);
}

#[test]
fn nexus_reset_waits_for_a_command_of_any_lu_of_the_target() {
    tmf_waits_for_a_busy_queue(VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, 1);
}

#[test]
fn tmf_for_another_lu_does_not_wait() {
    let r = rig_with_queues(Plan::default(), 2);
    let busy = r.backend.executing().slot(FIRST_REQUEST_QUEUE + 1);
    busy.begin(0, 1);
    let p = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(p), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert!(take_warnings().is_empty());
    drop(busy);
}

#[test]
fn a_stuck_command_fails_the_tmf_at_the_bound_with_one_warning() {
    for faults in [false, true] {
        let f = fixture();
        let mut backend = if faults {
            let ctx = FaultContext::new(
                Arc::new(Mutex::new(FaultEngine::new(Plan::default()))),
                crate::faults::Epoch::start(),
            );
            VhostUserScsiBackend::with_faults(f.target.clone(), 2, ctx).unwrap()
        } else {
            VhostUserScsiBackend::new(f.target.clone(), 2)
        };
        backend.set_tmf_wait_bound(Duration::from_millis(1));
        let atomic = GuestMemoryAtomic::new(f.mem.clone());
        backend.update_memory(atomic.clone()).unwrap();
        let worker0: Vec<VringRwLock> = (0..=FIRST_REQUEST_QUEUE)
            .map(|q| race_vring(&atomic, q))
            .collect();
        let stuck = backend.executing().slot(FIRST_REQUEST_QUEUE + 1);
        stuck.begin(0, 0);
        let (hdr, resp) = (BUF_BASE, BUF_BASE + 0x1000);
        f.mem
            .write_obj(
                tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0)),
                GuestAddress(hdr),
            )
            .unwrap();
        race_post(
            &f.mem,
            CONTROL_QUEUE,
            0,
            [(hdr, 24, false), (resp, 1, true)],
        );
        backend
            .handle_event(CONTROL_QUEUE as u16, EventSet::IN, &worker0, 0)
            .unwrap();
        let answer: u8 = f.mem.read_obj(GuestAddress(resp)).unwrap();
        assert_eq!(answer, VIRTIO_SCSI_S_FAILURE, "faults: {faults}");
        let w = take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("still executing"), "{w:?}");
        drop(stuck);
    }
}

#[test]
fn failed_or_hung_lu_reset_resets_nothing() {
    let r = rig(
        &["fail-tmf:tmf=lu-reset", "hang-tmf:tmf=i-t-nexus-reset"],
        0,
    );
    let lu0 = crate::scsi::LunAddress { target: 0, lun: 0 };
    let reset = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    let nexus = r.tmf(VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(reset), VIRTIO_SCSI_S_FUNCTION_REJECTED);
    assert_eq!(r.tmf_resp(nexus), 0xee, "hung");
    assert!(!r.f.target.unit_attention_pending(lu0));
    let (_, tur) = r.run(lun(0), &[opcode::TEST_UNIT_READY], 1, 0);
    assert_eq!((tur.response, tur.status), (VIRTIO_SCSI_S_OK, status::GOOD));
}

// ---- what each TMF ends, answers and leaves behind (held tasks from `lose`) ----

/// A command the device ended without executing it: only the response is set.
fn assert_ended(resp: VirtioScsiCmdResp, response: u8) {
    assert_eq!(resp.response, response);
    assert_eq!(resp.status, status::GOOD);
    assert_eq!(u32::from(resp.sense_len), 0);
}

/// CHECK CONDITION, UNIT ATTENTION `asc`/`ascq` in fixed format, as the guest reads it.
fn assert_unit_attention(resp: VirtioScsiCmdResp, asc: u8, ascq: u8) {
    assert_eq!(resp.response, VIRTIO_SCSI_S_OK);
    assert_eq!(resp.status, status::CHECK_CONDITION);
    assert_eq!(u32::from(resp.sense_len), 18);
    assert_eq!(resp.sense[0], 0x70, "fixed format, current");
    assert_eq!(
        (resp.sense[2] & 0xf, resp.sense[12], resp.sense[13]),
        (sense_key::UNIT_ATTENTION, asc, ascq)
    );
}

fn assert_good(resp: VirtioScsiCmdResp) {
    assert_eq!(
        (resp.response, resp.status),
        (VIRTIO_SCSI_S_OK, status::GOOD)
    );
    assert_eq!(u32::from(resp.sense_len), 0);
}

/// The command `id` was completed (with `response`) before the last TMF with id `tmf_id`
/// was answered.
fn assert_completed_before_answer(r: &Rig, id: u64, response: &str, tmf_id: u64) {
    let t = r.trace();
    let done = position(
        &t,
        &[
            ("ev", "complete".into()),
            ("id", id.into()),
            ("response", response.into()),
        ],
    );
    let answered = t
        .iter()
        .rposition(|v| v["ev"] == "tmf-end" && v["id"] == tmf_id)
        .expect("the TMF was answered");
    assert!(done < answered, "command {id} after the TMF's answer");
}

/// Held commands: two TEST UNIT READYs to LUN 0 (ids 1, 2) and one to LUN 1 (id 3).
fn held_tasks() -> (Rig, [Posted; 3]) {
    let r = rig(&["lose:opcode=test-unit-ready"], 0);
    let held = [
        r.tur(1),
        r.tur(2),
        r.command(lun(1), &[opcode::TEST_UNIT_READY], 3, 0),
    ];
    r.kick(FIRST_REQUEST_QUEUE);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 3);
    (r, held)
}

/// ABORT TASK SET and CLEAR TASK SET end every held command of the LU with ABORTED, and
/// only those; the LU reports no unit attention afterwards.
fn task_set_is_aborted(subtype: u32) {
    let (r, [a, b, other]) = held_tasks();
    let t = r.tmf(subtype, lun(0), 50);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(t), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_ended(r.resp(a), VIRTIO_SCSI_S_ABORTED);
    assert_ended(r.resp(b), VIRTIO_SCSI_S_ABORTED);
    assert_eq!(
        r.resp(other).response,
        0xee,
        "LUN 1's task is not in the set"
    );
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 1);
    assert_eq!(
        r.used(FIRST_REQUEST_QUEUE),
        vec![(u32::from(a.head), RESP_LEN), (u32::from(b.head), RESP_LEN)]
    );
    assert_eq!(
        r.signals(FIRST_REQUEST_QUEUE),
        2,
        "each completion signalled"
    );
    assert_completed_before_answer(&r, 1, "aborted", 50);
    assert_completed_before_answer(&r, 2, "aborted", 50);
    // No unit attention: the next command runs.
    let (_, next) = r.run(lun(0), &[opcode::INQUIRY, 0, 0, 0, 36, 0], 4, 36);
    assert_good(next);
    let (_, lu1) = r.run(lun(1), &[opcode::REQUEST_SENSE, 0, 0, 0, 18, 0], 5, 18);
    assert_good(lu1);
}

#[test]
fn abort_task_set_aborts_every_held_task_of_the_lu() {
    task_set_is_aborted(VIRTIO_SCSI_T_TMF_ABORT_TASK_SET);
}

#[test]
fn clear_task_set_aborts_every_held_task_of_the_lu() {
    task_set_is_aborted(VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET);
}

#[test]
fn lu_reset_ends_held_tasks_with_reset_and_the_next_command_gets_29_03() {
    let (r, [a, b, other]) = held_tasks();
    let t = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 60);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(t), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_ended(r.resp(a), VIRTIO_SCSI_S_RESET);
    assert_ended(r.resp(b), VIRTIO_SCSI_S_RESET);
    assert_eq!(r.resp(other).response, 0xee, "LUN 1 is not reset");
    assert_completed_before_answer(&r, 1, "reset", 60);
    assert_completed_before_answer(&r, 2, "reset", 60);
    // The next command to the LU reports the reset once; LUN 1 reports nothing.
    let inquiry = [opcode::INQUIRY, 0, 0, 0, 36, 0];
    let read = read10(0, 1);
    let (_, ua) = r.run(lun(0), &read, 7, 512);
    assert_unit_attention(ua, 0x29, 0x03);
    assert_eq!(u32::from(ua.resid), 512, "nothing transferred");
    let (p, after) = r.run(lun(0), &read, 8, 512);
    assert_good(after);
    let block: [u8; 4] = r.f.mem.read_obj(GuestAddress(p.data_in)).unwrap();
    assert_eq!(block, [0; 4], "block 0 read");
    let (_, lu1) = r.run(lun(1), &inquiry, 9, 36);
    assert_good(lu1);
    let (_, lu1) = r.run(lun(1), &read10(0, 1), 10, 512);
    assert_good(lu1);
}

#[test]
fn nexus_reset_ends_the_target_s_held_tasks_and_every_lu_gets_29_07() {
    let (r, held) = held_tasks();
    let t = r.tmf(VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, lun(0), 70);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(t), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    for (p, id) in held.iter().zip(1..) {
        assert_ended(r.resp(*p), VIRTIO_SCSI_S_RESET);
        assert_completed_before_answer(&r, id, "reset", 70);
    }
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 0);
    for (l, id) in [(0, 11), (1, 12)] {
        let (_, ua) = r.run(lun(l), &read10(0, 1), id, 512);
        assert_unit_attention(ua, 0x29, 0x07);
        let (_, after) = r.run(lun(l), &read10(0, 1), id + 10, 512);
        assert_good(after);
    }
}

#[test]
fn query_task_set_succeeds_only_while_a_task_of_the_lu_is_held() {
    let (r, [a, b, other]) = held_tasks();
    let held = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(held), VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
    // A query ends nothing.
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 3);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
    r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_ended(r.resp(a), VIRTIO_SCSI_S_ABORTED);
    assert_ended(r.resp(b), VIRTIO_SCSI_S_ABORTED);
    // LUN 1's held task is not LUN 0's.
    let none = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, lun(0), 0);
    let lu1 = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, lun(1), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(none), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.tmf_resp(lu1), VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
    assert_eq!(r.resp(other).response, 0xee);
    let ends = r.trace_events("tmf-end");
    let answers: Vec<_> = ends.iter().map(|e| e["response"].clone()).collect();
    assert_eq!(
        answers,
        [
            "function-succeeded",
            "function-complete",
            "function-complete",
            "function-succeeded"
        ]
    );
}

#[test]
fn query_task_succeeds_only_for_a_held_task_with_that_tag_and_lu() {
    let (r, [a, _, _]) = held_tasks();
    let held = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK, lun(0), 1);
    let other_lu = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK, lun(1), 1);
    let unknown = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK, lun(0), 99);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(held), VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
    assert_eq!(r.tmf_resp(other_lu), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.tmf_resp(unknown), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.resp(a).response, 0xee, "a query ends nothing");
    let abort = r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, lun(0), 1);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(abort), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_ended(r.resp(a), VIRTIO_SCSI_S_ABORTED);
    assert_completed_before_answer(&r, 1, "aborted", 1);
    let gone = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK, lun(0), 1);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(gone), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 2);
}
