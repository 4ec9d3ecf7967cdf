//! A client of the backend's control socket (docs/fault-plan.md, "Control socket"): one
//! JSON object per line each way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::launch::process::POLL_INTERVAL;
use crate::launch::signals;

/// How long one reply may take before the backend counts as hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("could not connect to the control socket {0}: {1}")]
    CouldNotConnect(PathBuf, std::io::Error),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket closed without a reply to {0}")]
    Closed(String),
    #[error("control socket: bad reply {reply:?} to {request}")]
    BadReply { request: String, reply: String },
    #[error("control socket refused {request}: {error}")]
    Refused { request: String, error: String },
    #[error("interrupted by a signal")]
    Interrupted,
}

/// One connection to a backend's control socket.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects to `path`, retrying until `deadline` while nothing listens there yet (a
    /// connection is harmless to the backend, unlike one on its vhost-user socket).
    pub fn connect(path: &Path, deadline: Instant) -> Result<ControlClient, ControlError> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(ControlError::CouldNotConnect(path.to_owned(), e))
                }
                Err(_) if signals::interrupted() => return Err(ControlError::Interrupted),
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(ControlClient {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns the reply, an error unless it says `"ok": true`.
    pub fn request(&mut self, request: &Value) -> Result<Value, ControlError> {
        let text = request.to_string();
        self.writer.write_all(format!("{text}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ControlError::Closed(text));
        }
        let reply: Value = serde_json::from_str(&line).map_err(|_| ControlError::BadReply {
            request: text.clone(),
            reply: line.trim_end().to_owned(),
        })?;
        match reply["ok"].as_bool() {
            Some(true) => Ok(reply),
            Some(false) => Err(ControlError::Refused {
                request: text,
                error: reply["error"].as_str().unwrap_or_default().to_owned(),
            }),
            None => Err(ControlError::BadReply {
                request: text,
                reply: line.trim_end().to_owned(),
            }),
        }
    }

    /// Adds a fault (a `[[fault]]` table as JSON); returns its id.
    pub fn add(&mut self, fault: &Value) -> Result<u64, ControlError> {
        let req = json!({ "cmd": "add", "fault": fault });
        let reply = self.request(&req)?;
        reply["id"].as_u64().ok_or_else(|| ControlError::BadReply {
            request: req.to_string(),
            reply: reply.to_string(),
        })
    }

    pub fn remove(&mut self, id: u64) -> Result<(), ControlError> {
        self.request(&json!({ "cmd": "remove", "id": id }))
            .map(drop)
    }

    /// The engine's counters (`stats`).
    pub fn stats(&mut self) -> Result<Value, ControlError> {
        let mut reply = self.request(&json!({ "cmd": "stats" }))?;
        Ok(reply["stats"].take())
    }
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

    #[test]
    fn fired_faults_are_summed_over_kinds() {
        let stats = json!({ "commands": 9, "fired": { "delay": 3, "lose": 1, "status": 0 } });
        assert_eq!(faults_fired(&stats), 4);
        assert_eq!(faults_fired(&json!({})), 0);
    }

    #[test]
    fn replies_are_checked() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("flakyhba-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for reply in [
                r#"{"ok":true,"id":7}"#,
                r#"{"ok":false,"error":"no fault 9"}"#,
                "not json",
            ] {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                w.write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = ControlClient::connect(&path, deadline).unwrap();
        assert_eq!(c.add(&json!({ "kind": "lose" })).unwrap(), 7);
        match c.remove(9) {
            Err(ControlError::Refused { error, .. }) => assert_eq!(error, "no fault 9"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.stats(), Err(ControlError::BadReply { .. })));
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
