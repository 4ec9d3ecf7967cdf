//! TMF faults (slow, hung, failed) and what TMFs do to the requests a fault holds: lost
//! ones end before the TMF's answer, held ones answer a query.

use super::*;

#[test]
fn lost_request_is_aborted_before_the_abort_task_answer() {
    let r = rig(&["lose:opcode=read-10"], 0);
    let lost = r.command(lun(0), &read10(0, 1), 42, 512);
    let other = r.tur(43);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(
        r.used(FIRST_REQUEST_QUEUE),
        vec![(u32::from(other.head), RESP_LEN)]
    );
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 1);
    // Neither a timer nor time ends a lost request.
    r.timer();
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 1);

    // ABORT TASK of another tag finds nothing and leaves it.
    let miss = r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, lun(0), 99);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(miss), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 1);

    let abort = r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, lun(0), 42);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(abort), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.resp(lost).response, VIRTIO_SCSI_S_ABORTED);
    assert_eq!(
        r.used(FIRST_REQUEST_QUEUE)[1],
        (u32::from(lost.head), RESP_LEN)
    );
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 1);
    assert_eq!(r.used(CONTROL_QUEUE).len(), 2);
    let t = r.trace();
    let aborted = position(
        &t,
        &[
            ("ev", "complete".into()),
            ("id", 42.into()),
            ("response", "aborted".into()),
        ],
    );
    let answered = position(&t, &[("ev", "tmf-end".into()), ("id", 42.into())]);
    assert!(aborted < answered, "effects before the TMF completes");
    assert_eq!(t[answered]["response"], "function-complete");
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 0);
}

#[test]
fn lu_reset_ends_lost_requests_of_that_lu_with_reset() {
    let r = rig(&["lose"], 0);
    let a = r.tur(1);
    let b = r.tur(2);
    let other_lu = r.command(lun(1), &[opcode::TEST_UNIT_READY], 3, 0);
    r.kick(FIRST_REQUEST_QUEUE);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
    let reset = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(reset), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.resp(a).response, VIRTIO_SCSI_S_RESET);
    assert_eq!(r.resp(b).response, VIRTIO_SCSI_S_RESET);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 2);
    assert_eq!(
        r.backend.inflight_len(FIRST_REQUEST_QUEUE),
        1,
        "LUN 1 untouched"
    );
    let lu0 = crate::scsi::LunAddress { target: 0, lun: 0 };
    assert!(r.f.target.unit_attention_pending(lu0), "29/03 next");
    // I_T nexus reset takes the rest.
    r.tmf(VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.resp(other_lu).response, VIRTIO_SCSI_S_RESET);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 0);
}

#[test]
fn query_task_sees_a_held_task() {
    let r = rig(&["lose:opcode=test-unit-ready"], 0);
    r.tur(9);
    r.kick(FIRST_REQUEST_QUEUE);
    let q = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK, lun(0), 9);
    let none = r.tmf(VIRTIO_SCSI_T_TMF_QUERY_TASK, lun(0), 10);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(q), VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
    assert_eq!(r.tmf_resp(none), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
}

#[test]
fn slow_tmf_answers_late_and_new_commands_get_busy() {
    let r = rig(&["slow-tmf:tmf=lu-reset,duration_ms=40"], 0);
    let reset = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert!(r.used(CONTROL_QUEUE).is_empty(), "not answered yet");
    assert_eq!(r.tmf_resp(reset), 0xee);
    let busy = r.tur(5);
    let other = r.command(lun(1), &[opcode::TEST_UNIT_READY], 6, 0);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.resp(busy).response, VIRTIO_SCSI_S_OK);
    assert_eq!(r.resp(busy).status, 0x08, "BUSY while the LU reset runs");
    assert_eq!(r.resp(other).status, 0, "another LU is not affected");
    assert!(r.timer_fires_within(Duration::from_secs(5)));
    r.timer();
    assert_eq!(r.tmf_resp(reset), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.used(CONTROL_QUEUE).len(), 1);
    assert_eq!(r.signals(CONTROL_QUEUE), 1);
    assert_eq!(r.stats().busy_during_slow_tmf, 1);
    // After the TMF, commands run again.
    let after = r.tur(7);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_ne!(r.resp(after).status, 0x08);
}

#[test]
fn slow_tmf_can_hold_new_commands_until_it_ends() {
    let r = rig(
        &["slow-tmf:tmf=lu-reset,duration_ms=30,new_commands=hold"],
        0,
    );
    let reset = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    let held = r.tur(5);
    r.kick(FIRST_REQUEST_QUEUE);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty(), "held");
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.used(FIRST_REQUEST_QUEUE).is_empty() && Instant::now() < deadline {
        assert!(r.timer_fires_within(Duration::from_secs(5)));
        r.timer();
    }
    assert_eq!(r.tmf_resp(reset), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.resp(held).response, VIRTIO_SCSI_S_OK);
    assert_eq!(r.stats().held_during_slow_tmf, 1);
}

#[test]
fn hung_tmf_is_never_answered_until_device_reset() {
    let r = rig(&["hang-tmf:tmf=lu-reset", "lose:opcode=test-unit-ready"], 0);
    r.tur(1);
    r.kick(FIRST_REQUEST_QUEUE);
    let reset = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    r.timer();
    assert!(r.used(CONTROL_QUEUE).is_empty());
    assert_eq!(r.tmf_resp(reset), 0xee);
    assert!(
        r.used(FIRST_REQUEST_QUEUE).is_empty(),
        "a hung reset aborts nothing"
    );
    assert_eq!(r.backend.inflight_len(CONTROL_QUEUE), 1);

    r.backend.reset_device();
    assert_eq!(r.backend.inflight_len(CONTROL_QUEUE), 0);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 0);
    assert!(r.used(CONTROL_QUEUE).is_empty(), "dropped, not answered");
    assert_eq!(r.trace_events("device-reset").len(), 1);
    assert_eq!(r.stats().device_resets, 1);
}

#[test]
fn tmf_without_room_for_its_answer_is_completed_empty_and_not_executed() {
    // As without faults: a hung LU reset with no response buffer is neither held nor done.
    let r = rig(&["hang-tmf:tmf=lu-reset"], 0);
    take_warnings();
    let hdr = r.buf();
    let req = tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0));
    r.f.mem.write_obj(req, GuestAddress(hdr)).unwrap();
    let head = r.post(CONTROL_QUEUE, &[(hdr, 24, false)]);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.used(CONTROL_QUEUE), vec![(u32::from(head), 0)]);
    assert_eq!(r.backend.inflight_len(CONTROL_QUEUE), 0);
    assert_eq!(take_warnings().len(), 1);
    assert!(!r
        .f
        .target
        .unit_attention_pending(crate::scsi::LunAddress { target: 0, lun: 0 }));
    assert!(
        r.trace_events("tmf-start").is_empty(),
        "the engine never saw it"
    );
}

#[test]
fn fail_tmf_answers_rejected_or_failure_and_does_nothing() {
    let r = rig(
        &[
            "fail-tmf:tmf=abort-task",
            "fail-tmf:tmf=lu-reset,response=failed",
            "lose:opcode=test-unit-ready",
        ],
        0,
    );
    r.tur(4);
    r.kick(FIRST_REQUEST_QUEUE);
    let abort = r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, lun(0), 4);
    let reset = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(abort), VIRTIO_SCSI_S_FUNCTION_REJECTED);
    assert_eq!(r.tmf_resp(reset), VIRTIO_SCSI_S_FAILURE);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 1, "still lost");
    let ends = r.trace_events("tmf-end");
    assert_eq!(ends[0]["response"], "function-rejected");
    assert_eq!(ends[1]["response"], "failure");
}

#[test]
fn abort_task_reaches_a_request_queue_of_another_worker() {
    let plan = Plan {
        faults: vec![FaultSpec::from_shorthand("lose:queue=3", false).unwrap()],
        ..Plan::default()
    };
    let r = rig_with_queues(plan, 2);
    let q3 = FIRST_REQUEST_QUEUE + 1;
    let lost = r.command_on(q3, lun(0), &[opcode::TEST_UNIT_READY], 77, 0);
    let fine = r.tur(78);
    r.kick(q3);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(
        r.resp(fine).response,
        VIRTIO_SCSI_S_OK,
        "queue 2 is not matched"
    );
    assert!(r.used(q3).is_empty());
    assert_eq!(r.backend.inflight_len(q3), 1);

    // The control queue is worker 0's; the lost request sits on worker 1's queue.
    let abort = r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, lun(0), 77);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.resp(lost).response, VIRTIO_SCSI_S_ABORTED);
    assert_eq!(r.used(q3), vec![(u32::from(lost.head), RESP_LEN)]);
    assert_eq!(r.signals(q3), 1, "queue 3's own interrupt");
    assert_eq!(r.tmf_resp(abort), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.backend.inflight_len(q3), 0);
}
