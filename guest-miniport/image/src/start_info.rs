//! The PVH `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).

/// `hvm_start_info.magic`: "xEn3" with bit 7 of the 'E' set.
const HVM_START_MAGIC: u32 = 0x336e_c578;
const OFFSET_MAGIC: usize = 0;
const OFFSET_CMDLINE_PADDR: usize = 24;
/// Longest command line accepted; the harness sends well under 200 bytes.
const CMDLINE_MAX: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub enum StartInfoError {
    BadMagic(u32),
    /// The structure or the command line overlaps the image, whose .bss boot.s zeroed.
    OverlapsImage(u64),
    CmdlineNotTerminated,
    CmdlineNotUtf8,
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartInfoError::BadMagic(m) => write!(f, "hvm_start_info magic {m:#x}"),
            StartInfoError::OverlapsImage(a) => {
                write!(f, "boot data at {a:#x} overlaps the image")
            }
            StartInfoError::CmdlineNotTerminated => {
                write!(f, "command line longer than {CMDLINE_MAX} bytes")
            }
            StartInfoError::CmdlineNotUtf8 => write!(f, "command line is not UTF-8"),
        }
    }
}

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

fn overlaps_image(start: u64, len: u64) -> bool {
    let image_start = core::ptr::addr_of!(__image_start) as u64;
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    start < image_end && start.saturating_add(len) > image_start
}

/// Reads the kernel command line from the start info at `paddr` (identity-mapped).
/// Returns "" when there is none.
pub fn cmdline(paddr: u32) -> Result<&'static str, StartInfoError> {
    let base = paddr as usize;
    if overlaps_image(u64::from(paddr), 56) {
        return Err(StartInfoError::OverlapsImage(u64::from(paddr)));
    }
    // SAFETY: the loader passed the address of a start info in RAM below 4 GiB, which is
    // identity-mapped; it lies outside the image (checked), so nothing of ours wrote it.
    let magic = unsafe { core::ptr::read_unaligned((base + OFFSET_MAGIC) as *const u32) };
    if magic != HVM_START_MAGIC {
        return Err(StartInfoError::BadMagic(magic));
    }
    // SAFETY: as above; the magic says this is a start info, whose field is at offset 24.
    let cmdline_paddr =
        unsafe { core::ptr::read_unaligned((base + OFFSET_CMDLINE_PADDR) as *const u64) };
    if cmdline_paddr == 0 {
        return Ok("");
    }
    if cmdline_paddr >= 1 << 32 {
        return Err(StartInfoError::OverlapsImage(cmdline_paddr));
    }
    let ptr = cmdline_paddr as *const u8;
    let mut len = 0;
    // SAFETY: the loader put a NUL-terminated string there, in identity-mapped RAM below
    // 4 GiB; the scan stops at the NUL or after CMDLINE_MAX bytes. Reading is harmless
    // even if it lies in the image (checked below).
    while unsafe { ptr.add(len).read() } != 0 {
        len += 1;
        if len == CMDLINE_MAX {
            return Err(StartInfoError::CmdlineNotTerminated);
        }
    }
    if overlaps_image(cmdline_paddr, len as u64 + 1) {
        return Err(StartInfoError::OverlapsImage(cmdline_paddr));
    }
    // SAFETY: `len` bytes from `ptr` were just read; the loader's memory is never written
    // again (outside the image, and no allocator hands it out), so a 'static shared
    // borrow is sound.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    core::str::from_utf8(bytes).map_err(|_| StartInfoError::CmdlineNotUtf8)
}
