//! Watching a cell while it runs: the backend's trace, flushed over the control socket and
//! read as it grows, and the guest's serial lines. They show progress (a command arriving
//! or completing, a TMF, an event, a line from the guest); a cell with none for the stall
//! window, or no SCSI command at all within the driver's boot allowance, is stopped as
//! hung. The workload's first data request (LUN 0, in the driver's data range) is the
//! moment for the row's actions (control requests): a LU change, faults added to the plan.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flakyhba_backend::faults::trace::{parse_line, TraceEvent, TraceRecord};
use serde_json::{json, Value};

use crate::launch::boot::Watch;
use crate::launch::control::Control;
use crate::launch::serial::SerialLine;
use crate::scenario::metrics::FIRST_REQUEST_QUEUE;

/// No progress for this long, once the driver has sent its first command: hung. Longer
/// than any quiet time a row plans (a delay past a driver's timeout, a slow LU reset).
pub const STALL: Duration = Duration::from_secs(10);

/// Reads the records a trace file gains, whole lines only.
struct TraceTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl TraceTail {
    fn read_new(&mut self) -> Vec<TraceRecord<'static>> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        String::from_utf8_lossy(&whole)
            .lines()
            .filter_map(|l| parse_line(l).ok())
            .collect()
    }
}

/// Why the watcher stopped a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// No SCSI command within the driver's boot allowance.
    NoCommand { allowance: Duration },
    /// Nothing happened for `quiet` (the stall window), `at` after QEMU started.
    Stalled { quiet: Duration, at: Duration },
}

/// One control request sent at the workload's first data request, and its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Acted {
    pub request: Value,
    pub reply: Result<Value, String>,
    /// The trace time of the data request that set it off.
    pub trigger_us: u64,
}

pub struct Watcher {
    control_path: PathBuf,
    control: Option<Control>,
    tail: TraceTail,
    data: (u64, u64),
    /// Sent (in order) at the first data request, then cleared.
    actions: Vec<Value>,
    pub acted: Vec<Acted>,
    started: Instant,
    allowance: Duration,
    stall: Duration,
    last_progress: Instant,
    lines_seen: usize,
    first_command: bool,
    pub stop: Option<Stop>,
}

impl Watcher {
    /// Watches the trace at `trace` through the control socket at `control`, from now
    /// (QEMU's start).
    pub fn new(
        trace: &Path,
        control: &Path,
        data: (u64, u64),
        actions: Vec<Value>,
        allowance: Duration,
    ) -> Watcher {
        let now = Instant::now();
        Watcher {
            control_path: control.to_owned(),
            control: None,
            tail: TraceTail {
                path: trace.to_owned(),
                offset: 0,
                partial: Vec::new(),
            },
            data,
            actions,
            acted: Vec::new(),
            started: now,
            allowance,
            stall: STALL,
            last_progress: now,
            lines_seen: 0,
            first_command: false,
            stop: None,
        }
    }

    /// The control socket, connected on first use (one try per look: the backend may
    /// still be creating it).
    fn control(&mut self) -> Option<&mut Control> {
        if self.control.is_none() {
            match Control::connect(&self.control_path, Instant::now()) {
                Ok(c) => self.control = Some(c),
                Err(e) => log::debug!("{e}"),
            }
        }
        self.control.as_mut()
    }

    /// One look: new serial lines and trace records, the actions when their moment has
    /// come, and whether the cell has stalled.
    pub fn look(&mut self, lines: &[SerialLine]) -> Watch {
        let now = Instant::now();
        if lines.len() != self.lines_seen {
            self.lines_seen = lines.len();
            self.last_progress = now;
        }
        if let Some(c) = self.control() {
            if let Err(e) = c.request(&json!({"cmd": "flush-trace"})) {
                log::debug!("{e}");
                self.control = None;
            }
        }
        for record in self.tail.read_new() {
            self.record(&record, now);
        }
        let stop = if !self.first_command {
            (now - self.started >= self.allowance).then_some(Stop::NoCommand {
                allowance: self.allowance,
            })
        } else {
            (now - self.last_progress >= self.stall).then_some(Stop::Stalled {
                quiet: self.stall,
                at: now - self.started,
            })
        };
        match stop {
            Some(s) => {
                self.stop = Some(s);
                Watch::Stop
            }
            None => Watch::Continue,
        }
    }

    fn record(&mut self, r: &TraceRecord<'_>, now: Instant) {
        match &r.event {
            TraceEvent::Request {
                queue,
                lun,
                lba,
                blocks,
                ..
            } => {
                self.last_progress = now;
                if *queue < FIRST_REQUEST_QUEUE {
                    return;
                }
                self.first_command = true;
                let (first, last) = self.data;
                let hits = lba.is_some_and(|a| {
                    let end = a + blocks.unwrap_or(1).max(1) - 1;
                    a <= last && end >= first
                });
                if *lun == 0 && hits && !self.actions.is_empty() {
                    self.act(r.t_us);
                }
            }
            TraceEvent::Complete { .. }
            | TraceEvent::TmfStart { .. }
            | TraceEvent::TmfEnd { .. }
            | TraceEvent::Event { .. }
            | TraceEvent::EventLost { .. }
            | TraceEvent::DeviceReset {} => self.last_progress = now,
            _ => {}
        }
    }

    fn act(&mut self, trigger_us: u64) {
        for request in std::mem::take(&mut self.actions) {
            let reply = match self.control() {
                Some(c) => c
                    .request(&request)
                    .map(Value::Object)
                    .map_err(|e| e.to_string()),
                None => Err("the control socket is not reachable".to_owned()),
            };
            self.acted.push(Acted {
                request,
                reply,
                trigger_us,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_tail_returns_whole_new_lines_only() {
        let path = std::env::temp_dir().join(format!("fh-tail-{}.jsonl", std::process::id()));
        let mut f = File::create(&path).unwrap();
        let mut tail = TraceTail {
            path: path.clone(),
            offset: 0,
            partial: Vec::new(),
        };
        assert!(tail.read_new().is_empty());
        f.write_all(b"{\"t_us\":5,\"ev\":\"device-reset\"}\n{\"t_us\":7,")
            .unwrap();
        let got = tail.read_new();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].t_us, 5);
        writeln!(f, r#""ev":"device-reset"}}"#).unwrap();
        let got = tail.read_new();
        assert_eq!((got.len(), got[0].t_us), (1, 7));
        std::fs::remove_file(&path).unwrap();
    }

    fn request(queue: u16, lun: u16, lba: u64) -> TraceRecord<'static> {
        let line = format!(
            r#"{{"t_us":9,"ev":"request","queue":{queue},"id":1,"kind":"cmd","target":0,"lun":{lun},"op":"read-10","opcode":40,"lba":{lba},"blocks":8,"dir":"read"}}"#
        );
        parse_line(&line).unwrap()
    }

    #[test]
    fn actions_wait_for_a_data_request_of_lun_0() {
        let dir = std::env::temp_dir().join(format!("fh-watch-{}", std::process::id()));
        let mut w = Watcher::new(
            &dir.join("trace.jsonl"),
            &dir.join("none.sock"),
            (100, 199),
            vec![serde_json::json!({"cmd": "rescan"})],
            Duration::from_secs(60),
        );
        let now = Instant::now();
        w.record(&request(0, 0, 120), now);
        w.record(&request(2, 1, 120), now);
        w.record(&request(2, 0, 200), now);
        w.record(&request(2, 0, 90), now);
        assert!(w.acted.is_empty(), "{:?}", w.acted);
        assert!(w.first_command);
        // Blocks 195..=202 overlap the range's end.
        w.record(&request(2, 0, 195), now);
        assert_eq!(w.acted.len(), 1);
        assert_eq!(w.acted[0].trigger_us, 9);
        assert!(w.acted[0].reply.is_err(), "no backend here");
        w.record(&request(2, 0, 150), now);
        assert_eq!(w.acted.len(), 1, "once");
    }

    #[test]
    fn a_quiet_cell_is_stopped() {
        let dir = std::env::temp_dir();
        let mut w = Watcher::new(
            &dir.join("fh-no-such-trace"),
            &dir.join("fh-no-such.sock"),
            (0, 1),
            Vec::new(),
            Duration::ZERO,
        );
        assert_eq!(w.look(&[]), Watch::Stop);
        assert!(matches!(w.stop, Some(Stop::NoCommand { .. })));
        w.first_command = true;
        w.stall = Duration::from_millis(20);
        w.last_progress = Instant::now();
        assert_eq!(w.look(&[]), Watch::Continue);
        std::thread::sleep(Duration::from_millis(30));
        let line = [SerialLine::Log("boot".into())];
        assert_eq!(w.look(&line), Watch::Continue, "a line is progress");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(w.look(&line), Watch::Stop);
        assert!(matches!(w.stop, Some(Stop::Stalled { .. })));
    }
}
