//! The driver side of a split virtqueue (virtio 1.x, 2.7) over the shared memfd.

use std::mem::size_of;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{
    vring_desc, vring_used_elem, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

use super::memory::{Layout, SharedMemory};

/// The bindings' flags, as wide as the ring's 16-bit flags fields.
pub const VIRTQ_DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const VIRTQ_DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// used.flags: the device asks not to be kicked (only meaningful without EVENT_IDX).
const VIRTQ_USED_F_NO_NOTIFY: u16 = VRING_USED_F_NO_NOTIFY as u16;

const DESC_SIZE: u64 = size_of::<vring_desc>() as u64;
const USED_ELEM_SIZE: u64 = size_of::<vring_used_elem>() as u64;

/// Guest addresses of one ring's three parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

#[derive(Debug)]
pub struct SplitRing {
    mem: Arc<SharedMemory>,
    size: u16,
    addrs: RingAddrs,
    event_idx: bool,
    /// avail.idx as last published.
    published: u16,
    /// avail.idx including entries not yet published.
    next_avail: u16,
    /// Used entries consumed so far.
    last_used: u16,
}

impl SplitRing {
    /// Reserves the space of a ring of `size` entries (a power of two).
    pub fn layout(layout: &mut Layout, size: u16) -> RingAddrs {
        let size = u64::from(size);
        RingAddrs {
            desc: layout.alloc((DESC_SIZE * size) as usize),
            avail: layout.alloc((6 + 2 * size) as usize),
            used: layout.alloc((6 + USED_ELEM_SIZE * size) as usize),
        }
    }

    /// A fresh ring; zeroes its memory, so it also serves after a device reset.
    pub fn new(mem: Arc<SharedMemory>, size: u16, addrs: RingAddrs, event_idx: bool) -> Self {
        let n = u64::from(size);
        mem.fill(addrs.desc, (DESC_SIZE * n) as usize, 0);
        mem.fill(addrs.avail, (6 + 2 * n) as usize, 0);
        mem.fill(addrs.used, (6 + USED_ELEM_SIZE * n) as usize, 0);
        SplitRing {
            mem,
            size,
            addrs,
            event_idx,
            published: 0,
            next_avail: 0,
            last_used: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    fn u16_at(&self, gpa: u64) -> &AtomicU16 {
        let ptr = self.mem.ptr(gpa, 2);
        // SAFETY: every ring field address is 2-aligned (parts start on a page) and inside
        // the mapping (checked by ptr); the mapping lives as long as self's Arc. An
        // AtomicU16 has the layout of u16, and the backend also accesses it atomically.
        unsafe { &*ptr.cast::<AtomicU16>() }
    }

    /// Writes descriptor `index`. Not visible to the device until its head is published.
    pub fn set_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(index < self.size, "descriptor {index} beyond ring size");
        let gpa = self.addrs.desc + DESC_SIZE * u64::from(index);
        let ptr = self.mem.ptr(gpa, DESC_SIZE as usize).cast::<vring_desc>();
        let desc = vring_desc {
            addr: addr.to_le(),
            len: len.to_le(),
            flags: flags.to_le(),
            next: next.to_le(),
        };
        // SAFETY: ptr is in the mapping (checked) and 16-aligned (the table starts on a page).
        unsafe { ptr.write_volatile(desc) };
    }

    /// Queues chain `head` in the avail ring; `publish` makes it visible.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.next_avail % self.size);
        let gpa = self.addrs.avail + 4 + 2 * slot;
        self.u16_at(gpa).store(head.to_le(), Ordering::Relaxed);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Publishes the queued heads; returns whether the device wants a kick.
    pub fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return false;
        }
        // Release: descriptors and ring entries written above are visible before the idx.
        self.u16_at(self.addrs.avail + 2)
            .store(new.to_le(), Ordering::Release);
        self.published = new;
        // Full barrier: the idx store must be visible before we read the device's
        // avail_event/flags, or both sides could decide the other one will act.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event_gpa = self.addrs.used + 4 + USED_ELEM_SIZE * u64::from(self.size);
            let event = u16::from_le(self.u16_at(avail_event_gpa).load(Ordering::Relaxed));
            // vring_need_event(event, new, old)
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = u16::from_le(self.u16_at(self.addrs.used).load(Ordering::Relaxed));
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// The next used element `(id, len)`, if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        // Acquire: the element and the buffers it names are read after the idx.
        let idx = u16::from_le(self.u16_at(self.addrs.used + 2).load(Ordering::Acquire));
        if idx == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let gpa = self.addrs.used + 4 + USED_ELEM_SIZE * slot;
        let ptr = self
            .mem
            .ptr(gpa, USED_ELEM_SIZE as usize)
            .cast::<[u32; 2]>();
        // SAFETY: in the mapping (checked), 4-aligned (page start + 4 + 8k).
        let [id, len] = unsafe { ptr.read_volatile() };
        self.last_used = self.last_used.wrapping_add(1);
        Some((u32::from_le(id), u32::from_le(len)))
    }

    /// Asks for an interrupt at the next completion; returns true when completions arrived
    /// meanwhile (so the caller must not sleep).
    pub fn arm_interrupt(&mut self) -> bool {
        if self.event_idx {
            let used_event_gpa = self.addrs.avail + 4 + 2 * u64::from(self.size);
            self.u16_at(used_event_gpa)
                .store(self.last_used.to_le(), Ordering::Relaxed);
        }
        // Full barrier: used_event must be visible before we look at used.idx again, or
        // a completion in between would neither be seen nor signalled.
        fence(Ordering::SeqCst);
        let idx = u16::from_le(self.u16_at(self.addrs.used + 2).load(Ordering::Acquire));
        idx != self.last_used
    }

    /// avail.idx as published.
    pub fn avail_idx(&self) -> u16 {
        self.published
    }

    /// What the device last wrote: used.idx, and with EVENT_IDX avail_event (how far it
    /// had read the avail ring when it last asked for a kick).
    pub fn device_view(&self) -> (u16, Option<u16>) {
        let used = u16::from_le(self.u16_at(self.addrs.used + 2).load(Ordering::Acquire));
        let event = self.event_idx.then(|| {
            let gpa = self.addrs.used + 4 + USED_ELEM_SIZE * u64::from(self.size);
            u16::from_le(self.u16_at(gpa).load(Ordering::Acquire))
        });
        (used, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of 8 over fresh memory, plus what the device side needs to poke at it.
    fn ring(event_idx: bool) -> (Arc<SharedMemory>, SplitRing) {
        let mut layout = Layout::default();
        let addrs = SplitRing::layout(&mut layout, 8);
        let mem = Arc::new(SharedMemory::new(layout.size()).unwrap());
        let r = SplitRing::new(mem.clone(), 8, addrs, event_idx);
        (mem, r)
    }

    fn write_u16(mem: &SharedMemory, gpa: u64, v: u16) {
        mem.write(gpa, &v.to_le_bytes());
    }

    fn read_u16(mem: &SharedMemory, gpa: u64) -> u16 {
        let mut b = [0; 2];
        mem.read(gpa, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn publish_writes_ring_and_idx_and_kicks_per_avail_event() {
        let (mem, mut r) = ring(true);
        let a = r.addrs();
        let avail_event = a.used + 4 + 8 * 8;
        r.set_desc(0, 0x1000, 51, VIRTQ_DESC_F_NEXT, 1);
        r.push_avail(0);
        r.push_avail(3);
        // The device waits for the first entry (avail_event 0): kick.
        assert!(r.publish());
        assert_eq!(read_u16(&mem, a.avail + 2), 2);
        assert_eq!(read_u16(&mem, a.avail + 4), 0);
        assert_eq!(read_u16(&mem, a.avail + 6), 3);
        let mut d = [0u8; 16];
        mem.read(a.desc, &mut d);
        assert_eq!(u64::from_le_bytes(d[0..8].try_into().unwrap()), 0x1000);
        assert_eq!(u32::from_le_bytes(d[8..12].try_into().unwrap()), 51);
        // The device says it will look again at index 5 by itself: no kick for 2..4.
        write_u16(&mem, avail_event, 5);
        r.push_avail(1);
        assert!(!r.publish());
        r.push_avail(2);
        r.push_avail(4);
        r.push_avail(5);
        // 3..6 crosses 5: kick.
        assert!(r.publish());
        // Nothing new: no kick.
        assert!(!r.publish());
    }

    #[test]
    fn without_event_idx_the_used_flags_decide() {
        let (mem, mut r) = ring(false);
        r.push_avail(0);
        assert!(r.publish());
        write_u16(&mem, r.addrs().used, VIRTQ_USED_F_NO_NOTIFY);
        r.push_avail(1);
        assert!(!r.publish());
    }

    #[test]
    fn pop_used_follows_the_device_idx_and_arm_sets_used_event() {
        let (mem, mut r) = ring(true);
        let a = r.addrs();
        assert_eq!(r.pop_used(), None);
        assert!(!r.arm_interrupt());
        // The device returns head 3 (len 108) and head 6 (len 4204).
        mem.write(a.used + 4, &[3, 0, 0, 0, 108, 0, 0, 0]);
        mem.write(a.used + 12, &[6, 0, 0, 0, 0x6c, 0x10, 0, 0]);
        write_u16(&mem, a.used + 2, 2);
        assert!(r.arm_interrupt(), "entries already there");
        assert_eq!(r.pop_used(), Some((3, 108)));
        assert_eq!(r.pop_used(), Some((6, 4204)));
        assert_eq!(r.pop_used(), None);
        assert!(!r.arm_interrupt());
        // used_event now asks for a call at the next entry.
        assert_eq!(read_u16(&mem, a.avail + 4 + 2 * 8), 2);
    }
}
