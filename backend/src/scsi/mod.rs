//! The SCSI target model: targets with file- or RAM-backed LUNs, SPC/SBC commands, sense
//! data and unit attention. It knows nothing about virtio: data moves through [`DataIn`]
//! and [`DataOut`], which the transport implements over guest memory.

mod image;
mod lun;
mod sbc;
pub mod sense;
mod spc;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use self::lun::{memory_serial, ua};
pub use self::lun::{Backing, Lun, LunAddress, LunSpec, LunSpecError, BLOCK_SIZE};
use self::sense::{status, Sense, SenseFormat};
pub use self::spc::single_level_lun;

/// Flat-space LUNs are 14 bits wide (SAM-5 4.7.7).
pub const MAX_LUNS: usize = 0x4000;

/// Operation codes (SPC-4 / SBC-3).
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const VERIFY_10: u8 = 0x2f;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const VERIFY_16: u8 = 0x8f;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const VERIFY_12: u8 = 0xaf;
    /// Service action of SERVICE ACTION IN(16) for READ CAPACITY(16).
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    /// Service action of MAINTENANCE IN for REPORT SUPPORTED OPERATION CODES.
    pub const MI_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
}

#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    #[error("could not open LUN backing file {path}")]
    CouldNotOpenLun {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create the memory for a RAM-backed LUN")]
    CouldNotCreateMemoryLun(#[source] std::io::Error),
    #[error("could not read the size of LUN backing {name}")]
    CouldNotSizeLun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("LUN backing {path} is {kind}: only regular files and block devices can back a LU")]
    NotAnImage { path: PathBuf, kind: &'static str },
    #[error("LUN backing {path} is locked: held by {holder} (QEMU or another backend)")]
    Locked { path: PathBuf, holder: &'static str },
    #[error("LUN backing {0} is smaller than one block")]
    LunTooSmall(String),
    #[error("LU {name}: {blocks} blocks of {block_size} bytes is not a size a backing can have (1 to {} blocks)", i64::MAX as u64 / u64::from(*.block_size))]
    InvalidCapacity {
        name: String,
        blocks: u64,
        block_size: u32,
    },
    #[error("block size {0} is not supported (512 or 4096)")]
    InvalidBlockSize(u32),
    #[error("too many LUNs: {0} (at most {MAX_LUNS})")]
    TooManyLuns(usize),
    #[error("two LUNs at target {} LUN {}", .0.target, .0.lun)]
    DuplicateLunAddress(LunAddress),
    #[error("LUN {} is beyond the 14-bit flat space", .0.lun)]
    LunOutOfRange(LunAddress),
    #[error("no LU at target {} LUN {}", .0.target, .0.lun)]
    NoSuchLu(LunAddress),
    #[error("could not resize the backing of LU {name}")]
    CouldNotResizeLun {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl ScsiError {
    /// Whether the backend refused what it was given (a file that cannot be a LU, an image
    /// in use, a bad geometry or address), rather than failed to do something with it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ScsiError::NotAnImage { .. }
                | ScsiError::Locked { .. }
                | ScsiError::LunTooSmall(_)
                | ScsiError::InvalidCapacity { .. }
                | ScsiError::InvalidBlockSize(_)
                | ScsiError::TooManyLuns(_)
                | ScsiError::DuplicateLunAddress(_)
                | ScsiError::LunOutOfRange(_)
        )
    }
}

/// Why moving data between a LUN file and the initiator's buffer failed.
#[derive(Debug)]
pub enum DataError {
    /// Guest memory could not be accessed: a transport problem, not a medium problem.
    Buffer(std::io::Error),
    /// The backing file failed: reported as a medium error.
    File(std::io::Error),
}

/// The initiator's data-in buffer (device to initiator).
pub trait DataIn {
    /// Bytes left in the buffer.
    fn remaining(&self) -> usize;
    /// Copies `buf` into the buffer; the caller keeps `buf.len() <= remaining()`.
    fn write_bytes(&mut self, buf: &[u8]) -> Result<(), DataError>;
    /// Copies `len` bytes of `file` at `offset` into the buffer (`len <= remaining()`).
    fn write_from_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError>;
}

/// The initiator's data-out buffer (initiator to device).
pub trait DataOut {
    /// Bytes left in the buffer.
    fn remaining(&self) -> usize;
    /// Copies the next `buf.len()` bytes of the buffer into `buf` (`<= remaining()`).
    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<(), DataError>;
    /// Copies `len` bytes of the buffer into `file` at `offset` (`len <= remaining()`).
    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError>;
}

/// A finished command: SAM status plus autosense data when the status is CHECK CONDITION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdOutcome {
    pub status: u8,
    pub sense: Option<Sense>,
    /// The format the LU's control mode page (D_SENSE) asks for.
    pub sense_format: SenseFormat,
}

impl CmdOutcome {
    pub const GOOD: CmdOutcome = CmdOutcome {
        status: status::GOOD,
        sense: None,
        sense_format: SenseFormat::Fixed,
    };

    pub fn check_condition(sense: Sense) -> Self {
        CmdOutcome {
            status: status::CHECK_CONDITION,
            sense: Some(sense),
            sense_format: SenseFormat::Fixed,
        }
    }

    /// Writes the autosense data in the LU's format into `out`; returns its length (0
    /// without sense).
    pub fn sense_bytes(&self, out: &mut [u8]) -> usize {
        self.sense.map_or(0, |s| s.encode(self.sense_format, out))
    }
}

/// A command that could not reach the SCSI layer's own status: the transport reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum CmdError {
    /// No LU with this number (and, for [`Target::execute_at`], no such target).
    NoSuchLun(u16),
    /// The data-in buffer is smaller than the transfer the CDB asks for.
    DataInTooSmall { needed: u64, available: usize },
    /// The data-out buffer is smaller than the transfer the CDB asks for.
    DataOutTooSmall { needed: u64, available: usize },
    /// Guest memory could not be accessed during the transfer.
    BufferAccess(String),
}

type CmdResult = Result<CmdOutcome, CmdError>;
type Handler = fn(&Target, &Lun, &[u8], &mut dyn DataIn, &mut dyn DataOut) -> CmdResult;

/// Command flags of the table.
mod flag {
    /// Neither reports nor clears a unit attention (SPC-4 5.14: INQUIRY, REPORT LUNS,
    /// REQUEST SENSE).
    pub const UA_EXEMPT: u8 = 1 << 0;
    /// Touches the medium: NOT READY while the LU is stopped.
    pub const MEDIUM: u8 = 1 << 1;
    /// Offered only on LUs whose backing can punch holes.
    pub const NEEDS_PUNCH: u8 = 1 << 2;
}

/// One implemented command. The dispatcher and REPORT SUPPORTED OPERATION CODES both read
/// [`COMMANDS`], so the list reported is the list served.
pub struct Command {
    pub opcode: u8,
    pub service_action: Option<u8>,
    pub name: &'static str,
    /// CDB usage data (SPC-4 6.35.3): its length is the CDB length.
    pub usage: &'static [u8],
    flags: u8,
    handler: Handler,
}

impl Command {
    /// Whether `lu` offers this command.
    pub fn offered_by(&self, lu: &Lun) -> bool {
        self.flags & flag::NEEDS_PUNCH == 0 || lu.can_punch()
    }
}

const fn cmd(
    opcode: u8,
    service_action: Option<u8>,
    name: &'static str,
    usage: &'static [u8],
    flags: u8,
    handler: Handler,
) -> Command {
    Command {
        opcode,
        service_action,
        name,
        usage,
        flags,
        handler,
    }
}

use self::flag::{MEDIUM, NEEDS_PUNCH, UA_EXEMPT};
use self::opcode as op;

/// Every command the target implements, by opcode and service action. One line per
/// command keeps the table readable.
#[rustfmt::skip]
pub static COMMANDS: &[Command] = &[
    cmd(op::TEST_UNIT_READY, None, "TEST UNIT READY", &[0x00, 0, 0, 0, 0, 0], MEDIUM, spc::test_unit_ready),
    cmd(op::REQUEST_SENSE, None, "REQUEST SENSE", &[0x03, 0x01, 0, 0, 0xff, 0], UA_EXEMPT, spc::request_sense),
    cmd(op::READ_6, None, "READ(6)", &[0x08, 0x1f, 0xff, 0xff, 0xff, 0], MEDIUM, sbc::read),
    cmd(op::WRITE_6, None, "WRITE(6)", &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0], MEDIUM, sbc::write),
    cmd(op::INQUIRY, None, "INQUIRY", &[0x12, 0x01, 0xff, 0xff, 0xff, 0], UA_EXEMPT, spc::inquiry),
    cmd(op::MODE_SENSE_6, None, "MODE SENSE(6)", &[0x1a, 0x08, 0xff, 0xff, 0xff, 0], 0, spc::mode_sense),
    cmd(op::START_STOP_UNIT, None, "START STOP UNIT", &[0x1b, 0x01, 0, 0x0f, 0xf7, 0], 0, sbc::start_stop_unit),
    cmd(op::READ_CAPACITY_10, None, "READ CAPACITY(10)", &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], MEDIUM, sbc::read_capacity_10),
    cmd(op::READ_10, None, "READ(10)", &[0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0], MEDIUM, sbc::read),
    cmd(op::WRITE_10, None, "WRITE(10)", &[0x2a, 0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0], MEDIUM, sbc::write),
    cmd(op::VERIFY_10, None, "VERIFY(10)", &[0x2f, 0x06, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0], MEDIUM, sbc::verify),
    cmd(op::SYNCHRONIZE_CACHE_10, None, "SYNCHRONIZE CACHE(10)", &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0], MEDIUM, sbc::synchronize_cache),
    cmd(op::WRITE_SAME_10, None, "WRITE SAME(10)", &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0], MEDIUM, sbc::write_same),
    cmd(op::UNMAP, None, "UNMAP", &[0x42, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0], MEDIUM | NEEDS_PUNCH, sbc::unmap),
    cmd(op::MODE_SENSE_10, None, "MODE SENSE(10)", &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0], 0, spc::mode_sense),
    cmd(op::READ_16, None, "READ(16)", &[0x88, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::read),
    cmd(op::WRITE_16, None, "WRITE(16)", &[0x8a, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::write),
    cmd(op::VERIFY_16, None, "VERIFY(16)", &[0x8f, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::verify),
    cmd(op::SYNCHRONIZE_CACHE_16, None, "SYNCHRONIZE CACHE(16)", &[0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::synchronize_cache),
    cmd(op::WRITE_SAME_16, None, "WRITE SAME(16)", &[0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::write_same),
    cmd(op::SERVICE_ACTION_IN_16, Some(op::SAI_READ_CAPACITY_16), "READ CAPACITY(16)", &[0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::read_capacity_16),
    cmd(op::REPORT_LUNS, None, "REPORT LUNS", &[0xa0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], UA_EXEMPT, spc::report_luns),
    cmd(op::MAINTENANCE_IN, Some(op::MI_REPORT_SUPPORTED_OPERATION_CODES), "REPORT SUPPORTED OPERATION CODES", &[0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], 0, spc::report_supported_operation_codes),
    cmd(op::READ_12, None, "READ(12)", &[0xa8, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::read),
    cmd(op::WRITE_12, None, "WRITE(12)", &[0xaa, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::write),
    cmd(op::VERIFY_12, None, "VERIFY(12)", &[0xaf, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], MEDIUM, sbc::verify),
];

/// Whether any command of the table uses service actions under `opcode`.
fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// The table entry for a CDB: `Err` carries the sense for an unknown opcode or service
/// action.
fn lookup(cdb: &[u8]) -> Result<&'static Command, Sense> {
    let opcode = cdb_byte(cdb, 0);
    let sa = cdb_byte(cdb, 1) & 0x1f;
    let mut opcode_known = false;
    for c in COMMANDS.iter().filter(|c| c.opcode == opcode) {
        opcode_known = true;
        match c.service_action {
            None => return Ok(c),
            Some(s) if s == sa => return Ok(c),
            Some(_) => {}
        }
    }
    Err(if opcode_known {
        Sense::INVALID_FIELD_IN_CDB
    } else {
        Sense::INVALID_COMMAND_OPERATION_CODE
    })
}

/// A change of the bus made at run time, for the transport to announce (virtio-scsi
/// turns them into event-queue events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LuChange {
    Added(LunAddress),
    Removed(LunAddress),
    CapacityChanged(LunAddress),
}

/// The backend's SCSI bus: LUs on one or more targets. The name is historical (one target
/// at first); a transport addresses LUs with [`LunAddress`].
#[derive(Debug)]
pub struct Target {
    /// Sorted by address. LUs come and go at run time: a command clones the `Arc` of its
    /// LU under the read lock and runs without it, so a removed LU stays open until the
    /// commands already on it finish.
    luns: RwLock<Vec<Arc<Lun>>>,
    /// Changes not yet taken by the transport, oldest first.
    changes: Mutex<Vec<LuChange>>,
    /// `changes` is not empty: one relaxed load on the transport's poll path.
    changed: AtomicBool,
}

impl Target {
    /// Places every LU: those without an address go to the next free LUN of target 0, in
    /// order. No unit attention is pending: call [`Target::power_on`] for that.
    pub fn new(luns: Vec<Lun>) -> Result<Self, ScsiError> {
        if luns.len() > MAX_LUNS {
            return Err(ScsiError::TooManyLuns(luns.len()));
        }
        let mut placed: Vec<Lun> = Vec::with_capacity(luns.len());
        let (fixed, auto): (Vec<Lun>, Vec<Lun>) =
            luns.into_iter().partition(|l| l.address.is_some());
        for lu in fixed {
            let addr = lu.address.unwrap_or(LunAddress { target: 0, lun: 0 });
            if usize::from(addr.lun) >= MAX_LUNS {
                return Err(ScsiError::LunOutOfRange(addr));
            }
            if placed.iter().any(|p| p.address == Some(addr)) {
                return Err(ScsiError::DuplicateLunAddress(addr));
            }
            placed.push(lu);
        }
        for mut lu in auto {
            let addr = next_free(placed.iter().filter_map(|p| p.address))?;
            lu.address = Some(addr);
            placed.push(lu);
        }
        for lu in &mut placed {
            set_memory_serial(lu);
        }
        placed.sort_by_key(|l| l.address);
        Ok(Target {
            luns: RwLock::new(placed.into_iter().map(Arc::new).collect()),
            changes: Mutex::new(Vec::new()),
            changed: AtomicBool::new(false),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<Lun>>> {
        self.luns.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The LU at LUN `lun` of target 0.
    pub fn lun(&self, lun: u16) -> Option<Arc<Lun>> {
        self.lu(LunAddress { target: 0, lun })
    }

    /// The LU at `addr`: a read lock and one reference count, no allocation.
    pub fn lu(&self, addr: LunAddress) -> Option<Arc<Lun>> {
        let luns = self.read();
        luns.binary_search_by_key(&Some(addr), |l| l.address)
            .ok()
            .map(|i| luns[i].clone())
    }

    /// Whether an LU is at `addr`.
    pub fn has_lu(&self, addr: LunAddress) -> bool {
        self.read()
            .binary_search_by_key(&Some(addr), |l| l.address)
            .is_ok()
    }

    /// Whether target `id` has any LU (a command to one of its absent LUNs still gets a
    /// SCSI answer).
    pub fn has_target(&self, id: u8) -> bool {
        self.read()
            .iter()
            .any(|l| l.address.is_some_and(|a| a.target == id))
    }

    pub fn lun_count(&self) -> usize {
        self.read().len()
    }

    /// Every LU with its address, in address order, as they are now.
    pub fn luns(&self) -> impl Iterator<Item = (LunAddress, Arc<Lun>)> {
        let snapshot: Vec<_> = self
            .read()
            .iter()
            .filter_map(|l| l.address.map(|a| (a, l.clone())))
            .collect();
        snapshot.into_iter()
    }

    /// Hot-adds `lu` at its address, or at the next free LUN of target 0 without one. The
    /// new LU is started and reports POWER ON first, as after a power on; the transport
    /// learns of it through [`Target::take_changes`].
    pub fn add_lu(&self, mut lu: Lun) -> Result<LunAddress, ScsiError> {
        let mut luns = self.luns.write().unwrap_or_else(PoisonError::into_inner);
        if luns.len() >= MAX_LUNS {
            return Err(ScsiError::TooManyLuns(luns.len() + 1));
        }
        let addr = match lu.address {
            Some(addr) if usize::from(addr.lun) >= MAX_LUNS => {
                return Err(ScsiError::LunOutOfRange(addr))
            }
            Some(addr) => addr,
            None => next_free(luns.iter().filter_map(|l| l.address))?,
        };
        let at = match luns.binary_search_by_key(&Some(addr), |l| l.address) {
            Ok(_) => return Err(ScsiError::DuplicateLunAddress(addr)),
            Err(at) => at,
        };
        lu.address = Some(addr);
        set_memory_serial(&mut lu);
        lu.set_stopped(false);
        lu.raise_ua(ua::POWER_ON);
        luns.insert(at, Arc::new(lu));
        drop(luns);
        self.record(LuChange::Added(addr));
        Ok(addr)
    }

    /// Hot-removes the LU at `addr`. Commands already running on it finish; later ones
    /// find no LU.
    pub fn remove_lu(&self, addr: LunAddress) -> Result<Arc<Lun>, ScsiError> {
        let mut luns = self.luns.write().unwrap_or_else(PoisonError::into_inner);
        let at = luns
            .binary_search_by_key(&Some(addr), |l| l.address)
            .map_err(|_| ScsiError::NoSuchLu(addr))?;
        let lu = luns.remove(at);
        drop(luns);
        self.record(LuChange::Removed(addr));
        Ok(lu)
    }

    fn record(&self, change: LuChange) {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
        self.changed.store(true, Ordering::Release);
    }

    /// Whether changes wait for [`Target::take_changes`] (cheap: one atomic load).
    pub fn has_changes(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    /// The changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<LuChange> {
        if !self.has_changes() {
            return Vec::new();
        }
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed.store(false, Ordering::Release);
        std::mem::take(&mut *changes)
    }

    /// Power on: every LU reports POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00) and
    /// is started.
    /// Changes not yet announced are dropped: a new initiator scans the bus anyway.
    pub fn power_on(&self) {
        drop(self.take_changes());
        for lu in self.read().iter() {
            lu.set_stopped(false);
            lu.raise_ua(ua::POWER_ON);
        }
    }

    /// LOGICAL UNIT RESET: the LU reports 29/03 next.
    pub fn lu_reset(&self, addr: LunAddress) -> Result<(), ScsiError> {
        self.lu(addr)
            .ok_or(ScsiError::NoSuchLu(addr))?
            .raise_ua(ua::LU_RESET);
        Ok(())
    }

    /// I_T NEXUS RESET of the single initiator and target `id`: every LU of that target
    /// reports 29/07 next. Each target is its own SCSI target device, so the nexus with
    /// another target is not touched (SAM-5 7.4; QEMU resets only that target's devices).
    pub fn nexus_reset(&self, id: u8) {
        for lu in self.read().iter() {
            if lu.address.is_some_and(|a| a.target == id) {
                lu.raise_ua(ua::I_T_NEXUS_LOSS);
            }
        }
    }

    /// Resizes the LU's backing to `blocks` blocks and raises CAPACITY DATA HAS CHANGED.
    pub fn set_capacity(&self, addr: LunAddress, blocks: u64) -> Result<(), ScsiError> {
        let lu = self.lu(addr).ok_or(ScsiError::NoSuchLu(addr))?;
        // A file's length is an off_t.
        let bytes = blocks
            .checked_mul(u64::from(lu.block_size()))
            .filter(|&b| b > 0 && i64::try_from(b).is_ok())
            .ok_or_else(|| ScsiError::InvalidCapacity {
                name: lu.name().to_owned(),
                blocks,
                block_size: lu.block_size(),
            })?;
        lu.file
            .set_len(bytes)
            .map_err(|source| ScsiError::CouldNotResizeLun {
                name: lu.name().to_owned(),
                source,
            })?;
        lu.set_blocks(blocks);
        lu.raise_ua(ua::CAPACITY_CHANGED);
        self.record(LuChange::CapacityChanged(addr));
        Ok(())
    }

    /// Re-reads the backing's size (for a file grown or shrunk from outside); a change
    /// raises CAPACITY DATA HAS CHANGED. Returns whether the capacity changed.
    pub fn refresh_capacity(&self, addr: LunAddress) -> Result<bool, ScsiError> {
        let lu = self.lu(addr).ok_or(ScsiError::NoSuchLu(addr))?;
        let len = lu
            .backing_len()
            .map_err(|source| ScsiError::CouldNotSizeLun {
                name: lu.name().to_owned(),
                source,
            })?;
        let blocks = len / u64::from(lu.block_size());
        if blocks == 0 || blocks == lu.blocks() {
            return Ok(false);
        }
        lu.set_blocks(blocks);
        lu.raise_ua(ua::CAPACITY_CHANGED);
        self.record(LuChange::CapacityChanged(addr));
        Ok(true)
    }

    /// [`Target::refresh_capacity`] of every LU: the addresses whose capacity changed,
    /// and those whose backing could not be sized.
    pub fn rescan(&self) -> (Vec<LunAddress>, Vec<(LunAddress, ScsiError)>) {
        let (mut changed, mut failed) = (Vec::new(), Vec::new());
        for (addr, _) in self.luns() {
            match self.refresh_capacity(addr) {
                Ok(true) => changed.push(addr),
                Ok(false) => {}
                // Removed meanwhile: nothing to refresh.
                Err(ScsiError::NoSuchLu(_)) => {}
                Err(e) => failed.push((addr, e)),
            }
        }
        (changed, failed)
    }

    /// Whether `addr` has a unit attention pending (for tests and the trace).
    pub fn unit_attention_pending(&self, addr: LunAddress) -> bool {
        self.lu(addr).is_some_and(|lu| lu.ua_pending())
    }

    /// Executes one CDB on LUN `lun` of target 0.
    pub fn execute(
        &self,
        lun: u16,
        cdb: &[u8],
        data_in: &mut dyn DataIn,
        data_out: &mut dyn DataOut,
    ) -> Result<CmdOutcome, CmdError> {
        self.execute_at(LunAddress { target: 0, lun }, cdb, data_in, data_out)
    }

    /// Executes one CDB. Guest mistakes in the CDB become CHECK CONDITION with sense data;
    /// only buffer problems and an absent target come back as [`CmdError`]. An absent LUN
    /// of a present target answers INQUIRY (peripheral qualifier 3), REPORT LUNS and
    /// REQUEST SENSE, and LOGICAL UNIT NOT SUPPORTED otherwise (SPC-4 4.6.4).
    pub fn execute_at(
        &self,
        addr: LunAddress,
        cdb: &[u8],
        data_in: &mut dyn DataIn,
        data_out: &mut dyn DataOut,
    ) -> Result<CmdOutcome, CmdError> {
        let Some(lu) = self.lu(addr) else {
            if !self.has_target(addr.target) {
                return Err(CmdError::NoSuchLun(addr.lun));
            }
            return spc::absent_lun(self, addr, cdb, data_in);
        };
        self.execute_on(&lu, cdb, data_in, data_out)
    }

    /// Executes one CDB on `lu`, an LU the caller found with [`Target::lu`] (one lookup
    /// per command on the transport's path).
    pub fn execute_on(
        &self,
        lu: &Lun,
        cdb: &[u8],
        data_in: &mut dyn DataIn,
        data_out: &mut dyn DataOut,
    ) -> Result<CmdOutcome, CmdError> {
        let mut outcome = self.dispatch(lu, cdb, data_in, data_out)?;
        outcome.sense_format = lu.sense_format();
        Ok(outcome)
    }

    fn dispatch(
        &self,
        lu: &Lun,
        cdb: &[u8],
        data_in: &mut dyn DataIn,
        data_out: &mut dyn DataOut,
    ) -> CmdResult {
        let command = lookup(cdb);
        let exempt = command.as_ref().is_ok_and(|c| c.flags & UA_EXEMPT != 0);
        // A pending UA goes to the first command that is not exempt, known or not
        // (SAM-5 5.14; the guest miniport retries once, Linux handles it).
        if !exempt {
            if let Some(sense) = lu.take_ua() {
                return Ok(CmdOutcome::check_condition(sense));
            }
        }
        let command = match command {
            Ok(c) if c.offered_by(lu) => c,
            Ok(_) => {
                return Ok(CmdOutcome::check_condition(
                    Sense::INVALID_COMMAND_OPERATION_CODE,
                ))
            }
            Err(sense) => return Ok(CmdOutcome::check_condition(sense)),
        };
        if command.flags & MEDIUM != 0 && lu.stopped() {
            return Ok(CmdOutcome::check_condition(
                Sense::NOT_READY_INITIALIZING_COMMAND_REQUIRED,
            ));
        }
        (command.handler)(self, lu, cdb, data_in, data_out)
    }
}

/// The first free LUN of target 0 among `taken`.
fn next_free(taken: impl Iterator<Item = LunAddress> + Clone) -> Result<LunAddress, ScsiError> {
    (0..MAX_LUNS as u16)
        .map(|lun| LunAddress { target: 0, lun })
        .find(|a| !taken.clone().any(|t| t == *a))
        .ok_or(ScsiError::TooManyLuns(MAX_LUNS + 1))
}

/// A RAM-backed LU's serial depends on its address, known only once placed.
fn set_memory_serial(lu: &mut Lun) {
    if let (Some(bytes), Some(addr)) = (lu.memory_bytes(), lu.address) {
        lu.set_serial(memory_serial(addr, bytes));
    }
}

/// Writes as much of `data` as `budget` allows (allocation length and buffer size).
fn put_truncated(
    data_in: &mut dyn DataIn,
    data: &[u8],
    budget: &mut usize,
) -> Result<(), CmdError> {
    let n = data.len().min(*budget);
    data_in.write_bytes(&data[..n]).map_err(buffer_error)?;
    *budget -= n;
    Ok(())
}

/// Writes `data` cut to the allocation length and the buffer: the rest is the residual.
fn put_alloc(data_in: &mut dyn DataIn, data: &[u8], alloc: usize) -> Result<(), CmdError> {
    let mut budget = alloc.min(data_in.remaining());
    put_truncated(data_in, data, &mut budget)
}

fn buffer_error(e: DataError) -> CmdError {
    match e {
        DataError::Buffer(e) | DataError::File(e) => CmdError::BufferAccess(e.to_string()),
    }
}

/// CDB fields past the CDB's end read as zero, so a short CDB cannot panic the target.
fn cdb_byte(cdb: &[u8], i: usize) -> u8 {
    cdb.get(i).copied().unwrap_or(0)
}

fn be_u16(cdb: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([cdb_byte(cdb, at), cdb_byte(cdb, at + 1)])
}

fn be_u32(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(std::array::from_fn(|i| cdb_byte(cdb, at + i)))
}

fn be_u64(cdb: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(std::array::from_fn(|i| cdb_byte(cdb, at + i)))
}

#[cfg(test)]
pub(crate) mod tests;
