//! The other CPUs (application processors): started with INIT-SIPI-SIPI through the
//! real-mode trampoline of boot.s, each with its own stack, TSS, LAPIC and pending
//! events ([`PerCpu`]); for the length of a run they dispatch the events that arrive on
//! them into the work the boot CPU lends them ([`lend`]). A failing CPU stops the others
//! with an NMI ([`halt_others`]) before it reports.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use guest_miniport::platform::{CpuWork, MAX_CPUS};
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

use crate::platform::GuestPlatform;
use crate::{apic, interrupts, time};

/// Stack of each other CPU, its guard page included (boot.s: one 2 MiB page for all).
pub const AP_STACK_SIZE: usize = 256 * 1024;
/// Double-fault stack of each other CPU.
pub const DF_STACK_SIZE: usize = 16 * 1024;
/// The page below 1 MiB the trampoline is copied to; its number is the startup vector.
pub const TRAMPOLINE_PAGE: u64 = 0x8000;
/// How long the other CPUs may take to come up after the first startup IPI, and in all.
const FIRST_SIPI_WAIT_US: u64 = 20_000;
const START_TIMEOUT_US: u64 = 500_000;
/// How long a failing CPU waits for the others to stop before it reports anyway.
const HALT_WAIT_US: u64 = 10_000;

extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
}

/// What each CPU has of its own. GS points at its entry, whose first field is its
/// number, so a CPU finds its own with one load ([`current`]).
#[repr(C)]
pub struct PerCpu {
    index: usize,
    /// [`OFFLINE`] until the CPU is ready for events.
    apic_id: AtomicU32,
    /// Events the interrupt handlers record for this CPU's loop.
    pub ticks: AtomicU32,
    pub vectors: AtomicU32,
    pub wake: AtomicBool,
}

static CPUS: [PerCpu; MAX_CPUS] = {
    let mut cpus = [const {
        PerCpu {
            index: 0,
            apic_id: AtomicU32::new(OFFLINE),
            ticks: AtomicU32::new(0),
            vectors: AtomicU32::new(0),
            wake: AtomicBool::new(false),
        }
    }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        cpus[i].index = i;
        i += 1;
    }
    cpus
};

const OFFLINE: u32 = u32::MAX;

/// CPUs running: the boot CPU, and each other CPU once it is ready for events.
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// Other CPUs stopped by a failing one.
static PARKED: AtomicUsize = AtomicUsize::new(0);
/// The CPU of the first failure (plus one; 0 for none): the others park when its NMI
/// comes.
static FAILING_CPU: AtomicUsize = AtomicUsize::new(0);

/// What the other CPUs need to know to start: how many there are to be, and the tick
/// period with its LAPIC timer counts.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    pub cpus: usize,
    pub tick_us: u32,
    pub timer_counts: u32,
}

static START: spin::Once<Start> = spin::Once::new();

/// Makes `cpu` the CPU GS names: [`current`] finds its entry from then on.
pub fn set_current(cpu: usize) {
    GsBase::write(VirtAddr::new(core::ptr::addr_of!(CPUS[cpu]) as u64));
}

/// This CPU, `cpu`, takes events from now on: IPIs and MSI messages may name it.
pub fn mark_online(cpu: usize) {
    CPUS[cpu]
        .apic_id
        .store(u32::from(apic::id()), Ordering::SeqCst);
}

/// This CPU's entry.
pub fn current() -> &'static PerCpu {
    let index: usize;
    // SAFETY: GS's base is this CPU's entry of CPUS (set_current, before interrupts are
    // enabled), whose first field is its number; the load has no side effect.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr gs:[0]",
            out(reg) index,
            options(nostack, readonly, preserves_flags)
        );
    }
    &CPUS[index.min(MAX_CPUS - 1)]
}

impl PerCpu {
    pub fn index(&self) -> usize {
        self.index
    }
}

/// The APIC id of `cpu`, the destination of its MSI messages and IPIs, once it runs.
pub fn apic_id(cpu: usize) -> Option<u8> {
    let id = CPUS.get(cpu)?.apic_id.load(Ordering::SeqCst);
    (id != OFFLINE).then_some(id as u8)
}

/// CPUs running.
pub fn online() -> usize {
    ONLINE.load(Ordering::SeqCst)
}

/// Why the other CPUs did not all come up.
#[derive(Clone, Copy, Debug)]
pub enum SmpError {
    /// The trampoline's page is not free RAM below 1 MiB.
    TrampolinePage(u64),
    /// Fewer CPUs answered than asked for.
    CpusMissing { wanted: usize, online: usize },
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmpError::TrampolinePage(p) => {
                write!(f, "page {p:#x} for the CPU trampoline is not free RAM")
            }
            SmpError::CpusMissing { wanted, online } => write!(
                f,
                "{online} of {wanted} CPUs came up (is QEMU's -smp at least cpus=?)"
            ),
        }
    }
}

/// Starts the other CPUs: copies the trampoline to its page (which `page_free` must
/// confirm is RAM nothing else uses), sends INIT and the startup IPI to all of them,
/// and waits until `start.cpus` CPUs run.
pub fn start_others(start: Start, page_free: bool) -> Result<(), SmpError> {
    if start.cpus <= 1 {
        return Ok(());
    }
    if !page_free {
        return Err(SmpError::TrampolinePage(TRAMPOLINE_PAGE));
    }
    START.call_once(|| start);
    let from = core::ptr::addr_of!(ap_trampoline);
    let len = core::ptr::addr_of!(ap_trampoline_end) as usize - from as usize;
    // SAFETY: the trampoline's bytes are in the image; the page below 1 MiB is
    // identity-mapped RAM that the loader left free (page_free: outside the start info,
    // the command line and the memory map, inside a RAM entry) and that nothing of ours
    // uses; the linker script asserts the code fits in it.
    unsafe { core::ptr::copy_nonoverlapping(from, TRAMPOLINE_PAGE as *mut u8, len) };
    apic::send_init_to_others();
    let vector = (TRAMPOLINE_PAGE >> 12) as u8;
    apic::send_startup_to_others(vector);
    // The second startup IPI only if the first was missed, so that boot stays short.
    if !wait_online(start.cpus, FIRST_SIPI_WAIT_US) {
        log::info!("boot: a second startup IPI");
        apic::send_startup_to_others(vector);
    }
    if !wait_online(start.cpus, START_TIMEOUT_US) {
        return Err(SmpError::CpusMissing {
            wanted: start.cpus,
            online: online(),
        });
    }
    Ok(())
}

fn wait_online(cpus: usize, timeout_us: u64) -> bool {
    let until = time::now_us() + timeout_us;
    while online() < cpus {
        if time::now_us() >= until {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Another CPU in 64-bit mode on its own stack (boot.s, `ap_long_mode_entry`).
#[no_mangle]
extern "C" fn ap_rust_start(cpu: u32) -> ! {
    let cpu = cpu as usize;
    set_current(cpu);
    interrupts::init_cpu(cpu);
    if apic::init().is_err() {
        park();
    }
    let Some(start) = START.get().copied() else {
        park();
    };
    if cpu >= start.cpus {
        // More CPUs than the run asked for: this one sits out.
        park();
    }
    // Every CPU ticks: the timer's CPU runs HwTimer on its ticks, the others show by
    // theirs that they look at their events (`interrupt_cpu_dispatches`).
    apic::start_periodic_counts(start.timer_counts);
    mark_online(cpu);
    ONLINE.fetch_add(1, Ordering::SeqCst);
    x86_64::instructions::interrupts::enable();
    let mut platform = GuestPlatform::new(start.tick_us, cpu);
    loop {
        match borrow() {
            Some(work) => {
                let events = interrupts::wait_for_events();
                work.dispatch(&mut platform, events);
                IN_USE.fetch_sub(1, Ordering::SeqCst);
            }
            // Events wait, untaken, until there is work for them.
            None => interrupts::wait_for_wake(),
        }
    }
}

/// The work lent to the other CPUs, and how many of them are in it.
static WORK: spin::Mutex<Option<&'static dyn CpuWork>> = spin::Mutex::new(None);
static IN_USE: AtomicUsize = AtomicUsize::new(0);

fn borrow() -> Option<&'static dyn CpuWork> {
    let work = WORK.lock();
    if work.is_some() {
        // Under the lock: once `lend` has withdrawn the work, nobody borrows it again.
        IN_USE.fetch_add(1, Ordering::SeqCst);
    }
    *work
}

/// Runs `body` while the other CPUs dispatch their events into `work`; returns once
/// `body` has and none of them uses `work` any more.
pub fn lend(work: &dyn CpuWork, body: impl FnOnce()) {
    // SAFETY: only the lifetime changes. The reference is withdrawn, and every CPU that
    // borrowed it has let go (IN_USE back to 0), before this function returns, so it is
    // never used after `work`'s borrow ends.
    let lent = unsafe { core::mem::transmute::<&dyn CpuWork, &'static dyn CpuWork>(work) };
    *WORK.lock() = Some(lent);
    wake_others();
    body();
    *WORK.lock() = None;
    // A CPU asleep in its loop holds the work until an event comes: this is one.
    wake_others();
    while IN_USE.load(Ordering::SeqCst) != 0 {
        core::hint::spin_loop();
    }
}

/// Makes `cpu`'s loop look at the port.
pub fn wake(cpu: usize) {
    if let Some(id) = apic_id(cpu) {
        apic::send_ipi(id, interrupts::WAKE_VECTOR);
    }
}

fn wake_others() {
    let me = current().index();
    (0..MAX_CPUS).filter(|&c| c != me).for_each(wake);
}

/// Stops the other CPUs for good (an NMI each, which they answer by halting) and waits
/// a little for them, so that a failing CPU reports alone. Called once, by the CPU
/// that won [`claim_failure`]. Whether every other CPU is parked.
pub fn halt_others() -> bool {
    let others = online() - 1;
    if others == 0 {
        return true;
    }
    apic::send_nmi_to_others();
    let until = time::now_us() + HALT_WAIT_US;
    while PARKED.load(Ordering::SeqCst) < others && time::now_us() < until {
        core::hint::spin_loop();
    }
    PARKED.load(Ordering::SeqCst) >= others
}

/// An NMI on this CPU: whether it is a failing CPU's, to be answered by [`park`].
pub fn halting() -> bool {
    FAILING_CPU.load(Ordering::SeqCst) != 0
}

/// Makes this CPU the failing one if none is yet; else the failing CPU's index.
pub fn claim_failure() -> Result<(), usize> {
    let me = current().index() + 1;
    FAILING_CPU
        .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
        .map(|_| ())
        .map_err(|cpu| cpu - 1)
}

/// Halts this CPU for good.
pub fn park() -> ! {
    PARKED.fetch_add(1, Ordering::SeqCst);
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
