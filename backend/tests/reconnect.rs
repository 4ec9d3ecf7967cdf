//! Runs the built backend binary and talks vhost-user to it with the vhost crate's
//! frontend: a second frontend must be served after the first one disconnects.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use common::{negotiate, Served};

#[test]
fn second_frontend_is_served_after_first_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Served::spawn(dir.path(), &["--num-queues", "2"]);
    backend.wait_listening();

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
    let mut backend = Served::spawn(dir.path(), &[]);
    backend.wait_listening();
    let mut frontend = backend.connect();
    assert_eq!(negotiate(&mut frontend), 3);
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Served::spawn(dir.path(), &[]);
    backend.wait_listening();
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
