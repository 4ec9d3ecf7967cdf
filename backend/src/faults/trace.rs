//! The trace (`--trace FILE`): one JSON object per line, `t_us` monotonic since backend
//! start. [`TraceRecord`] is the only place the line format is defined; the harness parses
//! the same type back.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufWriter, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::file_kind::file_kind;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("could not create trace file {path}")]
    CouldNotCreate {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("trace file {0} exists and is not a trace: only an empty file or an earlier trace is overwritten")]
    NotATrace(String),
    #[error("trace file {0} is in use by another process (it holds a lock on it)")]
    InUse(String),
    #[error("trace path {path} is {kind}, not a regular file")]
    NotAFile { path: String, kind: &'static str },
    #[error("could not write trace record")]
    CouldNotWrite(#[source] io::Error),
    #[error("could not encode trace record")]
    CouldNotEncode(#[source] serde_json::Error),
}

/// One trace line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord<'a> {
    /// Microseconds since backend start (monotonic clock).
    pub t_us: u64,
    #[serde(flatten)]
    pub event: TraceEvent<'a>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What happened. The `ev` field names the variant in kebab case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "kebab-case")]
pub enum TraceEvent<'a> {
    /// A SCSI command or AN request arrived (TMFs are `tmf-start`).
    Request {
        queue: u16,
        id: u64,
        /// `cmd` or `an`.
        kind: Cow<'a, str>,
        target: u8,
        lun: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opcode: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lba: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blocks: Option<u64>,
        dir: Cow<'a, str>,
    },
    /// A request was put on the used ring.
    Complete {
        queue: u16,
        id: u64,
        /// virtio response name (`ok`, `bad-target`, ...).
        response: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        residual: Option<u32>,
    },
    /// A fault fired. `fault` is the fault's id (0: a control-socket action).
    Fault {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        fault: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<Cow<'a, str>>,
        kind: Cow<'a, str>,
        /// Kind-specific detail: the status, TMF response, event, policy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_us: Option<u64>,
        /// Fired, but an earlier fault already decided the same thing for this request.
        #[serde(default, skip_serializing_if = "is_false")]
        shadowed: bool,
    },
    /// The call eventfd was written for a completion.
    Signal {
        queue: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A completion did not signal the guest: `reason` is `fault` or `event-idx`.
    SignalSuppressed {
        queue: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        reason: Cow<'a, str>,
    },
    /// The call eventfd was written with no new used entry.
    SpuriousSignal {
        queue: u16,
        fault: u32,
        count: u32,
    },
    TmfStart {
        queue: u16,
        id: u64,
        tmf: Cow<'a, str>,
        target: u8,
        lun: u16,
    },
    TmfEnd {
        queue: u16,
        id: u64,
        response: Cow<'a, str>,
    },
    DeviceReset {},
    /// An event was put on the event queue.
    Event {
        event: Cow<'a, str>,
        target: u8,
        lun: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Cow<'a, str>>,
    },
    /// An event could not be put on the event queue and is gone; the next one posted
    /// carries VIRTIO_SCSI_T_EVENTS_MISSED. `reason`: `no-frontend` (no guest memory: no
    /// frontend connected, or it set none up), `queue-not-ready` (the driver has not
    /// started the event queue), `no-buffer` (it left no buffer there) or `bad-buffer`
    /// (the buffer could not take the event).
    EventLost {
        event: Cow<'a, str>,
        target: u8,
        lun: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Cow<'a, str>>,
        reason: Cow<'a, str>,
    },
}

/// A JSON-lines trace writer.
pub struct Trace {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trace")
    }
}

impl TraceError {
    /// Whether the path was refused (it holds something else), rather than unwritable.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            TraceError::NotATrace(_) | TraceError::NotAFile { .. } | TraceError::InUse(_)
        )
    }
}

/// Longest first line read to tell a trace: records are far shorter.
const FIRST_LINE_MAX: u64 = 64 * 1024;

/// Whether the open `file` at `path` may become a trace: a regular file, empty or an
/// earlier trace (its first line is a record).
fn owned(file: &File, path: &Path) -> Result<(), TraceError> {
    let name = || path.display().to_string();
    let could_not = |source| TraceError::CouldNotCreate {
        path: name(),
        source,
    };
    let meta = file.metadata().map_err(could_not)?;
    not_a_file(&meta, path)?;
    if meta.len() == 0 {
        return Ok(());
    }
    let mut first = Vec::new();
    io::BufReader::new(file.take(FIRST_LINE_MAX))
        .read_until(b'\n', &mut first)
        .map_err(could_not)?;
    match std::str::from_utf8(&first).map(parse_line) {
        Ok(Ok(_)) => Ok(()),
        _ => Err(TraceError::NotATrace(name())),
    }
}

/// Takes an exclusive flock on the trace for as long as the file stays open; refuses a
/// trace another process holds.
fn claim(file: &File, path: &Path) -> Result<(), TraceError> {
    // SAFETY: flock on a descriptor this function borrows; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(TraceError::InUse(path.display().to_string()));
    }
    Err(TraceError::CouldNotCreate {
        path: path.display().to_string(),
        source: e,
    })
}

fn not_a_file(meta: &std::fs::Metadata, path: &Path) -> Result<(), TraceError> {
    if meta.is_file() {
        return Ok(());
    }
    Err(TraceError::NotAFile {
        path: path.display().to_string(),
        kind: file_kind(meta),
    })
}

impl Trace {
    /// Refuses a path [`Trace::create`] would refuse; creates and changes nothing.
    pub fn check_path(path: &Path) -> Result<(), TraceError> {
        // O_NONBLOCK: a FIFO there never hangs the open (it is then refused).
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            // The lock taken here goes with the file at the end of the check.
            Ok(file) => owned(&file, path).and_then(|()| claim(&file, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TraceError::CouldNotCreate {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Create the trace file, or empty it when it is empty or an earlier trace; any other
    /// file is left alone and refused.
    pub fn create(path: &Path) -> Result<Trace, TraceError> {
        let could_not = |source| TraceError::CouldNotCreate {
            path: path.display().to_string(),
            source,
        };
        // No O_TRUNC: the file is looked at before it is emptied. O_NONBLOCK: a FIFO
        // there never hangs the open.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match std::fs::metadata(path) {
                Ok(meta) => not_a_file(&meta, path)
                    .err()
                    .unwrap_or_else(|| could_not(e)),
                Err(_) => could_not(e),
            })?;
        owned(&file, path)?;
        // Another backend's live trace is not emptied under it.
        claim(&file, path)?;
        file.set_len(0).map_err(could_not)?;
        // Reading the first line moved the offset.
        (&file).seek(io::SeekFrom::Start(0)).map_err(could_not)?;
        Ok(Trace::to_writer(Box::new(file)))
    }

    /// Trace into any writer (tests use an in-memory one).
    pub fn to_writer(out: Box<dyn Write + Send>) -> Trace {
        Trace {
            out: BufWriter::new(out),
        }
    }

    pub fn write(&mut self, record: &TraceRecord<'_>) -> Result<(), TraceError> {
        serde_json::to_writer(&mut self.out, record).map_err(|e| {
            if e.is_io() {
                TraceError::CouldNotWrite(io::Error::other(e))
            } else {
                TraceError::CouldNotEncode(e)
            }
        })?;
        self.out.write_all(b"\n").map_err(TraceError::CouldNotWrite)
    }

    pub fn flush(&mut self) -> Result<(), TraceError> {
        self.out.flush().map_err(TraceError::CouldNotWrite)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        // Best effort: the writer's own drop would also flush but hide the error.
        if let Err(e) = self.out.flush() {
            log::warn!("could not flush the trace: {e}");
        }
    }
}

/// Parse one trace line (for the harness and tests).
pub fn parse_line(line: &str) -> Result<TraceRecord<'static>, serde_json::Error> {
    serde_json::from_str(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_one_line_each() {
        let records = [
            TraceRecord {
                t_us: 12,
                event: TraceEvent::Request {
                    queue: 2,
                    id: 7,
                    kind: "cmd".into(),
                    target: 0,
                    lun: 1,
                    op: Some("read-10".into()),
                    opcode: Some(0x28),
                    lba: Some(100),
                    blocks: Some(8),
                    dir: "read".into(),
                },
            },
            TraceRecord {
                t_us: 13,
                event: TraceEvent::SignalSuppressed {
                    queue: 2,
                    id: Some(7),
                    reason: "fault".into(),
                },
            },
            TraceRecord {
                t_us: 14,
                event: TraceEvent::DeviceReset {},
            },
            TraceRecord {
                t_us: 15,
                event: TraceEvent::EventLost {
                    event: "transport-reset".into(),
                    target: 0,
                    lun: 3,
                    detail: Some("rescan".into()),
                    reason: "no-buffer".into(),
                },
            },
        ];
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut trace = Trace::to_writer(Box::new(super::super::tests::SharedBuf(buf.clone())));
        for r in &records {
            trace.write(r).unwrap();
        }
        trace.flush().unwrap();
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with(r#"{"t_us":12,"ev":"request","queue":2"#),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            r#"{"t_us":13,"ev":"signal-suppressed","queue":2,"id":7,"reason":"fault"}"#
        );
        assert_eq!(lines[2], r#"{"t_us":14,"ev":"device-reset"}"#);
        assert_eq!(
            lines[3],
            r#"{"t_us":15,"ev":"event-lost","event":"transport-reset","target":0,"lun":3,"detail":"rescan","reason":"no-buffer"}"#
        );
        for (line, rec) in lines.iter().zip(&records) {
            assert_eq!(&parse_line(line).unwrap(), rec);
        }
    }
}

#[cfg(test)]
mod owning_tests {
    use super::*;

    const RECORD: &str = r#"{"t_us":14,"ev":"device-reset"}"#;

    #[test]
    fn only_a_new_or_empty_file_or_an_earlier_trace_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0xabu8; 4096]).unwrap();
        assert!(matches!(
            Trace::check_path(&image),
            Err(TraceError::NotATrace(_))
        ));
        let e = Trace::create(&image).unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert_eq!(
            std::fs::read(&image).unwrap(),
            vec![0xabu8; 4096],
            "left alone"
        );
        assert!(matches!(
            Trace::create(dir.path()),
            Err(TraceError::NotAFile {
                kind: "a directory",
                ..
            })
        ));

        let new = dir.path().join("new.jsonl");
        Trace::check_path(&new).unwrap();
        assert!(!new.exists(), "checking creates nothing");
        drop(Trace::create(&new).unwrap());
        assert_eq!(std::fs::read(&new).unwrap(), b"");

        // An earlier trace is emptied and written from its start.
        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, format!("{RECORD}\n{RECORD}\n{RECORD}\n")).unwrap();
        Trace::check_path(&old).unwrap();
        let mut t = Trace::create(&old).unwrap();
        t.write(&parse_line(RECORD).unwrap()).unwrap();
        drop(t);
        assert_eq!(
            std::fs::read_to_string(&old).unwrap(),
            format!("{RECORD}\n")
        );
    }
}
