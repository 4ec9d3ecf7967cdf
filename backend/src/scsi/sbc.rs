//! Block commands (SBC-3): READ CAPACITY, READ/WRITE 6/10/12/16 with FUA, VERIFY,
//! SYNCHRONIZE CACHE, WRITE SAME, UNMAP and START STOP UNIT.

use std::os::unix::fs::FileExt;

use log::warn;

use super::lun::punch_hole;
use super::spc::{MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS};
use super::{
    be_u16, be_u32, be_u64, buffer_error, cdb_byte, opcode, put_alloc, CmdError, CmdOutcome,
    CmdResult, DataError, DataIn, DataOut, Lun, Sense, Target,
};

const OK: CmdResult = Ok(CmdOutcome::GOOD);

fn check(sense: Sense) -> CmdResult {
    Ok(CmdOutcome::check_condition(sense))
}

/// Largest block size: stack buffers for one block are this big.
const MAX_BLOCK: usize = 4096;
/// Step of the copies that cannot go straight between file and guest (VERIFY, WRITE SAME).
const STEP: usize = 64 * 1024;

/// The sense of a write the backing failed. A thin-provisioned LU (LBPME, provisioning
/// type 2 in VPD B2h: holes can be punched) that runs out of space says so, as SBC-4
/// asks: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07). Anything else is
/// MEDIUM ERROR, WRITE ERROR (03/0C/00).
///
/// What Linux does with each (drivers/scsi/scsi_error.c `scsi_check_sense`, scsi_lib.c
/// `scsi_io_completion_action` and `scsi_result_to_blk_status`): 03/0C/00 is retried
/// (NEEDS_RETRY: only MEDIUM ERROR with ASC 11h, 13h or 14h is final), up to the
/// command's allowed retries (sd: 5), and then fails as BLK_STS_IOERR, EIO to the writer:
/// a full disk looks like a failing one. 07/27/07 is final at once (SUCCESS with the
/// scsi-ml status NOSPC, ACTION_FAIL) and fails as BLK_STS_NOSPC, ENOSPC to the writer
/// ("critical space allocation error"), which file systems and dm-thin treat as out of
/// space.
fn write_failure(lu: &Lun, e: &std::io::Error) -> Sense {
    let no_space = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
    if no_space && lu.can_punch() {
        Sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT
    } else {
        Sense::WRITE_ERROR
    }
}

/// LBA and transfer length of a READ/WRITE/VERIFY CDB, by its length.
fn lba_and_blocks(cdb: &[u8]) -> (u64, u64) {
    match cdb_byte(cdb, 0) >> 5 {
        // 6-byte: 21-bit LBA; a length of 0 means 256 blocks (SBC-3 5.7).
        0 => {
            let lba = u64::from(cdb_byte(cdb, 1) & 0x1f) << 16 | u64::from(be_u16(cdb, 2));
            let n = match cdb_byte(cdb, 4) {
                0 => 256,
                n => u64::from(n),
            };
            (lba, n)
        }
        1 | 2 => (u64::from(be_u32(cdb, 2)), u64::from(be_u16(cdb, 7))),
        5 => (u64::from(be_u32(cdb, 2)), u64::from(be_u32(cdb, 6))),
        _ => (be_u64(cdb, 2), u64::from(be_u32(cdb, 10))),
    }
}

/// RDPROTECT/WRPROTECT/VRPROTECT: no protection information, so anything but 0 is invalid.
fn protect_field(cdb: &[u8]) -> bool {
    cdb_byte(cdb, 0) >> 5 != 0 && cdb_byte(cdb, 1) & 0xe0 != 0
}

/// FUA: bit 3 of byte 1 in the 10, 12 and 16-byte CDBs.
fn fua(cdb: &[u8]) -> bool {
    cdb_byte(cdb, 0) >> 5 != 0 && cdb_byte(cdb, 1) & 0x08 != 0
}

pub(super) fn read_capacity_10(
    _: &Target,
    lu: &Lun,
    _: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    // Above 2^32 blocks the initiator must use READ CAPACITY(16) (SBC-3 5.15.2).
    let last = u32::try_from(lu.blocks() - 1).unwrap_or(u32::MAX);
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&last.to_be_bytes());
    data[4..].copy_from_slice(&lu.block_size().to_be_bytes());
    put_alloc(data_in, &data, data.len())?;
    OK
}

pub(super) fn read_capacity_16(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let mut data = [0u8; 32];
    data[..8].copy_from_slice(&(lu.blocks() - 1).to_be_bytes());
    data[8..12].copy_from_slice(&lu.block_size().to_be_bytes());
    if lu.can_punch() {
        data[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    put_alloc(data_in, &data, be_u32(cdb, 10) as usize)?;
    OK
}

pub(super) fn read(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    if protect_field(cdb) {
        return check(Sense::INVALID_FIELD_IN_CDB);
    }
    let (lba, blocks) = lba_and_blocks(cdb);
    let Some((offset, len)) = lu.byte_range(lba, blocks) else {
        return check(Sense::LBA_OUT_OF_RANGE);
    };
    let available = data_in.remaining();
    if len > available as u64 {
        return Err(CmdError::DataInTooSmall {
            needed: len,
            available,
        });
    }
    // FUA on a read needs nothing: the page cache is coherent with the file.
    match data_in.write_from_file(&lu.file, offset, len as usize) {
        Ok(()) => OK,
        Err(DataError::File(e)) => {
            warn!("{}: read of LBA {lba} (+{blocks}) failed: {e}", lu.name());
            check(Sense::UNRECOVERED_READ_ERROR)
        }
        Err(e @ DataError::Buffer(_)) => Err(buffer_error(e)),
    }
}

pub(super) fn write(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &mut dyn DataOut,
) -> CmdResult {
    if lu.read_only() {
        return check(Sense::WRITE_PROTECTED);
    }
    if protect_field(cdb) {
        return check(Sense::INVALID_FIELD_IN_CDB);
    }
    let (lba, blocks) = lba_and_blocks(cdb);
    let Some((offset, len)) = lu.byte_range(lba, blocks) else {
        return check(Sense::LBA_OUT_OF_RANGE);
    };
    let available = data_out.remaining();
    if len > available as u64 {
        return Err(CmdError::DataOutTooSmall {
            needed: len,
            available,
        });
    }
    let result = data_out
        .read_to_file(&lu.file, offset, len as usize)
        .and_then(|()| {
            if fua(cdb) {
                lu.file.sync_data().map_err(DataError::File)
            } else {
                Ok(())
            }
        });
    match result {
        Ok(()) => OK,
        Err(DataError::File(e)) => {
            warn!("{}: write of LBA {lba} (+{blocks}) failed: {e}", lu.name());
            check(write_failure(lu, &e))
        }
        Err(e @ DataError::Buffer(_)) => Err(buffer_error(e)),
    }
}

/// VERIFY(10/12/16): BYTCHK 0 checks the range, 1 compares the data-out buffer with the
/// medium, 3 compares one block with every block of the range (SBC-3 5.27).
pub(super) fn verify(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &mut dyn DataOut,
) -> CmdResult {
    if protect_field(cdb) {
        return check(Sense::INVALID_FIELD_IN_CDB);
    }
    let bytchk = cdb_byte(cdb, 1) >> 1 & 0x03;
    let (lba, blocks) = lba_and_blocks(cdb);
    let Some((offset, len)) = lu.byte_range(lba, blocks) else {
        return check(Sense::LBA_OUT_OF_RANGE);
    };
    let bs = lu.block_size() as usize;
    let needed = match bytchk {
        0 => return OK,
        1 => len,
        3 => bs as u64,
        _ => return check(Sense::INVALID_FIELD_IN_CDB),
    };
    if len == 0 {
        return OK;
    }
    let available = data_out.remaining();
    if needed > available as u64 {
        return Err(CmdError::DataOutTooSmall { needed, available });
    }
    let mut expected = [0u8; STEP];
    let mut medium = [0u8; STEP];
    if bytchk == 3 {
        data_out
            .read_bytes(&mut expected[..bs])
            .map_err(buffer_error)?;
        // Spread the one block over the step so that each step compares whole blocks.
        for k in 1..STEP / bs {
            expected.copy_within(..bs, k * bs);
        }
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(STEP as u64) as usize;
        if bytchk == 1 {
            data_out
                .read_bytes(&mut expected[..n])
                .map_err(buffer_error)?;
        }
        if let Err(e) = lu.file.read_exact_at(&mut medium[..n], offset + done) {
            warn!("{}: verify of LBA {lba} (+{blocks}) failed: {e}", lu.name());
            return check(Sense::UNRECOVERED_READ_ERROR);
        }
        if let Some(i) = expected[..n]
            .iter()
            .zip(&medium[..n])
            .position(|(a, b)| a != b)
        {
            // INFORMATION: offset of the first miscompare in the data-out buffer (BYTCHK 1)
            // or on the medium from the first LBA (BYTCHK 3).
            let at = done + i as u64;
            return check(Sense::MISCOMPARE_DURING_VERIFY.with_information(at));
        }
        done += n as u64;
    }
    OK
}

/// SYNCHRONIZE CACHE(10/16) as fdatasync of the whole backing (SBC-3 5.22).
pub(super) fn synchronize_cache(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    _: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let (lba, blocks) = lba_and_blocks(cdb);
    // NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium".
    let blocks = if blocks == 0 {
        lu.blocks().saturating_sub(lba)
    } else {
        blocks
    };
    if lba >= lu.blocks() || lu.byte_range(lba, blocks).is_none() {
        return check(Sense::LBA_OUT_OF_RANGE);
    }
    match lu.file.sync_data() {
        Ok(()) => OK,
        Err(e) => {
            warn!("{}: synchronize cache failed: {e}", lu.name());
            check(write_failure(lu, &e))
        }
    }
}

/// WRITE SAME(10/16): the UNMAP bit punches a hole when the block is zeros and the LU can
/// (a hole reads back as zeros, LBPRZ); otherwise the block is written over the range.
pub(super) fn write_same(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &mut dyn DataOut,
) -> CmdResult {
    if lu.read_only() {
        return check(Sense::WRITE_PROTECTED);
    }
    let flags = cdb_byte(cdb, 1);
    let sixteen = cdb_byte(cdb, 0) == opcode::WRITE_SAME_16;
    // WRPROTECT and ANCHOR are not supported (ANC_SUP = 0 in VPD B2h).
    if flags & 0xf0 != 0 {
        return check(Sense::INVALID_FIELD_IN_CDB);
    }
    let unmap = flags & 0x08 != 0;
    let ndob = sixteen && flags & 0x01 != 0;
    let (lba, blocks) = if sixteen {
        (be_u64(cdb, 2), u64::from(be_u32(cdb, 10)))
    } else {
        (u64::from(be_u32(cdb, 2)), u64::from(be_u16(cdb, 7)))
    };
    // WSNZ = 1: zero blocks is invalid; above the advertised maximum too.
    if blocks == 0 || blocks > MAX_WRITE_SAME_BLOCKS {
        return check(Sense::INVALID_FIELD_IN_CDB);
    }
    let Some((offset, len)) = lu.byte_range(lba, blocks) else {
        return check(Sense::LBA_OUT_OF_RANGE);
    };
    let bs = lu.block_size() as usize;
    let mut block = [0u8; MAX_BLOCK];
    if !ndob {
        let available = data_out.remaining();
        if available < bs {
            return Err(CmdError::DataOutTooSmall {
                needed: bs as u64,
                available,
            });
        }
        data_out
            .read_bytes(&mut block[..bs])
            .map_err(buffer_error)?;
    }
    let zeros = block[..bs].iter().all(|&b| b == 0);
    if unmap && zeros && lu.can_punch() {
        return match punch_hole(&lu.file, offset, len) {
            Ok(()) => OK,
            Err(e) => {
                warn!("{}: WRITE SAME unmap failed: {e}", lu.name());
                check(write_failure(lu, &e))
            }
        };
    }
    let mut pattern = [0u8; STEP];
    for chunk in pattern.chunks_exact_mut(bs) {
        chunk.copy_from_slice(&block[..bs]);
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(STEP as u64) as usize;
        if let Err(e) = lu.file.write_all_at(&pattern[..n], offset + done) {
            warn!(
                "{}: WRITE SAME of LBA {lba} (+{blocks}) failed: {e}",
                lu.name()
            );
            return check(write_failure(lu, &e));
        }
        done += n as u64;
    }
    OK
}

/// UNMAP (SBC-3 5.28): every descriptor is checked before any hole is punched.
pub(super) fn unmap(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    _: &mut dyn DataIn,
    data_out: &mut dyn DataOut,
) -> CmdResult {
    if lu.read_only() {
        return check(Sense::WRITE_PROTECTED);
    }
    // ANCHOR is not supported (ANC_SUP = 0).
    if cdb_byte(cdb, 1) & 0x01 != 0 {
        return check(Sense::INVALID_FIELD_IN_CDB);
    }
    let param_len = usize::from(be_u16(cdb, 7));
    if param_len == 0 {
        return OK;
    }
    if param_len < 8 {
        return check(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let available = data_out.remaining();
    if param_len > available {
        return Err(CmdError::DataOutTooSmall {
            needed: param_len as u64,
            available,
        });
    }
    let mut header = [0u8; 8];
    data_out.read_bytes(&mut header).map_err(buffer_error)?;
    // Descriptors beyond the parameter list are ignored; a partial one is dropped.
    let desc_bytes = usize::from(be_u16(&header, 2)).min(param_len - 8) / 16 * 16;
    let count = desc_bytes / 16;
    if count > MAX_UNMAP_DESCRIPTORS {
        return check(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
    }
    let mut descs = [0u8; 16 * MAX_UNMAP_DESCRIPTORS];
    data_out
        .read_bytes(&mut descs[..desc_bytes])
        .map_err(buffer_error)?;
    let ranges = || {
        descs[..desc_bytes]
            .chunks_exact(16)
            .map(|d| (be_u64(d, 0), u64::from(be_u32(d, 8))))
    };
    if ranges().any(|(lba, n)| lu.byte_range(lba, n).is_none()) {
        return check(Sense::LBA_OUT_OF_RANGE);
    }
    for (lba, n) in ranges() {
        let Some((offset, len)) = lu.byte_range(lba, n) else {
            return check(Sense::LBA_OUT_OF_RANGE);
        };
        if len == 0 {
            continue;
        }
        if let Err(e) = punch_hole(&lu.file, offset, len) {
            warn!("{}: UNMAP of LBA {lba} (+{n}) failed: {e}", lu.name());
            return check(write_failure(lu, &e));
        }
    }
    OK
}

/// START STOP UNIT (SBC-3 5.25): START=0 stops the LU (medium commands then get NOT
/// READY, INITIALIZING COMMAND REQUIRED) after a flush unless NO_FLUSH; START=1 starts it.
pub(super) fn start_stop_unit(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    _: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let b4 = cdb_byte(cdb, 4);
    let power_condition = b4 >> 4;
    let no_flush = b4 & 0x04 != 0;
    let loej = b4 & 0x02 != 0;
    let start = b4 & 0x01 != 0;
    // Power conditions are not modelled: the LU stays active, which SBC-3 allows.
    if power_condition != 0 {
        return OK;
    }
    // The medium is not removable.
    if loej {
        return check(Sense::INVALID_FIELD_IN_CDB);
    }
    if !start && !no_flush {
        if let Err(e) = lu.file.sync_data() {
            warn!("{}: flush on stop failed: {e}", lu.name());
            return check(write_failure(lu, &e));
        }
    }
    lu.set_stopped(!start);
    OK
}
