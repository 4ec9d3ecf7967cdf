//! The SCSI target driven without virtio, as rust-vmm's vhost-device-scsi tests its
//! emulation: each command goes to [`Target::execute_at`] with in-memory data-in and
//! data-out buffers, and the tests look at its status, sense and data. What the transport
//! adds (response codes, used lengths, descriptor chains) is tested in `vhu_scsi`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use super::sense::{sense_key, SenseFormat};
use super::*;

mod image;
mod sbc;
mod spc;
mod targets;
mod unit_attention;

pub(crate) const BLOCKS: u64 = 64;
/// Room for the longest sense data SPC-4 allows.
const SENSE_BUF: usize = 252;

/// A data-in buffer in memory, `0xcc` where the target wrote nothing.
struct MemIn {
    buf: Vec<u8>,
    at: usize,
}

impl MemIn {
    fn new(buf: Vec<u8>) -> Self {
        MemIn { buf, at: 0 }
    }
}

impl DataIn for MemIn {
    fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    fn write_bytes(&mut self, buf: &[u8]) -> Result<(), DataError> {
        self.buf[self.at..self.at + buf.len()].copy_from_slice(buf);
        self.at += buf.len();
        Ok(())
    }

    fn write_from_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        file.read_exact_at(&mut self.buf[self.at..self.at + len], offset)
            .map_err(DataError::File)?;
        self.at += len;
        Ok(())
    }
}

/// A data-out buffer in memory.
struct MemOut<'a> {
    data: &'a [u8],
}

impl DataOut for MemOut<'_> {
    fn remaining(&self) -> usize {
        self.data.len()
    }

    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        let (head, tail) = self.data.split_at(buf.len());
        buf.copy_from_slice(head);
        self.data = tail;
        Ok(())
    }

    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        let (head, tail) = self.data.split_at(len);
        file.write_all_at(head, offset).map_err(DataError::File)?;
        self.data = tail;
        Ok(())
    }
}

pub(crate) struct Rig {
    pub(crate) target: Target,
    pub(crate) files: Vec<tempfile::NamedTempFile>,
}

/// A file of `blocks` blocks of `bs` bytes, block b filled with b.
pub(crate) fn backing(bs: usize, blocks: u64) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for b in 0..blocks {
        f.write_all(&vec![b as u8; bs]).unwrap();
    }
    f.flush().unwrap();
    f
}

/// Target 0: LUN 0 rw 512-byte blocks, LUN 1 read-only, LUN 2 rw 4096-byte blocks with
/// descriptor sense. No unit attention pending.
pub(crate) fn rig() -> Rig {
    let mut files = Vec::new();
    let mut luns = Vec::new();
    for (read_only, bs, sense_format) in [
        (false, 512, SenseFormat::Fixed),
        (true, 512, SenseFormat::Fixed),
        (false, 4096, SenseFormat::Descriptor),
    ] {
        let f = backing(bs, BLOCKS);
        let mut spec = LunSpec::file(f.path(), read_only);
        spec.block_size = bs as u32;
        spec.sense_format = sense_format;
        luns.push(Lun::open_spec(&spec).unwrap());
        files.push(f);
    }
    Rig {
        target: Target::new(luns).unwrap(),
        files,
    }
}

/// GOOD, without sense data.
pub(crate) fn assert_good(status: u8, sense: &[u8], sense_len: usize) {
    assert_eq!(status, status::GOOD, "sense {:02x?}", &sense[..18]);
    assert_eq!(sense_len, 0);
}

/// CHECK CONDITION with `(key, asc, ascq)`, in fixed or descriptor format (the LU's
/// D_SENSE decides when `CmdOutcome::sense_bytes` encodes it).
pub(crate) fn assert_check(status: u8, sense: &[u8], sense_len: usize, want: (u8, u8, u8)) {
    assert_eq!(status, status::CHECK_CONDITION);
    let s = sense;
    let got = match (s[0] & 0x7f, sense_len) {
        (0x70, 18) => (s[2] & 0xf, s[12], s[13]),
        (0x72, n) if n >= 8 => (s[1] & 0xf, s[2], s[3]),
        other => panic!("bad sense header {other:?}"),
    };
    assert_eq!(got, want);
}

/// A command's answer from the SCSI layer.
struct Done {
    /// `Err`: the command did not reach a SCSI status (the transport answers it).
    outcome: Result<CmdOutcome, CmdError>,
    status: u8,
    /// The autosense data as the LU's D_SENSE encodes it.
    sense: [u8; SENSE_BUF],
    sense_len: usize,
    data_in: Vec<u8>,
    /// Bytes of the data buffer that were not transferred.
    resid: usize,
}

impl Done {
    fn good(&self) -> &Self {
        assert!(self.outcome.is_ok(), "{:?}", self.outcome);
        assert_good(self.status, &self.sense, self.sense_len);
        self
    }

    /// CHECK CONDITION with this sense, in fixed or descriptor format.
    fn check(&self, key: u8, asc: u8, ascq: u8) -> &Self {
        assert!(self.outcome.is_ok(), "{:?}", self.outcome);
        assert_check(self.status, &self.sense, self.sense_len, (key, asc, ascq));
        self
    }

    fn resid(&self) -> u32 {
        self.resid as u32
    }
}

impl Rig {
    /// One command to LUN `lun` of target 0 with `data_out`, or a data-in buffer of
    /// `data_in_len` bytes.
    fn cmd(&self, lun: u16, cdb: &[u8], data_out: &[u8], data_in_len: u32) -> Done {
        let addr = LunAddress { target: 0, lun };
        let mut din = MemIn::new(vec![0xcc; data_in_len as usize]);
        let mut dout = MemOut { data: data_out };
        let outcome = self.target.execute_at(addr, cdb, &mut din, &mut dout);
        // Residual: what is left of the buffer of the command's direction.
        let resid = if data_out.is_empty() {
            DataIn::remaining(&din)
        } else {
            DataOut::remaining(&dout)
        };
        let mut sense = [0u8; SENSE_BUF];
        let (status, sense_len) = match &outcome {
            Ok(o) => (o.status, o.sense_bytes(&mut sense)),
            Err(_) => (0, 0),
        };
        Done {
            outcome,
            status,
            sense,
            sense_len,
            data_in: din.buf,
            resid,
        }
    }

    /// One command straight into [`Target::execute_at`]: its outcome, the bytes left in
    /// the data-in buffer of `data_in_len` bytes, and that buffer.
    fn exec(
        &self,
        addr: LunAddress,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> (Result<CmdOutcome, CmdError>, usize, Vec<u8>) {
        let mut din = MemIn::new(vec![0xcc; data_in_len]);
        let mut dout = MemOut { data: data_out };
        let outcome = self.target.execute_at(addr, cdb, &mut din, &mut dout);
        (outcome, din.remaining(), din.buf)
    }

    pub(crate) fn file_bytes(&self, lun: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(self.files[lun].path()).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn allocated_bytes(&self, lun: usize) -> u64 {
        self.files[lun].as_file().metadata().unwrap().blocks() * 512
    }
}

pub(crate) fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

pub(crate) fn cdb12(op: u8, b1: u8, lba: u32, len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

pub(crate) fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

pub(crate) fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let [hi, lo] = alloc.to_be_bytes();
    [opcode::INQUIRY, u8::from(evpd), page, hi, lo, 0]
}

pub(crate) const TUR: [u8; 6] = [opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0];
pub(crate) const ILLEGAL: u8 = sense_key::ILLEGAL_REQUEST;

// ---- the command table ----

#[test]
fn command_table_has_no_duplicates_and_usage_matches_cdb_length() {
    for (i, a) in COMMANDS.iter().enumerate() {
        assert_eq!(a.usage[0], a.opcode, "{}", a.name);
        let len = match a.opcode >> 5 {
            0 => 6,
            1 | 2 => 10,
            4 => 16,
            5 => 12,
            _ => 0,
        };
        assert_eq!(a.usage.len(), len, "{}", a.name);
        for b in &COMMANDS[i + 1..] {
            assert!(
                (a.opcode, a.service_action) != (b.opcode, b.service_action),
                "{} twice",
                a.name
            );
        }
    }
}

#[test]
fn lookup_distinguishes_opcode_and_service_action() {
    assert_eq!(lookup(&[0x42]).map(|c| c.name), Ok("UNMAP"));
    assert_eq!(
        lookup(&[0x9e, 0x10]).map(|c| c.name),
        Ok("READ CAPACITY(16)")
    );
    assert_eq!(
        lookup(&[0x9e, 0x11]).err(),
        Some(Sense::INVALID_FIELD_IN_CDB)
    );
    assert_eq!(
        lookup(&[0x7f]).err(),
        Some(Sense::INVALID_COMMAND_OPERATION_CODE)
    );
    assert!(has_service_actions(0xa3) && !has_service_actions(0x28));
}
