//! The memory shared with the backend: one memfd, mapped here and passed to the backend
//! with SET_MEM_TABLE. Guest physical addresses are offsets into it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use super::FrontendError;

/// Alignment of every allocation: rings and data buffers start on a page.
pub const PAGE: usize = 4096;

/// A memfd mapping shared with the backend process.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory that another process writes concurrently
// anyway; every access goes through raw pointers (volatile or atomic), never references,
// so sharing it between threads adds nothing the backend could not already do.
unsafe impl Send for SharedMemory {}
// SAFETY: as for Send: no method hands out references into the mapping.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// A zero-filled memfd of `len` bytes (rounded up to a page), mapped read-write shared.
    pub fn new(len: usize) -> Result<SharedMemory, FrontendError> {
        let len = len.div_ceil(PAGE) * PAGE;
        // SAFETY: the name is a valid NUL-terminated string; the flags are valid.
        let raw = unsafe { libc::memfd_create(c"flakyhba-frontend".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(FrontendError::CouldNotCreateMemory(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(FrontendError::CouldNotCreateMemory(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a new shared mapping of the whole memfd at an address the kernel picks;
        // it aliases no Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FrontendError::CouldNotCreateMemory(
                std::io::Error::last_os_error(),
            ));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| {
            FrontendError::CouldNotCreateMemory(std::io::Error::other("mmap returned NULL"))
        })?;
        Ok(SharedMemory { fd, base, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The frontend's own virtual address of the mapping (vring addresses are given in it).
    pub fn user_addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Pointer to `len` bytes at guest address `gpa`. Panics when the range is outside the
    /// mapping: every address passed here was laid out by this frontend, never by the backend.
    pub fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        let start = usize::try_from(gpa).expect("guest address fits usize");
        assert!(
            start.checked_add(len).is_some_and(|end| end <= self.len),
            "frontend layout bug: {gpa:#x}+{len} outside {} bytes",
            self.len
        );
        // SAFETY: start + len <= self.len, checked above, so the result stays in the mapping.
        unsafe { self.base.as_ptr().add(start) }
    }

    /// Copies `data` into shared memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let dst = self.ptr(gpa, data.len());
        // SAFETY: dst is valid for data.len() bytes (checked by ptr) and cannot overlap
        // `data`, a Rust slice outside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }

    /// Copies shared memory at `gpa` into `out`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) {
        let src = self.ptr(gpa, out.len());
        // SAFETY: src is valid for out.len() bytes (checked by ptr); `out` is a Rust slice
        // outside the mapping, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) {
        let dst = self.ptr(gpa, len);
        // SAFETY: dst is valid for len bytes (checked by ptr).
        unsafe { std::ptr::write_bytes(dst, byte, len) };
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in new(); no pointer derived from it
        // outlives self (the rings hold an Arc to this memory).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Hands out page-aligned guest ranges of a memory being laid out.
#[derive(Debug, Default)]
pub struct Layout {
    next: u64,
}

impl Layout {
    pub fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next;
        self.next += (len.max(1).div_ceil(PAGE) * PAGE) as u64;
        at
    }

    pub fn size(&self) -> usize {
        self.next as usize
    }
}
