//! The control queue: TMFs, AN requests and malformed control requests, through
//! `process_control_chain` and through the queue.

use super::*;

#[test]
fn tmf_resets_and_aborts_complete() {
    let f = fixture();
    let tur = [opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0];
    // Sent to LUN 1: the unit attention (29/ascq) the next command to LUN 1 and to LUN 0
    // gets, if any. Nothing is held without faults, so aborts and queries find nothing.
    for (sub, lu1, lu0) in [
        (VIRTIO_SCSI_T_TMF_ABORT_TASK, None, None),
        (VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, None, None),
        (VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, None, None),
        (VIRTIO_SCSI_T_TMF_QUERY_TASK, None, None),
        (VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, None, None),
        (VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, Some(0x03), None),
        (VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, Some(0x07), Some(0x07)),
    ] {
        let (used, resp) = control(&f, tmf(sub, lun(1)).as_slice(), 1);
        assert_eq!(
            (used, resp[0]),
            (1, VIRTIO_SCSI_S_FUNCTION_COMPLETE),
            "subtype {sub}"
        );
        for (l, ua) in [(1, lu1), (0, lu0)] {
            let d = f.command(lun(l), &tur, &[], 0);
            match ua {
                Some(ascq) => assert_check(&d, sense_key::UNIT_ATTENTION, 0x29, ascq),
                None => assert_good(&d),
            }
            // Reported once.
            assert_good(&f.command(lun(l), &tur, &[], 0));
        }
    }
    assert!(take_warnings().is_empty());
}

#[test]
fn tmf_to_absent_lu_is_bad_target() {
    let f = fixture();
    let (used, resp) = control(
        &f,
        tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(9)).as_slice(),
        1,
    );
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_BAD_TARGET));
}

#[test]
fn tmf_unknown_subtype_is_rejected() {
    let f = fixture();
    let (used, resp) = control(&f, tmf(99, lun(0)).as_slice(), 1);
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_FUNCTION_REJECTED));
    let (_, resp) = control(&f, tmf(VIRTIO_SCSI_T_TMF_CLEAR_ACA, lun(0)).as_slice(), 1);
    assert_eq!(resp[0], VIRTIO_SCSI_S_FUNCTION_REJECTED);
}

#[test]
fn an_query_reports_no_events() {
    let f = fixture();
    for type_ in [VIRTIO_SCSI_T_AN_QUERY, VIRTIO_SCSI_T_AN_SUBSCRIBE] {
        let req = VirtioScsiCtrlAnReq {
            type_: Le32::from(type_),
            lun: lun(0),
            event_requested: Le32::from(0xff),
        };
        let (used, resp) = control(&f, req.as_slice(), 5);
        assert_eq!(used, 5);
        assert_eq!(&resp[..4], &[0, 0, 0, 0], "event_actual");
        assert_eq!(resp[4], VIRTIO_SCSI_S_OK);
    }
}

#[test]
fn unknown_control_type_is_failure() {
    let f = fixture();
    let (used, resp) = control(&f, &[7, 0, 0, 0, 0, 0, 0, 0], 1);
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_FAILURE));
    assert_one_warning();
}

#[test]
fn short_tmf_is_failure() {
    let f = fixture();
    let (used, resp) = control(&f, &tmf(0, lun(0)).as_slice()[..12], 1);
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_FAILURE));
    assert_one_warning();
}

#[test]
fn control_request_without_room_for_an_answer_is_not_executed() {
    // Found by the request fuzz target: an unknown TMF subtype without a response buffer
    // logged twice, and a LU reset without one was done although it cannot be answered.
    let f = fixture();
    let addr = LunAddress { target: 0, lun: 0 };
    let reset = tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0));
    let (used, _) = control(&f, reset.as_slice(), 0);
    assert_eq!(used, 0, "zero-length response buffer");
    assert_one_warning();
    assert!(!f.target.unit_attention_pending(addr), "the reset was done");
    let (used, _) = control(&f, tmf(99, lun(0)).as_slice(), 0);
    assert_eq!(used, 0);
    assert_one_warning();
    // No writable descriptor at all, and one outside guest memory.
    f.mem
        .write_slice(reset.as_slice(), GuestAddress(HDR_ADDR))
        .unwrap();
    for tail in [None, Some(desc(MEM_SIZE as u64 + 0x1000, 1, true))] {
        let vq = MockSplitQueue::new(&f.mem, 16);
        let mut descs = vec![desc(HDR_ADDR, 24, false)];
        descs.extend(tail);
        let chain = vq.build_desc_chain(&descs).unwrap();
        assert_eq!(process_control_chain(&f.target, &f.mem, chain), 0);
        assert_one_warning();
    }
    assert!(!f.target.unit_attention_pending(addr));
}
