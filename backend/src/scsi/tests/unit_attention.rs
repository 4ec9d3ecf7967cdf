//! Unit attentions: power on, resets and capacity changes, once per LU.

use super::*;

#[test]
fn power_on_unit_attention_once_per_lu_and_not_on_inquiry() {
    let r = rig();
    r.target.power_on();
    r.cmd(0, &inquiry(false, 0, 36), &[], 36).good();
    let mut c = [0u8; 12];
    c[0] = opcode::REPORT_LUNS;
    c[9] = 64;
    r.cmd(0, &c, &[], 64).good();
    r.cmd(0, &TUR, &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x29, 0x00);
    r.cmd(0, &TUR, &[], 0).good();
    // Per LU: LUN 1 still has its own; an unknown opcode reports it too.
    r.cmd(1, &[0xc5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x29, 0x00);
    r.cmd(1, &[0xc5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .check(ILLEGAL, 0x20, 0x00);
}

#[test]
fn reset_and_capacity_unit_attentions() {
    let r = rig();
    let lu0 = LunAddress { target: 0, lun: 0 };
    r.target.lu_reset(lu0).unwrap();
    assert!(r.target.unit_attention_pending(lu0));
    r.cmd(0, &TUR, &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x29, 0x03);
    r.target.nexus_reset(0);
    r.cmd(0, &TUR, &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x29, 0x07);
    r.cmd(1, &TUR, &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x29, 0x07);
    // Power on outranks the others and clears them; the capacity change stays.
    r.target.set_capacity(lu0, 128).unwrap();
    r.target.lu_reset(lu0).unwrap();
    r.target.power_on();
    r.cmd(0, &TUR, &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x29, 0x00);
    r.cmd(0, &TUR, &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x2a, 0x09);
    r.cmd(0, &TUR, &[], 0).good();
    let d = r.cmd(
        0,
        &[opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        8,
    );
    assert_eq!(&d.data_in[..4], &127u32.to_be_bytes());
    r.cmd(0, &cdb10(opcode::READ_10, 0, 100, 1), &[], 512)
        .good();
    // Growth from outside is found by refresh_capacity.
    r.files[0].as_file().set_len(256 * 512).unwrap();
    assert!(r.target.refresh_capacity(lu0).unwrap());
    r.cmd(0, &TUR, &[], 0)
        .check(sense_key::UNIT_ATTENTION, 0x2a, 0x09);
    assert!(!r.target.refresh_capacity(lu0).unwrap());
    assert!(r.target.lu_reset(LunAddress { target: 3, lun: 0 }).is_err());
}
