//! Bad input from the driver beyond a malformed chain: a CDB that does not fit the CDB
//! area the driver negotiated (config space `cdb_size`), and config writes the device does
//! not take. Each gets its response or sense data and exactly one warning.

use super::*;

/// The request header's bytes with a CDB area of `cdb_size` (the CDB cut or zero-padded).
fn header_bytes(lun: [u8; 8], cdb: &[u8], cdb_size: usize) -> Vec<u8> {
    let mut bytes = lun.to_vec();
    bytes.extend_from_slice(&[0; 11]);
    let mut area = vec![0u8; cdb_size];
    let n = cdb.len().min(cdb_size);
    area[..n].copy_from_slice(&cdb[..n]);
    bytes.extend_from_slice(&area);
    bytes
}

impl Fixture {
    /// One command whose header has a `cdb_size` CDB area, followed in the same readable
    /// descriptor by `data_out` (so a wrong header length shows as wrong data).
    fn command_sized(
        &self,
        cdb_size: usize,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: u32,
    ) -> Done {
        let mut out = header_bytes(lun(0), cdb, cdb_size);
        out.extend_from_slice(data_out);
        self.mem.write_slice(&out, GuestAddress(HDR_ADDR)).unwrap();
        self.mem
            .write_slice(&[0xee; RESP_LEN as usize], GuestAddress(RESP_ADDR))
            .unwrap();
        let mut descs = vec![desc(HDR_ADDR, out.len() as u32, false)];
        descs.push(desc(RESP_ADDR, RESP_LEN, true));
        if data_in_len > 0 {
            descs.push(desc(IN_ADDR, data_in_len, true));
        }
        let vq = MockSplitQueue::new(&self.mem, 16);
        let chain = vq.build_desc_chain(&descs).unwrap();
        let how = Disposition::EXECUTE;
        let used = serve_command(&self.target, &self.mem, chain, how, cdb_size, None).used;
        let mut data_in = vec![0u8; data_in_len as usize];
        self.mem
            .read_slice(&mut data_in, GuestAddress(IN_ADDR))
            .unwrap();
        Done {
            used,
            resp: self.mem.read_obj(GuestAddress(RESP_ADDR)).unwrap(),
            data_in,
        }
    }
}

#[test]
fn cdb_longer_than_cdb_size_is_invalid_field_in_cdb_with_one_warning() {
    let f = fixture();
    // cdb_size 10: READ(16) and READ(12) lost their tails; READ(10) fits exactly.
    for (cdb, data_in) in [
        (&rw16(opcode::READ_16, 1, 1)[..], 512),
        (&[opcode::READ_12, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0][..], 512),
    ] {
        let d = f.command_sized(10, cdb, &[], data_in);
        assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
        assert_eq!(d.resid(), 512, "nothing transferred");
        assert_eq!(d.used, RESP_LEN);
        let w = take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("cdb_size 10"), "{w:?}");
    }
    let d = f.command_sized(10, &read10(2, 1), &[], 512);
    assert_good(&d);
    assert_eq!(d.data_in, vec![2u8; 512]);
    // cdb_size 6: only 6-byte CDBs (TEST UNIT READY) go through.
    assert_good(&f.command_sized(6, &[opcode::TEST_UNIT_READY], &[], 0));
    let d = f.command_sized(6, &read10(0, 1), &[], 512);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    assert_one_warning();
}

#[test]
fn cdb_too_long_uses_up_no_unit_attention() {
    let f = fixture();
    let lu0 = crate::scsi::LunAddress { target: 0, lun: 0 };
    f.target.lu_reset(lu0).unwrap();
    let d = f.command_sized(10, &rw16(opcode::READ_16, 0, 1), &[], 512);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    assert_one_warning();
    // The CDB never reached the LU: the next command gets the reset's unit attention.
    let d = f.command_sized(10, &[opcode::TEST_UNIT_READY], &[], 0);
    assert_check(&d, sense_key::UNIT_ATTENTION, 0x29, 0x03);
}

#[test]
fn variable_length_cdb_is_measured_by_its_additional_length() {
    let f = fixture();
    // 7Fh with ADDITIONAL CDB LENGTH 24: 32 bytes, which fit the default cdb_size; the
    // device server does not implement it (no warning: a CDB it cannot do, not a bad one).
    let mut cdb = [0u8; 32];
    cdb[0] = 0x7f;
    cdb[7] = 24;
    let d = f.command(lun(0), &cdb, &[], 0);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
    assert!(take_warnings().is_empty());
    // 25 more bytes: 33, longer than any CDB area of 32.
    cdb[7] = 25;
    let d = f.command(lun(0), &cdb, &[], 0);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    assert_one_warning();
    // With a larger CDB area the same 33-byte CDB fits (and is unsupported).
    let d = f.command_sized(40, &cdb, &[], 0);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
    assert!(take_warnings().is_empty());
}

#[test]
fn data_out_starts_after_the_negotiated_cdb_area() {
    let f = fixture();
    for (cdb_size, lba, fill) in [(10, 3, 0x5a), (16, 4, 0x5b), (64, 5, 0x5c)] {
        let d = f.command_sized(cdb_size, &write10(lba, 1), &[fill; 512], 0);
        assert_good(&d);
        assert_eq!(d.resid(), 0);
        assert_eq!(
            f.file_block(0, u64::from(lba)),
            vec![fill; 512],
            "{cdb_size}"
        );
    }
    assert!(take_warnings().is_empty());
}

#[test]
fn header_shorter_than_the_cdb_area_is_failure() {
    let f = fixture();
    f.mem
        .write_slice(
            &header_bytes(lun(0), &[opcode::TEST_UNIT_READY], 16),
            GuestAddress(HDR_ADDR),
        )
        .unwrap();
    let vq = MockSplitQueue::new(&f.mem, 16);
    // 19 fixed bytes and 15 of the 16-byte CDB area.
    let chain = vq
        .build_desc_chain(&[desc(HDR_ADDR, 34, false), desc(RESP_ADDR, RESP_LEN, true)])
        .unwrap();
    let served = serve_command(&f.target, &f.mem, chain, Disposition::EXECUTE, 16, None);
    assert_eq!(served.used, RESP_LEN);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FAILURE);
    assert_one_warning();
}

// ---- the config space (VHOST_USER_PROTOCOL_F_CONFIG) ----

fn config_of(b: &VhostUserScsiBackend) -> VirtioScsiConfig {
    let bytes = b.get_config(0, size_of::<VirtioScsiConfig>() as u32);
    VirtioScsiConfig::from_slice(&bytes).copied().unwrap()
}

#[test]
fn driver_writes_cdb_size_and_a_device_reset_restores_it() {
    let f = fixture();
    let b = VhostUserScsiBackend::new(f.target.clone(), 4);
    assert!(b
        .protocol_features()
        .contains(VhostUserProtocolFeatures::CONFIG));
    let c = config_of(&b);
    assert_eq!(u32::from(c.num_queues), 4);
    assert_eq!(u32::from(c.sense_size), 96);
    assert_eq!(u32::from(c.cdb_size), 32);
    assert_eq!(u32::from(c.event_info_size), 16);
    assert_eq!((c.max_target, u32::from(c.max_lun)), (255, 0x3fff));
    // A read past the end is cut, not a panic.
    assert_eq!(b.get_config(30, 100).len(), 6);
    assert!(b.get_config(u32::MAX, 4).is_empty());

    b.set_config(VIRTIO_SCSI_CONFIG_CDB_SIZE as u32, &16u32.to_le_bytes())
        .unwrap();
    assert_eq!(b.cdb_size(), 16);
    assert_eq!(u32::from(config_of(&b).cdb_size), 16);
    // The whole config written back, with a read-only field changed: only cdb_size takes.
    let mut all = config_of(&b);
    all.num_queues = Le32::from(9);
    all.cdb_size = Le32::from(12);
    b.set_config(0, all.as_slice()).unwrap();
    assert_eq!(u32::from(config_of(&b).num_queues), 4);
    assert_eq!(b.cdb_size(), 12);
    assert!(take_warnings().is_empty());

    b.reset_device();
    assert_eq!(b.cdb_size(), 32);
}

#[test]
fn config_writes_the_device_cannot_take_are_refused_with_one_warning() {
    let f = fixture();
    let b = VhostUserScsiBackend::new(f.target.clone(), 1);
    let at = |field: usize| field as u32;
    for (offset, bytes) in [
        (
            at(VIRTIO_SCSI_CONFIG_SENSE_SIZE),
            64u32.to_le_bytes().to_vec(),
        ),
        (
            at(VIRTIO_SCSI_CONFIG_CDB_SIZE),
            256u32.to_le_bytes().to_vec(),
        ),
        (34, vec![0; 4]),
        (u32::MAX, vec![0; 2]),
    ] {
        assert!(b.set_config(offset, &bytes).is_err(), "{offset} {bytes:?}");
        assert_one_warning();
        let c = config_of(&b);
        assert_eq!((u32::from(c.sense_size), b.cdb_size()), (96, 32));
    }
    // One byte of cdb_size at a time works.
    b.set_config(at(VIRTIO_SCSI_CONFIG_CDB_SIZE), &[20])
        .unwrap();
    assert_eq!(b.cdb_size(), 20);
}

#[test]
fn random_headers_with_any_cdb_size_never_panic_and_stay_in_bounds() {
    let f = fixture();
    let mut rng = Rng(0xcdb5);
    let ops = [
        opcode::TEST_UNIT_READY,
        opcode::READ_10,
        opcode::WRITE_10,
        opcode::READ_16,
        opcode::READ_12,
        0x7f,
    ];
    for _ in 0..2000 {
        let cdb_size = rng.below(256) as usize;
        let mut cdb = [0u8; 32];
        cdb.iter_mut().for_each(|b| *b = rng.below(4) as u8);
        cdb[0] = ops[rng.below(ops.len() as u64) as usize];
        cdb[7] = rng.below(40) as u8;
        let mut out = header_bytes(lun(rng.below(3) as u16), &cdb, cdb_size);
        let keep = out.len() - rng.below(4) as usize * rng.below(2) as usize;
        out.truncate(keep);
        out.extend((0..rng.below(1024)).map(|_| rng.next() as u8));
        f.mem.write_slice(&out, GuestAddress(HDR_ADDR)).unwrap();
        let resp_len = [RESP_LEN, RESP_LEN + 512, 20][rng.below(3) as usize];
        let descs = [
            desc(HDR_ADDR, out.len() as u32, false),
            desc(RESP_ADDR, resp_len, true),
        ];
        let vq = MockSplitQueue::new(&f.mem, 16);
        let chain = vq.build_desc_chain(&descs).unwrap();
        let how = Disposition::EXECUTE;
        let used = serve_command(&f.target, &f.mem, chain, how, cdb_size, None).used;
        assert!(used <= resp_len, "used {used} > writable {resp_len}");
    }
    take_warnings();
}

// ---- LUN fields outside the one format virtio-scsi allows (5.6.6.1) ----

/// LUN fields that are not `1, target, single-level LUN, 0, 0, 0, 0`.
pub(in crate::vhu_scsi) fn invalid_lun_fields() -> Vec<(&'static str, [u8; 8])> {
    let mut fields = vec![
        ("first byte 0", [0, 0, 0x40, 0, 0, 0, 0, 0]),
        ("first byte 2", [2, 0, 0x40, 0, 0, 0, 0, 0]),
        ("peripheral with a bus number", [1, 0, 0x01, 0, 0, 0, 0, 0]),
        // Addressing methods 10b and 11b (SAM-5 4.7); flat space stops at 16383.
        ("logical unit addressing", [1, 0, 0x80, 0, 0, 0, 0, 0]),
        ("extended addressing", [1, 0, 0xc0, 0, 0, 0, 0, 0]),
        (
            "LUN 16384, extended flat space",
            [1, 0, 0xd2, 0x00, 0x40, 0x00, 0, 0],
        ),
    ];
    for (i, name) in ["byte 4 set", "byte 5 set", "byte 6 set", "byte 7 set"]
        .into_iter()
        .enumerate()
    {
        let mut l = lun(0);
        l[4 + i] = 0x40;
        fields.push((name, l));
    }
    fields
}

#[test]
fn invalid_lun_fields_are_bad_target_with_one_warning() {
    let f = fixture();
    let inquiry = [opcode::INQUIRY, 0, 0, 0, 36, 0];
    for (what, field) in invalid_lun_fields() {
        let d = f.command(field, &inquiry, &[], 36);
        assert_eq!(d.resp.response, VIRTIO_SCSI_S_BAD_TARGET, "{what}");
        assert_eq!(d.used, RESP_LEN, "{what}: only the response");
        assert_eq!(d.resp.status, 0, "{what}");
        assert_eq!(u32::from(d.resp.sense_len), 0, "{what}");
        let w = take_warnings();
        assert_eq!(w.len(), 1, "{what}: {w:?}");
        assert!(w[0].contains("single-level LUN"), "{what}: {w:?}");

        let (used, resp) = control(
            &f,
            tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, field).as_slice(),
            1,
        );
        assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_BAD_TARGET), "{what}");
        assert_eq!(take_warnings().len(), 1, "{what}");
    }
    // Nothing was reset, nothing reported.
    assert_good(&f.command(lun(0), &[opcode::TEST_UNIT_READY], &[], 0));
}

#[test]
fn well_formed_lun_fields_of_absent_lus_are_bad_target_without_a_warning() {
    let f = fixture();
    for field in [
        lun(0x3fff),
        lun(2),
        request_lun(ScsiAddress { target: 7, lun: 0 }),
        // Peripheral addressing of LUN 5.
        [1, 0, 0, 5, 0, 0, 0, 0],
    ] {
        let d = f.command(field, &[opcode::TEST_UNIT_READY], &[], 0);
        assert_eq!(d.resp.response, VIRTIO_SCSI_S_BAD_TARGET, "{field:02x?}");
        let (_, resp) = control(&f, tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, field).as_slice(), 1);
        assert_eq!(resp[0], VIRTIO_SCSI_S_BAD_TARGET);
    }
    // Peripheral addressing of a present LU works.
    assert_good(&f.command([1, 0, 0, 1, 0, 0, 0, 0], &[opcode::TEST_UNIT_READY], &[], 0));
    assert!(take_warnings().is_empty());
}
