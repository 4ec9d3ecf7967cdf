//! What the backend refuses at start-up, run as a user runs it: each refusal exits 2 with
//! one line on stderr and leaves every file as it was (issue 13 items 1, 2, 3, 6, 9, 13).

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{arg, assert_refused, image, run, snapshot, Backend};

#[test]
fn the_socket_path_is_never_a_file_that_exists() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.img");
    image(&img, 8 << 20);
    let before = snapshot(dir.path());
    // The reproduction: the image itself as the socket path.
    assert_refused(
        &["--socket-path", arg(&img), "--lun", arg(&img)],
        "vhost-user socket path",
    );
    // And as the control socket.
    let sock = dir.path().join("s.sock");
    assert_refused(
        &[
            "--socket-path",
            arg(&sock),
            "--lun",
            arg(&img),
            "--control-socket",
            arg(&img),
        ],
        "exists and is not a socket",
    );
    // A directory is no socket either.
    assert_refused(
        &["--socket-path", arg(dir.path()), "--lun", arg(&img)],
        "exists and is not a socket",
    );
    assert_eq!(snapshot(dir.path()), before);
}

/// A 1 MiB image t.img in `dir`, and the path s.sock there.
fn image_and_socket(dir: &Path) -> (PathBuf, PathBuf) {
    let img = dir.join("t.img");
    image(&img, 1 << 20);
    (img, dir.join("s.sock"))
}

/// Two 1 MiB images in `dir`, a.img and b.img, and the path `sock` there.
fn two_images(dir: &Path, sock: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    image(&a, 1 << 20);
    image(&b, 1 << 20);
    (a, b, dir.join(sock))
}

/// A backend serving `img` on `sock` (and `extra` arguments), logging to `log` in
/// `dir`, once its socket is there.
fn serve(dir: &Path, log: &str, sock: &Path, img: &Path, extra: &[&str]) -> Backend {
    let mut backend = Backend::spawn(
        &cat(&["--socket-path", arg(sock), "--lun", arg(img)], extra),
        &dir.join(log),
    );
    backend.wait_for_socket(sock);
    backend
}

#[test]
fn a_running_backends_socket_is_never_taken_over_nor_removed_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, sock) = two_images(dir.path(), "s.sock");
    let mut first = serve(dir.path(), "first.log", &sock, &a, &[]);
    let before = std::fs::symlink_metadata(&sock).unwrap();
    assert_refused(
        &["--socket-path", arg(&sock), "--lun", arg(&b)],
        "is in use by a running server",
    );
    let after = std::fs::symlink_metadata(&sock).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        before.ino(),
        after.ino(),
        "the first backend keeps its socket"
    );

    // Once the first one's socket is gone (removed by hand), a second backend binds the
    // path; the first one's exit must not remove the second one's socket.
    std::fs::remove_file(&sock).unwrap();
    let mut second = serve(dir.path(), "second.log", &sock, &b, &[]);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0));
    assert!(
        UnixStream::connect(&sock).is_ok(),
        "the second backend's socket stays"
    );
    second.signal(libc::SIGTERM);
    assert_eq!(second.wait_exit().code(), Some(0));
    assert!(!sock.exists(), "each backend removes its own socket");
}

#[test]
fn the_trace_never_clobbers_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let (img, sock) = image_and_socket(dir.path());
    let ctl = dir.path().join("c.sock");
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a trace\n").unwrap();
    let before = snapshot(dir.path());
    let base = ["--socket-path", arg(&sock), "--lun", arg(&img)];
    // The reproduction: the image as the trace.
    assert_refused(
        &cat(&base, &["--trace", arg(&img)]),
        "is the same file as --lun",
    );
    assert_refused(&cat(&base, &["--trace", arg(&notes)]), "is not a trace");
    assert_refused(
        &cat(&base, &["--trace", arg(&sock)]),
        "is the same file as --socket-path",
    );
    assert_refused(
        &cat(
            &base,
            &["--control-socket", arg(&ctl), "--trace", arg(&ctl)],
        ),
        "is the same file as --control-socket",
    );
    assert_refused(
        &cat(&base, &["--control-socket", arg(&sock)]),
        "--socket-path and --control-socket name the same socket",
    );
    // The same image twice, read-write.
    assert_refused(
        &[
            "--socket-path",
            arg(&sock),
            "--lun",
            arg(&img),
            "--lun",
            arg(&img),
        ],
        "the same image is given twice",
    );
    assert_eq!(snapshot(dir.path()), before);

    // A failure after the checks (an image that cannot be opened) leaves no trace file.
    let trace = dir.path().join("trace.jsonl");
    let missing = dir.path().join("missing.img");
    let out = run(&[
        "--socket-path",
        arg(&sock),
        "--lun",
        arg(&missing),
        "--trace",
        arg(&trace),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!trace.exists());
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn only_regular_files_and_block_devices_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(arg(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let listening = dir.path().join("other.sock");
    let _l = UnixListener::bind(&listening).unwrap();
    let before = snapshot(dir.path());
    let lun = |l: String, m: &str| run_refusal(&sock, &l, m);
    lun(format!("{},ro", arg(dir.path())), "is a directory");
    let start = Instant::now();
    lun(format!("{},ro", arg(&fifo)), "is a FIFO");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "a FIFO never hangs the open"
    );
    lun(format!("{},ro", arg(&listening)), "is a socket");
    lun("/dev/null".into(), "is a character device");
    assert_eq!(snapshot(dir.path()), before);

    // A partial last block is served without its tail, and said once.
    let img = dir.path().join("odd.img");
    image(&img, 4096 + 100);
    let mut b = Backend::spawn(
        &["--socket-path", arg(&sock), "--lun", arg(&img)],
        &dir.path().join("b.log"),
    );
    b.wait_for_socket(&sock);
    let log = b.log();
    assert!(log.contains("8 blocks of 512 bytes"), "{log}");
    assert_eq!(
        log.matches("its last 100 bytes are less than one block of 512 and are not served")
            .count(),
        1,
        "{log}"
    );
}

fn cat<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    [base, extra].concat()
}

fn run_refusal(sock: &std::path::Path, lun: &str, message: &str) {
    assert_refused(&["--socket-path", arg(sock), "--lun", lun], message);
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (img, sock) = (dir.path().join("d.img"), dir.path().join("s.sock"));
    image(&img, 1 << 20);
    let base = ["--socket-path", arg(&sock), "--lun", arg(&img)];
    assert_refused(
        &cat(&base, &["--num-queues", "0"]),
        "--num-queues must be between 1 and",
    );
    assert_refused(&cat(&base, &["--num-queues", "1000"]), "got 1000");
    assert_refused(
        &["--socket-path", arg(&sock)],
        "at least one --lun is needed",
    );
    let bad = format!("{},rox", arg(&img));
    assert_refused(
        &["--socket-path", arg(&sock), "--lun", &bad],
        "unknown option",
    );
    assert_refused(
        &["--socket-path", arg(&sock), "--lun", "mem:12Q"],
        "bad mem:SIZE",
    );
    let two = ["--lun", "0:1=mem:1M", "--lun", "0:1=mem:1M"];
    assert_refused(
        &[&["--socket-path", arg(&sock)][..], &two].concat(),
        "two LUNs at target 0 LUN 1",
    );
    assert!(!sock.exists());
}

#[test]
fn a_lun_path_may_hold_commas_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (img, sock) = (dir.path().join("a,b.img"), dir.path().join("s.sock"));
    image(&img, 1 << 20);
    let spec = format!("{},ro", arg(&img).replace(',', ",,"));
    let mut b = Backend::spawn(
        &["--socket-path", arg(&sock), "--lun", &spec],
        &dir.path().join("b.log"),
    );
    b.wait_for_socket(&sock);
    let log = b.log();
    assert!(
        log.contains("a,b.img: 2048 blocks of 512 bytes, read-only"),
        "{log}"
    );
}

/// A FIFO at `path`.
fn fifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path it is given.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn an_earlier_trace_outlives_a_socket_that_could_not_be_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (img, trace) = (dir.path().join("t.img"), dir.path().join("old.jsonl"));
    image(&img, 1 << 20);
    std::fs::write(&trace, "{\"t_us\":14,\"ev\":\"device-reset\"}\n").unwrap();
    let before = snapshot(dir.path());
    // Refused by the checks: no directory, or too long for sun_path.
    let nodir = dir.path().join("nodir/s");
    let long = dir.path().join("x".repeat(120));
    for (sock, message) in [(&nodir, "does not exist"), (&long, "sun_path holds 107")] {
        assert_refused(
            &[
                "--socket-path",
                arg(sock),
                "--lun",
                arg(&img),
                "--trace",
                arg(&trace),
            ],
            message,
        );
    }
    // A private control socket's temporary name must fit as well.
    let deep = dir
        .path()
        .join("d".repeat(100 - dir.path().as_os_str().len()));
    std::fs::create_dir(&deep).unwrap();
    let before_deep = snapshot(dir.path());
    let sock = dir.path().join("s.sock");
    assert_refused(
        &[
            "--socket-path",
            arg(&sock),
            "--lun",
            arg(&img),
            "--control-socket",
            arg(&deep.join("c")),
        ],
        "control socket path",
    );
    assert_eq!(snapshot(dir.path()), before_deep);
    std::fs::remove_dir(&deep).unwrap();
    // Passes the checks, fails at bind(2): the earlier trace is left as it was.
    let out = run(&[
        "--socket-path",
        "/proc/flakyhba-test.sock",
        "--lun",
        arg(&img),
        "--trace",
        arg(&trace),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The image was opened read-write (its probe for hole punching may touch its mtime):
    // its contents, and the trace as a whole, are what they were, and nothing was added.
    let after = snapshot(dir.path());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert_eq!(after[&trace], before[&trace]);
    assert_eq!(after[&img].3, before[&img].3);
}

#[test]
fn fifos_and_endless_files_never_hang_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (img, sock) = image_and_socket(dir.path());
    let f = dir.path().join("f.fifo");
    fifo(&f);
    let before = snapshot(dir.path());
    let base = ["--socket-path", arg(&sock), "--lun", arg(&img)];
    assert_refused(
        &cat(&base, &["--fault-plan", arg(&f)]),
        "not a regular file",
    );
    assert_refused(
        &cat(&base, &["--fault-plan", "/dev/zero"]),
        "not a regular file",
    );
    assert_refused(&cat(&base, &["--trace", arg(&f)]), "not a regular file");
    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(1 << 20))).unwrap();
    assert_refused(
        &cat(&base, &["--fault-plan", arg(&big)]),
        "is over 1048576 bytes",
    );
    std::fs::remove_file(&big).unwrap();
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_running_backends_trace_is_never_emptied_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, sock) = two_images(dir.path(), "a.sock");
    let trace = dir.path().join("t.jsonl");
    let mut first = serve(
        dir.path(),
        "first.log",
        &sock,
        &a,
        &["--trace", arg(&trace)],
    );
    // The first backend's trace, as if it had written a record.
    std::fs::write(&trace, "{\"t_us\":14,\"ev\":\"device-reset\"}\n").unwrap();
    assert_refused(
        &[
            "--socket-path",
            arg(&dir.path().join("b.sock")),
            "--lun",
            arg(&b),
            "--trace",
            arg(&trace),
        ],
        "is in use by another process",
    );
    assert_eq!(
        std::fs::read_to_string(&trace).unwrap(),
        "{\"t_us\":14,\"ev\":\"device-reset\"}\n"
    );
    assert!(!dir.path().join("b.sock").exists());
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0));
}

/// A non-blocking connect to `path`: whether the server's backlog took it.
fn connect_nonblocking(path: &std::path::Path) -> (libc::c_int, bool) {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied into sun_path within its
    // bounds (checked), and the socket is closed by the caller.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(bytes.len() < addr.sun_path.len());
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let rc = libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        (fd, rc == 0)
    }
}

#[test]
fn a_socket_whose_server_never_accepts_is_in_use_not_a_hang() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let (img, sock) = image_and_socket(dir.path());
    let listener = UnixListener::bind(&sock).unwrap();
    // SAFETY: listen(2) on the listener's own descriptor, to a backlog of none.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    // Connect until the backlog is full: a blocking connect would then wait for ever.
    let mut fds = Vec::new();
    loop {
        let (fd, taken) = connect_nonblocking(&sock);
        fds.push(fd);
        if !taken {
            break;
        }
        assert!(fds.len() < 64, "the backlog never filled");
    }
    assert_refused(
        &["--socket-path", arg(&sock), "--lun", arg(&img)],
        "is in use by a running server",
    );
    for fd in fds {
        // SAFETY: each descriptor was opened above and is closed once.
        unsafe { libc::close(fd) };
    }
}
