//! A client of the backend's control socket (`--control-socket`, docs/fault-plan.md): one
//! JSON object per line each way. A reply without `"ok": true` is an error that carries
//! the backend's own message.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::process::POLL_INTERVAL;
use super::qemu;
use super::signals;

/// How long a reply may take: the backend answers at once, so this only bounds a hang.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("could not connect to the control socket {path}: {source}")]
    CouldNotConnect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket I/O failed on {request}: {source}")]
    Io {
        request: String,
        source: std::io::Error,
    },
    #[error("the backend closed the control socket before replying to {0}")]
    Closed(String),
    #[error("the backend's reply to {request} is not a JSON object: {reply:?}")]
    BadReply { request: String, reply: String },
    #[error("the backend refused {request}: {error}")]
    Refused { request: String, error: String },
    #[error("interrupted by a signal")]
    Interrupted,
}

/// One connection to a backend's control socket.
#[derive(Debug)]
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Connects to `path`, retrying until `deadline`: the backend creates the socket while
    /// it starts.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Control, ControlError> {
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => return Control::on(stream),
                Err(source) if Instant::now() >= deadline => {
                    return Err(ControlError::CouldNotConnect {
                        path: path.display().to_string(),
                        source,
                    })
                }
                Err(_) => {}
            }
            if signals::interrupted() {
                return Err(ControlError::Interrupted);
            }
            std::thread::sleep(POLL_INTERVAL * 4);
        }
    }

    fn on(stream: UnixStream) -> Result<Control, ControlError> {
        let io = |source| ControlError::Io {
            request: "the connection".into(),
            source,
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Control {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns the reply, which must say `"ok": true`.
    pub fn request(&mut self, request: &Value) -> Result<Map<String, Value>, ControlError> {
        let text = request.to_string();
        let io = |source| ControlError::Io {
            request: text.clone(),
            source,
        };
        writeln!(self.writer, "{text}").map_err(io)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(io)? == 0 {
            return Err(ControlError::Closed(text));
        }
        let Ok(Value::Object(reply)) = serde_json::from_str::<Value>(&line) else {
            return Err(ControlError::BadReply {
                request: text,
                reply: line.trim_end().to_owned(),
            });
        };
        if reply.get("ok") != Some(&Value::Bool(true)) {
            let error = reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error given")
                .to_owned();
            return Err(ControlError::Refused {
                request: text,
                error,
            });
        }
        Ok(reply)
    }

    /// Adds a fault (a `[[fault]]` table as JSON); returns its id.
    pub fn add(&mut self, fault: &Value) -> Result<u64, ControlError> {
        let request = json!({ "cmd": "add", "fault": fault });
        let reply = self.request(&request)?;
        reply
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| ControlError::BadReply {
                request: request.to_string(),
                reply: Value::Object(reply.clone()).to_string(),
            })
    }

    /// Removes the fault with this id.
    pub fn remove(&mut self, id: u64) -> Result<(), ControlError> {
        self.request(&json!({ "cmd": "remove", "id": id }))
            .map(drop)
    }

    /// The engine's counters (`stats`).
    pub fn stats(&mut self) -> Result<Value, ControlError> {
        let mut reply = self.request(&json!({ "cmd": "stats" }))?;
        Ok(reply.remove("stats").unwrap_or(Value::Null))
    }
}

/// A LUN spec (`--lun`'s syntax, docs/fault-plan.md) for `path` at `target:lun`; the
/// backend reads `,,` as a comma of the path, as QEMU's options do.
pub fn lun_spec(target: u16, lun: u16, path: &Path) -> String {
    format!(
        "{target}:{lun}={}",
        qemu::option_value(path).to_string_lossy()
    )
}

/// The `add-lun` request for `path` at `target:lun`.
pub fn add_lun_request(target: u16, lun: u16, path: &Path) -> Value {
    json!({ "cmd": "add-lun", "lun": lun_spec(target, lun, path) })
}

/// The `remove-lun` request for `target:lun`.
pub fn remove_lun_request(target: u16, lun: u16) -> Value {
    json!({ "cmd": "remove-lun", "target": target, "lun": lun })
}

/// The `resize-lun` request setting `target:lun` to `blocks` blocks.
pub fn resize_lun_request(target: u16, lun: u16, blocks: u64) -> Value {
    json!({ "cmd": "resize-lun", "target": target, "lun": lun, "blocks": blocks })
}

/// Faults the engine applied, all kinds together, from a `stats` reply.
pub fn faults_fired(stats: &Value) -> u64 {
    stats["fired"]
        .as_object()
        .map_or(0, |kinds| kinds.values().filter_map(Value::as_u64).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::rundir::RunDir;
    use std::os::unix::net::UnixListener;

    /// A fake backend that answers each line with the next of `replies`, then reads one
    /// more and closes without a reply.
    fn serve(replies: &'static [&'static str]) -> (RunDir, std::path::PathBuf) {
        let dir = RunDir::temporary().unwrap();
        let path = dir.control_socket_path().unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                assert!(line.ends_with('\n') && line.starts_with('{'), "{line:?}");
                writeln!(writer, "{reply}").unwrap();
            }
            let _ = reader.read_line(&mut String::new());
        });
        (dir, path)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn a_lun_requests_path_doubles_its_commas() {
        let path = std::path::Path::new("/tmp/a,b/lun1.img");
        assert_eq!(lun_spec(0, 1, path), "0:1=/tmp/a,,b/lun1.img");
        assert_eq!(
            add_lun_request(0, 1, path).to_string(),
            r#"{"cmd":"add-lun","lun":"0:1=/tmp/a,,b/lun1.img"}"#
        );
        assert_eq!(
            remove_lun_request(1, 5).to_string(),
            r#"{"cmd":"remove-lun","lun":5,"target":1}"#
        );
        assert_eq!(
            resize_lun_request(0, 0, 4096).to_string(),
            r#"{"blocks":4096,"cmd":"resize-lun","lun":0,"target":0}"#
        );
    }

    #[test]
    fn an_ok_reply_is_returned_and_a_refusal_carries_the_backends_message() {
        let (_dir, path) = serve(&[
            r#"{"ok":true,"target":0,"lun":1,"blocks":2048}"#,
            r#"{"ok":false,"error":"no LU at 0:7"}"#,
            "not json",
        ]);
        let mut c = Control::connect(&path, soon()).unwrap();
        let reply = c.request(&json!({"cmd": "add-lun", "lun": "x"})).unwrap();
        assert_eq!(reply["blocks"], 2048);
        let err = c
            .request(&json!({"cmd": "remove-lun", "target": 0, "lun": 7}))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"the backend refused {"cmd":"remove-lun","lun":7,"target":0}: no LU at 0:7"#
        );
        let err = c.request(&json!({"cmd": "list"})).unwrap_err();
        assert!(
            matches!(&err, ControlError::BadReply { reply, .. } if reply == "not json"),
            "{err}"
        );
        let err = c.request(&json!({"cmd": "list"})).unwrap_err();
        assert!(matches!(err, ControlError::Closed(_)), "{err}");
    }

    #[test]
    fn fired_faults_are_summed_over_kinds() {
        let stats = json!({ "commands": 9, "fired": { "delay": 3, "lose": 1, "status": 0 } });
        assert_eq!(faults_fired(&stats), 4);
        assert_eq!(faults_fired(&json!({})), 0);
    }

    #[test]
    fn add_remove_and_stats_check_their_replies() {
        let (_dir, path) = serve(&[
            r#"{"ok":true,"id":7}"#,
            r#"{"ok":false,"error":"no fault 9"}"#,
            r#"{"ok":true}"#,
        ]);
        let mut c = Control::connect(&path, soon()).unwrap();
        assert_eq!(c.add(&json!({ "kind": "lose" })).unwrap(), 7);
        match c.remove(9) {
            Err(ControlError::Refused { error, .. }) => assert_eq!(error, "no fault 9"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.stats().unwrap(), Value::Null);
    }

    #[test]
    fn connecting_waits_for_the_socket_until_the_deadline() {
        let dir = RunDir::temporary().unwrap();
        let path = dir.control_socket_path().unwrap();
        let start = Instant::now();
        let err = Control::connect(&path, start + Duration::from_millis(100)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(matches!(err, ControlError::CouldNotConnect { .. }), "{err}");
    }
}
