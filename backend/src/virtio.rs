//! The virtio-scsi wire format (virtio 1.2 section 5.6), under the spec's names, and the
//! data-in/data-out buffers of a request: [`GuestBuffer`], which walks the chain's
//! descriptors and moves file data straight to and from guest memory.

use std::fs::File;
use std::io;
use std::mem::offset_of;
use std::ops::Deref;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_scsi;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::Bitmap;
use vm_memory::{
    Address, ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, Le32, Le64,
    VolatileSlice,
};

use crate::scsi::{single_level_lun, DataError, DataIn, DataOut};

/// Takes each named constant of virtio-bindings (Linux's uapi header, where all are `u32`)
/// with the type of the field or the use it has here; every value fits that type.
macro_rules! from_bindings {
    ($ty:ty: $($name:ident),+ $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($name), "` of virtio-bindings.")]
            pub const $name: $ty = virtio_scsi::$name as $ty;
        )+
    };
}

// Feature bits (5.6.3): bit numbers in the u64 feature word.
from_bindings!(u64: VIRTIO_SCSI_F_INOUT, VIRTIO_SCSI_F_HOTPLUG, VIRTIO_SCSI_F_CHANGE);

// The config space's defaults (5.6.4). The driver may write another `cdb_size` (the
// request header then has a CDB area of that size); `sense_size` stays 96 here.
from_bindings!(usize: VIRTIO_SCSI_CDB_SIZE, VIRTIO_SCSI_SENSE_SIZE);
/// `cdb_size` values the device accepts: below 256, as QEMU's virtio-scsi.
/// Virtqueue indexes of a virtio-scsi device (virtio 1.2, 5.6.2): the control queue, the
/// event queue, then the request queues. virtio-bindings has no names for them.
pub const CONTROL_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
pub const FIRST_REQUEST_QUEUE: u16 = 2;

pub const VIRTIO_SCSI_MAX_CDB_SIZE: usize = 255;

// Response codes of the request queue (5.6.6.1) and the control queue (5.6.6.2): the
// `response` byte of every response.
from_bindings!(
    u8: VIRTIO_SCSI_S_OK,
    VIRTIO_SCSI_S_OVERRUN,
    VIRTIO_SCSI_S_ABORTED,
    VIRTIO_SCSI_S_BAD_TARGET,
    VIRTIO_SCSI_S_RESET,
    VIRTIO_SCSI_S_BUSY,
    VIRTIO_SCSI_S_TRANSPORT_FAILURE,
    VIRTIO_SCSI_S_TARGET_FAILURE,
    VIRTIO_SCSI_S_NEXUS_FAILURE,
    VIRTIO_SCSI_S_FAILURE,
    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED,
    VIRTIO_SCSI_S_FUNCTION_REJECTED,
    VIRTIO_SCSI_S_INCORRECT_LUN,
);
/// The spec's FUNCTION COMPLETE (5.6.6.2), which Linux's header and so virtio-bindings
/// lack: the TMF response that shares VIRTIO_SCSI_S_OK's value.
pub const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u8 = VIRTIO_SCSI_S_OK;

// Control request types, TMF subtypes, event types and TRANSPORT_RESET reasons (5.6.6.2,
// 5.6.6.3): `u32` fields on the wire, as in the bindings.
pub use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_EVT_RESET_HARD, VIRTIO_SCSI_EVT_RESET_REMOVED, VIRTIO_SCSI_EVT_RESET_RESCAN,
    VIRTIO_SCSI_T_AN_QUERY, VIRTIO_SCSI_T_AN_SUBSCRIBE, VIRTIO_SCSI_T_ASYNC_NOTIFY,
    VIRTIO_SCSI_T_EVENTS_MISSED, VIRTIO_SCSI_T_NO_EVENT, VIRTIO_SCSI_T_PARAM_CHANGE,
    VIRTIO_SCSI_T_TMF, VIRTIO_SCSI_T_TMF_ABORT_TASK, VIRTIO_SCSI_T_TMF_ABORT_TASK_SET,
    VIRTIO_SCSI_T_TMF_CLEAR_ACA, VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET,
    VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
    VIRTIO_SCSI_T_TMF_QUERY_TASK, VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, VIRTIO_SCSI_T_TRANSPORT_RESET,
};

/// `struct virtio_scsi_req_cmd`, device-readable part, with cdb_size = 32. With another
/// cdb_size the device reads the fixed fields and that many CDB bytes (at most 32 kept).
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

/// `struct virtio_scsi_config` (5.6.4): all read-only but `sense_size` and `cdb_size`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioScsiConfig {
    pub num_queues: Le32,
    pub seg_max: Le32,
    pub max_sectors: Le32,
    pub cmd_per_lun: Le32,
    pub event_info_size: Le32,
    pub sense_size: Le32,
    pub cdb_size: Le32,
    pub max_channel: u16,
    pub max_target: u16,
    pub max_lun: Le32,
}

/// Offsets of the driver-writable fields of [`VirtioScsiConfig`].
pub const VIRTIO_SCSI_CONFIG_SENSE_SIZE: usize = offset_of!(VirtioScsiConfig, sense_size);
pub const VIRTIO_SCSI_CONFIG_CDB_SIZE: usize = offset_of!(VirtioScsiConfig, cdb_size);

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
// SAFETY: as above.
unsafe impl ByteValued for VirtioScsiConfig {}

/// A decoded virtio-scsi LUN field (5.6.6.1: `lun[0] = 1`, `lun[1] = target`, `lun[2..4] = LUN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiAddress {
    pub target: u8,
    pub lun: u16,
}

/// Decodes the 8-byte LUN field. Byte 2 is 0 (peripheral addressing, LUN < 256) or has
/// 0x40 set (flat space, LUN < 16384), and bytes 4..8 are zero (a single-level LUN, the
/// only format 5.6.6.1 allows); anything else addresses no LU of ours.
pub fn decode_lun(lun: &[u8; 8]) -> Option<ScsiAddress> {
    if lun[0] != 1 || lun[4..] != [0; 4] {
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

/// The LUN field of an event (5.6.6.3), as QEMU's virtio-scsi writes it: bytes 2..4 hold
/// the LUN as REPORT LUNS lists it (0x40 only from LUN 256 on). Linux's virtio_scsi reads
/// an event's LUN as `lun[2] << 8 | lun[3]`, unmasked, and looks up the device it scanned
/// from REPORT LUNS under that number: flat space below 256 would name LUN 0x4000 + n.
pub fn event_lun(addr: ScsiAddress) -> [u8; 8] {
    let id = single_level_lun(addr.lun);
    [1, addr.target, id[0], id[1], 0, 0, 0, 0]
}

/// The LUN field of a request or TMF as Linux's virtio_scsi writes it: flat space always,
/// 0x4000 | lun. The device decodes both forms ([`decode_lun`]).
#[cfg(test)]
pub fn request_lun(addr: ScsiAddress) -> [u8; 8] {
    let [hi, lo] = (0x4000 | (addr.lun & 0x3fff)).to_be_bytes();
    [1, addr.target, hi, lo, 0, 0, 0, 0]
}

/// Why one direction of a chain (its readable or its writable descriptors) cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("descriptor {addr:#x}+{len} outside guest memory")]
    OutsideGuestMemory { addr: u64, len: usize },
    #[error("descriptor chain length overflows")]
    LengthOverflows,
}

/// A malformed request chain: the driver's mistake, which the device answers with
/// VIRTIO_SCSI_S_FAILURE where a response fits (used length 0 where none does) and logs
/// once, with this text.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("readable descriptor outside guest memory: {0}")]
    ReadableOutsideGuestMemory(DescriptorError),
    /// As [`ChainError::ReadableOutsideGuestMemory`], found by virtio-queue's `Reader`.
    #[error("readable descriptor outside guest memory: {0}")]
    ReaderOutsideGuestMemory(virtio_queue::Error),
    #[error("writable descriptor outside guest memory, no response possible")]
    WritableOutsideGuestMemory,
    #[error("no writable response descriptor")]
    NoResponseDescriptor,
    #[error("short request header: {0} bytes")]
    ShortHeader(usize),
    #[error("CDB area extends beyond the readable header ({readable} of {header} bytes)")]
    CdbBeyondHeader { readable: usize, header: usize },
    #[error("cannot read request header: {0:?}")]
    UnreadableHeader(DataError),
    #[error("both data-out and data-in buffers without VIRTIO_SCSI_F_INOUT")]
    BothDataDirections,
    #[error("data-out buffer of {available} bytes for a {needed}-byte transfer")]
    DataOutTooSmall { available: usize, needed: u64 },
    #[error("guest buffer access failed: {0}")]
    BufferAccess(String),
    #[error("short control header: {0} bytes")]
    ShortControlHeader(usize),
    #[error("short TMF request")]
    ShortTmfRequest,
    #[error("short AN request")]
    ShortAnRequest,
    #[error("unknown control request type {0}")]
    UnknownControlType(u32),
}

/// A guest buffer made of one direction of a request chain's descriptors: the readable
/// ones (up to the first writable one) or the writable ones. The descriptors are walked
/// as data moves, so no list of them is built: a request allocates nothing for its data,
/// and file data goes by pread/pwrite straight into or out of guest memory.
pub struct GuestBuffer<'m, M>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    mem: &'m GuestMemoryMmap,
    /// Descriptors not yet entered.
    chain: DescriptorChain<M>,
    writable: bool,
    /// The unused part of the current descriptor.
    addr: GuestAddress,
    left_in_desc: usize,
    /// Bytes left in the whole buffer (or in the limit set by `split_at`).
    remaining: usize,
    moved: usize,
}

impl<M> Clone for GuestBuffer<'_, M>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    fn clone(&self) -> Self {
        GuestBuffer {
            mem: self.mem,
            chain: self.chain.clone(),
            writable: self.writable,
            addr: self.addr,
            left_in_desc: self.left_in_desc,
            remaining: self.remaining,
            moved: self.moved,
        }
    }
}

/// The data-out part of a request: the readable descriptors.
pub type GuestDataOut<'m, M> = GuestBuffer<'m, M>;
/// The response and data-in part of a request: the writable descriptors.
pub type GuestDataIn<'m, M> = GuestBuffer<'m, M>;

fn buffer_err(msg: impl Into<String>) -> DataError {
    DataError::Buffer(io::Error::other(msg.into()))
}

impl<'m, M> GuestBuffer<'m, M>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    /// The device-readable descriptors of `chain`, up to the first writable one.
    pub fn readable(
        mem: &'m GuestMemoryMmap,
        chain: DescriptorChain<M>,
    ) -> Result<Self, DescriptorError> {
        ChainBuffers::scan(mem, chain).readable
    }

    /// The device-writable descriptors of `chain`.
    pub fn writable(
        mem: &'m GuestMemoryMmap,
        chain: DescriptorChain<M>,
    ) -> Result<Self, DescriptorError> {
        ChainBuffers::scan(mem, chain).writable
    }

    /// A buffer of `total` bytes that starts in `first`, the first descriptor of its
    /// direction; `rest` is the chain positioned just after it.
    fn entered(
        mem: &'m GuestMemoryMmap,
        rest: DescriptorChain<M>,
        writable: bool,
        first: Descriptor,
        total: usize,
    ) -> Self {
        GuestBuffer {
            mem,
            chain: rest,
            writable,
            addr: first.addr(),
            left_in_desc: first.len() as usize,
            remaining: total,
            moved: 0,
        }
    }

    /// A buffer with no bytes (`chain` is never read).
    fn empty(mem: &'m GuestMemoryMmap, chain: DescriptorChain<M>, writable: bool) -> Self {
        GuestBuffer {
            mem,
            chain,
            writable,
            addr: GuestAddress(0),
            left_in_desc: 0,
            remaining: 0,
            moved: 0,
        }
    }

    /// Runs `read`, which moves at most `len` bytes through the buffer, and leaves the
    /// buffer as it was if `read` fails. When those bytes lie in the current descriptor
    /// (where a request header usually is), `read` never moves the chain, so only the
    /// position is saved; otherwise it runs on a copy, which replaces the buffer only on
    /// success.
    #[inline]
    pub fn read_or_keep<T, E>(
        &mut self,
        len: usize,
        read: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        if len <= self.left_in_desc {
            let saved = (self.addr, self.left_in_desc, self.remaining, self.moved);
            let result = read(self);
            if result.is_err() {
                (self.addr, self.left_in_desc, self.remaining, self.moved) = saved;
            }
            result
        } else {
            let mut copy = self.clone();
            let result = read(&mut copy);
            if result.is_ok() {
                *self = copy;
            }
            result
        }
    }

    /// Bytes moved through this buffer so far.
    pub fn bytes_moved(&self) -> usize {
        self.moved
    }

    /// Splits off the first `len` bytes (the response in front of data-in, say): `self`
    /// keeps the rest. Fails when fewer than `len` bytes are left.
    pub fn split_at(&mut self, len: usize) -> io::Result<Self> {
        if len > self.remaining {
            return Err(io::Error::other(format!(
                "cannot split {len} bytes off a {}-byte buffer",
                self.remaining
            )));
        }
        let mut head = self.clone();
        head.remaining = len;
        head.moved = 0;
        self.skip(len).map_err(|e| match e {
            DataError::Buffer(e) | DataError::File(e) => e,
        })?;
        self.moved = 0;
        Ok(head)
    }

    /// Moves past `len` bytes without touching them.
    pub fn skip(&mut self, len: usize) -> Result<(), DataError> {
        let mut left = len;
        while left > 0 {
            let n = self.next_segment(left)?.len();
            self.advance(n);
            left -= n;
        }
        Ok(())
    }

    /// Reads one object (a request header).
    pub fn read_obj<T: ByteValued>(&mut self) -> Result<T, DataError> {
        let mut obj = T::zeroed();
        self.read_into(obj.as_mut_slice())?;
        Ok(obj)
    }

    /// Writes one object (a response).
    pub fn write_obj<T: ByteValued>(&mut self, obj: T) -> Result<(), DataError> {
        self.write_from(obj.as_slice())
    }

    /// The guest memory of the next at most `max` bytes, within one descriptor and one
    /// memory region.
    fn next_segment(&mut self, max: usize) -> Result<VolatileSlice<'m>, DataError> {
        if max > self.remaining {
            return Err(buffer_err(format!(
                "{max} bytes asked of a {}-byte buffer",
                self.remaining
            )));
        }
        while self.left_in_desc == 0 {
            let desc = self
                .chain
                .next()
                .ok_or_else(|| buffer_err("descriptor chain ended early"))?;
            if desc.is_write_only() != self.writable {
                if self.writable {
                    continue;
                }
                return Err(buffer_err("readable descriptors ended early"));
            }
            self.addr = desc.addr();
            self.left_in_desc = desc.len() as usize;
        }
        let want = max.min(self.left_in_desc);
        // get_slices splits at region boundaries; the first piece is what is contiguous.
        match self.mem.get_slices(self.addr, want).next() {
            Some(Ok(slice)) => Ok(slice),
            Some(Err(e)) => Err(buffer_err(format!(
                "guest buffer at {:#x}: {e}",
                self.addr.0
            ))),
            None => Err(buffer_err("empty guest buffer segment")),
        }
    }

    fn advance(&mut self, n: usize) {
        self.addr = self.addr.unchecked_add(n as u64);
        self.left_in_desc -= n;
        self.remaining -= n;
        self.moved += n;
    }

    fn read_into(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        let mut done = 0;
        while done < buf.len() {
            let seg = self.next_segment(buf.len() - done)?;
            let n = seg.copy_to(&mut buf[done..]);
            self.advance(n);
            done += n;
        }
        Ok(())
    }

    fn write_from(&mut self, buf: &[u8]) -> Result<(), DataError> {
        let mut done = 0;
        while done < buf.len() {
            let seg = self.next_segment(buf.len() - done)?;
            let n = seg.len();
            seg.copy_from(&buf[done..done + n]);
            self.advance(n);
            done += n;
        }
        Ok(())
    }
}

/// Both directions of a request chain, from one walk of its descriptors: each descriptor
/// is read from the descriptor table once and checked against guest memory once (as
/// virtio-queue's Reader and Writer check them up front), and the two buffers start in
/// their first descriptors, so moving data reads the table again only past those.
pub struct ChainBuffers<'m, M>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    /// The device-readable descriptors up to the first writable one; `Err` says which one
    /// lies outside guest memory.
    pub readable: Result<GuestBuffer<'m, M>, DescriptorError>,
    /// The device-writable descriptors; `Err` says which one lies outside guest memory.
    pub writable: Result<GuestBuffer<'m, M>, DescriptorError>,
    /// A readable descriptor follows a writable one (2.7.4.2 forbids it).
    pub readable_after_writable: bool,
    /// Bytes of every readable descriptor, wherever it is in the chain; `None` when one of
    /// them lies outside guest memory.
    pub readable_bytes: Option<usize>,
}

/// One direction while the chain is walked.
struct Direction<M> {
    /// The first descriptor and the chain just after it.
    start: Option<(Descriptor, DescriptorChain<M>)>,
    total: usize,
    error: Option<DescriptorError>,
}

impl<M> Direction<M> {
    fn new() -> Self {
        Direction {
            start: None,
            total: 0,
            error: None,
        }
    }

    /// Adds a descriptor of this direction; `rest` gives the chain after it, asked for
    /// only for the first one.
    fn add(
        &mut self,
        mem: &GuestMemoryMmap,
        desc: Descriptor,
        rest: impl FnOnce() -> DescriptorChain<M>,
    ) {
        if self.error.is_some() {
            return;
        }
        let len = desc.len() as usize;
        if !mem.check_range(desc.addr(), len) {
            self.error = Some(DescriptorError::OutsideGuestMemory {
                addr: desc.addr().0,
                len,
            });
            return;
        }
        match self.total.checked_add(len) {
            Some(t) => self.total = t,
            None => {
                self.error = Some(DescriptorError::LengthOverflows);
                return;
            }
        }
        if self.start.is_none() {
            self.start = Some((desc, rest()));
        }
    }
}

impl<'m, M> ChainBuffers<'m, M>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    /// Walks `chain` once.
    pub fn scan(mem: &'m GuestMemoryMmap, mut chain: DescriptorChain<M>) -> Self {
        let mut readable = Direction::new();
        let mut writable = Direction::new();
        let mut seen_writable = false;
        let mut readable_after_writable = false;
        let mut readable_bytes = Some(0usize);
        while let Some(desc) = chain.next() {
            if desc.is_write_only() {
                seen_writable = true;
                writable.add(mem, desc, || chain.clone());
                continue;
            }
            let len = desc.len() as usize;
            readable_bytes = readable_bytes
                .filter(|_| mem.check_range(desc.addr(), len))
                .and_then(|n| n.checked_add(len));
            if seen_writable {
                readable_after_writable = true;
            } else {
                readable.add(mem, desc, || chain.clone());
            }
        }
        let finish = |d: Direction<M>, writable: bool| match (d.error, d.start) {
            (Some(e), _) => Err(e),
            (None, Some((first, rest))) => {
                Ok(GuestBuffer::entered(mem, rest, writable, first, d.total))
            }
            // No descriptor in this direction: the walked-out chain is never read.
            (None, None) => Ok(GuestBuffer::empty(mem, chain.clone(), writable)),
        };
        ChainBuffers {
            readable: finish(readable, false),
            writable: finish(writable, true),
            readable_after_writable,
            readable_bytes,
        }
    }
}

/// pread until `seg` is full: file straight into guest memory.
fn pread_into(file: &File, seg: &VolatileSlice<'_>, offset: u64) -> Result<(), DataError> {
    let guard = seg.ptr_guard_mut();
    let mut got = 0usize;
    while got < seg.len() {
        let at = libc::off_t::try_from(offset + got as u64)
            .map_err(|_| DataError::File(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: the slice is `seg.len()` bytes of mapped guest memory, kept mapped by
        // `guard`; the kernel writes at most `seg.len() - got` bytes from offset `got`.
        let r = unsafe {
            libc::pread(
                file.as_raw_fd(),
                guard.as_ptr().add(got).cast(),
                seg.len() - got,
                at,
            )
        };
        match r {
            0 => return Err(DataError::File(io::ErrorKind::UnexpectedEof.into())),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(DataError::File(e));
                }
            }
            r => got += r as usize,
        }
    }
    seg.bitmap().mark_dirty(0, seg.len());
    Ok(())
}

/// pwrite until all of `seg` is in the file: guest memory straight into the file.
fn pwrite_from(file: &File, seg: &VolatileSlice<'_>, offset: u64) -> Result<(), DataError> {
    let guard = seg.ptr_guard();
    let mut put = 0usize;
    while put < seg.len() {
        let at = libc::off_t::try_from(offset + put as u64)
            .map_err(|_| DataError::File(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: the slice is `seg.len()` bytes of mapped guest memory, kept mapped by
        // `guard`; the kernel reads at most `seg.len() - put` bytes from offset `put`.
        let r = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                guard.as_ptr().add(put).cast(),
                seg.len() - put,
                at,
            )
        };
        match r {
            0 => return Err(DataError::File(io::ErrorKind::WriteZero.into())),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(DataError::File(e));
                }
            }
            r => put += r as usize,
        }
    }
    Ok(())
}

impl<M> DataIn for GuestBuffer<'_, M>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn write_bytes(&mut self, buf: &[u8]) -> Result<(), DataError> {
        self.write_from(buf)
    }

    fn write_from_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        let mut done = 0usize;
        while done < len {
            let seg = self.next_segment(len - done)?;
            pread_into(file, &seg, offset + done as u64)?;
            self.advance(seg.len());
            done += seg.len();
        }
        Ok(())
    }
}

impl<M> DataOut for GuestBuffer<'_, M>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.read_into(buf)
    }

    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        let mut done = 0usize;
        while done < len {
            let seg = self.next_segment(len - done)?;
            pwrite_from(file, &seg, offset + done as u64)?;
            self.advance(seg.len());
            done += seg.len();
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

/// The length of `cdb`: its group's (SPC-4 4.2.5.1) or, for a variable-length CDB (7Fh),
/// 8 plus its ADDITIONAL CDB LENGTH (SPC-4 4.2.3). `None` where the opcode does not say
/// (reserved and vendor-specific groups).
pub fn cdb_len(cdb: &[u8]) -> Option<usize> {
    match cdb.first()? {
        0x7f => Some(8 + usize::from(cdb.get(7).copied().unwrap_or(0))),
        &opcode => cdb_len_for_opcode(opcode),
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
        assert_eq!(size_of::<VirtioScsiConfig>(), 36);
        let c = VirtioScsiConfig {
            sense_size: Le32::from(0x1122_3344),
            cdb_size: Le32::from(0x5566_7788),
            ..Default::default()
        };
        let bytes = c.as_slice();
        assert_eq!(bytes[VIRTIO_SCSI_CONFIG_SENSE_SIZE], 0x44);
        assert_eq!(bytes[VIRTIO_SCSI_CONFIG_CDB_SIZE], 0x88);
    }

    #[test]
    fn cdb_length_follows_the_group_and_the_additional_length() {
        assert_eq!(cdb_len(&[0x00]), Some(6));
        assert_eq!(cdb_len(&[0x28]), Some(10));
        assert_eq!(cdb_len(&[0x5a]), Some(10));
        assert_eq!(cdb_len(&[0x88]), Some(16));
        assert_eq!(cdb_len(&[0xa0]), Some(12));
        assert_eq!(cdb_len(&[0x7f, 0, 0, 0, 0, 0, 0, 0x18]), Some(32));
        assert_eq!(cdb_len(&[0x7f]), Some(8));
        assert_eq!(cdb_len(&[0x60]), None);
        assert_eq!(cdb_len(&[0xc0]), None);
        assert_eq!(cdb_len(&[]), None);
    }

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [0u16, 1, 255, 256, 0x3fff] {
            let a = ScsiAddress { target: 0, lun };
            assert_eq!(decode_lun(&request_lun(a)), Some(a));
            assert_eq!(decode_lun(&event_lun(a)), Some(a));
        }
        // Peripheral addressing for LUN < 256 (byte 2 = 0).
        assert_eq!(
            decode_lun(&[1, 0, 0, 5, 0, 0, 0, 0]),
            Some(ScsiAddress { target: 0, lun: 5 })
        );
        assert_eq!(decode_lun(&[0, 0, 0x40, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0x80, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0x01, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0xc0, 0, 0, 0, 0, 0]), None);
        for i in 4..8 {
            let mut l = request_lun(ScsiAddress { target: 0, lun: 1 });
            l[i] = 1;
            assert_eq!(decode_lun(&l), None, "byte {i}");
        }
    }

    /// Linux reads an event's LUN as `lun[2] << 8 | lun[3]` and must get the number it gave
    /// the LU when it scanned REPORT LUNS (scsilun_to_int: the entry's first two bytes):
    /// plain n below 256, 0x4000 | n from 256 on (QEMU's virtio_scsi_push_event).
    #[test]
    fn event_luns_read_as_linux_numbers_the_reported_lus() {
        let linux_event = |l: [u8; 8]| u16::from(l[2]) << 8 | u16::from(l[3]);
        let linux_report = |e: [u8; 8]| u16::from(e[0]) << 8 | u16::from(e[1]);
        for (lun, linux) in [
            (0u16, 0u16),
            (1, 1),
            (255, 255),
            (256, 0x4100),
            (0x3fff, 0x7fff),
        ] {
            let a = ScsiAddress { target: 3, lun };
            let ev = event_lun(a);
            assert_eq!(ev[..2], [1, 3]);
            assert_eq!(ev[4..], [0; 4]);
            assert_eq!(linux_event(ev), linux, "LUN {lun}");
            assert_eq!(linux_report(single_level_lun(lun)), linux, "LUN {lun}");
        }
        assert_eq!(
            event_lun(ScsiAddress { target: 0, lun: 1 }),
            [1, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(
            request_lun(ScsiAddress { target: 0, lun: 1 }),
            [1, 0, 0x40, 1, 0, 0, 0, 0]
        );
    }
}
