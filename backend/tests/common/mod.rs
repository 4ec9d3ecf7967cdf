//! What the tests that run the backend binary share: starting it, waiting for a path, its
//! log, and a snapshot of a directory to show that a refused start changed nothing.

#![allow(dead_code)] // Each test crate uses its own part.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-flakyhba"))
}

/// Runs the backend to its end (it must end by itself: a refusal).
pub fn run(args: &[&str]) -> Output {
    let mut child = command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("backend {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The backend refused to start: exit status 2 and one line on stderr, which contains
/// `message`.
pub fn assert_refused(args: &[&str], message: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(message), "{args:?}: {stderr}");
}

/// Every file below `dir` with its size, modification time and contents.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let data = if meta.is_file() {
            std::fs::read(&path).unwrap()
        } else if meta.is_dir() {
            out.extend(snapshot(&path));
            Vec::new()
        } else {
            Vec::new()
        };
        out.insert(path, (meta.ino(), meta.mtime(), meta.mtime_nsec(), data));
    }
    out
}

/// A path as a `&str` argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The backend running in the background; killed and reaped however the test ends.
pub struct Backend {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    /// Starts the backend with `args`, logging at debug level to `log`.
    pub fn spawn(args: &[&str], log: &Path) -> Backend {
        Backend::spawn_with(command().args(args), log)
    }

    pub fn spawn_with(command: &mut Command, log: &Path) -> Backend {
        let child = command
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Backend {
            child,
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until `path` accepts connections; fails early if the backend died.
    pub fn wait_for_socket(&mut self, path: &Path) {
        self.wait_until(|| UnixStream::connect(path).is_ok(), "its socket");
    }

    /// Polls until `done` holds; fails early if the backend died.
    pub fn wait_until(&mut self, mut done: impl FnMut() -> bool, what: &str) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "backend exited with {status} before {what}:\n{}",
                    self.log()
                );
            }
            if done() {
                return;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no {what} after {TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with the pid of our own child and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
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

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// A disk image of `bytes` bytes, each 512-byte block filled with its number.
pub fn image(path: &Path, bytes: usize) {
    let data: Vec<u8> = (0..bytes).map(|i| (i / 512) as u8).collect();
    std::fs::write(path, data).unwrap();
}

/// A vhost-user frontend on `socket`, with a read timeout so that a backend that stopped
/// serving shows as an error instead of a hung test.
pub fn connect(socket: &Path) -> vhost::vhost_user::Frontend {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    vhost::vhost_user::Frontend::from_stream(stream, 64)
}

/// Negotiates features as QEMU starts to, and returns the queue count.
pub fn negotiate(frontend: &mut vhost::vhost_user::Frontend) -> u64 {
    use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
    use vhost::VhostBackend;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

    let features = frontend.get_features().unwrap();
    assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
    assert_ne!(features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    frontend.set_owner().unwrap();
    let protocol = frontend.get_protocol_features().unwrap();
    assert!(
        protocol.contains(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::RESET_DEVICE)
    );
    frontend
        .set_protocol_features(VhostUserProtocolFeatures::MQ)
        .unwrap();
    frontend.get_queue_num().unwrap()
}

/// The backend serving a zeroed 1 MiB `disk.img` on `vhost.sock` in a directory; the
/// [`Backend`] otherwise.
pub struct Served {
    backend: Backend,
    pub socket: PathBuf,
}

impl std::ops::Deref for Served {
    type Target = Backend;

    fn deref(&self) -> &Backend {
        &self.backend
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Backend {
        &mut self.backend
    }
}

impl Served {
    /// Starts it in `dir` with `extra` flags, logging to `backend.log` there.
    pub fn spawn(dir: &Path, extra: &[&str]) -> Served {
        let socket = dir.join("vhost.sock");
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let args = [
            &["--socket-path", arg(&socket), "--lun", arg(&disk)][..],
            extra,
        ]
        .concat();
        let backend = Backend::spawn(&args, &dir.join("backend.log"));
        Served { backend, socket }
    }

    /// Polls until its vhost-user socket accepts connections.
    pub fn wait_listening(&mut self) {
        let socket = self.socket.clone();
        self.backend.wait_for_socket(&socket);
    }

    pub fn connect(&self) -> vhost::vhost_user::Frontend {
        connect(&self.socket)
    }
}
