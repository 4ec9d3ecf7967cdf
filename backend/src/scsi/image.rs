//! Opening a file-backed LU's image as QEMU opens a disk image: without blocking (a FIFO
//! never hangs the open), regular files and block devices only (checked on the opened
//! file), and with QEMU's OFD lock bytes, so that the backend and QEMU, or two backends,
//! see each other and never serve one image read-write at the same time.
//!
//! QEMU's scheme (block/file-posix.c, `raw_apply_lock_bytes` and
//! `raw_check_lock_bytes`): for each block permission p, a user holding p takes a shared
//! lock on byte 100 + p, and a user that does not let others take p takes a shared lock
//! on byte 200 + p. Before using an image a user checks that nobody locks 200 + p for a p
//! it holds, nor 100 + p for a p it does not share. We take the permissions and sharing
//! of a QEMU guest disk (scsi-hd): read-write takes CONSISTENT_READ and WRITE and shares
//! all but WRITE; read-only takes CONSISTENT_READ and shares the same. So two read-write
//! users exclude each other, a read-only one excludes writers, and read-only users mix.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::ScsiError;
use crate::file_kind::file_kind;

/// QEMU's RAW_LOCK_PERM_BASE and RAW_LOCK_SHARED_BASE.
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's permission bits (BLK_PERM_*), as bit numbers.
const CONSISTENT_READ: u32 = 0;
const WRITE: u32 = 1;
const WRITE_UNCHANGED: u32 = 2;
const RESIZE: u32 = 3;
/// The bits QEMU locks (BLK_PERM_ALL).
const PERM_BITS: u32 = 4;

fn bit(p: u32) -> u8 {
    1 << p
}

/// What a user holds and what it lets others hold.
#[derive(Clone, Copy, Debug)]
struct Perms {
    held: u8,
    shared: u8,
}

impl Perms {
    fn of(read_only: bool) -> Perms {
        let shared = bit(CONSISTENT_READ) | bit(WRITE_UNCHANGED) | bit(RESIZE);
        let held = bit(CONSISTENT_READ) | if read_only { 0 } else { bit(WRITE) };
        Perms { held, shared }
    }
}

/// Opens the image at `path` for a LU: refuses what is not a regular file or a block
/// device, and an image another user locks against us.
pub(super) fn open_image(path: &Path, read_only: bool) -> Result<File, ScsiError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| {
            // A directory opened for writing, a socket: say what it is rather than why
            // open(2) failed.
            match std::fs::metadata(path).ok().and_then(|m| not_an_image(&m)) {
                Some(kind) => ScsiError::NotAnImage {
                    path: path.to_owned(),
                    kind,
                },
                None => ScsiError::CouldNotOpenLun {
                    path: path.to_owned(),
                    source,
                },
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|source| ScsiError::CouldNotOpenLun {
            path: path.to_owned(),
            source,
        })?;
    if let Some(kind) = not_an_image(&meta) {
        return Err(ScsiError::NotAnImage {
            path: path.to_owned(),
            kind,
        });
    }
    clear_nonblocking(&file).map_err(|source| ScsiError::CouldNotOpenLun {
        path: path.to_owned(),
        source,
    })?;
    lock(&file, path, Perms::of(read_only))?;
    Ok(file)
}

/// What the file is when it cannot back a LU.
fn not_an_image(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() || t.is_block_device() {
        None
    } else {
        Some(file_kind(meta))
    }
}

/// O_NONBLOCK only kept the open from waiting; I/O on the image stays plain.
fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL only read and set the flags of a valid open fd.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn flock(kind: libc::c_int, at: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value, and the fields that matter
    // are set below (l_pid must be 0 for OFD locks).
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = at;
    l.l_len = 1;
    l
}

/// Takes a shared OFD lock on byte `at`: Ok(false) when another user's exclusive lock is
/// in the way.
fn lock_byte(file: &File, at: i64) -> io::Result<bool> {
    let l = flock(libc::F_RDLCK, at);
    // SAFETY: F_OFD_SETLK reads a valid flock; the fd is open for the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether another open file (of any process, this one included) locks byte `at`.
fn byte_locked_by_others(file: &File, at: i64) -> io::Result<bool> {
    let mut l = flock(libc::F_WRLCK, at);
    // SAFETY: F_OFD_GETLK reads and writes a valid flock; the fd is open for the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    if rc == 0 {
        Ok(l.l_type != libc::F_UNLCK as libc::c_short)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Applies the lock bytes of `perms`, then checks for users they conflict with (apply
/// before check, as QEMU does, so that two users starting together see each other).
/// A file system without OFD locks serves the image unlocked, with a warning, as QEMU's
/// `locking=auto` does.
fn lock(file: &File, path: &Path, perms: Perms) -> Result<(), ScsiError> {
    match apply_and_check(file, perms) {
        Ok(None) => Ok(()),
        Ok(Some(holder)) => Err(ScsiError::Locked {
            path: path.to_owned(),
            holder,
        }),
        Err(e) => {
            log::warn!(
                "{}: cannot take QEMU's image locks ({e}); serving it unlocked",
                path.display()
            );
            Ok(())
        }
    }
}

/// The kind of user in the way, if any.
fn apply_and_check(file: &File, perms: Perms) -> io::Result<Option<&'static str>> {
    let mut blocked = false;
    for p in 0..PERM_BITS {
        if perms.held & bit(p) != 0 {
            blocked |= !lock_byte(file, PERM_BASE + i64::from(p))?;
        }
        if perms.shared & bit(p) == 0 {
            blocked |= !lock_byte(file, SHARED_BASE + i64::from(p))?;
        }
    }
    for p in 0..PERM_BITS {
        if perms.held & bit(p) != 0 {
            blocked |= byte_locked_by_others(file, SHARED_BASE + i64::from(p))?;
        }
        if perms.shared & bit(p) == 0 {
            blocked |= byte_locked_by_others(file, PERM_BASE + i64::from(p))?;
        }
    }
    if !blocked {
        return Ok(None);
    }
    // Whoever holds WRITE writes; anyone else in the way keeps others from writing.
    Ok(Some(
        if byte_locked_by_others(file, PERM_BASE + i64::from(WRITE))? {
            "a read-write user"
        } else {
            "a read-only user"
        },
    ))
}
