//! Opening images: only regular files and block devices, never blocking on a FIFO, and
//! QEMU's lock bytes between users of one image.

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use super::*;

fn refused_as(path: &std::path::Path, read_only: bool) -> Option<&'static str> {
    match Lun::open(path, read_only) {
        Err(ScsiError::NotAnImage { kind, .. }) => Some(kind),
        Err(e) => panic!("{}: {e}", path.display()),
        Ok(_) => None,
    }
}

#[test]
fn only_regular_files_and_block_devices_back_a_lu() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(refused_as(dir.path(), true), Some("a directory"));
    assert_eq!(refused_as(dir.path(), false), Some("a directory"));

    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let start = Instant::now();
    assert_eq!(refused_as(&fifo, true), Some("a FIFO"));
    assert_eq!(refused_as(&fifo, false), Some("a FIFO"));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the open never waits"
    );

    let sock = dir.path().join("sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    assert_eq!(refused_as(&sock, true), Some("a socket"));
    assert_eq!(
        refused_as(std::path::Path::new("/dev/null"), true),
        Some("a character device")
    );
    let e = Lun::open(dir.path(), true).unwrap_err();
    assert!(e.is_refusal());
    assert!(
        e.to_string()
            .contains("only regular files and block devices"),
        "{e}"
    );
}

fn holder(path: &std::path::Path, read_only: bool) -> Option<&'static str> {
    match Lun::open(path, read_only) {
        Err(ScsiError::Locked { holder, .. }) => Some(holder),
        Err(e) => panic!("{e}"),
        Ok(_) => None,
    }
}

#[test]
fn images_are_locked_as_qemu_locks_them() {
    let f = backing(512, 8);
    let rw = Lun::open(f.path(), false).unwrap();
    assert_eq!(holder(f.path(), false), Some("a read-write user"));
    assert_eq!(holder(f.path(), true), Some("a read-write user"));
    drop(rw);

    let ro = Lun::open(f.path(), true).unwrap();
    let ro2 = Lun::open(f.path(), true).unwrap();
    assert_eq!(holder(f.path(), false), Some("a read-only user"));
    drop((ro, ro2));

    // Every lock goes with its LU: the image is free again.
    let rw = Lun::open(f.path(), false).unwrap();
    let e = Lun::open(f.path(), false).unwrap_err();
    assert!(e.is_refusal());
    assert!(
        e.to_string()
            .ends_with("is locked: held by a read-write user (QEMU or another backend)"),
        "{e}"
    );
    drop(rw);
    // RAM disks take no locks.
    let _a = Lun::open_spec(&LunSpec::memory(4096)).unwrap();
    let _b = Lun::open_spec(&LunSpec::memory(4096)).unwrap();
}
