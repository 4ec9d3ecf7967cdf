//! The READ/WRITE data path allocates nothing per request: a counting global allocator
//! (its own test binary, so it does not meet the unit tests' allocator) watches the
//! guest buffers being built and the command being executed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use flakyhba_backend::scsi::{opcode, CmdOutcome, Lun, LunAddress, Target};
use flakyhba_backend::virtio::GuestBuffer;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr`/`layout` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
    let flags = if writable {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

#[test]
fn read_and_write_allocate_nothing_per_request() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&vec![0x42; 1 << 20]).unwrap();
    file.flush().unwrap();
    let target = Target::new(vec![Lun::open(file.path(), false).unwrap()]).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let lu = LunAddress { target: 0, lun: 0 };
    // 64 KiB over four descriptors.
    let bufs = [0x10_0000u64, 0x20_0000, 0x30_0000, 0x40_0000];
    let blocks = 128u16;
    let cdb = |op: u8| {
        let mut c = [0u8; 10];
        c[0] = op;
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    };

    for (op, writable) in [(opcode::WRITE_10, false), (opcode::READ_10, true)] {
        // The write sends 0x17s; the read must bring them back over zeros.
        let fill = if writable { 0x00 } else { 0x17 };
        mem.write_slice(&[fill; 0x4000], GuestAddress(bufs[0]))
            .unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs: Vec<_> = bufs.iter().map(|&a| desc(a, 0x4000, writable)).collect();
        let chain = vq.build_desc_chain(&descs).unwrap();
        let command = cdb(op);

        let before = allocations();
        let mut data_out = GuestBuffer::readable(&mem, chain.clone()).unwrap();
        let mut data_in = GuestBuffer::writable(&mem, chain).unwrap();
        let outcome = target.execute_at(lu, &command, &mut data_in, &mut data_out);
        let spent = allocations() - before;

        assert_eq!(outcome, Ok(CmdOutcome::GOOD));
        assert_eq!(spent, 0, "opcode {op:#04x} allocated {spent} times");
    }
    // The counter does count: one Box is one allocation.
    let before = allocations();
    let b = std::hint::black_box(Box::new(1u64));
    assert_eq!(allocations() - before, 1);
    drop(b);
    // The write reached the file and the read brought it back.
    let mut back = [0u8; 16];
    mem.read_slice(&mut back, GuestAddress(bufs[0])).unwrap();
    assert_eq!(back, [0x17; 16]);
}
