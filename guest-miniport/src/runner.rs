//! The scenario runner the guest image calls: finds the adapter, brings up the port
//! and the virtio-scsi miniport, runs the scenario from the kernel command line and
//! reports on `out` (one JSON object per line, the result line last).

use core::fmt::{self, Write};
use core::ptr::NonNull;

use crate::contract::{
    check_pattern, fill_pattern, result_fields as rf, smoke_lba, ArgError, GuestArgs, EXIT_FAIL,
    EXIT_PASS,
};
use crate::pci::{self, BarAllocator, PciError};
use crate::platform::{Dma, PciConfig, Platform};
use crate::port::checker::MAX_VIOLATIONS;
use crate::port::{
    scsi_status, CheckerConfig, DataBuffer, DataDirection, Port, PortConfig, PortError,
    RoutineTimes, Srb, SrbStatus, Tag, Violation, MAX_SRBS,
};
use crate::report::JsonLine;
use crate::virtio::{PciTransport, Transport};
use crate::virtio_scsi::{VirtioScsi, VirtioScsiConfig, VirtioScsiError};

/// Guest time the whole scenario may take before the runner gives up.
pub const SCENARIO_DEADLINE_US: u64 = 60_000_000;
/// The guest's I2 budget for one HwInterrupt call (see `run_scenario`).
pub const GUEST_MAX_INTERRUPT_US: u64 = 10_000;
/// Sense key UNIT ATTENTION: the command is retried once (after power-on or reset).
const SENSE_KEY_UNIT_ATTENTION: u8 = 0x6;

/// Why a scenario failed; its `Display` is the result line's `reason`.
#[derive(Clone, Copy, Debug)]
pub enum Failure<'a> {
    Args(ArgError<'a>),
    Pci(PciError),
    Adapter(PortError<VirtioScsiError>),
    OutOfDmaMemory,
    Submit(&'static str, PortError<VirtioScsiError>),
    /// A command ended with an error status.
    Command {
        op: &'static str,
        lba: u64,
        status: SrbStatus,
        scsi_status: u8,
        sense_key: Option<u8>,
    },
    /// Requests still outstanding at the deadline.
    Timeout {
        op: &'static str,
        in_flight: usize,
    },
    Mismatch {
        lba: u64,
    },
    BlockSize(u32),
    ShortTransfer {
        op: &'static str,
        got: u32,
    },
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Args(e) => write!(f, "bad command line: {e}"),
            Failure::Pci(e) => write!(f, "{e}"),
            Failure::Adapter(e) => write!(f, "{e}"),
            Failure::OutOfDmaMemory => write!(f, "out of DMA memory"),
            Failure::Submit(op, e) => write!(f, "{op}: submit failed: {e}"),
            Failure::Command {
                op,
                lba,
                status,
                scsi_status,
                sense_key,
            } => {
                write!(
                    f,
                    "{op} lba {lba}: srb status {}, scsi status {scsi_status:#04x}",
                    status.name()
                )?;
                match sense_key {
                    Some(k) => write!(f, ", sense key {k:#x}"),
                    None => Ok(()),
                }
            }
            Failure::Timeout { op, in_flight } => {
                write!(f, "{op}: {in_flight} requests outstanding at the deadline")
            }
            Failure::Mismatch { lba } => write!(f, "data read back from lba {lba} differs"),
            Failure::BlockSize(b) => write!(f, "unsupported block size {b}"),
            Failure::ShortTransfer { op, got } => write!(f, "{op}: only {got} bytes returned"),
        }
    }
}

/// What the scenario found, for the result line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub block_size: u32,
    pub capacity: u64,
    /// All `blocks` LBAs were written (the `lbas` field lists them).
    pub written: bool,
    pub completed_by_interrupt: u64,
    pub completed_by_poll: u64,
    pub stale_completions: u64,
    pub interrupts: u64,
    pub interrupts_not_claimed: u64,
    pub timer_calls: u64,
    pub notifications: u64,
    pub unit_attention_retries: u64,
    /// The rule checker's report: every violation counted, the first ones kept.
    pub violations: u64,
    pub violation_list: [Option<Violation>; MAX_VIOLATIONS],
    pub times: RoutineTimes,
}

/// Entry point of the guest image. Returns the isa-debug-exit code.
pub fn run<P: Platform, C: PciConfig, D: Dma>(
    platform: &mut P,
    pci: &C,
    dma: &mut D,
    cmdline: &str,
    out: &mut dyn Write,
) -> u8 {
    let args = match GuestArgs::parse(cmdline) {
        Ok(a) => a,
        Err(e) => {
            return report_result(
                platform,
                out,
                None,
                &Outcome::default(),
                Err(Failure::Args(e)),
            )
        }
    };
    let dev = match pci::find_virtio_scsi(pci, &mut BarAllocator::default()) {
        Ok(d) => d,
        Err(e) => {
            return report_result(
                platform,
                out,
                Some(&args),
                &Outcome::default(),
                Err(Failure::Pci(e)),
            )
        }
    };
    let _ = JsonLine::event(out, "adapter")
        .u64("bus", u64::from(dev.func.bus))
        .u64("device", u64::from(dev.func.device))
        .u64("function", u64::from(dev.func.function))
        .u64("vendor_id", u64::from(dev.func.vendor_id))
        .u64("device_id", u64::from(dev.func.device_id))
        .u64("common_cfg", dev.common.address)
        .u64("notify_cfg", dev.notify.address)
        .u64(
            "notify_off_multiplier",
            u64::from(dev.notify_off_multiplier),
        )
        .u64(
            "msix_table_size",
            u64::from(dev.msix.map_or(0, |m| m.table_size)),
        )
        .finish();
    // SAFETY: find_virtio_scsi assigned and enabled the BARs inside PCI_MMIO_WINDOW,
    // which the image identity-maps uncached; nothing else touches this function.
    let transport = unsafe { PciTransport::new(pci, &dev) };
    let mut outcome = Outcome::default();
    let result = run_scenario(platform, transport, dma, &args, out, &mut outcome);
    report_result(platform, out, Some(&args), &outcome, result)
}

/// Brings up the port over `transport` and runs the scenario of `args`. Host tests call
/// this with a simulated device.
pub fn run_scenario<'a, T: Transport>(
    platform: &mut dyn Platform,
    transport: T,
    dma: &mut dyn Dma,
    args: &GuestArgs,
    out: &mut dyn Write,
    outcome: &mut Outcome,
) -> Result<(), Failure<'a>> {
    let miniport = VirtioScsi::new(transport, dma, VirtioScsiConfig::new(args.irq))
        .map_err(|e| Failure::Adapter(PortError::FindAdapter(e)))?;
    // I2's budget is wall time. Under nested KVM a HwInterrupt that completes eight
    // requests measures about 3 ms of host preemption and exits (under TCG: a few us),
    // so the guest allows 10 ms; host tests keep the documents' 1 ms.
    let config = PortConfig {
        checker: CheckerConfig {
            max_interrupt_us: GUEST_MAX_INTERRUPT_US,
            ..CheckerConfig::default()
        },
        ..PortConfig::new(platform.tick_us())
    };
    let mut port = Port::with_config(miniport, config);
    let caps = port.initialize(platform).map_err(Failure::Adapter)?;
    let _ = JsonLine::event(out, "adapter_ready")
        .u64("features", port.miniport().features())
        .u64("max_outstanding", u64::from(caps.max_outstanding))
        .u64("queue_depth", u64::from(caps.queue_depth))
        .bool("irq", args.irq)
        .finish();
    let deadline = platform.now_us().saturating_add(SCENARIO_DEADLINE_US);
    let mut s = Scenario {
        port: &mut port,
        platform,
        deadline,
        retries: 0,
    };
    let result = s.smoke(dma, args, out, outcome);
    outcome.unit_attention_retries = s.retries;
    let checker = port.checker();
    outcome.violations = checker.count();
    for (kept, v) in outcome.violation_list.iter_mut().zip(checker.violations()) {
        *kept = Some(*v);
    }
    outcome.times = checker.times();
    let ps = port.stats();
    let ms = port.miniport().stats();
    outcome.completed_by_interrupt = ms.completed_by_interrupt;
    outcome.completed_by_poll = ms.completed_by_poll;
    outcome.stale_completions = ms.stale_completions;
    outcome.notifications = ms.notifications;
    outcome.interrupts = ps.interrupts;
    outcome.interrupts_not_claimed = ps.interrupts_not_claimed;
    outcome.timer_calls = ps.timer_calls;
    result
}

/// A DMA buffer for one request's data.
#[derive(Clone, Copy)]
struct DmaBuf {
    addr: u64,
    ptr: NonNull<u8>,
    len: usize,
}

impl DmaBuf {
    fn alloc(dma: &mut dyn Dma, len: usize) -> Option<DmaBuf> {
        let (addr, ptr) = dma.alloc_pages(len.div_ceil(4096).max(1))?;
        Some(DmaBuf { addr, ptr, len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes of DMA memory owned by this buffer; no request that uses
        // it is outstanding while the runner looks at it.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn data(&self, len: u32, direction: DataDirection) -> DataBuffer {
        DataBuffer {
            device_address: self.addr,
            ptr: self.ptr.as_ptr(),
            len,
            direction,
        }
    }
}

/// One request of a batch in flight.
#[derive(Clone, Copy)]
struct InFlight {
    tag: Tag,
    index: u32,
    retried: bool,
}

struct Scenario<'p, 'q, M: crate::port::Miniport<Error = VirtioScsiError>> {
    port: &'p mut Port<M>,
    platform: &'q mut dyn Platform,
    deadline: u64,
    retries: u64,
}

impl<M: crate::port::Miniport<Error = VirtioScsiError>> Scenario<'_, '_, M> {
    /// Runs `count` requests, at most `bufs.len()` at a time. `make(i, buf)` builds
    /// request `i` using `buf`; `done(i, srb, buf)` checks it. A CHECK CONDITION with
    /// UNIT ATTENTION is retried once.
    fn batch<'a>(
        &mut self,
        op: &'static str,
        bufs: &mut [DmaBuf],
        count: u32,
        make: &mut dyn FnMut(u32, &mut DmaBuf) -> Srb,
        done: &mut dyn FnMut(u32, &Srb, &mut DmaBuf) -> Result<(), Failure<'a>>,
    ) -> Result<(), Failure<'a>> {
        let mut slots: [Option<InFlight>; MAX_SRBS] = [None; MAX_SRBS];
        let width = bufs.len().min(MAX_SRBS);
        let mut next = 0u32;
        let mut finished = 0u32;
        while finished < count {
            while next < count {
                let Some(k) = slots[..width].iter().position(|s| s.is_none()) else {
                    break;
                };
                let srb = make(next, &mut bufs[k]);
                let tag = self.port.submit(srb).map_err(|e| Failure::Submit(op, e))?;
                slots[k] = Some(InFlight {
                    tag,
                    index: next,
                    retried: false,
                });
                next += 1;
            }
            if self.platform.now_us() >= self.deadline {
                return Err(Failure::Timeout {
                    op,
                    in_flight: self.port.in_flight(),
                });
            }
            self.port.run_once(self.platform);
            while let Some(srb) = self.port.poll_completed() {
                let Some(k) = slots
                    .iter()
                    .position(|s| s.is_some_and(|s| s.tag == srb.tag))
                else {
                    continue;
                };
                let Some(f) = slots[k] else { continue };
                let unit_attention = srb.srb_status == SrbStatus::Error
                    && srb.scsi_status == scsi_status::CHECK_CONDITION
                    && srb.sense_key() == Some(SENSE_KEY_UNIT_ATTENTION);
                if unit_attention && !f.retried {
                    self.retries += 1;
                    let again = make(f.index, &mut bufs[k]);
                    let tag = self
                        .port
                        .submit(again)
                        .map_err(|e| Failure::Submit(op, e))?;
                    slots[k] = Some(InFlight {
                        tag,
                        index: f.index,
                        retried: true,
                    });
                    continue;
                }
                slots[k] = None;
                finished += 1;
                done(f.index, &srb, &mut bufs[k])?;
            }
        }
        Ok(())
    }

    fn smoke<'a>(
        &mut self,
        dma: &mut dyn Dma,
        args: &GuestArgs,
        out: &mut dyn Write,
        outcome: &mut Outcome,
    ) -> Result<(), Failure<'a>> {
        let mut small = [DmaBuf::alloc(dma, 4096).ok_or(Failure::OutOfDmaMemory)?];

        // INQUIRY, standard data, 96 bytes.
        let mut inquiry = [0u8; 96];
        self.batch(
            "INQUIRY",
            &mut small,
            1,
            &mut |_, b| {
                b.bytes()[..96].fill(0);
                Srb::new(
                    0,
                    0,
                    0,
                    &[0x12, 0, 0, 0, 96, 0],
                    b.data(96, DataDirection::In),
                )
            },
            &mut |_, srb, b| {
                check_status("INQUIRY", 0, srb)?;
                inquiry.copy_from_slice(&b.bytes()[..96]);
                Ok(())
            },
        )?;
        let _ = JsonLine::event(out, "inquiry")
            .u64("peripheral_type", u64::from(inquiry[0] & 0x1f))
            .display("vendor", &Ascii(&inquiry[8..16]))
            .display("product", &Ascii(&inquiry[16..32]))
            .display("revision", &Ascii(&inquiry[32..36]))
            .finish();

        // READ CAPACITY(10), then (16) when the disk is too big for it.
        let mut cap10 = [0u8; 8];
        self.batch(
            "READ CAPACITY(10)",
            &mut small,
            1,
            &mut |_, b| {
                b.bytes()[..8].fill(0);
                Srb::new(
                    0,
                    0,
                    0,
                    &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    b.data(8, DataDirection::In),
                )
            },
            &mut |_, srb, b| {
                check_status("READ CAPACITY(10)", 0, srb)?;
                cap10.copy_from_slice(&b.bytes()[..8]);
                Ok(())
            },
        )?;
        let last10 = u32::from_be_bytes([cap10[0], cap10[1], cap10[2], cap10[3]]);
        let mut block_size = u32::from_be_bytes([cap10[4], cap10[5], cap10[6], cap10[7]]);
        let mut last_lba = u64::from(last10);
        if last10 == u32::MAX {
            let mut cap16 = [0u8; 32];
            self.batch(
                "READ CAPACITY(16)",
                &mut small,
                1,
                &mut |_, b| {
                    b.bytes()[..32].fill(0);
                    let cdb = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
                    Srb::new(0, 0, 0, &cdb, b.data(32, DataDirection::In))
                },
                &mut |_, srb, b| {
                    check_status("READ CAPACITY(16)", 0, srb)?;
                    cap16.copy_from_slice(&b.bytes()[..32]);
                    Ok(())
                },
            )?;
            let mut l = [0u8; 8];
            l.copy_from_slice(&cap16[..8]);
            last_lba = u64::from_be_bytes(l);
            block_size = u32::from_be_bytes([cap16[8], cap16[9], cap16[10], cap16[11]]);
        }
        let capacity = last_lba + 1;
        outcome.block_size = block_size;
        outcome.capacity = capacity;
        let _ = JsonLine::event(out, "capacity")
            .u64("capacity", capacity)
            .u64("block_size", u64::from(block_size))
            .finish();
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(Failure::BlockSize(block_size));
        }

        let width = (args.queue_depth as usize)
            .min(MAX_SRBS)
            .min(usize::from(
                self.port.capabilities().map_or(1, |c| c.max_outstanding),
            ))
            .max(1);
        let mut bufs = [DmaBuf {
            addr: 0,
            ptr: NonNull::dangling(),
            len: 0,
        }; MAX_SRBS];
        for b in bufs[..width].iter_mut() {
            *b = DmaBuf::alloc(dma, block_size as usize).ok_or(Failure::OutOfDmaMemory)?;
        }
        let bufs = &mut bufs[..width];
        let seed = args.seed;
        let blocks = args.blocks;
        let lba_of = |i: u32| smoke_lba(seed, capacity, blocks, i);

        self.batch(
            "WRITE",
            bufs,
            blocks,
            &mut |i, b| {
                let lba = lba_of(i);
                fill_pattern(seed, lba, b.bytes());
                Srb::new(
                    0,
                    0,
                    0,
                    rw_cdb(false, lba).as_slice(),
                    b.data(block_size, DataDirection::Out),
                )
            },
            &mut |i, srb, _| check_status("WRITE", lba_of(i), srb),
        )?;
        outcome.written = true;
        let _ = JsonLine::event(out, "written")
            .u64("blocks", u64::from(blocks))
            .finish();

        self.batch(
            "READ",
            bufs,
            blocks,
            &mut |i, b| {
                b.bytes().fill(0);
                Srb::new(
                    0,
                    0,
                    0,
                    rw_cdb(true, lba_of(i)).as_slice(),
                    b.data(block_size, DataDirection::In),
                )
            },
            &mut |i, srb, b| {
                let lba = lba_of(i);
                check_status("READ", lba, srb)?;
                if srb.data_transfer_length != block_size {
                    return Err(Failure::ShortTransfer {
                        op: "READ",
                        got: srb.data_transfer_length,
                    });
                }
                if !check_pattern(seed, lba, b.bytes()) {
                    return Err(Failure::Mismatch { lba });
                }
                Ok(())
            },
        )?;
        let _ = JsonLine::event(out, "verified")
            .u64("blocks", u64::from(blocks))
            .finish();
        Ok(())
    }
}

/// A CDB of up to 16 bytes.
struct Cdb {
    bytes: [u8; 16],
    len: usize,
}

impl Cdb {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// READ/WRITE of one block: the 10-byte form when the LBA fits in 32 bits, else 16.
fn rw_cdb(read: bool, lba: u64) -> Cdb {
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

fn check_status<'a>(op: &'static str, lba: u64, srb: &Srb) -> Result<(), Failure<'a>> {
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

/// INQUIRY text fields: trailing spaces dropped, non-printable bytes shown as '.'.
struct Ascii<'a>(&'a [u8]);

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

/// Writes the result line and returns the exit code.
pub(crate) fn report_result(
    platform: &mut dyn Platform,
    out: &mut dyn Write,
    args: Option<&GuestArgs>,
    o: &Outcome,
    result: Result<(), Failure<'_>>,
) -> u8 {
    let mut line = JsonLine::new(out);
    line.str(rf::RESULT, if result.is_ok() { "pass" } else { "fail" });
    if let Err(e) = &result {
        line.display(rf::REASON, e);
    }
    if let Some(a) = args {
        line.str(rf::SCENARIO, a.workload.name())
            .u64(rf::SEED, a.seed)
            .bool(rf::IRQ, a.irq);
    }
    line.u64(rf::BLOCK_SIZE, u64::from(o.block_size))
        .u64(rf::CAPACITY, o.capacity);
    match args {
        Some(a) if o.written => {
            let (seed, capacity, blocks) = (a.seed, o.capacity, a.blocks);
            line.u64_array(
                rf::LBAS,
                &mut (0..blocks).map(|i| smoke_lba(seed, capacity, blocks, i)),
            );
        }
        _ => {
            line.u64_array(rf::LBAS, &mut core::iter::empty());
        }
    }
    line.u64(rf::ELAPSED_US, platform.now_us())
        .u64(rf::COMPLETED_BY_INTERRUPT, o.completed_by_interrupt)
        .u64(rf::COMPLETED_BY_POLL, o.completed_by_poll)
        .u64("stale_completions", o.stale_completions)
        .u64("interrupts", o.interrupts)
        .u64("interrupts_not_claimed", o.interrupts_not_claimed)
        .u64("timer_calls", o.timer_calls)
        .u64("notifications", o.notifications)
        .u64("unit_attention_retries", o.unit_attention_retries)
        .u64(rf::VIOLATIONS, o.violations)
        .violations(rf::VIOLATION_LIST, &mut o.violation_list.iter().flatten())
        .u64(rf::HW_INTERRUPT_MAX_US, o.times.interrupt.max_us)
        .u64(rf::HW_INTERRUPT_TOTAL_US, o.times.interrupt.total_us)
        .u64(rf::HW_TIMER_MAX_US, o.times.timer.max_us)
        .u64(rf::HW_TIMER_TOTAL_US, o.times.timer.total_us)
        .u64(rf::HW_START_IO_MAX_US, o.times.start_io.max_us)
        .u64(rf::HW_START_IO_TOTAL_US, o.times.start_io.total_us)
        .u64(rf::STALL_MAX_US, u64::from(o.times.max_stall_us));
    let _ = line.finish();
    if result.is_ok() {
        EXIT_PASS
    } else {
        EXIT_FAIL
    }
}
