//! Host-test doubles: a fake PCI config space with BAR sizing semantics, DMA over host
//! memory (device address = host pointer), a platform with deterministic virtual time,
//! and a simulated virtio-scsi HBA behind [`Transport`] that processes the virtqueues in
//! memory as a device would and serves a RAM disk.

extern crate std;

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::vec::Vec;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, Ordering};

use crate::platform::{Dma, Events, PciConfig, Platform};
use crate::virtio::bits::*;
use crate::virtio::Transport;
use crate::virtio_scsi::bits::*;

// ---------------------------------------------------------------------------- PCI

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
    functions: RefCell<HashMap<(u8, u8), FakeFunction>>,
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
        f.regs[0] = 0x1048_1af4;
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
            (0x40, VIRTIO_PCI_CAP_COMMON, 0x0000, 0x1000, 0x54),
            (0x54, VIRTIO_PCI_CAP_ISR, 0x1000, 0x1000, 0x64),
            (0x64, VIRTIO_PCI_CAP_DEVICE, 0x2000, 0x1000, 0x74),
            (0x74, VIRTIO_PCI_CAP_NOTIFY, 0x3000, 0x1000, 0x98),
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
        pci.functions.borrow_mut().insert((device, 0), f);
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
        self.functions.borrow_mut().insert((device, function), f);
    }
}

const VIRTIO_PCI_CAP_COMMON: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY: u8 = 2;
const VIRTIO_PCI_CAP_ISR: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE: u8 = 4;

impl PciConfig for FakePci {
    fn read32(&self, bus: u8, device: u8, function: u8, offset: u16) -> u32 {
        let fns = self.functions.borrow();
        match fns.get(&(device, function)) {
            Some(f) if bus == 0 => f.regs[usize::from(offset / 4) % 64],
            _ => 0xffff_ffff,
        }
    }

    fn write32(&self, bus: u8, device: u8, function: u8, offset: u16, value: u32) {
        let mut fns = self.functions.borrow_mut();
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

// ---------------------------------------------------------------------------- DMA

/// Page allocations in host memory; the device address is the host pointer.
#[derive(Default)]
pub struct HostDma {
    blocks: Vec<(NonNull<u8>, Layout)>,
}

impl Dma for HostDma {
    fn alloc_pages(&mut self, pages: usize) -> Option<(u64, NonNull<u8>)> {
        let layout = Layout::from_size_align(pages * 4096, 4096).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size; a null result (out of memory) is
        // turned into None.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        self.blocks.push((ptr, layout));
        Some((ptr.as_ptr() as u64, ptr))
    }

    fn device_address(&self, ptr: *const u8) -> u64 {
        ptr as u64
    }
}

impl Drop for HostDma {
    fn drop(&mut self) {
        for (ptr, layout) in self.blocks.drain(..) {
            // SAFETY: allocated by alloc_zeroed with this layout and freed once.
            unsafe { dealloc(ptr.as_ptr(), layout) };
        }
    }
}

// ---------------------------------------------------------------------------- world

/// MSI-X data value the simulated platform hands out for entry `e`.
const MSI_BASE_VECTOR: u32 = 0x40;

/// Faults the simulated device can inject.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFaults {
    /// Complete requests but never raise their interrupt.
    pub drop_interrupts: bool,
    /// After the n-th request completion (1-based), push its used element a second
    /// time: a stale completion.
    pub duplicate_completion: Option<u32>,
    /// The first command gets CHECK CONDITION, UNIT ATTENTION.
    pub unit_attention_once: bool,
    /// Leave request chains unprocessed (a hung device).
    pub hold_requests: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct SimQueue {
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
    last_avail: u16,
    used_idx: u16,
}

/// The simulated machine: virtual clock, pending interrupts, and the device.
pub struct World {
    pub now_us: u64,
    pub tick_us: u32,
    next_tick_us: u64,
    pending_vectors: u32,
    pub stalled_us: u64,
    // device
    pub faults: SimFaults,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub offered_features: u64,
    pub driver_features: u64,
    queue_select: u16,
    queues: [SimQueue; 3],
    config_vector: u16,
    config: [u8; 36],
    msix: [(u64, u32, bool); 4],
    pub msix_enabled: bool,
    isr: u8,
    pub disk: Vec<u8>,
    pub block_size: u32,
    pub completions: u32,
    pub interrupts_raised: u32,
    pub notifications: u32,
    pub commands: Vec<u8>,
    pub event_buffers_seen: u16,
}

/// A handle on the shared world.
pub type SharedWorld = Rc<RefCell<World>>;

impl World {
    pub fn new(blocks: u64, tick_us: u32) -> SharedWorld {
        let mut config = [0u8; 36];
        config[CFG_NUM_QUEUES..CFG_NUM_QUEUES + 4].copy_from_slice(&1u32.to_le_bytes());
        config[CFG_CMD_PER_LUN..CFG_CMD_PER_LUN + 4].copy_from_slice(&128u32.to_le_bytes());
        config[CFG_SENSE_SIZE..CFG_SENSE_SIZE + 4].copy_from_slice(&96u32.to_le_bytes());
        config[CFG_CDB_SIZE..CFG_CDB_SIZE + 4].copy_from_slice(&32u32.to_le_bytes());
        config[CFG_MAX_TARGET..CFG_MAX_TARGET + 2].copy_from_slice(&0u16.to_le_bytes());
        config[CFG_MAX_LUN..CFG_MAX_LUN + 4].copy_from_slice(&0u32.to_le_bytes());
        let q = SimQueue {
            size: 128,
            vector: VIRTIO_MSI_NO_VECTOR,
            ..SimQueue::default()
        };
        Rc::new(RefCell::new(World {
            now_us: 0,
            tick_us,
            next_tick_us: u64::from(tick_us),
            pending_vectors: 0,
            stalled_us: 0,
            faults: SimFaults::default(),
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            offered_features: VIRTIO_F_VERSION_1
                | VIRTIO_RING_F_EVENT_IDX
                | VIRTIO_RING_F_INDIRECT_DESC
                | VIRTIO_SCSI_F_HOTPLUG,
            driver_features: 0,
            queue_select: 0,
            queues: [q; 3],
            config_vector: VIRTIO_MSI_NO_VECTOR,
            config,
            msix: [(0, 0, true); 4],
            msix_enabled: false,
            isr: 0,
            disk: std::vec![0; (blocks * 512) as usize],
            block_size: 512,
            completions: 0,
            interrupts_raised: 0,
            notifications: 0,
            commands: Vec::new(),
            event_buffers_seen: 0,
        }))
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        for q in self.queues.iter_mut() {
            *q = SimQueue {
                size: 128,
                vector: VIRTIO_MSI_NO_VECTOR,
                ..SimQueue::default()
            };
        }
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
    }

    fn event_idx(&self) -> bool {
        self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// Raises the interrupt of queue `q` (MSI-X entry, or the ISR bit for INTx).
    fn interrupt(&mut self, q: usize) {
        if self.faults.drop_interrupts {
            return;
        }
        let v = self.queues[q].vector;
        if self.msix_enabled && v != VIRTIO_MSI_NO_VECTOR {
            let (addr, data, masked) = self.msix[usize::from(v)];
            if !masked && addr == 0xfee0_0000 && data >= MSI_BASE_VECTOR {
                self.pending_vectors |= 1 << (data - MSI_BASE_VECTOR);
                self.interrupts_raised += 1;
            }
        } else {
            // INTx is not routed anywhere in the simulation: only the ISR records it.
            self.isr |= VIRTIO_PCI_ISR_QUEUE;
        }
    }
}

fn mem_read(addr: u64, buf: &mut [u8]) {
    // SAFETY: device addresses are host pointers into HostDma pages (or the test's
    // own buffers) that stay allocated while the device holds them.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) }
}

fn mem_write(addr: u64, data: &[u8]) {
    // SAFETY: as in mem_read; the driver made these buffers device-writable.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

fn mem_u16(addr: u64) -> u16 {
    let mut b = [0; 2];
    mem_read(addr, &mut b);
    u16::from_le_bytes(b)
}

fn atomic_u16(addr: u64) -> &'static AtomicU16 {
    // SAFETY: ring index fields are 2-aligned, inside ring memory that outlives the
    // device's use of it in these tests.
    unsafe { &*(addr as *const AtomicU16) }
}

/// A chain's buffers: (address, length, device-writable).
fn walk_chain(q: &SimQueue, head: u16) -> Vec<(u64, u32, bool)> {
    let mut out = Vec::new();
    let mut i = head;
    for _ in 0..q.size {
        let mut d = [0u8; 16];
        mem_read(q.desc + 16 * u64::from(i), &mut d);
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        let next = u16::from_le_bytes(d[14..16].try_into().unwrap());
        assert_eq!(flags & 4, 0, "driver used INDIRECT without negotiating it");
        out.push((addr, len, flags & VIRTQ_DESC_F_WRITE != 0));
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            return out;
        }
        i = next;
    }
    panic!("descriptor loop");
}

fn gather(bufs: &[(u64, u32, bool)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(a, l, w) in bufs {
        assert!(!w);
        let mut b = std::vec![0; l as usize];
        mem_read(a, &mut b);
        v.extend_from_slice(&b);
    }
    v
}

fn scatter(bufs: &[(u64, u32, bool)], data: &[u8]) -> u32 {
    let mut at = 0;
    for &(a, l, w) in bufs {
        assert!(w);
        let n = (l as usize).min(data.len() - at);
        mem_write(a, &data[at..at + n]);
        at += n;
        if at == data.len() {
            break;
        }
    }
    at as u32
}

/// SCSI target: (status, sense, data-in) for a CDB and data-out.
fn execute(w: &mut World, cdb: &[u8], data_out: &[u8]) -> (u8, Vec<u8>, Vec<u8>) {
    w.commands.push(cdb[0]);
    if w.faults.unit_attention_once {
        w.faults.unit_attention_once = false;
        // POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
        return (2, sense(0x6, 0x29, 0), Vec::new());
    }
    let bs = w.block_size as usize;
    let blocks = (w.disk.len() / bs) as u64;
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    let rw = |lba: u64, n: u64| -> Option<core::ops::Range<usize>> {
        (lba + n <= blocks).then(|| (lba as usize * bs)..((lba + n) as usize * bs))
    };
    match cdb[0] {
        0x00 => (0, Vec::new(), Vec::new()),
        0x12 => {
            let mut d = std::vec![0u8; 96];
            d[2] = 6;
            d[3] = 2;
            d[4] = 91;
            d[8..16].copy_from_slice(b"FLAKYSIM");
            d[16..32].copy_from_slice(b"RAM DISK \"q\"    ");
            d[32..36].copy_from_slice(b"0001");
            let n = usize::from(u16::from_be_bytes([cdb[3], cdb[4]])).min(96);
            d.truncate(n);
            (0, Vec::new(), d)
        }
        0x25 => {
            let mut d = Vec::new();
            d.extend_from_slice(&((blocks - 1).min(0xffff_ffff) as u32).to_be_bytes());
            d.extend_from_slice(&w.block_size.to_be_bytes());
            (0, Vec::new(), d)
        }
        0x9e if cdb[1] & 0x1f == 0x10 => {
            let mut d = std::vec![0u8; 32];
            d[..8].copy_from_slice(&(blocks - 1).to_be_bytes());
            d[8..12].copy_from_slice(&w.block_size.to_be_bytes());
            (0, Vec::new(), d)
        }
        0x28 | 0x88 | 0x2a | 0x8a => {
            let (lba, n) = if cdb[0] & 0x80 != 0 {
                (be64(&cdb[2..10]), u64::from(be32(&cdb[10..14])))
            } else {
                (
                    u64::from(be32(&cdb[2..6])),
                    u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
                )
            };
            let Some(r) = rw(lba, n) else {
                return (2, sense(0x5, 0x21, 0), Vec::new());
            };
            if cdb[0] == 0x28 || cdb[0] == 0x88 {
                (0, Vec::new(), w.disk[r].to_vec())
            } else if data_out.len() < r.len() {
                (2, sense(0x5, 0x24, 0), Vec::new())
            } else {
                let len = r.len();
                w.disk[r].copy_from_slice(&data_out[..len]);
                (0, Vec::new(), Vec::new())
            }
        }
        _ => (2, sense(0x5, 0x20, 0), Vec::new()),
    }
}

fn sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = std::vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

impl World {
    /// Processes every available chain of the request queue.
    fn process_requests(&mut self) {
        let qi = usize::from(REQUESTQ);
        let mut q = self.queues[qi];
        if !q.enabled || self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 || self.faults.hold_requests {
            return;
        }
        // Acquire: the chains are visible once we see the driver's avail.idx.
        let avail_idx = atomic_u16(q.driver + 2).load(Ordering::Acquire);
        let old_used = q.used_idx;
        while q.last_avail != avail_idx {
            let head = mem_u16(q.driver + 4 + 2 * u64::from(q.last_avail % q.size));
            q.last_avail = q.last_avail.wrapping_add(1);
            let chain = walk_chain(&q, head);
            let split = chain.iter().position(|c| c.2).unwrap_or(chain.len());
            let (readable, writable) = chain.split_at(split);
            let out = gather(readable);
            let hdr = CMD_REQ_HEADER + CDB_SIZE as usize;
            let mut resp = std::vec![0u8; CMD_RESP_HEADER + SENSE_SIZE as usize];
            let mut written = resp.len() as u32;
            if out.len() < hdr {
                resp[11] = VIRTIO_SCSI_S_FAILURE;
            } else if out[0] != 1 || out[1] != 0 || out[3] != 0 {
                resp[11] = VIRTIO_SCSI_S_BAD_TARGET;
            } else {
                let cdb = out[CMD_REQ_HEADER..hdr].to_vec();
                let (status, sense, data_in) = execute(self, &cdb, &out[hdr..]);
                let want_in: u32 = writable
                    .iter()
                    .map(|c| c.1)
                    .sum::<u32>()
                    .saturating_sub(resp.len() as u32);
                let want_out = (out.len() - hdr) as u32;
                let mut full = Vec::new();
                resp[0..4].copy_from_slice(&(sense.len() as u32).to_le_bytes());
                resp[10] = status;
                resp[12..12 + sense.len()].copy_from_slice(&sense);
                let moved = if data_in.is_empty() {
                    if status == 0 {
                        want_out
                    } else {
                        0
                    }
                } else {
                    data_in.len() as u32
                };
                let expected = if data_in.is_empty() {
                    want_out
                } else {
                    want_in
                };
                resp[4..8].copy_from_slice(&expected.saturating_sub(moved).to_le_bytes());
                full.extend_from_slice(&resp);
                full.extend_from_slice(&data_in);
                written = scatter(writable, &full);
            }
            if out.len() < hdr {
                written = scatter(writable, &resp);
            }
            self.push_used(qi, &mut q, head, written);
            self.completions += 1;
            if self.faults.duplicate_completion == Some(self.completions) {
                self.push_used(qi, &mut q, head, written);
            }
        }
        self.queues[qi] = q;
        if self.event_idx() {
            // Ask for a notification at every new chain.
            let avail_event = q.device + 4 + 8 * u64::from(q.size);
            mem_write(avail_event, &q.last_avail.to_le_bytes());
        }
        if q.used_idx != old_used && self.wants_interrupt(&q, old_used) {
            self.interrupt(qi);
        }
    }

    fn push_used(&mut self, _qi: usize, q: &mut SimQueue, head: u16, len: u32) {
        let slot = u64::from(q.used_idx % q.size);
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        mem_write(q.device + 4 + 8 * slot, &e);
        q.used_idx = q.used_idx.wrapping_add(1);
        // Release: the element and the buffers written are visible before the index.
        atomic_u16(q.device + 2).store(q.used_idx, Ordering::Release);
    }

    fn wants_interrupt(&self, q: &SimQueue, old_used: u16) -> bool {
        if self.event_idx() {
            let used_event = mem_u16(q.driver + 4 + 2 * u64::from(q.size));
            q.used_idx.wrapping_sub(used_event).wrapping_sub(1) < q.used_idx.wrapping_sub(old_used)
        } else {
            mem_u16(q.driver) & 1 == 0
        }
    }

    fn count_event_buffers(&mut self) {
        let q = self.queues[usize::from(EVENTQ)];
        if q.enabled {
            self.event_buffers_seen = atomic_u16(q.driver + 2).load(Ordering::Acquire);
        }
    }
}

// ---------------------------------------------------------------------------- transport

/// The simulated device's registers.
pub struct SimTransport(pub SharedWorld);

impl Transport for SimTransport {
    fn device_features(&mut self, select: u32) -> u32 {
        let mut w = self.0.borrow_mut();
        w.device_feature_select = select;
        match select {
            0 => w.offered_features as u32,
            1 => (w.offered_features >> 32) as u32,
            _ => 0,
        }
    }
    fn set_driver_features(&mut self, select: u32, value: u32) {
        let mut w = self.0.borrow_mut();
        w.driver_feature_select = select;
        match select {
            0 => w.driver_features = (w.driver_features & !0xffff_ffff) | u64::from(value),
            1 => w.driver_features = (w.driver_features & 0xffff_ffff) | u64::from(value) << 32,
            _ => {}
        }
    }
    fn status(&self) -> u8 {
        self.0.borrow().status
    }
    fn set_status(&mut self, status: u8) {
        let mut w = self.0.borrow_mut();
        if status == 0 {
            w.reset();
            return;
        }
        let mut s = status;
        if s & VIRTIO_CONFIG_S_FEATURES_OK != 0 && w.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            // Refuse features it did not offer, and a driver without VERSION_1.
            let f = w.driver_features;
            if f & !w.offered_features != 0 || f & VIRTIO_F_VERSION_1 == 0 {
                s &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        w.status = s;
    }
    fn config_generation(&self) -> u8 {
        0
    }
    fn num_queues(&self) -> u16 {
        3
    }
    fn config_msix_vector(&self) -> u16 {
        self.0.borrow().config_vector
    }
    fn set_config_msix_vector(&mut self, vector: u16) {
        let mut w = self.0.borrow_mut();
        w.config_vector = if vector < 4 {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        };
    }
    fn queue_select(&mut self, queue: u16) {
        self.0.borrow_mut().queue_select = queue;
    }
    fn queue_size(&self) -> u16 {
        let w = self.0.borrow();
        w.queues
            .get(usize::from(w.queue_select))
            .map_or(0, |q| q.size)
    }
    fn set_queue_size(&mut self, size: u16) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.size = size;
        }
    }
    fn queue_msix_vector(&self) -> u16 {
        let w = self.0.borrow();
        w.queues
            .get(usize::from(w.queue_select))
            .map_or(VIRTIO_MSI_NO_VECTOR, |q| q.vector)
    }
    fn set_queue_msix_vector(&mut self, vector: u16) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.vector = if vector < 4 {
                vector
            } else {
                VIRTIO_MSI_NO_VECTOR
            };
        }
    }
    fn queue_enabled(&self) -> bool {
        let w = self.0.borrow();
        w.queues
            .get(usize::from(w.queue_select))
            .is_some_and(|q| q.enabled)
    }
    fn set_queue_enable(&mut self) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.enabled = true;
        }
    }
    fn queue_notify_off(&self) -> u16 {
        self.0.borrow().queue_select
    }
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.desc = desc;
            q.driver = driver;
            q.device = device;
        }
    }
    fn notify(&mut self, queue: u16) {
        let mut w = self.0.borrow_mut();
        w.notifications += 1;
        match queue {
            REQUESTQ => w.process_requests(),
            EVENTQ => w.count_event_buffers(),
            _ => {}
        }
    }
    fn read_isr(&mut self) -> u8 {
        core::mem::take(&mut self.0.borrow_mut().isr)
    }
    fn read_device_config(&self, offset: usize, buf: &mut [u8]) {
        let w = self.0.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = w.config.get(offset + i).copied().unwrap_or(0);
        }
    }
    fn write_device_config(&mut self, offset: usize, data: &[u8]) {
        let mut w = self.0.borrow_mut();
        // Only sense_size and cdb_size are driver-writable.
        if offset == CFG_SENSE_SIZE || offset == CFG_CDB_SIZE {
            w.config[offset..offset + data.len()].copy_from_slice(data);
        }
    }
    fn msix_table_size(&self) -> u16 {
        4
    }
    fn set_msix_entry(&mut self, entry: u16, address: u64, data: u32) {
        if let Some(e) = self.0.borrow_mut().msix.get_mut(usize::from(entry)) {
            *e = (address, data, false);
        }
    }
    fn set_msix_enabled(&mut self, enabled: bool) {
        self.0.borrow_mut().msix_enabled = enabled;
    }
}

// ---------------------------------------------------------------------------- platform

/// Deterministic virtual time: `wait_for_events` returns pending interrupts at once,
/// otherwise jumps to the next tick.
pub struct SimPlatform(pub SharedWorld);

impl Platform for SimPlatform {
    fn now_us(&self) -> u64 {
        self.0.borrow().now_us
    }
    fn stall_us(&mut self, us: u32) {
        let mut w = self.0.borrow_mut();
        w.now_us += u64::from(us);
        w.stalled_us += u64::from(us);
    }
    fn tick_us(&self) -> u32 {
        self.0.borrow().tick_us
    }
    fn wait_for_events(&mut self) -> Events {
        let mut w = self.0.borrow_mut();
        if w.pending_vectors == 0 {
            w.now_us = w.now_us.max(w.next_tick_us);
        } else {
            // Interrupt latency.
            w.now_us += 5;
        }
        let mut ticks = 0;
        while w.next_tick_us <= w.now_us {
            ticks += 1;
            w.next_tick_us += u64::from(w.tick_us);
        }
        Events {
            ticks,
            vectors: core::mem::take(&mut w.pending_vectors),
        }
    }
    fn msi_message(&self, entry: u16) -> Option<(u64, u32)> {
        (entry < 32).then_some((0xfee0_0000, MSI_BASE_VECTOR + u32::from(entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{check_pattern, smoke_lba, GuestArgs, EXIT_FAIL, EXIT_PASS};
    use crate::runner::{report_result, run, run_scenario, Failure, Outcome};
    use std::string::String;

    struct Run {
        world: SharedWorld,
        result: Result<(), std::string::String>,
        outcome: Outcome,
        lines: Vec<serde_json::Value>,
        exit: u8,
    }

    fn smoke(args: GuestArgs, faults: SimFaults) -> Run {
        let world = World::new(8192, 10_000);
        world.borrow_mut().faults = faults;
        let mut platform = SimPlatform(world.clone());
        let mut dma = HostDma::default();
        let mut out = String::new();
        let mut outcome = Outcome::default();
        let result = run_scenario(
            &mut platform,
            SimTransport(world.clone()),
            &mut dma,
            &args,
            &mut out,
            &mut outcome,
        );
        let result_str = result.map_err(|e: Failure<'_>| std::format!("{e}"));
        let exit = report_result(
            &mut platform,
            &mut out,
            Some(&args),
            &outcome,
            result_str.clone().map_err(|_| Failure::OutOfDmaMemory),
        );
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        // The checker's report is in the result line; a correct miniport breaks no rule.
        let last = lines.last().unwrap();
        assert_eq!(last["violations"], 0, "{last}");
        assert_eq!(last["violation_list"], serde_json::json!([]));
        assert!(last["hw_start_io_max_us"].as_u64().is_some());
        Run {
            world,
            result: result_str,
            outcome,
            lines,
            exit,
        }
    }

    fn args(irq: bool) -> GuestArgs {
        GuestArgs {
            irq,
            seed: 9,
            blocks: 16,
            queue_depth: 4,
            ..GuestArgs::default()
        }
    }

    /// Commands of a smoke run without retries: INQUIRY, READ CAPACITY, writes, reads.
    fn commands(a: &GuestArgs) -> u64 {
        2 + 2 * u64::from(a.blocks)
    }

    fn assert_disk_has_pattern(r: &Run, a: &GuestArgs) {
        let w = r.world.borrow();
        let capacity = (w.disk.len() / 512) as u64;
        for i in 0..a.blocks {
            let lba = smoke_lba(a.seed, capacity, a.blocks, i) as usize;
            assert!(check_pattern(
                a.seed,
                lba as u64,
                &w.disk[lba * 512..(lba + 1) * 512]
            ));
        }
    }

    #[test]
    fn smoke_with_irq_on_completes_by_interrupt() {
        let a = args(true);
        let r = smoke(a, SimFaults::default());
        assert_eq!(r.result, Ok(()));
        assert_eq!(r.exit, EXIT_PASS);
        assert_eq!(r.outcome.completed_by_interrupt, commands(&a));
        assert_eq!(r.outcome.completed_by_poll, 0);
        assert_eq!(r.outcome.interrupts_not_claimed, 0);
        assert_eq!(r.outcome.capacity, 8192);
        assert_eq!(r.outcome.block_size, 512);
        assert_disk_has_pattern(&r, &a);
        let w = r.world.borrow();
        assert!(w.msix_enabled);
        assert_ne!(w.queues[2].vector, VIRTIO_MSI_NO_VECTOR);
        assert_ne!(w.driver_features & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(w.driver_features & VIRTIO_RING_F_INDIRECT_DESC, 0);
        assert_eq!(w.event_buffers_seen, 8);
        let inquiry = r.lines.iter().find(|l| l["event"] == "inquiry").unwrap();
        assert_eq!(inquiry["vendor"], "FLAKYSIM");
        assert_eq!(inquiry["product"], "RAM DISK \"q\"");
        let result = r.lines.last().unwrap();
        assert_eq!(result["result"], "pass");
        assert_eq!(result["irq"], true);
        let lbas: Vec<u64> = result["lbas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let expect: Vec<u64> = (0..16).map(|i| smoke_lba(9, 8192, 16, i)).collect();
        assert_eq!(lbas, expect);
    }

    #[test]
    fn smoke_with_irq_off_completes_by_poll() {
        let a = args(false);
        let r = smoke(a, SimFaults::default());
        assert_eq!(r.result, Ok(()));
        assert_eq!(r.outcome.completed_by_poll, commands(&a));
        assert_eq!(r.outcome.completed_by_interrupt, 0);
        assert_eq!(r.outcome.interrupts, 0);
        assert!(r.outcome.timer_calls > 0);
        assert_disk_has_pattern(&r, &a);
        let w = r.world.borrow();
        assert!(!w.msix_enabled);
        assert_eq!(w.interrupts_raised, 0);
        assert!(w.queues.iter().all(|q| q.vector == VIRTIO_MSI_NO_VECTOR));
        assert_eq!(w.config_vector, VIRTIO_MSI_NO_VECTOR);
        assert_eq!(r.lines.last().unwrap()["completed_by_poll"], commands(&a));
    }

    #[test]
    fn lost_interrupts_are_found_by_the_hwtimer_watchdog() {
        let a = args(true);
        let r = smoke(
            a,
            SimFaults {
                drop_interrupts: true,
                ..SimFaults::default()
            },
        );
        assert_eq!(r.result, Ok(()));
        assert_eq!(r.outcome.completed_by_poll, commands(&a));
        assert_eq!(r.outcome.completed_by_interrupt, 0);
        assert_disk_has_pattern(&r, &a);
    }

    #[test]
    fn stale_completion_id_is_ignored_and_counted() {
        for irq in [true, false] {
            let a = args(irq);
            let r = smoke(
                a,
                SimFaults {
                    duplicate_completion: Some(5),
                    ..SimFaults::default()
                },
            );
            assert_eq!(r.result, Ok(()), "irq={irq}");
            assert_eq!(r.outcome.stale_completions, 1, "irq={irq}");
            assert_eq!(
                r.outcome.completed_by_interrupt + r.outcome.completed_by_poll,
                commands(&a)
            );
            assert_disk_has_pattern(&r, &a);
        }
    }

    #[test]
    fn unit_attention_is_retried_once() {
        let a = args(true);
        let r = smoke(
            a,
            SimFaults {
                unit_attention_once: true,
                ..SimFaults::default()
            },
        );
        assert_eq!(r.result, Ok(()));
        assert_eq!(r.outcome.unit_attention_retries, 1);
        assert_eq!(r.world.borrow().commands[..2], [0x12, 0x12]);
    }

    #[test]
    fn smoke_without_event_idx_and_deep_queue() {
        let world = World::new(4096, 1000);
        world.borrow_mut().offered_features = VIRTIO_F_VERSION_1;
        let mut platform = SimPlatform(world.clone());
        let mut dma = HostDma::default();
        let a = GuestArgs {
            blocks: 100,
            queue_depth: 64,
            ..GuestArgs::default()
        };
        let mut out = String::new();
        let mut outcome = Outcome::default();
        let r = run_scenario(
            &mut platform,
            SimTransport(world.clone()),
            &mut dma,
            &a,
            &mut out,
            &mut outcome,
        );
        assert!(r.is_ok(), "{:?}", r.map_err(|e| std::format!("{e}")));
        assert_eq!(world.borrow().driver_features & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(outcome.completed_by_interrupt, 202);
    }

    #[test]
    fn reset_bus_completes_held_requests_and_brings_the_device_back() {
        use crate::port::{DataBuffer, Port, Srb, SrbStatus};
        use crate::virtio_scsi::{VirtioScsi, VirtioScsiConfig};
        let world = World::new(64, 10_000);
        world.borrow_mut().faults.hold_requests = true;
        let mut p = SimPlatform(world.clone());
        let mut dma = HostDma::default();
        let m = VirtioScsi::new(
            SimTransport(world.clone()),
            &mut dma,
            VirtioScsiConfig::new(true),
        )
        .unwrap();
        let mut port = Port::new(m, 10_000);
        port.initialize(&mut p).unwrap();
        let tur = [0u8; 6];
        let a = port
            .submit(Srb::new(0, 0, 0, &tur, DataBuffer::NONE))
            .unwrap();
        let b = port
            .submit(Srb::new(0, 0, 0, &tur, DataBuffer::NONE))
            .unwrap();
        for _ in 0..5 {
            port.run_once(&mut p);
        }
        assert_eq!(port.active(), 2, "the device holds both");
        assert!(port.poll_completed().is_none());

        assert!(port.reset_bus(&mut p, 0));
        let done: Vec<_> = core::iter::from_fn(|| port.poll_completed()).collect();
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|s| s.srb_status == SrbStatus::BusReset));
        assert_eq!([done[0].tag, done[1].tag], [a, b]);
        assert_eq!(port.stats().resets_detected, 1);
        assert_eq!(port.miniport().outstanding(), 0);
        assert_ne!(world.borrow().status & VIRTIO_CONFIG_S_DRIVER_OK, 0);

        world.borrow_mut().faults.hold_requests = false;
        let c = port
            .submit(Srb::new(0, 0, 0, &tur, DataBuffer::NONE))
            .unwrap();
        // P2: held for the reset hold period first.
        let reset_at = p.now_us();
        port.run_until_idle(&mut p, reset_at + 10_000_000).unwrap();
        assert!(p.now_us() >= reset_at + u64::from(crate::port::DEFAULT_RESET_HOLD_US));
        let s = port.poll_completed().unwrap();
        assert_eq!((s.tag, s.srb_status), (c, SrbStatus::Success));
        assert_eq!(port.miniport().stats().stale_completions, 0);
        assert_eq!(
            port.checker().count(),
            0,
            "{:?}",
            port.checker().violations().collect::<Vec<_>>()
        );
    }

    #[test]
    fn i1_interrupt_without_new_used_entries_is_not_claimed() {
        use crate::platform::Events;
        use crate::port::{DataBuffer, Port, Srb, SrbStatus};
        use crate::virtio_scsi::{VirtioScsi, VirtioScsiConfig};
        let world = World::new(64, 10_000);
        let mut p = SimPlatform(world.clone());
        let mut dma = HostDma::default();
        let m = VirtioScsi::new(
            SimTransport(world.clone()),
            &mut dma,
            VirtioScsiConfig::new(true),
        )
        .unwrap();
        let mut port = Port::new(m, 10_000);
        port.initialize(&mut p).unwrap();
        // Every vector the adapter has (config 0, control 1, event 2, request 3), with
        // nothing new anywhere.
        port.dispatch(
            &mut p,
            Events {
                ticks: 0,
                vectors: 0b1111,
            },
        );
        assert_eq!(port.stats().interrupts, 4);
        assert_eq!(port.stats().interrupts_not_claimed, 4);

        world.borrow_mut().faults.drop_interrupts = true;
        port.submit(Srb::new(0, 0, 0, &[0u8; 6], DataBuffer::NONE))
            .unwrap();
        port.run_once(&mut p);
        // The request vector with a completion in the used ring: claimed and completed.
        port.dispatch(
            &mut p,
            Events {
                ticks: 0,
                vectors: 1 << 3,
            },
        );
        assert_eq!(port.stats().interrupts_not_claimed, 4);
        assert_eq!(
            port.poll_completed().unwrap().srb_status,
            SrbStatus::Success
        );
        assert_eq!(port.miniport().stats().completed_by_interrupt, 1);
        // The same vector again: nothing new, not ours.
        port.dispatch(
            &mut p,
            Events {
                ticks: 0,
                vectors: 1 << 3,
            },
        );
        assert_eq!(port.stats().interrupts_not_claimed, 5);
    }

    #[test]
    fn device_without_version_1_fails_the_scenario() {
        let world = World::new(64, 10_000);
        world.borrow_mut().offered_features = 0;
        let mut platform = SimPlatform(world.clone());
        let mut dma = HostDma::default();
        let mut out = String::new();
        let mut outcome = Outcome::default();
        let r = run_scenario(
            &mut platform,
            SimTransport(world.clone()),
            &mut dma,
            &args(true),
            &mut out,
            &mut outcome,
        );
        let msg = std::format!("{}", r.unwrap_err());
        assert!(msg.contains("VERSION_1"), "{msg}");
        assert_ne!(world.borrow().status & VIRTIO_CONFIG_S_FAILED, 0);
    }

    #[test]
    fn run_reports_bad_arguments_and_missing_device() {
        let world = World::new(64, 10_000);
        let mut platform = SimPlatform(world);
        let mut dma = HostDma::default();
        let pci = FakePci::default();
        let mut out = String::new();
        assert_eq!(
            run(&mut platform, &pci, &mut dma, "irq=sometimes", &mut out),
            EXIT_FAIL
        );
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["result"], "fail");
        assert_eq!(
            line["reason"],
            "bad command line: bad value \"sometimes\" for irq"
        );

        let mut out = String::new();
        assert_eq!(
            run(&mut platform, &pci, &mut dma, "workload=smoke", &mut out),
            EXIT_FAIL
        );
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["reason"], "no virtio-scsi PCI function on bus 0");
        assert_eq!(line["scenario"], "smoke");
        assert_eq!(line["lbas"], serde_json::json!([]));
    }
}
