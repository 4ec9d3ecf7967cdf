//! The guest's serial port (QEMU's stdout): a reader thread copies it to a log file and
//! hands each line to the harness, which waits for tokens with an overall deadline.
//! Lines starting with `{` are JSON objects (the report contract); others are guest log.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use guest_miniport::contract::REPORT_RESULT_KEY;
use serde_json::{Map, Value};

use super::process::POLL_INTERVAL;
use super::signals;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("timed out waiting for {0} on the serial port")]
    TimedOut(&'static str),
    #[error("the serial port closed before {0}")]
    ClosedBefore(&'static str),
    #[error("interrupted by a signal")]
    Interrupted,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SerialLine {
    /// A report line: one JSON object.
    Report(Map<String, Value>),
    /// Guest log text, or a line that starts with `{` but is not a JSON object.
    Log(String),
}

impl SerialLine {
    pub fn parse(line: &str) -> SerialLine {
        if line.starts_with('{') {
            if let Ok(Value::Object(map)) = serde_json::from_str(line) {
                return SerialLine::Report(map);
            }
        }
        SerialLine::Log(line.to_owned())
    }

    /// The final result line (`{"result": ...}`).
    pub fn result(&self) -> Option<&Map<String, Value>> {
        match self {
            SerialLine::Report(map) if map.contains_key(REPORT_RESULT_KEY) => Some(map),
            _ => None,
        }
    }
}

/// The harness end of the serial port.
pub struct Serial {
    rx: Receiver<String>,
    lines: Vec<SerialLine>,
    transcript: String,
    closed: bool,
}

impl Serial {
    /// Starts the reader thread on `port`, copying every line to `log`. The thread ends
    /// at EOF, that is when QEMU exits or is killed.
    pub fn start(port: impl Read + Send + 'static, mut log: File) -> Serial {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("serial".into())
            .spawn(move || {
                let mut reader = BufReader::new(port);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            // The log keeps the bytes as the guest sent them.
                            let _ = log.write_all(&raw);
                            let text = String::from_utf8_lossy(&raw);
                            let line = text.trim_end_matches(['\n', '\r']).to_owned();
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .expect("spawning a thread only fails when the process is out of resources");
        Serial {
            rx,
            lines: Vec::new(),
            transcript: String::new(),
            closed: false,
        }
    }

    fn accept(&mut self, line: String) -> &SerialLine {
        self.transcript.push_str(&line);
        self.transcript.push('\n');
        self.lines.push(SerialLine::parse(&line));
        self.lines.last().expect("just pushed")
    }

    /// Waits until a line satisfies `token` and returns the lines received from the call
    /// up to and including it. `what` names the token in errors.
    pub fn wait_for(
        &mut self,
        what: &'static str,
        token: impl Fn(&SerialLine) -> bool,
        deadline: Instant,
    ) -> Result<&[SerialLine], SerialError> {
        let first = self.lines.len();
        loop {
            if signals::interrupted() {
                return Err(SerialError::Interrupted);
            }
            if self.closed {
                return Err(SerialError::ClosedBefore(what));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SerialError::TimedOut(what));
            }
            // Short slices so the signal flag is seen promptly.
            match self
                .rx
                .recv_timeout((deadline - now).min(POLL_INTERVAL * 4))
            {
                Ok(line) => {
                    if token(self.accept(line)) {
                        return Ok(&self.lines[first..]);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Reads the rest of the output until the port closes.
    pub fn wait_for_close(&mut self, deadline: Instant) -> Result<(), SerialError> {
        match self.wait_for("the end of output", |_| false, deadline) {
            Err(SerialError::ClosedBefore(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => unreachable!("the token never matches"),
        }
    }

    /// Every line received so far.
    pub fn lines(&self) -> &[SerialLine] {
        &self.lines
    }

    /// The last result line received so far.
    pub fn result(&self) -> Option<&Map<String, Value>> {
        self.lines.iter().rev().find_map(SerialLine::result)
    }

    /// Everything received, as text.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn scratch_log() -> (File, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "flakyhba-serial-test-{}-{:?}.log",
            std::process::id(),
            std::thread::current().id()
        ));
        (File::create(&path).unwrap(), path)
    }

    #[test]
    fn lines_are_classified() {
        assert_eq!(
            SerialLine::parse("boot ok"),
            SerialLine::Log("boot ok".into())
        );
        assert_eq!(
            SerialLine::parse("{broken"),
            SerialLine::Log("{broken".into())
        );
        let SerialLine::Report(map) = SerialLine::parse(r#"{"event":"inquiry"}"#) else {
            panic!("not a report");
        };
        assert_eq!(map["event"], "inquiry");
        assert!(SerialLine::parse(r#"{"event":"x"}"#).result().is_none());
        assert!(SerialLine::parse(r#"{"result":"pass"}"#).result().is_some());
    }

    #[test]
    fn wait_for_returns_the_lines_up_to_the_token_and_the_last_result_wins() {
        let (mut guest, harness_end) = UnixStream::pair().unwrap();
        let (log, log_path) = scratch_log();
        let mut serial = Serial::start(harness_end, log);
        guest
            .write_all(b"hello\r\n{\"event\":\"a\"}\n{\"result\":\"fail\"}\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = serial
            .wait_for("a result", |l| l.result().is_some(), deadline)
            .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], SerialLine::Log("hello".into()));
        guest.write_all(b"{\"result\":\"pass\"}\ntail").unwrap();
        drop(guest);
        serial.wait_for_close(deadline).unwrap();
        assert_eq!(serial.result().unwrap()["result"], "pass");
        assert_eq!(serial.lines().last(), Some(&SerialLine::Log("tail".into())));
        assert!(serial
            .transcript()
            .starts_with("hello\n{\"event\":\"a\"}\n"));
        let logged = std::fs::read(&log_path).unwrap();
        assert!(logged.starts_with(b"hello\r\n"));
        std::fs::remove_file(log_path).unwrap();
    }

    #[test]
    fn wait_for_times_out_and_reports_closing() {
        let (guest, harness_end) = UnixStream::pair().unwrap();
        let (log, log_path) = scratch_log();
        let mut serial = Serial::start(harness_end, log);
        let start = Instant::now();
        let err = serial
            .wait_for("a result", |_| false, start + Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, SerialError::TimedOut(_)));
        assert!(start.elapsed() >= Duration::from_millis(100));
        drop(guest);
        let err = serial
            .wait_for("a result", |_| false, start + Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(err, SerialError::ClosedBefore(_)));
        std::fs::remove_file(log_path).unwrap();
    }
}
