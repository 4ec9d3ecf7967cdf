//! The JSON lines this program prints on COM1, one object per line, each written whole.
//! The SeaBIOS boot sector prints the same objects with `"fw":"seabios"` and an INT 13h
//! error code (README.md lists the fields).

use core::fmt::{self, Write};

use r_efi::efi::Status;

use crate::run::{Outcome, Step};
use crate::stamp::Mismatch;

/// One line under construction. Longer than any line below; a line that would not fit is
/// cut, and then no longer parses, rather than overrunning.
pub struct Line {
    buf: [u8; 320],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 320],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are appended (see write_str), so this is always valid UTF-8.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The names of the statuses BlockIo and the boot services return, as the UEFI
/// specification spells them.
const STATUS_NAMES: &[(Status, &str)] = &[
    (Status::SUCCESS, "EFI_SUCCESS"),
    (Status::INVALID_PARAMETER, "EFI_INVALID_PARAMETER"),
    (Status::UNSUPPORTED, "EFI_UNSUPPORTED"),
    (Status::BAD_BUFFER_SIZE, "EFI_BAD_BUFFER_SIZE"),
    (Status::BUFFER_TOO_SMALL, "EFI_BUFFER_TOO_SMALL"),
    (Status::NOT_READY, "EFI_NOT_READY"),
    (Status::DEVICE_ERROR, "EFI_DEVICE_ERROR"),
    (Status::WRITE_PROTECTED, "EFI_WRITE_PROTECTED"),
    (Status::OUT_OF_RESOURCES, "EFI_OUT_OF_RESOURCES"),
    (Status::NO_MEDIA, "EFI_NO_MEDIA"),
    (Status::MEDIA_CHANGED, "EFI_MEDIA_CHANGED"),
    (Status::NOT_FOUND, "EFI_NOT_FOUND"),
    (Status::NO_RESPONSE, "EFI_NO_RESPONSE"),
    (Status::TIMEOUT, "EFI_TIMEOUT"),
    (Status::ABORTED, "EFI_ABORTED"),
    (Status::PROTOCOL_ERROR, "EFI_PROTOCOL_ERROR"),
];

fn status_name(status: Status) -> &'static str {
    STATUS_NAMES
        .iter()
        .find(|(s, _)| *s == status)
        .map_or("unknown", |(_, name)| name)
}

fn emit(out: &mut dyn FnMut(&str), build: impl FnOnce(&mut Line) -> fmt::Result) {
    let mut line = Line::new();
    // A line too long for the buffer is sent cut rather than not at all.
    let _ = build(&mut line).and_then(|()| line.write_str("}\r\n"));
    out(line.as_str());
}

/// `{"fw":"ovmf","ev":"start","blocks":N,"block_size":N,"io_align":N,"media_id":N}`
pub fn start(
    out: &mut dyn FnMut(&str),
    blocks: u64,
    block_size: u32,
    io_align: u32,
    media_id: u32,
) {
    emit(out, |l| {
        write!(
            l,
            r#"{{"fw":"ovmf","ev":"start","blocks":{blocks},"block_size":{block_size},"io_align":{io_align},"media_id":{media_id}"#
        )
    });
}

/// `{"fw":"ovmf","ev":"error","step":S[,"lba":N,"blocks":N],"code":"0x..","status":NAME}`
pub fn error(out: &mut dyn FnMut(&str), step: Step, range: Option<(u64, u64)>, status: Status) {
    emit(out, |l| {
        write!(l, r#"{{"fw":"ovmf","ev":"error","step":"{}""#, step.name())?;
        if let Some((lba, blocks)) = range {
            write!(l, r#","lba":{lba},"blocks":{blocks}"#)?;
        }
        write!(
            l,
            r#","code":"{:#018x}","status":"{}""#,
            status.as_usize(),
            status_name(status)
        )
    });
}

/// `{"fw":"ovmf","ev":"mismatch","step":S,"lba":N,"slot":N,"want_gen":"0x..",
/// "found_tag":"0x..","found_lba":N,"found_gen":"0x..","found_slot":N}`
pub fn mismatch(out: &mut dyn FnMut(&str), step: Step, want_gen: u32, m: &Mismatch) {
    emit(out, |l| {
        write!(
            l,
            r#"{{"fw":"ovmf","ev":"mismatch","step":"{}","lba":{},"slot":{},"want_gen":"{:#010x}","found_tag":"{:#010x}","found_lba":{},"found_gen":"{:#010x}","found_slot":{}"#,
            step.name(),
            m.lba,
            m.slot,
            want_gen,
            m.found_tag,
            m.found_lba,
            m.found_gen,
            m.found_slot
        )
    });
}

/// `{"fw":"ovmf","result":"pass"|"fail"[,"failed_step":S],"read_blocks":N,
/// "written_blocks":N,"verified_blocks":N,"gen":"0x.."[,"reread_ok":B]}`
pub fn result(out: &mut dyn FnMut(&str), o: &Outcome) {
    emit(out, |l| {
        match o.failed {
            None => write!(l, r#"{{"fw":"ovmf","result":"pass""#)?,
            Some(step) => write!(
                l,
                r#"{{"fw":"ovmf","result":"fail","failed_step":"{}""#,
                step.name()
            )?,
        }
        write!(
            l,
            r#","read_blocks":{},"written_blocks":{},"verified_blocks":{},"gen":"{:#010x}""#,
            o.read_blocks, o.written_blocks, o.verified_blocks, o.generation
        )?;
        match o.reread_ok {
            Some(ok) => write!(l, r#","reread_ok":{ok}"#),
            None => Ok(()),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: impl FnOnce(&mut dyn FnMut(&str))) -> String {
        let mut all = String::new();
        f(&mut |s: &str| all.push_str(s));
        all
    }

    #[test]
    fn an_error_names_its_status() {
        let got = lines(|out| error(out, Step::Read, Some((8200, 8)), Status::DEVICE_ERROR));
        assert_eq!(
            got,
            "{\"fw\":\"ovmf\",\"ev\":\"error\",\"step\":\"read\",\"lba\":8200,\"blocks\":8,\
             \"code\":\"0x8000000000000007\",\"status\":\"EFI_DEVICE_ERROR\"}\r\n"
        );
    }

    #[test]
    fn a_flush_error_has_no_range_and_an_unknown_status_says_so() {
        let got = lines(|out| {
            error(
                out,
                Step::Flush,
                None,
                Status::from_usize(0x8000_0000_0000_0063),
            )
        });
        assert_eq!(
            got,
            "{\"fw\":\"ovmf\",\"ev\":\"error\",\"step\":\"flush\",\
             \"code\":\"0x8000000000000063\",\"status\":\"unknown\"}\r\n"
        );
    }

    #[test]
    fn a_mismatch_line_has_every_field() {
        let m = Mismatch {
            lba: 8193,
            slot: 16,
            found_tag: 0,
            found_lba: 0,
            found_gen: 0,
            found_slot: 0,
        };
        let got = lines(|out| mismatch(out, Step::Readback, 0x8000_0001, &m));
        assert_eq!(
            got,
            "{\"fw\":\"ovmf\",\"ev\":\"mismatch\",\"step\":\"readback\",\"lba\":8193,\"slot\":16,\
             \"want_gen\":\"0x80000001\",\"found_tag\":\"0x00000000\",\"found_lba\":0,\
             \"found_gen\":\"0x00000000\",\"found_slot\":0}\r\n"
        );
    }

    #[test]
    fn result_lines_pass_and_fail() {
        let mut o = Outcome::new(0x8123_4567);
        (o.read_blocks, o.written_blocks, o.verified_blocks) = (64, 64, 64);
        assert_eq!(
            lines(|out| result(out, &o)),
            "{\"fw\":\"ovmf\",\"result\":\"pass\",\"read_blocks\":64,\"written_blocks\":64,\
             \"verified_blocks\":64,\"gen\":\"0x81234567\"}\r\n"
        );
        o.failed = Some(Step::Write);
        o.reread_ok = Some(false);
        assert_eq!(
            lines(|out| result(out, &o)),
            "{\"fw\":\"ovmf\",\"result\":\"fail\",\"failed_step\":\"write\",\"read_blocks\":64,\
             \"written_blocks\":64,\"verified_blocks\":64,\"gen\":\"0x81234567\",\
             \"reread_ok\":false}\r\n"
        );
    }

    #[test]
    fn no_disk_is_a_failed_find_disk_step() {
        let mut o = Outcome::new(0x8000_0000);
        o.failed = Some(Step::FindDisk);
        assert_eq!(
            lines(|out| result(out, &o)),
            "{\"fw\":\"ovmf\",\"result\":\"fail\",\"failed_step\":\"find-disk\",\"read_blocks\":0,\
             \"written_blocks\":0,\"verified_blocks\":0,\"gen\":\"0x80000000\"}\r\n"
        );
    }

    #[test]
    fn start_line() {
        let got = lines(|out| start(out, 32768, 512, 4, 0));
        assert_eq!(
            got,
            "{\"fw\":\"ovmf\",\"ev\":\"start\",\"blocks\":32768,\"block_size\":512,\
             \"io_align\":4,\"media_id\":0}\r\n"
        );
    }

    #[test]
    fn a_line_too_long_is_cut_not_overrun() {
        let mut l = Line::new();
        assert!(l.write_str(&"x".repeat(300)).is_ok());
        assert!(l.write_str(&"y".repeat(30)).is_err());
        assert_eq!(l.as_str().len(), 300);
    }
}
