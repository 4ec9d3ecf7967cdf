//! The workloads: `smoke`, `io` and `reset-under-load` write every block and read it
//! back; `bench` reads seeded random LBAs and measures IOPS.

use core::fmt::Write;

use crate::contract::{check_pattern, fill_pattern, io_order, smoke_lba, splitmix64};
use crate::port::{DataBuffer, DataDirection, Srb};
use crate::report::JsonLine;
use crate::virtio_scsi::VirtioScsiError;

use super::class_driver::{DmaBuf, Phase, Runner};
use super::scsi::{check_block, rw_cdb, Cdb};
use super::Failure;

impl<M: crate::port::Miniport<Error = VirtioScsiError>> Runner<'_, '_, '_, M> {
    /// `smoke`, `io` and `reset-under-load`: write every block, then read it back.
    pub(super) fn write_and_verify<'a>(
        &mut self,
        bufs: &mut [DmaBuf],
        out: &mut dyn Write,
        shuffled: bool,
        reset: bool,
    ) -> Result<(), Failure<'a>> {
        let (seed, blocks) = (self.args.seed, self.args.blocks);
        let capacity = self.outcome.capacity;
        let block_size = self.outcome.block_size;
        let lba_of = |i: u32| smoke_lba(seed, capacity, blocks, i);
        let write_order = |j: u32| {
            if shuffled {
                io_order(seed, blocks, j)
            } else {
                j
            }
        };
        let read_order = |j: u32| {
            if shuffled {
                io_order(seed.wrapping_add(1), blocks, j)
            } else {
                j
            }
        };
        let timeout = self.args.srb_timeout_ms.saturating_mul(1000);
        let srb_for = move |cdb: &Cdb, data: DataBuffer| {
            let mut s = Srb::new(0, 0, 0, cdb.as_slice(), data);
            s.timeout_us = timeout;
            s
        };
        self.batch(
            bufs,
            blocks,
            &write_order,
            &mut Phase {
                op: "WRITE",
                reads: false,
                reset_after: reset.then_some(self.args.reset_after),
                make: &mut |i, b| {
                    let lba = lba_of(i);
                    fill_pattern(seed, lba, b.bytes());
                    srb_for(&rw_cdb(false, lba), b.data(block_size, DataDirection::Out))
                },
                done: &mut |i, srb, _| check_block("WRITE", lba_of(i), srb, block_size),
            },
        )?;
        self.outcome.written = true;
        let _ = JsonLine::event(out, "written")
            .u64("blocks", u64::from(blocks))
            .finish();

        self.batch(
            bufs,
            blocks,
            &read_order,
            &mut Phase {
                op: "READ",
                reads: true,
                reset_after: None,
                make: &mut |i, b| {
                    b.bytes().fill(0);
                    srb_for(
                        &rw_cdb(true, lba_of(i)),
                        b.data(block_size, DataDirection::In),
                    )
                },
                done: &mut |i, srb, b| {
                    let lba = lba_of(i);
                    check_block("READ", lba, srb, block_size)?;
                    if !check_pattern(seed, lba, b.bytes()) {
                        return Err(Failure::Mismatch { lba });
                    }
                    Ok(())
                },
            },
        )?;
        let _ = JsonLine::event(out, "verified")
            .u64("blocks", u64::from(blocks) - self.outcome.medium_errors)
            .u64("unreadable", self.outcome.medium_errors)
            .finish();
        Ok(())
    }

    /// `bench`: single-block reads of seeded random LBAs at the queue depth.
    pub(super) fn bench<'a>(
        &mut self,
        bufs: &mut [DmaBuf],
        out: &mut dyn Write,
    ) -> Result<(), Failure<'a>> {
        let (seed, count) = (self.args.seed, self.args.blocks);
        let capacity = self.outcome.capacity;
        let block_size = self.outcome.block_size;
        let lba_of = |i: u32| splitmix64(seed ^ u64::from(i)) % capacity;
        let timeout = self.args.srb_timeout_ms.saturating_mul(1000);
        let start = self.platform.now_us();
        self.batch(
            bufs,
            count,
            &|j| j,
            &mut Phase {
                op: "READ",
                reads: true,
                reset_after: None,
                make: &mut |i, b| {
                    let mut s = Srb::new(
                        0,
                        0,
                        0,
                        rw_cdb(true, lba_of(i)).as_slice(),
                        b.data(block_size, DataDirection::In),
                    );
                    s.timeout_us = timeout;
                    s
                },
                done: &mut |i, srb, _| check_block("READ", lba_of(i), srb, block_size),
            },
        )?;
        let took = self.platform.now_us().saturating_sub(start).max(1);
        self.outcome.iops = u64::from(count) * 1_000_000 / took;
        let _ = JsonLine::event(out, "bench")
            .u64("reads", u64::from(count))
            .u64("elapsed_us", took)
            .u64("iops", self.outcome.iops)
            .finish();
        Ok(())
    }
}
