//! Several targets, absent LUNs and RAM-backed LUs.

use super::*;

#[test]
fn several_targets_and_absent_luns() {
    let f0 = backing(512, 8);
    let f1 = backing(512, 16);
    let mut spec = LunSpec::file(f1.path(), false);
    spec.address = Some(LunAddress { target: 1, lun: 5 });
    let rig = Rig {
        target: Target::new(vec![
            Lun::open_spec(&spec).unwrap(),
            Lun::open(f0.path(), false).unwrap(),
            Lun::open_spec(&LunSpec::memory(1 << 20)).unwrap(),
        ])
        .unwrap(),
        files: vec![],
    };
    let t = &rig.target;
    let addrs: Vec<_> = t.luns().map(|(a, _)| (a.target, a.lun)).collect();
    assert_eq!(addrs, vec![(0, 0), (0, 1), (1, 5)]);
    assert_eq!(t.lun(1).unwrap().blocks(), 2048, "mem:1M");
    // REPORT LUNS on target 1 lists only LUN 5.
    let mut c = [0u8; 12];
    c[0] = opcode::REPORT_LUNS;
    c[9] = 64;
    let t1 = LunAddress { target: 1, lun: 5 };
    let (o, left, data) = rig.exec(t1, &c, &[], 64);
    assert_eq!(o.unwrap(), CmdOutcome::GOOD);
    assert_eq!(left, 64 - 16);
    assert_eq!(&data[..4], &8u32.to_be_bytes());
    assert_eq!(&data[8..10], &[0, 5]);
    // An I_T nexus reset is of one target: target 0's LUs report nothing.
    t.nexus_reset(1);
    assert!(t.unit_attention_pending(t1));
    assert!(!t.unit_attention_pending(LunAddress { target: 0, lun: 0 }));
    let (o, _, _) = rig.exec(t1, &TUR, &[], 0);
    assert_eq!(
        o.unwrap().sense.map(|s| (s.asc, s.ascq)),
        Some((0x29, 0x07))
    );
    // Absent LUN 0 of target 1: INQUIRY says "no LU here", TUR says not supported.
    let t1l0 = LunAddress { target: 1, lun: 0 };
    let (o, _, b) = rig.exec(t1l0, &inquiry(false, 0, 36), &[], 36);
    assert_eq!(o.unwrap(), CmdOutcome::GOOD);
    assert_eq!(b[0], 0x7f);
    let (o, _, _) = rig.exec(t1l0, &TUR, &[], 0);
    assert_eq!(o.unwrap().sense.map(|s| (s.asc, s.ascq)), Some((0x25, 0)));
    // No target 2 at all: the transport's BAD_TARGET.
    let (o, _, _) = rig.exec(LunAddress { target: 2, lun: 0 }, &TUR, &[], 0);
    assert!(o.is_err());
    // The memory LU reads and writes through the same path.
    let mem_lu = LunAddress { target: 0, lun: 1 };
    let (o, _, _) = rig.exec(
        mem_lu,
        &cdb10(opcode::WRITE_10, 0, 2047, 1),
        &[0x3c; 512],
        0,
    );
    assert_eq!(o.unwrap(), CmdOutcome::GOOD);
    let (o, left, back) = rig.exec(mem_lu, &cdb10(opcode::READ_10, 0, 2047, 1), &[], 512);
    assert_eq!((o.unwrap(), left), (CmdOutcome::GOOD, 0));
    assert_eq!(back, [0x3c; 512]);
    // Duplicate addresses are refused.
    let mut dup = LunSpec::memory(4096);
    dup.address = Some(LunAddress { target: 0, lun: 0 });
    assert!(Target::new(vec![
        Lun::open_spec(&dup).unwrap(),
        Lun::open_spec(&dup).unwrap()
    ])
    .is_err());
}
