//! The start-up checks of the paths a [`Config`] names, made before anything is created,
//! emptied or removed: the two sockets are distinct and free (absent, or a stale socket),
//! the trace is none of the other files and is new, empty or an earlier trace, and no
//! image is served twice with a writer. They only look (stat, read, connect); what
//! changed between the checks and the use is caught again where the file is used.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Config;
use crate::faults::{Trace, TraceError};
use crate::listen::{check_free, SocketError};
use crate::scsi::Backing;

/// Names the vhost-user socket in errors and logs.
pub const VHOST_USER_SOCKET: &str = "vhost-user socket";
/// Names the control socket in errors and logs.
pub const CONTROL_SOCKET: &str = "control socket";

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("--socket-path and --control-socket name the same socket {0}")]
    SameSocket(String),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("--trace {trace} is the same file as {other}")]
    TraceIsAnotherFile { trace: String, other: String },
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("--lun {0}: the same image is given twice, read-write at least once")]
    ImageTwice(String),
}

impl PathError {
    /// Whether the command line was refused, rather than a path unreadable.
    pub fn is_refusal(&self) -> bool {
        match self {
            PathError::Socket(e) => e.is_refusal(),
            PathError::Trace(e) => e.is_refusal(),
            _ => true,
        }
    }
}

/// Every check, in the order the errors are reported.
pub fn check(config: &Config) -> Result<(), PathError> {
    let socket = &config.socket_path;
    let control = config.faults.control_socket.as_deref();
    if let Some(c) = control {
        if same_file(socket, c) {
            return Err(PathError::SameSocket(socket.display().to_string()));
        }
    }
    check_free(socket, VHOST_USER_SOCKET, false)?;
    if let Some(c) = control {
        check_free(c, CONTROL_SOCKET, true)?;
    }
    let images: Vec<(&Path, bool)> = config
        .luns
        .iter()
        .filter_map(|l| match &l.backing {
            Backing::File(p) => Some((p.as_path(), l.read_only)),
            Backing::Memory(_) => None,
        })
        .collect();
    if let Some(trace) = config.faults.trace.as_deref() {
        let others = images
            .iter()
            .map(|(p, _)| ("--lun", *p))
            .chain([("--socket-path", socket.as_path())])
            .chain(control.map(|c| ("--control-socket", c)));
        for (flag, other) in others {
            if same_file(trace, other) {
                return Err(PathError::TraceIsAnotherFile {
                    trace: trace.display().to_string(),
                    other: format!("{flag} {}", other.display()),
                });
            }
        }
        Trace::check_path(trace)?;
    }
    for (i, (a, a_ro)) in images.iter().enumerate() {
        for (b, b_ro) in &images[i + 1..] {
            if !(*a_ro && *b_ro) && same_file(a, b) {
                return Err(PathError::ImageTwice(b.display().to_string()));
            }
        }
    }
    Ok(())
}

/// Whether two paths name one file: the same device and inode when both exist, else
/// the same absolute path.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => absolute(a) == absolute(b),
    }
}

/// `path` with its directory resolved (symbolic links and `..`), for a file that may not
/// exist yet.
fn absolute(path: &Path) -> PathBuf {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => return std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    };
    let dir = dir
        .canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_owned());
    dir.join(name)
}
