//! The workload runner the guest image calls: finds the adapter, brings up the port
//! and the virtio-scsi miniport, runs the workload of the kernel command line and
//! reports on `out` (one JSON object per line, the result line last).
//!
//! The runner plays the class driver's part: it retries what a class driver retries
//! (UNIT ATTENTION at once; BUSY, TASK SET FULL and a busy HBA after a pause), counts
//! reads that fail with MEDIUM ERROR instead of failing the run, and rescans the bus
//! (REPORT LUNS, READ CAPACITY) after the miniport's BusChangeDetected.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use crate::contract::{
    check_pattern, fill_pattern, io_order, result_fields as rf, smoke_lba, splitmix64,
    timeline_fields as tf, ArgError, GuestArgs, ResetKind, Workload, EXIT_FAIL, EXIT_PASS,
    MAX_REPORTED_IDS, MAX_TIMELINE_ENTRIES,
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
use crate::virtio_scsi::{
    InterruptMode, ResetTmf, VirtioScsi, VirtioScsiError, VirtioScsiSettings, MAX_POLLED_IDS,
    MAX_POLLS,
};

/// The guest's I2 budget for one HwInterrupt call (see `run_scenario`).
pub const GUEST_MAX_INTERRUPT_US: u64 = 10_000;
/// A request answered BUSY or TASK SET FULL is sent again after this pause.
pub const BUSY_RETRY_DELAY_US: u64 = 20_000;
/// How often one request is retried for BUSY or TASK SET FULL before the run fails.
pub const MAX_BUSY_RETRIES: u32 = 1000;
/// How often one request is retried for UNIT ATTENTION (each reset raises one).
pub const MAX_UNIT_ATTENTION_RETRIES: u32 = 8;
/// Medium-error LBAs the result line lists.
pub const MAX_MEDIUM_ERROR_LBAS: usize = 64;

const SENSE_KEY_MEDIUM_ERROR: u8 = 0x3;
const SENSE_KEY_UNIT_ATTENTION: u8 = 0x6;
const TASK_SET_FULL: u8 = 0x28;

/// Why a workload failed; its `Display` is the result line's `reason`.
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
    /// Requests still outstanding at the deadline; `waiting` of them had completed on
    /// the device without the miniport taking them (their interrupt never came, and no
    /// poll looked).
    Timeout {
        op: &'static str,
        in_flight: usize,
        waiting: u32,
    },
    Mismatch {
        lba: u64,
    },
    BlockSize(u32),
    ShortTransfer {
        op: &'static str,
        got: u32,
    },
    /// REPORT LUNS after a bus change no longer lists LUN 0.
    LunGone,
    /// The workload is done, but the bus reset it caused never ended.
    ResetNotEnded,
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
            Failure::Timeout {
                op,
                in_flight,
                waiting,
            } => {
                write!(f, "{op}: {in_flight} requests outstanding at the deadline")?;
                if *waiting > 0 {
                    write!(
                        f,
                        " ({waiting} completed in the used ring, never taken: no interrupt came)"
                    )?;
                }
                Ok(())
            }
            Failure::Mismatch { lba } => write!(f, "data read back from lba {lba} differs"),
            Failure::BlockSize(b) => write!(f, "unsupported block size {b}"),
            Failure::ShortTransfer { op, got } => write!(f, "{op}: only {got} bytes returned"),
            Failure::LunGone => write!(f, "REPORT LUNS after a bus change lacks LUN 0"),
            Failure::ResetNotEnded => write!(f, "the bus reset had not ended at the deadline"),
        }
    }
}

/// What the workload found, for the result line.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub block_size: u32,
    pub capacity: u64,
    /// All `blocks` LBAs were written and acknowledged (the `lbas` field lists them).
    pub written: bool,
    /// Requests the workload submitted, retries included.
    pub requests: u64,
    pub unit_attention_retries: u64,
    pub busy_retries: u64,
    pub queue_full_retries: u64,
    pub medium_errors: u64,
    pub medium_error_lbas: [u64; MAX_MEDIUM_ERROR_LBAS],
    pub rescans: u64,
    /// `bench`: completions per second of the read phase.
    pub iops: u64,
    /// The rule checker's report: every violation counted, the first ones kept.
    pub violations: u64,
    pub violation_list: [Option<Violation>; MAX_VIOLATIONS],
    pub times: RoutineTimes,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            block_size: 0,
            capacity: 0,
            written: false,
            requests: 0,
            unit_attention_retries: 0,
            busy_retries: 0,
            queue_full_retries: 0,
            medium_errors: 0,
            medium_error_lbas: [0; MAX_MEDIUM_ERROR_LBAS],
            rescans: 0,
            iops: 0,
            violations: 0,
            violation_list: [None; MAX_VIOLATIONS],
            times: RoutineTimes::default(),
        }
    }
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
        Err(e) => return report_failure(platform, out, None, Failure::Args(e)),
    };
    let dev = match pci::find_virtio_scsi(pci, &mut BarAllocator::default()) {
        Ok(d) => d,
        Err(e) => return report_failure(platform, out, Some(&args), Failure::Pci(e)),
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
    run_scenario(platform, transport, dma, &args, out)
}

/// The miniport's settings for the arguments of the kernel command line.
pub fn miniport_settings(a: &GuestArgs) -> VirtioScsiSettings {
    VirtioScsiSettings {
        interrupts: if a.irq {
            InterruptMode::Msix
        } else {
            InterruptMode::None
        },
        poll: a.poll,
        poll_interval_us: 1,
        watchdog_interval_us: a.watchdog_us,
        tmf_timeout_us: u64::from(a.tmf_timeout_ms) * 1000,
        reset: match a.reset {
            ResetKind::Lu => ResetTmf::LogicalUnit,
            ResetKind::Nexus => ResetTmf::ItNexus,
        },
    }
}

// The result and timeline lines list what the miniport keeps, no more and no less.
const _: () = assert!(MAX_POLLED_IDS == MAX_REPORTED_IDS && MAX_POLLS == MAX_TIMELINE_ENTRIES);

/// Brings up the port over `transport`, runs the workload of `args` and reports it.
/// Returns the isa-debug-exit code. Host tests call this with a simulated device.
pub fn run_scenario<T: Transport>(
    platform: &mut dyn Platform,
    transport: T,
    dma: &mut dyn Dma,
    args: &GuestArgs,
    out: &mut dyn Write,
) -> u8 {
    let miniport = match VirtioScsi::new(transport, dma, miniport_settings(args)) {
        Ok(m) => m,
        Err(e) => {
            let f = Failure::Adapter(PortError::FindAdapter(e));
            return report_failure(platform, out, Some(args), f);
        }
    };
    // I2's budget is wall time. Under nested KVM a HwInterrupt that completes eight
    // requests measures about 3 ms of host preemption and exits (under TCG: a few us),
    // so the guest allows 10 ms; host tests of the port keep the documents' 1 ms.
    let config = PortConfig {
        checker: CheckerConfig {
            max_interrupt_us: GUEST_MAX_INTERRUPT_US,
            ..CheckerConfig::default()
        },
        reset_hold_us: args.hold_ms.saturating_mul(1000),
        bus_reset_retries: args.retries,
        ..PortConfig::new(platform.tick_us())
    };
    let mut port = Port::with_config(miniport, config);
    let mut outcome = Outcome::default();
    let result = match port.initialize(platform) {
        Ok(caps) => {
            let _ = JsonLine::event(out, "adapter_ready")
                .u64("features", port.miniport().features())
                .u64("max_outstanding", u64::from(caps.max_outstanding))
                .u64("queue_depth", u64::from(caps.queue_depth))
                .bool("irq", args.irq)
                .bool("poll", args.poll)
                .finish();
            run_workload(&mut port, platform, dma, args, out, &mut outcome)
        }
        Err(e) => Err(Failure::Adapter(e)),
    };
    let checker = port.checker();
    outcome.violations = checker.count();
    for (kept, v) in outcome.violation_list.iter_mut().zip(checker.violations()) {
        *kept = Some(*v);
    }
    outcome.times = checker.times();
    report_timeline(out, port.miniport());
    report_result(platform, out, Some(args), &outcome, Some(&port), result)
}

fn run_workload<'a, M>(
    port: &mut Port<M>,
    platform: &mut dyn Platform,
    dma: &mut dyn Dma,
    args: &GuestArgs,
    out: &mut dyn Write,
    outcome: &mut Outcome,
) -> Result<(), Failure<'a>>
where
    M: crate::port::Miniport<Error = VirtioScsiError>,
{
    let deadline = platform
        .now_us()
        .saturating_add(u64::from(args.deadline_ms) * 1000);
    let small = DmaBuf::alloc(dma, 4096).ok_or(Failure::OutOfDmaMemory)?;
    let rescan_buf = DmaBuf::alloc(dma, 4096).ok_or(Failure::OutOfDmaMemory)?;
    let mut s = Runner {
        port,
        platform,
        deadline,
        args,
        outcome,
        small,
        rescan_buf,
        rescan: Rescan::Idle,
    };
    s.identify(out)?;
    let block_size = s.outcome.block_size;
    let width = (args.queue_depth as usize)
        .min(MAX_SRBS - 1)
        .min(usize::from(
            s.port.capabilities().map_or(1, |c| c.max_outstanding),
        ))
        .max(1);
    let mut bufs = [DmaBuf::EMPTY; MAX_SRBS];
    for b in bufs[..width].iter_mut() {
        *b = DmaBuf::alloc(dma, block_size as usize).ok_or(Failure::OutOfDmaMemory)?;
    }
    let bufs = &mut bufs[..width];
    match args.workload {
        Workload::Smoke => s.write_and_verify(bufs, out, false, false),
        Workload::Io => s.write_and_verify(bufs, out, true, false),
        Workload::ResetUnderLoad => s.write_and_verify(bufs, out, true, true),
        Workload::Bench => s.bench(bufs, out),
    }?;
    s.finish_rescan()?;
    s.quiesce()
}

/// A DMA buffer for one request's data.
#[derive(Clone, Copy)]
struct DmaBuf {
    addr: u64,
    ptr: NonNull<u8>,
    len: usize,
}

impl DmaBuf {
    const EMPTY: DmaBuf = DmaBuf {
        addr: 0,
        ptr: NonNull::dangling(),
        len: 0,
    };

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

/// One request of a batch: in flight, or waiting to be sent again.
#[derive(Clone, Copy)]
struct InFlight {
    tag: Tag,
    index: u32,
    unit_attention_retries: u32,
    busy_retries: u32,
    /// Waiting until then before it is submitted again (BUSY, TASK SET FULL).
    resubmit_at: Option<u64>,
}

/// The bus rescan after BusChangeDetected: REPORT LUNS, then READ CAPACITY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rescan {
    Idle,
    /// Asked for; starts when the side request is free.
    Pending,
    ReportLuns(Tag),
    ReadCapacity(Tag),
}

/// What to do with a completed SRB, the class driver's way.
enum Disposition {
    Done,
    RetryNow,
    RetryLater,
    /// A read that failed with MEDIUM ERROR: counted, not verified, not fatal.
    Unreadable,
}

struct Runner<'p, 'q, 'a, M: crate::port::Miniport<Error = VirtioScsiError>> {
    port: &'p mut Port<M>,
    platform: &'q mut dyn Platform,
    deadline: u64,
    args: &'a GuestArgs,
    outcome: &'a mut Outcome,
    /// For INQUIRY and READ CAPACITY.
    small: DmaBuf,
    /// For the rescan's requests, which run beside the others.
    rescan_buf: DmaBuf,
    rescan: Rescan,
}

/// The phase of a write-and-verify run, for the batch's hooks.
struct Phase<'f, 'a> {
    op: &'static str,
    reads: bool,
    /// Reset the bus once this many requests completed (`reset-under-load`).
    reset_after: Option<u32>,
    make: &'f mut dyn FnMut(u32, &mut DmaBuf) -> Srb,
    done: &'f mut dyn FnMut(u32, &Srb, &mut DmaBuf) -> Result<(), Failure<'a>>,
}

impl<M: crate::port::Miniport<Error = VirtioScsiError>> Runner<'_, '_, '_, M> {
    fn srb(&self, cdb: &[u8], data: DataBuffer) -> Srb {
        let mut s = Srb::new(0, 0, 0, cdb, data);
        s.timeout_us = self.args.srb_timeout_ms.saturating_mul(1000);
        s
    }

    fn timeout<'a>(&self, op: &'static str) -> Failure<'a> {
        Failure::Timeout {
            op,
            in_flight: self.port.in_flight(),
            waiting: self.port.miniport().completions_waiting(),
        }
    }

    fn submit<'a>(&mut self, op: &'static str, srb: Srb) -> Result<Tag, Failure<'a>> {
        self.outcome.requests += 1;
        self.port.submit(srb).map_err(|e| Failure::Submit(op, e))
    }

    /// Waits for and dispatches the next events.
    fn step(&mut self) {
        if !self.port.run_once(self.platform) {
            // Nothing outstanding (a retry is waiting): let time pass.
            let events = self.platform.wait_for_events();
            self.port.dispatch(self.platform, events);
        }
        if self.port.take_bus_change() && self.rescan == Rescan::Idle {
            self.rescan = Rescan::Pending;
        }
    }

    fn classify(&mut self, srb: &Srb, f: &InFlight, reads: bool) -> Disposition {
        let key = srb.sense_key();
        let check =
            srb.srb_status == SrbStatus::Error && srb.scsi_status == scsi_status::CHECK_CONDITION;
        if check
            && key == Some(SENSE_KEY_UNIT_ATTENTION)
            && f.unit_attention_retries < MAX_UNIT_ATTENTION_RETRIES
        {
            self.outcome.unit_attention_retries += 1;
            return Disposition::RetryNow;
        }
        if check && reads && key == Some(SENSE_KEY_MEDIUM_ERROR) {
            return Disposition::Unreadable;
        }
        let busy = srb.srb_status == SrbStatus::Busy
            || srb.srb_status == SrbStatus::Error && srb.scsi_status == scsi_status::BUSY;
        let full = srb.srb_status == SrbStatus::Error && srb.scsi_status == TASK_SET_FULL;
        if (busy || full) && f.busy_retries < MAX_BUSY_RETRIES {
            if full {
                self.outcome.queue_full_retries += 1;
            } else {
                self.outcome.busy_retries += 1;
            }
            return Disposition::RetryLater;
        }
        Disposition::Done
    }

    /// Runs `count` requests, at most `bufs.len()` at a time, visiting indices in
    /// `order`. Retries what `classify` says, and runs the rescan on the side.
    fn batch<'a>(
        &mut self,
        bufs: &mut [DmaBuf],
        count: u32,
        order: &dyn Fn(u32) -> u32,
        phase: &mut Phase<'_, 'a>,
    ) -> Result<(), Failure<'a>> {
        let op = phase.op;
        let mut slots: [Option<InFlight>; MAX_SRBS] = [None; MAX_SRBS];
        let width = bufs.len().min(MAX_SRBS);
        let mut next = 0u32;
        let mut finished = 0u32;
        let mut reset_done = false;
        while finished < count {
            while next < count {
                let Some(k) = slots[..width].iter().position(|s| s.is_none()) else {
                    break;
                };
                let index = order(next);
                let srb = (phase.make)(index, &mut bufs[k]);
                let tag = self.submit(op, srb)?;
                slots[k] = Some(InFlight {
                    tag,
                    index,
                    unit_attention_retries: 0,
                    busy_retries: 0,
                    resubmit_at: None,
                });
                next += 1;
            }
            let now = self.platform.now_us();
            for k in 0..width {
                let Some(f) = slots[k] else { continue };
                if f.resubmit_at.is_some_and(|t| t <= now) {
                    let srb = (phase.make)(f.index, &mut bufs[k]);
                    let tag = self.submit(op, srb)?;
                    slots[k] = Some(InFlight {
                        tag,
                        resubmit_at: None,
                        ..f
                    });
                }
            }
            self.advance_rescan()?;
            if now >= self.deadline {
                return Err(self.timeout(op));
            }
            if let Some(after) = phase.reset_after {
                // Reset while the device holds requests.
                self.port.start_pending(self.platform);
                if !reset_done && finished >= after && self.port.active() > 0 {
                    reset_done = true;
                    self.port.reset_bus(self.platform, 0);
                }
            }
            self.step();
            while let Some(srb) = self.port.poll_completed() {
                if self.side_done(&srb)? {
                    continue;
                }
                let Some(k) = slots
                    .iter()
                    .position(|s| s.is_some_and(|s| s.tag == srb.tag && s.resubmit_at.is_none()))
                else {
                    continue;
                };
                let Some(mut f) = slots[k] else { continue };
                match self.classify(&srb, &f, phase.reads) {
                    Disposition::RetryNow => {
                        f.unit_attention_retries += 1;
                        let again = (phase.make)(f.index, &mut bufs[k]);
                        f.tag = self.submit(op, again)?;
                        slots[k] = Some(f);
                    }
                    Disposition::RetryLater => {
                        f.busy_retries += 1;
                        f.resubmit_at = Some(self.platform.now_us() + BUSY_RETRY_DELAY_US);
                        slots[k] = Some(f);
                    }
                    Disposition::Unreadable => {
                        slots[k] = None;
                        finished += 1;
                        let o = &mut *self.outcome;
                        if let Some(e) = o.medium_error_lbas.get_mut(o.medium_errors as usize) {
                            *e = srb_lba(&srb);
                        }
                        o.medium_errors += 1;
                    }
                    Disposition::Done => {
                        slots[k] = None;
                        finished += 1;
                        (phase.done)(f.index, &srb, &mut bufs[k])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One request on the small buffer, with the same retries as a batch.
    fn single<'a>(
        &mut self,
        op: &'static str,
        cdb: &[u8],
        len: u32,
        into: &mut [u8],
    ) -> Result<(), Failure<'a>> {
        let mut small = [self.small];
        let srb = self.srb(cdb, small[0].data(len, DataDirection::In));
        let mut result = [0u8; 64];
        let n = into.len().min(result.len());
        self.batch(
            &mut small,
            1,
            &|i| i,
            &mut Phase {
                op,
                reads: false,
                reset_after: None,
                make: &mut |_, b| {
                    b.bytes()[..len as usize].fill(0);
                    srb
                },
                done: &mut |_, srb, b| {
                    check_status(op, 0, srb)?;
                    result[..n].copy_from_slice(&b.bytes()[..n]);
                    Ok(())
                },
            },
        )?;
        into[..n].copy_from_slice(&result[..n]);
        Ok(())
    }

    /// INQUIRY and READ CAPACITY.
    fn identify<'a>(&mut self, out: &mut dyn Write) -> Result<(), Failure<'a>> {
        let mut inquiry = [0u8; 64];
        self.single("INQUIRY", &[0x12, 0, 0, 0, 96, 0], 96, &mut inquiry)?;
        let _ = JsonLine::event(out, "inquiry")
            .u64("peripheral_type", u64::from(inquiry[0] & 0x1f))
            .display("vendor", &Ascii(&inquiry[8..16]))
            .display("product", &Ascii(&inquiry[16..32]))
            .display("revision", &Ascii(&inquiry[32..36]))
            .finish();
        let (capacity, block_size) = self.read_capacity()?;
        self.outcome.block_size = block_size;
        self.outcome.capacity = capacity;
        let _ = JsonLine::event(out, "capacity")
            .u64("capacity", capacity)
            .u64("block_size", u64::from(block_size))
            .finish();
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(Failure::BlockSize(block_size));
        }
        Ok(())
    }

    /// READ CAPACITY(10), then (16) when the disk is too big for it.
    fn read_capacity<'a>(&mut self) -> Result<(u64, u32), Failure<'a>> {
        let mut cap10 = [0u8; 8];
        self.single(
            "READ CAPACITY(10)",
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            8,
            &mut cap10,
        )?;
        let last10 = u32::from_be_bytes([cap10[0], cap10[1], cap10[2], cap10[3]]);
        let block_size = u32::from_be_bytes([cap10[4], cap10[5], cap10[6], cap10[7]]);
        if last10 != u32::MAX {
            return Ok((u64::from(last10) + 1, block_size));
        }
        let mut cap16 = [0u8; 32];
        let cdb = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        self.single("READ CAPACITY(16)", &cdb, 32, &mut cap16)?;
        let mut l = [0u8; 8];
        l.copy_from_slice(&cap16[..8]);
        let block_size = u32::from_be_bytes([cap16[8], cap16[9], cap16[10], cap16[11]]);
        Ok((u64::from_be_bytes(l) + 1, block_size))
    }

    /// Starts the next request of a pending rescan when the small buffer is free.
    fn advance_rescan<'a>(&mut self) -> Result<(), Failure<'a>> {
        if self.rescan == Rescan::Pending {
            // REPORT LUNS, 64 bytes: the header and seven LUNs.
            let cdb = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
            let srb = self.srb(&cdb, self.rescan_buf.data(64, DataDirection::In));
            self.rescan_buf.bytes()[..64].fill(0);
            let tag = self.submit("REPORT LUNS", srb)?;
            self.rescan = Rescan::ReportLuns(tag);
        }
        Ok(())
    }

    /// Takes a completion of the rescan's side requests. Returns whether it was one.
    fn side_done<'a>(&mut self, srb: &Srb) -> Result<bool, Failure<'a>> {
        let retry_ua = srb.srb_status == SrbStatus::Error
            && srb.sense_key() == Some(SENSE_KEY_UNIT_ATTENTION)
            || srb.srb_status == SrbStatus::BusReset;
        match self.rescan {
            Rescan::ReportLuns(tag) if tag == srb.tag => {
                if retry_ua {
                    self.rescan = Rescan::Pending;
                    return Ok(true);
                }
                check_status("REPORT LUNS", 0, srb)?;
                let b = self.rescan_buf.bytes();
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                // LUN 0 in single-level format is eight zero bytes.
                let has_lun0 = b[8..64]
                    .chunks(8)
                    .take(len / 8)
                    .any(|l| l.iter().all(|&x| x == 0));
                if !has_lun0 {
                    return Err(Failure::LunGone);
                }
                let cdb = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let srb = self.srb(&cdb, self.rescan_buf.data(8, DataDirection::In));
                let tag = self.submit("READ CAPACITY(10)", srb)?;
                self.rescan = Rescan::ReadCapacity(tag);
                Ok(true)
            }
            Rescan::ReadCapacity(tag) if tag == srb.tag => {
                if retry_ua {
                    self.rescan = Rescan::Pending;
                    return Ok(true);
                }
                check_status("READ CAPACITY(10)", 0, srb)?;
                self.outcome.rescans += 1;
                self.rescan = Rescan::Idle;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Ends with no rescan pending.
    fn finish_rescan<'a>(&mut self) -> Result<(), Failure<'a>> {
        loop {
            if self.port.take_bus_change() && self.rescan == Rescan::Idle {
                self.rescan = Rescan::Pending;
            }
            if self.rescan == Rescan::Idle {
                return Ok(());
            }
            self.advance_rescan()?;
            if self.platform.now_us() >= self.deadline {
                return Err(self.timeout("rescan"));
            }
            self.step();
            while let Some(srb) = self.port.poll_completed() {
                self.side_done(&srb)?;
            }
        }
    }

    /// Waits until a bus reset still under way has ended, so the run ends on an idle
    /// adapter (a reset whose TMF hangs without a timer to give up on it never does).
    fn quiesce<'a>(&mut self) -> Result<(), Failure<'a>> {
        while self.port.miniport().resetting() || self.port.in_flight() > 0 {
            if self.platform.now_us() >= self.deadline {
                return Err(Failure::ResetNotEnded);
            }
            self.step();
            while let Some(srb) = self.port.poll_completed() {
                self.side_done(&srb)?;
            }
        }
        Ok(())
    }

    /// `smoke`, `io` and `reset-under-load`: write every block, then read it back.
    fn write_and_verify<'a>(
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
                done: &mut |i, srb, _| check_status("WRITE", lba_of(i), srb),
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
            },
        )?;
        let _ = JsonLine::event(out, "verified")
            .u64("blocks", u64::from(blocks) - self.outcome.medium_errors)
            .u64("unreadable", self.outcome.medium_errors)
            .finish();
        Ok(())
    }

    /// `bench`: single-block reads of seeded random LBAs at the queue depth.
    fn bench<'a>(&mut self, bufs: &mut [DmaBuf], out: &mut dyn Write) -> Result<(), Failure<'a>> {
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
                done: &mut |i, srb, _| check_status("READ", lba_of(i), srb),
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

/// The LBA of a READ/WRITE(10/16) SRB.
fn srb_lba(srb: &Srb) -> u64 {
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

/// The guest's side of the timeline (contract::timeline_fields).
fn report_timeline<T: Transport>(out: &mut dyn Write, m: &VirtioScsi<T>) {
    let t = m.trail();
    let _ = JsonLine::event(out, tf::EVENT)
        .u64_pairs(
            tf::POLLS,
            &mut t.polls().iter().map(|&(at, n)| (at, u64::from(n))),
        )
        .u64_pairs(tf::RESETS, &mut t.resets().iter().copied())
        .bool(tf::TRUNCATED, t.truncated())
        .finish();
}

/// A failure before the port exists: the result line with what is known.
fn report_failure(
    platform: &mut dyn Platform,
    out: &mut dyn Write,
    args: Option<&GuestArgs>,
    failure: Failure<'_>,
) -> u8 {
    report_result(platform, out, args, &Outcome::default(), None, Err(failure))
}

/// Counters of the port and the miniport, for the result line.
pub trait Counters {
    fn counters(&self, line: &mut JsonLine<'_>);
}

impl<T: Transport> Counters for Port<VirtioScsi<T>> {
    fn counters(&self, line: &mut JsonLine<'_>) {
        let ms = self.miniport().stats();
        let t = self.miniport().trail();
        let ps = self.stats();
        line.u64(rf::INTERRUPTS, ps.interrupts)
            .u64(rf::INTERRUPTS_NOT_CLAIMED, ps.interrupts_not_claimed)
            .u64(rf::TIMER_CALLS, ps.timer_calls)
            .u64(rf::SRB_TIMEOUTS, ps.srb_timeouts)
            .u64(rf::BUS_RESETS, ps.bus_resets)
            .u64(rf::BUS_RESET_RETRIES, ps.bus_reset_retries)
            .u64(rf::RECLAIMED, ps.reclaimed)
            .u64(rf::RESETS_DETECTED, ps.resets_detected);
        if let Some(t) = ms.first_request_us {
            line.u64(rf::FIRST_REQUEST_US, t);
        }
        line.u64(rf::COMPLETED_BY_INTERRUPT, ms.completed_by_interrupt)
            .u64(rf::COMPLETED_BY_POLL, ms.completed_by_poll)
            .u64_array(rf::POLLED_IDS, &mut t.polled_ids().iter().copied())
            .u64(rf::STALE_COMPLETIONS, ms.stale_completions)
            .u64(rf::NOTIFICATIONS, ms.notifications)
            .u64(rf::TMFS_SENT, ms.tmfs_sent)
            .u64(rf::TMFS_COMPLETED, ms.tmfs_completed)
            .u64(rf::TMFS_FAILED, ms.tmfs_failed)
            .u64(rf::TMF_TIMEOUTS, ms.tmf_timeouts)
            .u64(rf::DEVICE_RESETS, ms.device_resets)
            .u64(rf::RESET_MAX_US, ms.reset_max_us)
            .u64(rf::RESET_TOTAL_US, ms.reset_total_us)
            .u64(rf::EVENTS, ms.events)
            .u64(rf::EVENTS_MISSED, ms.events_missed)
            .u64(rf::TRANSPORT_RESETS, ms.transport_resets)
            .u64(rf::PARAM_CHANGES, ms.param_changes)
            .u64(rf::CONFIG_CHANGES, ms.config_changes)
            .u64(rf::LAT_INTERRUPT_P50_US, t.latency_interrupt.percentile(50))
            .u64(rf::LAT_INTERRUPT_P99_US, t.latency_interrupt.percentile(99))
            .u64(rf::LAT_POLL_P50_US, t.latency_poll.percentile(50))
            .u64(rf::LAT_POLL_P99_US, t.latency_poll.percentile(99))
            .u64(
                rf::LAT_MAX_US,
                t.latency_interrupt.max().max(t.latency_poll.max()),
            );
    }
}

/// Writes the result line and returns the exit code.
pub(crate) fn report_result(
    platform: &mut dyn Platform,
    out: &mut dyn Write,
    args: Option<&GuestArgs>,
    o: &Outcome,
    port: Option<&dyn Counters>,
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
            .bool(rf::IRQ, a.irq)
            .bool(rf::POLL, a.poll);
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
    line.u64(rf::ELAPSED_US, platform.now_us());
    if let Some(p) = port {
        p.counters(&mut line);
    }
    let mut medium = o.medium_error_lbas.iter().copied();
    let listed = (o.medium_errors as usize).min(MAX_MEDIUM_ERROR_LBAS);
    line.u64(rf::REQUESTS, o.requests)
        .u64(rf::UNIT_ATTENTION_RETRIES, o.unit_attention_retries)
        .u64(rf::BUSY_RETRIES, o.busy_retries)
        .u64(rf::QUEUE_FULL_RETRIES, o.queue_full_retries)
        .u64(rf::MEDIUM_ERRORS, o.medium_errors)
        .u64_array(rf::MEDIUM_ERROR_LBAS, &mut medium.by_ref().take(listed))
        .u64(rf::RESCANS, o.rescans)
        .u64(rf::IOPS, o.iops)
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
