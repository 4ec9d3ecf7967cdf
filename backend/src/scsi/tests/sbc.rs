//! SBC commands: capacity, reads and writes of every size, VERIFY, SYNCHRONIZE CACHE,
//! WRITE SAME, UNMAP and START STOP UNIT.

use super::*;

#[test]
fn read_capacity_10_and_16_follow_block_size_and_provisioning() {
    let r = rig();
    let d = r.cmd(
        2,
        &[opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        8,
    );
    d.good();
    assert_eq!(&d.data_in[..4], &(BLOCKS as u32 - 1).to_be_bytes());
    assert_eq!(&d.data_in[4..8], &4096u32.to_be_bytes());
    let mut c = [0u8; 16];
    c[0] = opcode::SERVICE_ACTION_IN_16;
    c[1] = opcode::SAI_READ_CAPACITY_16;
    c[13] = 32;
    let d = r.cmd(0, &c, &[], 32);
    d.good();
    assert_eq!(&d.data_in[..8], &(BLOCKS - 1).to_be_bytes());
    assert_eq!(&d.data_in[8..12], &512u32.to_be_bytes());
    let punch = r.target.lun(0).unwrap().can_punch();
    assert_eq!(
        d.data_in[14] & 0xc0,
        if punch { 0xc0 } else { 0 },
        "LBPME LBPRZ"
    );
    let d = r.cmd(1, &c, &[], 32);
    assert_eq!(d.data_in[14], 0, "read-only: no provisioning");
}

#[test]
fn read_and_write_6_use_21_bit_lba_and_256_for_zero() {
    let r = rig();
    let d = r.cmd(0, &[opcode::READ_6, 0, 0, 5, 2, 0], &[], 1024);
    d.good();
    assert!(d.data_in[..512].iter().all(|&b| b == 5));
    assert!(d.data_in[512..].iter().all(|&b| b == 6));
    let data = [0x66u8; 512];
    r.cmd(0, &[opcode::WRITE_6, 0, 0, 9, 1, 0], &data, 0).good();
    assert_eq!(r.file_bytes(0, 9 * 512, 512), data);
    // Length 0 means 256 blocks: more than the LU has.
    r.cmd(0, &[opcode::READ_6, 0, 0, 0, 0, 0], &[], 256 * 512)
        .check(ILLEGAL, 0x21, 0);
    // LBA bits of byte 1.
    r.cmd(0, &[opcode::READ_6, 0x01, 0, 0, 1, 0], &[], 512)
        .check(ILLEGAL, 0x21, 0);
}

#[test]
fn read_and_write_12_and_16_with_fua() {
    let r = rig();
    let data: Vec<u8> = (0..1024).map(|i| (i % 253) as u8).collect();
    // FUA (byte 1 bit 3) on WRITE(12).
    r.cmd(0, &cdb12(opcode::WRITE_12, 0x08, 30, 2), &data, 0)
        .good();
    assert_eq!(r.file_bytes(0, 30 * 512, 1024), data);
    let d = r.cmd(0, &cdb12(opcode::READ_12, 0x08, 30, 2), &[], 1024);
    d.good();
    assert_eq!(d.data_in, data);
    r.cmd(0, &cdb16(opcode::WRITE_16, 0x08, 40, 1), &data[..512], 0)
        .good();
    assert_eq!(r.file_bytes(0, 40 * 512, 512), &data[..512]);
    let d = r.cmd(0, &cdb10(opcode::WRITE_10, 0x08, 41, 1), &data[512..], 0);
    d.good();
    assert_eq!(r.file_bytes(0, 41 * 512, 512), &data[512..]);
    // Protection information is not supported.
    r.cmd(0, &cdb10(opcode::READ_10, 0x20, 0, 1), &[], 512)
        .check(ILLEGAL, 0x24, 0);
}

#[test]
fn block_size_4096_scales_lba_math() {
    let r = rig();
    let d = r.cmd(2, &cdb10(opcode::READ_10, 0, 3, 1), &[], 4096);
    d.good();
    assert!(d.data_in.iter().all(|&b| b == 3));
    r.cmd(2, &cdb16(opcode::WRITE_16, 0, 63, 1), &[0xab; 4096], 0)
        .good();
    assert_eq!(r.file_bytes(2, 63 * 4096, 4096), vec![0xab; 4096]);
    r.cmd(2, &cdb16(opcode::READ_16, 0, 63, 2), &[], 8192)
        .check(ILLEGAL, 0x21, 0);
}

#[test]
fn verify_checks_range_and_compares_data() {
    let r = rig();
    r.cmd(0, &cdb10(opcode::VERIFY_10, 0, 0, 8), &[], 0).good();
    r.cmd(0, &cdb16(opcode::VERIFY_16, 0, BLOCKS - 1, 2), &[], 0)
        .check(ILLEGAL, 0x21, 0);
    // BYTCHK 01b: compare the data-out buffer.
    let mut data = vec![7u8; 512];
    data.extend(vec![8u8; 512]);
    r.cmd(0, &cdb12(opcode::VERIFY_12, 0x02, 7, 2), &data, 0)
        .good();
    data[600] = 0;
    let d = r.cmd(0, &cdb10(opcode::VERIFY_10, 0x02, 7, 2), &data, 0);
    d.check(sense_key::MISCOMPARE, 0x1d, 0);
    assert_eq!(d.sense[0], 0xf0, "VALID: INFORMATION holds the offset");
    assert_eq!(&d.sense[3..7], &600u32.to_be_bytes());
    // BYTCHK 11b: one block against every block of the range.
    r.cmd(0, &cdb16(opcode::VERIFY_16, 0x06, 9, 1), &[9; 512], 0)
        .good();
    r.cmd(0, &cdb16(opcode::VERIFY_16, 0x06, 9, 2), &[9; 512], 0)
        .check(sense_key::MISCOMPARE, 0x1d, 0);
    // BYTCHK 10b is reserved.
    r.cmd(0, &cdb10(opcode::VERIFY_10, 0x04, 0, 1), &[0; 512], 0)
        .check(ILLEGAL, 0x24, 0);
}

#[test]
fn synchronize_cache_10_and_16() {
    let r = rig();
    r.cmd(0, &cdb10(opcode::SYNCHRONIZE_CACHE_10, 0, 0, 0), &[], 0)
        .good();
    r.cmd(1, &cdb16(opcode::SYNCHRONIZE_CACHE_16, 0, 10, 4), &[], 0)
        .good();
    r.cmd(
        0,
        &cdb16(opcode::SYNCHRONIZE_CACHE_16, 0, BLOCKS, 0),
        &[],
        0,
    )
    .check(ILLEGAL, 0x21, 0);
    r.cmd(0, &cdb10(opcode::SYNCHRONIZE_CACHE_10, 0, 60, 5), &[], 0)
        .check(ILLEGAL, 0x21, 0);
}

#[test]
fn write_same_writes_the_block_over_the_range() {
    let r = rig();
    r.cmd(0, &cdb10(opcode::WRITE_SAME_10, 0, 20, 3), &[0x5a; 512], 0)
        .good();
    assert_eq!(r.file_bytes(0, 20 * 512, 3 * 512), vec![0x5a; 3 * 512]);
    assert_eq!(r.file_bytes(0, 23 * 512, 512), vec![23; 512]);
    // 16-byte, 4096-byte blocks.
    r.cmd(2, &cdb16(opcode::WRITE_SAME_16, 0, 1, 2), &[0xa5; 4096], 0)
        .good();
    assert_eq!(r.file_bytes(2, 4096, 8192), vec![0xa5; 8192]);
    // NDOB: zeros without a data-out buffer.
    r.cmd(0, &cdb16(opcode::WRITE_SAME_16, 0x01, 30, 2), &[], 0)
        .good();
    assert_eq!(r.file_bytes(0, 30 * 512, 1024), vec![0; 1024]);
    // Zero blocks (WSNZ), out of range, read-only, ANCHOR.
    r.cmd(0, &cdb10(opcode::WRITE_SAME_10, 0, 0, 0), &[0; 512], 0)
        .check(ILLEGAL, 0x24, 0);
    r.cmd(0, &cdb10(opcode::WRITE_SAME_10, 0, 63, 2), &[0; 512], 0)
        .check(ILLEGAL, 0x21, 0);
    r.cmd(1, &cdb10(opcode::WRITE_SAME_10, 0, 0, 1), &[0; 512], 0)
        .check(sense_key::DATA_PROTECT, 0x27, 0);
    r.cmd(0, &cdb10(opcode::WRITE_SAME_10, 0x10, 0, 1), &[0; 512], 0)
        .check(ILLEGAL, 0x24, 0);
}

#[test]
fn write_same_with_unmap_punches_a_hole() {
    let r = rig();
    if !r.target.lun(0).unwrap().can_punch() {
        // The file system cannot punch: nothing is advertised, data is still written.
        r.cmd(0, &cdb16(opcode::WRITE_SAME_16, 0x08, 0, 64), &[0; 512], 0)
            .good();
        assert_eq!(r.file_bytes(0, 0, 512), vec![0; 512]);
        return;
    }
    let before = r.allocated_bytes(0);
    r.cmd(0, &cdb16(opcode::WRITE_SAME_16, 0x08, 0, 64), &[0; 512], 0)
        .good();
    assert_eq!(r.file_bytes(0, 0, 64 * 512), vec![0; 64 * 512]);
    assert!(r.allocated_bytes(0) < before, "blocks deallocated");
    // UNMAP with non-zero data writes the data instead.
    r.cmd(0, &cdb10(opcode::WRITE_SAME_10, 0x08, 4, 1), &[3; 512], 0)
        .good();
    assert_eq!(r.file_bytes(0, 4 * 512, 512), vec![3; 512]);
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p[0..2].copy_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
    for &(lba, n) in ranges {
        p.extend(lba.to_be_bytes());
        p.extend(n.to_be_bytes());
        p.extend([0; 4]);
    }
    p
}

#[test]
fn unmap_punches_holes_only_after_checking_every_descriptor() {
    let r = rig();
    let lu = r.target.lun(0).unwrap();
    let unmap = |lun: u16, list: &[u8]| {
        let mut c = [0u8; 10];
        c[0] = opcode::UNMAP;
        c[7..9].copy_from_slice(&(list.len() as u16).to_be_bytes());
        r.cmd(lun, &c, list, 0)
    };
    if !lu.can_punch() {
        unmap(0, &unmap_list(&[(0, 1)])).check(ILLEGAL, 0x20, 0);
        return;
    }
    // One range out of range: nothing is unmapped.
    unmap(0, &unmap_list(&[(8, 8), (60, 8)])).check(ILLEGAL, 0x21, 0);
    assert_eq!(r.file_bytes(0, 8 * 512, 512), vec![8; 512]);
    let before = r.allocated_bytes(0);
    let d = unmap(0, &unmap_list(&[(8, 8), (32, 16), (50, 0)]));
    d.good();
    assert_eq!(d.resid(), 0);
    assert_eq!(r.file_bytes(0, 8 * 512, 8 * 512), vec![0; 8 * 512]);
    assert_eq!(r.file_bytes(0, 32 * 512, 16 * 512), vec![0; 16 * 512]);
    assert_eq!(
        r.file_bytes(0, 16 * 512, 512),
        vec![16; 512],
        "between ranges"
    );
    assert!(r.allocated_bytes(0) < before);
    // Parameter list errors, too many descriptors, read-only LU, ANCHOR.
    unmap(0, &[0, 0, 0, 0]).check(ILLEGAL, 0x1a, 0);
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i % 64, 0)).collect();
    unmap(0, &unmap_list(&many)).check(ILLEGAL, 0x26, 0);
    // The read-only LU does not offer UNMAP at all.
    unmap(1, &unmap_list(&[(0, 1)])).check(ILLEGAL, 0x20, 0);
    let mut c = [0u8; 10];
    c[0] = opcode::UNMAP;
    c[1] = 1;
    r.cmd(0, &c, &[], 0).check(ILLEGAL, 0x24, 0);
    // Length 0: nothing to do.
    c[1] = 0;
    r.cmd(0, &c, &[], 0).good();
}

#[test]
fn start_stop_unit_stops_medium_access_only() {
    let r = rig();
    let ssu = |b4: u8| [opcode::START_STOP_UNIT, 0, 0, 0, b4, 0];
    r.cmd(0, &ssu(0), &[], 0).good();
    r.cmd(0, &cdb10(opcode::READ_10, 0, 0, 1), &[], 512)
        .check(sense_key::NOT_READY, 0x04, 0x02);
    r.cmd(0, &inquiry(false, 0, 36), &[], 36).good();
    let d = r.cmd(0, &[opcode::REQUEST_SENSE, 0, 0, 0, 18, 0], &[], 18);
    d.good();
    assert_eq!(
        (d.data_in[2], d.data_in[12], d.data_in[13]),
        (2, 0x04, 0x02)
    );
    r.cmd(0, &ssu(1), &[], 0).good();
    r.cmd(0, &cdb10(opcode::READ_10, 0, 0, 1), &[], 512).good();
    // LOEJ: the medium is not removable. A power condition is accepted as is.
    r.cmd(0, &ssu(0x02), &[], 0).check(ILLEGAL, 0x24, 0);
    r.cmd(0, &ssu(0x30), &[], 0).good();
    r.cmd(0, &TUR, &[], 0).good();
}

/// Two LUs over /dev/full (every write fails with ENOSPC, reads give zeros): LUN 0
/// thin-provisioned, LUN 1 not.
fn full_disks() -> Rig {
    let full = || {
        File::options()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    Rig {
        target: Target::new(vec![
            Lun::over(full(), BLOCKS, true),
            Lun::over(full(), BLOCKS, false),
        ])
        .unwrap(),
        files: Vec::new(),
    }
}

#[test]
fn a_full_thin_lu_reports_space_allocation_failed() {
    let r = full_disks();
    let block = [0x5au8; 512];
    let write = cdb10(opcode::WRITE_10, 0, 3, 1);
    let same = cdb10(opcode::WRITE_SAME_10, 0, 3, 2);
    for cdb in [&write[..], &same[..]] {
        // DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT: Linux fails the write with
        // ENOSPC at once instead of retrying a medium error.
        r.cmd(0, cdb, &block, 0)
            .check(sense_key::DATA_PROTECT, 0x27, 0x07);
        // Without thin provisioning the LU has no such condition: a write error.
        r.cmd(1, cdb, &block, 0)
            .check(sense_key::MEDIUM_ERROR, 0x0c, 0x00);
    }
    // Reading still works.
    r.cmd(0, &cdb10(opcode::READ_10, 0, 3, 1), &[], 512).good();
}
