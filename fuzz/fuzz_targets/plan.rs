//! Fault plans from every source the backend accepts: a plan file, `--fault` shorthand
//! and control-socket lines (fault commands and the LU commands, on RAM-backed LUs).
//! Property: nothing about a plan panics the backend (issue 4). Each accepted plan runs
//! a fixed workload of commands, TMFs and an AN request through a device with that
//! engine (the checks of `flakyhba_fuzz::Device`: every request completed once or held,
//! valid responses), then drives the engine alone through arbitrary times. Also: every
//! accepted fault survives the round trip `list` relies on (its JSON form is accepted again
//! and means the same fault), shorthand that is valid without corruption stays valid with
//! it, and every control reply is `{"ok": bool, ...}` with an error message when not ok.
//!
//! Input: UTF-8 text whose first character picks the parser (by its value mod 3):
//! `0` plan file, `1` shorthand lines, `2` control-socket lines.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flakyhba_backend::args::{Args, Config};
use flakyhba_backend::control::handle_line_with_target;
use flakyhba_backend::faults::{
    DataDirection, FaultEngine, FaultSpec, Plan, RequestInfo, SignalOutcome, TickAction, TmfKind,
};
use flakyhba_backend::scsi::Backing;
use flakyhba_fuzz::{init_logging, run_workload, target};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The engine a control-socket session starts from: one fault of each request-driven
/// family, corruption allowed so that `add` can take every kind.
const BASE_PLAN: &str = r#"
seed = 7
allow_corruption = true

[[fault]]
kind = "drop-interrupt"
queue = "request"
every = 3

[[fault]]
kind = "slow-tmf"
tmf = "lu-reset"
duration_ms = 30

[[fault]]
kind = "spurious-interrupt"
interval_ms = 5
"#;

const OPCODES: [u8; 8] = [0x00, 0x03, 0x12, 0x28, 0x2a, 0x88, 0x8a, 0xa0];

/// Drives the engine alone the way the request path does, at times the device never
/// reaches in a fuzz run: commands, TMFs and AN requests on every queue, completions,
/// signals, ticks and a device reset, then a tick a year later.
fn exercise(engine: &mut FaultEngine) {
    let mut now = Duration::ZERO;
    for i in 0..48u16 {
        now += Duration::from_millis(u64::from(i % 7) * 3);
        let id = u64::from(i);
        let queue = i % 4;
        let lun = i % 3;
        let req = match i % 6 {
            4 => RequestInfo::tmf(0, id, TmfKind::from_virtio(u32::from(i % 10)), 0, lun),
            5 => RequestInfo::an(0, id, 0, lun),
            _ => {
                let opcode = OPCODES[usize::from(i) % OPCODES.len()];
                let dir = match opcode {
                    0x28 | 0x88 => DataDirection::Read,
                    0x2a | 0x8a => DataDirection::Write,
                    _ => DataDirection::None,
                };
                RequestInfo::command(queue, id, 0, lun, opcode)
                    .with_lba(u64::from(i) * 997, u64::from(i % 5))
                    .with_data(dir, u32::from(i) * 512)
            }
        };
        let decision = engine.on_request(&req, now);
        let signal = if decision.drop_interrupt {
            SignalOutcome::SuppressedByFault
        } else {
            SignalOutcome::Sent
        };
        let done = now.saturating_add(decision.delay);
        engine.record_complete(queue, id, "ok", Some(0), Some(0), done);
        engine.record_signal(queue, Some(id), signal, done);
        if let Some(due) = engine.next_due() {
            for action in engine.on_tick(due.max(now)) {
                if let TickAction::PostEvent(event) = action {
                    engine.record_event_posted(&event, now);
                }
            }
        }
        if i == 30 {
            engine.on_device_reset(now);
        }
    }
    // A very late tick: one opportunity, not one per period missed.
    let _ = engine.on_tick(Duration::from_secs(86_400 * 365));
}

/// The JSON form of an accepted fault (what `list` shows, and what a client adds again)
/// is accepted and is the same fault.
fn round_trips(spec: &FaultSpec, allow_corruption: bool) {
    let json = spec.raw.to_json();
    match FaultSpec::from_json(json.clone(), allow_corruption) {
        Ok(again) => assert_eq!(&again, spec, "{json} reads back as another fault"),
        Err(e) => panic!("accepted fault {json} is refused as JSON: {e}"),
    }
}

/// Whether a control line may run here: `add-lun` only with a RAM-backed LU, so that no
/// file of the machine is opened, resized or written.
fn harmless(line: &str) -> bool {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return true;
    };
    if obj.get("cmd").and_then(Value::as_str) != Some("add-lun") {
        return true;
    }
    let Some(lun) = obj.get("lun").and_then(Value::as_str) else {
        return true;
    };
    let args = Args {
        socket_path: PathBuf::from("unused"),
        luns: vec![lun.to_owned()],
        num_queues: 1,
        verbose: false,
        faults: Default::default(),
    };
    // Unparsable: add-lun refuses it before opening anything.
    Config::try_from(args).map_or(true, |c| matches!(c.luns[0].backing, Backing::Memory(_)))
}

fn run(engine: FaultEngine, target: flakyhba_backend::scsi::Target) {
    let engine = Arc::new(Mutex::new(engine));
    run_workload(engine.clone(), Arc::new(target));
    exercise(&mut engine.lock().expect("not poisoned"));
}

fuzz_target!(|data: &[u8]| {
    init_logging();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut chars = text.chars();
    let Some(selector) = chars.next() else {
        return;
    };
    let body = chars.as_str();
    match u32::from(selector) % 3 {
        0 => {
            if let Ok(plan) = Plan::from_toml_str(body) {
                for spec in &plan.faults {
                    round_trips(spec, plan.allow_corruption);
                }
                run(FaultEngine::new(plan), target(true));
            }
        }
        1 => {
            let mut plan = Plan {
                allow_corruption: true,
                ..Plan::default()
            };
            for line in body.lines() {
                let strict = FaultSpec::from_shorthand(line, false);
                match FaultSpec::from_shorthand(line, true) {
                    Ok(spec) => {
                        round_trips(&spec, true);
                        plan.push(spec).expect("corruption is allowed");
                    }
                    // Allowing corruption can only widen what is accepted.
                    Err(_) => assert!(
                        strict.is_err(),
                        "accepted without corruption only: {line:?}"
                    ),
                }
            }
            run(FaultEngine::new(plan), target(true));
        }
        _ => {
            let base = Plan::from_toml_str(BASE_PLAN).expect("the base plan is valid");
            let engine = Mutex::new(FaultEngine::new(base));
            let target = target(true);
            for line in body.lines().filter(|l| harmless(l)) {
                let reply = handle_line_with_target(&engine, Some(&target), line);
                let ok = reply.get("ok").and_then(Value::as_bool);
                assert!(ok.is_some(), "reply without a boolean `ok`: {reply}");
                if ok == Some(false) {
                    let error = reply.get("error").and_then(Value::as_str);
                    assert!(
                        error.is_some_and(|e| !e.is_empty()),
                        "refusal without an error message: {reply}"
                    );
                }
            }
            // What `list` shows can be added again as it is.
            let list = handle_line_with_target(&engine, None, r#"{"cmd":"list"}"#);
            let faults = list["faults"].as_array().expect("list has faults");
            let allow = list["allow_corruption"]
                .as_bool()
                .expect("allow_corruption");
            for f in faults {
                let spec = FaultSpec::from_json(f["fault"].clone(), allow);
                assert!(spec.is_ok(), "listed fault {f} is refused: {spec:?}");
            }
            run(engine.into_inner().expect("not poisoned"), target);
        }
    }
});
