//! PCI bus 0: enumeration, memory BAR assignment, capability walk, and discovery of the
//! virtio-scsi function with its virtio and MSI-X capabilities. qboot assigns no BARs,
//! so the guest places them itself in [`PCI_MMIO_WINDOW`].

use core::fmt;

use crate::platform::{PciConfig, PCI_MMIO_WINDOW};
use crate::wire::{
    VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_DEVICE_ID_SCSI_MODERN,
    VIRTIO_PCI_DEVICE_ID_SCSI_TRANSITIONAL, VIRTIO_PCI_VENDOR_ID,
};

/// PCI constants, under the PCI spec's names (the virtio ones are in [`crate::wire`]).
pub mod bits {
    pub const PCI_VENDOR_ID: u16 = 0x00;
    pub const PCI_COMMAND: u16 = 0x04;
    pub const PCI_CLASS_REVISION: u16 = 0x08;
    pub const PCI_HEADER_TYPE: u16 = 0x0e;
    pub const PCI_BASE_ADDRESS_0: u16 = 0x10;
    pub const PCI_CAPABILITY_LIST: u16 = 0x34;
    pub const PCI_STATUS_CAP_LIST: u32 = 1 << 4;
    pub const PCI_COMMAND_MEMORY: u32 = 1 << 1;
    pub const PCI_COMMAND_MASTER: u32 = 1 << 2;
    pub const PCI_HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;
    pub const PCI_BASE_ADDRESS_SPACE_IO: u32 = 1;
    pub const PCI_BASE_ADDRESS_MEM_TYPE_MASK: u32 = 0x6;
    pub const PCI_BASE_ADDRESS_MEM_TYPE_64: u32 = 0x4;
    pub const PCI_BASE_ADDRESS_MEM_PREFETCH: u32 = 0x8;
    pub const PCI_CAP_ID_VNDR: u8 = 0x09;
    pub const PCI_CAP_ID_MSIX: u8 = 0x11;
    pub const PCI_MSIX_FLAGS_ENABLE: u16 = 1 << 15;
    pub const PCI_MSIX_FLAGS_MASKALL: u16 = 1 << 14;
    pub const PCI_MSIX_FLAGS_QSIZE: u16 = 0x7ff;
}
use bits::*;

/// Why the adapter could not be found or set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    NoVirtioScsiDevice,
    /// The BARs do not fit in the MMIO window.
    MmioWindowExhausted,
    /// A virtio capability (by `cfg_type`) is missing.
    MissingVirtioCap(u8),
    /// A virtio capability points at a BAR that is not a memory BAR, or past its end.
    BadVirtioCap(u8),
    /// The MSI-X table points at a BAR that is not a memory BAR.
    BadMsixCap,
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::NoVirtioScsiDevice => write!(f, "no virtio-scsi PCI function on bus 0"),
            PciError::MmioWindowExhausted => write!(f, "PCI MMIO window exhausted"),
            PciError::MissingVirtioCap(t) => write!(f, "virtio PCI capability {t} missing"),
            PciError::BadVirtioCap(t) => write!(f, "virtio PCI capability {t} out of its BAR"),
            PciError::BadMsixCap => write!(f, "MSI-X table not in a memory BAR"),
        }
    }
}

/// A function present on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciFunction {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class, subclass, programming interface (the top 24 bits of offset 0x08).
    pub class: u32,
}

impl PciFunction {
    pub fn read32(&self, cfg: &dyn PciConfig, offset: u16) -> u32 {
        cfg.read32(self.bus, self.device, self.function, offset & !3)
    }

    pub fn write32(&self, cfg: &dyn PciConfig, offset: u16, value: u32) {
        cfg.write32(self.bus, self.device, self.function, offset & !3, value)
    }

    pub fn read16(&self, cfg: &dyn PciConfig, offset: u16) -> u16 {
        (self.read32(cfg, offset) >> ((offset & 2) * 8)) as u16
    }

    pub fn read8(&self, cfg: &dyn PciConfig, offset: u16) -> u8 {
        (self.read32(cfg, offset) >> ((offset & 3) * 8)) as u8
    }

    /// Writes the command register. The status register shares its dword; its bits are
    /// write-1-to-clear, so the upper half is written as zero.
    pub fn write_command(&self, cfg: &dyn PciConfig, command: u16) {
        self.write32(cfg, PCI_COMMAND, u32::from(command));
    }

    pub fn command(&self, cfg: &dyn PciConfig) -> u16 {
        self.read16(cfg, PCI_COMMAND)
    }

    /// Turns on memory decoding and bus mastering (DMA).
    pub fn enable_memory_and_bus_master(&self, cfg: &dyn PciConfig) {
        let cmd = u32::from(self.command(cfg)) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.write_command(cfg, cmd as u16);
    }

    /// The capability list, as (offset, id) pairs.
    pub fn capabilities<'a>(&self, cfg: &'a dyn PciConfig) -> Capabilities<'a> {
        let status = self.read32(cfg, PCI_COMMAND) >> 16;
        let next = if status & PCI_STATUS_CAP_LIST != 0 {
            self.read8(cfg, PCI_CAPABILITY_LIST) & !3
        } else {
            0
        };
        Capabilities {
            cfg,
            func: *self,
            next,
            budget: 48,
        }
    }
}

/// Iterator over a function's capability list. A malformed list that loops is cut off
/// after 48 entries (the most that fit in 256 bytes of config space).
pub struct Capabilities<'a> {
    cfg: &'a dyn PciConfig,
    func: PciFunction,
    next: u8,
    budget: u8,
}

impl Iterator for Capabilities<'_> {
    /// (offset in config space, capability id)
    type Item = (u8, u8);

    fn next(&mut self) -> Option<(u8, u8)> {
        if self.next < 0x40 || self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        let at = self.next;
        let header = self.func.read16(self.cfg, u16::from(at));
        self.next = ((header >> 8) as u8) & !3;
        Some((at, header as u8))
    }
}

/// Calls `f` for every function on bus 0, honouring the multi-function bit.
pub fn for_each_function(cfg: &dyn PciConfig, mut f: impl FnMut(PciFunction)) {
    let bus = 0;
    for device in 0..32u8 {
        for function in 0..8u8 {
            let id = cfg.read32(bus, device, function, PCI_VENDOR_ID);
            let vendor_id = id as u16;
            if vendor_id == 0xffff {
                if function == 0 {
                    break;
                }
                continue;
            }
            let func = PciFunction {
                bus,
                device,
                function,
                vendor_id,
                device_id: (id >> 16) as u16,
                class: cfg.read32(bus, device, function, PCI_CLASS_REVISION) >> 8,
            };
            f(func);
            if function == 0
                && func.read8(cfg, PCI_HEADER_TYPE) & PCI_HEADER_TYPE_MULTI_FUNCTION == 0
            {
                break;
            }
        }
    }
}

/// A memory BAR after assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub address: u64,
    pub size: u64,
    pub is_64bit: bool,
    pub prefetchable: bool,
}

/// Bump allocator over the MMIO window; every BAR is naturally aligned (to its size).
#[derive(Clone, Debug)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator::new(PCI_MMIO_WINDOW)
    }
}

impl BarAllocator {
    pub fn new(window: core::ops::Range<u64>) -> Self {
        BarAllocator {
            next: window.start,
            end: window.end,
        }
    }

    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let size = size.max(16);
        let at = self.next.checked_add(size - 1)? & !(size - 1);
        let end = at.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(at)
    }
}

/// Sizes every memory BAR of `func` and assigns it from `alloc`. Memory decoding is off
/// while sizing, so the all-ones probe never decodes; the command register is restored
/// afterwards. I/O BARs are left alone. Returns the memory BARs by index.
pub fn assign_memory_bars(
    cfg: &dyn PciConfig,
    func: &PciFunction,
    alloc: &mut BarAllocator,
) -> Result<[Option<Bar>; 6], PciError> {
    let mut bars = [None; 6];
    let command = func.command(cfg);
    func.write_command(cfg, command & !(PCI_COMMAND_MEMORY as u16));
    let result = (|| {
        let mut i = 0;
        while i < 6 {
            let reg = PCI_BASE_ADDRESS_0 + 4 * i as u16;
            let orig = func.read32(cfg, reg);
            if orig & PCI_BASE_ADDRESS_SPACE_IO != 0 {
                i += 1;
                continue;
            }
            let is_64bit = orig & PCI_BASE_ADDRESS_MEM_TYPE_MASK == PCI_BASE_ADDRESS_MEM_TYPE_64;
            func.write32(cfg, reg, 0xffff_ffff);
            let low = func.read32(cfg, reg) & !0xf;
            let high = if is_64bit && i < 5 {
                let orig_hi = func.read32(cfg, reg + 4);
                func.write32(cfg, reg + 4, 0xffff_ffff);
                let hi = func.read32(cfg, reg + 4);
                func.write32(cfg, reg + 4, orig_hi);
                hi
            } else {
                0xffff_ffff
            };
            let mask = (u64::from(high) << 32) | u64::from(low);
            if low == 0 {
                // Unimplemented BAR.
                func.write32(cfg, reg, orig);
                i += if is_64bit { 2 } else { 1 };
                continue;
            }
            let size = (!mask).wrapping_add(1);
            let address = alloc.alloc(size).ok_or(PciError::MmioWindowExhausted)?;
            func.write32(cfg, reg, address as u32);
            if is_64bit {
                func.write32(cfg, reg + 4, (address >> 32) as u32);
            }
            bars[i] = Some(Bar {
                address,
                size,
                is_64bit,
                prefetchable: orig & PCI_BASE_ADDRESS_MEM_PREFETCH != 0,
            });
            i += if is_64bit { 2 } else { 1 };
        }
        Ok(bars)
    })();
    func.write_command(cfg, command);
    result
}

/// Where one virtio structure lives: `bar` + `offset`, `length` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCap {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
    /// Absolute address (BAR address + offset), filled after BAR assignment.
    pub address: u64,
}

/// The MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Offset of the capability in config space.
    pub cap_offset: u8,
    /// Number of table entries.
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    /// Absolute address of the table.
    pub table_address: u64,
}

impl MsixCap {
    fn control(&self, func: &PciFunction, cfg: &dyn PciConfig) -> u32 {
        func.read32(cfg, u16::from(self.cap_offset))
    }

    /// Sets or clears MSI-X Enable (and clears Function Mask).
    pub fn set_enabled(&self, func: &PciFunction, cfg: &dyn PciConfig, enabled: bool) {
        let dword = self.control(func, cfg);
        let mut control = (dword >> 16) as u16 & !PCI_MSIX_FLAGS_MASKALL;
        if enabled {
            control |= PCI_MSIX_FLAGS_ENABLE;
        } else {
            control &= !PCI_MSIX_FLAGS_ENABLE;
        }
        func.write32(
            cfg,
            u16::from(self.cap_offset),
            (dword & 0xffff) | (u32::from(control) << 16),
        );
    }

    pub fn is_enabled(&self, func: &PciFunction, cfg: &dyn PciConfig) -> bool {
        (self.control(func, cfg) >> 16) as u16 & PCI_MSIX_FLAGS_ENABLE != 0
    }
}

/// The virtio-scsi adapter found on the bus, with its BARs assigned and enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioScsiPci {
    pub func: PciFunction,
    pub bars: [Option<Bar>; 6],
    pub common: VirtioCap,
    pub notify: VirtioCap,
    pub notify_off_multiplier: u32,
    pub isr: VirtioCap,
    pub device: Option<VirtioCap>,
    pub msix: Option<MsixCap>,
}

fn is_virtio_scsi(f: &PciFunction) -> bool {
    f.vendor_id == VIRTIO_PCI_VENDOR_ID
        && (f.device_id == VIRTIO_PCI_DEVICE_ID_SCSI_MODERN
            || f.device_id == VIRTIO_PCI_DEVICE_ID_SCSI_TRANSITIONAL)
}

/// Finds the first virtio-scsi function on bus 0, assigns its memory BARs from `alloc`,
/// enables memory decoding and bus mastering, and reads its capabilities. The memory
/// BARs of every other type-0 function on the bus are assigned from `alloc` too (their
/// decoding left as it was), so that nothing a firmware placed can overlap ours.
pub fn find_virtio_scsi(
    cfg: &dyn PciConfig,
    alloc: &mut BarAllocator,
) -> Result<VirtioScsiPci, PciError> {
    let mut found = None;
    let mut result = Ok(());
    for_each_function(cfg, |f| {
        if found.is_none() && is_virtio_scsi(&f) {
            found = Some(f);
            return;
        }
        if result.is_ok() && f.read8(cfg, PCI_HEADER_TYPE) & 0x7f == 0 {
            result = assign_memory_bars(cfg, &f, alloc).map(|_| ());
        }
    });
    let func = found.ok_or(PciError::NoVirtioScsiDevice)?;
    result?;
    let bars = assign_memory_bars(cfg, &func, alloc)?;

    let mut common = None;
    let mut notify = None;
    let mut notify_off_multiplier = 0;
    let mut isr = None;
    let mut device = None;
    let mut msix = None;
    for (at, id) in func.capabilities(cfg) {
        let at16 = u16::from(at);
        match id {
            PCI_CAP_ID_VNDR => {
                // struct virtio_pci_cap: cap_vndr, cap_next, cap_len, cfg_type, bar, id,
                // padding[2], offset (le32), length (le32).
                let cfg_type = func.read8(cfg, at16 + 3);
                let bar = func.read8(cfg, at16 + 4);
                let offset = func.read32(cfg, at16 + 8);
                let length = func.read32(cfg, at16 + 12);
                let slot = match cfg_type {
                    VIRTIO_PCI_CAP_COMMON_CFG => &mut common,
                    VIRTIO_PCI_CAP_NOTIFY_CFG => {
                        if notify.is_none() {
                            notify_off_multiplier = func.read32(cfg, at16 + 16);
                        }
                        &mut notify
                    }
                    VIRTIO_PCI_CAP_ISR_CFG => &mut isr,
                    VIRTIO_PCI_CAP_DEVICE_CFG => &mut device,
                    _ => continue,
                };
                // The spec lets a device offer a structure more than once; the first
                // one is the preferred one.
                if slot.is_some() {
                    continue;
                }
                let b = bars
                    .get(usize::from(bar))
                    .copied()
                    .flatten()
                    .filter(|b| u64::from(offset) + u64::from(length) <= b.size)
                    .ok_or(PciError::BadVirtioCap(cfg_type))?;
                *slot = Some(VirtioCap {
                    bar,
                    offset,
                    length,
                    address: b.address + u64::from(offset),
                });
            }
            PCI_CAP_ID_MSIX => {
                let control = func.read16(cfg, at16 + 2);
                let table = func.read32(cfg, at16 + 4);
                let table_bar = (table & 7) as u8;
                let table_offset = table & !7;
                let b = bars
                    .get(usize::from(table_bar))
                    .copied()
                    .flatten()
                    .ok_or(PciError::BadMsixCap)?;
                msix = Some(MsixCap {
                    cap_offset: at,
                    table_size: (control & PCI_MSIX_FLAGS_QSIZE) + 1,
                    table_bar,
                    table_offset,
                    table_address: b.address + u64::from(table_offset),
                });
            }
            _ => {}
        }
    }
    let common = common.ok_or(PciError::MissingVirtioCap(VIRTIO_PCI_CAP_COMMON_CFG))?;
    let notify = notify.ok_or(PciError::MissingVirtioCap(VIRTIO_PCI_CAP_NOTIFY_CFG))?;
    let isr = isr.ok_or(PciError::MissingVirtioCap(VIRTIO_PCI_CAP_ISR_CFG))?;
    func.enable_memory_and_bus_master(cfg);
    Ok(VirtioScsiPci {
        func,
        bars,
        common,
        notify,
        notify_off_multiplier,
        isr,
        device,
        msix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::FakePci;

    #[test]
    fn bars_are_sized_and_naturally_aligned() {
        let pci = FakePci::with_virtio_scsi(3);
        let f = PciFunction {
            bus: 0,
            device: 3,
            function: 0,
            vendor_id: 0x1af4,
            device_id: 0x1048,
            class: 0,
        };
        let mut alloc = BarAllocator::new(0xc000_0000..0xc100_0000);
        // Take a small odd piece first so alignment matters.
        alloc.alloc(0x100).unwrap();
        let bars = assign_memory_bars(&pci, &f, &mut alloc).unwrap();
        let b1 = bars[1].unwrap();
        assert_eq!(b1.size, 0x1000);
        assert!(!b1.is_64bit);
        assert_eq!(b1.address % 0x1000, 0);
        let b4 = bars[4].unwrap();
        assert!(b4.is_64bit);
        assert_eq!(b4.size, 0x4000);
        assert_eq!(b4.address % 0x4000, 0);
        assert_eq!(bars[5], None, "upper half of a 64-bit BAR is not a BAR");
        assert_eq!(bars[0], None, "I/O BAR left alone");
        assert_eq!(bars[2], None, "unimplemented BAR");
        // The registers hold the addresses, and the command register was restored.
        assert_eq!(u64::from(pci.read32(0, 3, 0, 0x14) & !0xf), b1.address);
        let lo = u64::from(pci.read32(0, 3, 0, 0x20) & !0xf);
        let hi = u64::from(pci.read32(0, 3, 0, 0x24));
        assert_eq!(hi << 32 | lo, b4.address);
        assert_eq!(pci.read32(0, 3, 0, 0x04) & 0x2, 0);
        assert!(b1.address + b1.size <= b4.address || b4.address + b4.size <= b1.address);
    }

    #[test]
    fn window_exhaustion_is_an_error() {
        let pci = FakePci::with_virtio_scsi(3);
        let mut alloc = BarAllocator::new(0xc000_0000..0xc000_2000);
        assert_eq!(
            find_virtio_scsi(&pci, &mut alloc),
            Err(PciError::MmioWindowExhausted)
        );
    }

    #[test]
    fn finds_virtio_scsi_and_its_capabilities() {
        let pci = FakePci::with_virtio_scsi(5);
        let mut alloc = BarAllocator::default();
        let d = find_virtio_scsi(&pci, &mut alloc).unwrap();
        assert_eq!((d.func.device, d.func.function), (5, 0));
        let b4 = d.bars[4].unwrap();
        assert_eq!(d.common.address, b4.address);
        assert_eq!(d.isr.address, b4.address + 0x1000);
        assert_eq!(d.device.unwrap().address, b4.address + 0x2000);
        assert_eq!(d.notify.address, b4.address + 0x3000);
        assert_eq!(d.notify_off_multiplier, 4);
        let msix = d.msix.unwrap();
        assert_eq!(msix.table_size, 4);
        assert_eq!(msix.table_address, d.bars[1].unwrap().address);
        let cmd = pci.read32(0, 5, 0, 0x04);
        assert_eq!(cmd & 0x6, 0x6, "memory space and bus master enabled");
        msix.set_enabled(&d.func, &pci, true);
        assert!(msix.is_enabled(&d.func, &pci));
    }

    #[test]
    fn scan_honours_the_multi_function_bit() {
        let pci = FakePci::with_virtio_scsi(3);
        // Device 1: single-function, but answers on function 1 too (as some devices
        // do); the scan must not report it.
        pci.add_function(1, 0, 0x8086, 0x1234, false);
        pci.add_function(1, 1, 0x8086, 0x5678, false);
        // Device 2: multi-function with functions 0 and 3.
        pci.add_function(2, 0, 0x8086, 0x1111, true);
        pci.add_function(2, 3, 0x8086, 0x2222, false);
        let mut seen = std::vec::Vec::new();
        for_each_function(&pci, |f| seen.push((f.device, f.function, f.device_id)));
        assert_eq!(
            seen,
            [
                (1, 0, 0x1234),
                (2, 0, 0x1111),
                (2, 3, 0x2222),
                (3, 0, 0x1048)
            ]
        );
    }
}
