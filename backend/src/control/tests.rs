//! The control socket's commands and server: fault commands, LU commands, and the socket
//! itself (mode, stale and live sockets, bad lines).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::faults::tests::{engine, ms, read, write};
use crate::faults::{Completion, FaultEngine, Plan, TickAction, VirtioEvent};
use crate::listen::SocketError;
use crate::scsi::{LuChange, Lun, LunAddress, Target};

// ---- fault commands and the socket ----

fn shared(text: &str) -> Arc<Mutex<FaultEngine>> {
    Arc::new(Mutex::new(engine(text)))
}

fn reply(e: &Mutex<FaultEngine>, line: &str) -> serde_json::Value {
    let v = handle_line(e, line);
    assert!(v.is_object() && v["ok"].is_boolean(), "{line} -> {v}");
    v
}

#[test]
fn control_commands() {
    let e = shared("seed = 3\n[[fault]]\nname = \"irq\"\nkind = \"drop-interrupt\"\nevery = 2\n");
    let v = reply(&e, r#"{"cmd":"list"}"#);
    assert_eq!(v["ok"], true);
    assert_eq!(v["seed"], 3);
    assert_eq!(v["faults"][0]["id"], 1);
    assert_eq!(
        v["faults"][0]["fault"],
        serde_json::json!({"kind":"drop-interrupt","name":"irq","every":2})
    );

    let v = reply(
        &e,
        r#"{"cmd":"add","fault":{"kind":"lose","opcode":"write-10","times":1}}"#,
    );
    assert_eq!((v["ok"].clone(), v["id"].clone()), (true.into(), 2.into()));
    assert_eq!(
        e.lock().unwrap().on_request(&write(1, 0), ms(0)).completion,
        Completion::Lose
    );

    assert_eq!(reply(&e, r#"{"cmd":"disable","id":1}"#)["ok"], true);
    assert!(
        !e.lock()
            .unwrap()
            .on_request(&read(2, 0), ms(0))
            .drop_interrupt
    );
    assert!(
        !e.lock()
            .unwrap()
            .on_request(&read(3, 0), ms(0))
            .drop_interrupt
    );
    assert_eq!(reply(&e, r#"{"cmd":"enable","id":1}"#)["ok"], true);
    assert_eq!(reply(&e, r#"{"cmd":"remove","id":2}"#)["ok"], true);
    assert_eq!(
        reply(&e, r#"{"cmd":"list"}"#)["faults"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    assert_eq!(reply(&e, r#"{"cmd":"seed","seed":77}"#)["ok"], true);
    assert_eq!(e.lock().unwrap().seed(), 77);

    let v = reply(&e, r#"{"cmd":"stats"}"#);
    assert_eq!(v["stats"]["commands"], 3);
    assert_eq!(v["stats"]["fired"]["lose"], 1);
    assert_eq!(v["stats"]["fired"]["drop-interrupt"], 0);

    let v = reply(
        &e,
        r#"{"cmd":"fire-event","event":"param-change","target":1,"asc":42,"ascq":9}"#,
    );
    assert_eq!(v["ok"], true);
    assert_eq!(
        e.lock().unwrap().on_tick(ms(1)),
        vec![TickAction::PostEvent(VirtioEvent::ParamChange {
            target: 1,
            lun: 0,
            asc: 42,
            ascq: 9
        })]
    );
    assert_eq!(reply(&e, r#"{"cmd":"flush-trace"}"#)["ok"], true);
}

#[test]
fn control_rejects_bad_requests_with_an_error_reply() {
    let e = shared("");
    for line in [
        "not json",
        "[1,2]",
        r#"{"cmd":"warp"}"#,
        r#"{"nocmd":1}"#,
        r#"{"cmd":7}"#,
        r#"{"cmd":"list","extra":1}"#,
        r#"{"cmd":"remove","id":99}"#,
        r#"{"cmd":"remove","id":-1}"#,
        r#"{"cmd":"enable"}"#,
        r#"{"cmd":"seed","seed":"x"}"#,
        r#"{"cmd":"add","fault":{"kind":"lose","probability":2.0}}"#,
        r#"{"cmd":"add","fault":{"kind":"lose","bogus":1}}"#,
        r#"{"cmd":"add","fault":{"kind":"corrupt"}}"#,
        r#"{"cmd":"add","fault":"lose"}"#,
        r#"{"cmd":"fire-event","event":"meteor"}"#,
        r#"{"cmd":"fire-event","event":"events-missed","reason":"rescan"}"#,
    ] {
        let v = reply(&e, line);
        assert_eq!(v["ok"], false, "{line}");
        assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{line}");
    }
    assert_eq!(e.lock().unwrap().faults().count(), 0);
}

#[test]
fn control_socket_is_0600_and_survives_a_bad_line() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    // A stale socket from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let e = shared("[[fault]]\nkind = \"lose\"\n");
    let server = ControlServer::start(&path, e.clone()).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing but the socket is left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let stream = UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut roundtrip = |line: &str| {
        w.write_all(line.as_bytes()).unwrap();
        let mut out = String::new();
        r.read_line(&mut out).unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let bad = roundtrip("{\"cmd\":\n");
    assert_eq!(bad["ok"], false);
    let good = roundtrip("{\"cmd\":\"list\"}\n");
    assert_eq!(good["ok"], true);
    assert_eq!(good["faults"][0]["kind"], "lose");
    let long = format!("{}\n", "x".repeat(MAX_LINE * 3 + 10));
    assert_eq!(roundtrip(&long)["ok"], false);
    let add = roundtrip("{\"cmd\":\"add\",\"fault\":{\"kind\":\"drop-interrupt\"}}\n");
    assert_eq!(add["id"], 2);
    assert_eq!(roundtrip("{\"cmd\":\"stats\"}\n")["ok"], true);
    assert_eq!(e.lock().unwrap().faults().count(), 2);

    drop(server);
    assert!(!path.exists(), "the socket file is removed on drop");

    // A path held by something that is not a socket is refused.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        ControlServer::start(&file, e.clone()),
        Err(ControlError::Socket(SocketError::NotASocket { .. }))
    ));
    // A live server's socket is not taken over.
    let live = dir.path().join("live.sock");
    let first = ControlServer::start(&live, e.clone()).unwrap();
    assert!(matches!(
        ControlServer::start(&live, e),
        Err(ControlError::Socket(SocketError::InUse { .. }))
    ));
    drop(first);
}

// ---- LU commands ----

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
        &json!({"cmd": "add-lun", "lun": format!("1:5={},ro", extra.path().display())}).to_string(),
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
    let _server = ControlServer::start_with_target(&path, Arc::new(e), Some(t.clone())).unwrap();
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
        &json!({"cmd": "add-lun", "lun": format!("0:3={}", extra.path().display())}).to_string(),
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

#[test]
fn lu_command_errors_say_what_is_wrong() {
    let (e, t, lu0) = setup();
    let send = |line: String| handle_line_with_target(&e, Some(&t), &line);
    let error = |line: String| {
        let reply = send(line.clone());
        assert_eq!(reply["ok"], false, "{line}: {reply}");
        reply["error"].as_str().unwrap().to_owned()
    };
    let huge =
        error(json!({"cmd": "resize-lun", "target": 0, "lun": 0, "blocks": u64::MAX}).to_string());
    assert!(
        huge.ends_with(&format!(
            "{} blocks of 512 bytes is not a size a backing can have (1 to {} blocks)",
            u64::MAX,
            i64::MAX as u64 / 512
        )),
        "{huge}"
    );
    let zero = error(r#"{"cmd":"resize-lun","target":0,"lun":0,"blocks":0}"#.into());
    assert!(
        zero.contains("0 blocks of 512 bytes is not a size"),
        "{zero}"
    );
    // The image LU 0 serves, again: locked by the LU itself.
    let again =
        error(json!({"cmd": "add-lun", "lun": lu0.path().display().to_string()}).to_string());
    assert!(
        again.contains("is locked: held by a read-write user"),
        "{again}"
    );
    let dir = tempfile::tempdir().unwrap();
    let d =
        error(json!({"cmd": "add-lun", "lun": format!("{},ro", dir.path().display())}).to_string());
    assert!(
        d.contains("is a directory: only regular files and block devices"),
        "{d}"
    );
    // `,,` is a comma of the path, as on the command line.
    let comma = dir.path().join("a,b.img");
    std::fs::write(&comma, vec![0u8; 4096]).unwrap();
    let spec = format!("{},ro", comma.display()).replace("a,b", "a,,b");
    let add = send(json!({"cmd": "add-lun", "lun": spec}).to_string());
    assert_eq!(add["ok"], true, "{add}");
    assert_eq!(add["blocks"], 8);
}
