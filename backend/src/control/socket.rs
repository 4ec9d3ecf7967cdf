//! The socket: created with mode 0600 before anyone can connect (bound inside a fresh
//! directory of mode 0700 next to PATH, chmod-ed there, then renamed onto PATH; umask is
//! process wide and would race with other threads, and fchmod on a socket fd does not
//! change the file's mode), one thread per connection, one reply per request line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::commands::{error_reply, handle_line_with_target, CommandError};
use crate::faults::FaultEngine;
use crate::scsi::Target;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("could not create the control socket {path}: {source}")]
    CouldNotBind {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("control socket path {0} exists and is not a socket")]
    NotASocket(String),
    #[error("control socket {0} is in use by a running server")]
    InUse(String),
    #[error("could not start the control socket thread: {0}")]
    CouldNotSpawn(#[source] io::Error),
}

/// Longest request line; longer ones are refused (a client cannot make us buffer without end).
pub const MAX_LINE: usize = 64 * 1024;

/// The listener thread. Dropping it stops accepting and removes the socket file; open
/// connections end when their clients close them.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// A server for the fault commands only (the LU commands answer an error).
    pub fn start(
        path: &Path,
        engine: Arc<Mutex<FaultEngine>>,
    ) -> Result<ControlServer, ControlError> {
        Self::start_with_target(path, engine, None)
    }

    /// A server that also adds, removes and resizes the LUs of `target`.
    pub fn start_with_target(
        path: &Path,
        engine: Arc<Mutex<FaultEngine>>,
        target: Option<Arc<Target>>,
    ) -> Result<ControlServer, ControlError> {
        let listener = bind_private(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("fault-control".into())
                .spawn(move || accept_loop(listener, engine, target, stop))
                .map_err(ControlError::CouldNotSpawn)?
        };
        Ok(ControlServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it sees the flag and returns. If the socket file is
        // gone we cannot wake it, so leave the thread detached rather than hang here.
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(t) = self.thread.take().filter(|_| woke) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind_private(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::CouldNotBind {
        path: path.display().to_string(),
        source,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(ControlError::NotASocket(path.display().to_string()));
        }
        // A socket nobody answers on is stale (an earlier run) and gets replaced.
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.display().to_string()));
        }
    }
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
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(bind_err)?;
    let tmp = dir.join("s");
    let result = UnixListener::bind(&tmp)
        .and_then(|l| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            // Replaces a stale socket left by an earlier run, atomically.
            std::fs::rename(&tmp, path)?;
            Ok(l)
        })
        .map_err(bind_err);
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    result
}

fn accept_loop(
    listener: UnixListener,
    engine: Arc<Mutex<FaultEngine>>,
    target: Option<Arc<Target>>,
    stop: Arc<AtomicBool>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                let engine = engine.clone();
                let target = target.clone();
                let spawned = std::thread::Builder::new()
                    .name("fault-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve_with_target(stream, &engine, target.as_deref()) {
                            log::debug!("control connection ended: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    log::warn!("control socket: could not start a connection thread: {e}");
                }
            }
            Err(e) => log::warn!("control socket: accept failed: {e}"),
        }
    }
}

/// Serve one connection until EOF.
pub fn serve(stream: UnixStream, engine: &Mutex<FaultEngine>) -> io::Result<()> {
    serve_with_target(stream, engine, None)
}

/// Serve one connection until EOF; LU commands act on `target`.
pub fn serve_with_target(
    stream: UnixStream,
    engine: &Mutex<FaultEngine>,
    target: Option<&Target>,
) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if buf.last() != Some(&b'\n') && n > MAX_LINE {
            skip_line(&mut reader)?;
            error_reply(&CommandError::LineTooLong)
        } else {
            match std::str::from_utf8(&buf) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => handle_line_with_target(engine, target, line),
                Err(_) => error_reply(&CommandError::NotUtf8),
            }
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        writer.write_all(&out)?;
    }
}

/// Drop the rest of an overlong line without buffering it.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                reader.consume(pos + 1);
                return Ok(());
            }
            None => {
                let len = chunk.len();
                reader.consume(len);
            }
        }
    }
}
