//! CDB decoding: arbitrary CDBs and data-out bytes go to `Target::execute_at` with
//! in-memory buffers. Properties: no panic; the target keeps the DataIn/DataOut contract
//! (never asks for more than `remaining()`); data-in never exceeds the allocation length
//! (or transfer length) the CDB gives, nor the buffer; a finished command has a SAM status
//! with sense data exactly when it is CHECK CONDITION, and that sense data is well formed;
//! only an absent target is a transport error; nothing changes the read-only LU; and what
//! a WRITE reports as GOOD reads back.
//!
//! Input: `[addr, cap_lo, cap_hi, cdb_len, cdb..., data_out...]`. `addr` picks the LU
//! (bit 0: LUN 0 / the 4096-byte read-only LU; bit 1: an absent LUN; bit 2: an absent
//! target; bit 3: power on first, so a unit attention is pending).
#![no_main]

use std::fs::File;
use std::os::unix::fs::FileExt;

use flakyhba_backend::scsi::sense::status;
use flakyhba_backend::scsi::{opcode as op, CmdError, DataError, DataIn, DataOut};
use flakyhba_backend::scsi::{Lun, LunAddress, LunSpec, Target};
use flakyhba_backend::virtio::VIRTIO_SCSI_SENSE_SIZE;
use libfuzzer_sys::fuzz_target;

const MAX_CDB: usize = 32;

struct MemIn {
    buf: Vec<u8>,
    cap: usize,
}

impl DataIn for MemIn {
    fn remaining(&self) -> usize {
        self.cap - self.buf.len()
    }
    fn write_bytes(&mut self, buf: &[u8]) -> Result<(), DataError> {
        assert!(
            buf.len() <= self.remaining(),
            "data-in write past remaining()"
        );
        self.buf.extend_from_slice(buf);
        Ok(())
    }
    fn write_from_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        assert!(
            len <= self.remaining(),
            "data-in file read past remaining()"
        );
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        file.read_exact_at(&mut self.buf[start..], offset)
            .map_err(DataError::File)
    }
}

struct MemOut<'a> {
    data: &'a [u8],
}

impl DataOut for MemOut<'_> {
    fn remaining(&self) -> usize {
        self.data.len()
    }
    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        assert!(
            buf.len() <= self.data.len(),
            "data-out read past remaining()"
        );
        let (head, tail) = self.data.split_at(buf.len());
        buf.copy_from_slice(head);
        self.data = tail;
        Ok(())
    }
    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        assert!(
            len <= self.data.len(),
            "data-out file write past remaining()"
        );
        let (head, tail) = self.data.split_at(len);
        file.write_all_at(head, offset).map_err(DataError::File)?;
        self.data = tail;
        Ok(())
    }
}

fn be(cdb: &[u8], at: usize, n: usize) -> u64 {
    (0..n).fold(0, |v, i| {
        (v << 8) | u64::from(cdb.get(at + i).copied().unwrap_or(0))
    })
}

/// The most data-in bytes the CDB allows (SPC-4/SBC-3 allocation and transfer lengths);
/// None when the command moves no data-in, so the answer must be empty.
fn data_in_limit(cdb: &[u8], block_size: u64) -> Option<u64> {
    let sa = cdb.get(1).copied().unwrap_or(0) & 0x1f;
    Some(match cdb[0] {
        op::REQUEST_SENSE | op::MODE_SENSE_6 => be(cdb, 4, 1),
        op::INQUIRY => be(cdb, 3, 2),
        op::MODE_SENSE_10 => be(cdb, 7, 2),
        op::REPORT_LUNS => be(cdb, 6, 4),
        op::MAINTENANCE_IN if sa == op::MI_REPORT_SUPPORTED_OPERATION_CODES => be(cdb, 6, 4),
        op::SERVICE_ACTION_IN_16 if sa == op::SAI_READ_CAPACITY_16 => be(cdb, 10, 4),
        op::READ_CAPACITY_10 => 8,
        // READ(6): a transfer length of 0 means 256 blocks.
        op::READ_6 => match be(cdb, 4, 1) {
            0 => 256,
            n => n,
        }
        .saturating_mul(block_size),
        op::READ_10 => be(cdb, 7, 2).saturating_mul(block_size),
        op::READ_12 => be(cdb, 6, 4).saturating_mul(block_size),
        op::READ_16 => be(cdb, 10, 4).saturating_mul(block_size),
        _ => return None,
    })
}

/// First block and block count of a WRITE(6/10/12/16) (SBC-3).
fn write_range(cdb: &[u8]) -> Option<(u64, u64)> {
    Some(match cdb[0] {
        op::WRITE_6 => (
            be(cdb, 1, 3) & 0x1f_ffff,
            match be(cdb, 4, 1) {
                0 => 256,
                n => n,
            },
        ),
        op::WRITE_10 => (be(cdb, 2, 4), be(cdb, 7, 2)),
        op::WRITE_12 => (be(cdb, 2, 4), be(cdb, 6, 4)),
        op::WRITE_16 => (be(cdb, 2, 8), be(cdb, 10, 4)),
        _ => return None,
    })
}

/// Reads `blocks` blocks at `lba` of `lu` with READ(16), after clearing what the fuzzed
/// command may have left (a stopped LU, a unit attention).
fn read_back(t: &Target, lu: LunAddress, lba: u64, blocks: u32, block_size: usize) -> Vec<u8> {
    t.power_on();
    let mut sink = MemIn {
        buf: Vec::new(),
        cap: 0,
    };
    let _ = t.execute_at(
        lu,
        &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0],
        &mut sink,
        &mut MemOut { data: &[] },
    );
    let mut cdb = [0u8; 16];
    cdb[0] = op::READ_16;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let len = blocks as usize * block_size;
    let mut data = MemIn {
        buf: Vec::with_capacity(len),
        cap: len,
    };
    let outcome = t.execute_at(lu, &cdb, &mut data, &mut MemOut { data: &[] });
    assert_eq!(
        outcome.map(|o| o.status),
        Ok(status::GOOD),
        "READ(16) of {blocks} blocks at {lba}"
    );
    data.buf
}

fn target(power_on: bool) -> Target {
    let small = Lun::open_spec(&LunSpec::memory(64 * 512)).expect("memory LU");
    let mut big_blocks = LunSpec::memory(16 * 4096);
    big_blocks.block_size = 4096;
    big_blocks.read_only = true;
    let big = Lun::open_spec(&big_blocks).expect("memory LU");
    let t = Target::new(vec![small, big]).expect("two LUs");
    if power_on {
        t.power_on();
    }
    t
}

fuzz_target!(|data: &[u8]| {
    let [addr, cap_lo, cap_hi, cdb_len, rest @ ..] = data else {
        return;
    };
    let cdb_len = 1 + usize::from(*cdb_len) % MAX_CDB;
    if rest.len() < cdb_len {
        return;
    }
    let (cdb, data_out) = rest.split_at(cdb_len);
    let lun = if addr & 2 != 0 {
        7
    } else {
        u16::from(addr & 1)
    };
    let address = LunAddress {
        target: if addr & 4 != 0 { 2 } else { 0 },
        lun,
    };
    let block_size = if lun == 1 { 4096 } else { 512 };
    let target = target(addr & 8 != 0);
    let cap = usize::from(u16::from_le_bytes([*cap_lo, *cap_hi]));
    let mut data_in = MemIn {
        buf: Vec::new(),
        cap,
    };
    let mut out = MemOut { data: data_out };

    // Ok or Err, what was written must respect the CDB: buffer problems come back as
    // CmdError after a partial transfer at most.
    let result = target.execute_at(address, cdb, &mut data_in, &mut out);

    let written = data_in.buf.len();
    assert!(
        written <= cap,
        "{written} data-in bytes in a {cap}-byte buffer"
    );
    match data_in_limit(cdb, block_size) {
        Some(max) => assert!(
            written as u64 <= max,
            "{written} data-in bytes, the CDB allows {max}: {cdb:02x?}"
        ),
        None => assert_eq!(
            written, 0,
            "data-in for a command without data-in: {cdb:02x?}"
        ),
    }
    let absent_target = address.target != 0;
    match &result {
        Ok(outcome) => {
            assert!(!absent_target, "an absent target answered {outcome:?}");
            let mut sense = [0u8; VIRTIO_SCSI_SENSE_SIZE];
            let sense_len = outcome.sense_bytes(&mut sense);
            match outcome.status {
                status::GOOD => assert_eq!(sense_len, 0, "GOOD with sense: {outcome:?}"),
                status::CHECK_CONDITION => {
                    assert!(
                        (8..=VIRTIO_SCSI_SENSE_SIZE).contains(&sense_len),
                        "{sense_len} sense bytes"
                    );
                    let code = sense[0] & 0x7f;
                    let (key, additional) = match code {
                        0x70 | 0x71 => (sense[2] & 0xf, usize::from(sense[7]) + 8),
                        0x72 | 0x73 => (sense[1] & 0xf, usize::from(sense[7]) + 8),
                        _ => panic!("sense response code {code:#x}"),
                    };
                    assert_eq!(additional, sense_len, "ADDITIONAL SENSE LENGTH");
                    // NO SENSE with CHECK CONDITION says nothing went wrong.
                    assert_ne!(key, 0, "CHECK CONDITION with NO SENSE: {cdb:02x?}");
                }
                other => panic!("status {other:#x}"),
            }
        }
        Err(CmdError::NoSuchLun(_)) => assert!(absent_target, "a present target refused"),
        Err(e) => assert!(!absent_target, "{e:?} from an absent target"),
    }

    // The read-only LU is never written, whatever was asked of it. (Compared with memcmp:
    // a byte loop would be traced by the coverage instrumentation.)
    let ro = LunAddress { target: 0, lun: 1 };
    if address == ro {
        let stored = read_back(&target, ro, 0, 16, 4096);
        // A static, not a 64 KiB array on the (instrumented) stack for every input.
        static ZEROES: [u8; 16 * 4096] = [0; 16 * 4096];
        assert!(
            stored[..] == ZEROES[..],
            "the read-only LU changed: {cdb:02x?}"
        );
    }
    // A write that reports GOOD stored its data.
    if let (Ok(outcome), Some((lba, blocks))) = (&result, write_range(cdb)) {
        if outcome.status == status::GOOD && address == (LunAddress { target: 0, lun: 0 }) {
            let len = blocks as usize * 512;
            let stored = read_back(&target, address, lba, blocks as u32, 512);
            assert_eq!(
                &stored[..],
                &data_out[..len],
                "WRITE of {blocks} at {lba} reads back otherwise"
            );
        }
    }
});
