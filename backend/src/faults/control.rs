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
use crate::scsi::{Lun, LunAddress, LunSpec, LunSpecError, Target};

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
            error_reply(format!("line longer than {MAX_LINE} bytes"))
        } else {
            match std::str::from_utf8(&buf) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => handle_line_with_target(engine, target, line),
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
struct AddLunArg {
    /// `[T:L=]PATH[,ro][,block-size=N]`, as `--lun` takes it.
    lun: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LuArg {
    target: u8,
    lun: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeLunArg {
    target: u8,
    lun: u16,
    blocks: u64,
}

fn address_json(a: LunAddress) -> Value {
    json!({ "target": a.target, "lun": a.lun })
}

/// The LU commands: the transport announces each change on its event queue.
fn handle_lu(
    cmd: &str,
    target: &Target,
    obj: serde_json::Map<String, Value>,
) -> Result<Value, String> {
    match cmd {
        "add-lun" => {
            let a: AddLunArg = args(cmd, obj)?;
            let spec: LunSpec = a.lun.parse().map_err(|e: LunSpecError| e.to_string())?;
            let lu = Lun::open_spec(&spec).map_err(|e| error_chain(&e))?;
            let (name, blocks) = (lu.name().to_owned(), lu.blocks());
            let addr = target.add_lu(lu).map_err(|e| e.to_string())?;
            log::info!(
                "LU {name} added at {}:{}, {blocks} blocks",
                addr.target,
                addr.lun
            );
            Ok(json!({ "ok": true, "target": addr.target, "lun": addr.lun, "blocks": blocks }))
        }
        "remove-lun" => {
            let a: LuArg = args(cmd, obj)?;
            let addr = LunAddress {
                target: a.target,
                lun: a.lun,
            };
            let lu = target.remove_lu(addr).map_err(|e| e.to_string())?;
            log::info!("LU {} removed from {}:{}", lu.name(), a.target, a.lun);
            Ok(json!({ "ok": true }))
        }
        "resize-lun" => {
            let a: ResizeLunArg = args(cmd, obj)?;
            let addr = LunAddress {
                target: a.target,
                lun: a.lun,
            };
            target
                .set_capacity(addr, a.blocks)
                .map_err(|e| error_chain(&e))?;
            Ok(json!({ "ok": true, "blocks": a.blocks }))
        }
        _ => {
            // "rescan"
            if let Some(k) = obj.keys().next() {
                return Err(format!("command `{cmd}` takes no `{k}`"));
            }
            let (changed, failed) = target.rescan();
            let failed: Vec<Value> = failed
                .iter()
                .map(|(a, e)| {
                    let mut v = address_json(*a);
                    v["error"] = Value::String(error_chain(e));
                    v
                })
                .collect();
            let changed: Vec<Value> = changed.into_iter().map(address_json).collect();
            Ok(json!({ "ok": true, "changed": changed, "failed": failed }))
        }
    }
}

/// An error with its causes, on one line (a file that cannot be opened says why).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
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
    handle_line_with_target(engine, None, line)
}

/// [`handle_line`] with the LU commands acting on `target`.
pub fn handle_line_with_target(
    engine: &Mutex<FaultEngine>,
    target: Option<&Target>,
    line: &str,
) -> Value {
    match handle(engine, target, line) {
        Ok(reply) => reply,
        Err(message) => error_reply(message),
    }
}

fn handle(
    engine: &Mutex<FaultEngine>,
    target: Option<&Target>,
    line: &str,
) -> Result<Value, String> {
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
        "add-lun" | "remove-lun" | "resize-lun" | "rescan" => match target {
            Some(t) => handle_lu(&cmd, t, obj),
            None => Err(format!("command `{cmd}`: this control socket has no SCSI target")),
        },
        other => Err(format!(
            "unknown command `{other}` (expected list, add, remove, enable, disable, seed, stats, fire-event, flush-trace, add-lun, remove-lun, resize-lun or rescan)"
        )),
    }
}

#[cfg(test)]
mod lu_tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::faults::Plan;
    use crate::scsi::{LuChange, Lun};

    fn block_file(blocks: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(blocks * 512).unwrap();
        f
    }

    fn setup() -> (Mutex<FaultEngine>, Arc<Target>, tempfile::NamedTempFile) {
        let f = block_file(64);
        let target = Target::new(vec![Lun::open(f.path(), false).unwrap()]).unwrap();
        (
            Mutex::new(FaultEngine::new(Plan::default())),
            Arc::new(target),
            f,
        )
    }

    fn at(target: u8, lun: u16) -> LunAddress {
        LunAddress { target, lun }
    }

    #[test]
    fn add_remove_resize_and_rescan_change_the_target() {
        let (e, t, lu0) = setup();
        let send = |line: &str| handle_line_with_target(&e, Some(&t), line);
        let extra = block_file(32);
        let add = send(
            &json!({"cmd": "add-lun", "lun": format!("1:5={},ro", extra.path().display())})
                .to_string(),
        );
        assert_eq!(add["ok"], true, "{add}");
        assert_eq!(
            (add["target"].as_u64(), add["lun"].as_u64()),
            (Some(1), Some(5))
        );
        assert_eq!(add["blocks"], 32);
        let lu = t.lu(at(1, 5)).unwrap();
        assert!(lu.read_only());
        // Without an address: the next free LUN of target 0, with the block size asked.
        let big = block_file(64);
        let add = send(
            &json!({"cmd": "add-lun", "lun": format!("{},block-size=4096", big.path().display())})
                .to_string(),
        );
        assert_eq!(
            (add["target"].as_u64(), add["lun"].as_u64()),
            (Some(0), Some(1)),
            "{add}"
        );
        assert_eq!(t.lu(at(0, 1)).unwrap().block_size(), 4096);

        // A read-only backing cannot be resized.
        let resize = send(r#"{"cmd":"resize-lun","target":1,"lun":5,"blocks":48}"#);
        assert_eq!(resize["ok"], false, "{resize}");
        let resize = send(r#"{"cmd":"resize-lun","target":0,"lun":1,"blocks":12}"#);
        assert_eq!(resize["ok"], true, "{resize}");
        assert_eq!(t.lu(at(0, 1)).unwrap().blocks(), 12);
        assert_eq!(big.as_file().metadata().unwrap().len(), 12 * 4096);

        lu0.as_file().set_len(80 * 512).unwrap();
        let rescan = send(r#"{"cmd":"rescan"}"#);
        assert_eq!(rescan["ok"], true, "{rescan}");
        assert_eq!(rescan["changed"], json!([{"target": 0, "lun": 0}]));
        assert_eq!(rescan["failed"], json!([]));

        let remove = send(r#"{"cmd":"remove-lun","target":1,"lun":5}"#);
        assert_eq!(remove["ok"], true, "{remove}");
        assert!(t.lu(at(1, 5)).is_none());
        assert_eq!(
            t.take_changes(),
            vec![
                LuChange::Added(at(1, 5)),
                LuChange::Added(at(0, 1)),
                LuChange::CapacityChanged(at(0, 1)),
                LuChange::CapacityChanged(at(0, 0)),
                LuChange::Removed(at(1, 5)),
            ]
        );
    }

    #[test]
    fn bad_lu_commands_get_an_error_and_change_nothing() {
        let (e, t, _lu0) = setup();
        let file = block_file(8);
        let path = file.path().display().to_string();
        let bad = [
            // Unknown LU.
            r#"{"cmd":"remove-lun","target":0,"lun":9}"#.to_string(),
            r#"{"cmd":"resize-lun","target":3,"lun":0,"blocks":8}"#.to_string(),
            // Zero blocks.
            r#"{"cmd":"resize-lun","target":0,"lun":0,"blocks":0}"#.to_string(),
            // Bad syntax and bad types.
            r#"{"cmd":"add-lun","lun":"0:x=/nope"}"#.to_string(),
            format!(r#"{{"cmd":"add-lun","lun":"{path},block-size=1000"}}"#),
            r#"{"cmd":"add-lun","lun":""}"#.to_string(),
            r#"{"cmd":"add-lun"}"#.to_string(),
            r#"{"cmd":"add-lun","lun":5}"#.to_string(),
            r#"{"cmd":"remove-lun","target":"0","lun":0}"#.to_string(),
            r#"{"cmd":"remove-lun","target":0,"lun":0,"force":true}"#.to_string(),
            r#"{"cmd":"resize-lun","target":0,"lun":0,"blocks":-1}"#.to_string(),
            r#"{"cmd":"rescan","target":0}"#.to_string(),
            // No such file; an address already taken.
            r#"{"cmd":"add-lun","lun":"/nonexistent/flakyhba-lun"}"#.to_string(),
            format!(r#"{{"cmd":"add-lun","lun":"0:0={path}"}}"#),
        ];
        for line in &bad {
            let reply = handle_line_with_target(&e, Some(&t), line);
            assert_eq!(reply["ok"], false, "{line}: {reply}");
            assert!(
                reply["error"].as_str().is_some_and(|m| !m.is_empty()),
                "{line}"
            );
        }
        assert_eq!(t.lun_count(), 1);
        assert_eq!(t.lu(at(0, 0)).unwrap().blocks(), 64);
        assert!(t.take_changes().is_empty());
        // The reason reaches the client.
        let missing = handle_line_with_target(&e, Some(&t), &bad[12]);
        assert!(
            missing["error"].as_str().unwrap().contains("No such file"),
            "{missing}"
        );
        // A server without a target refuses the LU commands.
        let none = handle_line(&e, r#"{"cmd":"rescan"}"#);
        assert_eq!(none["ok"], false);
    }

    #[test]
    fn lu_commands_over_the_socket_keep_the_connection_open() {
        let (e, t, _lu0) = setup();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let _server =
            ControlServer::start_with_target(&path, Arc::new(e), Some(t.clone())).unwrap();
        let stream = UnixStream::connect(&path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        let mut roundtrip = |line: &str| {
            w.write_all(line.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
            let mut out = String::new();
            r.read_line(&mut out).unwrap();
            serde_json::from_str::<Value>(&out).unwrap()
        };
        let extra = block_file(16);
        assert_eq!(
            roundtrip(r#"{"cmd":"remove-lun","target":0,"lun":7}"#)["ok"],
            false
        );
        assert_eq!(
            roundtrip(r#"{"cmd":"add-lun","lun":"9:1:2=/x"}"#)["ok"],
            false
        );
        let add = roundtrip(
            &json!({"cmd": "add-lun", "lun": format!("0:3={}", extra.path().display())})
                .to_string(),
        );
        assert_eq!(add["ok"], true, "{add}");
        assert_eq!(
            roundtrip(r#"{"cmd":"resize-lun","target":0,"lun":3,"blocks":4}"#)["ok"],
            true
        );
        assert_eq!(
            roundtrip(r#"{"cmd":"remove-lun","target":0,"lun":3}"#)["ok"],
            true
        );
        assert_eq!(roundtrip(r#"{"cmd":"list"}"#)["ok"], true);
        assert_eq!(
            t.take_changes(),
            vec![
                LuChange::Added(at(0, 3)),
                LuChange::CapacityChanged(at(0, 3)),
                LuChange::Removed(at(0, 3)),
            ]
        );
    }
}
