//! The commands: one JSON object per request line, `{"cmd": NAME, ...arguments}`, and one
//! JSON object as its reply. The fault commands act on the engine, the LU commands on the
//! SCSI target (the transport announces each change on its event queue).

use std::sync::{Mutex, MutexGuard};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::errors::error_chain;
use crate::faults::plan::KeyError;
use crate::faults::VirtioEvent;
use crate::faults::{EngineError, FaultEngine, FaultSpec, PlanError, TraceError};
use crate::scsi::{Lun, LunAddress, LunSpec, LunSpecError, ScsiError, Target};

/// Why a request line got `{"ok":false,"error":...}`; the message is the reply's `error`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("line longer than {} bytes", super::MAX_LINE)]
    LineTooLong,
    #[error(
        "too many control connections: {} are open; close one and try again",
        super::MAX_CONNECTIONS
    )]
    TooManyConnections,
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("expected a JSON object like {{\"cmd\":\"list\"}}")]
    NotAnObject,
    #[error("`cmd` must be a string")]
    CmdNotAString,
    #[error("missing `cmd`")]
    MissingCmd,
    #[error("unknown command `{0}` (expected list, add, remove, enable, disable, seed, stats, fire-event, flush-trace, add-lun, remove-lun, resize-lun or rescan)")]
    UnknownCommand(String),
    #[error("command `{cmd}` takes no `{key}`")]
    UnexpectedArgument { cmd: String, key: String },
    #[error("command `{cmd}`: {error}")]
    BadArguments {
        cmd: String,
        error: serde_json::Error,
    },
    #[error("command `{0}`: this control socket has no SCSI target")]
    NoTarget(String),
    #[error(transparent)]
    InvalidFault(PlanError),
    #[error(transparent)]
    Engine(EngineError),
    #[error("{0}")]
    InvalidEvent(KeyError),
    #[error("{}", error_chain(.0))]
    CouldNotFlushTrace(TraceError),
    #[error(transparent)]
    InvalidLun(LunSpecError),
    /// Opening a LU says why the file could not be opened: the whole cause chain.
    #[error("{}", error_chain(.0))]
    CouldNotOpenLu(ScsiError),
    #[error(transparent)]
    CouldNotAddLu(ScsiError),
    #[error(transparent)]
    CouldNotRemoveLu(ScsiError),
    #[error("{}", error_chain(.0))]
    CouldNotResizeLu(ScsiError),
}

/// The reply to a request that failed.
pub(super) fn error_reply(e: &CommandError) -> Value {
    json!({ "ok": false, "error": e.to_string() })
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
        Err(e) => error_reply(&e),
    }
}

fn handle(
    engine: &Mutex<FaultEngine>,
    target: Option<&Target>,
    line: &str,
) -> Result<Value, CommandError> {
    let value: Value = serde_json::from_str(line).map_err(CommandError::NotJson)?;
    let Value::Object(mut obj) = value else {
        return Err(CommandError::NotAnObject);
    };
    let cmd = match obj.remove("cmd") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(CommandError::CmdNotAString),
        None => return Err(CommandError::MissingCmd),
    };
    match cmd.as_str() {
        "add-lun" | "remove-lun" | "resize-lun" | "rescan" => match target {
            Some(t) => lu_command(&cmd, t, obj),
            None => Err(CommandError::NoTarget(cmd)),
        },
        _ => fault_command(&cmd, engine, obj),
    }
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

/// The commands that read or change the fault engine.
fn fault_command(
    cmd: &str,
    engine: &Mutex<FaultEngine>,
    obj: Map<String, Value>,
) -> Result<Value, CommandError> {
    match cmd {
        "list" => {
            no_args(cmd, &obj)?;
            Ok(list(&lock(engine)))
        }
        "add" => {
            let a: AddArg = args(cmd, obj)?;
            let mut e = lock(engine);
            let spec = FaultSpec::from_json(a.fault, e.allow_corruption())
                .map_err(CommandError::InvalidFault)?;
            let id = e.add_fault(spec).map_err(CommandError::Engine)?;
            Ok(json!({ "ok": true, "id": id }))
        }
        "remove" => {
            let a: IdArg = args(cmd, obj)?;
            lock(engine)
                .remove_fault(a.id)
                .map_err(CommandError::Engine)?;
            Ok(json!({ "ok": true }))
        }
        "enable" | "disable" => {
            let a: IdArg = args(cmd, obj)?;
            lock(engine)
                .set_enabled(a.id, cmd == "enable")
                .map_err(CommandError::Engine)?;
            Ok(json!({ "ok": true }))
        }
        "seed" => {
            let a: SeedArg = args(cmd, obj)?;
            lock(engine).set_seed(a.seed);
            Ok(json!({ "ok": true, "seed": a.seed }))
        }
        "stats" => {
            no_args(cmd, &obj)?;
            let stats = *lock(engine).stats();
            Ok(json!({ "ok": true, "stats": stats }))
        }
        "fire-event" => {
            let a: FireEventArg = args(cmd, obj)?;
            let event = VirtioEvent::from_keys(
                &a.event,
                a.target,
                a.lun,
                a.reason.as_deref(),
                a.asc,
                a.ascq,
            )
            .map_err(CommandError::InvalidEvent)?;
            lock(engine)
                .queue_event(event)
                .map_err(CommandError::Engine)?;
            Ok(json!({ "ok": true, "queued": event.name() }))
        }
        "flush-trace" => {
            no_args(cmd, &obj)?;
            lock(engine)
                .flush_trace()
                .map_err(CommandError::CouldNotFlushTrace)?;
            Ok(json!({ "ok": true }))
        }
        other => Err(CommandError::UnknownCommand(other.to_owned())),
    }
}

/// The reply to `list`: the seed, the state and every fault with its counters.
fn list(e: &FaultEngine) -> Value {
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
    json!({
        "ok": true,
        "seed": e.seed(),
        "state": e.state(),
        "allow_corruption": e.allow_corruption(),
        "faults": faults,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLunArg {
    /// `[T:L=]PATH[,ro][,block-size=N][,sense=F]`, as `--lun` takes it.
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
fn lu_command(cmd: &str, target: &Target, obj: Map<String, Value>) -> Result<Value, CommandError> {
    match cmd {
        "add-lun" => {
            let a: AddLunArg = args(cmd, obj)?;
            let spec: LunSpec = a.lun.parse().map_err(CommandError::InvalidLun)?;
            let lu = Lun::open_spec(&spec).map_err(CommandError::CouldNotOpenLu)?;
            let (name, blocks) = (lu.name().to_owned(), lu.blocks());
            let addr = target.add_lu(lu).map_err(CommandError::CouldNotAddLu)?;
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
            let lu = target
                .remove_lu(addr)
                .map_err(CommandError::CouldNotRemoveLu)?;
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
                .map_err(CommandError::CouldNotResizeLu)?;
            Ok(json!({ "ok": true, "blocks": a.blocks }))
        }
        _ => {
            // "rescan"
            no_args(cmd, &obj)?;
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

fn lock(engine: &Mutex<FaultEngine>) -> MutexGuard<'_, FaultEngine> {
    // A panic elsewhere must not take the control socket down with it.
    engine
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The arguments of `cmd` (the request without its `cmd`).
fn args<T: for<'de> Deserialize<'de>>(
    cmd: &str,
    obj: Map<String, Value>,
) -> Result<T, CommandError> {
    serde_json::from_value(Value::Object(obj)).map_err(|error| CommandError::BadArguments {
        cmd: cmd.to_owned(),
        error,
    })
}

/// A command that takes no arguments got none.
fn no_args(cmd: &str, obj: &Map<String, Value>) -> Result<(), CommandError> {
    match obj.keys().next() {
        Some(k) => Err(CommandError::UnexpectedArgument {
            cmd: cmd.to_owned(),
            key: k.clone(),
        }),
        None => Ok(()),
    }
}
