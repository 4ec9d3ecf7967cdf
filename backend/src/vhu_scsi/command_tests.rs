//! One MockSplitQueue test per SCSI command: status, sense and data through the request
//! processor, plus the target-level features the transport does not reach yet (other
//! targets, descriptor-format autosense) through the zero-copy [`GuestBuffer`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::scsi::sense::{sense_key, status, SenseFormat};
use crate::scsi::{opcode, CmdOutcome, Lun, LunAddress, LunSpec, Target, COMMANDS};
use crate::virtio::*;

const MEM_SIZE: usize = 0x100_0000;
const HDR_ADDR: u64 = 0x10_0000;
const OUT_ADDR: u64 = 0x20_0000;
const RESP_ADDR: u64 = 0x30_0000;
const IN_ADDR: u64 = 0x40_0000;
const BLOCKS: u64 = 64;
const RESP_LEN: u32 = size_of::<VirtioScsiCmdResp>() as u32;

struct Rig {
    mem: GuestMemoryMmap,
    target: Target,
    files: Vec<tempfile::NamedTempFile>,
}

/// A file of `blocks` blocks of `bs` bytes, block b filled with b.
fn backing(bs: usize, blocks: u64) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for b in 0..blocks {
        f.write_all(&vec![b as u8; bs]).unwrap();
    }
    f.flush().unwrap();
    f
}

/// Target 0: LUN 0 rw 512-byte blocks, LUN 1 read-only, LUN 2 rw 4096-byte blocks with
/// descriptor sense. No unit attention pending.
fn rig() -> Rig {
    let mut files = Vec::new();
    let mut luns = Vec::new();
    for (read_only, bs, sense_format) in [
        (false, 512, SenseFormat::Fixed),
        (true, 512, SenseFormat::Fixed),
        (false, 4096, SenseFormat::Descriptor),
    ] {
        let f = backing(bs, BLOCKS);
        let mut spec = LunSpec::file(f.path(), read_only);
        spec.block_size = bs as u32;
        spec.sense_format = sense_format;
        luns.push(Lun::open_spec(&spec).unwrap());
        files.push(f);
    }
    Rig {
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        target: Target::new(luns).unwrap(),
        files,
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
    data_in: Vec<u8>,
    used: u32,
}

impl Done {
    fn good(&self) -> &Self {
        assert_eq!(self.resp.response, VIRTIO_SCSI_S_OK);
        assert_eq!(
            self.resp.status,
            status::GOOD,
            "sense {:02x?}",
            &self.resp.sense[..18]
        );
        assert_eq!(u32::from(self.resp.sense_len), 0);
        self
    }

    /// CHECK CONDITION with this sense, in fixed or descriptor format (the LU's D_SENSE
    /// decides once the transport encodes with `CmdOutcome::sense_bytes`).
    fn check(&self, key: u8, asc: u8, ascq: u8) -> &Self {
        assert_eq!(self.resp.response, VIRTIO_SCSI_S_OK);
        assert_eq!(self.resp.status, status::CHECK_CONDITION);
        let s = self.resp.sense;
        let got = match (s[0] & 0x7f, u32::from(self.resp.sense_len)) {
            (0x70, 18) => (s[2] & 0xf, s[12], s[13]),
            (0x72, n) if n >= 8 => (s[1] & 0xf, s[2], s[3]),
            other => panic!("bad sense header {other:?}"),
        };
        assert_eq!(got, (key, asc, ascq));
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
            lun: encode_lun(ScsiAddress { target: 0, lun }),
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
        let used = process_request_chain(&self.target, &self.mem, chain);
        let mut data_in = vec![0u8; data_in_len as usize];
        self.mem
            .read_slice(&mut data_in, GuestAddress(IN_ADDR))
            .unwrap();
        Done {
            resp: self.mem.read_obj(GuestAddress(RESP_ADDR)).unwrap(),
            data_in,
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
            .target
            .execute_at(addr, cdb, &mut data_in, &mut data_out);
        (r, crate::scsi::DataIn::remaining(&data_in))
    }

    fn file_bytes(&self, lun: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(self.files[lun].path()).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn allocated_bytes(&self, lun: usize) -> u64 {
        self.files[lun].as_file().metadata().unwrap().blocks() * 512
    }
}

fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb12(op: u8, b1: u8, lba: u32, len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let [hi, lo] = alloc.to_be_bytes();
    [opcode::INQUIRY, u8::from(evpd), page, hi, lo, 0]
}

const TUR: [u8; 6] = [opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0];
const ILLEGAL: u8 = sense_key::ILLEGAL_REQUEST;

// ---- SPC ----

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
        let mut buf = [0u8; 64];
        let mem = &r.mem;
        mem.write_slice(&[0; 64], GuestAddress(IN_ADDR)).unwrap();
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(&[desc(IN_ADDR, 64, true)]).unwrap();
        let mut din = GuestBuffer::writable(mem, chain.clone()).unwrap();
        let mut dout = GuestBuffer::readable(mem, chain).unwrap();
        let o = t
            .execute(0, &inquiry(true, 0x80, 64), &mut din, &mut dout)
            .unwrap();
        assert_eq!(o, CmdOutcome::GOOD);
        mem.read_slice(&mut buf, GuestAddress(IN_ADDR)).unwrap();
        buf
    };
    let first = serial(&r.target);
    assert_eq!(&first[..4], &[0, 0x80, 0, 16]);
    assert!(first[4..20].iter().all(u8::is_ascii_hexdigit));
    let again = Target::new(vec![Lun::open(r.files[0].path(), false).unwrap()]).unwrap();
    assert_eq!(serial(&again)[..20], first[..20], "same path, same serial");
    let other = Target::new(vec![Lun::open(r.files[1].path(), false).unwrap()]).unwrap();
    assert_ne!(serial(&other)[4..20], first[4..20]);

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
            p.resp.status == status::GOOD || p.resp.sense[12] != 0x20,
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

// ---- SBC ----

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
    assert_eq!(d.resp.sense[0], 0xf0, "VALID: INFORMATION holds the offset");
    assert_eq!(&d.resp.sense[3..7], &600u32.to_be_bytes());
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

// ---- unit attention ----

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

// ---- target level: descriptor sense, other targets, zero-copy buffers ----

#[test]
fn descriptor_sense_when_the_control_page_says_so() {
    let r = rig();
    let lu2 = LunAddress { target: 0, lun: 2 };
    let (o, _) = r.exec(
        lu2,
        &cdb10(opcode::READ_10, 0, 64, 1),
        &[],
        &[(IN_ADDR, 4096)],
    );
    let o = o.unwrap();
    assert_eq!(o.status, status::CHECK_CONDITION);
    assert_eq!(o.sense_format, SenseFormat::Descriptor);
    let mut buf = [0u8; 96];
    assert_eq!(o.sense_bytes(&mut buf), 8);
    assert_eq!(&buf[..4], &[0x72, ILLEGAL, 0x21, 0x00]);
    // LUN 0 keeps fixed format.
    let (o, _) = r.exec(
        LunAddress { target: 0, lun: 0 },
        &cdb10(opcode::READ_10, 0, 64, 1),
        &[],
        &[(IN_ADDR, 512)],
    );
    let o = o.unwrap();
    assert_eq!(o.sense_bytes(&mut buf), 18);
    assert_eq!(buf[0], 0x70);
}

#[test]
fn several_targets_and_absent_luns() {
    let f0 = backing(512, 8);
    let f1 = backing(512, 16);
    let mut spec = LunSpec::file(f1.path(), false);
    spec.address = Some(LunAddress { target: 1, lun: 5 });
    let rig = Rig {
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
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
    let (o, left) = rig.exec(t1, &c, &[], &[(IN_ADDR, 64)]);
    assert_eq!(o.unwrap(), CmdOutcome::GOOD);
    assert_eq!(left, 64 - 16);
    let mut data = [0u8; 16];
    rig.mem
        .read_slice(&mut data, GuestAddress(IN_ADDR))
        .unwrap();
    assert_eq!(&data[..4], &8u32.to_be_bytes());
    assert_eq!(&data[8..10], &[0, 5]);
    // An I_T nexus reset is of one target: target 0's LUs report nothing.
    t.nexus_reset(1);
    assert!(t.unit_attention_pending(t1));
    assert!(!t.unit_attention_pending(LunAddress { target: 0, lun: 0 }));
    let (o, _) = rig.exec(t1, &TUR, &[], &[]);
    assert_eq!(
        o.unwrap().sense.map(|s| (s.asc, s.ascq)),
        Some((0x29, 0x07))
    );
    // Absent LUN 0 of target 1: INQUIRY says "no LU here", TUR says not supported.
    let t1l0 = LunAddress { target: 1, lun: 0 };
    let (o, _) = rig.exec(t1l0, &inquiry(false, 0, 36), &[], &[(IN_ADDR, 36)]);
    assert_eq!(o.unwrap(), CmdOutcome::GOOD);
    let mut b = [0u8; 1];
    rig.mem.read_slice(&mut b, GuestAddress(IN_ADDR)).unwrap();
    assert_eq!(b[0], 0x7f);
    let (o, _) = rig.exec(t1l0, &TUR, &[], &[]);
    assert_eq!(o.unwrap().sense.map(|s| (s.asc, s.ascq)), Some((0x25, 0)));
    // No target 2 at all: the transport's BAD_TARGET.
    let (o, _) = rig.exec(LunAddress { target: 2, lun: 0 }, &TUR, &[], &[]);
    assert!(o.is_err());
    // The memory LU reads and writes through the same path.
    let mem_lu = LunAddress { target: 0, lun: 1 };
    rig.mem
        .write_slice(&[0x3c; 512], GuestAddress(OUT_ADDR))
        .unwrap();
    let (o, _) = rig.exec(
        mem_lu,
        &cdb10(opcode::WRITE_10, 0, 2047, 1),
        &[(OUT_ADDR, 512)],
        &[],
    );
    assert_eq!(o.unwrap(), CmdOutcome::GOOD);
    let (o, left) = rig.exec(
        mem_lu,
        &cdb10(opcode::READ_10, 0, 2047, 1),
        &[],
        &[(IN_ADDR, 512)],
    );
    assert_eq!((o.unwrap(), left), (CmdOutcome::GOOD, 0));
    let mut back = [0u8; 512];
    rig.mem
        .read_slice(&mut back, GuestAddress(IN_ADDR))
        .unwrap();
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

/// splitmix64: fixed seed, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
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
