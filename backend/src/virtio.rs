//! The virtio-scsi wire format (virtio 1.2 section 5.6), under the spec's names, and the
//! data-in/data-out buffers of a request built on virtio-queue's descriptor-chain
//! [`Reader`] and [`Writer`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{Reader, Writer};
use vm_memory::{ByteValued, Le32, Le64};

use crate::scsi::{DataError, DataIn, DataOut};

/// Feature bits (5.6.3).
pub const VIRTIO_SCSI_F_INOUT: u64 = 0;
pub const VIRTIO_SCSI_F_HOTPLUG: u64 = 1;
pub const VIRTIO_SCSI_F_CHANGE: u64 = 2;

/// Default sizes from the config space QEMU exposes (5.6.4); the backend supports these.
pub const VIRTIO_SCSI_CDB_SIZE: usize = 32;
pub const VIRTIO_SCSI_SENSE_SIZE: usize = 96;

/// Request queue response codes (5.6.6.1).
pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_OVERRUN: u8 = 1;
pub const VIRTIO_SCSI_S_ABORTED: u8 = 2;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_RESET: u8 = 4;
pub const VIRTIO_SCSI_S_BUSY: u8 = 5;
pub const VIRTIO_SCSI_S_TRANSPORT_FAILURE: u8 = 6;
pub const VIRTIO_SCSI_S_TARGET_FAILURE: u8 = 7;
pub const VIRTIO_SCSI_S_NEXUS_FAILURE: u8 = 8;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;
/// Control queue response codes (5.6.6.2).
pub const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u8 = 0;
pub const VIRTIO_SCSI_S_FUNCTION_SUCCEEDED: u8 = 10;
pub const VIRTIO_SCSI_S_FUNCTION_REJECTED: u8 = 11;
pub const VIRTIO_SCSI_S_INCORRECT_LUN: u8 = 12;

/// Control queue request types.
pub const VIRTIO_SCSI_T_TMF: u32 = 0;
pub const VIRTIO_SCSI_T_AN_QUERY: u32 = 1;
pub const VIRTIO_SCSI_T_AN_SUBSCRIBE: u32 = 2;

/// Task management function subtypes.
pub const VIRTIO_SCSI_T_TMF_ABORT_TASK: u32 = 0;
pub const VIRTIO_SCSI_T_TMF_ABORT_TASK_SET: u32 = 1;
pub const VIRTIO_SCSI_T_TMF_CLEAR_ACA: u32 = 2;
pub const VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET: u32 = 3;
pub const VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET: u32 = 4;
pub const VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET: u32 = 5;
pub const VIRTIO_SCSI_T_TMF_QUERY_TASK: u32 = 6;
pub const VIRTIO_SCSI_T_TMF_QUERY_TASK_SET: u32 = 7;

/// Event queue event types (5.6.6.3).
pub const VIRTIO_SCSI_T_NO_EVENT: u32 = 0;
pub const VIRTIO_SCSI_T_TRANSPORT_RESET: u32 = 1;
pub const VIRTIO_SCSI_T_ASYNC_NOTIFY: u32 = 2;
pub const VIRTIO_SCSI_T_PARAM_CHANGE: u32 = 3;
pub const VIRTIO_SCSI_T_EVENTS_MISSED: u32 = 0x8000_0000;

/// `struct virtio_scsi_req_cmd`, device-readable part, with cdb_size = 32.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioScsiCmdReq {
    pub lun: [u8; 8],
    pub id: Le64,
    pub task_attr: u8,
    pub prio: u8,
    pub crn: u8,
    pub cdb: [u8; VIRTIO_SCSI_CDB_SIZE],
}

/// Size of the fields before the CDB: a chain shorter than this has no header at all.
pub const VIRTIO_SCSI_CMD_REQ_FIXED: usize = 8 + 8 + 3;

/// `struct virtio_scsi_req_cmd`, device-writable part, with sense_size = 96.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct VirtioScsiCmdResp {
    pub sense_len: Le32,
    pub resid: Le32,
    pub status_qualifier: u16,
    pub status: u8,
    pub response: u8,
    pub sense: [u8; VIRTIO_SCSI_SENSE_SIZE],
}

impl VirtioScsiCmdResp {
    /// A response with only the `response` field set (no SCSI status, no sense).
    pub fn with_response(response: u8) -> Self {
        VirtioScsiCmdResp {
            sense_len: Le32::from(0),
            resid: Le32::from(0),
            status_qualifier: 0,
            status: 0,
            response,
            sense: [0; VIRTIO_SCSI_SENSE_SIZE],
        }
    }
}

/// `struct virtio_scsi_ctrl_tmf`, device-readable part.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioScsiCtrlTmfReq {
    pub type_: Le32,
    pub subtype: Le32,
    pub lun: [u8; 8],
    pub id: Le64,
}

/// `struct virtio_scsi_ctrl_tmf`, device-writable part.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioScsiCtrlTmfResp {
    pub response: u8,
}

/// `struct virtio_scsi_ctrl_an`, device-readable part.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioScsiCtrlAnReq {
    pub type_: Le32,
    pub lun: [u8; 8],
    pub event_requested: Le32,
}

/// `struct virtio_scsi_ctrl_an`, device-writable part.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioScsiCtrlAnResp {
    pub event_actual: Le32,
    pub response: u8,
}

/// `struct virtio_scsi_event`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioScsiEvent {
    pub event: Le32,
    pub lun: [u8; 8],
    pub reason: Le32,
}

// SAFETY: each type is repr(C, packed), so it has no padding, and it is made only of
// integers and byte arrays, for which every bit pattern is valid.
unsafe impl ByteValued for VirtioScsiCmdReq {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioScsiCmdResp {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioScsiCtrlTmfReq {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioScsiCtrlTmfResp {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioScsiCtrlAnReq {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioScsiCtrlAnResp {}
// SAFETY: as above.
unsafe impl ByteValued for VirtioScsiEvent {}

/// A decoded virtio-scsi LUN field (5.6.6.1: `lun[0] = 1`, `lun[1] = target`, `lun[2..4] = LUN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiAddress {
    pub target: u8,
    pub lun: u16,
}

/// Decodes the 8-byte LUN field. Byte 2 is 0 (peripheral addressing, LUN < 256) or has
/// 0x40 set (flat space); anything else addresses no LU of ours.
pub fn decode_lun(lun: &[u8; 8]) -> Option<ScsiAddress> {
    if lun[0] != 1 {
        return None;
    }
    let id = match lun[2] & 0xc0 {
        0x00 if lun[2] == 0 => u16::from(lun[3]),
        0x40 => u16::from_be_bytes([lun[2] & 0x3f, lun[3]]),
        _ => return None,
    };
    Some(ScsiAddress {
        target: lun[1],
        lun: id,
    })
}

/// Encodes an address the way Linux and QEMU do: flat space, 0x4000 | lun.
pub fn encode_lun(addr: ScsiAddress) -> [u8; 8] {
    let v = 0x4000 | (addr.lun & 0x3fff);
    let [hi, lo] = v.to_be_bytes();
    [1, addr.target, hi, lo, 0, 0, 0, 0]
}

/// Bytes copied per step between a LUN file and guest memory. The bounce buffer lives on
/// the worker's stack, so a request allocates nothing for its data.
const BOUNCE_CHUNK: usize = 16 * 1024;

/// The data-in part of a request chain: the writable descriptors after the response.
pub struct ChainDataIn<'a> {
    pub writer: Writer<'a>,
}

impl DataIn for ChainDataIn<'_> {
    fn remaining(&self) -> usize {
        self.writer.available_bytes()
    }

    fn write_bytes(&mut self, buf: &[u8]) -> Result<(), DataError> {
        self.writer.write_all(buf).map_err(DataError::Buffer)
    }

    // Issue 3 replaces the bounce buffer with pread straight into the chain's
    // VolatileSlices; only this function and `read_to_file` change.
    fn write_from_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        let mut bounce = [0u8; BOUNCE_CHUNK];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(BOUNCE_CHUNK);
            file.read_exact_at(&mut bounce[..n], offset + done as u64)
                .map_err(DataError::File)?;
            self.writer
                .write_all(&bounce[..n])
                .map_err(DataError::Buffer)?;
            done += n;
        }
        Ok(())
    }
}

/// The data-out part of a request chain: the readable descriptors after the header.
pub struct ChainDataOut<'a> {
    pub reader: Reader<'a>,
}

impl DataOut for ChainDataOut<'_> {
    fn remaining(&self) -> usize {
        self.reader.available_bytes()
    }

    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        let mut bounce = [0u8; BOUNCE_CHUNK];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(BOUNCE_CHUNK);
            self.reader
                .read_exact(&mut bounce[..n])
                .map_err(DataError::Buffer)?;
            file.write_all_at(&bounce[..n], offset + done as u64)
                .map_err(DataError::File)?;
            done += n;
        }
        Ok(())
    }
}

/// CDB length implied by the opcode's group code (SPC-4 4.2.5.1), or `None` for groups
/// whose length the opcode does not fix (variable-length and reserved/vendor groups).
pub fn cdb_len_for_opcode(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn wire_sizes_match_the_spec() {
        assert_eq!(size_of::<VirtioScsiCmdReq>(), 51);
        assert_eq!(size_of::<VirtioScsiCmdResp>(), 108);
        assert_eq!(size_of::<VirtioScsiCtrlTmfReq>(), 24);
        assert_eq!(size_of::<VirtioScsiCtrlTmfResp>(), 1);
        assert_eq!(size_of::<VirtioScsiCtrlAnReq>(), 16);
        assert_eq!(size_of::<VirtioScsiCtrlAnResp>(), 5);
        assert_eq!(size_of::<VirtioScsiEvent>(), 16);
    }

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [0u16, 1, 255, 256, 0x3fff] {
            let a = ScsiAddress { target: 0, lun };
            assert_eq!(decode_lun(&encode_lun(a)), Some(a));
        }
        // Peripheral addressing for LUN < 256 (byte 2 = 0).
        assert_eq!(
            decode_lun(&[1, 0, 0, 5, 0, 0, 0, 0]),
            Some(ScsiAddress { target: 0, lun: 5 })
        );
        assert_eq!(decode_lun(&[0, 0, 0x40, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0x80, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0x01, 0, 0, 0, 0, 0]), None);
    }
}
