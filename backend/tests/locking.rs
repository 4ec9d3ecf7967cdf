//! Image locking between users of one image (issue 13 item 4): two backends, and a
//! backend and a real QEMU, in both directions. QEMU takes OFD locks on bytes 100 + p and
//! 200 + p (block/file-posix.c); the backend takes the same bytes, so each sees the other.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg, assert_refused, image, Backend, TIMEOUT};

const RW_HELD: &str = "is locked: held by a read-write user (QEMU or another backend)";
const RO_HELD: &str = "is locked: held by a read-only user (QEMU or another backend)";

/// Starts a backend serving `img` (`,ro` or not) and waits until it listens.
fn serve(dir: &Path, name: &str, lun: &str) -> Backend {
    let sock = dir.join(format!("{name}.sock"));
    let mut b = Backend::spawn(
        &["--socket-path", arg(&sock), "--lun", lun],
        &dir.join(format!("{name}.log")),
    );
    b.wait_for_socket(&sock);
    b
}

/// A directory with a 1 MiB image, the image and its read-only `--lun`.
fn setup() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    image(&img, 1 << 20);
    let ro = format!("{},ro", arg(&img));
    (dir, img, ro)
}

/// A backend in `dir` serving `lun` is refused with `message`.
fn refused(dir: &Path, lun: &str, message: &str) {
    let sock = dir.join("refused.sock");
    assert_refused(&["--socket-path", arg(&sock), "--lun", lun], message);
}

#[test]
fn two_backends_on_one_image() {
    let (dir, img, ro) = setup();
    let refused = |lun: &str, message: &str| refused(dir.path(), lun, message);

    let rw = serve(dir.path(), "rw", arg(&img));
    refused(arg(&img), RW_HELD);
    refused(&ro, RW_HELD);
    drop(rw);

    let first = serve(dir.path(), "ro1", &ro);
    let second = serve(dir.path(), "ro2", &ro);
    refused(arg(&img), RO_HELD);
    drop((first, second));
    // RAM disks take no lock.
    let _m = serve(dir.path(), "m1", "mem:1M");
    let _n = serve(dir.path(), "m2", "mem:1M");
}

fn qemu_system() -> Option<&'static str> {
    let found = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then_some("qemu-system-x86_64")
}

/// A QEMU that holds `img` as a guest disk (paused before the guest runs).
fn qemu_holding(img: &Path, read_only: bool) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "q35",
        "-S",
        "-nodefaults",
        "-display",
        "none",
        "-drive",
    ])
    .arg(format!(
        "file={},format=raw,if=none,id=d0,readonly={}",
        arg(img),
        if read_only { "on" } else { "off" }
    ))
    .args(["-device", "virtio-blk-pci,drive=d0"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// Kills QEMU however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether another open file locks byte `at` of `img`.
fn byte_locked(img: &Path, at: i64) -> bool {
    let f = File::open(img).unwrap();
    // SAFETY: flock is plain data; all-zero is valid, and l_pid stays 0 as OFD locks need.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = at;
    l.l_len = 1;
    // SAFETY: F_OFD_GETLK reads and writes a valid flock on an open fd.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    assert_eq!(rc, 0);
    l.l_type != libc::F_UNLCK as libc::c_short
}

/// Starts a QEMU holding `img` and waits for its device's locks: byte 201 (it does not
/// share WRITE) comes last, when the device takes the drive; byte 100 alone is the
/// drive opened.
fn start_qemu(img: &Path, read_only: bool) -> Qemu {
    let mut q = Qemu(qemu_holding(img, read_only).spawn().unwrap());
    let start = Instant::now();
    while !byte_locked(img, 201) {
        assert!(q.0.try_wait().unwrap().is_none(), "QEMU exited");
        assert!(start.elapsed() < TIMEOUT, "QEMU took no lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    q
}

/// QEMU started on `img` fails at once, and says it could not get a lock.
fn qemu_refused(img: &Path, read_only: bool) -> String {
    let mut q = Qemu(qemu_holding(img, read_only).spawn().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = q.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < TIMEOUT, "QEMU was not refused");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(q.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn a_backend_and_qemu_see_each_others_locks() {
    let Some(_) = qemu_system() else {
        eprintln!("qemu-system-x86_64 not found (make setup installs it): test skipped");
        return;
    };
    let (dir, img, ro) = setup();
    let refused = |lun: &str, message: &str| refused(dir.path(), lun, message);

    // QEMU first.
    let q = start_qemu(&img, false);
    refused(arg(&img), RW_HELD);
    refused(&ro, RW_HELD);
    drop(q);
    let q = start_qemu(&img, true);
    refused(arg(&img), RO_HELD);
    let b = serve(dir.path(), "ro-beside-qemu", &ro);
    drop((q, b));

    // The backend first.
    let b = serve(dir.path(), "rw", arg(&img));
    let err = qemu_refused(&img, false);
    assert!(err.contains("Failed to get \"write\" lock"), "{err}");
    let err = qemu_refused(&img, true);
    assert!(err.contains("Failed to get shared \"write\" lock"), "{err}");
    drop(b);
    let _b = serve(dir.path(), "ro", &ro);
    let err = qemu_refused(&img, false);
    assert!(err.contains("Failed to get \"write\" lock"), "{err}");
    let _q = start_qemu(&img, true);
}

#[test]
fn qemu_utils_and_the_backend_see_each_others_locks() {
    let found = Command::new("qemu-io").arg("--version").output().is_ok();
    if !found {
        eprintln!("qemu-io (qemu-utils) not found: test skipped");
        return;
    }
    let (dir, img, ro) = setup();
    let b = serve(dir.path(), "rw", arg(&img));
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512"])
        .arg(&img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Failed to get \"write\" lock"), "{err}");
    drop(b);

    // qemu-nbd serving the image read-write holds WRITE (byte 101).
    let nbd = dir.path().join("nbd.sock");
    let mut q = Qemu(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "-k", arg(&nbd), arg(&img)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !byte_locked(&img, 101) {
        assert!(q.0.try_wait().unwrap().is_none(), "qemu-nbd exited");
        assert!(start.elapsed() < TIMEOUT, "qemu-nbd took no lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    refused(dir.path(), arg(&img), RW_HELD);
    refused(dir.path(), &ro, RW_HELD);
}
