//! SCSI request blocks: what the port's owner submits, the handle a miniport holds
//! while it owns one (N1), and the limits of a port's SRB slots.

/// Default SRB timeout (the Windows disk class default, TimeOutValue 10 s).
pub const DEFAULT_SRB_TIMEOUT_US: u32 = 10_000_000;

/// SRB slots of a port: the most SRBs submitted and not yet taken back.
pub const MAX_SRBS: usize = 32;
/// Longest CDB an SRB carries.
pub const MAX_CDB: usize = 32;
/// Sense bytes an SRB keeps (fixed-format sense is 18; descriptor sense may be longer).
pub const SENSE_BUFFER_LEN: usize = 64;
/// Logical units a port tracks at once.
pub const MAX_LUS: usize = 8;

/// Identifies an SRB from submission to completion.
pub type Tag = u32;

/// Direction of an SRB's data transfer, seen from the initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Device to memory (READ).
    In,
    /// Memory to device (WRITE).
    Out,
}

/// An SRB's data buffer: memory the device can reach by `device_address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataBuffer {
    pub device_address: u64,
    pub ptr: *mut u8,
    pub len: u32,
    pub direction: DataDirection,
}

// SAFETY: a DataBuffer only names memory; it never dereferences `ptr` itself. Every
// access through it is an unsafe block of the SRB's owner that argues its own
// exclusivity (no request using the buffer is outstanding), on whichever CPU it runs.
unsafe impl Send for DataBuffer {}
// SAFETY: as for Send: shared references to it only read the address.
unsafe impl Sync for DataBuffer {}

impl DataBuffer {
    pub const NONE: DataBuffer = DataBuffer {
        device_address: 0,
        ptr: core::ptr::null_mut(),
        len: 0,
        direction: DataDirection::None,
    };
}

/// SRB_STATUS_*: how the port and miniport ended a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrbStatus {
    /// Not completed yet.
    Pending,
    Success,
    /// The target returned a SCSI status other than GOOD (see `scsi_status`, sense).
    Error,
    BusReset,
    Aborted,
    Timeout,
    /// SRB_STATUS_SELECTION_TIMEOUT / NO_DEVICE: no such target or LU.
    SelectionTimeout,
    InvalidRequest,
    DataOverrun,
    Busy,
    /// The HBA failed the request (transport or target failure).
    HbaError,
}

impl SrbStatus {
    pub const fn name(self) -> &'static str {
        match self {
            SrbStatus::Pending => "pending",
            SrbStatus::Success => "success",
            SrbStatus::Error => "error",
            SrbStatus::BusReset => "bus_reset",
            SrbStatus::Aborted => "aborted",
            SrbStatus::Timeout => "timeout",
            SrbStatus::SelectionTimeout => "selection_timeout",
            SrbStatus::InvalidRequest => "invalid_request",
            SrbStatus::DataOverrun => "data_overrun",
            SrbStatus::Busy => "busy",
            SrbStatus::HbaError => "hba_error",
        }
    }
}

/// SCSI status codes (SAM).
pub mod scsi_status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
}

/// A SCSI request block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Srb {
    pub path: u8,
    pub target: u8,
    pub lun: u8,
    pub cdb: [u8; MAX_CDB],
    pub cdb_len: u8,
    pub data: DataBuffer,
    pub srb_status: SrbStatus,
    pub scsi_status: u8,
    pub sense: [u8; SENSE_BUFFER_LEN],
    /// Valid sense bytes.
    pub sense_len: u8,
    /// Bytes actually transferred, set at completion (the request's length minus the
    /// residual).
    pub data_transfer_length: u32,
    /// Set by the port at submission.
    pub tag: Tag,
    /// TimeOutValue: the port resets the bus when the SRB stays outstanding longer (P1).
    pub timeout_us: u32,
}

impl Srb {
    /// An SRB for `cdb` (truncated to [`MAX_CDB`]) to the given LU.
    pub fn new(path: u8, target: u8, lun: u8, cdb: &[u8], data: DataBuffer) -> Srb {
        let mut c = [0; MAX_CDB];
        let n = cdb.len().min(MAX_CDB);
        c[..n].copy_from_slice(&cdb[..n]);
        Srb {
            path,
            target,
            lun,
            cdb: c,
            cdb_len: n as u8,
            data,
            srb_status: SrbStatus::Pending,
            scsi_status: scsi_status::GOOD,
            sense: [0; SENSE_BUFFER_LEN],
            sense_len: 0,
            data_transfer_length: 0,
            tag: 0,
            timeout_us: DEFAULT_SRB_TIMEOUT_US,
        }
    }

    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..usize::from(self.cdb_len)]
    }

    pub fn sense(&self) -> &[u8] {
        &self.sense[..usize::from(self.sense_len)]
    }

    /// Sense key of fixed or descriptor format sense data, if any.
    pub fn sense_key(&self) -> Option<u8> {
        let s = self.sense();
        match s.first().map(|b| b & 0x7f) {
            Some(0x70 | 0x71) => s.get(2).map(|b| b & 0xf),
            Some(0x72 | 0x73) => s.get(1).map(|b| b & 0xf),
            _ => None,
        }
    }

    pub(super) fn lu(&self) -> LuAddress {
        LuAddress {
            path: self.path,
            target: self.target,
            lun: self.lun,
        }
    }
}

/// An SRB the miniport holds between HwStartIo and RequestComplete. It can be neither
/// copied nor cloned, and [`PortContext::request_complete`] takes it by value: after
/// completion the miniport has nothing left to touch the SRB with (N1).
///
/// [`PortContext::request_complete`]: super::PortContext::request_complete
///
/// The correct order compiles:
/// ```
/// use guest_miniport::port::{PortContext, SrbHandle, SrbStatus};
/// fn complete(ctx: &mut PortContext<'_>, srb: SrbHandle) {
///     ctx.srb_mut(&srb).srb_status = SrbStatus::Success;
///     ctx.request_complete(srb);
/// }
/// ```
/// N1's mutant, touching the SRB after RequestComplete, does not:
/// ```compile_fail,E0382
/// use guest_miniport::port::{PortContext, SrbHandle, SrbStatus};
/// fn complete(ctx: &mut PortContext<'_>, srb: SrbHandle) {
///     ctx.request_complete(srb);
///     ctx.srb_mut(&srb).srb_status = SrbStatus::Success;
/// }
/// ```
/// nor does keeping a copy to complete it twice:
/// ```compile_fail,E0599
/// use guest_miniport::port::{PortContext, SrbHandle};
/// fn complete(ctx: &mut PortContext<'_>, srb: SrbHandle) {
///     let kept = srb.clone();
///     ctx.request_complete(srb);
///     ctx.request_complete(kept);
/// }
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct SrbHandle {
    pub(super) slot: u8,
    pub(super) tag: Tag,
}

impl SrbHandle {
    pub fn tag(&self) -> Tag {
        self.tag
    }
}

/// Path, target, LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LuAddress {
    pub path: u8,
    pub target: u8,
    pub lun: u8,
}
