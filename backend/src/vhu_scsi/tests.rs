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
    encode_lun(ScsiAddress { target: 0, lun: n })
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
        encode_lun(ScsiAddress { target: 1, lun: 0 }),
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

// ---- control queue ----

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

#[test]
fn tmf_resets_and_aborts_complete() {
    let f = fixture();
    let tur = [opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0];
    // Sent to LUN 1: the unit attention (29/ascq) the next command to LUN 1 and to LUN 0
    // gets, if any. Nothing is held without faults, so aborts and queries find nothing.
    for (sub, lu1, lu0) in [
        (VIRTIO_SCSI_T_TMF_ABORT_TASK, None, None),
        (VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, None, None),
        (VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, None, None),
        (VIRTIO_SCSI_T_TMF_QUERY_TASK, None, None),
        (VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, None, None),
        (VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, Some(0x03), None),
        (VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, Some(0x07), Some(0x07)),
    ] {
        let (used, resp) = control(&f, tmf(sub, lun(1)).as_slice(), 1);
        assert_eq!(
            (used, resp[0]),
            (1, VIRTIO_SCSI_S_FUNCTION_COMPLETE),
            "subtype {sub}"
        );
        for (l, ua) in [(1, lu1), (0, lu0)] {
            let d = f.command(lun(l), &tur, &[], 0);
            match ua {
                Some(ascq) => assert_check(&d, sense_key::UNIT_ATTENTION, 0x29, ascq),
                None => assert_good(&d),
            }
            // Reported once.
            assert_good(&f.command(lun(l), &tur, &[], 0));
        }
    }
    assert!(take_warnings().is_empty());
}

#[test]
fn tmf_to_absent_lu_is_bad_target() {
    let f = fixture();
    let (used, resp) = control(
        &f,
        tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(9)).as_slice(),
        1,
    );
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_BAD_TARGET));
}

#[test]
fn tmf_unknown_subtype_is_rejected() {
    let f = fixture();
    let (used, resp) = control(&f, tmf(99, lun(0)).as_slice(), 1);
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_FUNCTION_REJECTED));
    let (_, resp) = control(&f, tmf(VIRTIO_SCSI_T_TMF_CLEAR_ACA, lun(0)).as_slice(), 1);
    assert_eq!(resp[0], VIRTIO_SCSI_S_FUNCTION_REJECTED);
}

#[test]
fn an_query_reports_no_events() {
    let f = fixture();
    for type_ in [VIRTIO_SCSI_T_AN_QUERY, VIRTIO_SCSI_T_AN_SUBSCRIBE] {
        let req = VirtioScsiCtrlAnReq {
            type_: Le32::from(type_),
            lun: lun(0),
            event_requested: Le32::from(0xff),
        };
        let (used, resp) = control(&f, req.as_slice(), 5);
        assert_eq!(used, 5);
        assert_eq!(&resp[..4], &[0, 0, 0, 0], "event_actual");
        assert_eq!(resp[4], VIRTIO_SCSI_S_OK);
    }
}

#[test]
fn unknown_control_type_is_failure() {
    let f = fixture();
    let (used, resp) = control(&f, &[7, 0, 0, 0, 0, 0, 0, 0], 1);
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_FAILURE));
    assert_one_warning();
}

#[test]
fn short_tmf_is_failure() {
    let f = fixture();
    let (used, resp) = control(&f, &tmf(0, lun(0)).as_slice()[..12], 1);
    assert_eq!((used, resp[0]), (1, VIRTIO_SCSI_S_FAILURE));
    assert_one_warning();
}

#[test]
fn control_request_without_room_for_an_answer_is_not_executed() {
    // Found by the request fuzz target: an unknown TMF subtype without a response buffer
    // logged twice, and a LU reset without one was done although it cannot be answered.
    let f = fixture();
    let addr = LunAddress { target: 0, lun: 0 };
    let reset = tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0));
    let (used, _) = control(&f, reset.as_slice(), 0);
    assert_eq!(used, 0, "zero-length response buffer");
    assert_one_warning();
    assert!(!f.target.unit_attention_pending(addr), "the reset was done");
    let (used, _) = control(&f, tmf(99, lun(0)).as_slice(), 0);
    assert_eq!(used, 0);
    assert_one_warning();
    // No writable descriptor at all, and one outside guest memory.
    f.mem
        .write_slice(reset.as_slice(), GuestAddress(HDR_ADDR))
        .unwrap();
    for tail in [None, Some(desc(MEM_SIZE as u64 + 0x1000, 1, true))] {
        let vq = MockSplitQueue::new(&f.mem, 16);
        let mut descs = vec![desc(HDR_ADDR, 24, false)];
        descs.extend(tail);
        let chain = vq.build_desc_chain(&descs).unwrap();
        assert_eq!(process_control_chain(&f.target, &f.mem, chain), 0);
        assert_one_warning();
    }
    assert!(!f.target.unit_attention_pending(addr));
}

// ---- queue level: completion and the interrupt decision ----

struct QueueRig {
    backend: VhostUserScsiBackend,
    vring: VringRwLock,
    call: EventFd,
}

const Q_SIZE: u16 = 16;
/// MockSplitQueue places its used ring over the avail ring's tail and `used_event`
/// (it adds the ring length in entries, not bytes), so the rig uses its own used ring.
const USED_RING: u64 = 0x8000;

fn used_idx(f: &Fixture) -> u16 {
    f.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
}

/// (id, len) of used element `n`.
fn used_elem(f: &Fixture, n: u64) -> (u32, u32) {
    let at = USED_RING + 4 + 8 * n;
    (
        f.mem.read_obj(GuestAddress(at)).unwrap(),
        f.mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

fn rig(f: &Fixture, vq: &MockSplitQueue<GuestMemoryMmap>, event_idx: bool) -> QueueRig {
    let atomic = GuestMemoryAtomic::new(f.mem.clone());
    let backend = VhostUserScsiBackend::new(f.target.clone(), 1);
    backend.update_memory(atomic.clone()).unwrap();
    backend.set_event_idx(event_idx);
    let vring = VringRwLock::new(atomic, Q_SIZE).unwrap();
    vring
        .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, USED_RING)
        .unwrap();
    vring.set_queue_size(Q_SIZE);
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let fd = call.try_clone().unwrap().into_raw_fd();
    // SAFETY: `fd` is a fresh duplicate that nothing else owns.
    vring.set_call(Some(unsafe { File::from_raw_fd(fd) }));
    QueueRig {
        backend,
        vring,
        call,
    }
}

impl QueueRig {
    /// One kick: the request queue's handler runs once.
    fn serve(&self) {
        self.backend
            .process_queue(FIRST_REQUEST_QUEUE, &self.vring)
            .unwrap();
    }
}

/// Writes the driver's `used_event` (EVENT_IDX), which follows the avail ring.
fn set_used_event(f: &Fixture, vq: &MockSplitQueue<GuestMemoryMmap>, index: u16) {
    let at = vq.avail_addr().0 + 4 + 2 * u64::from(Q_SIZE);
    f.mem.write_obj(index, GuestAddress(at)).unwrap();
}

/// Posts a TEST UNIT READY chain on the mock queue.
fn post_tur(f: &Fixture, vq: &MockSplitQueue<GuestMemoryMmap>) {
    f.mem
        .write_obj(
            cmd_header(lun(0), &[opcode::TEST_UNIT_READY]),
            GuestAddress(HDR_ADDR),
        )
        .unwrap();
    vq.build_desc_chain(&[desc(HDR_ADDR, 51, false), desc(RESP_ADDR, RESP_LEN, true)])
        .unwrap();
}

#[test]
fn request_queue_completes_and_signals() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    post_tur(&f, &vq);
    r.serve();
    assert_eq!(used_idx(&f), 1);
    assert_eq!(used_elem(&f, 0), (0, RESP_LEN));
    assert_eq!(r.call.read().unwrap(), 1, "one interrupt");
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_OK);
}

#[test]
fn event_idx_suppresses_unwanted_interrupts() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    // used_event (after the avail ring) far ahead: the driver wants no interrupt yet.
    set_used_event(&f, &vq, 10);
    post_tur(&f, &vq);
    r.serve();
    assert_eq!(used_idx(&f), 1, "completed");
    assert!(
        r.call.read().is_err(),
        "no interrupt: the call eventfd is empty"
    );

    // used_event = 1: the driver asks for an interrupt after the second completion.
    set_used_event(&f, &vq, 1);
    post_tur(&f, &vq);
    r.serve();
    assert_eq!(used_idx(&f), 2);
    assert_eq!(r.call.read().unwrap(), 1);
}

#[test]
fn avail_index_more_than_a_ring_ahead_does_not_hang_the_worker() {
    // Found by the request fuzz target: with EVENT_IDX, every pop failed while
    // enable_notification kept reporting chains, and the worker spun forever.
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    post_tur(&f, &vq);
    let avail_idx = GuestAddress(vq.avail_addr().0 + 2);
    f.mem.write_obj(Q_SIZE + 5, avail_idx).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = r.backend.process_queue(FIRST_REQUEST_QUEUE, &r.vring);
        tx.send((result.is_ok(), take_warnings().len(), r)).unwrap();
    });
    let (ok, warnings, r) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the queue handler returns");
    assert!(ok);
    assert_eq!(warnings, 1, "one warning for the broken ring");
    assert_eq!(used_idx(&f), 0);
    // The driver repairs its index: the next kick serves the chain.
    f.mem.write_obj(1u16, avail_idx).unwrap();
    r.serve();
    assert_eq!(used_idx(&f), 1);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_OK);
}

#[test]
fn one_pass_signals_once_for_all_its_completions() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    for _ in 0..3 {
        post_tur(&f, &vq);
    }
    r.serve();
    assert_eq!(used_idx(&f), 3);
    assert_eq!(r.call.read().unwrap(), 1, "one eventfd write for the pass");

    // EVENT_IDX: the driver wants the interrupt of the second of three completions; the
    // decision at the end of the pass sees it in its window.
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    set_used_event(&f, &vq, 1);
    for _ in 0..3 {
        post_tur(&f, &vq);
    }
    r.serve();
    assert_eq!(used_idx(&f), 3);
    assert_eq!(r.call.read().unwrap(), 1);
}

#[test]
fn a_long_batch_is_signalled_every_max_unsignalled_completions() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    let mut batch = SignalBatch::new(false);
    let mut sent = 0;
    let n = 2 * MAX_UNSIGNALLED + 5;
    for i in 0..n {
        if let Some(outcome) = batch.complete(&r.vring, i % Q_SIZE, 0).unwrap() {
            assert_eq!(outcome, SignalOutcome::Sent);
            sent += 1;
        }
    }
    assert_eq!(sent, 2, "two full batches decided on the way");
    assert_eq!(batch.flush(&r.vring).unwrap(), Some(SignalOutcome::Sent));
    assert_eq!(batch.flush(&r.vring).unwrap(), None, "nothing left");
    assert_eq!(r.call.read().unwrap(), 3);
}

#[test]
fn with_event_idx_completions_are_decided_at_once_until_one_is_signalled() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    let mut batch = SignalBatch::new(true);
    // The driver asks for an interrupt at the first used entry: the first completion is
    // signalled at once, the rest of the pass waits for its end.
    assert_eq!(
        batch.complete(&r.vring, 0, 0).unwrap(),
        Some(SignalOutcome::Sent)
    );
    for i in 1..5 {
        assert_eq!(batch.complete(&r.vring, i, 0).unwrap(), None, "{i}");
    }
    assert!(
        batch.flush(&r.vring).unwrap().is_some(),
        "decided at the end"
    );
    assert_eq!(r.call.read().unwrap(), 1, "the driver had not caught up");
    // A new pass decides its first completion at once again.
    assert!(batch.complete(&r.vring, 5, 0).unwrap().is_some());
}

#[test]
fn event_queue_keeps_its_buffers() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    vq.build_desc_chain(&[desc(RESP_ADDR, 16, true)]).unwrap();
    r.backend.process_queue(EVENT_QUEUE, &r.vring).unwrap();
    assert_eq!(used_idx(&f), 0);
    assert_eq!(r.vring.queue_next_avail(), 0, "buffer not consumed");
    assert!(r.call.read().is_err());
}

#[test]
fn control_queue_answers_through_the_queue() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    f.mem
        .write_obj(
            tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0)),
            GuestAddress(HDR_ADDR),
        )
        .unwrap();
    vq.build_desc_chain(&[desc(HDR_ADDR, 24, false), desc(RESP_ADDR, 1, true)])
        .unwrap();
    r.backend.process_queue(CONTROL_QUEUE, &r.vring).unwrap();
    assert_eq!(used_idx(&f), 1);
    assert_eq!(used_elem(&f, 0), (0, 1));
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.call.read().unwrap(), 1);
}

#[test]
fn queues_map_to_workers() {
    let f = fixture();
    let b = VhostUserScsiBackend::new(f.target.clone(), 3);
    assert_eq!(b.num_queues(), 5);
    assert_eq!(b.queues_per_thread(), vec![0b111, 0b1000, 0b10000]);
    assert_eq!(queue_of(0b111, 2), Some(2));
    assert_eq!(queue_of(0b1000, 0), Some(3));
    assert_eq!(queue_of(0b1000, 1), None);
}

#[test]
fn features_include_what_qemu_offers() {
    let f = fixture();
    let b = VhostUserScsiBackend::new(f.target.clone(), 1);
    let feat = b.features();
    for bit in [
        u64::from(VIRTIO_F_VERSION_1),
        u64::from(VIRTIO_RING_F_EVENT_IDX),
        u64::from(VIRTIO_RING_F_INDIRECT_DESC),
        VIRTIO_SCSI_F_HOTPLUG,
        VIRTIO_SCSI_F_CHANGE,
    ] {
        assert_ne!(feat & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(feat & (1 << VIRTIO_SCSI_F_INOUT), 0);
}

// ---- random chains: guest input never panics the device ----

/// splitmix64: a fixed-seed generator so a failure replays.
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

pub(super) mod bad_input;
