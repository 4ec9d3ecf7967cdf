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
use crate::virtio::Transport;
use crate::wire::*;

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

/// How the simulated device answers a TMF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimTmf {
    /// At once, with this response, after aborting what it covers.
    Answer(u8),
    /// Aborts at once, answers FUNCTION COMPLETE after this many µs.
    Slow(u64),
    /// Does nothing and never answers (until a device reset).
    Hang,
}

impl Default for SimTmf {
    fn default() -> Self {
        SimTmf::Answer(VIRTIO_SCSI_S_FUNCTION_COMPLETE)
    }
}

/// Faults the simulated device can inject.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFaults {
    /// Complete requests but never raise their interrupt.
    pub drop_interrupts: bool,
    /// Withhold the interrupt of every n-th request completion that wanted one.
    pub drop_every: Option<u32>,
    /// After the n-th request completion (1-based), push its used element a second
    /// time: a stale completion.
    pub duplicate_completion: Option<u32>,
    /// The first command gets CHECK CONDITION, UNIT ATTENTION.
    pub unit_attention_once: bool,
    /// Leave request chains unprocessed (a hung device) until a TMF or reset ends them.
    pub hold_requests: bool,
    /// The n-th command (1-based) is never completed, until a TMF or reset ends it.
    pub lose: Option<u32>,
    /// Every command completes this many µs after it arrived.
    pub delay_us: u64,
    pub tmf: SimTmf,
    /// Every n-th command gets this SCSI status (BUSY, TASK SET FULL) instead.
    pub status_every: Option<(u32, u8)>,
    /// Reads overlapping these LBAs fail with MEDIUM ERROR.
    pub medium_error: Option<(u64, u64)>,
    /// After the n-th request completion, post a TRANSPORT_RESET event.
    pub transport_reset_after: Option<u32>,
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
    /// The used index at the last notification decision (virtio-queue's
    /// `signalled_used`): EVENT_IDX compares against it.
    signalled_used: Option<u16>,
}

/// A request the device holds: completed when due, or by a TMF or reset.
struct Held {
    head: u16,
    target: u8,
    lun: u8,
    writable: Chain,
    /// Response header + sense, then data-in.
    bytes: Vec<u8>,
    due_us: Option<u64>,
}

/// A TMF the device has not answered yet.
struct HeldTmf {
    head: u16,
    resp: u64,
    due_us: Option<u64>,
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
    pub config_generation: u8,
    msix: [(u64, u32, bool); 4],
    pub msix_enabled: bool,
    /// With MSI-X off, an interrupt also raises platform vector 0 (the INTx line).
    pub intx_routed: bool,
    pub isr: u8,
    pub disk: Vec<u8>,
    pub block_size: u32,
    pub completions: u32,
    pub interrupts_raised: u32,
    /// Request completions whose interrupt EVENT_IDX did not ask for / a fault withheld.
    pub suppressed_event_idx: u32,
    pub suppressed_fault: u32,
    /// Virtio request ids whose interrupt a fault withheld.
    pub suppressed_ids: Vec<u64>,
    pub notifications: u32,
    pub commands: Vec<u8>,
    pub tmfs: Vec<(u32, u8, u8)>,
    pub device_resets: u32,
    pub event_buffers_seen: u16,
    held: Vec<Held>,
    held_tmfs: Vec<HeldTmf>,
    /// Request id of each head the device holds, for `suppressed_ids`.
    ids: HashMap<u16, u64>,
}

/// A handle on the shared world.
pub type SharedWorld = Rc<RefCell<World>>;

const QUEUE: SimQueue = SimQueue {
    size: 128,
    vector: VIRTIO_MSI_NO_VECTOR,
    enabled: false,
    desc: 0,
    driver: 0,
    device: 0,
    last_avail: 0,
    used_idx: 0,
    signalled_used: None,
};

impl World {
    pub fn new(blocks: u64, tick_us: u32) -> SharedWorld {
        let mut config = [0u8; 36];
        config[CFG_NUM_QUEUES..CFG_NUM_QUEUES + 4].copy_from_slice(&1u32.to_le_bytes());
        config[CFG_CMD_PER_LUN..CFG_CMD_PER_LUN + 4].copy_from_slice(&128u32.to_le_bytes());
        config[CFG_SENSE_SIZE..CFG_SENSE_SIZE + 4].copy_from_slice(&96u32.to_le_bytes());
        config[CFG_CDB_SIZE..CFG_CDB_SIZE + 4].copy_from_slice(&32u32.to_le_bytes());
        config[CFG_MAX_TARGET..CFG_MAX_TARGET + 2].copy_from_slice(&0u16.to_le_bytes());
        config[CFG_MAX_LUN..CFG_MAX_LUN + 4].copy_from_slice(&0u32.to_le_bytes());
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
            queues: [QUEUE; 3],
            config_vector: VIRTIO_MSI_NO_VECTOR,
            config,
            config_generation: 0,
            msix: [(0, 0, true); 4],
            msix_enabled: false,
            intx_routed: false,
            isr: 0,
            disk: std::vec![0; (blocks * 512) as usize],
            block_size: 512,
            completions: 0,
            interrupts_raised: 0,
            suppressed_event_idx: 0,
            suppressed_fault: 0,
            suppressed_ids: Vec::new(),
            notifications: 0,
            commands: Vec::new(),
            tmfs: Vec::new(),
            device_resets: 0,
            event_buffers_seen: 0,
            held: Vec::new(),
            held_tmfs: Vec::new(),
            ids: HashMap::new(),
        }))
    }

    /// Status 0: everything the device held is dropped unanswered.
    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queues = [QUEUE; 3];
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
        self.held.clear();
        self.held_tmfs.clear();
        self.ids.clear();
        self.device_resets += 1;
    }

    fn event_idx(&self) -> bool {
        self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    fn live(&self, qi: usize) -> bool {
        self.queues[qi].enabled && self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    /// Raises the interrupt of queue `q` (MSI-X entry, or the ISR bit for INTx).
    fn interrupt(&mut self, q: usize) {
        let v = self.queues[q].vector;
        if self.msix_enabled && v != VIRTIO_MSI_NO_VECTOR {
            let (addr, data, masked) = self.msix[usize::from(v)];
            if !masked && addr == 0xfee0_0000 && data >= MSI_BASE_VECTOR {
                self.pending_vectors |= 1 << (data - MSI_BASE_VECTOR);
                self.interrupts_raised += 1;
            }
        } else {
            self.isr |= VIRTIO_PCI_ISR_QUEUE;
            if self.intx_routed {
                self.pending_vectors |= 1;
                self.interrupts_raised += 1;
            }
        }
    }

    /// An interrupt on queue `q` with nothing new in it.
    pub fn spurious(&mut self, q: usize) {
        self.interrupt(q);
    }

    /// A configuration change: the generation moves and the config interrupt fires.
    pub fn config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.msix_enabled && self.config_vector != VIRTIO_MSI_NO_VECTOR {
            let (_, data, _) = self.msix[usize::from(self.config_vector)];
            self.pending_vectors |= 1 << (data - MSI_BASE_VECTOR);
        } else {
            self.isr |= VIRTIO_PCI_ISR_CONFIG;
            if self.intx_routed {
                self.pending_vectors |= 1;
            }
        }
    }

    /// Puts a used element on queue `qi` and decides about its interrupt as
    /// virtio-queue's `needs_notification` does (EVENT_IDX against the last decision).
    /// `droppable`: a drop fault may withhold it.
    fn push_used(&mut self, qi: usize, head: u16, len: u32, droppable: bool) {
        let q = &mut self.queues[qi];
        let slot = u64::from(q.used_idx % q.size);
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        mem_write(q.device + 4 + 8 * slot, &e);
        q.used_idx = q.used_idx.wrapping_add(1);
        // Release: the element and the buffers written are visible before the index.
        atomic_u16(q.device + 2).store(q.used_idx, Ordering::Release);
        let new = q.used_idx;
        let old = q.signalled_used.replace(new);
        let wanted = if self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0 {
            let used_event = mem_u16(q.driver + 4 + 2 * u64::from(q.size));
            old.is_none_or(|old| {
                new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
            })
        } else {
            mem_u16(q.driver) & 1 == 0
        };
        if !droppable {
            if wanted {
                self.interrupt(qi);
            }
            return;
        }
        self.completions += 1;
        let n = self.completions;
        let id = self.ids.remove(&head).unwrap_or(0);
        if !wanted {
            self.suppressed_event_idx += 1;
        } else if self.faults.drop_interrupts
            || self.faults.drop_every.is_some_and(|e| n.is_multiple_of(e))
        {
            self.suppressed_fault += 1;
            self.suppressed_ids.push(id);
        } else {
            self.interrupt(qi);
        }
        if self.faults.duplicate_completion == Some(n) {
            let q = &mut self.queues[qi];
            let slot = u64::from(q.used_idx % q.size);
            mem_write(q.device + 4 + 8 * slot, &e);
            q.used_idx = q.used_idx.wrapping_add(1);
            atomic_u16(q.device + 2).store(q.used_idx, Ordering::Release);
        }
        if self.faults.transport_reset_after == Some(n) {
            self.post_event(VIRTIO_SCSI_T_TRANSPORT_RESET, 0);
        }
    }

    fn finish(&mut self, h: Held) {
        let written = scatter(&h.writable, &h.bytes);
        self.push_used(usize::from(REQUESTQ), h.head, written, true);
    }

    /// Completes the held requests and TMFs that are due.
    fn complete_due(&mut self) {
        let now = self.now_us;
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].due_us.is_some_and(|d| d <= now) {
                let h = self.held.remove(i);
                self.finish(h);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.held_tmfs.len() {
            if self.held_tmfs[i].due_us.is_some_and(|d| d <= now) {
                let t = self.held_tmfs.remove(i);
                mem_write(t.resp, &[VIRTIO_SCSI_S_FUNCTION_COMPLETE]);
                self.push_used(usize::from(CONTROLQ), t.head, 1, false);
            } else {
                i += 1;
            }
        }
    }

    /// The earliest moment something held is due.
    fn next_due(&self) -> Option<u64> {
        let a = self.held.iter().filter_map(|h| h.due_us);
        let b = self.held_tmfs.iter().filter_map(|t| t.due_us);
        a.chain(b).min()
    }

    /// Takes the next chain the driver made available on queue `qi`: its head and buffers.
    fn next_avail(&mut self, qi: usize) -> Option<(u16, Chain)> {
        let q = self.queues[qi];
        // Acquire: the chain is visible once we see the driver's avail.idx.
        let avail_idx = atomic_u16(q.driver + 2).load(Ordering::Acquire);
        if q.last_avail == avail_idx {
            return None;
        }
        let head = mem_u16(q.driver + 4 + 2 * u64::from(q.last_avail % q.size));
        self.queues[qi].last_avail = q.last_avail.wrapping_add(1);
        Some((head, walk_chain(&q, head)))
    }

    /// Posts an event in the next buffer of the event queue (lost if there is none).
    pub fn post_event(&mut self, event: u32, reason: u32) {
        let qi = usize::from(EVENTQ);
        if !self.live(qi) {
            return;
        }
        let Some((head, chain)) = self.next_avail(qi) else {
            return;
        };
        let mut e = [0u8; EVENT_SIZE];
        e[0..4].copy_from_slice(&event.to_le_bytes());
        e[4] = 1;
        e[6] = 0x40;
        e[12..16].copy_from_slice(&reason.to_le_bytes());
        let written = scatter(&chain, &e);
        self.push_used(qi, head, written, false);
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
type Chain = Vec<(u64, u32, bool)>;

fn walk_chain(q: &SimQueue, head: u16) -> Chain {
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
    if let Some((every, status)) = w.faults.status_every {
        if (w.commands.len() as u32).is_multiple_of(every) {
            return (status, Vec::new(), Vec::new());
        }
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
        0xa0 => {
            // REPORT LUNS: LUN 0 only.
            let mut d = std::vec![0u8; 16];
            d[3] = 8;
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
            let read = cdb[0] == 0x28 || cdb[0] == 0x88;
            if let Some((first, last)) = w.faults.medium_error {
                if read && lba <= last && lba + n > first {
                    // UNRECOVERED READ ERROR.
                    return (2, sense(0x3, 0x11, 0), Vec::new());
                }
            }
            if read {
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
        if !self.live(qi) {
            return;
        }
        while let Some((head, chain)) = self.next_avail(qi) {
            let split = chain.iter().position(|c| c.2).unwrap_or(chain.len());
            let (readable, writable) = chain.split_at(split);
            let out = gather(readable);
            let hdr = CMD_REQ_HEADER + VIRTIO_SCSI_CDB_SIZE as usize;
            let mut resp = std::vec![0u8; CMD_RESP_HEADER + VIRTIO_SCSI_SENSE_SIZE as usize];
            let (target, lun) = (
                out.get(1).copied().unwrap_or(0),
                out.get(3).copied().unwrap_or(0),
            );
            if out.len() >= 16 {
                self.ids
                    .insert(head, u64::from_le_bytes(out[8..16].try_into().unwrap()));
            }
            let bytes = if out.len() < hdr {
                resp[11] = VIRTIO_SCSI_S_FAILURE;
                resp
            } else if out[0] != 1 || out[1] != 0 || out[3] != 0 {
                resp[11] = VIRTIO_SCSI_S_BAD_TARGET;
                resp
            } else {
                let cdb = out[CMD_REQ_HEADER..hdr].to_vec();
                let (status, sense, data_in) = execute(self, &cdb, &out[hdr..]);
                let want_in: u32 = writable
                    .iter()
                    .map(|c| c.1)
                    .sum::<u32>()
                    .saturating_sub(resp.len() as u32);
                let want_out = (out.len() - hdr) as u32;
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
                let mut full = resp;
                full.extend_from_slice(&data_in);
                full
            };
            let n = self.commands.len() as u32;
            let held = Held {
                head,
                target,
                lun,
                writable: writable.to_vec(),
                bytes,
                due_us: None,
            };
            if self.faults.hold_requests || self.faults.lose == Some(n) {
                self.held.push(held);
            } else if self.faults.delay_us > 0 {
                let due = self.now_us + self.faults.delay_us;
                self.held.push(Held {
                    due_us: Some(due),
                    ..held
                });
            } else {
                self.finish(held);
            }
        }
        if self.event_idx() {
            // Ask for a notification at every new chain.
            let q = self.queues[qi];
            let avail_event = q.device + 4 + 8 * u64::from(q.size);
            mem_write(avail_event, &q.last_avail.to_le_bytes());
        }
    }

    /// Processes the TMFs on the control queue (LU and I_T nexus resets).
    fn process_control(&mut self) {
        let qi = usize::from(CONTROLQ);
        if !self.live(qi) {
            return;
        }
        while let Some((head, chain)) = self.next_avail(qi) {
            let split = chain.iter().position(|c| c.2).unwrap_or(chain.len());
            let (readable, writable) = chain.split_at(split);
            let req = gather(readable);
            assert_eq!(req.len(), TMF_REQ_SIZE, "TMF request size");
            assert_eq!(writable.len(), 1, "one response buffer");
            let subtype = u32::from_le_bytes(req[4..8].try_into().unwrap());
            let (target, lun) = (req[9], req[11]);
            self.tmfs.push((subtype, target, lun));
            let resp = writable[0].0;
            if self.faults.tmf == SimTmf::Hang {
                self.held_tmfs.push(HeldTmf {
                    head,
                    resp,
                    due_us: None,
                });
                continue;
            }
            if matches!(self.faults.tmf, SimTmf::Answer(r) if r != VIRTIO_SCSI_S_FUNCTION_COMPLETE)
            {
                // A failed TMF does nothing.
            } else {
                // Abort what the TMF covers first: the aborted commands are on the used
                // ring before the TMF's answer.
                let nexus = subtype == VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET;
                let mut i = 0;
                while i < self.held.len() {
                    let h = &self.held[i];
                    if h.target == target && (nexus || h.lun == lun) {
                        let mut h = self.held.remove(i);
                        h.bytes.truncate(CMD_RESP_HEADER);
                        h.bytes.fill(0);
                        h.bytes[11] = VIRTIO_SCSI_S_RESET;
                        self.finish(h);
                    } else {
                        i += 1;
                    }
                }
            }
            match self.faults.tmf {
                SimTmf::Answer(r) => {
                    mem_write(resp, &[r]);
                    self.push_used(qi, head, 1, false);
                }
                SimTmf::Slow(us) => {
                    let due = self.now_us + us;
                    self.held_tmfs.push(HeldTmf {
                        head,
                        resp,
                        due_us: Some(due),
                    });
                }
                SimTmf::Hang => {}
            }
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
        self.0.borrow().config_generation
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
            CONTROLQ => w.process_control(),
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
/// otherwise jumps to the next tick or to the next held request or TMF that is due,
/// whichever comes first.
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
            let next = w
                .next_due()
                .map_or(w.next_tick_us, |d| d.min(w.next_tick_us));
            w.now_us = w.now_us.max(next);
            w.complete_due();
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
    use crate::contract::{check_pattern, smoke_lba, GuestArgs, Workload, EXIT_FAIL, EXIT_PASS};
    use crate::platform::Events;
    use crate::port::{DataBuffer, Miniport, Port, PortConfig, Srb, SrbStatus};
    use crate::runner::{miniport_settings, run, run_scenario};
    use crate::virtio_scsi::{InterruptMode, ResetTmf, VirtioScsi, VirtioScsiSettings};
    use serde_json::{json, Value};
    use std::string::String;

    struct Run {
        world: SharedWorld,
        lines: Vec<Value>,
        exit: u8,
    }

    impl Run {
        fn result(&self) -> &Value {
            self.lines.last().unwrap()
        }
        fn n(&self, key: &str) -> u64 {
            self.result()[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{key} missing in {}", self.result()))
        }
        fn ids(&self, key: &str) -> Vec<u64> {
            self.result()[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        }
        fn event(&self, name: &str) -> &Value {
            self.lines
                .iter()
                .find(|l| l["event"] == name)
                .unwrap_or_else(|| panic!("no {name} line"))
        }
        /// Passed, with the checker's report clean and every block in the disk.
        fn assert_clean(&self, a: &GuestArgs) {
            let r = self.result();
            assert_eq!(r["result"], "pass", "{r}");
            assert_eq!(self.exit, EXIT_PASS);
            assert_eq!(r["violations"], 0, "{r}");
            assert_eq!(r["violation_list"], json!([]));
            assert!(self.n("stall_max_us") <= 1000, "{r}");
            if a.workload.writes() {
                let w = self.world.borrow();
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
        }
    }

    fn run_in(world: SharedWorld, args: GuestArgs) -> Run {
        let mut platform = SimPlatform(world.clone());
        let mut dma = HostDma::default();
        let mut out = String::new();
        let exit = run_scenario(
            &mut platform,
            SimTransport(world.clone()),
            &mut dma,
            &args,
            &mut out,
        );
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        Run { world, lines, exit }
    }

    fn simulate(args: GuestArgs, faults: SimFaults) -> Run {
        let world = World::new(8192, args.tick_us);
        world.borrow_mut().faults = faults;
        run_in(world, args)
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

    /// A device that completes requests but never raises their interrupt.
    fn dropping_interrupts() -> SimFaults {
        SimFaults {
            drop_interrupts: true,
            ..SimFaults::default()
        }
    }

    fn io(qd: u32) -> GuestArgs {
        GuestArgs {
            workload: Workload::Io,
            blocks: 24,
            queue_depth: qd,
            hold_ms: 100,
            ..args(true)
        }
    }

    /// Commands of a smoke run without retries: INQUIRY, READ CAPACITY, writes, reads.
    fn commands(a: &GuestArgs) -> u64 {
        2 + 2 * u64::from(a.blocks)
    }

    #[test]
    fn smoke_with_irq_on_completes_by_interrupt() {
        let a = args(true);
        let r = simulate(a, SimFaults::default());
        r.assert_clean(&a);
        assert_eq!(r.n("completed_by_interrupt"), commands(&a));
        assert_eq!(r.n("completed_by_poll"), 0);
        assert_eq!(r.n("interrupts_not_claimed"), 0);
        assert_eq!(r.n("capacity"), 8192);
        assert_eq!(r.n("block_size"), 512);
        assert_eq!(r.n("requests"), commands(&a));
        assert!(r.result()["first_request_us"].is_u64());
        let w = r.world.borrow();
        assert!(w.msix_enabled);
        assert_ne!(w.queues[2].vector, VIRTIO_MSI_NO_VECTOR);
        assert_ne!(w.driver_features & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(w.driver_features & VIRTIO_RING_F_INDIRECT_DESC, 0);
        assert_eq!(w.event_buffers_seen, 8);
        assert_eq!(w.suppressed_fault, 0);
        let inquiry = r.event("inquiry");
        assert_eq!(inquiry["vendor"], "FLAKYSIM");
        assert_eq!(inquiry["product"], "RAM DISK \"q\"");
        let result = r.result();
        assert_eq!(result["scenario"], "smoke");
        assert_eq!(result["irq"], true);
        assert_eq!(result["poll"], true);
        let expect: Vec<u64> = (0..16).map(|i| smoke_lba(9, 8192, 16, i)).collect();
        assert_eq!(r.ids("lbas"), expect);
        // The timeline line comes just before the result.
        let timeline = &r.lines[r.lines.len() - 2];
        assert_eq!(timeline["event"], "timeline");
        assert_eq!(timeline["resets"], json!([]));
        assert_eq!(timeline["truncated"], false);
    }

    #[test]
    fn smoke_with_irq_off_completes_by_poll() {
        let a = args(false);
        let r = simulate(a, SimFaults::default());
        r.assert_clean(&a);
        assert_eq!(r.n("completed_by_poll"), commands(&a));
        assert_eq!(r.n("completed_by_interrupt"), 0);
        assert_eq!(r.n("interrupts"), 0);
        assert!(r.n("timer_calls") > 0);
        let w = r.world.borrow();
        assert!(!w.msix_enabled);
        assert_eq!(w.interrupts_raised, 0);
        assert!(w.queues.iter().all(|q| q.vector == VIRTIO_MSI_NO_VECTOR));
        assert_eq!(w.config_vector, VIRTIO_MSI_NO_VECTOR);
        // Every HwTimer call is on the timeline, with what it found.
        let polls = r.event("timeline")["polls"].as_array().unwrap().clone();
        assert_eq!(polls.len() as u64, r.n("timer_calls"));
        let found: u64 = polls.iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert_eq!(found, commands(&a));
    }

    #[test]
    fn lost_interrupts_are_found_by_the_hwtimer_watchdog() {
        let a = args(true);
        let r = simulate(a, dropping_interrupts());
        r.assert_clean(&a);
        assert_eq!(r.n("completed_by_poll"), commands(&a));
        assert_eq!(r.n("completed_by_interrupt"), 0);
        // Every completion was withheld: by the fault, or by EVENT_IDX because the
        // driver had not taken the earlier ones yet.
        let w = r.world.borrow();
        assert_eq!(
            u64::from(w.suppressed_fault + w.suppressed_event_idx),
            commands(&a)
        );
        assert!(r.n("lat_poll_p50_us") >= u64::from(a.watchdog_us));
    }

    #[test]
    fn at_queue_depth_1_the_polled_completions_are_exactly_the_suppressed_ones() {
        let a = GuestArgs {
            queue_depth: 1,
            ..args(true)
        };
        let r = simulate(
            a,
            SimFaults {
                drop_every: Some(3),
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        let w = r.world.borrow();
        assert_eq!(w.suppressed_event_idx, 0);
        assert_eq!(r.n("completed_by_poll"), u64::from(w.suppressed_fault));
        assert_eq!(r.ids("polled_ids"), w.suppressed_ids);
        assert_eq!(
            r.n("completed_by_poll") + r.n("completed_by_interrupt"),
            commands(&a)
        );
        assert_eq!(w.suppressed_fault as u64, commands(&a) / 3);
    }

    /// The miniport's settings for the command line's defaults, MSI-X (`irq`) or
    /// polling only.
    fn settings(irq: bool) -> VirtioScsiSettings {
        miniport_settings(&GuestArgs {
            irq,
            ..GuestArgs::default()
        })
    }

    /// A port with the virtio-scsi miniport on a simulated device, initialized.
    fn port_on(
        world: &SharedWorld,
        dma: &mut HostDma,
        config: VirtioScsiSettings,
        hold_us: u32,
    ) -> (Port<VirtioScsi<SimTransport>>, SimPlatform) {
        let mut p = SimPlatform(world.clone());
        let m = VirtioScsi::new(SimTransport(world.clone()), dma, config).unwrap();
        let mut port = Port::with_config(
            m,
            PortConfig {
                reset_hold_us: hold_us,
                ..PortConfig::new(world.borrow().tick_us)
            },
        );
        port.initialize(&mut p).unwrap();
        (port, p)
    }

    fn tur() -> Srb {
        Srb::new(0, 0, 0, &[0u8; 6], DataBuffer::NONE)
    }

    #[test]
    fn a_completion_is_lost_only_after_a_whole_watchdog_period() {
        let world = World::new(64, 10_000);
        let mut dma = HostDma::default();
        let (mut port, mut p) = port_on(&world, &mut dma, settings(true), 0);
        world.borrow_mut().faults.drop_interrupts = true;
        port.submit(tur()).unwrap();
        port.run_once(&mut p);
        // The first HwTimer call after the completion only marks it.
        while port.stats().timer_calls == 0 {
            port.run_once(&mut p);
        }
        assert!(port.poll_completed().is_none());
        assert_eq!(port.miniport().stats().completed_by_poll, 0);
        // An interrupt now (late, but there) still counts as one.
        world.borrow_mut().spurious(usize::from(REQUESTQ));
        port.run_once(&mut p);
        assert_eq!(port.miniport().stats().completed_by_interrupt, 1);
        assert_eq!(
            port.poll_completed().unwrap().srb_status,
            SrbStatus::Success
        );

        // Without any interrupt, the second HwTimer call finds it.
        port.submit(tur()).unwrap();
        let calls = port.stats().timer_calls;
        while port.poll_completed().is_none() {
            port.run_once(&mut p);
        }
        assert_eq!(port.miniport().stats().completed_by_poll, 1);
        assert_eq!(port.stats().timer_calls, calls + 2);
        assert_eq!(port.checker().count(), 0);
    }

    #[test]
    fn stale_completion_id_is_ignored_and_counted() {
        for irq in [true, false] {
            let a = args(irq);
            let r = simulate(
                a,
                SimFaults {
                    duplicate_completion: Some(5),
                    ..SimFaults::default()
                },
            );
            r.assert_clean(&a);
            assert_eq!(r.n("stale_completions"), 1, "irq={irq}");
            assert_eq!(
                r.n("completed_by_interrupt") + r.n("completed_by_poll"),
                commands(&a)
            );
        }
    }

    #[test]
    fn unit_attention_is_retried() {
        let a = args(true);
        let r = simulate(
            a,
            SimFaults {
                unit_attention_once: true,
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert_eq!(r.n("unit_attention_retries"), 1);
        assert_eq!(r.n("requests"), commands(&a) + 1);
        assert_eq!(r.world.borrow().commands[..2], [0x12, 0x12]);
    }

    #[test]
    fn smoke_without_event_idx_and_deep_queue() {
        let world = World::new(4096, 1000);
        world.borrow_mut().offered_features = VIRTIO_F_VERSION_1;
        let a = GuestArgs {
            blocks: 100,
            queue_depth: 64,
            tick_us: 1000,
            ..GuestArgs::default()
        };
        let r = run_in(world, a);
        r.assert_clean(&a);
        assert_eq!(
            r.world.borrow().driver_features & VIRTIO_RING_F_EVENT_IDX,
            0
        );
        assert_eq!(r.n("completed_by_interrupt"), 202);
    }

    #[test]
    fn reset_bus_sends_lu_resets_and_the_port_retries_the_aborted_requests() {
        let world = World::new(64, 10_000);
        world.borrow_mut().faults.hold_requests = true;
        let mut dma = HostDma::default();
        let (mut port, mut p) = port_on(&world, &mut dma, settings(true), 50_000);
        let a = port.submit(tur()).unwrap();
        let b = port.submit(tur()).unwrap();
        for _ in 0..5 {
            port.run_once(&mut p);
        }
        assert_eq!(port.active(), 2, "the device holds both");
        assert!(port.poll_completed().is_none());

        let resets_before = world.borrow().device_resets;
        world.borrow_mut().faults.hold_requests = false;
        assert!(port.reset_bus(&mut p, 0));
        let reset_at = p.now_us();
        // The TMF's answer and the aborted commands come back at once, by interrupt.
        assert_eq!(
            world.borrow().tmfs,
            [(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0, 0)]
        );
        port.run_once(&mut p);
        let s = port.miniport().stats();
        assert_eq!((s.tmfs_sent, s.tmfs_completed, s.device_resets), (1, 1, 0));
        assert!(!port.miniport().resetting());
        // The aborted SRBs are queued again by the port, held until the hold ends.
        assert_eq!(port.stats().bus_reset_retries, 2);
        assert!(port.poll_completed().is_none());
        port.run_until_idle(&mut p, reset_at + 10_000_000).unwrap();
        assert!(p.now_us() >= reset_at + 50_000);
        let done: Vec<_> = core::iter::from_fn(|| port.poll_completed()).collect();
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|s| s.srb_status == SrbStatus::Success));
        let mut tags = [done[0].tag, done[1].tag];
        tags.sort();
        assert_eq!(tags, [a, b]);
        assert_eq!(
            world.borrow().device_resets,
            resets_before,
            "no device reset"
        );
        assert_eq!(port.miniport().trail().resets().len(), 1);
        assert_eq!(
            port.checker().count(),
            0,
            "{:?}",
            port.checker().violations().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_nexus_reset_covers_the_target() {
        let world = World::new(64, 10_000);
        world.borrow_mut().faults.hold_requests = true;
        let mut dma = HostDma::default();
        let config = VirtioScsiSettings {
            reset: ResetTmf::ItNexus,
            ..settings(true)
        };
        let (mut port, mut p) = port_on(&world, &mut dma, config, 0);
        port.submit(tur()).unwrap();
        port.run_once(&mut p);
        world.borrow_mut().faults.hold_requests = false;
        port.reset_bus(&mut p, 0);
        assert_eq!(
            world.borrow().tmfs,
            [(VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, 0, 0)]
        );
        port.run_until_idle(&mut p, 1_000_000).unwrap();
        assert_eq!(
            port.poll_completed().unwrap().srb_status,
            SrbStatus::Success
        );
        assert_eq!(port.checker().count(), 0);
    }

    /// The port, its platform and the device after a bus reset; the DMA memory the
    /// miniport's rings live in goes with them.
    struct AfterReset {
        port: Port<VirtioScsi<SimTransport>>,
        world: SharedWorld,
        _dma: HostDma,
    }

    /// Holds two requests, resets the bus with the device answering TMFs as `tmf`, and
    /// runs until both are done or 3 s passed.
    fn reset_with(tmf: SimTmf, poll: bool) -> AfterReset {
        let world = World::new(64, 10_000);
        world.borrow_mut().faults.hold_requests = true;
        world.borrow_mut().faults.tmf = tmf;
        let mut dma = HostDma::default();
        let config = VirtioScsiSettings {
            poll,
            tmf_timeout_us: 300_000,
            ..settings(true)
        };
        let (mut port, mut p) = port_on(&world, &mut dma, config, 1_000_000);
        port.submit(tur()).unwrap();
        port.submit(tur()).unwrap();
        port.run_once(&mut p);
        world.borrow_mut().faults.hold_requests = false;
        assert!(port.reset_bus(&mut p, 0));
        let start = p.now_us();
        let _ = port.run_until_idle(&mut p, start + 3_000_000);
        AfterReset {
            port,
            world,
            _dma: dma,
        }
    }

    #[test]
    fn hung_tmf_escalates_to_a_device_reset() {
        let AfterReset {
            mut port, world, ..
        } = reset_with(SimTmf::Hang, true);
        let s = port.miniport().stats();
        assert_eq!((s.tmfs_sent, s.tmfs_completed, s.tmf_timeouts), (1, 0, 1));
        assert_eq!(s.device_resets, 1);
        assert!(s.reset_max_us >= 300_000, "{}", s.reset_max_us);
        let done: Vec<_> = core::iter::from_fn(|| port.poll_completed()).collect();
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|s| s.srb_status == SrbStatus::Success));
        assert_eq!(port.stats().bus_reset_retries, 2);
        assert_ne!(world.borrow().status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert_eq!(
            port.checker().count(),
            0,
            "{:?}",
            port.checker().violations().collect::<Vec<_>>()
        );
        assert!(port.checker().times().max_stall_us <= 1000);
    }

    #[test]
    fn failed_tmf_escalates_to_a_device_reset() {
        let mut port = reset_with(SimTmf::Answer(11), true).port;
        let s = port.miniport().stats();
        assert_eq!((s.tmfs_failed, s.tmf_timeouts, s.device_resets), (1, 0, 1));
        assert_eq!(core::iter::from_fn(|| port.poll_completed()).count(), 2);
        assert_eq!(port.checker().count(), 0);
    }

    #[test]
    fn slow_tmf_is_polled_by_the_timer_without_stalling() {
        let mut port = reset_with(SimTmf::Slow(200_000), true).port;
        let s = port.miniport().stats();
        assert_eq!(
            (s.tmfs_completed, s.tmf_timeouts, s.device_resets),
            (1, 0, 0)
        );
        assert!(s.reset_max_us >= 200_000, "{}", s.reset_max_us);
        let (start, end) = port.miniport().trail().resets()[0];
        assert_eq!(end - start, s.reset_max_us);
        assert_eq!(core::iter::from_fn(|| port.poll_completed()).count(), 2);
        assert_eq!(port.checker().count(), 0);
        assert_eq!(port.checker().times().max_stall_us, 0);
    }

    #[test]
    fn without_the_timer_a_hung_tmf_is_never_given_up() {
        let port = reset_with(SimTmf::Hang, false).port;
        let s = port.miniport().stats();
        assert_eq!((s.tmf_timeouts, s.device_resets), (0, 0));
        // The hold ended with both requests still on the device: P2.
        assert!(port
            .checker()
            .violations()
            .any(|v| v.rule == crate::port::Rule::P2));
    }

    #[test]
    fn a_run_ends_only_when_its_bus_reset_has_ended() {
        // With the timer, the hung TMF is given up on and the run passes; without it,
        // the workload finishes its I/O but the reset never ends.
        for poll in [true, false] {
            let a = GuestArgs {
                workload: Workload::ResetUnderLoad,
                reset_after: 4,
                poll,
                tmf_timeout_ms: 300,
                deadline_ms: 3000,
                ..io(4)
            };
            let r = simulate(
                a,
                SimFaults {
                    tmf: SimTmf::Hang,
                    delay_us: 1000,
                    ..SimFaults::default()
                },
            );
            if poll {
                r.assert_clean(&a);
                assert_eq!((r.n("tmf_timeouts"), r.n("device_resets")), (1, 1));
            } else {
                assert_eq!(r.exit, EXIT_FAIL);
                assert_eq!(
                    r.result()["reason"],
                    "the bus reset had not ended at the deadline"
                );
                assert_eq!(r.n("device_resets"), 0);
            }
        }
    }

    #[test]
    fn lost_command_times_out_resets_the_bus_and_is_retried() {
        let a = GuestArgs {
            srb_timeout_ms: 300,
            ..io(4)
        };
        let r = simulate(
            a,
            SimFaults {
                lose: Some(10),
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert_eq!(r.n("srb_timeouts"), 1);
        assert_eq!(r.n("bus_resets"), 1);
        assert_eq!((r.n("tmfs_sent"), r.n("tmfs_completed")), (1, 1));
        assert!(r.n("bus_reset_retries") >= 1);
        assert_eq!(r.n("device_resets"), 0);
        assert_eq!(r.event("timeline")["resets"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn reset_under_load_verifies_every_block() {
        let a = GuestArgs {
            workload: Workload::ResetUnderLoad,
            reset_after: 8,
            ..io(8)
        };
        let r = simulate(
            a,
            SimFaults {
                delay_us: 2000,
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert_eq!(r.n("bus_resets"), 1);
        // The writes the LU reset aborted were sent again (and read back above).
        assert!(r.n("bus_reset_retries") >= 1);
        assert_eq!(r.n("tmfs_completed"), 1);
    }

    #[test]
    fn busy_and_task_set_full_are_retried_after_a_pause() {
        for (status, key) in [(0x08, "busy_retries"), (0x28, "queue_full_retries")] {
            let a = io(4);
            let r = simulate(
                a,
                SimFaults {
                    status_every: Some((5, status)),
                    ..SimFaults::default()
                },
            );
            r.assert_clean(&a);
            let retries = r.n(key);
            assert!(retries >= 5, "{key} {retries}");
            assert_eq!(r.n("requests"), 2 + 2 * 24 + retries, "{key}");
        }
    }

    #[test]
    fn medium_errors_are_counted_not_fatal() {
        let a = io(4);
        let capacity = 8192;
        let lbas: Vec<u64> = (0..a.blocks)
            .map(|i| smoke_lba(a.seed, capacity, a.blocks, i))
            .collect();
        let (first, last) = (lbas[3], lbas[6]);
        let r = simulate(
            a,
            SimFaults {
                medium_error: Some((first, last)),
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert_eq!(r.n("medium_errors"), 4);
        let mut listed = r.ids("medium_error_lbas");
        listed.sort();
        assert_eq!(listed, lbas[3..=6]);
        assert_eq!(r.event("verified")["unreadable"], 4);
    }

    #[test]
    fn transport_reset_event_leads_to_reset_detected_and_a_rescan() {
        let a = io(4);
        let r = simulate(
            a,
            SimFaults {
                transport_reset_after: Some(10),
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert_eq!(r.n("transport_resets"), 1);
        assert_eq!(r.n("events"), 1);
        assert_eq!(r.n("resets_detected"), 1);
        assert_eq!(r.n("rescans"), 1);
        assert!(
            r.world.borrow().commands.contains(&0xa0),
            "REPORT LUNS sent"
        );
    }

    #[test]
    fn delayed_completions_still_come_by_interrupt() {
        let a = io(4);
        let r = simulate(
            a,
            SimFaults {
                delay_us: 50_000,
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert_eq!(r.n("completed_by_poll"), 0);
        assert!(r.n("lat_interrupt_p50_us") >= 50_000);
    }

    #[test]
    fn without_the_timer_poll_lost_interrupts_are_never_found() {
        let a = GuestArgs {
            poll: false,
            srb_timeout_ms: 200,
            deadline_ms: 2000,
            retries: 1,
            ..io(4)
        };
        let r = simulate(a, dropping_interrupts());
        assert_eq!(r.exit, EXIT_FAIL);
        assert_eq!(r.result()["result"], "fail");
        assert!(r.n("srb_timeouts") >= 1, "{}", r.result());
        assert_eq!(r.n("completed_by_poll"), 0);
        assert_eq!(r.n("timer_calls"), 0);
    }

    #[test]
    fn a_run_that_gives_up_says_which_completions_no_interrupt_took() {
        // No polling and no SRB timeout within the run: the first command's completion
        // sits in the used ring until the deadline, and the report says so.
        let a = GuestArgs {
            poll: false,
            srb_timeout_ms: 60_000,
            deadline_ms: 500,
            ..io(4)
        };
        let r = simulate(a, dropping_interrupts());
        assert_eq!(r.exit, EXIT_FAIL);
        assert_eq!(
            r.result()["reason"],
            "INQUIRY: 1 requests outstanding at the deadline \
             (1 completed in the used ring, never taken: no interrupt came)"
        );
    }

    #[test]
    fn bench_reports_iops_and_latency_per_path() {
        // Queue depth 1: no later interrupt rescues a withheld one.
        let a = GuestArgs {
            workload: Workload::Bench,
            blocks: 200,
            queue_depth: 1,
            ..args(true)
        };
        let r = simulate(
            a,
            SimFaults {
                drop_every: Some(4),
                delay_us: 100,
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert!(r.n("iops") > 0);
        assert_eq!(r.ids("lbas"), Vec::<u64>::new(), "bench writes nothing");
        assert!(r.n("lat_interrupt_p50_us") >= 100);
        assert!(r.n("lat_poll_p50_us") >= r.n("lat_interrupt_p50_us"));
        assert!(r.n("lat_max_us") >= r.n("lat_poll_p99_us"));
        assert_eq!(r.event("bench")["reads"], 200);
    }

    #[test]
    fn spurious_interrupts_are_not_claimed() {
        let world = World::new(64, 10_000);
        let mut dma = HostDma::default();
        let (mut port, mut p) = port_on(&world, &mut dma, settings(true), 0);
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
        port.submit(tur()).unwrap();
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
        world.borrow_mut().spurious(usize::from(REQUESTQ));
        port.run_once(&mut p);
        assert_eq!(port.stats().interrupts_not_claimed, 5);
        assert_eq!(port.checker().count(), 0);
    }

    #[test]
    fn i1_intx_looks_at_each_isr_bit_on_its_own() {
        let world = World::new(64, 10_000);
        world.borrow_mut().intx_routed = true;
        let mut dma = HostDma::default();
        let config = VirtioScsiSettings {
            interrupts: InterruptMode::Intx,
            ..settings(true)
        };
        let (mut port, mut p) = port_on(&world, &mut dma, config, 0);
        assert!(!world.borrow().msix_enabled);
        let line = Events {
            ticks: 0,
            vectors: 1,
        };
        // No bit: another device's interrupt on the shared line.
        port.dispatch(&mut p, line);
        assert_eq!(port.stats().interrupts_not_claimed, 1);
        // The configuration bit alone: a config change, no queue work.
        world.borrow_mut().config_change();
        world.borrow_mut().pending_vectors = 0;
        world.borrow_mut().faults.drop_interrupts = true;
        port.submit(tur()).unwrap();
        port.run_once(&mut p);
        assert_eq!(
            port.miniport().outstanding(),
            1,
            "completion waits in the ring"
        );
        port.dispatch(&mut p, line);
        assert_eq!(port.stats().interrupts_not_claimed, 1);
        assert_eq!(port.miniport().stats().config_changes, 1);
        assert_eq!(
            port.miniport().outstanding(),
            1,
            "CONFIG does not drain queues"
        );
        // The queue bit alone: the queues are drained, no config change.
        world.borrow_mut().isr = VIRTIO_PCI_ISR_QUEUE;
        port.dispatch(&mut p, line);
        assert_eq!(port.miniport().outstanding(), 0);
        assert_eq!(port.miniport().stats().config_changes, 1);
        assert_eq!(port.miniport().stats().completed_by_interrupt, 1);
        // Both bits at once: both handled.
        world.borrow_mut().config_change();
        world.borrow_mut().isr |= VIRTIO_PCI_ISR_QUEUE;
        port.dispatch(&mut p, line);
        assert_eq!(port.miniport().stats().config_changes, 2);
        assert_eq!(port.stats().interrupts_not_claimed, 1);
        assert_eq!(port.checker().count(), 0);
    }

    #[test]
    fn device_without_version_1_fails_the_scenario() {
        let world = World::new(64, 10_000);
        world.borrow_mut().offered_features = 0;
        let r = run_in(world, args(true));
        assert_eq!(r.exit, EXIT_FAIL);
        let reason = r.result()["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("VERSION_1"), "{reason}");
        assert_ne!(r.world.borrow().status & VIRTIO_CONFIG_S_FAILED, 0);
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
        let line: Value = serde_json::from_str(out.trim()).unwrap();
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
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["reason"], "no virtio-scsi PCI function on bus 0");
        assert_eq!(line["scenario"], "smoke");
        assert_eq!(line["lbas"], json!([]));
    }
}
