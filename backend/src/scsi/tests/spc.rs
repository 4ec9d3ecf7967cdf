//! SPC commands: REQUEST SENSE, INQUIRY and its VPD pages, MODE SENSE, REPORT LUNS,
//! REPORT SUPPORTED OPERATION CODES, and the sense format the control mode page asks for.

use super::*;

#[test]
fn request_sense_fixed_descriptor_and_pending_unit_attention() {
    let r = rig();
    let d = r.cmd(0, &[opcode::REQUEST_SENSE, 0, 0, 0, 252, 0], &[], 252);
    d.good();
    assert_eq!(&d.data_in[..3], &[0x70, 0, sense_key::NO_SENSE]);
    assert_eq!(d.resid(), 252 - 18);
    // DESC=1: descriptor format, 8 bytes.
    let d = r.cmd(0, &[opcode::REQUEST_SENSE, 1, 0, 0, 252, 0], &[], 252);
    d.good();
    assert_eq!(&d.data_in[..8], &[0x72, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.resid(), 252 - 8);
    // A pending UA is returned and cleared; REQUEST SENSE itself is not failed by it.
    r.target.power_on();
    let d = r.cmd(0, &[opcode::REQUEST_SENSE, 0, 0, 0, 18, 0], &[], 18);
    d.good();
    assert_eq!(
        (d.data_in[2], d.data_in[12], d.data_in[13]),
        (sense_key::UNIT_ATTENTION, 0x29, 0x00)
    );
    r.cmd(0, &TUR, &[], 0).good();
    // Truncated to the allocation length.
    let d = r.cmd(0, &[opcode::REQUEST_SENSE, 0, 0, 0, 4, 0], &[], 18);
    d.good();
    assert_eq!(d.resid(), 14);
}

#[test]
fn inquiry_standard_and_supported_vpd_pages() {
    let r = rig();
    let d = r.cmd(0, &inquiry(false, 0, 96), &[], 96);
    d.good();
    assert_eq!(&d.data_in[8..16], b"FLAKYHBA");
    assert_eq!(d.resid(), 96 - 36);
    let d = r.cmd(0, &inquiry(true, 0x00, 64), &[], 64);
    d.good();
    assert_eq!(&d.data_in[..4], &[0, 0x00, 0, 6]);
    assert_eq!(&d.data_in[4..10], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    assert_eq!(d.resid(), 64 - 10);
    // Unknown page, and a page code without EVPD.
    r.cmd(0, &inquiry(true, 0x81, 64), &[], 64)
        .check(ILLEGAL, 0x24, 0);
    r.cmd(0, &inquiry(false, 0x80, 64), &[], 64)
        .check(ILLEGAL, 0x24, 0);
}

#[test]
fn inquiry_vpd_80_and_83_are_stable_for_the_same_path() {
    let r = rig();
    let serial = |t: &Target| {
        let mut din = MemIn::new(vec![0; 64]);
        let mut dout = MemOut { data: &[] };
        let o = t
            .execute(0, &inquiry(true, 0x80, 64), &mut din, &mut dout)
            .unwrap();
        assert_eq!(o, CmdOutcome::GOOD);
        din.buf
    };
    let first = serial(&r.target);
    assert_eq!(&first[..4], &[0, 0x80, 0, 16]);
    assert!(first[4..20].iter().all(u8::is_ascii_hexdigit));

    let d = r.cmd(0, &inquiry(true, 0x83, 128), &[], 128);
    d.good();
    let page_len = u16::from_be_bytes([d.data_in[2], d.data_in[3]]) as usize;
    assert_eq!(page_len, 40);
    // NAA designator: binary, LU, type 3, 8 bytes, NAA 3.
    assert_eq!(&d.data_in[4..8], &[0x01, 0x03, 0, 8]);
    assert_eq!(d.data_in[8] >> 4, 3);
    // T10 vendor ID designator: ASCII, vendor then the serial.
    assert_eq!(&d.data_in[16..20], &[0x02, 0x01, 0, 24]);
    assert_eq!(&d.data_in[20..28], b"FLAKYHBA");
    assert_eq!(&d.data_in[28..44], &first[4..20]);
    assert_eq!(d.resid(), 128 - 44);

    // The rig's LUs let go of their images (and of the images' locks) first.
    let Rig { target, files } = r;
    drop(target);
    let again = Target::new(vec![Lun::open(files[0].path(), false).unwrap()]).unwrap();
    assert_eq!(serial(&again)[..20], first[..20], "same path, same serial");
    drop(again);
    let other = Target::new(vec![Lun::open(files[1].path(), false).unwrap()]).unwrap();
    assert_ne!(serial(&other)[4..20], first[4..20]);
}

#[test]
fn inquiry_vpd_b0_b1_b2_say_what_works() {
    let r = rig();
    let punch = r.target.lun(0).unwrap().can_punch();
    let d = r.cmd(0, &inquiry(true, 0xb0, 64), &[], 64);
    d.good();
    let p = &d.data_in;
    assert_eq!(&p[..4], &[0, 0xb0, 0, 0x3c]);
    assert_eq!(p[4] & 1, 1, "WSNZ");
    let max_unmap = u32::from_be_bytes(p[20..24].try_into().unwrap());
    let max_desc = u32::from_be_bytes(p[24..28].try_into().unwrap());
    assert_eq!(max_unmap != 0, punch);
    assert_eq!(max_desc, if punch { 256 } else { 0 });
    assert_eq!(u64::from_be_bytes(p[36..44].try_into().unwrap()), 1 << 22);
    // 4096-byte LU: granularity of one block.
    let d = r.cmd(2, &inquiry(true, 0xb0, 64), &[], 64);
    if punch {
        assert_eq!(&d.data_in[28..32], &1u32.to_be_bytes());
    }
    let d = r.cmd(0, &inquiry(true, 0xb1, 64), &[], 64);
    d.good();
    assert_eq!(&d.data_in[..6], &[0, 0xb1, 0, 0x3c, 0, 1], "non-rotating");
    let d = r.cmd(0, &inquiry(true, 0xb2, 64), &[], 64);
    d.good();
    assert_eq!(&d.data_in[..4], &[0, 0xb2, 0, 4]);
    if punch {
        assert_eq!(d.data_in[5], 0xe4, "LBPU LBPWS LBPWS10 LBPRZ");
        assert_eq!(d.data_in[6] & 7, 2, "thin");
    }
    // The read-only LU cannot unmap: nothing advertised.
    let d = r.cmd(1, &inquiry(true, 0xb2, 64), &[], 64);
    assert_eq!((d.data_in[5], d.data_in[6]), (0, 0));
    assert_eq!(d.resid(), 64 - 8);
}

#[test]
fn mode_sense_6_caching_control_and_block_descriptor() {
    let r = rig();
    let d = r.cmd(0, &[opcode::MODE_SENSE_6, 0, 0x3f, 0, 255, 0], &[], 255);
    d.good();
    let m = &d.data_in;
    let len = usize::from(m[0]) + 1;
    assert_eq!(len, 4 + 8 + 20 + 12);
    assert_eq!(m[2], 0x10, "DPOFUA, not write protected");
    assert_eq!(m[3], 8, "block descriptor length");
    assert_eq!(&m[4..8], &(BLOCKS as u32).to_be_bytes());
    assert_eq!(&m[9..12], &[0, 2, 0], "512-byte blocks");
    assert_eq!(&m[12..14], &[0x08, 0x12]);
    assert_eq!(m[14] & 0x04, 0x04, "WCE");
    assert_eq!(&m[32..34], &[0x0a, 0x0a]);
    assert_eq!(m[34] & 0x04, 0, "D_SENSE clear: fixed sense");
    assert_eq!(d.resid(), 255 - len as u32);
    // Read-only LU: WP. DBD: no descriptor. Single page.
    let d = r.cmd(1, &[opcode::MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], &[], 255);
    d.good();
    assert_eq!(&d.data_in[..4], &[3 + 20, 0, 0x90, 0]);
    assert_eq!(d.data_in[4], 0x08);
    // The descriptor-sense LU says so in its control page.
    let d = r.cmd(2, &[opcode::MODE_SENSE_6, 0x08, 0x0a, 0, 255, 0], &[], 255);
    assert_eq!(d.data_in[4..6], [0x0a, 0x0a]);
    assert_eq!(d.data_in[6] & 0x04, 0x04, "D_SENSE");
    // Changeable values: nothing is.
    let d = r.cmd(0, &[opcode::MODE_SENSE_6, 0x08, 0x48, 0, 255, 0], &[], 255);
    d.good();
    assert!(d.data_in[6..24].iter().all(|&b| b == 0));
    // Saved values are not supported; unknown page and subpage are invalid.
    r.cmd(0, &[opcode::MODE_SENSE_6, 0, 0xc8, 0, 255, 0], &[], 255)
        .check(ILLEGAL, 0x39, 0);
    r.cmd(0, &[opcode::MODE_SENSE_6, 0, 0x19, 0, 255, 0], &[], 255)
        .check(ILLEGAL, 0x24, 0);
    r.cmd(0, &[opcode::MODE_SENSE_6, 0, 0x08, 1, 255, 0], &[], 255)
        .check(ILLEGAL, 0x24, 0);
}

#[test]
fn mode_sense_10_long_lba_descriptor() {
    let r = rig();
    let mut c = [0u8; 10];
    c[0] = opcode::MODE_SENSE_10;
    c[1] = 0x10; // LLBAA
    c[2] = 0x08;
    c[7..9].copy_from_slice(&512u16.to_be_bytes());
    let d = r.cmd(2, &c, &[], 512);
    d.good();
    let m = &d.data_in;
    let len = usize::from(u16::from_be_bytes([m[0], m[1]])) + 2;
    assert_eq!(len, 8 + 16 + 20);
    assert_eq!(m[4] & 1, 1, "LONGLBA");
    assert_eq!(&m[6..8], &16u16.to_be_bytes());
    assert_eq!(&m[8..16], &BLOCKS.to_be_bytes());
    assert_eq!(&m[20..24], &4096u32.to_be_bytes());
    assert_eq!(m[24], 0x08);
    assert_eq!(d.resid(), 512 - len as u32);
}

#[test]
fn report_luns_lists_the_target_s_luns() {
    let r = rig();
    let mut c = [0u8; 12];
    c[0] = opcode::REPORT_LUNS;
    c[6..10].copy_from_slice(&64u32.to_be_bytes());
    let d = r.cmd(0, &c, &[], 64);
    d.good();
    assert_eq!(&d.data_in[..4], &24u32.to_be_bytes());
    assert_eq!(&d.data_in[8..10], &[0, 0]);
    assert_eq!(&d.data_in[16..18], &[0, 1]);
    assert_eq!(&d.data_in[24..26], &[0, 2]);
    assert_eq!(d.resid(), 64 - 32);
    c[2] = 0x10; // SELECT REPORT 10h: administrative LUs, none of which exist
    r.cmd(0, &c, &[], 64).check(ILLEGAL, 0x24, 0);
}

#[test]
fn report_supported_operation_codes_lists_the_table() {
    let r = rig();
    let mut c = [0u8; 12];
    c[0] = opcode::MAINTENANCE_IN;
    c[1] = opcode::MI_REPORT_SUPPORTED_OPERATION_CODES;
    c[6..10].copy_from_slice(&4096u32.to_be_bytes());
    let d = r.cmd(0, &c, &[], 4096);
    d.good();
    let lu = r.target.lun(0).unwrap();
    let offered: Vec<_> = COMMANDS.iter().filter(|c| c.offered_by(&lu)).collect();
    let len = u32::from_be_bytes(d.data_in[..4].try_into().unwrap()) as usize;
    assert_eq!(len, offered.len() * 8);
    for (i, cmd) in offered.iter().enumerate() {
        let e = &d.data_in[4 + 8 * i..12 + 8 * i];
        assert_eq!(e[0], cmd.opcode, "{}", cmd.name);
        assert_eq!(e[5] & 1, u8::from(cmd.service_action.is_some()));
        assert_eq!(
            u16::from_be_bytes([e[2], e[3]]),
            cmd.service_action.map_or(0, u16::from)
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([e[6], e[7]])),
            cmd.usage.len()
        );
        // Every listed command is served: its opcode is never "invalid operation code".
        let mut probe = [0u8; 16];
        probe[0] = cmd.opcode;
        probe[1] = cmd.service_action.unwrap_or(0);
        let p = r.cmd(0, &probe[..cmd.usage.len()], &[], 0);
        assert!(
            p.status == status::GOOD || p.sense[12] != 0x20,
            "{} listed but not served",
            cmd.name
        );
    }
    assert_eq!(d.resid() as usize, 4096 - 4 - len);
    // UNMAP is listed exactly where it works.
    let has_unmap = |lun: u16| {
        let d = r.cmd(lun, &c, &[], 4096);
        let len = u32::from_be_bytes(d.data_in[..4].try_into().unwrap()) as usize;
        d.data_in[4..4 + len]
            .chunks(8)
            .any(|e| e[0] == opcode::UNMAP)
    };
    assert_eq!(has_unmap(0), lu.can_punch());
    assert!(!has_unmap(1), "read-only LU");

    // One command: READ(10) with its usage data; READ CAPACITY(16) by service action.
    c[2] = 1;
    c[3] = opcode::READ_10;
    let d = r.cmd(0, &c, &[], 64);
    d.good();
    assert_eq!(&d.data_in[..4], &[0, 3, 0, 10]);
    assert_eq!(
        &d.data_in[4..14],
        COMMANDS
            .iter()
            .find(|c| c.name == "READ(10)")
            .unwrap()
            .usage
    );
    assert_eq!(d.resid(), 64 - 14);
    c[2] = 2;
    c[3] = opcode::SERVICE_ACTION_IN_16;
    c[4..6].copy_from_slice(&u16::from(opcode::SAI_READ_CAPACITY_16).to_be_bytes());
    let d = r.cmd(0, &c, &[], 64);
    assert_eq!(&d.data_in[..4], &[0, 3, 0, 16]);
    // Unsupported opcode: SUPPORT 001b.
    c[2] = 1;
    c[3] = 0x55;
    let d = r.cmd(0, &c, &[], 64);
    d.good();
    assert_eq!(&d.data_in[..4], &[0, 1, 0, 0]);
    // Option 1 on an opcode with service actions, option 2 on one without: invalid.
    c[3] = opcode::SERVICE_ACTION_IN_16;
    r.cmd(0, &c, &[], 64).check(ILLEGAL, 0x24, 0);
    c[2] = 2;
    c[3] = opcode::READ_10;
    r.cmd(0, &c, &[], 64).check(ILLEGAL, 0x24, 0);
    // RCTD: 20-byte descriptors with a timeouts descriptor.
    c[2] = 0x80;
    let d = r.cmd(0, &c, &[], 4096);
    d.good();
    let len = u32::from_be_bytes(d.data_in[..4].try_into().unwrap()) as usize;
    assert_eq!(len, offered.len() * 20);
    assert_eq!(d.data_in[4 + 5] & 0x02, 0x02, "CTDP");
    assert_eq!(&d.data_in[12..14], &[0, 0x0a]);
}

#[test]
fn descriptor_sense_when_the_control_page_says_so() {
    let r = rig();
    let lu2 = LunAddress { target: 0, lun: 2 };
    let (o, _, _) = r.exec(lu2, &cdb10(opcode::READ_10, 0, 64, 1), &[], 4096);
    let o = o.unwrap();
    assert_eq!(o.status, status::CHECK_CONDITION);
    assert_eq!(o.sense_format, SenseFormat::Descriptor);
    let mut buf = [0u8; 96];
    assert_eq!(o.sense_bytes(&mut buf), 8);
    assert_eq!(&buf[..4], &[0x72, ILLEGAL, 0x21, 0x00]);
    // LUN 0 keeps fixed format.
    let (o, _, _) = r.exec(
        LunAddress { target: 0, lun: 0 },
        &cdb10(opcode::READ_10, 0, 64, 1),
        &[],
        512,
    );
    let o = o.unwrap();
    assert_eq!(o.sense_bytes(&mut buf), 18);
    assert_eq!(buf[0], 0x70);
}
