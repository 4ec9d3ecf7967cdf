//! Runs the built backend binary and talks vhost-user to it with the vhost crate's
//! frontend: a second frontend must be served after the first one disconnects.

mod common;

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;

use common::negotiate;

const TIMEOUT: Duration = Duration::from_secs(20);

/// Kills and reaps the backend however the test ends.
struct Backend {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    fn spawn(dir: &Path, extra: &[&str]) -> Backend {
        let socket = dir.join("vhost.sock");
        let log = dir.join("backend.log");
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-flakyhba"))
            .arg("--socket-path")
            .arg(&socket)
            .arg("--lun")
            .arg(&disk)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Backend { child, socket, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until the socket accepts connections; fails early if the backend died.
    fn wait_for_socket(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "backend exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no socket after {TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn connect(&self) -> Frontend {
        let stream = UnixStream::connect(&self.socket).unwrap();
        // A backend that stopped serving shows as a timeout instead of a hung test.
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Frontend::from_stream(stream, 64)
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "backend did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn second_frontend_is_served_after_first_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::spawn(dir.path(), &["--num-queues", "2"]);
    backend.wait_for_socket();

    let mut first = backend.connect();
    assert_eq!(
        negotiate(&mut first),
        4,
        "control + event + 2 request queues"
    );
    drop(first);

    let mut second = backend.connect();
    assert_eq!(negotiate(&mut second), 4);
    drop(second);

    // And a third, after a connection that sent nothing at all.
    drop(backend.connect());
    let mut third = backend.connect();
    assert_eq!(negotiate(&mut third), 4);
    assert!(
        backend.child.try_wait().unwrap().is_none(),
        "backend still running"
    );
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // A socket an earlier run left behind (a file that is not a socket is refused: see
    // startup.rs).
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("vhost.sock")).unwrap());
    let mut backend = Backend::spawn(dir.path(), &[]);
    backend.wait_for_socket();
    let mut frontend = backend.connect();
    assert_eq!(negotiate(&mut frontend), 3);
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::spawn(dir.path(), &[]);
    backend.wait_for_socket();
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    let rc = unsafe { libc::kill(backend.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = backend.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "status {status:?} signal {:?}",
        status.signal()
    );
    assert!(!backend.socket.exists());
}

#[test]
fn missing_lun_file_exits_1_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-flakyhba"))
        .arg("--socket-path")
        .arg(dir.path().join("s.sock"))
        .arg("--lun")
        .arg(dir.path().join("absent.img"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not open LUN backing file"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{stderr}"
    );
}
