//! virtio-scsi request headers and the few CDBs the frontend sends. The wire format is
//! Linux's (virtio_bindings, cdb_size 32, sense_size 96); opcodes and status codes are the
//! backend's SCSI target's.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_scsi::{
    virtio_scsi_cmd_req, virtio_scsi_cmd_resp, virtio_scsi_ctrl_tmf_req, virtio_scsi_ctrl_tmf_resp,
};

pub use flakyhba_backend::scsi::opcode::{
    READ_10, READ_16, SAI_READ_CAPACITY_16, SERVICE_ACTION_IN_16, SYNCHRONIZE_CACHE_10,
    TEST_UNIT_READY, WRITE_10, WRITE_16,
};
pub use flakyhba_backend::scsi::sense::status::{
    CHECK_CONDITION as SAM_STAT_CHECK_CONDITION, GOOD as SAM_STAT_GOOD,
};
/// The spec's FUNCTION_COMPLETE (0): Linux's header, and so the bindings, call it S_OK.
pub use virtio_bindings::virtio_scsi::VIRTIO_SCSI_S_OK as VIRTIO_SCSI_S_FUNCTION_COMPLETE;
pub use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_S_ABORTED, VIRTIO_SCSI_S_FUNCTION_SUCCEEDED, VIRTIO_SCSI_S_OK, VIRTIO_SCSI_T_TMF,
    VIRTIO_SCSI_T_TMF_ABORT_TASK, VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
};

/// `struct virtio_scsi_req_cmd`, device-readable part.
pub const CMD_REQ_LEN: usize = size_of::<virtio_scsi_cmd_req>();
/// `struct virtio_scsi_req_cmd`, device-writable part.
pub const CMD_RESP_LEN: u32 = size_of::<virtio_scsi_cmd_resp>() as u32;
/// `struct virtio_scsi_ctrl_tmf`: type, subtype, lun, id.
pub const TMF_REQ_LEN: usize = size_of::<virtio_scsi_ctrl_tmf_req>();
pub const TMF_RESP_LEN: u32 = size_of::<virtio_scsi_ctrl_tmf_resp>() as u32;

/// Where the fields of a command's response are.
pub const RESP_SENSE_LEN: usize = offset_of!(virtio_scsi_cmd_resp, sense_len);
pub const RESP_RESID: usize = offset_of!(virtio_scsi_cmd_resp, resid);
pub const RESP_STATUS: usize = offset_of!(virtio_scsi_cmd_resp, status);
pub const RESP_RESPONSE: usize = offset_of!(virtio_scsi_cmd_resp, response);
pub const RESP_SENSE: usize = offset_of!(virtio_scsi_cmd_resp, sense);

const REQ_TAG: usize = offset_of!(virtio_scsi_cmd_req, tag);
const REQ_CDB: usize = offset_of!(virtio_scsi_cmd_req, cdb);

/// A LUN address in the virtio-scsi single-level format: 1, target, 0x40|lun>>8, lun.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScsiAddress {
    pub target: u8,
    pub lun: u16,
}

impl ScsiAddress {
    pub fn encode(self) -> [u8; 8] {
        let l = 0x4000 | (self.lun & 0x3fff);
        let [hi, lo] = l.to_be_bytes();
        [1, self.target, hi, lo, 0, 0, 0, 0]
    }
}

/// A `virtio_scsi_req_cmd` header with tag `id` and `cdb` (zero-padded to 32 bytes).
pub fn cmd_req(addr: ScsiAddress, id: u64, cdb: &[u8]) -> [u8; CMD_REQ_LEN] {
    let mut r = [0u8; CMD_REQ_LEN];
    r[..REQ_TAG].copy_from_slice(&addr.encode());
    r[REQ_TAG..REQ_TAG + 8].copy_from_slice(&id.to_le_bytes());
    // task_attr SIMPLE (0), prio 0, crn 0.
    r[REQ_CDB..REQ_CDB + cdb.len()].copy_from_slice(cdb);
    r
}

/// Rewrites the tag and CDB of a header built by `cmd_req`, in place (no allocation).
pub fn set_cmd(req: &mut [u8; CMD_REQ_LEN], id: u64, cdb: &[u8; 16]) {
    req[REQ_TAG..REQ_TAG + 8].copy_from_slice(&id.to_le_bytes());
    req[REQ_CDB..REQ_CDB + cdb.len()].copy_from_slice(cdb);
}

/// A `virtio_scsi_ctrl_tmf` request.
pub fn tmf_req(subtype: u32, addr: ScsiAddress, id: u64) -> [u8; TMF_REQ_LEN] {
    let at = |field: usize, len: usize| field..field + len;
    let mut r = [0u8; TMF_REQ_LEN];
    r[at(offset_of!(virtio_scsi_ctrl_tmf_req, type_), 4)]
        .copy_from_slice(&VIRTIO_SCSI_T_TMF.to_le_bytes());
    r[at(offset_of!(virtio_scsi_ctrl_tmf_req, subtype), 4)].copy_from_slice(&subtype.to_le_bytes());
    r[at(offset_of!(virtio_scsi_ctrl_tmf_req, lun), 8)].copy_from_slice(&addr.encode());
    r[at(offset_of!(virtio_scsi_ctrl_tmf_req, tag), 8)].copy_from_slice(&id.to_le_bytes());
    r
}

/// READ or WRITE of `blocks` blocks at `lba`, zero-padded to 16 bytes: the 10-byte CDB
/// when the LBA and the length fit in it, as Linux's sd sends them, else the 16-byte one.
/// Backends that know only the 10-byte commands (rust-vmm's vhost-device-scsi) then serve
/// the bench like a Linux guest.
pub fn rw(write: bool, lba: u64, blocks: u32) -> [u8; 16] {
    let end_fits = lba
        .checked_add(u64::from(blocks))
        .is_some_and(|end| end <= 1 << 32);
    match (u32::try_from(lba), u16::try_from(blocks)) {
        (Ok(lba), Ok(blocks)) if end_fits => {
            let mut c = [0u8; 16];
            c[0] = if write { WRITE_10 } else { READ_10 };
            c[2..6].copy_from_slice(&lba.to_be_bytes());
            c[7..9].copy_from_slice(&blocks.to_be_bytes());
            c
        }
        _ => rw16(write, lba, blocks),
    }
}

/// READ(16) or WRITE(16) of `blocks` blocks at `lba`.
pub fn rw16(write: bool, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = if write { WRITE_16 } else { READ_16 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// SYNCHRONIZE CACHE(10) of the whole LU (LBA 0, 0 blocks: to the end).
pub fn synchronize_cache10() -> [u8; 10] {
    [SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// READ CAPACITY(16) with a 32-byte allocation length.
pub fn read_capacity16() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = SERVICE_ACTION_IN_16;
    c[1] = SAI_READ_CAPACITY_16;
    c[10..14].copy_from_slice(&32u32.to_be_bytes());
    c
}

/// (number of blocks, block size) from READ CAPACITY(16) data.
pub fn parse_capacity16(data: &[u8; 32]) -> (u64, u32) {
    let last = u64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
    let block = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    (last.saturating_add(1), block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_is_single_level() {
        let a = ScsiAddress { target: 0, lun: 0 };
        assert_eq!(a.encode(), [1, 0, 0x40, 0, 0, 0, 0, 0]);
        let b = ScsiAddress {
            target: 3,
            lun: 0x123,
        };
        assert_eq!(b.encode(), [1, 3, 0x41, 0x23, 0, 0, 0, 0]);
    }

    #[test]
    fn rw_uses_the_16_byte_cdb_only_when_the_10_byte_one_cannot_say_it() {
        let c = rw(true, 0x0102_0304_0506_0708, 0x0a0b_0c0d);
        assert_eq!(c, rw16(true, 0x0102_0304_0506_0708, 0x0a0b_0c0d));
        assert_eq!(c[0], WRITE_16);
        assert_eq!(&c[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&c[10..14], &[0x0a, 0x0b, 0x0c, 0x0d]);
        let mut req = cmd_req(ScsiAddress::default(), 7, &c);
        assert_eq!(req.len(), 51);
        assert_eq!(req[19], WRITE_16);

        let c = rw(false, 0x0102_0304, 0x0506);
        assert_eq!(c, [READ_10, 0, 1, 2, 3, 4, 0, 5, 6, 0, 0, 0, 0, 0, 0, 0]);
        set_cmd(&mut req, 9, &c);
        assert_eq!(&req[8..16], &9u64.to_le_bytes());
        assert_eq!(req[19], READ_10);
        assert_eq!(&req[29..35], &[0; 6], "the 16-byte CDB's tail is cleared");
        // The last block of the 10-byte range, then one past it; a length over 16 bits.
        assert_eq!(rw(false, u64::from(u32::MAX), 1)[0], READ_10);
        assert_eq!(rw(false, u64::from(u32::MAX), 2)[0], READ_16);
        assert_eq!(rw(true, 0, 0x1_0000)[0], WRITE_16);
        assert_eq!(rw(true, 0, 0xffff)[0], WRITE_10);
    }

    #[test]
    fn capacity_parses_last_lba_plus_one() {
        let mut d = [0u8; 32];
        d[0..8].copy_from_slice(&1023u64.to_be_bytes());
        d[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(parse_capacity16(&d), (1024, 512));
    }

    #[test]
    fn tmf_request_layout() {
        let r = tmf_req(VIRTIO_SCSI_T_TMF_ABORT_TASK, ScsiAddress::default(), 0x42);
        assert_eq!(&r[0..8], &[0; 8]);
        assert_eq!(r[10], 0x40);
        assert_eq!(&r[16..24], &0x42u64.to_le_bytes());
    }
}
