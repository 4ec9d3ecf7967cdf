//! Device tests without QEMU: chains are built in guest memory with virtio-queue's
//! MockSplitQueue and handed to the chain and queue processors directly.

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::{Arc, Once};

use vhost_user_backend::VringT;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
// The vring indexes, not the wire's u16 ones of crate::virtio.
use super::{CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE};
use crate::faults::SignalOutcome;
use crate::scsi::sense::{sense_key, status};
use crate::scsi::{opcode, Lun, LunAddress, Target, BLOCK_SIZE};
use crate::virtio::*;

const MEM_SIZE: usize = 0x100_0000;
const HDR_ADDR: u64 = 0x10_0000;
const OUT_ADDR: u64 = 0x20_0000;
const RESP_ADDR: u64 = 0x30_0000;
const IN_ADDR: u64 = 0x40_0000;
const LUN_BLOCKS: u64 = 64;
pub(super) const RESP_LEN: u32 = size_of::<VirtioScsiCmdResp>() as u32;

// ---- log capture: the malformed-chain rule is "exactly one warning" ----

thread_local! {
    static WARNINGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.level() == log::Level::Warn {
            WARNINGS.with(|w| w.borrow_mut().push(record.args().to_string()));
        }
    }
    fn flush(&self) {}
}

fn init_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CaptureLogger).expect("no other logger in unit tests");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// Warnings logged by this test thread since the last call.
pub(super) fn take_warnings() -> Vec<String> {
    WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut()))
}

// ---- fixtures ----

pub(super) struct Fixture {
    pub(super) mem: GuestMemoryMmap,
    pub(super) target: Arc<Target>,
    pub(super) files: Vec<tempfile::NamedTempFile>,
}

/// LUN 0 read-write and LUN 1 read-only, each LUN_BLOCKS blocks, block b filled with b.
pub(super) fn fixture() -> Fixture {
    init_logger();
    take_warnings();
    let mut files = Vec::new();
    let mut luns = Vec::new();
    for read_only in [false, true] {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for b in 0..LUN_BLOCKS {
            f.write_all(&[b as u8; BLOCK_SIZE as usize]).unwrap();
        }
        f.flush().unwrap();
        luns.push(Lun::open(f.path(), read_only).unwrap());
        files.push(f);
    }
    Fixture {
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        target: Arc::new(Target::new(luns).unwrap()),
        files,
    }
}

pub(super) fn lun(n: u16) -> [u8; 8] {
    request_lun(ScsiAddress { target: 0, lun: n })
}

fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
    let flags = if writable {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

pub(super) fn cmd_header(lun: [u8; 8], cdb: &[u8]) -> VirtioScsiCmdReq {
    let mut req = VirtioScsiCmdReq {
        lun,
        ..Default::default()
    };
    let mut c = [0u8; VIRTIO_SCSI_CDB_SIZE];
    c[..cdb.len()].copy_from_slice(cdb);
    req.cdb = c;
    req
}

struct Done {
    used: u32,
    resp: VirtioScsiCmdResp,
    data_in: Vec<u8>,
}

impl Done {
    fn sense(&self) -> (u8, u8, u8) {
        assert_eq!(
            u32::from(self.resp.sense_len),
            18,
            "fixed-format sense expected"
        );
        (self.resp.sense[2], self.resp.sense[12], self.resp.sense[13])
    }
    fn resid(&self) -> u32 {
        u32::from(self.resp.resid)
    }
}

impl Fixture {
    /// Runs a chain of `descs` through the request processor.
    fn run_descs(&self, descs: &[RawDescriptor]) -> u32 {
        let vq = MockSplitQueue::new(&self.mem, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        process_request_chain(&self.target, &self.mem, chain)
    }

    /// A well-formed command: header, optional data-out, response, optional data-in.
    fn command(&self, lun: [u8; 8], cdb: &[u8], data_out: &[u8], data_in_len: u32) -> Done {
        self.mem
            .write_obj(cmd_header(lun, cdb), GuestAddress(HDR_ADDR))
            .unwrap();
        let mut descs = vec![desc(HDR_ADDR, size_of::<VirtioScsiCmdReq>() as u32, false)];
        if !data_out.is_empty() {
            self.mem
                .write_slice(data_out, GuestAddress(OUT_ADDR))
                .unwrap();
            descs.push(desc(OUT_ADDR, data_out.len() as u32, false));
        }
        descs.push(desc(RESP_ADDR, RESP_LEN, true));
        if data_in_len > 0 {
            descs.push(desc(IN_ADDR, data_in_len, true));
        }
        // Poison the response so a missing write shows.
        self.mem
            .write_slice(&[0xee; RESP_LEN as usize], GuestAddress(RESP_ADDR))
            .unwrap();
        let used = self.run_descs(&descs);
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

    pub(super) fn file_block(&self, lun: usize, lba: u64) -> Vec<u8> {
        let mut f = File::open(self.files[lun].path()).unwrap();
        f.seek(SeekFrom::Start(lba * BLOCK_SIZE)).unwrap();
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn response_byte(&self) -> u8 {
        self.mem
            .read_obj::<VirtioScsiCmdResp>(GuestAddress(RESP_ADDR))
            .unwrap()
            .response
    }
}

fn assert_good(d: &Done) {
    assert_eq!(d.resp.response, VIRTIO_SCSI_S_OK);
    assert_eq!(d.resp.status, status::GOOD);
    assert_eq!(u32::from(d.resp.sense_len), 0);
}

fn assert_check(d: &Done, key: u8, asc: u8, ascq: u8) {
    assert_eq!(d.resp.response, VIRTIO_SCSI_S_OK);
    assert_eq!(d.resp.status, status::CHECK_CONDITION);
    assert_eq!(d.sense(), (key, asc, ascq));
}

pub(super) fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode::READ_10;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(super) fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = opcode::WRITE_10;
    c
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn control(f: &Fixture, req_bytes: &[u8], resp_len: u32) -> (u32, Vec<u8>) {
    f.mem
        .write_slice(req_bytes, GuestAddress(HDR_ADDR))
        .unwrap();
    f.mem
        .write_slice(&[0xee; 8], GuestAddress(RESP_ADDR))
        .unwrap();
    let vq = MockSplitQueue::new(&f.mem, 16);
    let chain = vq
        .build_desc_chain(&[
            desc(HDR_ADDR, req_bytes.len() as u32, false),
            desc(RESP_ADDR, resp_len, true),
        ])
        .unwrap();
    let used = process_control_chain(&f.target, &f.mem, chain);
    let mut resp = vec![0u8; resp_len as usize];
    f.mem
        .read_slice(&mut resp, GuestAddress(RESP_ADDR))
        .unwrap();
    (used, resp)
}

pub(super) fn tmf(subtype: u32, lun: [u8; 8]) -> VirtioScsiCtrlTmfReq {
    VirtioScsiCtrlTmfReq {
        type_: Le32::from(VIRTIO_SCSI_T_TMF),
        subtype: Le32::from(subtype),
        lun,
        id: Default::default(),
    }
}

/// splitmix64: a fixed-seed generator so a failure replays.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- SCSI commands through the request queue ----

#[test]
fn test_unit_ready_is_good() {
    let f = fixture();
    let d = f.command(lun(0), &[opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[], 0);
    assert_good(&d);
    assert_eq!(d.used, RESP_LEN);
    assert_eq!(d.resid(), 0);
}

#[test]
fn inquiry_returns_standard_data_and_residual() {
    let f = fixture();
    let d = f.command(lun(0), &[opcode::INQUIRY, 0, 0, 0, 96, 0], &[], 128);
    assert_good(&d);
    assert_eq!(d.data_in[0], 0x00, "direct-access block device");
    assert_eq!(d.data_in[4] as usize + 5, 36);
    assert_eq!(&d.data_in[8..16], b"FLAKYHBA");
    assert_eq!(d.used, RESP_LEN + 36);
    assert_eq!(d.resid(), 128 - 36);
}

#[test]
fn inquiry_truncates_to_allocation_length() {
    let f = fixture();
    let d = f.command(lun(0), &[opcode::INQUIRY, 0, 0, 0, 5, 0], &[], 64);
    assert_good(&d);
    assert_eq!(d.used, RESP_LEN + 5);
    assert_eq!(d.resid(), 64 - 5);
}

#[test]
fn inquiry_evpd_is_invalid_field() {
    let f = fixture();
    // A VPD page the target does not offer.
    let d = f.command(lun(0), &[opcode::INQUIRY, 1, 0xc7, 0, 96, 0], &[], 96);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    assert_eq!(d.resid(), 96);
    // A page code without EVPD.
    let d = f.command(lun(0), &[opcode::INQUIRY, 0, 0x83, 0, 96, 0], &[], 96);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
}

#[test]
fn report_luns_lists_every_lun() {
    let f = fixture();
    let mut cdb = [0u8; 12];
    cdb[0] = opcode::REPORT_LUNS;
    cdb[6..10].copy_from_slice(&256u32.to_be_bytes());
    let d = f.command(lun(0), &cdb, &[], 256);
    assert_good(&d);
    assert_eq!(&d.data_in[..4], &16u32.to_be_bytes());
    assert_eq!(&d.data_in[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d.data_in[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.resid(), 256 - 24);
}

#[test]
fn report_luns_with_tiny_allocation_is_invalid_field() {
    let f = fixture();
    let mut cdb = [0u8; 12];
    cdb[0] = opcode::REPORT_LUNS;
    cdb[6..10].copy_from_slice(&8u32.to_be_bytes());
    let d = f.command(lun(0), &cdb, &[], 64);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
}

#[test]
fn read_capacity_10_reports_last_lba_and_block_size() {
    let f = fixture();
    let d = f.command(
        lun(0),
        &[opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        8,
    );
    assert_good(&d);
    assert_eq!(&d.data_in[..4], &(LUN_BLOCKS as u32 - 1).to_be_bytes());
    assert_eq!(&d.data_in[4..8], &512u32.to_be_bytes());
    assert_eq!(d.resid(), 0);
}

#[test]
fn read_capacity_16_reports_last_lba_and_block_size() {
    let f = fixture();
    let mut cdb = [0u8; 16];
    cdb[0] = opcode::SERVICE_ACTION_IN_16;
    cdb[1] = opcode::SAI_READ_CAPACITY_16;
    cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
    let d = f.command(lun(0), &cdb, &[], 32);
    assert_good(&d);
    assert_eq!(&d.data_in[..8], &(LUN_BLOCKS - 1).to_be_bytes());
    assert_eq!(&d.data_in[8..12], &512u32.to_be_bytes());
    // Unknown service action.
    cdb[1] = 0x11;
    let d = f.command(lun(0), &cdb, &[], 32);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
}

#[test]
fn read_10_and_16_return_file_data() {
    let f = fixture();
    let d = f.command(lun(0), &read10(3, 2), &[], 1024);
    assert_good(&d);
    assert!(d.data_in[..512].iter().all(|&b| b == 3));
    assert!(d.data_in[512..].iter().all(|&b| b == 4));
    assert_eq!(d.used, RESP_LEN + 1024);
    assert_eq!(d.resid(), 0);

    let d = f.command(
        lun(1),
        &rw16(opcode::READ_16, LUN_BLOCKS - 1, 1),
        &[],
        512 + 100,
    );
    assert_good(&d);
    assert!(d.data_in[..512]
        .iter()
        .all(|&b| b == (LUN_BLOCKS - 1) as u8));
    assert_eq!(d.resid(), 100);
}

#[test]
fn read_larger_than_data_in_is_overrun() {
    let f = fixture();
    let d = f.command(lun(0), &read10(0, 4), &[], 1024);
    assert_eq!(d.resp.response, VIRTIO_SCSI_S_OVERRUN);
    assert_eq!(d.resid(), 1024);
}

#[test]
fn write_10_and_16_reach_the_file() {
    let f = fixture();
    let mut data = vec![0xa5u8; 512];
    data.extend(vec![0x5a; 512]);
    let d = f.command(lun(0), &write10(10, 2), &data, 0);
    assert_good(&d);
    assert_eq!(d.used, RESP_LEN);
    assert_eq!(d.resid(), 0);
    assert_eq!(f.file_block(0, 10), vec![0xa5; 512]);
    assert_eq!(f.file_block(0, 11), vec![0x5a; 512]);
    assert_eq!(f.file_block(0, 12), vec![12; 512], "neighbour untouched");

    let d = f.command(lun(0), &rw16(opcode::WRITE_16, 20, 1), &[0x77; 700], 0);
    assert_good(&d);
    assert_eq!(d.resid(), 700 - 512);
    assert_eq!(f.file_block(0, 20), vec![0x77; 512]);
    // And read back through the device.
    let d = f.command(lun(0), &read10(20, 1), &[], 512);
    assert_eq!(d.data_in, vec![0x77; 512]);
}

#[test]
fn large_transfer_crosses_the_bounce_chunk() {
    let f = fixture();
    let blocks = 40u16; // 20 KiB: more than one 16 KiB bounce step
    let data: Vec<u8> = (0..blocks as usize * 512)
        .map(|i| (i % 251) as u8)
        .collect();
    assert_good(&f.command(lun(0), &write10(0, blocks), &data, 0));
    let d = f.command(lun(0), &read10(0, blocks), &[], data.len() as u32);
    assert_good(&d);
    assert_eq!(d.data_in, data);
}

#[test]
fn write_to_read_only_lun_is_data_protect() {
    let f = fixture();
    let d = f.command(lun(1), &write10(0, 1), &[0x11; 512], 0);
    assert_check(&d, sense_key::DATA_PROTECT, 0x27, 0x00);
    assert_eq!(d.resid(), 512);
    assert_eq!(f.file_block(1, 0), vec![0; 512]);
}

#[test]
fn out_of_range_is_lba_out_of_range() {
    let f = fixture();
    let d = f.command(lun(0), &read10(LUN_BLOCKS as u32 - 1, 2), &[], 1024);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x21, 0x00);
    let d = f.command(lun(0), &rw16(opcode::WRITE_16, u64::MAX, 1), &[0; 512], 0);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x21, 0x00);
}

#[test]
fn request_sense_reports_no_sense() {
    let f = fixture();
    let d = f.command(lun(0), &[opcode::REQUEST_SENSE, 0, 0, 0, 252, 0], &[], 252);
    assert_good(&d);
    assert_eq!(d.data_in[0], 0x70);
    assert_eq!(d.data_in[2], sense_key::NO_SENSE);
    assert_eq!(d.resid(), 252 - 18);
}

#[test]
fn unknown_opcode_is_invalid_command_operation_code() {
    let f = fixture();
    // XDWRITE(10): obsolete, never implemented.
    let d = f.command(lun(0), &[0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert_check(&d, sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
    assert!(
        take_warnings().is_empty(),
        "a bad CDB is not a malformed chain"
    );
}

#[test]
fn absent_lu_is_bad_target() {
    let f = fixture();
    for l in [
        lun(2),
        request_lun(ScsiAddress { target: 1, lun: 0 }),
        [0, 0, 0x40, 0, 0, 0, 0, 0],
    ] {
        let d = f.command(l, &[opcode::INQUIRY, 0, 0, 0, 36, 0], &[], 36);
        assert_eq!(d.resp.response, VIRTIO_SCSI_S_BAD_TARGET);
        assert_eq!(d.used, RESP_LEN);
    }
}

// ---- malformed chains: FAILURE when a response fits, else used length 0; one warning ----

fn assert_one_warning() {
    let w = take_warnings();
    assert_eq!(w.len(), 1, "exactly one warning expected, got {w:?}");
}

#[test]
fn short_header_is_failure() {
    let f = fixture();
    f.mem
        .write_obj(cmd_header(lun(0), &[0]), GuestAddress(HDR_ADDR))
        .unwrap();
    let used = f.run_descs(&[desc(HDR_ADDR, 10, false), desc(RESP_ADDR, RESP_LEN, true)]);
    assert_eq!(used, RESP_LEN);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FAILURE);
    assert_one_warning();
}

#[test]
fn cdb_beyond_readable_header_is_failure() {
    let f = fixture();
    f.mem
        .write_obj(cmd_header(lun(0), &[0]), GuestAddress(HDR_ADDR))
        .unwrap();
    let used = f.run_descs(&[desc(HDR_ADDR, 30, false), desc(RESP_ADDR, RESP_LEN, true)]);
    assert_eq!(used, RESP_LEN);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FAILURE);
    assert_one_warning();
}

#[test]
fn no_writable_descriptor_gets_used_length_zero() {
    let f = fixture();
    f.mem
        .write_obj(cmd_header(lun(0), &[0]), GuestAddress(HDR_ADDR))
        .unwrap();
    let used = f.run_descs(&[desc(HDR_ADDR, 51, false)]);
    assert_eq!(used, 0);
    assert_one_warning();
}

#[test]
fn response_descriptor_too_small_gets_used_length_zero() {
    let f = fixture();
    f.mem
        .write_obj(cmd_header(lun(0), &[0]), GuestAddress(HDR_ADDR))
        .unwrap();
    let used = f.run_descs(&[desc(HDR_ADDR, 51, false), desc(RESP_ADDR, 20, true)]);
    assert_eq!(used, 0);
    assert_one_warning();
}

#[test]
fn readable_after_writable_is_failure() {
    let f = fixture();
    f.mem
        .write_obj(cmd_header(lun(0), &[0]), GuestAddress(HDR_ADDR))
        .unwrap();
    let used = f.run_descs(&[
        desc(HDR_ADDR, 51, false),
        desc(RESP_ADDR, RESP_LEN, true),
        desc(OUT_ADDR, 512, false),
    ]);
    assert_eq!(used, RESP_LEN);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FAILURE);
    assert_one_warning();
}

#[test]
fn both_data_directions_is_failure() {
    let f = fixture();
    f.mem
        .write_obj(cmd_header(lun(0), &read10(0, 1)), GuestAddress(HDR_ADDR))
        .unwrap();
    let used = f.run_descs(&[
        desc(HDR_ADDR, 51, false),
        desc(OUT_ADDR, 512, false),
        desc(RESP_ADDR, RESP_LEN, true),
        desc(IN_ADDR, 512, true),
    ]);
    assert_eq!(used, RESP_LEN);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FAILURE);
    assert_one_warning();
}

#[test]
fn readable_outside_guest_memory_is_failure() {
    let f = fixture();
    let used = f.run_descs(&[
        desc(MEM_SIZE as u64 + 0x1000, 51, false),
        desc(RESP_ADDR, RESP_LEN, true),
    ]);
    assert_eq!(used, RESP_LEN);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FAILURE);
    assert_one_warning();
}

#[test]
fn writable_outside_guest_memory_gets_used_length_zero() {
    let f = fixture();
    f.mem
        .write_obj(cmd_header(lun(0), &[0]), GuestAddress(HDR_ADDR))
        .unwrap();
    let used = f.run_descs(&[
        desc(HDR_ADDR, 51, false),
        desc(MEM_SIZE as u64 - 16, RESP_LEN, true),
    ]);
    assert_eq!(used, 0);
    assert_one_warning();
}

#[test]
fn data_out_shorter_than_write_is_failure() {
    let f = fixture();
    let d = f.command(lun(0), &write10(0, 2), &[1; 512], 0);
    assert_eq!(d.resp.response, VIRTIO_SCSI_S_FAILURE);
    assert_one_warning();
    assert_eq!(f.file_block(0, 0), vec![0; 512], "nothing written");
}

pub(super) mod bad_input;
mod control_queue;
mod queue;
mod random_chains;
