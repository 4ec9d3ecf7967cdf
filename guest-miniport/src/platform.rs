//! What the port needs from the machine it runs on. The guest image implements these
//! traits with the TSC, the LAPIC tick, port I/O and identity-mapped memory; host tests
//! implement them with simulated, deterministic time and a simulated HBA.

/// Most CPUs a port runs on.
pub const MAX_CPUS: usize = 8;

/// Events that arrived on one CPU while its loop waited. The image's interrupt handlers
/// only record them; the port dispatches them (HwInterrupt, HwTimer) from that CPU's
/// loop, under the locks of its synchronization model (T5, T6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Timer ticks since the last call (each one is `Platform::tick_us` long).
    pub ticks: u32,
    /// Bit `i` set: MSI-X table entry `i` of the adapter fired at least once.
    pub vectors: u32,
}

impl Events {
    pub const fn is_empty(&self) -> bool {
        self.ticks == 0 && self.vectors == 0
    }
}

/// Work another CPU does with the events that arrive on it, for as long as
/// [`Platform::with_secondaries`] lends it out. The port is one.
pub trait CpuWork: Sync {
    /// Dispatches one batch of events that arrived on `platform`'s CPU.
    fn dispatch(&self, platform: &mut dyn Platform, events: Events);
}

/// Time, stalls and interrupt delivery, as one CPU sees them: a machine with several
/// CPUs gives each its own `Platform`.
pub trait Platform {
    /// Monotonic time in microseconds.
    fn now_us(&self) -> u64;
    /// Busy-waits `us` microseconds (StallExecution). The port accounts for it (S1).
    fn stall_us(&mut self, us: u32);
    /// Period of the timer tick in microseconds: the port's timer resolution (T2).
    fn tick_us(&self) -> u32;
    /// Sleeps until at least one event is pending on this CPU, or another CPU woke it
    /// ([`Platform::wake`]; the batch may then be empty), and returns and clears them.
    fn wait_for_events(&mut self) -> Events;
    /// The MSI-X message (address, data) that makes CPU `cpu` take an interrupt which its
    /// `wait_for_events` reports as bit `entry` of [`Events::vectors`]. `None` when the
    /// platform cannot take MSI-X interrupts for that entry or has no such CPU.
    fn msi_message(&self, entry: u16, cpu: usize) -> Option<(u64, u32)>;
    /// Interrupt control: masks the CPU's interrupts while a routine that Windows runs
    /// at DIRQL runs (HwInterrupt, HwTimer, HwStartIo, HwResetBus), so nothing
    /// pre-empts it and the time the port measures is the routine's own (I2, P4).
    /// Returns whether they were enabled, for [`Platform::restore_interrupts`]. The
    /// default, for platforms whose events only arrive in `wait_for_events`, does
    /// nothing.
    fn disable_interrupts(&mut self) -> bool {
        false
    }
    /// Undoes [`Platform::disable_interrupts`].
    fn restore_interrupts(&mut self, _was_enabled: bool) {}
    /// The CPU this platform runs on: 0 is the one that booted and runs the workload.
    fn cpu(&self) -> usize {
        0
    }
    /// CPUs the machine runs the port on.
    fn cpus(&self) -> usize {
        1
    }
    /// Makes CPU `cpu`'s `wait_for_events` (or [`Platform::pause`]) return, so it looks
    /// at what another CPU did.
    fn wake(&self, _cpu: usize) {}
    /// Waits a moment for another CPU, giving this one back to the machine until an
    /// interrupt or [`Platform::wake`] comes: called, with interrupts masked, while
    /// another CPU holds a lock this one needs. An interrupt pending at the call ends the
    /// pause at once; events that arrive meanwhile stay pending for `wait_for_events`.
    fn pause(&mut self) {
        core::hint::spin_loop();
    }
    /// Runs `body` on this CPU while every other CPU dispatches the events that arrive
    /// on it into `work`; returns once `body` has and the others no longer use `work`.
    /// A machine with one CPU just runs `body(self)`.
    fn with_secondaries(&mut self, work: &dyn CpuWork, body: &mut dyn FnMut(&mut dyn Platform));
}

/// PCI configuration space (on the guest: mechanism #1, ports 0xCF8/0xCFC).
pub trait PciConfig {
    fn read32(&self, bus: u8, device: u8, function: u8, offset: u16) -> u32;
    fn write32(&self, bus: u8, device: u8, function: u8, offset: u16, value: u32);
}

/// DMA memory. The guest identity-maps memory, so the address the device sees equals the
/// pointer; host tests use host pointers as device addresses for their simulated device.
pub trait Dma {
    /// `pages` zeroed, 4 KiB-aligned, physically contiguous pages. Returns the device
    /// address and the pointer, or `None` when the pool is exhausted.
    fn alloc_pages(&mut self, pages: usize) -> Option<(u64, core::ptr::NonNull<u8>)>;
    /// The device address of `ptr`, which points into memory the device may access.
    fn device_address(&self, ptr: *const u8) -> u64;
}

/// Where the guest assigns PCI memory BARs, since qboot assigns none: below the LAPIC
/// and IOAPIC, above q35's MMCONFIG window. The image identity-maps it uncached.
pub const PCI_MMIO_WINDOW: core::ops::Range<u64> = 0xc000_0000..0xfec0_0000;
