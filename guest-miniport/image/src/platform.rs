//! The library's platform traits on this machine: TSC time, the LAPIC tick, MSI-X into
//! the LAPIC of the CPU the port names, IPIs between CPUs, PCI configuration mechanism
//! #1, and an identity-mapped DMA pool.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use guest_miniport::platform::{CpuWork, Dma, Events, PciConfig, Platform};
use x86_64::instructions::port::Port;

use crate::interrupts::{MSI_VECTOR_BASE, MSI_VECTOR_COUNT};
use crate::{apic, interrupts, smp, time};

/// Time and interrupts of this guest, as CPU `cpu` sees them: each CPU's loop has one.
#[derive(Debug)]
pub struct GuestPlatform {
    tick_us: u32,
    cpu: usize,
}

impl GuestPlatform {
    /// `tick_us` is the period the LAPIC timers were started with.
    pub fn new(tick_us: u32, cpu: usize) -> Self {
        GuestPlatform { tick_us, cpu }
    }
}

impl Platform for GuestPlatform {
    fn now_us(&self) -> u64 {
        time::now_us()
    }

    fn stall_us(&mut self, us: u32) {
        time::stall_us(us);
    }

    fn tick_us(&self) -> u32 {
        self.tick_us
    }

    fn wait_for_events(&mut self) -> Events {
        interrupts::wait_for_events()
    }

    fn msi_message(&self, entry: u16, cpu: usize) -> Option<(u64, u32)> {
        if entry >= u16::from(MSI_VECTOR_COUNT) {
            return None;
        }
        // Destination: that CPU's APIC id (address bits 19:12), physical mode. Data:
        // fixed delivery, edge triggered, the vector in bits 7:0.
        let address = apic::LAPIC_BASE | (u64::from(smp::apic_id(cpu)?) << 12);
        let data = u32::from(MSI_VECTOR_BASE) + u32::from(entry);
        Some((address, data))
    }

    fn disable_interrupts(&mut self) -> bool {
        let was = x86_64::instructions::interrupts::are_enabled();
        x86_64::instructions::interrupts::disable();
        was
    }

    fn restore_interrupts(&mut self, was_enabled: bool) {
        if was_enabled {
            x86_64::instructions::interrupts::enable();
        }
    }

    fn cpu(&self) -> usize {
        self.cpu
    }

    fn cpus(&self) -> usize {
        smp::online()
    }

    fn wake(&self, cpu: usize) {
        smp::wake(cpu);
    }

    fn pause(&mut self) {
        // `sti; hlt` back to back, as in wait_for_events: a wake already pending ends the
        // halt at once. Interrupts are on only for the halt; the handlers only record.
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }

    fn with_secondaries(&mut self, work: &dyn CpuWork, body: &mut dyn FnMut(&mut dyn Platform)) {
        smp::lend(work, || body(self));
    }
}

/// PCI configuration mechanism #1 (ports 0xCF8/0xCFC). It reaches only the first 256
/// bytes of each function: reads beyond return all ones (as for an absent register),
/// writes beyond are dropped.
#[derive(Debug, Default)]
pub struct PortPci;

/// The address/data pair is one per machine: CPUs take turns.
static CONFIG_PAIR: spin::Mutex<()> = spin::Mutex::new(());

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

impl PortPci {
    fn address(bus: u8, device: u8, function: u8, offset: u16) -> Option<u32> {
        if device >= 32 || function >= 8 || offset >= 256 {
            return None;
        }
        Some(
            0x8000_0000
                | u32::from(bus) << 16
                | u32::from(device) << 11
                | u32::from(function) << 8
                | u32::from(offset & 0xfc),
        )
    }

    fn read_aligned(address: u32) -> u32 {
        let mut addr: Port<u32> = Port::new(CONFIG_ADDRESS);
        let mut data: Port<u32> = Port::new(CONFIG_DATA);
        let _pair = CONFIG_PAIR.lock();
        // SAFETY: the PCI configuration ports; the address/data pair is used only here
        // and in write_aligned, under CONFIG_PAIR and never from interrupt handlers, so
        // it cannot interleave.
        unsafe {
            addr.write(address);
            data.read()
        }
    }

    fn write_aligned(address: u32, value: u32) {
        let mut addr: Port<u32> = Port::new(CONFIG_ADDRESS);
        let mut data: Port<u32> = Port::new(CONFIG_DATA);
        let _pair = CONFIG_PAIR.lock();
        // SAFETY: as in read_aligned. The value goes to the function the caller names;
        // what it does to that device is the caller's business.
        unsafe {
            addr.write(address);
            data.write(value);
        }
    }
}

impl PciConfig for PortPci {
    fn read32(&self, bus: u8, device: u8, function: u8, offset: u16) -> u32 {
        let Some(address) = Self::address(bus, device, function, offset) else {
            return u32::MAX;
        };
        let shift = u32::from(offset & 3) * 8;
        let low = Self::read_aligned(address);
        if shift == 0 {
            return low;
        }
        // An unaligned read spans two registers.
        let high = match Self::address(bus, device, function, offset + 4) {
            Some(next) => Self::read_aligned(next),
            None => u32::MAX,
        };
        (low >> shift) | (high << (32 - shift))
    }

    fn write32(&self, bus: u8, device: u8, function: u8, offset: u16, value: u32) {
        let Some(address) = Self::address(bus, device, function, offset) else {
            return;
        };
        // A 32-bit configuration write must be aligned; an unaligned one is a caller bug
        // that would clobber neighbouring registers, so it is dropped and logged.
        if offset & 3 != 0 {
            log::error!("unaligned PCI config write at {bus:02x}:{device:02x}.{function} +{offset:#x} dropped");
            return;
        }
        Self::write_aligned(address, value);
    }
}

/// Size of the DMA pool (`dma_pool` in boot.s), identity-mapped and cached: virtio
/// memory is coherent.
pub const DMA_POOL_BYTES: usize = 4 << 20;
const PAGE: usize = 4096;

extern "C" {
    /// Page-aligned, `DMA_POOL_BYTES` long, not zeroed at boot (boot.s).
    static mut dma_pool: u8;
}

static POOL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Bump allocator over the static pool. Pages are never freed: a scenario allocates its
/// queues and buffers once.
#[derive(Debug)]
pub struct BumpDma {
    next: usize,
}

impl BumpDma {
    /// The one allocator over the pool; `None` if it was already taken.
    pub fn take() -> Option<Self> {
        if POOL_TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(BumpDma { next: 0 })
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        DMA_POOL_BYTES - self.next
    }
}

impl Dma for BumpDma {
    fn alloc_pages(&mut self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        let bytes = pages.checked_mul(PAGE).filter(|&b| b > 0)?;
        if bytes > self.remaining() {
            return None;
        }
        let base = core::ptr::addr_of_mut!(dma_pool);
        // SAFETY: `next + bytes <= DMA_POOL_BYTES`, so the range is inside the pool, and
        // no earlier allocation overlaps it (next only grows).
        let ptr = unsafe { base.add(self.next) };
        self.next += bytes;
        // SAFETY: the range is in bounds (above) and handed out only now, so nothing else
        // aliases it. The pool is not zeroed at boot, so zeroing here is what makes the
        // pages zeroed.
        unsafe { ptr.write_bytes(0, bytes) };
        let ptr = NonNull::new(ptr)?;
        Some((self.device_address(ptr.as_ptr()), ptr))
    }

    fn device_address(&self, ptr: *const u8) -> u64 {
        // Identity mapping: the physical address is the virtual one.
        ptr as u64
    }
}
