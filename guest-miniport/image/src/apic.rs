//! The local APIC (xAPIC, MMIO at 0xFEE0_0000) and the legacy 8259 PICs.
//!
//! Each CPU has its own LAPIC at the same address. It gives the periodic tick (the
//! port's timer resolution, T2), receives the adapter's MSI-X messages, and sends the
//! IPIs that start the other CPUs, wake them and stop them. The 8259s are remapped off
//! the exception vectors and masked: nothing in this image uses them.

use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

use crate::interrupts::{SPURIOUS_VECTOR, TIMER_VECTOR};

/// Where the xAPIC registers are; MSI messages are addressed here too.
pub const LAPIC_BASE: u64 = 0xfee0_0000;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;

const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_ESR: usize = 0x280;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_LINT0: usize = 0x350;
const REG_LVT_LINT1: usize = 0x360;
const REG_LVT_ERROR: usize = 0x370;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
/// ICR: delivery modes, level, the send-pending bit and the all-but-self shorthand.
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_NMI: u32 = 0b100 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_SEND_PENDING: u32 = 1 << 12;
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b0011: bus clock / 16. Keeps a 1 s tick inside 32 bits even
/// with a 1 GHz timer clock (KVM's and TCG's emulated rate).
const TIMER_DIVIDE_BY_16: u32 = 0b0011;

fn read(reg: usize) -> u32 {
    // SAFETY: LAPIC_BASE is identity-mapped uncached by boot.s (the 4th GiB), `reg` is
    // one of this module's xAPIC register offsets, and xAPIC registers are read as
    // aligned 32-bit words.
    unsafe { core::ptr::read_volatile((LAPIC_BASE as usize + reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    // SAFETY: as in `read`; writing these registers only affects interrupt delivery on
    // this CPU and the IPIs it sends, which this module owns.
    unsafe { core::ptr::write_volatile((LAPIC_BASE as usize + reg) as *mut u32, value) }
}

/// Why the LAPIC could not be used.
#[derive(Clone, Copy, Debug)]
pub enum ApicError {
    /// IA32_APIC_BASE points elsewhere; MSI messages and our mapping assume the default.
    UnexpectedBase(u64),
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApicError::UnexpectedBase(msr) => write!(
                f,
                "IA32_APIC_BASE {msr:#x}: expected the xAPIC at {LAPIC_BASE:#x}"
            ),
        }
    }
}

/// Remaps the 8259 PICs to vectors 0x20..0x30 (off the exception vectors, in case a
/// spurious IRQ 7/15 arrives) and masks every line.
pub fn remap_and_mask_pic() {
    let mut master_cmd: Port<u8> = Port::new(0x20);
    let mut master_data: Port<u8> = Port::new(0x21);
    let mut slave_cmd: Port<u8> = Port::new(0xa0);
    let mut slave_data: Port<u8> = Port::new(0xa1);
    // SAFETY: the 8259 ports; this is the standard ICW1..ICW4 sequence, and nothing else
    // in the image uses the PICs.
    unsafe {
        master_cmd.write(0x11); // ICW1: edge, cascade, ICW4 follows
        slave_cmd.write(0x11);
        master_data.write(0x20); // ICW2: vector base
        slave_data.write(0x28);
        master_data.write(0x04); // ICW3: slave on IRQ2
        slave_data.write(0x02);
        master_data.write(0x01); // ICW4: 8086 mode
        slave_data.write(0x01);
        master_data.write(0xff); // mask all
        slave_data.write(0xff);
    }
}

/// Enables the LAPIC in software (SVR, spurious vector 0xff), masks LINT0 (the PIC's
/// ExtINT), LINT1 and the error LVT, and accepts every priority.
pub fn init() -> Result<(), ApicError> {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC, which QEMU's default CPU has.
    let base = unsafe { msr.read() };
    if base & 0xf_ffff_f000 != LAPIC_BASE {
        return Err(ApicError::UnexpectedBase(base));
    }
    if base & APIC_BASE_ENABLE == 0 {
        // SAFETY: sets only the global enable bit of the same MSR, keeping the base.
        unsafe { msr.write(base | APIC_BASE_ENABLE) };
    }
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
    write(REG_LVT_ERROR, LVT_MASKED);
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(REG_SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    // Clear the error status (write, then read).
    write(REG_ESR, 0);
    let _ = read(REG_ESR);
    eoi();
    Ok(())
}

/// This CPU's APIC id, the destination of MSI messages.
pub fn id() -> u8 {
    (read(REG_ID) >> 24) as u8
}

/// End of interrupt for the in-service vector.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Starts a masked one-shot count from `u32::MAX` for calibration.
pub fn start_calibration_count() {
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(REG_TIMER_INITIAL, u32::MAX);
}

/// Counts elapsed since `start_calibration_count`; stops the count.
pub fn calibration_count_elapsed() -> u64 {
    let current = read(REG_TIMER_CURRENT);
    write(REG_TIMER_INITIAL, 0);
    u64::from(u32::MAX - current)
}

/// Starts the periodic tick: one TIMER_VECTOR interrupt every `period_us`. Returns the
/// initial count used (at least 1).
pub fn start_periodic_timer(period_us: u32, timer_hz: u64) -> u32 {
    let counts = (u128::from(period_us) * u128::from(timer_hz) / 1_000_000)
        .clamp(1, u128::from(u32::MAX)) as u32;
    start_periodic_counts(counts);
    counts
}

/// Starts this CPU's periodic tick with `counts` (every CPU's timer runs at the rate
/// the boot CPU measured).
pub fn start_periodic_counts(counts: u32) {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(TIMER_VECTOR));
    write(REG_TIMER_INITIAL, counts);
}

/// Sends an IPI: `low` is the ICR's low word, `destination` the APIC id (ignored with
/// a shorthand). Waits for the previous one to leave first.
fn send(destination: u8, low: u32) {
    while read(REG_ICR_LOW) & ICR_SEND_PENDING != 0 {
        core::hint::spin_loop();
    }
    write(REG_ICR_HIGH, u32::from(destination) << 24);
    // Writing the low word sends it.
    write(REG_ICR_LOW, low);
}

/// INIT to every other CPU: they wait for a startup IPI afterwards.
pub fn send_init_to_others() {
    send(0, ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
}

/// Startup IPI to every other CPU: they start in real mode at page `vector`.
pub fn send_startup_to_others(vector: u8) {
    send(
        0,
        ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | u32::from(vector),
    );
}

/// A fixed interrupt `vector` to the CPU whose APIC id is `destination`.
pub fn send_ipi(destination: u8, vector: u8) {
    send(destination, ICR_ASSERT | ICR_FIXED | u32::from(vector));
}

/// An NMI to every other CPU: it arrives even where interrupts are masked.
pub fn send_nmi_to_others() {
    send(0, ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_NMI);
}
