//! Bad input on the fault path: the CDB area the driver negotiated, invalid LUN fields.

use super::*;

#[test]
fn engine_describes_a_command_with_a_16_byte_cdb_area() {
    let r = rig(&["status:opcode=read-10,lba=7..7,status=busy"], 0);
    r.backend
        .set_config(VIRTIO_SCSI_CONFIG_CDB_SIZE as u32, &16u32.to_le_bytes())
        .unwrap();
    let post = |cdb: &[u8], id: u64, data_out: &[u8], data_in: u32| {
        let (hdr, resp, din) = (r.buf(), r.buf(), r.buf());
        let mut bytes = lun(0).to_vec();
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&[0; 3]);
        let mut area = [0u8; 16];
        area[..cdb.len()].copy_from_slice(cdb);
        bytes.extend_from_slice(&area);
        bytes.extend_from_slice(data_out);
        r.f.mem.write_slice(&bytes, GuestAddress(hdr)).unwrap();
        let mut descs = vec![(hdr, bytes.len() as u32, false), (resp, RESP_LEN, true)];
        if data_in > 0 {
            descs.push((din, data_in, true));
        }
        let head = r.post(FIRST_REQUEST_QUEUE, &descs);
        Posted {
            head,
            resp,
            data_in: din,
        }
    };
    let write = post(&write10(7, 1), 1, &[0x6b; 512], 0);
    let read = post(&read10(7, 1), 2, &[], 512);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!((r.resp(write).response, r.resp(write).status), (0, 0));
    assert_eq!(r.f.file_block(0, 7), vec![0x6b; 512]);
    // The `lba` match saw block 7: the header was 35 bytes, not 51.
    assert_eq!(r.resp(read).status, 0x08, "BUSY by the fault");
    let requests = r.trace_events("request");
    assert_eq!(
        (&requests[0]["op"], &requests[0]["lba"], &requests[0]["dir"]),
        (&"write-10".into(), &7.into(), &"write".into())
    );
    assert_eq!(requests[1]["id"], 2);
}

#[test]
fn invalid_lun_fields_on_the_fault_path_are_bad_target_with_one_warning() {
    let r = rig(&[], 0);
    for (what, field) in crate::vhu_scsi::tests::bad_input::invalid_lun_fields() {
        super::super::tests::take_warnings();
        let (_, resp) = r.run(field, &[opcode::TEST_UNIT_READY], 1, 0);
        assert_eq!(resp.response, VIRTIO_SCSI_S_BAD_TARGET, "{what}");
        let t = r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, field, 2);
        r.kick(CONTROL_QUEUE);
        assert_eq!(r.tmf_resp(t), VIRTIO_SCSI_S_BAD_TARGET, "{what}");
        let w = super::super::tests::take_warnings();
        assert_eq!(w.len(), 2, "one for the command, one for the TMF: {w:?}");
    }
    // The engine and the trace see such a request at target 255.
    let requests = r.trace_events("request");
    assert!(requests.iter().all(|q| q["target"] == 255), "{requests:?}");
}
