//! SCSI commands through the request processor, where the chain matters: the used
//! length, residuals and OVERRUN, the zero-copy [`GuestBuffer`] across descriptors, and
//! random CDBs for every command. What the commands do is tested without virtio in
//! `scsi::tests`.

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::tests::Rng;
use super::*;
use crate::scsi::sense::sense_key;
use crate::scsi::tests::{assert_check, assert_good, cdb10, TUR};
use crate::scsi::{opcode, CmdOutcome, LunAddress, COMMANDS};
use crate::virtio::*;

const MEM_SIZE: usize = 0x100_0000;
const HDR_ADDR: u64 = 0x10_0000;
const OUT_ADDR: u64 = 0x20_0000;
const RESP_ADDR: u64 = 0x30_0000;
const IN_ADDR: u64 = 0x40_0000;
const RESP_LEN: u32 = size_of::<VirtioScsiCmdResp>() as u32;

/// The LUs of the SCSI tests' rig, behind guest memory.
struct Rig {
    mem: GuestMemoryMmap,
    lus: crate::scsi::tests::Rig,
}

fn rig() -> Rig {
    Rig {
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        lus: crate::scsi::tests::rig(),
    }
}

fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
    let flags = if writable {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

struct Done {
    resp: VirtioScsiCmdResp,
    used: u32,
}

impl Done {
    fn good(&self) -> &Self {
        assert_eq!(self.resp.response, VIRTIO_SCSI_S_OK);
        let sense_len = u32::from(self.resp.sense_len) as usize;
        assert_good(self.resp.status, &self.resp.sense, sense_len);
        self
    }

    /// CHECK CONDITION with this sense, in fixed or descriptor format.
    fn check(&self, key: u8, asc: u8, ascq: u8) -> &Self {
        assert_eq!(self.resp.response, VIRTIO_SCSI_S_OK);
        let sense_len = u32::from(self.resp.sense_len) as usize;
        assert_check(
            self.resp.status,
            &self.resp.sense,
            sense_len,
            (key, asc, ascq),
        );
        self
    }

    fn resid(&self) -> u32 {
        u32::from(self.resp.resid)
    }
}

impl Rig {
    /// One command through `process_request_chain`: header, data-out?, response, data-in?.
    fn cmd(&self, lun: u16, cdb: &[u8], data_out: &[u8], data_in_len: u32) -> Done {
        let mut req = VirtioScsiCmdReq {
            lun: request_lun(ScsiAddress { target: 0, lun }),
            ..Default::default()
        };
        req.cdb[..cdb.len()].copy_from_slice(cdb);
        self.mem.write_obj(req, GuestAddress(HDR_ADDR)).unwrap();
        let mut descs = vec![desc(HDR_ADDR, size_of::<VirtioScsiCmdReq>() as u32, false)];
        if !data_out.is_empty() {
            self.mem
                .write_slice(data_out, GuestAddress(OUT_ADDR))
                .unwrap();
            descs.push(desc(OUT_ADDR, data_out.len() as u32, false));
        }
        descs.push(desc(RESP_ADDR, RESP_LEN, true));
        if data_in_len > 0 {
            // Poison data-in so that bytes the target did not write show.
            self.mem
                .write_slice(&vec![0xcc; data_in_len as usize], GuestAddress(IN_ADDR))
                .unwrap();
            descs.push(desc(IN_ADDR, data_in_len, true));
        }
        self.mem
            .write_slice(&[0xee; RESP_LEN as usize], GuestAddress(RESP_ADDR))
            .unwrap();
        let vq = MockSplitQueue::new(&self.mem, 16);
        let chain = vq.build_desc_chain(&descs).unwrap();
        let used = process_request_chain(&self.lus.target, &self.mem, chain);
        Done {
            resp: self.mem.read_obj(GuestAddress(RESP_ADDR)).unwrap(),
            used,
        }
    }

    /// One command straight into `Target::execute_at` over zero-copy guest buffers built
    /// from `out_descs` (readable) and `in_descs` (writable). Returns the outcome and the
    /// bytes left in the data-in buffer.
    fn exec(
        &self,
        addr: LunAddress,
        cdb: &[u8],
        out_descs: &[(u64, u32)],
        in_descs: &[(u64, u32)],
    ) -> (Result<CmdOutcome, crate::scsi::CmdError>, usize) {
        let mut descs: Vec<RawDescriptor> =
            out_descs.iter().map(|&(a, l)| desc(a, l, false)).collect();
        descs.extend(in_descs.iter().map(|&(a, l)| desc(a, l, true)));
        if descs.is_empty() {
            // A chain needs a descriptor: an empty writable one moves nothing.
            descs.push(desc(IN_ADDR, 0, true));
        }
        let vq = MockSplitQueue::new(&self.mem, 16);
        let chain = vq.build_desc_chain(&descs).unwrap();
        let mut data_out = GuestBuffer::readable(&self.mem, chain.clone()).unwrap();
        let mut data_in = GuestBuffer::writable(&self.mem, chain).unwrap();
        let r = self
            .lus
            .target
            .execute_at(addr, cdb, &mut data_in, &mut data_out);
        (r, crate::scsi::DataIn::remaining(&data_in))
    }

    fn file_bytes(&self, lun: usize, offset: u64, len: usize) -> Vec<u8> {
        self.lus.file_bytes(lun, offset, len)
    }
}

#[test]
fn test_unit_ready_good_and_not_ready_when_stopped() {
    let r = rig();
    let d = r.cmd(0, &TUR, &[], 0);
    d.good();
    assert_eq!((d.used, d.resid()), (RESP_LEN, 0));
    r.cmd(0, &[opcode::START_STOP_UNIT, 0, 0, 0, 0, 0], &[], 0)
        .good();
    r.cmd(0, &TUR, &[], 0)
        .check(sense_key::NOT_READY, 0x04, 0x02);
}

#[test]
fn residuals_on_short_and_long_transfers() {
    let r = rig();
    // Short: the buffer is larger than the transfer.
    let d = r.cmd(0, &cdb10(opcode::READ_10, 0, 0, 1), &[], 700);
    d.good();
    assert_eq!((d.resid(), d.used), (188, RESP_LEN + 512));
    let d = r.cmd(0, &cdb10(opcode::WRITE_10, 0, 0, 1), &[1; 900], 0);
    d.good();
    assert_eq!(d.resid(), 388);
    // Long: the data-in buffer is smaller than the transfer: OVERRUN, nothing moved.
    let d = r.cmd(0, &cdb10(opcode::READ_10, 0, 0, 2), &[], 700);
    assert_eq!(d.resp.response, VIRTIO_SCSI_S_OVERRUN);
    assert_eq!(d.resid(), 700);
}

#[test]
fn zero_copy_buffers_cross_descriptors() {
    let r = rig();
    let lu0 = LunAddress { target: 0, lun: 0 };
    // Data-in over three uneven descriptors: 100 + 700 + 224 bytes = blocks 12 and 13.
    let ins = [
        (IN_ADDR, 100),
        (IN_ADDR + 0x1000, 700),
        (IN_ADDR + 0x2000, 224),
    ];
    let (o, left) = r.exec(lu0, &cdb10(opcode::READ_10, 0, 12, 2), &[], &ins);
    assert_eq!((o.unwrap(), left), (CmdOutcome::GOOD, 0));
    let mut got = Vec::new();
    for (a, l) in ins {
        let mut b = vec![0u8; l as usize];
        r.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        got.extend(b);
    }
    let mut want = vec![12u8; 512];
    want.extend(vec![13u8; 512]);
    assert_eq!(got, want);
    // Data-out over two descriptors.
    r.mem
        .write_slice(&[0x11; 300], GuestAddress(OUT_ADDR))
        .unwrap();
    r.mem
        .write_slice(&[0x22; 212], GuestAddress(OUT_ADDR + 0x1000))
        .unwrap();
    let outs = [(OUT_ADDR, 300), (OUT_ADDR + 0x1000, 212)];
    let (o, _) = r.exec(lu0, &cdb10(opcode::WRITE_10, 0, 50, 1), &outs, &[]);
    assert_eq!(o.unwrap(), CmdOutcome::GOOD);
    let mut want = vec![0x11u8; 300];
    want.extend(vec![0x22u8; 212]);
    assert_eq!(r.file_bytes(0, 50 * 512, 512), want);
    // split_at: a response in front of data-in, then the rest.
    let vq = MockSplitQueue::new(&r.mem, 16);
    let chain = vq
        .build_desc_chain(&[desc(RESP_ADDR, 50, true), desc(IN_ADDR, 200, true)])
        .unwrap();
    let mut all = GuestBuffer::writable(&r.mem, chain).unwrap();
    let mut head = all.split_at(108).unwrap();
    assert_eq!(crate::scsi::DataIn::remaining(&head), 108);
    assert_eq!(crate::scsi::DataIn::remaining(&all), 142);
    crate::scsi::DataIn::write_bytes(&mut head, &[0x5a; 108]).unwrap();
    let mut b = [0u8; 58];
    r.mem.read_slice(&mut b, GuestAddress(IN_ADDR)).unwrap();
    assert_eq!(
        b, [0x5a; 58],
        "the head's tail spills into the second descriptor"
    );
    assert!(head.write_obj(0u8).is_err(), "the head is full");
    crate::scsi::DataIn::write_bytes(&mut all, &[1; 142]).unwrap();
    r.mem
        .read_slice(&mut b, GuestAddress(IN_ADDR + 58))
        .unwrap();
    assert_eq!(b, [1; 58]);
    assert_eq!(all.bytes_moved(), 142);
    // Outside guest memory: refused when the buffer is built.
    let vq = MockSplitQueue::new(&r.mem, 16);
    let chain = vq
        .build_desc_chain(&[desc(MEM_SIZE as u64 - 16, 512, true)])
        .unwrap();
    assert!(GuestBuffer::writable(&r.mem, chain).is_err());
    // One walk for both directions: zero-length first descriptors are stepped over, a
    // readable descriptor after a writable one is flagged, and a bad descriptor spoils
    // only its own direction.
    r.mem.write_slice(&[7; 64], GuestAddress(OUT_ADDR)).unwrap();
    let vq = MockSplitQueue::new(&r.mem, 16);
    let chain = vq
        .build_desc_chain(&[
            desc(OUT_ADDR, 0, false),
            desc(OUT_ADDR, 64, false),
            desc(IN_ADDR, 0, true),
            desc(IN_ADDR, 32, true),
            desc(OUT_ADDR, 8, false),
        ])
        .unwrap();
    let b = crate::virtio::ChainBuffers::scan(&r.mem, chain);
    assert!(b.readable_after_writable);
    assert_eq!(b.readable_bytes, Some(72));
    let mut out = b.readable.unwrap();
    let mut got = [0u8; 64];
    crate::scsi::DataOut::read_bytes(&mut out, &mut got).unwrap();
    assert_eq!(got, [7; 64]);
    assert_eq!(crate::scsi::DataOut::remaining(&out), 0);
    let mut din = b.writable.unwrap();
    crate::scsi::DataIn::write_bytes(&mut din, &[9; 32]).unwrap();
    let mut back = [0u8; 32];
    r.mem.read_slice(&mut back, GuestAddress(IN_ADDR)).unwrap();
    assert_eq!(back, [9; 32]);
    let vq = MockSplitQueue::new(&r.mem, 16);
    let chain = vq
        .build_desc_chain(&[
            desc(MEM_SIZE as u64 - 16, 512, false),
            desc(IN_ADDR, 32, true),
        ])
        .unwrap();
    let b = crate::virtio::ChainBuffers::scan(&r.mem, chain);
    assert!(b.readable.is_err() && b.readable_bytes.is_none());
    assert_eq!(
        b.writable.map(|w| crate::scsi::DataIn::remaining(&w)).ok(),
        Some(32)
    );
}

#[test]
fn random_cdbs_for_every_command_never_panic() {
    let r = rig();
    let mut rng = Rng(0xc0ffee);
    let out = vec![0u8; 8192];
    for i in 0..4000 {
        let cmd = &COMMANDS[rng.below(COMMANDS.len() as u64) as usize];
        let mut cdb = [0u8; 16];
        cdb.iter_mut().for_each(|b| *b = rng.next() as u8);
        cdb[0] = cmd.opcode;
        if let Some(sa) = cmd.service_action {
            cdb[1] = sa | (cdb[1] & 0xe0);
        }
        // Small LBAs and lengths half of the time, so that data actually moves.
        if rng.below(2) == 0 {
            cdb[2..cmd.usage.len() - 1].fill(0);
            // The low byte of the transfer length of each CDB size.
            let at = match cmd.usage.len() {
                6 => 4,
                10 => 8,
                12 => 9,
                _ => 13,
            };
            cdb[at] = rng.below(8) as u8;
        }
        let lun = rng.below(3) as u16;
        let (data_out, data_in) = match rng.below(3) {
            0 => (&out[..rng.below(8192) as usize], 0),
            1 => (&[][..], rng.below(8192) as u32),
            _ => (&[][..], 0),
        };
        let d = r.cmd(lun, &cdb[..cmd.usage.len()], data_out, data_in);
        assert!(
            d.used <= RESP_LEN + data_in,
            "{}: used {}",
            cmd.name,
            d.used
        );
        assert!(
            matches!(
                d.resp.response,
                VIRTIO_SCSI_S_OK | VIRTIO_SCSI_S_OVERRUN | VIRTIO_SCSI_S_FAILURE
            ),
            "{} (#{i}): response {}",
            cmd.name,
            d.resp.response
        );
        // Keep the LUs running for the next round.
        r.cmd(lun, &[opcode::START_STOP_UNIT, 0, 0, 0, 1, 0], &[], 0);
    }
}
