//! The hot-plug run (`linux --hotplug`): the guest prints `FLAKYHBA-WAIT <action>` and
//! polls sysfs; the harness does the action over the backend's control socket: add LUN 1,
//! remove it, grow LUN 0. The backend's trace must then hold exactly the three events
//! Linux acted on, and no lost one.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::launch::boot::{Boot, RunError};
use crate::launch::control::{self, Control};
use crate::launch::serial::SerialLine;

/// The marker of a request from the guest: `FLAKYHBA-WAIT <action>`.
pub const WAIT_MARKER: &str = "FLAKYHBA-WAIT ";
/// The LUN the run hot-adds (target 0) and the size of its image.
pub const ADDED_LUN: u16 = 1;
pub const ADDED_BYTES: u64 = 16 * 1024 * 1024;
/// What LUN 0 grows to (from `LINUX_DISK_BYTES`).
pub const RESIZED_BYTES: u64 = 288 * 1024 * 1024;
/// The image of the hot-added LUN, in the run directory.
pub const ADDED_IMAGE: &str = "lun1.img";
/// Bytes per block of both LUNs (the backend's default).
const BLOCK: u64 = 512;

/// What the guest asks for, in the order it asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    AddLun,
    RemoveLun,
    ResizeLun,
}

pub const ACTIONS: [Action; 3] = [Action::AddLun, Action::RemoveLun, Action::ResizeLun];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HotplugError {
    #[error("the guest asked for {asked} after {done} action(s); expected {expected}")]
    OutOfOrder {
        asked: &'static str,
        done: usize,
        expected: &'static str,
    },
    #[error("the backend's reply to {action} says {reply}; expected {expected}")]
    WrongReply {
        action: &'static str,
        reply: String,
        expected: String,
    },
    #[error("the trace has {found} event record(s), expected the {expected} of add, remove and resize:\n{records}")]
    Events {
        found: usize,
        expected: usize,
        records: String,
    },
    #[error("the trace has an unreadable line: {0}")]
    BadTrace(String),
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::AddLun => "add-lun",
            Action::RemoveLun => "remove-lun",
            Action::ResizeLun => "resize-lun",
        }
    }

    /// The action a serial line asks for; the kernel may print on the same console, so
    /// the marker is looked for anywhere in the line.
    pub fn parse(line: &SerialLine) -> Option<Action> {
        let SerialLine::Log(text) = line else {
            return None;
        };
        let rest = &text[text.find(WAIT_MARKER)? + WAIT_MARKER.len()..];
        ACTIONS
            .into_iter()
            .find(|a| rest.split_whitespace().next() == Some(a.name()))
    }

    /// The control-socket request, `image` being the hot-added LUN's file.
    pub fn request(self, image: &Path) -> Value {
        match self {
            Action::AddLun => control::add_lun_request(0, ADDED_LUN, image),
            Action::RemoveLun => control::remove_lun_request(0, ADDED_LUN),
            Action::ResizeLun => control::resize_lun_request(0, 0, RESIZED_BYTES / BLOCK),
        }
    }

    /// Checks the backend did what was asked (docs/fault-plan.md's replies).
    pub fn check(self, reply: &Map<String, Value>) -> Result<(), HotplugError> {
        let want = match self {
            Action::AddLun => {
                json!({"ok": true, "target": 0, "lun": ADDED_LUN, "blocks": ADDED_BYTES / BLOCK})
            }
            Action::RemoveLun => json!({"ok": true}),
            Action::ResizeLun => json!({"ok": true, "blocks": RESIZED_BYTES / BLOCK}),
        };
        let Value::Object(want) = want else {
            unreachable!("json! of an object")
        };
        if want.iter().all(|(k, v)| reply.get(k) == Some(v)) {
            Ok(())
        } else {
            Err(HotplugError::WrongReply {
                action: self.name(),
                reply: Value::Object(reply.clone()).to_string(),
                expected: Value::Object(want).to_string(),
            })
        }
    }

    /// The trace record of the event that announces this action (`event`, `target`,
    /// `lun`, `detail`): the LUN of a TRANSPORT_RESET, and LUN 0's capacity change.
    fn event(self) -> Value {
        let (event, lun, detail) = match self {
            Action::AddLun => ("transport-reset", ADDED_LUN, "rescan"),
            Action::RemoveLun => ("transport-reset", ADDED_LUN, "removed"),
            Action::ResizeLun => ("param-change", 0, "0x2a/0x09"),
        };
        json!({"ev": "event", "event": event, "target": 0, "lun": lun, "detail": detail})
    }
}

/// The kernel command line switches of /init's hot-plug part: the sizes it must see.
pub fn kernel_switches() -> String {
    format!(
        "flakyhba.hotadd={} flakyhba.resize={}",
        ADDED_BYTES / BLOCK,
        RESIZED_BYTES / BLOCK
    )
}

/// Answers the guest's markers until its result line, each action over the control
/// socket at `control` (connected at the first marker), then has the backend write out
/// its trace. Returns the actions done, in order.
pub fn drive(
    boot: &mut Boot,
    control: &Path,
    image: &Path,
    deadline: Instant,
) -> Result<Vec<Action>, RunError> {
    let mut ctl: Option<Control> = None;
    let mut done = Vec::new();
    loop {
        let line = boot.wait_for_line(
            "a hot-plug marker or the result line",
            |l| l.result().is_some() || Action::parse(l).is_some(),
            deadline,
        )?;
        let Some(action) = Action::parse(&line) else {
            break;
        };
        let expected = ACTIONS.get(done.len()).copied();
        if expected != Some(action) {
            return Err(RunError::fail(HotplugError::OutOfOrder {
                asked: action.name(),
                done: done.len(),
                expected: expected.map_or("none", Action::name),
            }));
        }
        let ctl = match &mut ctl {
            Some(c) => c,
            None => ctl.insert(Control::connect(control, deadline)?),
        };
        let request = action.request(image);
        let reply = ctl.request(&request)?;
        println!("hotplug: {request} -> {}", Value::Object(reply.clone()));
        action.check(&reply).map_err(RunError::fail)?;
        done.push(action);
    }
    if let Some(ctl) = &mut ctl {
        ctl.request(&json!({"cmd": "flush-trace"}))?;
    }
    Ok(done)
}

/// The trace's event records (`event` and `event-lost`), which must be exactly those of
/// [`ACTIONS`], in order. Returns their lines.
pub fn judge_events(trace: &str) -> Result<Vec<String>, HotplugError> {
    let mut records = Vec::new();
    for line in trace.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| HotplugError::BadTrace(format!("{e}: {line}")))?;
        if matches!(
            value.get("ev").and_then(Value::as_str),
            Some("event" | "event-lost")
        ) {
            records.push((line.to_owned(), value));
        }
    }
    let matches = records.len() == ACTIONS.len()
        && records.iter().zip(ACTIONS).all(|((_, got), action)| {
            let Value::Object(want) = action.event() else {
                unreachable!("json! of an object")
            };
            want.iter().all(|(k, v)| got.get(k) == Some(v))
        });
    let lines: Vec<String> = records.into_iter().map(|(line, _)| line).collect();
    if matches {
        Ok(lines)
    } else {
        Err(HotplugError::Events {
            found: lines.len(),
            expected: ACTIONS.len(),
            records: lines.join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(text: &str) -> SerialLine {
        SerialLine::parse(text)
    }

    #[test]
    fn markers_parse_even_behind_kernel_output() {
        assert_eq!(
            Action::parse(&log("FLAKYHBA-WAIT add-lun")),
            Some(Action::AddLun)
        );
        assert_eq!(
            Action::parse(&log("[ 4.2] sd 0:0:0:0: attachedFLAKYHBA-WAIT resize-lun")),
            Some(Action::ResizeLun)
        );
        assert_eq!(Action::parse(&log("FLAKYHBA-WAIT remove")), None);
        assert_eq!(Action::parse(&log("FLAKYHBA-WAIT add-lunx")), None);
        assert_eq!(Action::parse(&log("+ echo add-lun")), None);
        assert_eq!(Action::parse(&log(r#"{"result":"pass"}"#)), None);
    }

    #[test]
    fn requests_are_the_control_sockets_and_replies_are_checked() {
        let image = Path::new("/run/d/lun1.img");
        assert_eq!(
            Action::AddLun.request(image).to_string(),
            r#"{"cmd":"add-lun","lun":"0:1=/run/d/lun1.img"}"#
        );
        assert_eq!(
            Action::ResizeLun.request(image).to_string(),
            r#"{"blocks":589824,"cmd":"resize-lun","lun":0,"target":0}"#
        );
        let map = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let ok = map(json!({"ok": true, "target": 0, "lun": 1, "blocks": 32768}));
        assert_eq!(Action::AddLun.check(&ok), Ok(()));
        let elsewhere = map(json!({"ok": true, "target": 0, "lun": 2, "blocks": 32768}));
        assert!(matches!(
            Action::AddLun.check(&elsewhere),
            Err(HotplugError::WrongReply {
                action: "add-lun",
                ..
            })
        ));
        assert!(Action::ResizeLun
            .check(&map(json!({"ok": true, "blocks": 4096})))
            .is_err());
        assert_eq!(
            kernel_switches(),
            "flakyhba.hotadd=32768 flakyhba.resize=589824"
        );
    }

    const ADD: &str = r#"{"t_us":10,"ev":"event","event":"transport-reset","target":0,"lun":1,"detail":"rescan"}"#;
    const REMOVE: &str = r#"{"t_us":20,"ev":"event","event":"transport-reset","target":0,"lun":1,"detail":"removed"}"#;
    const RESIZE: &str = r#"{"t_us":30,"ev":"event","event":"param-change","target":0,"lun":0,"detail":"0x2a/0x09"}"#;
    const OTHER: &str = r#"{"t_us":5,"ev":"complete","queue":2}"#;

    #[test]
    fn the_trace_must_hold_exactly_the_three_events_in_order() {
        let trace = [OTHER, ADD, OTHER, REMOVE, RESIZE, ""].join("\n");
        assert_eq!(
            judge_events(&trace),
            Ok(vec![ADD.into(), REMOVE.into(), RESIZE.into()])
        );
        let lost = ADD.replace(r#""ev":"event""#, r#""ev":"event-lost""#);
        for bad in [
            vec![ADD, REMOVE],
            vec![REMOVE, ADD, RESIZE],
            vec![ADD, REMOVE, RESIZE, RESIZE],
            vec![&lost, REMOVE, RESIZE],
            vec![&ADD.replace(r#""lun":1"#, r#""lun":16385"#), REMOVE, RESIZE],
        ] {
            let err = judge_events(&bad.join("\n")).unwrap_err();
            assert!(matches!(err, HotplugError::Events { .. }), "{bad:?}: {err}");
        }
        assert!(matches!(
            judge_events("{not json"),
            Err(HotplugError::BadTrace(_))
        ));
    }
}
