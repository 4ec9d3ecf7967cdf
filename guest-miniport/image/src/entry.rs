//! Entry from boot.s, bring-up order, and the ways a run ends (result code, failure,
//! panic).

use guest_miniport::contract::{result_fields, GuestArgs, DEBUG_EXIT_PORT, EXIT_FAIL, MAX_CPUS};
use guest_miniport::platform::PCI_MMIO_WINDOW;
use guest_miniport::report::JsonLine;
use x86_64::instructions::port::Port;

use crate::platform::{BumpDma, GuestPlatform, PortPci};
use crate::serial::{CrashSerial, Serial};
use crate::smp::{self, AP_STACK_SIZE, DF_STACK_SIZE, TRAMPOLINE_PAGE};
use crate::{apic, interrupts, platform, serial, start_info, time};

/// Boot stack: the runner and the port keep their state on it. The smoke scenario peaks
/// at ~40 KiB in release and ~120 KiB in debug builds.
const STACK_SIZE: usize = 512 * 1024;

// boot.s marks the 2 MiB pages from the PCI MMIO window to 4 GiB uncached, so the window
// must start on a 2 MiB boundary and lie below 4 GiB.
const _: () = assert!(PCI_MMIO_WINDOW.start.is_multiple_of(2 << 20));
const _: () = assert!(PCI_MMIO_WINDOW.end <= 1 << 32);
const _: () = assert!(apic::LAPIC_BASE >= PCI_MMIO_WINDOW.start);

// boot.s gives the other CPUs' stacks one 2 MiB page.
const _: () = assert!(MAX_CPUS * AP_STACK_SIZE == 2 << 20);
const _: () = assert!(TRAMPOLINE_PAGE < 1 << 20 && TRAMPOLINE_PAGE.is_multiple_of(4096));

core::arch::global_asm!(
    include_str!("boot.s"),
    UNCACHED_FIRST_PD = const PCI_MMIO_WINDOW.start >> 21,
    STACK_SIZE = const STACK_SIZE,
    DMA_POOL_BYTES = const platform::DMA_POOL_BYTES,
    MAX_CPUS = const MAX_CPUS,
    AP_STACK_SIZE = const AP_STACK_SIZE,
    DF_STACK_SIZE = const DF_STACK_SIZE,
    options(att_syntax)
);
core::arch::global_asm!(include_str!("isr.s"), options(att_syntax));

/// Called by boot.s in 64-bit mode with the physical address of `hvm_start_info`.
#[no_mangle]
extern "C" fn rust_start(start_info_paddr: u32) -> ! {
    let rust_start_tsc = time::rdtsc();
    smp::set_current(0);
    serial::init();
    serial::init_logger(log::LevelFilter::Info);
    interrupts::init_cpu(0);

    let cmdline = match start_info::cmdline(start_info_paddr) {
        Ok(cmdline) => cmdline,
        Err(e) => fail(format_args!("bad PVH start info: {e}")),
    };

    apic::remap_and_mask_pic();
    if let Err(e) = apic::init() {
        fail(format_args!("local APIC: {e}"));
    }
    smp::mark_online(0);
    let calibration = time::calibrate();
    log::info!(
        "boot: 32-bit entry to Rust {} us, calibration done at {} us",
        time::tsc_to_us(rust_start_tsc.saturating_sub(time::boot_tsc_value())),
        time::now_us()
    );
    // The runner parses and reports on the command line; here only the tick period and
    // the CPUs are needed, and a bad line still gets the defaults so the runner can say
    // why.
    let args = GuestArgs::parse(cmdline).unwrap_or_default();
    let tick_us = args.tick_us;
    let counts = apic::start_periodic_timer(tick_us, calibration.lapic_timer_hz);
    log::info!(
        "boot: cmdline {cmdline:?}, TSC {} kHz, LAPIC timer {} kHz ({}), tick {tick_us} us ({counts} counts)",
        calibration.tsc_hz / 1000,
        calibration.lapic_timer_hz / 1000,
        calibration.reference,
    );
    let start = smp::Start {
        cpus: args.cpus as usize,
        tick_us,
        timer_counts: counts,
    };
    let page_free = start_info::page_is_free(start_info_paddr, TRAMPOLINE_PAGE);
    let smp_start = time::now_us();
    if let Err(e) = smp::start_others(start, page_free) {
        fail(format_args!("starting the other CPUs: {e}"));
    }
    if start.cpus > 1 {
        log::info!(
            "boot: {} CPUs up in {} us",
            smp::online(),
            time::now_us() - smp_start
        );
    }
    x86_64::instructions::interrupts::enable();

    let mut platform = GuestPlatform::new(tick_us, 0);
    let pci = PortPci;
    let Some(mut dma) = BumpDma::take() else {
        fail(format_args!("DMA pool taken twice"));
    };
    let code = guest_miniport::runner::run(&mut platform, &pci, &mut dma, cmdline, &mut Serial);
    exit(code)
}

/// Reports a failure as the result line and exits. The other CPUs are stopped first, so
/// the report has the serial port to itself.
pub fn fail(reason: core::fmt::Arguments) -> ! {
    let out = stop_others();
    report_failure(out, reason)
}

/// The first step of every crash path: interrupts off, and the other CPUs stopped by
/// the first CPU that fails. A second failure on that CPU (a panic while reporting)
/// exits at once instead of recursing; one on another CPU halts. Returns the output
/// for the report.
pub fn stop_others() -> CrashSerial {
    x86_64::instructions::interrupts::disable();
    match smp::claim_failure() {
        Ok(()) => CrashSerial::new(smp::halt_others()),
        Err(cpu) if cpu == smp::current().index() => exit(EXIT_FAIL),
        Err(_) => smp::park(),
    }
}

/// Writes the failure's result line on `out` (from [`stop_others`]) and exits.
pub fn report_failure(mut out: CrashSerial, reason: core::fmt::Arguments) -> ! {
    out.fresh_line();
    let _ = JsonLine::new(&mut out)
        .str(result_fields::RESULT, "fail")
        .display(result_fields::REASON, &reason)
        .u64(result_fields::ELAPSED_US, time::now_us())
        .finish();
    exit(EXIT_FAIL)
}

/// Ends the run with `code` on isa-debug-exit (QEMU exits with `(code << 1) | 1`), and
/// halts forever if the device is missing.
pub fn exit(code: u8) -> ! {
    let mut port: Port<u32> = Port::new(DEBUG_EXIT_PORT);
    // SAFETY: writing the isa-debug-exit port ends QEMU; without the device the write is
    // ignored and we halt below.
    unsafe { port.write(u32::from(code)) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    match info.location() {
        Some(l) => fail(format_args!(
            "panic: {} at {}:{}:{}",
            info.message(),
            l.file(),
            l.line(),
            l.column()
        )),
        None => fail(format_args!("panic: {}", info.message())),
    }
}
