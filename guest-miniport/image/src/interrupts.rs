//! IDT, TSS and interrupt dispatch. Handlers only record events in the CPU's own
//! atomics (`smp::PerCpu`) and send the LAPIC EOI; each CPU's loop picks its events up
//! through `Platform::wait_for_events` and the port runs HwTimer / HwInterrupt from
//! there. CPU exceptions end the run; an NMI from a failing CPU halts this one.

use core::fmt::Write;
use core::sync::atomic::Ordering;

use guest_miniport::platform::{Events, MAX_CPUS};
use x86_64::instructions::interrupts;
use x86_64::instructions::tables::{lidt, load_tss};
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use crate::smp::{self, DF_STACK_SIZE};
use crate::{apic, smp::AP_STACK_SIZE};

/// The periodic LAPIC tick.
pub const TIMER_VECTOR: u8 = 0x30;
/// Another CPU has something for this one's loop (`Platform::wake`).
pub const WAKE_VECTOR: u8 = 0x31;
/// MSI-X table entry `i` of the adapter is delivered as vector `MSI_VECTOR_BASE + i`.
pub const MSI_VECTOR_BASE: u8 = 0x40;
pub const MSI_VECTOR_COUNT: u8 = 32;
/// The 8259s after `apic::remap_and_mask_pic`.
const PIC_VECTORS: core::ops::RangeInclusive<u64> = 0x20..=0x2f;
/// LAPIC spurious vector (SVR). It needs no EOI.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const STUB_SIZE: u64 = 16;
const KERNEL_CODE_SELECTOR: u16 = 0x08;

/// CPU `cpu`'s TSS is at selector `TSS_SELECTOR + 16 * cpu` (boot.s).
const TSS_SELECTOR: u16 = 0x18;
const NMI_VECTOR: u64 = 2;
const DOUBLE_FAULT_VECTOR: usize = 8;
/// IST slot of the double-fault handler (1-based in the gate, 0-based in the TSS).
const DOUBLE_FAULT_IST: u8 = 1;

extern "C" {
    /// 256 entry stubs of `STUB_SIZE` bytes each (isr.s).
    static isr_stubs: u8;
    /// The 16-byte TSS descriptor slots of the boot GDT, one per CPU (boot.s).
    static mut boot_gdt_tss: [[u64; 2]; MAX_CPUS];
    /// Top of the boot CPU's double-fault stack (boot.s).
    static double_fault_stack_top: u8;
    /// The other CPUs' double-fault stacks, DF_STACK_SIZE each (boot.s).
    static ap_double_fault_stacks: u8;
    /// The unmapped page below the boot stack (boot.s).
    static boot_stack_guard: u8;
    /// The other CPUs' stacks, each with its unmapped bottom page (boot.s).
    static ap_stacks: u8;
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
static TSS: [spin::Once<TaskStateSegment>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

/// The top of CPU `cpu`'s double-fault stack.
fn double_fault_stack(cpu: usize) -> u64 {
    if cpu == 0 {
        return core::ptr::addr_of!(double_fault_stack_top) as u64;
    }
    core::ptr::addr_of!(ap_double_fault_stacks) as u64 + ((cpu + 1) * DF_STACK_SIZE) as u64
}

/// Loads CPU `cpu`'s TSS, whose IST1 is its double-fault stack: a stack overflow hits
/// the guard page, the #PF cannot be pushed, and the #DF then still has a stack to
/// report on.
fn init_tss(cpu: usize) {
    let tss = TSS[cpu].call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] =
            VirtAddr::new(double_fault_stack(cpu));
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
    let slot = core::ptr::addr_of_mut!(boot_gdt_tss).cast::<[u64; 2]>();
    // SAFETY: slot `cpu` is this CPU's TSS descriptor in the GDT, in writable .data;
    // only this CPU writes it, once, before it loads the selector, so no CPU uses the
    // slot while it is written.
    unsafe { slot.add(cpu).write_volatile([low, high]) };
    // SAFETY: the selector now holds a valid, available TSS descriptor for a TSS in a
    // static that lives for the rest of the run.
    unsafe { load_tss(SegmentSelector(TSS_SELECTOR + 16 * cpu as u16)) };
}

/// Loads CPU `cpu`'s TSS, builds the IDT once (every vector goes to its stub) and loads
/// it.
pub fn init_cpu(cpu: usize) {
    init_tss(cpu);
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
        NMI_VECTOR if smp::halting() => smp::park(),
        0..=31 => exception(frame),
        v if v == u64::from(TIMER_VECTOR) => {
            smp::current().ticks.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
        }
        v if v == u64::from(WAKE_VECTOR) => {
            smp::current().wake.store(true, Ordering::Relaxed);
            apic::eoi();
        }
        v if (u64::from(MSI_VECTOR_BASE)..u64::from(MSI_VECTOR_BASE + MSI_VECTOR_COUNT))
            .contains(&v) =>
        {
            let bit = 1 << (v - u64::from(MSI_VECTOR_BASE));
            smp::current().vectors.fetch_or(bit, Ordering::Relaxed);
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

/// Takes (and clears) this CPU's pending events; whether it was woken as well. Call
/// with interrupts off, or accept that an event arriving between the swaps is reported
/// in the next call.
fn take_events() -> (Events, bool) {
    let cpu = smp::current();
    let events = Events {
        ticks: cpu.ticks.swap(0, Ordering::Relaxed),
        vectors: cpu.vectors.swap(0, Ordering::Relaxed),
    };
    (events, cpu.wake.swap(false, Ordering::Relaxed))
}

/// Sleeps until an event is pending on this CPU or another CPU woke it, then returns
/// them all (see `Platform`).
pub fn wait_for_events() -> Events {
    loop {
        interrupts::disable();
        let (events, woken) = take_events();
        if woken || !events.is_empty() {
            interrupts::enable();
            return events;
        }
        // `sti; hlt` back to back: an interrupt that arrives after the check above is
        // held off by sti's one-instruction shadow and then wakes the hlt.
        interrupts::enable_and_hlt();
    }
}

/// Sleeps until another CPU wakes this one, leaving its events pending.
pub fn wait_for_wake() {
    loop {
        interrupts::disable();
        if smp::current().wake.swap(false, Ordering::Relaxed) {
            interrupts::enable();
            return;
        }
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

/// Whether `address` lies in a stack's guard page: the boot CPU's, or another CPU's.
fn in_stack_guard(address: u64) -> bool {
    let guard = core::ptr::addr_of!(boot_stack_guard) as u64;
    let stacks = core::ptr::addr_of!(ap_stacks) as u64;
    let size = AP_STACK_SIZE as u64;
    (guard..guard + 4096).contains(&address)
        || (stacks..stacks + size * MAX_CPUS as u64).contains(&address)
            && (address - stacks) % size < 4096
}

/// A CPU exception is a bug in the image or the library: report it and end the run.
fn exception(frame: &TrapFrame) -> ! {
    // The other CPUs stop before anything is written: one of them may be writing.
    let mut out = crate::entry::stop_others();
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let name = if in_stack_guard(cr2) {
        "stack overflow (fault in the stack guard page)"
    } else {
        EXCEPTION_NAMES[frame.vector as usize % 32]
    };
    out.fresh_line();
    let _ = writeln!(
        out,
        "[ERROR exception] CPU {} vector {} ({}) error_code={:#x} rip={:#x} cr2={:#x} rsp={:#x} rflags={:#x}",
        smp::current().index(), frame.vector, name, frame.error_code, frame.rip, cr2, frame.rsp,
        frame.rflags
    );
    let _ = writeln!(out, "[ERROR exception] {frame:x?}");
    crate::entry::report_failure(
        out,
        format_args!(
            "exception {} ({}) error_code={:#x} rip={:#x} cr2={:#x}",
            frame.vector, name, frame.error_code, frame.rip, cr2
        ),
    )
}
