//! Time: the TSC for `now_us` and stalls, calibrated (with the LAPIC timer) against a
//! known clock: the HPET's main counter when the machine has one (q35 does), else PIT
//! channel 2 (the speaker gate).
//!
//! Under TCG the PIT's terminal count is seen about 25 % late (measured here: TSC
//! 3.26 GHz against the host's 2.60 GHz), so every guest time would run slow; reading
//! the HPET counter has no such edge to wait for.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// The PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Length of one calibration window. Three windows cost 30 ms of boot time.
const CALIBRATION_US: u64 = 10_000;
const CALIBRATION_RUNS: usize = 3;

/// TSC ticks per second; 0 until calibrated.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

extern "C" {
    /// TSC at PVH entry, written by boot.s before anything else runs.
    static boot_tsc: u64;
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; CR4.TSD is clear, so it is
    // allowed at ring 0 and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn boot_tsc_value() -> u64 {
    // SAFETY: boot.s wrote boot_tsc once before calling Rust; nothing writes it since.
    unsafe { core::ptr::addr_of!(boot_tsc).read_volatile() }
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Microseconds since PVH entry; 0 before calibration.
pub fn now_us() -> u64 {
    tsc_to_us(rdtsc().saturating_sub(boot_tsc_value()))
}

/// Converts a TSC interval to microseconds; 0 before calibration.
pub fn tsc_to_us(ticks: u64) -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
}

/// Busy-waits `us` microseconds on the TSC.
pub fn stall_us(us: u32) {
    let hz = tsc_hz();
    let ticks = (u128::from(us) * u128::from(hz) / 1_000_000) as u64;
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// Rates measured against the reference clock.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    pub tsc_hz: u64,
    /// LAPIC timer counts per second at the divider `apic::TIMER_DIVIDE`.
    pub lapic_timer_hz: u64,
    /// "hpet" or "pit".
    pub reference: &'static str,
}

/// The HPET's registers (IA-PC HPET 1.0a §2.3), at the address q35 and every PC put
/// it; boot.s maps it uncached with the rest of the 4th GiB.
mod hpet {
    const BASE: usize = 0xfed0_0000;
    const CAPABILITIES: usize = 0x000;
    const CONFIGURATION: usize = 0x010;
    const MAIN_COUNTER: usize = 0x0f0;
    const ENABLE: u64 = 1;
    /// The specification's longest counter period: 100 ns.
    const MAX_PERIOD_FS: u64 = 100_000_000;

    fn read(reg: usize) -> u64 {
        // SAFETY: BASE is identity-mapped uncached (boot.s maps the PCI MMIO window up
        // to 4 GiB so); these 64-bit registers are read whole, which has no side effect.
        unsafe { core::ptr::read_volatile((BASE + reg) as *const u64) }
    }

    fn write(reg: usize, value: u64) {
        // SAFETY: as in `read`; the image uses the HPET only to calibrate, with its
        // timers' interrupts left disabled.
        unsafe { core::ptr::write_volatile((BASE + reg) as *mut u64, value) }
    }

    /// The counter period in femtoseconds, with the counter running; None without an
    /// HPET (the registers read all ones or zero).
    pub fn start() -> Option<u64> {
        let period = read(CAPABILITIES) >> 32;
        if period == 0 || period > MAX_PERIOD_FS {
            return None;
        }
        write(CONFIGURATION, read(CONFIGURATION) | ENABLE);
        Some(period)
    }

    pub fn counter() -> u64 {
        read(MAIN_COUNTER)
    }
}

/// Measures the TSC and the LAPIC timer against PIT channel 2 (the median of a few
/// windows, so one VM exit in a window does not skew the result), and makes the TSC
/// rate the base of `now_us` and `stall_us`. Interrupts must be off.
pub fn calibrate() -> Calibration {
    let mut tsc = [0u64; CALIBRATION_RUNS];
    let mut lapic = [0u64; CALIBRATION_RUNS];
    let period_fs = hpet::start();
    for run in 0..CALIBRATION_RUNS {
        let (t, l) = match period_fs {
            Some(fs) => hpet_window(fs),
            None => pit_window(),
        };
        tsc[run] = t;
        lapic[run] = l;
    }
    tsc.sort_unstable();
    lapic.sort_unstable();
    let scale = |counts: u64| counts * 1_000_000 / CALIBRATION_US;
    let calibration = Calibration {
        tsc_hz: scale(tsc[CALIBRATION_RUNS / 2]),
        lapic_timer_hz: scale(lapic[CALIBRATION_RUNS / 2]),
        reference: if period_fs.is_some() { "hpet" } else { "pit" },
    };
    TSC_HZ.store(calibration.tsc_hz, Ordering::Relaxed);
    calibration
}

/// One window of `CALIBRATION_US` timed by the HPET counter (period `period_fs`).
/// Returns the TSC ticks and LAPIC timer counts that elapsed in it.
fn hpet_window(period_fs: u64) -> (u64, u64) {
    let window = CALIBRATION_US * 1_000_000_000 / period_fs;
    // A counter read is a trip to the hypervisor; each is timed by the TSC on both
    // sides and the midpoint taken as when the counter was sampled. Of a few reads the
    // one with the tightest bracket counts, so a host preemption during one read does
    // not move the midpoint.
    let sample = || {
        let mut best = (0, 0, u64::MAX);
        for _ in 0..5 {
            let before = rdtsc();
            let c = hpet::counter();
            let after = rdtsc();
            if after - before < best.2 {
                best = (c, before + (after - before) / 2, after - before);
            }
        }
        (best.0, best.1)
    };
    crate::apic::start_calibration_count();
    let (start, tsc_start) = sample();
    while hpet::counter().wrapping_sub(start) < window {
        core::hint::spin_loop();
    }
    let (now, tsc_now) = sample();
    let lapic = crate::apic::calibration_count_elapsed();
    // Scaled by the counter ticks that really passed: the last read overshoots.
    let passed = now.wrapping_sub(start);
    let scale = |v: u64| (u128::from(v) * u128::from(window) / u128::from(passed)) as u64;
    (scale(tsc_now - tsc_start), scale(lapic))
}

/// One window of `CALIBRATION_US` timed by PIT channel 2 in mode 0 (interrupt on
/// terminal count, visible as OUT2 in port 0x61 bit 5). Returns the TSC ticks and LAPIC
/// timer counts that elapsed in it.
fn pit_window() -> (u64, u64) {
    let latch = (PIT_HZ * CALIBRATION_US / 1_000_000) as u16;
    let mut gate: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x61/0x42/0x43 are the PC speaker gate and the PIT; nothing else in
    // the image uses them, and channel 2 drives only the (disconnected) speaker.
    unsafe {
        // Gate high, speaker off.
        let v = gate.read();
        gate.write((v & !0x02) | 0x01);
        // Channel 2, lobyte/hibyte, mode 0, binary. Counting starts at the high byte.
        command.write(0xb0);
        channel2.write(latch as u8);
        crate::apic::start_calibration_count();
        let tsc_start = rdtsc();
        channel2.write((latch >> 8) as u8);
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let tsc_end = rdtsc();
        let lapic = crate::apic::calibration_count_elapsed();
        (tsc_end - tsc_start, lapic)
    }
}
