//! The virtio access layer: the modern virtio-pci register interface behind a
//! [`Transport`] trait (so host tests can put a simulated device behind it), its MMIO
//! implementation [`PciTransport`], and the driver side of a split virtqueue.

use core::ptr::{self, NonNull};
use core::sync::atomic::{fence, AtomicU16, Ordering};

use crate::pci::VirtioScsiPci;
use crate::platform::{Dma, PciConfig};
use crate::wire::common_cfg as common;
use crate::wire::*;

/// The modern virtio-pci register interface (struct virtio_pci_common_cfg, notify, ISR,
/// device config, and the function's MSI-X table).
pub trait Transport {
    /// Selects the 32-bit feature word `select` and reads the device's features.
    fn device_features(&mut self, select: u32) -> u32;
    /// Selects the 32-bit feature word `select` and writes the driver's features.
    fn set_driver_features(&mut self, select: u32, value: u32);
    fn status(&self) -> u8;
    /// Writing 0 resets the device.
    fn set_status(&mut self, status: u8);
    fn config_generation(&self) -> u8;
    fn num_queues(&self) -> u16;
    fn config_msix_vector(&self) -> u16;
    fn set_config_msix_vector(&mut self, vector: u16);
    fn queue_select(&mut self, queue: u16);
    /// Size of the selected queue (the device's maximum until the driver writes it).
    fn queue_size(&self) -> u16;
    fn set_queue_size(&mut self, size: u16);
    fn queue_msix_vector(&self) -> u16;
    fn set_queue_msix_vector(&mut self, vector: u16);
    fn queue_enabled(&self) -> bool;
    fn set_queue_enable(&mut self);
    fn queue_notify_off(&self) -> u16;
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64);
    /// Driver notification ("kick") for `queue`.
    fn notify(&mut self, queue: u16);
    /// Reads (and so clears) the ISR status.
    fn read_isr(&mut self) -> u8;
    fn read_device_config(&self, offset: usize, buf: &mut [u8]);
    fn write_device_config(&mut self, offset: usize, data: &[u8]);
    /// Entries of the MSI-X table; 0 when the function has no MSI-X.
    fn msix_table_size(&self) -> u16;
    /// Programs and unmasks one MSI-X table entry.
    fn set_msix_entry(&mut self, entry: u16, address: u64, data: u32);
    /// MSI-X Enable in the capability's message control.
    fn set_msix_enabled(&mut self, enabled: bool);

    /// All 64 feature bits the device offers.
    fn device_features64(&mut self) -> u64 {
        u64::from(self.device_features(0)) | u64::from(self.device_features(1)) << 32
    }

    fn set_driver_features64(&mut self, features: u64) {
        self.set_driver_features(0, features as u32);
        self.set_driver_features(1, (features >> 32) as u32);
    }

    fn read_config_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read_device_config(offset, &mut b);
        u32::from_le_bytes(b)
    }
}

/// Queues whose notify offset [`PciTransport`] caches.
const NOTIFY_CACHE: usize = 16;

/// [`Transport`] over the function's BARs with volatile MMIO.
pub struct PciTransport<'a> {
    /// Shared by the CPUs the transport's owner runs on.
    cfg: &'a (dyn PciConfig + Sync),
    dev: VirtioScsiPci,
    common: usize,
    notify: usize,
    isr: usize,
    device: Option<(usize, usize)>,
    selected: u16,
    /// queue_notify_off of each queue, read when the queue is enabled.
    notify_off: [Option<u16>; NOTIFY_CACHE],
}

impl<'a> PciTransport<'a> {
    /// # Safety
    /// The BARs of `dev` must be assigned, decoded, mapped at their physical addresses
    /// (identity-mapped, uncached) and used by nothing else for the life of the transport.
    pub unsafe fn new(cfg: &'a (dyn PciConfig + Sync), dev: &VirtioScsiPci) -> Self {
        PciTransport {
            cfg,
            dev: *dev,
            common: dev.common.address as usize,
            notify: dev.notify.address as usize,
            isr: dev.isr.address as usize,
            device: dev.device.map(|d| (d.address as usize, d.length as usize)),
            selected: 0,
            notify_off: [None; NOTIFY_CACHE],
        }
    }

    fn r8(&self, off: usize) -> u8 {
        // SAFETY: `new`'s contract: the common config structure is mapped MMIO owned
        // by this transport, and `off` is inside struct virtio_pci_common_cfg.
        unsafe { ptr::read_volatile((self.common + off) as *const u8) }
    }
    fn r16(&self, off: usize) -> u16 {
        // SAFETY: as in `r8`; the offsets are naturally aligned.
        unsafe { ptr::read_volatile((self.common + off) as *const u16) }
    }
    fn r32(&self, off: usize) -> u32 {
        // SAFETY: as in `r8`; the offsets are naturally aligned.
        unsafe { ptr::read_volatile((self.common + off) as *const u32) }
    }
    fn w8(&mut self, off: usize, v: u8) {
        // SAFETY: as in `r8`.
        unsafe { ptr::write_volatile((self.common + off) as *mut u8, v) }
    }
    fn w16(&mut self, off: usize, v: u16) {
        // SAFETY: as in `r8`; the offsets are naturally aligned.
        unsafe { ptr::write_volatile((self.common + off) as *mut u16, v) }
    }
    fn w32(&mut self, off: usize, v: u32) {
        // SAFETY: as in `r8`; the offsets are naturally aligned.
        unsafe { ptr::write_volatile((self.common + off) as *mut u32, v) }
    }
    fn w64(&mut self, off: usize, v: u64) {
        // Two 32-bit writes, low first: the spec allows it and not every device takes
        // 64-bit accesses.
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}

impl Transport for PciTransport<'_> {
    fn device_features(&mut self, select: u32) -> u32 {
        self.w32(common::DEVICE_FEATURE_SELECT, select);
        self.r32(common::DEVICE_FEATURE)
    }
    fn set_driver_features(&mut self, select: u32, value: u32) {
        self.w32(common::DRIVER_FEATURE_SELECT, select);
        self.w32(common::DRIVER_FEATURE, value);
    }
    fn status(&self) -> u8 {
        self.r8(common::DEVICE_STATUS)
    }
    fn set_status(&mut self, status: u8) {
        self.w8(common::DEVICE_STATUS, status)
    }
    fn config_generation(&self) -> u8 {
        self.r8(common::CONFIG_GENERATION)
    }
    fn num_queues(&self) -> u16 {
        self.r16(common::NUM_QUEUES)
    }
    fn config_msix_vector(&self) -> u16 {
        self.r16(common::CONFIG_MSIX_VECTOR)
    }
    fn set_config_msix_vector(&mut self, vector: u16) {
        self.w16(common::CONFIG_MSIX_VECTOR, vector)
    }
    fn queue_select(&mut self, queue: u16) {
        self.selected = queue;
        self.w16(common::QUEUE_SELECT, queue)
    }
    fn queue_size(&self) -> u16 {
        self.r16(common::QUEUE_SIZE)
    }
    fn set_queue_size(&mut self, size: u16) {
        self.w16(common::QUEUE_SIZE, size)
    }
    fn queue_msix_vector(&self) -> u16 {
        self.r16(common::QUEUE_MSIX_VECTOR)
    }
    fn set_queue_msix_vector(&mut self, vector: u16) {
        self.w16(common::QUEUE_MSIX_VECTOR, vector)
    }
    fn queue_enabled(&self) -> bool {
        self.r16(common::QUEUE_ENABLE) != 0
    }
    fn set_queue_enable(&mut self) {
        let off = self.r16(common::QUEUE_NOTIFY_OFF);
        if let Some(slot) = self.notify_off.get_mut(usize::from(self.selected)) {
            *slot = Some(off);
        }
        self.w16(common::QUEUE_ENABLE, 1)
    }
    fn queue_notify_off(&self) -> u16 {
        self.r16(common::QUEUE_NOTIFY_OFF)
    }
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        self.w64(common::QUEUE_DESC, desc);
        self.w64(common::QUEUE_DRIVER, driver);
        self.w64(common::QUEUE_DEVICE, device);
    }
    fn notify(&mut self, queue: u16) {
        let off = match self.notify_off.get(usize::from(queue)).copied().flatten() {
            Some(off) => off,
            None => {
                let saved = self.selected;
                self.queue_select(queue);
                let off = self.queue_notify_off();
                self.queue_select(saved);
                off
            }
        };
        let addr = self.notify + usize::from(off) * self.dev.notify_off_multiplier as usize;
        // SAFETY: `new`'s contract covers the notify structure; the address is the
        // queue's notify offset scaled as the notify capability says.
        unsafe { ptr::write_volatile(addr as *mut u16, queue) }
    }
    fn read_isr(&mut self) -> u8 {
        // SAFETY: `new`'s contract covers the ISR structure (one byte, read to clear).
        unsafe { ptr::read_volatile(self.isr as *const u8) }
    }
    fn read_device_config(&self, offset: usize, buf: &mut [u8]) {
        let Some((base, len)) = self.device else {
            buf.fill(0);
            return;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            *b = if offset + i < len {
                // SAFETY: `new`'s contract covers the device config structure, and
                // the byte is inside its length.
                unsafe { ptr::read_volatile((base + offset + i) as *const u8) }
            } else {
                0
            };
        }
    }
    fn write_device_config(&mut self, offset: usize, data: &[u8]) {
        let Some((base, len)) = self.device else {
            return;
        };
        if offset.is_multiple_of(4) && data.len() == 4 && offset + 4 <= len {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            // SAFETY: as in read_device_config; a whole aligned dword inside the
            // structure (virtio-scsi config fields are 32-bit).
            unsafe { ptr::write_volatile((base + offset) as *mut u32, v) }
            return;
        }
        for (i, b) in data.iter().enumerate() {
            if offset + i < len {
                // SAFETY: as in read_device_config.
                unsafe { ptr::write_volatile((base + offset + i) as *mut u8, *b) }
            }
        }
    }
    fn msix_table_size(&self) -> u16 {
        self.dev.msix.map_or(0, |m| m.table_size)
    }
    fn set_msix_entry(&mut self, entry: u16, address: u64, data: u32) {
        let Some(m) = self.dev.msix else { return };
        if entry >= m.table_size {
            return;
        }
        let e = m.table_address as usize + usize::from(entry) * 16;
        // SAFETY: the MSI-X table is in a BAR covered by `new`'s contract; the entry
        // index is below the table size. Layout: addr lo, addr hi, data, vector control
        // (bit 0 = masked); unmask last.
        unsafe {
            ptr::write_volatile(e as *mut u32, address as u32);
            ptr::write_volatile((e + 4) as *mut u32, (address >> 32) as u32);
            ptr::write_volatile((e + 8) as *mut u32, data);
            ptr::write_volatile((e + 12) as *mut u32, 0);
        }
    }
    fn set_msix_enabled(&mut self, enabled: bool) {
        if let Some(m) = self.dev.msix {
            m.set_enabled(&self.dev.func, self.cfg, enabled);
        }
    }
}

/// Largest queue this driver uses; larger device queues are shrunk to it (modern virtio
/// lets the driver write a smaller power of two into queue_size).
pub const MAX_QUEUE_SIZE: usize = 128;

/// struct virtq_desc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// One buffer of a chain: device address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
}

/// Why a chain could not be added, or a used element was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Not enough free descriptors.
    Full,
    /// A chain with no buffers.
    EmptyChain,
    /// The device returned a head that is not an outstanding chain: out of range, or
    /// already returned. The element is skipped.
    UnknownHead(u32),
}

/// Pages needed for a split queue of `size` entries, and its ring offsets.
const fn layout(size: usize) -> (usize, usize, usize) {
    let avail = 16 * size;
    let used = (avail + 6 + 2 * size + 3) & !3;
    let end = used + 6 + 8 * size;
    (avail, used, end.div_ceil(4096))
}

/// Driver side of a split virtqueue in DMA memory.
pub struct SplitQueue {
    index: u16,
    size: u16,
    /// Entries the allocation was laid out for; `size` may be shrunk below it.
    capacity: u16,
    desc: NonNull<Descriptor>,
    avail: NonNull<u8>,
    used: NonNull<u8>,
    desc_addr: u64,
    avail_addr: u64,
    used_addr: u64,
    /// Private copy of the descriptor table: the driver never reads back what the
    /// device could have changed.
    shadow: [Descriptor; MAX_QUEUE_SIZE],
    /// Chain length of each outstanding head; 0 = not outstanding.
    chain_len: [u8; MAX_QUEUE_SIZE],
    free_head: u16,
    num_free: u16,
    avail_idx: u16,
    /// avail_idx at the last notification decision.
    kicked_idx: u16,
    last_used_idx: u16,
    event_idx: bool,
    /// The driver asked the device not to interrupt ([`SplitQueue::suppress_interrupts`]).
    suppressed: bool,
}

impl SplitQueue {
    /// Allocates a queue of `size` entries (a power of two, at most [`MAX_QUEUE_SIZE`])
    /// from `dma`. `index` is the virtqueue number on the device.
    pub fn new(dma: &mut dyn Dma, index: u16, size: u16) -> Option<Self> {
        let size = size.min(MAX_QUEUE_SIZE as u16);
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        let (avail_off, used_off, pages) = layout(usize::from(size));
        let (addr, ptr) = dma.alloc_pages(pages)?;
        let mut q = SplitQueue {
            index,
            size,
            capacity: size,
            desc: ptr.cast(),
            // SAFETY: both offsets are inside the `pages` pages just allocated.
            avail: unsafe { ptr.add(avail_off) },
            // SAFETY: as above.
            used: unsafe { ptr.add(used_off) },
            desc_addr: addr,
            avail_addr: addr + avail_off as u64,
            used_addr: addr + used_off as u64,
            shadow: [Descriptor::default(); MAX_QUEUE_SIZE],
            chain_len: [0; MAX_QUEUE_SIZE],
            free_head: 0,
            num_free: 0,
            avail_idx: 0,
            kicked_idx: 0,
            last_used_idx: 0,
            event_idx: false,
            suppressed: false,
        };
        q.reset();
        Some(q)
    }

    /// Lays the rings out for `size` entries (a power of two, at most the size the
    /// queue was allocated with; larger values are ignored) and resets the queue.
    pub fn shrink(&mut self, size: u16) {
        if size != 0 && size.is_power_of_two() && size <= self.capacity {
            let (avail_off, used_off, _) = layout(usize::from(size));
            let base = self.desc.cast::<u8>();
            self.size = size;
            // SAFETY: the offsets for a smaller size are inside the allocation that
            // was laid out for `capacity` entries.
            unsafe {
                self.avail = base.add(avail_off);
                self.used = base.add(used_off);
            }
            self.avail_addr = self.desc_addr + avail_off as u64;
            self.used_addr = self.desc_addr + used_off as u64;
        }
        self.reset();
    }

    /// Forgets every outstanding chain and zeroes the rings, as after a device reset.
    pub fn reset(&mut self) {
        let (_, _, pages) = layout(usize::from(self.capacity));
        // SAFETY: the rings are `pages` pages of DMA memory owned by this queue; the
        // device is reset (or not yet live), so it does not access them concurrently.
        unsafe { ptr::write_bytes(self.desc.as_ptr().cast::<u8>(), 0, pages * 4096) };
        for i in 0..self.size {
            self.shadow[usize::from(i)] = Descriptor {
                next: (i + 1) % self.size,
                ..Descriptor::default()
            };
        }
        self.chain_len = [0; MAX_QUEUE_SIZE];
        self.free_head = 0;
        self.num_free = self.size;
        self.avail_idx = 0;
        self.kicked_idx = 0;
        self.last_used_idx = 0;
        // The zeroed rings ask for every interrupt again.
        self.suppressed = false;
    }

    pub fn index(&self) -> u16 {
        self.index
    }
    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    /// Chains the device holds.
    pub fn outstanding(&self) -> usize {
        self.chain_len.iter().filter(|&&n| n != 0).count()
    }
    /// Device addresses of the descriptor table, the driver (avail) and device (used) areas.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc_addr, self.avail_addr, self.used_addr)
    }
    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated (used_event / avail_event).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    fn avail_idx_ref(&self) -> &AtomicU16 {
        // SAFETY: avail.idx is at offset 2 of the driver area, 2-aligned, inside the
        // allocation; the device only reads it, and all our accesses are atomic.
        unsafe { &*self.avail.as_ptr().add(2).cast::<AtomicU16>() }
    }
    fn used_idx_ref(&self) -> &AtomicU16 {
        // SAFETY: used.idx is at offset 2 of the device area, 2-aligned, inside the
        // allocation; the device writes it, and all our accesses are atomic.
        unsafe { &*self.used.as_ptr().add(2).cast::<AtomicU16>() }
    }
    fn used_event_ptr(&self) -> *mut u16 {
        // SAFETY: used_event follows avail.ring[size]: offset 4 + 2 * size, inside the
        // allocation (see `layout`).
        unsafe {
            self.avail
                .as_ptr()
                .add(4 + 2 * usize::from(self.size))
                .cast()
        }
    }
    fn avail_event_ptr(&self) -> *const u16 {
        // SAFETY: avail_event follows used.ring[size]: offset 4 + 8 * size, inside the
        // allocation (see `layout`).
        unsafe {
            self.used
                .as_ptr()
                .add(4 + 8 * usize::from(self.size))
                .cast()
        }
    }

    /// Adds a chain: `readable` buffers (device reads) then `writable` ones (device
    /// writes), and makes it available. Returns the head descriptor's index. The device
    /// is not notified: call [`SplitQueue::needs_notify`] after a batch.
    pub fn add(&mut self, readable: &[Buffer], writable: &[Buffer]) -> Result<u16, QueueError> {
        let n = readable.len() + writable.len();
        if n == 0 {
            return Err(QueueError::EmptyChain);
        }
        if n > usize::from(self.num_free) || n > usize::from(u8::MAX) {
            return Err(QueueError::Full);
        }
        let head = self.free_head;
        let mut at = head;
        let mut last = head;
        for (i, (buf, write)) in readable
            .iter()
            .map(|b| (b, false))
            .chain(writable.iter().map(|b| (b, true)))
            .enumerate()
        {
            let d = &mut self.shadow[usize::from(at)];
            d.addr = buf.addr;
            d.len = buf.len;
            d.flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < n {
                d.flags |= VIRTQ_DESC_F_NEXT;
            }
            let desc = *d;
            // SAFETY: `at` < size, so the entry is inside the descriptor table; the
            // device does not read a descriptor until its head is made available below.
            unsafe { ptr::write_volatile(self.desc.as_ptr().add(usize::from(at)), desc) };
            last = at;
            at = desc.next;
        }
        self.free_head = self.shadow[usize::from(last)].next;
        self.num_free -= n as u16;
        self.chain_len[usize::from(head)] = n as u8;

        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: avail.ring[slot] at offset 4 + 2 * slot, slot < size.
        unsafe { ptr::write_volatile(self.avail.as_ptr().add(4 + 2 * slot).cast::<u16>(), head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry written above are visible to the
        // device before it can see the new avail.idx.
        self.avail_idx_ref()
            .store(self.avail_idx, Ordering::Release);
        Ok(head)
    }

    /// Whether the device wants a notification for the chains added since the last call
    /// (VIRTQ_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX).
    pub fn needs_notify(&mut self) -> bool {
        let old = self.kicked_idx;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        self.kicked_idx = new;
        // SeqCst: our avail.idx store must be ordered before we read the device's
        // suppression state, or both sides could decide no one needs to act.
        fence(Ordering::SeqCst);
        if self.event_idx {
            // SAFETY: avail_event is inside the device area (see avail_event_ptr).
            let event = unsafe { ptr::read_volatile(self.avail_event_ptr()) };
            // vring_need_event: notify when `event` lies in (old, new].
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            // SAFETY: used.flags is the first field of the device area.
            let flags = unsafe { ptr::read_volatile(self.used.as_ptr().cast::<u16>()) };
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// Asks the device for no interrupt on new used elements: VIRTQ_AVAIL_F_NO_INTERRUPT,
    /// or with EVENT_IDX, used_event left where it is (popping stops moving it), so the
    /// device has passed it. A hint: an interrupt already on its way may still come.
    pub fn suppress_interrupts(&mut self) {
        self.suppressed = true;
        if !self.event_idx {
            // SAFETY: avail.flags is the first field of the driver area; the device only
            // reads it.
            unsafe {
                ptr::write_volatile(
                    self.avail.as_ptr().cast::<u16>(),
                    VIRTQ_AVAIL_F_NO_INTERRUPT,
                )
            };
        }
    }

    /// Asks for interrupts again, from the next used element on. An element the device
    /// returned while they were suppressed raised none and raises none later: the caller
    /// must look at the ring again afterwards ([`SplitQueue::can_pop`]).
    pub fn unsuppress_interrupts(&mut self) {
        self.suppressed = false;
        if self.event_idx {
            // SAFETY: used_event is inside the driver area (see used_event_ptr).
            unsafe { ptr::write_volatile(self.used_event_ptr(), self.last_used_idx) };
        } else {
            // SAFETY: as in suppress_interrupts.
            unsafe { ptr::write_volatile(self.avail.as_ptr().cast::<u16>(), 0) };
        }
        // SeqCst: the store must be visible before the caller re-reads used.idx, or a
        // completion landing in between would be seen by neither side.
        fence(Ordering::SeqCst);
    }

    /// Whether the device was asked for no interrupts.
    pub fn interrupts_suppressed(&self) -> bool {
        self.suppressed
    }

    /// Used elements the device has returned that are not popped yet.
    pub fn used_pending(&self) -> u16 {
        // Acquire: as in can_pop.
        self.used_idx_ref()
            .load(Ordering::Acquire)
            .wrapping_sub(self.last_used_idx)
    }

    /// The device's used index now: a mark that [`SplitQueue::unpopped_at`] measures
    /// against later.
    pub fn used_mark(&self) -> u16 {
        self.used_idx_ref().load(Ordering::Acquire)
    }

    /// How many of the elements the device had returned by `mark` (a [`used_mark`])
    /// are still not popped: 0 when popping has passed the mark.
    ///
    /// [`used_mark`]: SplitQueue::used_mark
    pub fn unpopped_at(&self, mark: u16) -> u16 {
        let n = mark.wrapping_sub(self.last_used_idx);
        // More than a ring's worth means the mark lies behind what was popped.
        if n > self.size {
            0
        } else {
            n
        }
    }

    /// Where popping stands: the used index the next [`SplitQueue::pop_used`] reads.
    pub fn next_used(&self) -> u16 {
        self.last_used_idx
    }

    /// The head named by the `n`-th used element not yet popped (0: the next one), or
    /// `None` when the device has not returned that many. Nothing is consumed, but with
    /// EVENT_IDX the device is asked to interrupt after it, as if it had been: only the
    /// planted bug `double-completion` reads the ring this way.
    pub fn read_ahead(&mut self, n: u16) -> Option<u32> {
        if n >= self.used_pending() {
            return None;
        }
        let at = self.last_used_idx.wrapping_add(n);
        let slot = usize::from(at % self.size);
        // SAFETY: used.ring[slot] is at offset 4 + 8 * slot, slot < size; the Acquire
        // in used_pending makes the device's write visible.
        let id = unsafe { ptr::read_volatile(self.used.as_ptr().add(4 + 8 * slot).cast::<u32>()) };
        if self.event_idx {
            // SAFETY: used_event is inside the driver area (see used_event_ptr).
            unsafe { ptr::write_volatile(self.used_event_ptr(), at.wrapping_add(1)) };
            fence(Ordering::SeqCst);
        }
        Some(id)
    }

    /// Whether the device has returned chains not yet popped.
    pub fn can_pop(&self) -> bool {
        // Acquire: pairs with the device's Release store of used.idx, so the used
        // elements and the buffers it wrote are visible once we see the index.
        self.used_idx_ref().load(Ordering::Acquire) != self.last_used_idx
    }

    /// Pops the next used element: `Ok((head, len))`, where `len` is the number of
    /// bytes the device wrote. `Err(UnknownHead)` for an element that names no
    /// outstanding chain (the element is consumed, nothing is freed). `None` when the
    /// used ring has nothing new.
    pub fn pop_used(&mut self) -> Option<Result<(u16, u32), QueueError>> {
        if !self.can_pop() {
            return None;
        }
        let slot = usize::from(self.last_used_idx % self.size);
        // SAFETY: used.ring[slot] is at offset 4 + 8 * slot, slot < size; the Acquire
        // in can_pop makes the device's write visible.
        let (id, len) = unsafe {
            let e = self.used.as_ptr().add(4 + 8 * slot).cast::<u32>();
            (ptr::read_volatile(e), ptr::read_volatile(e.add(1)))
        };
        self.last_used_idx = self.last_used_idx.wrapping_add(1);
        if self.event_idx && !self.suppressed {
            // Ask for an interrupt at the next used element.
            // SAFETY: used_event is inside the driver area (see used_event_ptr).
            unsafe { ptr::write_volatile(self.used_event_ptr(), self.last_used_idx) };
            // SeqCst: the used_event store must be visible before the caller re-checks
            // can_pop, or a completion landing in between would raise no interrupt.
            fence(Ordering::SeqCst);
        }
        let n = match self.chain_len.get(id as usize) {
            Some(&n) if n != 0 => n,
            _ => return Some(Err(QueueError::UnknownHead(id))),
        };
        let head = id as u16;
        self.chain_len[usize::from(head)] = 0;
        let mut last = head;
        for _ in 1..n {
            last = self.shadow[usize::from(last)].next;
        }
        // Put the whole chain in front of the free list.
        self.shadow[usize::from(last)].next = self.free_head;
        self.free_head = head;
        self.num_free += u16::from(n);
        Some(Ok((head, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::HostDma;

    fn used_push(q: &SplitQueue, id: u32, len: u32) {
        let idx = q.used_idx_ref().load(Ordering::Relaxed);
        let slot = usize::from(idx % q.size);
        // SAFETY: test plays the device; the slot is inside the used ring.
        unsafe {
            let e = q.used.as_ptr().add(4 + 8 * slot).cast::<u32>();
            e.write_volatile(id);
            e.add(1).write_volatile(len);
        }
        q.used_idx_ref()
            .store(idx.wrapping_add(1), Ordering::Release);
    }

    #[test]
    fn chains_are_laid_out_and_freed() {
        let mut dma = HostDma::default();
        let mut q = SplitQueue::new(&mut dma, 2, 8).unwrap();
        let r = [Buffer {
            addr: 0x1000,
            len: 51,
        }];
        let w = [
            Buffer {
                addr: 0x2000,
                len: 108,
            },
            Buffer {
                addr: 0x3000,
                len: 512,
            },
        ];
        let head = q.add(&r, &w).unwrap();
        assert_eq!(q.num_free(), 5);
        // SAFETY: reading back the descriptor table the queue owns.
        let d: Vec<Descriptor> = (0..3)
            .map(|i| unsafe { q.desc.as_ptr().add(i).read_volatile() })
            .collect();
        assert_eq!(d[0].flags, VIRTQ_DESC_F_NEXT);
        assert_eq!(d[1].flags, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
        assert_eq!(d[2].flags, VIRTQ_DESC_F_WRITE);
        assert_eq!((d[0].next, d[1].next), (1, 2));
        assert_eq!(q.avail_idx_ref().load(Ordering::Relaxed), 1);
        assert!(q.needs_notify());
        assert!(!q.needs_notify(), "nothing new since the last kick");
        assert!(q.pop_used().is_none());
        used_push(&q, u32::from(head), 620);
        assert_eq!(q.pop_used(), Some(Ok((head, 620))));
        assert_eq!(q.num_free(), 8);
        // Same head again: stale, refused, nothing freed twice.
        used_push(&q, u32::from(head), 620);
        assert_eq!(
            q.pop_used(),
            Some(Err(QueueError::UnknownHead(u32::from(head))))
        );
        used_push(&q, 99, 0);
        assert_eq!(q.pop_used(), Some(Err(QueueError::UnknownHead(99))));
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn full_queue_refuses_and_recovers() {
        let mut dma = HostDma::default();
        let mut q = SplitQueue::new(&mut dma, 0, 4).unwrap();
        let b = [Buffer {
            addr: 0x1000,
            len: 4,
        }];
        let heads: Vec<u16> = (0..4).map(|_| q.add(&b, &[]).unwrap()).collect();
        assert_eq!(q.add(&b, &[]), Err(QueueError::Full));
        for &h in heads.iter().rev() {
            used_push(&q, u32::from(h), 0);
        }
        while let Some(r) = q.pop_used() {
            r.unwrap();
        }
        assert_eq!(q.num_free(), 4);
        for _ in 0..4 {
            q.add(&b, &[]).unwrap();
        }
    }

    /// The device's EVENT_IDX decision for the element just pushed (vring_need_event).
    fn wants_interrupt(q: &SplitQueue, old: u16) -> bool {
        let new = q.used_idx_ref().load(Ordering::Relaxed);
        // SAFETY: test plays the device and reads used_event.
        let event = unsafe { q.used_event_ptr().read_volatile() };
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn suppressed_interrupts_strand_what_came_meanwhile_until_looked_at_again() {
        let mut dma = HostDma::default();
        let mut q = SplitQueue::new(&mut dma, 2, 8).unwrap();
        let b = [Buffer {
            addr: 0x1000,
            len: 4,
        }];
        // Without EVENT_IDX: the avail flag.
        q.suppress_interrupts();
        // SAFETY: reading avail.flags, the first field of the driver area.
        let flags = |q: &SplitQueue| unsafe { q.avail.as_ptr().cast::<u16>().read_volatile() };
        assert_eq!(flags(&q), VIRTQ_AVAIL_F_NO_INTERRUPT);
        q.unsuppress_interrupts();
        assert_eq!(flags(&q), 0);
        // With EVENT_IDX: popping while suppressed leaves used_event behind.
        q.set_event_idx(true);
        let heads: Vec<u16> = (0..3).map(|_| q.add(&b, &[]).unwrap()).collect();
        used_push(&q, u32::from(heads[0]), 0);
        assert!(wants_interrupt(&q, 0));
        q.suppress_interrupts();
        assert!(q.interrupts_suppressed());
        assert!(q.pop_used().is_some());
        // Arrives after the drain, before the unmask: the device raises nothing.
        used_push(&q, u32::from(heads[1]), 0);
        assert!(!wants_interrupt(&q, 1));
        q.unsuppress_interrupts();
        assert!(!q.interrupts_suppressed());
        // Nor for the next one: only a second look finds the stranded element.
        assert!(q.can_pop());
        assert!(q.pop_used().is_some());
        used_push(&q, u32::from(heads[2]), 0);
        assert!(wants_interrupt(&q, 2), "interrupts are asked for again");
        // A reset asks for every interrupt again.
        q.suppress_interrupts();
        q.reset();
        assert!(!q.interrupts_suppressed());
    }

    #[test]
    fn event_idx_notification_follows_avail_event() {
        let mut dma = HostDma::default();
        let mut q = SplitQueue::new(&mut dma, 0, 8).unwrap();
        q.set_event_idx(true);
        let b = [Buffer {
            addr: 0x1000,
            len: 4,
        }];
        // avail_event = 0: the device wants a kick when entry 0 is published.
        q.add(&b, &[]).unwrap();
        assert!(q.needs_notify());
        // Device says: wake me when entry 5 is published.
        // SAFETY: test plays the device and writes avail_event.
        unsafe { (q.avail_event_ptr() as *mut u16).write_volatile(5) };
        q.add(&b, &[]).unwrap();
        assert!(!q.needs_notify());
        for _ in 0..4 {
            q.add(&b, &[]).unwrap();
        }
        assert!(q.needs_notify(), "entry 5 published in this batch");
    }
}
