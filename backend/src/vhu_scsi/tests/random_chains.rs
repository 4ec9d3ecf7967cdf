//! Random chains: guest input never panics the device, and used lengths stay in bounds.

use super::*;

#[test]
fn random_chains_never_panic_and_stay_in_bounds() {
    let f = fixture();
    let mut rng = Rng(0x5eed);
    let ops = [
        opcode::TEST_UNIT_READY,
        opcode::REQUEST_SENSE,
        opcode::INQUIRY,
        opcode::READ_CAPACITY_10,
        opcode::READ_10,
        opcode::WRITE_10,
        opcode::READ_16,
        opcode::WRITE_16,
        opcode::SERVICE_ACTION_IN_16,
        opcode::REPORT_LUNS,
        0x7f,
        0xff,
    ];
    for _ in 0..3000 {
        // A header with a plausible opcode, small LBAs and lengths most of the time.
        let mut hdr = [0u8; 64];
        hdr.iter_mut().for_each(|b| *b = rng.next() as u8);
        hdr[0] = 1;
        hdr[1] = u8::from(rng.below(8) == 0);
        hdr[2] = [0x40, 0x00, 0x40, 0x7f][rng.below(4) as usize];
        hdr[3] = u8::from(rng.below(8) == 0) + u8::from(rng.below(2) == 0);
        hdr[19] = ops[rng.below(ops.len() as u64) as usize];
        if rng.below(2) == 0 {
            hdr[20..36].fill(0);
            hdr[19 + 8] = rng.below(4) as u8; // READ(10)/WRITE(10) length
            hdr[19 + 13] = rng.below(4) as u8; // READ(16)/WRITE(16) length
        }
        f.mem.write_slice(&hdr, GuestAddress(HDR_ADDR)).unwrap();
        let control_hdr = [
            rng.below(4) as u8,
            0,
            0,
            0,
            rng.below(9) as u8,
            0,
            0,
            0,
            1,
            0,
            0x40,
            rng.below(3) as u8,
        ];

        let mut descs = Vec::new();
        let mut writable_len = 0u64;
        let mut push =
            |descs: &mut Vec<RawDescriptor>, rng: &mut Rng, addr: u64, len: u32, w: bool| {
                // Now and then an address at or past the end of guest memory.
                let addr = match rng.below(16) {
                    0 => MEM_SIZE as u64 - rng.below(256),
                    1 => u64::MAX - rng.below(4096),
                    _ => addr,
                };
                if w {
                    writable_len += u64::from(len);
                }
                descs.push(desc(addr, len, w));
            };
        if rng.below(4) != 0 {
            // Mostly well formed: header, data-out?, response, data-in?
            let hdr_len = if rng.below(8) == 0 {
                rng.below(60) as u32
            } else {
                51
            };
            push(&mut descs, &mut rng, HDR_ADDR, hdr_len, false);
            let dir = rng.below(3);
            if dir == 1 {
                let len = rng.below(4096) as u32;
                push(&mut descs, &mut rng, OUT_ADDR, len, false);
            }
            let resp_len = if rng.below(8) == 0 {
                rng.below(200) as u32
            } else {
                RESP_LEN
            };
            push(&mut descs, &mut rng, RESP_ADDR, resp_len, true);
            if dir == 2 {
                let len = rng.below(4096) as u32;
                push(&mut descs, &mut rng, IN_ADDR, len, true);
            }
        } else {
            for i in 0..1 + rng.below(5) {
                let addr = [HDR_ADDR, OUT_ADDR, RESP_ADDR, IN_ADDR][rng.below(4) as usize];
                let len = rng.below(4096) as u32;
                let w = i > 0 && rng.below(2) == 0;
                push(&mut descs, &mut rng, addr, len, w);
            }
        }
        let used = f.run_descs(&descs);
        assert!(
            u64::from(used) <= writable_len,
            "used {used} > writable {writable_len}"
        );

        f.mem
            .write_slice(&control_hdr, GuestAddress(HDR_ADDR))
            .unwrap();
        let vq = MockSplitQueue::new(&f.mem, 16);
        let chain = vq.build_desc_chain(&descs).unwrap();
        let used = process_control_chain(&f.target, &f.mem, chain);
        assert!(u64::from(used) <= writable_len);
    }
    take_warnings();
}
