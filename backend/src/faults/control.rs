//! The control socket (`--control-socket PATH`): JSON lines in, one JSON object out per
//! line. A bad line gets `{"ok":false,"error":...}` and the connection stays open.
//!
//! The socket is created with mode 0600 before anyone can connect: it is bound inside a
//! fresh directory of mode 0700 next to PATH, chmod-ed there, then renamed onto PATH.
//! (umask is process wide and would race with other threads; fchmod on a socket fd does
//! not change the file's mode.)

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::Deserialize;
use serde_json::{json, Value};

use super::engine::FaultEngine;
use super::plan::{FaultSpec, VirtioEvent};

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
    pub fn start(
        path: &Path,
        engine: Arc<Mutex<FaultEngine>>,
    ) -> Result<ControlServer, ControlError> {
        let listener = bind_private(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("fault-control".into())
                .spawn(move || accept_loop(listener, engine, stop))
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

fn accept_loop(listener: UnixListener, engine: Arc<Mutex<FaultEngine>>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                let engine = engine.clone();
                let spawned = std::thread::Builder::new()
                    .name("fault-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, &engine) {
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
            error_reply(format!("line longer than {MAX_LINE} bytes"))
        } else {
            match std::str::from_utf8(&buf) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => handle_line(engine, line),
                Err(_) => error_reply("line is not UTF-8".into()),
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

fn error_reply(message: String) -> Value {
    json!({ "ok": false, "error": message })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArg {
    id: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedArg {
    seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddArg {
    fault: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FireEventArg {
    event: String,
    target: Option<u8>,
    lun: Option<u16>,
    reason: Option<String>,
    asc: Option<u8>,
    ascq: Option<u8>,
}

fn lock(engine: &Mutex<FaultEngine>) -> MutexGuard<'_, FaultEngine> {
    // A panic elsewhere must not take the control socket down with it.
    engine
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn args<T: for<'de> Deserialize<'de>>(
    cmd: &str,
    obj: serde_json::Map<String, Value>,
) -> Result<T, String> {
    serde_json::from_value(Value::Object(obj)).map_err(|e| format!("command `{cmd}`: {e}"))
}

/// Handle one request line and return its reply. Never panics on any input.
pub fn handle_line(engine: &Mutex<FaultEngine>, line: &str) -> Value {
    match handle(engine, line) {
        Ok(reply) => reply,
        Err(message) => error_reply(message),
    }
}

fn handle(engine: &Mutex<FaultEngine>, line: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err("expected a JSON object like {\"cmd\":\"list\"}".into());
    };
    let cmd = match obj.remove("cmd") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("`cmd` must be a string".into()),
        None => return Err("missing `cmd`".into()),
    };
    let no_args = |obj: &serde_json::Map<String, Value>| match obj.keys().next() {
        Some(k) => Err(format!("command `{cmd}` takes no `{k}`")),
        None => Ok(()),
    };
    match cmd.as_str() {
        "list" => {
            no_args(&obj)?;
            let e = lock(engine);
            let faults: Vec<Value> = e
                .faults()
                .map(|f| {
                    json!({
                        "id": f.id,
                        "enabled": f.spec.enabled,
                        "kind": f.spec.action.kind().name(),
                        "seen": f.seen,
                        "fired": f.fired,
                        "fault": f.spec.raw.to_json(),
                    })
                })
                .collect();
            Ok(json!({
                "ok": true,
                "seed": e.seed(),
                "state": e.state(),
                "allow_corruption": e.allow_corruption(),
                "faults": faults,
            }))
        }
        "add" => {
            let a: AddArg = args(&cmd, obj)?;
            let mut e = lock(engine);
            let spec = FaultSpec::from_json(a.fault, e.allow_corruption()).map_err(|e| e.to_string())?;
            let id = e.add_fault(spec).map_err(|e| e.to_string())?;
            Ok(json!({ "ok": true, "id": id }))
        }
        "remove" => {
            let a: IdArg = args(&cmd, obj)?;
            lock(engine).remove_fault(a.id).map_err(|e| e.to_string())?;
            Ok(json!({ "ok": true }))
        }
        "enable" | "disable" => {
            let a: IdArg = args(&cmd, obj)?;
            lock(engine)
                .set_enabled(a.id, cmd == "enable")
                .map_err(|e| e.to_string())?;
            Ok(json!({ "ok": true }))
        }
        "seed" => {
            let a: SeedArg = args(&cmd, obj)?;
            lock(engine).set_seed(a.seed);
            Ok(json!({ "ok": true, "seed": a.seed }))
        }
        "stats" => {
            no_args(&obj)?;
            let stats = *lock(engine).stats();
            Ok(json!({ "ok": true, "stats": stats }))
        }
        "fire-event" => {
            let a: FireEventArg = args(&cmd, obj)?;
            let event = VirtioEvent::from_keys(&a.event, a.target, a.lun, a.reason.as_deref(), a.asc, a.ascq)
                .map_err(|e| e.to_string())?;
            lock(engine).queue_event(event);
            Ok(json!({ "ok": true, "queued": event.name() }))
        }
        "flush-trace" => {
            no_args(&obj)?;
            lock(engine).flush_trace().map_err(|e| e.to_string())?;
            Ok(json!({ "ok": true }))
        }
        other => Err(format!(
            "unknown command `{other}` (expected list, add, remove, enable, disable, seed, stats, fire-event or flush-trace)"
        )),
    }
}
