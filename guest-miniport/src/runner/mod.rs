//! The workload runner the guest image calls: finds the adapter, brings up the port
//! and the virtio-scsi miniport, runs the workload of the kernel command line and
//! reports on `out` (one JSON object per line, the result line last).
//!
//! The runner plays the class driver's part: it retries what a class driver retries
//! (UNIT ATTENTION at once; BUSY, TASK SET FULL and a busy HBA after a pause), counts
//! reads that fail with MEDIUM ERROR instead of failing the run, and rescans the bus
//! (REPORT LUNS, READ CAPACITY) after the miniport's BusChangeDetected.
//!
//! This file brings the adapter up and picks the workload; `class_driver` keeps the
//! requests in flight and retries them, `workloads` holds the workloads, `rescan` the
//! bus rescan, `scsi` the CDBs and status checks, `outcome` what a run ends with, and
//! `report` the report lines.

use core::fmt::Write;

use crate::contract::{GuestArgs, ResetKind, Workload, MAX_REPORTED_IDS, MAX_TIMELINE_ENTRIES};
use crate::pci::{self, BarAllocator};
use crate::platform::{Dma, PciConfig, Platform};
use crate::port::{CheckerConfig, Port, PortConfig, PortError, Routing, MAX_SRBS};
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

mod class_driver;
mod outcome;
mod report;
mod rescan;
mod scsi;
mod workloads;

use class_driver::{DmaBuf, Rescan, Runner};
pub use outcome::{Failure, Outcome};
pub use report::Counters;
use report::{report_failure, report_result, report_timeline};

/// Entry point of the guest image. Returns the isa-debug-exit code. The workload runs
/// on this CPU while the platform's other CPUs dispatch their events into the port.
pub fn run<P: Platform, C: PciConfig + Sync, D: Dma>(
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
    scenario(
        platform,
        transport,
        dma,
        &args,
        out,
        &|port, platform, body| platform.with_secondaries(port, body),
    )
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
        deferred: a.deferred,
        bug: a.bug,
    }
}

// The result and timeline lines list what the miniport keeps, no more and no less.
const _: () = assert!(MAX_POLLED_IDS == MAX_REPORTED_IDS && MAX_POLLS == MAX_TIMELINE_ENTRIES);

/// Brings up the port over `transport`, runs the workload of `args` on one CPU and
/// reports it. Returns the isa-debug-exit code. Host tests call this with a simulated
/// device.
pub fn run_scenario<T: Transport>(
    platform: &mut dyn Platform,
    transport: T,
    dma: &mut dyn Dma,
    args: &GuestArgs,
    out: &mut dyn Write,
) -> u8 {
    scenario(platform, transport, dma, args, out, &|_, platform, body| {
        body(platform)
    })
}

/// How the workload shares the port with the platform's other CPUs while it runs.
type Share<'s, T> =
    &'s dyn Fn(&Port<VirtioScsi<T>>, &mut dyn Platform, &mut dyn FnMut(&mut dyn Platform));

/// The port's settings for `args`: timer resolution, reset hold, retries, the guest's
/// I2 budget, and which CPU takes interrupts and the timer.
fn port_config(platform: &dyn Platform, args: &GuestArgs) -> PortConfig {
    // I2's budget is wall time. Under nested KVM a HwInterrupt that completes eight
    // requests measures about 3 ms of host preemption and exits (under TCG: a few us),
    // so the guest allows 10 ms; host tests of the port keep the documents' 1 ms.
    PortConfig {
        checker: CheckerConfig {
            max_interrupt_us: GUEST_MAX_INTERRUPT_US,
            ..CheckerConfig::default()
        },
        reset_hold_us: args.hold_ms.saturating_mul(1000),
        bus_reset_retries: args.retries,
        routing: Routing {
            cpus: platform.cpus(),
            interrupt_cpu: args.routed_cpu(args.irq_cpu).min(platform.cpus() - 1),
            timer_cpu: args.routed_cpu(args.timer_cpu).min(platform.cpus() - 1),
        },
        ..PortConfig::new(platform.tick_us())
    }
}

fn scenario<T: Transport>(
    platform: &mut dyn Platform,
    transport: T,
    dma: &mut dyn Dma,
    args: &GuestArgs,
    out: &mut dyn Write,
    share: Share<'_, T>,
) -> u8 {
    let miniport = match VirtioScsi::new(transport, dma, miniport_settings(args)) {
        Ok(m) => m,
        Err(e) => {
            let f = Failure::Adapter(PortError::FindAdapter(e));
            return report_failure(platform, out, Some(args), f);
        }
    };
    let port = Port::with_config(miniport, port_config(platform, args));
    let mut outcome = Outcome::default();
    let result = match port.initialize(platform) {
        Ok(caps) => {
            let _ = JsonLine::event(out, "adapter_ready")
                .u64("features", port.miniport().features())
                .u64("max_outstanding", u64::from(caps.max_outstanding))
                .u64("queue_depth", u64::from(caps.queue_depth))
                .bool("irq", args.irq)
                .bool("poll", args.poll)
                .u64("cpus", platform.cpus() as u64)
                .finish();
            let mut result = Ok(());
            share(&port, platform, &mut |platform| {
                result = run_workload(&port, platform, dma, args, out, &mut outcome);
            });
            result
        }
        Err(e) => Err(Failure::Adapter(e)),
    };
    let checker = port.checker();
    outcome.violations = checker.count();
    for (kept, v) in outcome.violation_list.iter_mut().zip(checker.violations()) {
        *kept = Some(v);
    }
    outcome.times = checker.times();
    report_timeline(out, &port);
    report_result(platform, out, Some(args), &outcome, Some(&port), result)
}

fn run_workload<'a, M>(
    port: &Port<M>,
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
