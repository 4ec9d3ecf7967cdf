//! The PVH `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).

/// `hvm_start_info.magic`: "xEn3" with bit 7 of the 'E' set.
const HVM_START_MAGIC: u32 = 0x336e_c578;
const OFFSET_MAGIC: usize = 0;
const OFFSET_VERSION: usize = 4;
const OFFSET_CMDLINE_PADDR: usize = 24;
const OFFSET_MEMMAP_PADDR: usize = 40;
const OFFSET_MEMMAP_ENTRIES: usize = 48;
/// Bytes of the start info of version 1 (with the memory map).
const START_INFO_LEN: u64 = 56;
/// `struct hvm_memmap_table_entry`: addr, size, type, reserved.
const MEMMAP_ENTRY_LEN: u64 = 24;
const MEMMAP_TYPE_RAM: u32 = 1;
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

fn read_u32(paddr: u64) -> u32 {
    // SAFETY: only called on fields of a start info whose magic was checked, or of its
    // memory map, in identity-mapped RAM below 4 GiB; reading has no side effect.
    unsafe { core::ptr::read_unaligned(paddr as usize as *const u32) }
}

fn read_u64(paddr: u64) -> u64 {
    // SAFETY: as in read_u32.
    unsafe { core::ptr::read_unaligned(paddr as usize as *const u64) }
}

fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// Whether the 4 KiB page at `page` is RAM the loader left free: it must not hold the
/// start info, the command line or the memory map, and (when the loader gave a memory
/// map) must lie in a RAM entry of it. For the other CPUs' trampoline.
pub fn page_is_free(paddr: u32, page: u64) -> bool {
    let base = u64::from(paddr);
    if read_u32(base + OFFSET_MAGIC as u64) != HVM_START_MAGIC
        || overlaps(page, 4096, base, START_INFO_LEN)
    {
        return false;
    }
    let cmdline = read_u64(base + OFFSET_CMDLINE_PADDR as u64);
    if cmdline != 0 && overlaps(page, 4096, cmdline, CMDLINE_MAX as u64 + 1) {
        return false;
    }
    if read_u32(base + OFFSET_VERSION as u64) < 1 {
        return true;
    }
    let map = read_u64(base + OFFSET_MEMMAP_PADDR as u64);
    let entries = u64::from(read_u32(base + OFFSET_MEMMAP_ENTRIES as u64));
    if map == 0 || entries == 0 {
        return true;
    }
    if map >= 1 << 32 || overlaps(page, 4096, map, entries * MEMMAP_ENTRY_LEN) {
        return false;
    }
    (0..entries.min(128)).any(|i| {
        let e = map + i * MEMMAP_ENTRY_LEN;
        let (addr, size) = (read_u64(e), read_u64(e + 8));
        read_u32(e + 16) == MEMMAP_TYPE_RAM && addr <= page && page + 4096 <= addr + size
    })
}
