//! DMA over host memory: the device address is the host pointer.

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};

use crate::platform::Dma;

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
