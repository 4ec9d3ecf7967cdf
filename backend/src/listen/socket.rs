//! Binding a socket path: only an absent path or a stale socket (one that refuses
//! connections) is taken, by bind(2) or link(2), which never replace anything; a private
//! socket appears under its name only once its mode is 0600. At exit only the socket this
//! process bound is removed, recognised by its device and inode (held open, so that the
//! number is never another file's).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{what} path {path} exists and is not a socket")]
    NotASocket { what: &'static str, path: String },
    #[error("{what} {path} is in use by a running server")]
    InUse { what: &'static str, path: String },
    #[error("{what} path {path} needs {len} bytes of a socket address (with the temporary name of a private socket); sun_path holds {max}")]
    TooLong {
        what: &'static str,
        path: String,
        len: usize,
        max: usize,
    },
    #[error("{what} path {path}: the directory {dir} does not exist")]
    NoDirectory {
        what: &'static str,
        path: String,
        dir: String,
    },
    #[error("could not create the {what} {path}")]
    CouldNotBind {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl SocketError {
    /// Whether the path was refused (it is someone else's), rather than the socket not
    /// created.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, SocketError::CouldNotBind { .. })
    }
}

/// A file's identity: the same (device, inode) is the same file, whatever the path.
type Identity = (u64, u64);

/// The stale socket at `path`, if any: `Ok(None)` when the path is free.
fn probe(path: &Path, what: &'static str) -> Result<Option<Identity>, SocketError> {
    let name = || path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SocketError::CouldNotBind {
                what,
                path: name(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket { what, path: name() });
    }
    // Only a socket that refuses connections is stale. One that answers is a running
    // server's, and one we may not even try (another user's) is not provably stale. A
    // server whose backlog is full and that never accepts would hold a blocking connect
    // for ever: one that has not answered in a while counts as running.
    match connect_within(path, PROBE_TIMEOUT) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            Ok(Some((meta.dev(), meta.ino())))
        }
        Ok(_) => Err(SocketError::InUse { what, path: name() }),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(SocketError::InUse { what, path: name() })
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            Err(SocketError::InUse { what, path: name() })
        }
        Err(source) => Err(SocketError::CouldNotBind {
            what,
            path: name(),
            source,
        }),
    }
}

/// How long a probe waits for a socket to take or refuse its connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `UnixStream::connect` that gives up after `timeout` (TimedOut); the thread of a
/// connect that never returns is left to end with the process.
fn connect_within(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("socket-probe".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(&path));
        })?;
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// sun_path holds 108 bytes with the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// What [`bind_private`] adds to the directory for its temporary socket at most:
/// `/.fh` + a pid + `-` + a counter + `/s`.
const PRIVATE_TMP_EXTRA: usize = "/.fh".len() + 10 + 1 + 10 + "/s".len();

/// Whether [`bind`] may take `path`: its directory exists, the path (and a `private`
/// socket's temporary one) fits sun_path, and it is absent or a stale socket. Changes
/// nothing.
pub fn check_free(path: &Path, what: &'static str, private: bool) -> Result<(), SocketError> {
    let name = || path.display().to_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let len = path.as_os_str().len();
    let longest = if private {
        len.max(dir.as_os_str().len() + PRIVATE_TMP_EXTRA)
    } else {
        len
    };
    if longest > SUN_PATH_MAX {
        return Err(SocketError::TooLong {
            what,
            path: name(),
            len: longest,
            max: SUN_PATH_MAX,
        });
    }
    if !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Err(SocketError::NoDirectory {
            what,
            path: name(),
            dir: dir.display().to_string(),
        });
    }
    probe(path, what).map(drop)
}

/// Binds a listening socket at `path` (`what` names it in errors and logs). A stale socket
/// there is replaced; anything else is refused. A `private` socket has mode 0600 before
/// anyone can connect; otherwise the umask decides, as for any socket.
pub fn bind(
    path: &Path,
    what: &'static str,
    private: bool,
) -> Result<(UnixListener, BoundSocket), SocketError> {
    let bind_err = |source| SocketError::CouldNotBind {
        what,
        path: path.display().to_string(),
        source,
    };
    // Only the stale socket probed is removed: a file that took its place meanwhile stays.
    if let Some(stale) = probe(path, what)? {
        if identity(path) == Some(stale) {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(bind_err(e)),
                _ => {}
            }
        }
    }
    // bind(2) and link(2) never replace an existing file.
    let result = if private {
        bind_private(path)
    } else {
        UnixListener::bind(path).and_then(|l| Ok((l, pin(path)?)))
    };
    match result {
        Ok((listener, inode)) => Ok((
            listener,
            BoundSocket {
                path: path.to_owned(),
                inode: Arc::new(inode),
            },
        )),
        // Someone took the path between the probe and the bind: it is theirs.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::AddrInUse
            ) =>
        {
            Err(match probe(path, what) {
                Err(refused) => refused,
                Ok(_) => SocketError::InUse {
                    what,
                    path: path.display().to_string(),
                },
            })
        }
        Err(e) => Err(bind_err(e)),
    }
}

/// Binds inside a fresh directory of mode 0700 next to `path`, sets mode 0600 there
/// (umask is process wide and would race with other threads, and fchmod on a socket fd
/// does not change the file's mode), then links the socket onto `path`. The socket's own
/// address stays the temporary name.
fn bind_private(path: &Path) -> io::Result<(UnixListener, File)> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Short names: the temporary socket path must fit sun_path too.
    let dir = parent.join(format!(
        ".fh{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let tmp = dir.join("s");
    let result = UnixListener::bind(&tmp).and_then(|listener| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        let inode = pin(&tmp)?;
        std::fs::hard_link(&tmp, path)?;
        Ok((listener, inode))
    });
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    result
}

/// The socket file at `path` itself, held open (O_PATH) so that its inode is never
/// freed and its number never reused while we may still compare with it.
fn pin(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
}

fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The socket file this process bound, to be removed at exit while it is still ours.
#[derive(Clone, Debug)]
pub struct BoundSocket {
    path: PathBuf,
    /// Held open: a socket another process binds at the path later is another inode.
    inode: Arc<File>,
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file at the path is still the socket bound here.
    pub fn is_ours(&self) -> bool {
        let ours = self.inode.metadata().ok().map(|m| (m.dev(), m.ino()));
        ours.is_some() && identity(&self.path) == ours
    }

    /// Removes the socket file if it is still the one bound here: a socket another
    /// process bound at the same path since stays.
    pub fn remove(&self) {
        if self.is_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Wakes the threads that wait on a listener: once woken, every wait returns at once.
#[derive(Clone, Debug)]
pub struct Waker(Arc<EventFd>);

/// What a wait on a listener ended with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    Readable,
    Woken,
    TimedOut,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        EventFd::new(EFD_NONBLOCK).map(|e| Waker(Arc::new(e)))
    }

    pub fn wake(&self) {
        // The counter only grows; an overflow (never) would leave it readable anyway.
        let _ = self.0.write(1);
    }

    /// Waits until `fd` is readable, the waker is woken, or `timeout` passes (`None`:
    /// wait for ever; no `fd`: only the waker and the timeout).
    pub(crate) fn wait(&self, fd: Option<RawFd>, timeout: Option<Duration>) -> io::Result<Wait> {
        let mut fds = [
            libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
        });
        // SAFETY: `fds` is a valid array of two pollfd for the call's duration; a negative
        // fd is ignored by poll.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Wait::TimedOut)
            } else {
                Err(e)
            };
        }
        Ok(if fds[0].revents != 0 {
            Wait::Woken
        } else if fds[1].revents != 0 {
            Wait::Readable
        } else {
            Wait::TimedOut
        })
    }
}
