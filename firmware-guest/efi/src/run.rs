//! The test sequence, over any [`Disk`]: read and check the pattern range, write the write
//! range with a new generation, flush, read it back and check it. The first failure ends
//! the sequence; then the first chunk of the pattern is read once more, to show whether
//! the disk still works. Every failure and the outcome are reported as JSON lines.

use r_efi::efi::Status;

use crate::layout::{
    BLOCK_SIZE, CHUNK_BLOCKS, IMAGE_GEN, PATTERN_BLOCKS, PATTERN_LBA, WRITE_BLOCKS, WRITE_LBA,
};
use crate::{report, stamp};

/// Whole-block I/O on the disk under test; an `Err` carries the firmware's status.
pub trait Disk {
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), Status>;
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), Status>;
    fn flush(&mut self) -> Result<(), Status>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    FindDisk,
    Read,
    Write,
    Flush,
    Readback,
    Reread,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::FindDisk => "find-disk",
            Step::Read => "read",
            Step::Write => "write",
            Step::Flush => "flush",
            Step::Readback => "readback",
            Step::Reread => "reread",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub read_blocks: u64,
    pub written_blocks: u64,
    pub verified_blocks: u64,
    pub generation: u32,
    /// The step that failed, `None` when all passed.
    pub failed: Option<Step>,
    /// Whether the pattern read after the failure worked (`None`: nothing failed).
    pub reread_ok: Option<bool>,
}

impl Outcome {
    pub fn new(generation: u32) -> Self {
        Outcome {
            read_blocks: 0,
            written_blocks: 0,
            verified_blocks: 0,
            generation,
            failed: None,
            reread_ok: None,
        }
    }
}

/// The generation this run writes: the TSC's low half with the top bit set, so that it
/// is new on every run and never the image's (the SeaBIOS boot sector does the same).
pub fn write_generation(tsc: u64) -> u32 {
    tsc as u32 | 0x8000_0000
}

const CHUNK_BYTES: usize = CHUNK_BLOCKS as usize * BLOCK_SIZE;

/// One call's buffer, page aligned so that any IoAlign the firmware asks for is met.
#[repr(C, align(4096))]
struct Chunk([u8; CHUNK_BYTES]);

/// Runs the sequence, printing through `out`, and returns the outcome (already reported).
pub fn run(disk: &mut dyn Disk, generation: u32, out: &mut dyn FnMut(&str)) -> Outcome {
    let mut o = Outcome::new(generation);
    let mut chunk = Chunk([0; CHUNK_BYTES]);
    if let Err(step) = sequence(disk, &mut chunk, &mut o, out) {
        o.failed = Some(step);
        let mut reread_blocks = 0;
        let image_gen = IMAGE_GEN as u32;
        let reread = Range::new(Step::Reread, PATTERN_LBA, CHUNK_BLOCKS, image_gen);
        o.reread_ok = Some(
            reread
                .run(disk, &mut chunk, &mut reread_blocks, out)
                .is_ok(),
        );
    }
    report::result(out, &o);
    o
}

fn sequence(
    disk: &mut dyn Disk,
    chunk: &mut Chunk,
    o: &mut Outcome,
    out: &mut dyn FnMut(&str),
) -> Result<(), Step> {
    let image_gen = IMAGE_GEN as u32;
    Range::new(Step::Read, PATTERN_LBA, PATTERN_BLOCKS, image_gen).run(
        disk,
        chunk,
        &mut o.read_blocks,
        out,
    )?;
    Range::new(Step::Write, WRITE_LBA, WRITE_BLOCKS, o.generation).run(
        disk,
        chunk,
        &mut o.written_blocks,
        out,
    )?;
    disk.flush().map_err(|status| {
        report::error(out, Step::Flush, None, status);
        Step::Flush
    })?;
    Range::new(Step::Readback, WRITE_LBA, WRITE_BLOCKS, o.generation).run(
        disk,
        chunk,
        &mut o.verified_blocks,
        out,
    )
}

/// One step over a range of blocks, a chunk per call.
struct Range {
    step: Step,
    first: u64,
    blocks: u64,
    generation: u32,
}

impl Range {
    fn new(step: Step, first: u64, blocks: u64, generation: u32) -> Self {
        Range {
            step,
            first,
            blocks,
            generation,
        }
    }

    /// Adds the blocks done (written, or read and checked) to `done`.
    fn run(
        &self,
        disk: &mut dyn Disk,
        chunk: &mut Chunk,
        done: &mut u64,
        out: &mut dyn FnMut(&str),
    ) -> Result<(), Step> {
        let end = self.first + self.blocks;
        let mut lba = self.first;
        while lba < end {
            let n = CHUNK_BLOCKS.min(end - lba);
            let buf = &mut chunk.0[..n as usize * BLOCK_SIZE];
            let called = if self.step == Step::Write {
                stamp::fill(buf, lba, self.generation);
                disk.write(lba, buf)
            } else {
                // Zeros: whatever a short transfer leaves out shows as a missing tag.
                buf.fill(0);
                disk.read(lba, buf)
            };
            called.map_err(|status| {
                report::error(out, self.step, Some((lba, n)), status);
                self.step
            })?;
            if self.step != Step::Write {
                stamp::check(buf, lba, self.generation).map_err(|m| {
                    report::mismatch(out, self.step, self.generation, &m);
                    self.step
                })?;
            }
            *done += n;
            lba += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::DISK_BLOCKS;

    /// A disk laid out as build.sh makes it, with faults to order.
    struct Fake {
        data: Vec<u8>,
        /// Fail the read or write that covers this LBA, with this status.
        fail_at: Option<(u64, Status)>,
        /// After the first failure, fail every call.
        broken_after_failure: bool,
        flush_status: Status,
        drop_writes: bool,
        failed: bool,
        calls: Vec<(&'static str, u64, usize)>,
    }

    impl Fake {
        fn new() -> Self {
            let mut data = vec![0; DISK_BLOCKS as usize * BLOCK_SIZE];
            for (first, blocks) in [(PATTERN_LBA, PATTERN_BLOCKS), (WRITE_LBA, WRITE_BLOCKS)] {
                let at = first as usize * BLOCK_SIZE;
                stamp::fill(
                    &mut data[at..at + blocks as usize * BLOCK_SIZE],
                    first,
                    IMAGE_GEN as u32,
                );
            }
            Fake {
                data,
                fail_at: None,
                broken_after_failure: false,
                flush_status: Status::SUCCESS,
                drop_writes: false,
                failed: false,
                calls: Vec::new(),
            }
        }

        fn fault(&mut self, lba: u64, len: usize) -> Result<(), Status> {
            if self.failed && self.broken_after_failure {
                return Err(Status::DEVICE_ERROR);
            }
            match self.fail_at {
                Some((at, status)) if (lba..lba + (len / BLOCK_SIZE) as u64).contains(&at) => {
                    self.failed = true;
                    Err(status)
                }
                _ => Ok(()),
            }
        }
    }

    impl Disk for Fake {
        fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), Status> {
            self.calls.push(("read", lba, buf.len() / BLOCK_SIZE));
            self.fault(lba, buf.len())?;
            let at = lba as usize * BLOCK_SIZE;
            buf.copy_from_slice(&self.data[at..at + buf.len()]);
            Ok(())
        }

        fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), Status> {
            self.calls.push(("write", lba, buf.len() / BLOCK_SIZE));
            self.fault(lba, buf.len())?;
            if !self.drop_writes {
                let at = lba as usize * BLOCK_SIZE;
                self.data[at..at + buf.len()].copy_from_slice(buf);
            }
            Ok(())
        }

        fn flush(&mut self) -> Result<(), Status> {
            self.calls.push(("flush", 0, 0));
            if self.flush_status == Status::SUCCESS {
                Ok(())
            } else {
                Err(self.flush_status)
            }
        }
    }

    fn run_on(disk: &mut Fake) -> (Outcome, Vec<String>) {
        let mut lines = Vec::new();
        let o = run(disk, 0x8000_0042, &mut |s: &str| lines.push(s.to_string()));
        (o, lines)
    }

    #[test]
    fn a_good_disk_passes_in_chunks() {
        let mut disk = Fake::new();
        let (o, lines) = run_on(&mut disk);
        assert_eq!(o.failed, None);
        assert_eq!(
            (o.read_blocks, o.written_blocks, o.verified_blocks),
            (64, 64, 64)
        );
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("{\"fw\":\"ovmf\",\"result\":\"pass\""));
        let chunks = (PATTERN_BLOCKS / CHUNK_BLOCKS) as usize;
        assert_eq!(disk.calls.len(), 3 * chunks + 1);
        assert_eq!(disk.calls[0], ("read", PATTERN_LBA, CHUNK_BLOCKS as usize));
        assert_eq!(
            disk.calls[chunks],
            ("write", WRITE_LBA, CHUNK_BLOCKS as usize)
        );
        assert_eq!(disk.calls[2 * chunks], ("flush", 0, 0));
        let at = WRITE_LBA as usize * BLOCK_SIZE;
        assert_eq!(
            stamp::check(&disk.data[at..at + 512], WRITE_LBA, 0x8000_0042),
            Ok(())
        );
    }

    #[test]
    fn a_failed_read_is_reported_and_the_pattern_read_again() {
        let mut disk = Fake::new();
        disk.fail_at = Some((PATTERN_LBA + 9, Status::DEVICE_ERROR));
        let (o, lines) = run_on(&mut disk);
        assert_eq!(o.failed, Some(Step::Read));
        assert_eq!(o.reread_ok, Some(true));
        assert_eq!(o.read_blocks, CHUNK_BLOCKS);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains("\"step\":\"read\",\"lba\":8200,\"blocks\":8,"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("EFI_DEVICE_ERROR"));
        assert!(lines[1].contains("\"failed_step\":\"read\""));
        assert!(lines[1].ends_with("\"reread_ok\":true}\r\n"));
        assert_eq!(
            disk.calls.last(),
            Some(&("read", PATTERN_LBA, CHUNK_BLOCKS as usize))
        );
    }

    #[test]
    fn a_disk_that_stays_broken_fails_the_reread_too() {
        let mut disk = Fake::new();
        disk.fail_at = Some((WRITE_LBA, Status::NO_MEDIA));
        disk.broken_after_failure = true;
        let (o, lines) = run_on(&mut disk);
        assert_eq!(o.failed, Some(Step::Write));
        assert_eq!(o.reread_ok, Some(false));
        assert_eq!((o.read_blocks, o.written_blocks), (64, 0));
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("EFI_NO_MEDIA"));
        assert!(lines[1].contains("\"step\":\"reread\""));
    }

    #[test]
    fn a_write_that_never_landed_is_caught_on_readback() {
        let mut disk = Fake::new();
        disk.drop_writes = true;
        let (o, lines) = run_on(&mut disk);
        assert_eq!(o.failed, Some(Step::Readback));
        assert_eq!(o.written_blocks, 64);
        assert_eq!(o.verified_blocks, 0);
        assert!(lines[0]
            .contains("\"ev\":\"mismatch\",\"step\":\"readback\",\"lba\":12288,\"slot\":0,"));
        assert!(lines[0].contains("\"want_gen\":\"0x80000042\""));
        assert!(lines[0].contains("\"found_gen\":\"0x00000001\""));
    }

    #[test]
    fn a_failed_flush_ends_the_sequence() {
        let mut disk = Fake::new();
        disk.flush_status = Status::DEVICE_ERROR;
        let (o, lines) = run_on(&mut disk);
        assert_eq!(o.failed, Some(Step::Flush));
        assert_eq!(o.verified_blocks, 0);
        assert!(
            lines[0].starts_with("{\"fw\":\"ovmf\",\"ev\":\"error\",\"step\":\"flush\",\"code\":")
        );
    }

    #[test]
    fn the_write_generation_is_never_the_images() {
        assert_ne!(write_generation(IMAGE_GEN), IMAGE_GEN as u32);
        assert_eq!(write_generation(0x1234_0000_0000_0005), 0x8000_0005);
    }
}
