//! The SCSI target model: one target (id 0) with file-backed LUNs, SPC/SBC commands and
//! sense data. It knows nothing about virtio: data moves through [`DataIn`] and [`DataOut`],
//! which the transport implements over guest memory.

pub mod sense;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use log::warn;

use self::sense::{status, Sense, FIXED_SENSE_LEN};

/// Logical block size of every LUN.
pub const BLOCK_SIZE: u64 = 512;
/// Flat-space LUNs are 14 bits wide (SAM-5 4.7.7).
pub const MAX_LUNS: usize = 0x4000;

/// Operation codes (SPC-4 / SBC-3).
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// Service action of SERVICE ACTION IN(16) for READ CAPACITY(16).
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
}

#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    #[error("could not open LUN backing file {path}")]
    CouldNotOpenLun {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the size of LUN backing file {path}")]
    CouldNotSizeLun {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("LUN backing file {0} is smaller than one block")]
    LunTooSmall(PathBuf),
    #[error("too many LUNs: {0} (at most {MAX_LUNS})")]
    TooManyLuns(usize),
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
    /// Copies `len` bytes of the buffer into `file` at `offset` (`len <= remaining()`).
    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError>;
}

/// A finished command: SAM status plus autosense data when the status is CHECK CONDITION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdOutcome {
    pub status: u8,
    pub sense: Option<Sense>,
}

impl CmdOutcome {
    pub const GOOD: CmdOutcome = CmdOutcome {
        status: status::GOOD,
        sense: None,
    };

    pub fn check_condition(sense: Sense) -> Self {
        CmdOutcome {
            status: status::CHECK_CONDITION,
            sense: Some(sense),
        }
    }
}

/// A command that could not reach the SCSI layer's own status: the transport reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum CmdError {
    /// No LU with this number.
    NoSuchLun(u16),
    /// The data-in buffer is smaller than the transfer the CDB asks for.
    DataInTooSmall { needed: u64, available: usize },
    /// The data-out buffer is smaller than the transfer the CDB asks for.
    DataOutTooSmall { needed: u64, available: usize },
    /// Guest memory could not be accessed during the transfer.
    BufferAccess(String),
}

/// A LUN backed by a regular file or block device.
#[derive(Debug)]
pub struct Lun {
    file: File,
    read_only: bool,
    /// Capacity in blocks; a partial trailing block of the file is not exposed.
    blocks: u64,
}

impl Lun {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ScsiError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| ScsiError::CouldNotOpenLun {
                path: path.to_owned(),
                source,
            })?;
        let size = file_size(&file).map_err(|source| ScsiError::CouldNotSizeLun {
            path: path.to_owned(),
            source,
        })?;
        let blocks = size / BLOCK_SIZE;
        if blocks == 0 {
            return Err(ScsiError::LunTooSmall(path.to_owned()));
        }
        Ok(Lun {
            file,
            read_only,
            blocks,
        })
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Size of a regular file or of a block device (whose metadata length is 0).
fn file_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// SCSI target 0 and its LUNs, numbered in the order given.
#[derive(Debug)]
pub struct Target {
    luns: Vec<Lun>,
}

impl Target {
    pub fn new(luns: Vec<Lun>) -> Result<Self, ScsiError> {
        if luns.len() > MAX_LUNS {
            return Err(ScsiError::TooManyLuns(luns.len()));
        }
        Ok(Target { luns })
    }

    pub fn lun(&self, lun: u16) -> Option<&Lun> {
        self.luns.get(usize::from(lun))
    }

    pub fn lun_count(&self) -> usize {
        self.luns.len()
    }

    /// Executes one CDB on `lun`. Guest mistakes in the CDB become CHECK CONDITION with
    /// sense data; only buffer problems and a missing LU come back as [`CmdError`].
    pub fn execute(
        &self,
        lun: u16,
        cdb: &[u8],
        data_in: &mut dyn DataIn,
        data_out: &mut dyn DataOut,
    ) -> Result<CmdOutcome, CmdError> {
        let lu = self.lun(lun).ok_or(CmdError::NoSuchLun(lun))?;
        let Some(&op) = cdb.first() else {
            return Ok(CmdOutcome::check_condition(
                Sense::INVALID_COMMAND_OPERATION_CODE,
            ));
        };
        match op {
            opcode::TEST_UNIT_READY => Ok(CmdOutcome::GOOD),
            opcode::REQUEST_SENSE => request_sense(cdb, data_in),
            opcode::INQUIRY => inquiry(cdb, data_in),
            opcode::REPORT_LUNS => self.report_luns(cdb, data_in),
            opcode::READ_CAPACITY_10 => read_capacity_10(lu, data_in),
            opcode::SERVICE_ACTION_IN_16 => match cdb_byte(cdb, 1) & 0x1f {
                opcode::SAI_READ_CAPACITY_16 => read_capacity_16(lu, cdb, data_in),
                _ => Ok(CmdOutcome::check_condition(Sense::INVALID_FIELD_IN_CDB)),
            },
            opcode::READ_10 => {
                let lba = u64::from(be_u32(cdb, 2));
                let blocks = u32::from(be_u16(cdb, 7));
                read(lu, lba, blocks, data_in)
            }
            opcode::READ_16 => read(lu, be_u64(cdb, 2), be_u32(cdb, 10), data_in),
            opcode::WRITE_10 => {
                let lba = u64::from(be_u32(cdb, 2));
                let blocks = u32::from(be_u16(cdb, 7));
                write(lu, lba, blocks, data_out)
            }
            opcode::WRITE_16 => write(lu, be_u64(cdb, 2), be_u32(cdb, 10), data_out),
            _ => Ok(CmdOutcome::check_condition(
                Sense::INVALID_COMMAND_OPERATION_CODE,
            )),
        }
    }

    fn report_luns(&self, cdb: &[u8], data_in: &mut dyn DataIn) -> Result<CmdOutcome, CmdError> {
        let alloc = be_u32(cdb, 6) as usize;
        // SPC-4 6.33: an allocation length below 16 is an invalid field.
        if alloc < 16 {
            return Ok(CmdOutcome::check_condition(Sense::INVALID_FIELD_IN_CDB));
        }
        let list_len = (self.luns.len() * 8) as u32;
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&list_len.to_be_bytes());
        let mut budget = alloc.min(data_in.remaining());
        put_truncated(data_in, &header, &mut budget)?;
        for n in 0..self.luns.len() {
            if budget == 0 {
                break;
            }
            put_truncated(data_in, &encode_report_lun(n as u16), &mut budget)?;
        }
        Ok(CmdOutcome::GOOD)
    }
}

/// One REPORT LUNS entry: peripheral addressing below 256, flat space above (SAM-5 4.7).
fn encode_report_lun(lun: u16) -> [u8; 8] {
    let mut e = [0u8; 8];
    if lun < 256 {
        e[1] = lun as u8;
    } else {
        e[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        e[1] = lun as u8;
    }
    e
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

fn put_alloc(data_in: &mut dyn DataIn, data: &[u8], alloc: usize) -> Result<(), CmdError> {
    let mut budget = alloc.min(data_in.remaining());
    put_truncated(data_in, data, &mut budget)
}

fn buffer_error(e: DataError) -> CmdError {
    match e {
        DataError::Buffer(e) | DataError::File(e) => CmdError::BufferAccess(e.to_string()),
    }
}

fn request_sense(cdb: &[u8], data_in: &mut dyn DataIn) -> Result<CmdOutcome, CmdError> {
    // DESC=1 asks for descriptor format, which we do not implement (SPC-4 6.39).
    if cdb_byte(cdb, 1) & 0x01 != 0 {
        return Ok(CmdOutcome::check_condition(Sense::INVALID_FIELD_IN_CDB));
    }
    // Sense is always delivered as autosense with the failing command, so nothing is
    // pending here.
    let data: [u8; FIXED_SENSE_LEN] = Sense::NO_SENSE.to_fixed();
    put_alloc(data_in, &data, usize::from(cdb_byte(cdb, 4)))?;
    Ok(CmdOutcome::GOOD)
}

/// Standard INQUIRY data length (SPC-4 6.6.2: additional length 31).
pub const INQUIRY_LEN: usize = 36;

fn inquiry(cdb: &[u8], data_in: &mut dyn DataIn) -> Result<CmdOutcome, CmdError> {
    // No VPD pages yet: EVPD=1 or a page code is an invalid field.
    if cdb_byte(cdb, 1) & 0x01 != 0 || cdb_byte(cdb, 2) != 0 {
        return Ok(CmdOutcome::check_condition(Sense::INVALID_FIELD_IN_CDB));
    }
    let mut data = [0u8; INQUIRY_LEN];
    data[0] = 0x00; // connected direct-access block device
    data[2] = 0x06; // SPC-4
    data[3] = 0x02; // response data format 2
    data[4] = (INQUIRY_LEN - 5) as u8;
    data[7] = 0x02; // CMDQUE: tagged queuing
    data[8..16].copy_from_slice(b"FLAKYHBA");
    data[16..32].copy_from_slice(b"VIRTUAL DISK    ");
    data[32..36].copy_from_slice(b"0001");
    put_alloc(data_in, &data, usize::from(be_u16(cdb, 3)))?;
    Ok(CmdOutcome::GOOD)
}

fn read_capacity_10(lu: &Lun, data_in: &mut dyn DataIn) -> Result<CmdOutcome, CmdError> {
    // Above 2^32 blocks the initiator must use READ CAPACITY(16) (SBC-3 5.15.2).
    let last = u32::try_from(lu.blocks - 1).unwrap_or(u32::MAX);
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&last.to_be_bytes());
    data[4..].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    put_alloc(data_in, &data, data.len())?;
    Ok(CmdOutcome::GOOD)
}

fn read_capacity_16(
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
) -> Result<CmdOutcome, CmdError> {
    let mut data = [0u8; 32];
    data[..8].copy_from_slice(&(lu.blocks - 1).to_be_bytes());
    data[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    put_alloc(data_in, &data, be_u32(cdb, 10) as usize)?;
    Ok(CmdOutcome::GOOD)
}

/// Byte offset and length of a block range, or LBA OUT OF RANGE.
fn block_range(lu: &Lun, lba: u64, blocks: u32) -> Option<(u64, u64)> {
    let end = lba.checked_add(u64::from(blocks))?;
    (end <= lu.blocks).then(|| (lba * BLOCK_SIZE, u64::from(blocks) * BLOCK_SIZE))
}

fn read(lu: &Lun, lba: u64, blocks: u32, data_in: &mut dyn DataIn) -> Result<CmdOutcome, CmdError> {
    let Some((offset, len)) = block_range(lu, lba, blocks) else {
        return Ok(CmdOutcome::check_condition(Sense::LBA_OUT_OF_RANGE));
    };
    let available = data_in.remaining();
    if len > available as u64 {
        return Err(CmdError::DataInTooSmall {
            needed: len,
            available,
        });
    }
    match data_in.write_from_file(&lu.file, offset, len as usize) {
        Ok(()) => Ok(CmdOutcome::GOOD),
        Err(DataError::File(e)) => {
            warn!("read of LBA {lba} (+{blocks}) failed: {e}");
            Ok(CmdOutcome::check_condition(Sense::UNRECOVERED_READ_ERROR))
        }
        Err(e @ DataError::Buffer(_)) => Err(buffer_error(e)),
    }
}

fn write(
    lu: &Lun,
    lba: u64,
    blocks: u32,
    data_out: &mut dyn DataOut,
) -> Result<CmdOutcome, CmdError> {
    if lu.read_only {
        return Ok(CmdOutcome::check_condition(Sense::WRITE_PROTECTED));
    }
    let Some((offset, len)) = block_range(lu, lba, blocks) else {
        return Ok(CmdOutcome::check_condition(Sense::LBA_OUT_OF_RANGE));
    };
    let available = data_out.remaining();
    if len > available as u64 {
        return Err(CmdError::DataOutTooSmall {
            needed: len,
            available,
        });
    }
    match data_out.read_to_file(&lu.file, offset, len as usize) {
        Ok(()) => Ok(CmdOutcome::GOOD),
        Err(DataError::File(e)) => {
            warn!("write of LBA {lba} (+{blocks}) failed: {e}");
            Ok(CmdOutcome::check_condition(Sense::WRITE_ERROR))
        }
        Err(e @ DataError::Buffer(_)) => Err(buffer_error(e)),
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
