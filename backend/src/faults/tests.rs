//! What the fault modules' tests share: plans and engines from text, reads and writes as
//! the engine sees them, a trace sink, and an allocation counter (the lib tests' global
//! allocator).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `Write` into shared memory, to read a trace back.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use super::engine::*;
use super::plan::*;

/// Counts allocations per thread, so the test of the armed-but-idle cost (issue item 9) is
/// not disturbed by tests running on other threads.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a const-initialized thread local, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
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

pub(crate) fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

pub(crate) fn plan(text: &str) -> Plan {
    Plan::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn engine(text: &str) -> FaultEngine {
    FaultEngine::new(plan(text))
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

pub(crate) const READ_10: u8 = 0x28;
pub(crate) const WRITE_10: u8 = 0x2a;

pub(crate) fn read(id: u64, lba: u64) -> RequestInfo {
    RequestInfo::command(2, id, 0, 0, READ_10)
        .with_lba(lba, 8)
        .with_data(DataDirection::Read, 4096)
}

pub(crate) fn write(id: u64, lba: u64) -> RequestInfo {
    RequestInfo::command(2, id, 0, 0, WRITE_10)
        .with_lba(lba, 8)
        .with_data(DataDirection::Write, 4096)
}

/// Which of `n` reads (ids 1..=n) got a non-normal decision.
pub(crate) fn fired_reads(e: &mut FaultEngine, n: u64) -> Vec<u64> {
    (1..=n)
        .filter(|&i| !e.on_request(&read(i, i), ms(i)).is_normal())
        .collect()
}

pub(crate) fn err_text(text: &str) -> String {
    Plan::from_toml_str(text).unwrap_err().to_string()
}
