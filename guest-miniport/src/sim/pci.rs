//! A fake PCI config space of bus 0 with BAR sizing semantics, holding a virtio-scsi
//! function laid out as QEMU lays it out.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::platform::PciConfig;
use crate::wire::*;

#[derive(Clone)]
struct FakeFunction {
    regs: [u32; 64],
    /// Size of each BAR (0 = unimplemented); for a 64-bit BAR, the upper register
    /// has size 0 and `bar64[i]` is set on the lower one.
    bar_size: [u64; 6],
    bar64: [bool; 6],
}

/// PCI config space of bus 0 with BAR sizing: writing all-ones to a BAR reads back the
/// size mask.
#[derive(Default)]
pub struct FakePci {
    functions: Mutex<HashMap<(u8, u8), FakeFunction>>,
}

impl FakePci {
    /// A bus with a virtio-scsi function at `device`: BAR0 I/O, BAR1 32-bit 4 KiB (MSI-X
    /// table), BAR2/3 unimplemented, BAR4/5 64-bit 16 KiB (virtio structures), and the
    /// capabilities QEMU gives it.
    pub fn with_virtio_scsi(device: u8) -> FakePci {
        let pci = FakePci::default();
        let mut f = FakeFunction {
            regs: [0; 64],
            bar_size: [0; 6],
            bar64: [false; 6],
        };
        f.regs[0] =
            u32::from(VIRTIO_PCI_DEVICE_ID_SCSI_MODERN) << 16 | u32::from(VIRTIO_PCI_VENDOR_ID);
        f.regs[1] = 0x0010_0000; // status: capability list
        f.regs[2] = 0x0100_0001;
        f.regs[4] = 0x1; // BAR0: I/O
        f.bar_size[1] = 0x1000;
        f.regs[8] = 0x4 | 0x8; // BAR4: 64-bit prefetchable
        f.bar_size[4] = 0x4000;
        f.bar64[4] = true;
        f.regs[13] = 0x40; // capability pointer
                           // virtio caps at 0x40.. (16 or 20 bytes each), MSI-X at 0x98.
        let caps: [(u8, u8, u32, u32, u8); 4] = [
            (0x40, VIRTIO_PCI_CAP_COMMON_CFG, 0x0000, 0x1000, 0x54),
            (0x54, VIRTIO_PCI_CAP_ISR_CFG, 0x1000, 0x1000, 0x64),
            (0x64, VIRTIO_PCI_CAP_DEVICE_CFG, 0x2000, 0x1000, 0x74),
            (0x74, VIRTIO_PCI_CAP_NOTIFY_CFG, 0x3000, 0x1000, 0x98),
        ];
        for (at, ty, off, len, next) in caps {
            let i = usize::from(at) / 4;
            f.regs[i] = 0x09 | u32::from(next) << 8 | 20 << 16 | u32::from(ty) << 24;
            f.regs[i + 1] = 4; // bar 4
            f.regs[i + 2] = off;
            f.regs[i + 3] = len;
            f.regs[i + 4] = 4; // notify_off_multiplier (only read for notify)
        }
        // MSI-X: 4 entries, table in BAR1 at 0, PBA in BAR1 at 0x800.
        f.regs[0x98 / 4] = 0x11 | (3 << 16);
        f.regs[0x9c / 4] = 1;
        f.regs[0xa0 / 4] = 0x800 | 1;
        pci.functions.lock().unwrap().insert((device, 0), f);
        pci
    }

    /// Adds a plain function without BARs.
    pub fn add_function(&self, device: u8, function: u8, vendor: u16, id: u16, multi: bool) {
        let mut f = FakeFunction {
            regs: [0; 64],
            bar_size: [0; 6],
            bar64: [false; 6],
        };
        f.regs[0] = u32::from(id) << 16 | u32::from(vendor);
        f.regs[3] = if multi { 0x0080_0000 } else { 0 };
        self.functions.lock().unwrap().insert((device, function), f);
    }
}

impl PciConfig for FakePci {
    fn read32(&self, bus: u8, device: u8, function: u8, offset: u16) -> u32 {
        let fns = self.functions.lock().unwrap();
        match fns.get(&(device, function)) {
            Some(f) if bus == 0 => f.regs[usize::from(offset / 4) % 64],
            _ => 0xffff_ffff,
        }
    }

    fn write32(&self, bus: u8, device: u8, function: u8, offset: u16, value: u32) {
        let mut fns = self.functions.lock().unwrap();
        let Some(f) = fns.get_mut(&(device, function)) else {
            return;
        };
        if bus != 0 {
            return;
        }
        let reg = usize::from(offset / 4) % 64;
        match reg {
            1 => f.regs[1] = (f.regs[1] & 0xffff_0000) | (value & 0xffff),
            4..=9 => {
                let i = reg - 4;
                let old = f.regs[reg];
                let upper_of_64 = i > 0 && f.bar64[i - 1];
                if upper_of_64 {
                    let mask = !(f.bar_size[i - 1] - 1);
                    f.regs[reg] = value & (mask >> 32) as u32;
                } else if old & 1 == 1 {
                    f.regs[reg] = (value & !0x3) | 1;
                } else if f.bar_size[i] == 0 {
                    f.regs[reg] = 0;
                } else {
                    let mask = !(f.bar_size[i] - 1) as u32;
                    f.regs[reg] = (value & mask) | (old & 0xf);
                }
            }
            // MSI-X message control: only Enable and Function Mask are writable.
            r if r == 0x98 / 4 => {
                f.regs[r] = (f.regs[r] & 0x3fff_ffff) | (value & 0xc000_0000);
            }
            _ => {}
        }
    }
}
