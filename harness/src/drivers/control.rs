//! A client of the backend's control socket (`--control-socket`, docs/fault-plan.md):
//! one JSON object per line each way. A cell uses it to flush the trace while it watches
//! and to change the LUs and the plan when the workload's first data request arrives.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// How long a reply may take; the backend answers at once.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: the reply {0:?} is not a JSON object")]
    BadReply(String),
    #[error("control socket: the backend refused {request}: {error}")]
    Refused { request: String, error: String },
}

pub struct Control {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Control {
    pub fn connect(path: &Path) -> Result<Control, ControlError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Control {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends `request` and returns the reply, which must say `"ok": true`.
    pub fn request(&mut self, request: &Value) -> Result<Value, ControlError> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        let value: Value = serde_json::from_str(reply.trim_end())
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| ControlError::BadReply(reply.trim_end().to_owned()))?;
        if value["ok"] == json!(true) {
            return Ok(value);
        }
        Err(ControlError::Refused {
            request: request.to_string(),
            error: value["error"].as_str().unwrap_or("").to_owned(),
        })
    }

    /// Writes out what the backend's trace holds so far.
    pub fn flush_trace(&mut self) -> Result<(), ControlError> {
        self.request(&json!({"cmd": "flush-trace"})).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn replies_are_checked() {
        let dir = std::env::temp_dir().join(format!("fh-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream).lines();
            for reply in [
                r#"{"ok":true}"#,
                r#"{"ok":false,"error":"no LUN 0:7"}"#,
                "garbage",
            ] {
                lines.next().unwrap().unwrap();
                writeln!(out, "{reply}").unwrap();
            }
        });
        let mut c = Control::connect(&path).unwrap();
        c.flush_trace().unwrap();
        let refused = c
            .request(&json!({"cmd":"remove-lun","target":0,"lun":7}))
            .unwrap_err();
        assert!(refused.to_string().ends_with(": no LUN 0:7"), "{refused}");
        assert!(matches!(
            c.request(&json!({"cmd":"list"})),
            Err(ControlError::BadReply(_))
        ));
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
