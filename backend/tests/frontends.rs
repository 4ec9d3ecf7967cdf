//! The backend's sockets under pressure (issue 13 items 5 and 12): a second vhost-user
//! frontend is refused at once while one is served, the control socket serves a bounded
//! number of connections, and running out of file descriptors neither spins nor ends
//! the backend.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::VhostBackend;

use common::{arg, connect, image, negotiate, Backend, TIMEOUT};

fn spawn(dir: &Path, extra: &[&str]) -> (Backend, PathBuf) {
    let (img, sock) = (dir.join("d.img"), dir.join("s.sock"));
    image(&img, 1 << 20);
    let args = [
        &["--socket-path", arg(&sock), "--lun", arg(&img)][..],
        extra,
    ]
    .concat();
    let mut b = Backend::spawn(&args, &dir.join("b.log"));
    b.wait_for_socket(&sock);
    (b, sock)
}

/// [`spawn`] with a control socket, once both sockets listen.
fn with_control(dir: &Path) -> (Backend, PathBuf, PathBuf) {
    let ctl = dir.join("c.sock");
    let (mut backend, sock) = spawn(dir, &["--control-socket", arg(&ctl)]);
    backend.wait_for_socket(&ctl);
    (backend, sock, ctl)
}

/// Whether the peer closes `stream` within `within`: EOF, or a reset when it left what we
/// sent unread.
fn closed_within(stream: &mut UnixStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn a_second_frontend_is_refused_while_one_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut backend, sock) = spawn(dir.path(), &[]);
    let mut first = connect(&sock);
    assert_eq!(negotiate(&mut first), 3);

    // A second QEMU would send its first request and wait for the answer.
    let start = Instant::now();
    let mut second = UnixStream::connect(&sock).unwrap();
    second
        .write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert!(
        closed_within(&mut second, Duration::from_secs(10)),
        "refused, not left waiting:\n{}",
        backend.log()
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let log = backend.log();
    assert_eq!(
        log.matches("refused a second frontend: one is already connected")
            .count(),
        1,
        "{log}"
    );
    // The first one is still served.
    first.get_features().unwrap();

    // Once it is gone, the next one is served, even when it connects at once.
    drop(first);
    let mut third = connect(&sock);
    assert_eq!(negotiate(&mut third), 3);
    drop(third);
    let mut fourth = connect(&sock);
    assert_eq!(negotiate(&mut fourth), 3);
    assert!(backend.running());
    assert_eq!(
        backend.log().matches("refused a second frontend").count(),
        1
    );
}

/// A control-socket connection that sends `list` and reads the reply.
fn control(path: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// The reply to `list`, empty when the connection was closed.
fn ask_list(c: &mut (UnixStream, BufReader<UnixStream>)) -> String {
    let mut line = String::new();
    if c.0.write_all(b"{\"cmd\":\"list\"}\n").is_ok() {
        let _ = c.1.read_line(&mut line);
    }
    line
}

#[test]
fn the_control_socket_serves_sixteen_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut backend, _sock, ctl) = with_control(dir.path());
    // Sixteen served connections. The probe that found the socket may still hold a
    // place for a moment: a connection refused meanwhile is tried again.
    let mut open = Vec::new();
    backend.wait_until(
        || {
            let mut c = control(&ctl);
            if ask_list(&mut c).contains("\"ok\":true") {
                open.push(c);
            }
            open.len() == 16
        },
        "sixteen served control connections",
    );
    let (mut s, mut r) = control(&ctl);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        "{\"error\":\"too many control connections: 16 are open; close one and try again\",\"ok\":false}\n"
    );
    assert!(closed_within(&mut s, TIMEOUT));
    // One closed, one more is served.
    drop(open.pop());
    backend.wait_until(
        || ask_list(&mut control(&ctl)).contains("\"ok\":true"),
        "a free control connection",
    );
}

/// The descriptor the process's next open would get: with its limit there, every open
/// (and accept) fails with EMFILE.
fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !used.contains(fd)).unwrap()
}

fn set_fd_limit(pid: u32, limit: u64) {
    let l = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit.max(4096),
    };
    // SAFETY: prlimit on our own child with a valid rlimit and a null old-limit pointer.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &l,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut backend, sock, ctl) = with_control(dir.path());
    // Past the probe of the vhost-user socket: the next device waits for a frontend.
    let log = dir.path().join("b.log");
    backend.wait_until(
        || backend_log(&log).matches("waiting for a frontend").count() >= 2,
        "the device for the next frontend",
    );
    let pid = backend.child.id();
    let mut held: Vec<_> = (0..3).map(|_| control(&ctl)).collect();
    for c in &mut held {
        assert!(ask_list(c).contains("\"ok\":true"));
    }
    // Not one descriptor more: every accept fails from here.
    set_fd_limit(pid, lowest_free_fd(pid));
    let _pending = UnixStream::connect(&ctl).unwrap();
    backend.wait_until(
        || backend_log(&log).contains("control socket: accept failed"),
        "a failed control accept",
    );
    // A frontend now cannot be accepted either; the backend must go on serving.
    let frontend = connect(&sock);
    backend.wait_until(
        || backend_log(&log).contains("vhost-user socket: accept failed"),
        "a failed frontend accept",
    );
    let failures = |log: &str| log.matches("accept failed").count();
    let before = failures(&backend.log());
    std::thread::sleep(Duration::from_secs(2));
    let during = failures(&backend.log()) - before;
    assert!(
        during <= 24,
        "{during} log lines in 2 s: no back-off\n{}",
        backend.log()
    );
    assert!(backend.running());

    // Descriptors free again: both waiting connections are served.
    drop(held);
    set_fd_limit(pid, 4096);
    // The frontend that connected meanwhile is served now, or was closed when it could
    // be accepted but not started: never left hanging.
    if let Err(e) = frontend.get_features() {
        let e = format!("{e:?}");
        assert!(!e.contains("WouldBlock") && !e.contains("TimedOut"), "{e}");
    }
    drop(frontend);
    let mut next = connect(&sock);
    assert_eq!(negotiate(&mut next), 3);
    let mut c = control(&ctl);
    assert!(ask_list(&mut c).contains("\"ok\":true"));
    assert!(backend.log().contains("accepting again after"));
}

fn backend_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
