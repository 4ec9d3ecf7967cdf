//! IDT and interrupt dispatch. Handlers only record events in atomics and send the
//! LAPIC EOI; the port picks the events up through `Platform::wait_for_events` and runs
//! HwTimer / HwInterrupt from its own loop (T5). CPU exceptions end the run.

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

use guest_miniport::platform::Events;
use x86_64::instructions::interrupts;
use x86_64::instructions::tables::{lidt, load_tss};
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use crate::apic;
use crate::serial::CrashSerial;

/// The periodic LAPIC tick.
pub const TIMER_VECTOR: u8 = 0x30;
/// MSI-X table entry `i` of the adapter is delivered as vector `MSI_VECTOR_BASE + i`.
pub const MSI_VECTOR_BASE: u8 = 0x40;
pub const MSI_VECTOR_COUNT: u8 = 32;
/// The 8259s after `apic::remap_and_mask_pic`.
const PIC_VECTORS: core::ops::RangeInclusive<u64> = 0x20..=0x2f;
/// LAPIC spurious vector (SVR). It needs no EOI.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const STUB_SIZE: u64 = 16;
const KERNEL_CODE_SELECTOR: u16 = 0x08;

static TICKS: AtomicU32 = AtomicU32::new(0);
static MSI_PENDING: AtomicU32 = AtomicU32::new(0);

const TSS_SELECTOR: u16 = 0x18;
const DOUBLE_FAULT_VECTOR: usize = 8;
/// IST slot of the double-fault handler (1-based in the gate, 0-based in the TSS).
const DOUBLE_FAULT_IST: u8 = 1;

extern "C" {
    /// 256 entry stubs of `STUB_SIZE` bytes each (isr.s).
    static isr_stubs: u8;
    /// The 16-byte TSS descriptor slot of the boot GDT (boot.s).
    static mut boot_gdt_tss: [u64; 2];
    /// Top of the double-fault stack (boot.s).
    static double_fault_stack_top: u8;
    /// The unmapped page below the boot stack (boot.s).
    static boot_stack_guard: u8;
}

/// A 64-bit interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// Present, DPL 0, interrupt gate (IF cleared on entry, so handlers never nest).
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CODE_SELECTOR,
            ist: 0,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();
static TSS: spin::Once<TaskStateSegment> = spin::Once::new();

/// Loads a TSS whose IST1 is the double-fault stack: a stack overflow hits the guard
/// page, the #PF cannot be pushed, and the #DF then still has a stack to report on.
fn init_tss() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] =
            VirtAddr::new(core::ptr::addr_of!(double_fault_stack_top) as u64);
        tss
    });
    let base = tss as *const TaskStateSegment as u64;
    let limit = (core::mem::size_of::<TaskStateSegment>() - 1) as u64;
    // Available 64-bit TSS (type 9), present, DPL 0.
    let low = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40
        | (limit >> 16 & 0xf) << 48
        | (base >> 24 & 0xff) << 56;
    let high = base >> 32;
    // SAFETY: boot_gdt_tss is the GDT's TSS slot, in writable .data; nothing has loaded
    // selector 0x18 yet, so the CPU does not use the slot while it is written.
    unsafe { core::ptr::addr_of_mut!(boot_gdt_tss).write_volatile([low, high]) };
    // SAFETY: selector 0x18 now holds a valid, available TSS descriptor for a TSS in a
    // static that lives for the rest of the run.
    unsafe { load_tss(SegmentSelector(TSS_SELECTOR)) };
}

/// Loads the TSS, builds the IDT (every vector goes to its stub) and loads it.
pub fn init() {
    init_tss();
    let idt = IDT.call_once(|| {
        let base = core::ptr::addr_of!(isr_stubs) as u64;
        let mut gates = [Gate::MISSING; 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            *gate = Gate::interrupt(base + vector as u64 * STUB_SIZE);
        }
        gates[DOUBLE_FAULT_VECTOR].ist = DOUBLE_FAULT_IST;
        Idt(gates)
    });
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the table lives in a static for the rest of the run, and every gate points
    // at a stub in isr.s that saves the registers and returns with iretq.
    unsafe { lidt(&pointer) };
}

/// The stack isr.s builds before calling `isr_dispatch`, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rbp: u64,
    rbx: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Called by isr.s with interrupts off, on the interrupted stack.
#[no_mangle]
extern "C" fn isr_dispatch(frame: &TrapFrame) {
    let vector = frame.vector;
    match vector {
        0..=31 => exception(frame),
        v if v == u64::from(TIMER_VECTOR) => {
            TICKS.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
        }
        v if (u64::from(MSI_VECTOR_BASE)..u64::from(MSI_VECTOR_BASE + MSI_VECTOR_COUNT))
            .contains(&v) =>
        {
            MSI_PENDING.fetch_or(1 << (v - u64::from(MSI_VECTOR_BASE)), Ordering::Relaxed);
            apic::eoi();
        }
        // Spurious: no EOI (SDM 11.9). With every 8259 line and LINT0 masked, an 8259
        // vector can only be a spurious IRQ 7/15, which takes no EOI either.
        v if v == u64::from(SPURIOUS_VECTOR) || PIC_VECTORS.contains(&v) => {}
        // Nothing else is programmed to send anything: an interrupt here means a device
        // (or the library's MSI-X setup) used a vector it was never given.
        v => crate::entry::fail(format_args!(
            "unexpected interrupt vector {v:#x} at rip={:#x}",
            frame.rip
        )),
    }
}

/// Takes (and clears) the pending events. Call with interrupts off, or accept that an
/// event arriving between the two swaps is reported in the next call.
pub fn take_events() -> Events {
    Events {
        ticks: TICKS.swap(0, Ordering::Relaxed),
        vectors: MSI_PENDING.swap(0, Ordering::Relaxed),
    }
}

/// Sleeps until an event is pending, then returns them all (see `Platform`).
pub fn wait_for_events() -> Events {
    loop {
        interrupts::disable();
        let events = take_events();
        if !events.is_empty() {
            interrupts::enable();
            return events;
        }
        // `sti; hlt` back to back: an interrupt that arrives after the check above is
        // held off by sti's one-instruction shadow and then wakes the hlt.
        interrupts::enable_and_hlt();
    }
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

/// A CPU exception is a bug in the image or the library: report it and end the run.
fn exception(frame: &TrapFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let guard = core::ptr::addr_of!(boot_stack_guard) as u64;
    let name = if (guard..guard + 4096).contains(&cr2) {
        "stack overflow (fault in the stack guard page)"
    } else {
        EXCEPTION_NAMES[frame.vector as usize % 32]
    };
    let mut out = CrashSerial;
    out.fresh_line();
    let _ = writeln!(
        out,
        "[ERROR exception] vector {} ({}) error_code={:#x} rip={:#x} cr2={:#x} rsp={:#x} rflags={:#x}",
        frame.vector, name, frame.error_code, frame.rip, cr2, frame.rsp, frame.rflags
    );
    let _ = writeln!(out, "[ERROR exception] {frame:x?}");
    crate::entry::fail(format_args!(
        "exception {} ({}) error_code={:#x} rip={:#x} cr2={:#x}",
        frame.vector, name, frame.error_code, frame.rip, cr2
    ))
}
