//! One logical unit: its backing (file, block device or RAM), geometry, identity and the
//! state the initiator can change (unit attentions, started/stopped).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use super::image::open_image;
use super::sense::{Sense, SenseFormat};
use super::ScsiError;

/// Default logical block size.
pub const BLOCK_SIZE: u64 = 512;

/// Where a LU keeps its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A regular file or a block device.
    File(PathBuf),
    /// A memfd of this many bytes, gone when the backend exits.
    Memory(u64),
}

/// Address of a LU on the backend's bus: SCSI target id and LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LunAddress {
    pub target: u8,
    pub lun: u16,
}

/// Everything needed to open a LU, as `--lun` and the control socket's `add-lun` give it
/// (its [`FromStr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunSpec {
    pub backing: Backing,
    pub read_only: bool,
    /// 512 or 4096.
    pub block_size: u32,
    /// None: the next free LUN of target 0.
    pub address: Option<LunAddress>,
    /// The control mode page's D_SENSE default (there is no MODE SELECT).
    pub sense_format: SenseFormat,
}

impl LunSpec {
    pub fn file(path: impl Into<PathBuf>, read_only: bool) -> Self {
        LunSpec {
            backing: Backing::File(path.into()),
            read_only,
            block_size: BLOCK_SIZE as u32,
            address: None,
            sense_format: SenseFormat::Fixed,
        }
    }

    pub fn memory(bytes: u64) -> Self {
        LunSpec {
            backing: Backing::Memory(bytes),
            ..Self::file(PathBuf::new(), false)
        }
    }
}

/// A LU description that is not `[T:L=]PATH[,ro][,block-size=N][,sense=F]`; each names
/// the text as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LunSpecError {
    #[error("--lun {0:?}: unknown option after ',' (ro, rw, block-size=512|4096, sense=fixed|descriptor)")]
    UnknownOption(String),
    #[error("--lun {0:?}: empty path")]
    EmptyPath(String),
    #[error("--lun {0:?}: bad T:L= address (target 0-255, LUN 0-16383)")]
    BadAddress(String),
    #[error("--lun {0:?}: bad mem:SIZE (a byte count with an optional K, M, G or T suffix)")]
    BadMemorySize(String),
    #[error("--lun {0:?}: block-size must be 512 or 4096")]
    BadBlockSize(String),
}

impl FromStr for LunSpec {
    type Err = LunSpecError;

    /// `[T:L=]PATH[,ro|rw][,block-size=512|4096][,sense=fixed|descriptor]`; PATH is a
    /// file or block device, or `mem:SIZE` for a RAM disk. `,,` is a comma of the path
    /// or option, as in QEMU's option strings.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |f: fn(String) -> LunSpecError| f(text.to_owned());
        let parts = split_options(text);
        let mut parts = parts.iter().map(String::as_str);
        let first = parts.next().unwrap_or_default();
        // `T:L=` only when the part before '=' is two numbers, so paths with '=' still work.
        let (address, path) = match first.split_once('=') {
            Some((addr, path)) if is_address(addr) => (
                Some(parse_address(addr).ok_or_else(|| err(LunSpecError::BadAddress))?),
                path,
            ),
            _ => (None, first),
        };
        if path.is_empty() {
            return Err(err(LunSpecError::EmptyPath));
        }
        let mut spec = LunSpec {
            address,
            ..LunSpec::file(path, false)
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => spec.read_only = true,
                None if opt == "rw" => spec.read_only = false,
                Some(("block-size", v)) => {
                    spec.block_size = match v {
                        "512" => 512,
                        "4096" => 4096,
                        _ => return Err(err(LunSpecError::BadBlockSize)),
                    }
                }
                Some(("sense", "fixed")) => spec.sense_format = SenseFormat::Fixed,
                Some(("sense", "descriptor")) => spec.sense_format = SenseFormat::Descriptor,
                _ => return Err(err(LunSpecError::UnknownOption)),
            }
        }
        if let Some(size) = path.strip_prefix("mem:") {
            let bytes = parse_size(size).ok_or_else(|| err(LunSpecError::BadMemorySize))?;
            spec.backing = Backing::Memory(bytes);
        }
        Ok(spec)
    }
}

/// `text` split at its single commas, each `,,` read as one comma of a part.
fn split_options(text: &str) -> Vec<String> {
    let (mut parts, mut part) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            part.push(c);
        } else if chars.next_if_eq(&',').is_some() {
            part.push(',');
        } else {
            parts.push(std::mem::take(&mut part));
        }
    }
    parts.push(part);
    parts
}

/// `T:L` with two numbers: the form of an address, valid or not.
fn is_address(s: &str) -> bool {
    s.split_once(':').is_some_and(|(t, l)| {
        !t.is_empty() && !l.is_empty() && (t.bytes().chain(l.bytes())).all(|b| b.is_ascii_digit())
    })
}

/// `T:L` with a target below 256 and a LUN in the flat space.
fn parse_address(s: &str) -> Option<LunAddress> {
    let (t, l) = s.split_once(':')?;
    let target = t.parse::<u8>().ok()?;
    let lun = l.parse::<u16>().ok()?;
    (usize::from(lun) < super::MAX_LUNS).then_some(LunAddress { target, lun })
}

/// `64M`, `1G`, `4096`: binary multiples.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
}

/// Pending unit attention conditions, one bit each, reported highest first (SPC-4 5.14).
pub(super) mod ua {
    pub const POWER_ON: u8 = 1 << 0;
    pub const I_T_NEXUS_LOSS: u8 = 1 << 1;
    pub const LU_RESET: u8 = 1 << 2;
    /// All of the "29/xx" reset conditions: reporting one clears the others.
    pub const RESETS: u8 = POWER_ON | I_T_NEXUS_LOSS | LU_RESET;
    pub const CAPACITY_CHANGED: u8 = 1 << 3;
}

/// A logical unit.
#[derive(Debug)]
pub struct Lun {
    pub(super) file: File,
    /// Path or `mem:SIZE`, for logs.
    name: String,
    /// Size of a RAM-backed LU, None for a file.
    memory: Option<u64>,
    read_only: bool,
    block_size: u32,
    /// Capacity in blocks; a partial trailing block of the file is not exposed.
    blocks: AtomicU64,
    /// fallocate(PUNCH_HOLE) works on the backing: UNMAP and thin provisioning are offered.
    can_punch: bool,
    pub(super) sense_format: SenseFormat,
    pub(super) address: Option<LunAddress>,
    /// 16 hex digits, stable for the same path (VPD 80h, 83h).
    pub(super) serial: [u8; 16],
    ua: AtomicU8,
    stopped: AtomicBool,
}

impl Lun {
    /// A file-backed LU with 512-byte blocks on the next free LUN of target 0.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ScsiError> {
        Self::open_spec(&LunSpec::file(path, read_only))
    }

    pub fn open_spec(spec: &LunSpec) -> Result<Self, ScsiError> {
        if spec.block_size != 512 && spec.block_size != 4096 {
            return Err(ScsiError::InvalidBlockSize(spec.block_size));
        }
        let (file, name, identity) = match &spec.backing {
            Backing::File(path) => {
                let file = open_image(path, spec.read_only)?;
                // The canonical path keeps the identity stable whatever the working directory.
                let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
                let identity = canonical.to_string_lossy().into_owned();
                (file, path.display().to_string(), identity)
            }
            Backing::Memory(bytes) => {
                let file = memfd(*bytes).map_err(ScsiError::CouldNotCreateMemoryLun)?;
                let name = format!("mem:{bytes}");
                (file, name.clone(), name)
            }
        };
        let size = file_size(&file).map_err(|source| ScsiError::CouldNotSizeLun {
            name: name.clone(),
            source,
        })?;
        let blocks = size / u64::from(spec.block_size);
        if blocks == 0 {
            return Err(ScsiError::LunTooSmall(name));
        }
        let tail = size % u64::from(spec.block_size);
        if tail != 0 {
            log::warn!(
                "LUN {name}: its last {tail} bytes are less than one block of {} and are not served",
                spec.block_size
            );
        }
        let can_punch = !spec.read_only && punch_hole_works(&file, size);
        Ok(Lun {
            file,
            read_only: spec.read_only,
            block_size: spec.block_size,
            blocks: AtomicU64::new(blocks),
            can_punch,
            sense_format: spec.sense_format,
            address: spec.address,
            serial: serial_of(&identity),
            memory: match spec.backing {
                Backing::Memory(bytes) => Some(bytes),
                Backing::File(_) => None,
            },
            name,
            ua: AtomicU8::new(0),
            stopped: AtomicBool::new(false),
        })
    }

    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Whether UNMAP and WRITE SAME's UNMAP bit punch holes on this LU.
    pub fn can_punch(&self) -> bool {
        self.can_punch
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sense_format(&self) -> SenseFormat {
        self.sense_format
    }

    pub(super) fn set_blocks(&self, blocks: u64) {
        self.blocks.store(blocks, Ordering::Relaxed);
    }

    pub(super) fn raise_ua(&self, bits: u8) {
        self.ua.fetch_or(bits, Ordering::AcqRel);
    }

    /// Takes the highest-precedence pending unit attention, if any.
    pub(super) fn take_ua(&self) -> Option<Sense> {
        let mut taken = None;
        // Atomic so that two queues never report the same condition twice.
        let _ = self
            .ua
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let (sense, clear) = if bits & ua::POWER_ON != 0 {
                    (Sense::POWER_ON_RESET_OCCURRED, ua::RESETS)
                } else if bits & ua::I_T_NEXUS_LOSS != 0 {
                    (Sense::I_T_NEXUS_LOSS_OCCURRED, ua::RESETS)
                } else if bits & ua::LU_RESET != 0 {
                    (Sense::LOGICAL_UNIT_RESET_OCCURRED, ua::RESETS)
                } else if bits & ua::CAPACITY_CHANGED != 0 {
                    (Sense::CAPACITY_DATA_HAS_CHANGED, ua::CAPACITY_CHANGED)
                } else {
                    taken = None;
                    return None;
                };
                taken = Some(sense);
                Some(bits & !clear)
            });
        taken
    }

    pub(super) fn ua_pending(&self) -> bool {
        self.ua.load(Ordering::Acquire) != 0
    }

    pub(super) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(super) fn set_stopped(&self, stopped: bool) {
        self.stopped.store(stopped, Ordering::Relaxed);
    }

    /// Byte offset and length of a block range, or None when it leaves the medium.
    pub(super) fn byte_range(&self, lba: u64, blocks: u64) -> Option<(u64, u64)> {
        let end = lba.checked_add(blocks)?;
        let bs = u64::from(self.block_size);
        (end <= self.blocks()).then(|| (lba * bs, blocks * bs))
    }
}

/// Size of a regular file or of a block device (whose metadata length is 0).
fn file_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

fn memfd(bytes: u64) -> std::io::Result<File> {
    // SAFETY: the name is a NUL-terminated C string and the flags are valid.
    let fd = unsafe { libc::memfd_create(c"flakyhba-lun".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(bytes)?;
    Ok(file)
}

/// Punches a hole past the end of the data (KEEP_SIZE, so nothing changes) to learn
/// whether the file system supports it.
fn punch_hole_works(file: &File, size: u64) -> bool {
    punch_hole(file, size, 4096).is_ok()
}

/// Deallocates `len` bytes at `offset`; they read back as zeros.
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the fd is valid for `file`'s life.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// FNV-1a of the identity, as 16 upper-case hex digits.
fn serial_of(identity: &str) -> [u8; 16] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = b"0123456789ABCDEF"[(h >> (60 - 4 * i)) as usize & 0xf];
    }
    out
}

/// The serial as a number (for the NAA designator).
pub(super) fn serial_value(serial: &[u8; 16]) -> u64 {
    serial.iter().fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'A' + 10,
        };
        acc << 4 | u64::from(d)
    })
}

/// Re-derives the serial of a memory LU from its address, once the address is known.
pub(super) fn memory_serial(addr: LunAddress, bytes: u64) -> [u8; 16] {
    serial_of(&format!("mem:{}:{}:{bytes}", addr.target, addr.lun))
}

impl Lun {
    pub(super) fn memory_bytes(&self) -> Option<u64> {
        self.memory
    }

    pub(super) fn set_serial(&mut self, serial: [u8; 16]) {
        self.serial = serial;
    }

    /// Size in bytes of the backing, as the LU sees it now.
    pub(super) fn backing_len(&self) -> std::io::Result<u64> {
        file_size(&self.file)
    }
}

#[cfg(test)]
impl Lun {
    /// A read-write LU of `blocks` 512-byte blocks over an open `file` (such as /dev/full,
    /// whose writes fail with ENOSPC), thin-provisioned or not.
    pub(super) fn over(file: File, blocks: u64, thin: bool) -> Lun {
        Lun {
            file,
            name: "test".into(),
            memory: None,
            read_only: false,
            block_size: 512,
            blocks: AtomicU64::new(blocks),
            can_punch: thin,
            sense_format: SenseFormat::Fixed,
            address: None,
            serial: serial_of("test"),
            ua: AtomicU8::new(0),
            stopped: AtomicBool::new(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_address_memory_block_size_and_sense() {
        assert_eq!(
            "1:3=mem:64M,block-size=4096,sense=descriptor".parse::<LunSpec>(),
            Ok(LunSpec {
                backing: Backing::Memory(64 << 20),
                read_only: false,
                block_size: 4096,
                address: Some(LunAddress { target: 1, lun: 3 }),
                sense_format: SenseFormat::Descriptor,
            })
        );
        // '=' in a path that is not T:L stays part of the path.
        assert_eq!(
            "dir/x=y.img,ro".parse::<LunSpec>(),
            Ok(LunSpec::file("dir/x=y.img", true))
        );
        for (bad, e) in [
            (
                "a,block-size=1024",
                LunSpecError::BadBlockSize as fn(String) -> LunSpecError,
            ),
            ("mem:12Q", LunSpecError::BadMemorySize),
            ("mem:0", LunSpecError::BadMemorySize),
            ("0:16384=a", LunSpecError::BadAddress),
            ("256:0=a", LunSpecError::BadAddress),
            ("a,sense=weird", LunSpecError::UnknownOption),
            ("0:1=", LunSpecError::EmptyPath),
        ] {
            assert_eq!(bad.parse::<LunSpec>(), Err(e(bad.to_owned())), "{bad}");
        }
        // `,,` is a comma of the path, as in QEMU.
        assert_eq!(
            "dir/a,,b.img,ro".parse::<LunSpec>(),
            Ok(LunSpec::file("dir/a,b.img", true))
        );
        assert_eq!(
            "0:2=x,,,,y,,"
                .parse::<LunSpec>()
                .map(|s| (s.backing, s.address)),
            Ok((
                Backing::File("x,,y,".into()),
                Some(LunAddress { target: 0, lun: 2 })
            ))
        );
        assert_eq!(
            "a,,,ro,,".parse::<LunSpec>(),
            Err(LunSpecError::UnknownOption("a,,,ro,,".into())),
            "the option is `ro,`"
        );
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
    }
}
