//! What the runner needs of SCSI: READ/WRITE CDBs, the LBA an SRB names, the status
//! check of a completed SRB, and INQUIRY's text fields.

use core::fmt::{self, Write};

use crate::port::{Srb, SrbStatus};

use super::Failure;

/// The LBA of a READ/WRITE(10/16) SRB.
pub(super) fn srb_lba(srb: &Srb) -> u64 {
    let c = srb.cdb();
    match c.first() {
        Some(0x28 | 0x2a) if c.len() >= 6 => {
            u64::from(u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
        }
        Some(0x88 | 0x8a) if c.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c[2..10]);
            u64::from_be_bytes(b)
        }
        _ => 0,
    }
}

/// A CDB of up to 16 bytes.
pub(super) struct Cdb {
    bytes: [u8; 16],
    len: usize,
}

impl Cdb {
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// READ/WRITE of one block: the 10-byte form when the LBA fits in 32 bits, else 16.
pub(super) fn rw_cdb(read: bool, lba: u64) -> Cdb {
    let mut bytes = [0u8; 16];
    if let Ok(lba32) = u32::try_from(lba) {
        bytes[0] = if read { 0x28 } else { 0x2a };
        bytes[2..6].copy_from_slice(&lba32.to_be_bytes());
        bytes[7..9].copy_from_slice(&1u16.to_be_bytes());
        Cdb { bytes, len: 10 }
    } else {
        bytes[0] = if read { 0x88 } else { 0x8a };
        bytes[2..10].copy_from_slice(&lba.to_be_bytes());
        bytes[10..14].copy_from_slice(&1u32.to_be_bytes());
        Cdb { bytes, len: 16 }
    }
}

pub(super) fn check_status<'a>(op: &'static str, lba: u64, srb: &Srb) -> Result<(), Failure<'a>> {
    if srb.srb_status == SrbStatus::Success {
        return Ok(());
    }
    Err(Failure::Command {
        op,
        lba,
        status: srb.srb_status,
        scsi_status: srb.scsi_status,
        sense_key: srb.sense_key(),
    })
}

/// The status check of a READ or WRITE of one block, and that the whole block moved: a
/// short transfer is an error the caller sees (found by explore: on a write it used to
/// pass unnoticed).
pub(super) fn check_block<'a>(
    op: &'static str,
    lba: u64,
    srb: &Srb,
    block_size: u32,
) -> Result<(), Failure<'a>> {
    check_status(op, lba, srb)?;
    if srb.data_transfer_length != block_size {
        return Err(Failure::ShortTransfer {
            op,
            got: srb.data_transfer_length,
        });
    }
    Ok(())
}

/// INQUIRY text fields: trailing spaces dropped, non-printable bytes shown as '.'.
pub(super) struct Ascii<'a>(pub(super) &'a [u8]);

impl fmt::Display for Ascii<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .0
            .iter()
            .rposition(|&b| b != b' ' && b != 0)
            .map_or(0, |p| p + 1);
        for &b in &self.0[..end] {
            f.write_char(if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            })?;
        }
        Ok(())
    }
}
