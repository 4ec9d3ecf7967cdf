//! The device's view of guest memory: reads and writes at device addresses, the
//! ring indexes, and the buffers of a descriptor chain.

use core::sync::atomic::AtomicU16;

use crate::wire::*;

use super::device::SimQueue;

pub(super) fn mem_read(addr: u64, buf: &mut [u8]) {
    // SAFETY: device addresses are host pointers into HostDma pages (or the test's
    // own buffers) that stay allocated while the device holds them.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) }
}

pub(super) fn mem_write(addr: u64, data: &[u8]) {
    // SAFETY: as in mem_read; the driver made these buffers device-writable.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

pub(super) fn mem_u16(addr: u64) -> u16 {
    let mut b = [0; 2];
    mem_read(addr, &mut b);
    u16::from_le_bytes(b)
}

pub(super) fn atomic_u16(addr: u64) -> &'static AtomicU16 {
    // SAFETY: ring index fields are 2-aligned, inside ring memory that outlives the
    // device's use of it in these tests.
    unsafe { &*(addr as *const AtomicU16) }
}

/// A chain's buffers: (address, length, device-writable).
pub(super) type Chain = Vec<(u64, u32, bool)>;

pub(super) fn walk_chain(q: &SimQueue, head: u16) -> Chain {
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

pub(super) fn gather(bufs: &[(u64, u32, bool)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(a, l, w) in bufs {
        assert!(!w);
        let mut b = std::vec![0; l as usize];
        mem_read(a, &mut b);
        v.extend_from_slice(&b);
    }
    v
}

pub(super) fn scatter(bufs: &[(u64, u32, bool)], data: &[u8]) -> u32 {
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
