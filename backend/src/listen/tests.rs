//! Binding never destroys a file or takes over a live socket, removal spares a socket
//! bound by someone else since, back-off doubles to its cap, and the refuser closes only
//! connections that wait longer than its grace.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::backoff::{FIRST_DELAY, MAX_DELAY};
use super::*;

const WHAT: &str = "test socket";

#[test]
fn a_file_or_a_live_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, b"precious").unwrap();
    assert!(matches!(
        bind(&image, WHAT, false),
        Err(SocketError::NotASocket { .. })
    ));
    assert!(matches!(
        check_free(&image, WHAT, false),
        Err(SocketError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&image).unwrap(), b"precious");
    // A directory is not a socket either.
    assert!(matches!(
        bind(dir.path(), WHAT, false),
        Err(SocketError::NotASocket { .. })
    ));

    let live = dir.path().join("live.sock");
    let (first_listener, first) = bind(&live, WHAT, false).unwrap();
    // Bound at its own name: /proc/net/unix (where the harness looks) shows the path.
    let addr = first_listener.local_addr().unwrap();
    assert_eq!(addr.as_pathname(), Some(live.as_path()));
    let err = bind(&live, WHAT, false).unwrap_err();
    assert!(matches!(err, SocketError::InUse { .. }), "{err}");
    assert!(err.is_refusal());
    assert!(first.is_ours(), "the running server keeps its socket");
    // Nothing but the two files is left in the directory (no temporary directory).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn a_stale_socket_is_replaced_and_a_private_one_is_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    drop(UnixListener::bind(&path).unwrap());
    check_free(&path, WHAT, false).unwrap();
    let (listener, bound) = bind(&path, WHAT, true).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(bound.is_ours());
    let _client = UnixStream::connect(&path).unwrap();
    assert!(listener.accept().is_ok());
    bound.remove();
    assert!(!path.exists());
}

#[test]
fn only_our_own_socket_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (first_listener, first) = bind(&path, WHAT, false).unwrap();
    // The first server goes away without removing its socket; a second one takes the
    // stale path over.
    drop(first_listener);
    let (_second_listener, second) = bind(&path, WHAT, false).unwrap();
    assert!(!first.is_ours());
    first.remove();
    assert!(path.exists(), "the second server's socket stays");
    assert!(second.is_ours());
    second.remove();
    assert!(!path.exists());
}

#[test]
fn backoff_doubles_up_to_its_cap_and_resets() {
    let mut b = Backoff::new(WHAT);
    let delays: Vec<Duration> = (0..12).map(|_| b.failed(&"EMFILE")).collect();
    assert_eq!(delays[0], FIRST_DELAY);
    assert_eq!(delays[1], FIRST_DELAY * 2);
    assert!(delays.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*delays.last().unwrap(), MAX_DELAY);
    b.succeeded();
    assert_eq!(b.failed(&"EMFILE"), FIRST_DELAY);
}

/// Whether the peer closed `stream` within `within`.
fn closed_within(stream: &mut UnixStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0))
}

#[test]
fn the_refuser_closes_a_waiting_connection_after_its_grace_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let (listener, _bound) = bind(&path, WHAT, false).unwrap();
    let grace = Duration::from_millis(200);

    let refuser = Refuser::start(listener.try_clone().unwrap(), WHAT, grace).unwrap();
    let start = Instant::now();
    let mut second = UnixStream::connect(&path).unwrap();
    assert!(closed_within(&mut second, Duration::from_secs(10)));
    assert!(start.elapsed() >= grace, "closed before the grace");
    drop(refuser);

    // Stopped within the grace: the waiting connection is left for the listener's owner.
    let refuser =
        Refuser::start(listener.try_clone().unwrap(), WHAT, Duration::from_secs(30)).unwrap();
    let mut next = UnixStream::connect(&path).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let stopped = Instant::now();
    drop(refuser);
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "stopping is prompt"
    );
    let (mut served, _) = listener.accept().unwrap();
    std::io::Write::write_all(&mut served, b"x").unwrap();
    let mut buf = [0u8; 1];
    next.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"x");
}
