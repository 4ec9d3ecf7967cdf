//! The socket: created with mode 0600 before anyone can connect (see
//! [`crate::listen::bind`]), at most [`MAX_CONNECTIONS`] connections at once with one
//! thread each, one reply per request line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::commands::{error_reply, handle_line_with_target, CommandError};
use crate::faults::FaultEngine;
use crate::listen::{self, Backoff, BoundSocket, SocketError, Waker};
use crate::scsi::Target;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("could not start the control socket thread")]
    CouldNotSpawn(#[source] io::Error),
}

/// Longest request line; longer ones are refused (a client cannot make us buffer without end).
pub const MAX_LINE: usize = 64 * 1024;

/// Connections served at once; one more gets an error reply and is closed (each costs a
/// thread and two file descriptors).
pub const MAX_CONNECTIONS: usize = 16;

/// Names the control socket in errors and logs.
const WHAT: &str = "control socket";

/// The listener thread. Dropping it stops accepting and removes the socket file while it
/// is still this server's; open connections end when their clients close them.
#[derive(Debug)]
pub struct ControlServer {
    socket: BoundSocket,
    waker: Waker,
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
        let (listener, socket) = listen::bind(path, WHAT, true)?;
        let waker = Waker::new().map_err(ControlError::CouldNotSpawn)?;
        let thread = {
            let waker = waker.clone();
            std::thread::Builder::new()
                .name("fault-control".into())
                .spawn(move || accept_loop(&listener, &engine, target.as_ref(), &waker))
                .map_err(|e| {
                    socket.remove();
                    ControlError::CouldNotSpawn(e)
                })?
        };
        Ok(ControlServer {
            socket,
            waker,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// The socket file, for removing it at exit (destructors do not run there).
    pub fn socket(&self) -> &BoundSocket {
        &self.socket
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.socket.remove();
    }
}

fn accept_loop(
    listener: &UnixListener,
    engine: &Arc<Mutex<FaultEngine>>,
    target: Option<&Arc<Target>>,
    waker: &Waker,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut backoff = Backoff::new(WHAT);
    loop {
        match waker.wait(Some(listener.as_raw_fd()), None) {
            Ok(listen::Wait::Readable) => {}
            Ok(listen::Wait::TimedOut) => continue,
            Ok(listen::Wait::Woken) => return,
            Err(e) => {
                log::warn!("{WHAT}: cannot wait for connections: {e}");
                return;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                backoff.succeeded();
                serve_in_thread(stream, engine, target, &active);
            }
            Err(e) => {
                // No file descriptor left, say: the connection stays pending, so wait
                // before trying again (stopping at once when asked).
                let delay = backoff.failed(&format_args!("accept failed: {e}"));
                if waker
                    .wait(None, Some(delay))
                    .map_or(true, |w| w == listen::Wait::Woken)
                {
                    return;
                }
            }
        }
    }
}

/// Serves `stream` on a thread of its own, or refuses it with one error line when
/// [`MAX_CONNECTIONS`] are already served.
fn serve_in_thread(
    mut stream: UnixStream,
    engine: &Arc<Mutex<FaultEngine>>,
    target: Option<&Arc<Target>>,
    active: &Arc<AtomicUsize>,
) {
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::AcqRel);
        log::warn!("{WHAT}: refused a connection: {MAX_CONNECTIONS} are open");
        // A fresh socket's buffer takes one short line; never wait for a slow reader.
        let _ = stream.set_nonblocking(true);
        let mut line = error_reply(&CommandError::TooManyConnections).to_string();
        line.push('\n');
        let _ = stream.write_all(line.as_bytes());
        return;
    }
    let (engine, target, done) = (engine.clone(), target.cloned(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("fault-control-conn".into())
        .spawn(move || {
            if let Err(e) = serve_with_target(stream, &engine, target.as_deref()) {
                log::debug!("control connection ended: {e}");
            }
            done.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::AcqRel);
        log::warn!("{WHAT}: could not start a connection thread: {e}");
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
