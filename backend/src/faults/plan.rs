//! The fault plan: its TOML file format, the `--fault` shorthand and the named presets,
//! all validated into one [`Plan`]. Parsing is pure (no I/O) so that it can be fuzzed.
//!
//! The schema is documented in `docs/fault-plan.md` at the top of the repository.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::presets;
use crate::virtio::{
    VIRTIO_SCSI_T_TMF_ABORT_TASK, VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, VIRTIO_SCSI_T_TMF_CLEAR_ACA,
    VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
    VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, VIRTIO_SCSI_T_TMF_QUERY_TASK,
    VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
};

/// Exit status of the backend when the fault plan (file, shorthand or preset) is invalid.
pub const PLAN_ERROR_EXIT_CODE: i32 = 2;

/// Largest LUN a virtio-scsi flat LUN address can carry.
pub const MAX_LUN: u16 = 16383;

/// Errors from reading or validating a fault plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The plan text is not valid; `origin` is the file name (or `<plan>`, `<preset NAME>`).
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("could not read fault plan {path}: {source}")]
    CouldNotRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--fault `{text}`: {message}")]
    InvalidShorthand { text: String, message: String },
    #[error("unknown fault preset `{name}` (known presets: {known})")]
    UnknownPreset { name: String, known: String },
    /// A single fault given as data (control socket) is not valid.
    #[error("invalid fault: {message}")]
    InvalidFault { message: String },
    #[error("fault kind `corrupt` needs `allow_corruption = true` at the top level of the plan")]
    CorruptionNotAllowed,
}

/// A number or a name: opcodes (`"read-10"`, `0x28`, `40`) and queues (`"request"`, `2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NumOrName {
    Num(u64),
    Name(String),
}

impl<'de> Deserialize<'de> for NumOrName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumOrName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative integer or a name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumOrName, E> {
                Ok(NumOrName::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumOrName, E> {
                u64::try_from(v)
                    .map(NumOrName::Num)
                    .map_err(|_| E::custom(format!("expected a non-negative integer, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumOrName, E> {
                Ok(NumOrName::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[fault]]` table exactly as written (also the JSON object of the control socket's
/// `add` command). Kept next to the validated form so that `list` can show it back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub kind: String,
    pub name: Option<String>,
    pub enabled: Option<bool>,
    // Matching.
    pub queue: Option<NumOrName>,
    pub request: Option<String>,
    pub target: Option<u8>,
    pub lun: Option<u16>,
    pub opcode: Option<NumOrName>,
    pub tmf: Option<String>,
    pub lba: Option<[u64; 2]>,
    pub direction: Option<String>,
    // Triggers.
    pub every: Option<u64>,
    pub probability: Option<f64>,
    pub after: Option<u64>,
    pub times: Option<u64>,
    pub once: Option<bool>,
    pub window_ms: Option<[u64; 2]>,
    pub state: Option<u32>,
    pub set_state: Option<u32>,
    // Kind parameters.
    pub delay_ms: Option<u64>,
    pub distribution: Option<String>,
    pub min_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub alpha: Option<f64>,
    pub duration_ms: Option<u64>,
    pub new_commands: Option<String>,
    pub response: Option<String>,
    pub interval_ms: Option<u64>,
    pub at_ms: Option<u64>,
    pub burst: Option<u32>,
    pub status: Option<String>,
    pub sense_key: Option<u8>,
    pub asc: Option<u8>,
    pub ascq: Option<u8>,
    pub residual: Option<u32>,
    pub event: Option<String>,
    pub reason: Option<String>,
    pub bytes: Option<u32>,
}

impl RawFault {
    /// The keys that are set, for the per-kind applicability check.
    fn present_keys(&self) -> impl Iterator<Item = &'static str> {
        let keys = [
            ("name", self.name.is_some()),
            ("enabled", self.enabled.is_some()),
            ("queue", self.queue.is_some()),
            ("request", self.request.is_some()),
            ("target", self.target.is_some()),
            ("lun", self.lun.is_some()),
            ("opcode", self.opcode.is_some()),
            ("tmf", self.tmf.is_some()),
            ("lba", self.lba.is_some()),
            ("direction", self.direction.is_some()),
            ("every", self.every.is_some()),
            ("probability", self.probability.is_some()),
            ("after", self.after.is_some()),
            ("times", self.times.is_some()),
            ("once", self.once.is_some()),
            ("window_ms", self.window_ms.is_some()),
            ("state", self.state.is_some()),
            ("set_state", self.set_state.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("distribution", self.distribution.is_some()),
            ("min_ms", self.min_ms.is_some()),
            ("max_ms", self.max_ms.is_some()),
            ("alpha", self.alpha.is_some()),
            ("duration_ms", self.duration_ms.is_some()),
            ("new_commands", self.new_commands.is_some()),
            ("response", self.response.is_some()),
            ("interval_ms", self.interval_ms.is_some()),
            ("at_ms", self.at_ms.is_some()),
            ("burst", self.burst.is_some()),
            ("status", self.status.is_some()),
            ("sense_key", self.sense_key.is_some()),
            ("asc", self.asc.is_some()),
            ("ascq", self.ascq.is_some()),
            ("residual", self.residual.is_some()),
            ("event", self.event.is_some()),
            ("reason", self.reason.is_some()),
            ("bytes", self.bytes.is_some()),
        ];
        keys.into_iter().filter(|(_, set)| *set).map(|(k, _)| k)
    }

    /// This fault as a JSON object without the unset keys.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut v {
            map.retain(|_, v| !v.is_null());
        }
        v
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    seed: Option<u64>,
    allow_corruption: Option<bool>,
    #[serde(default)]
    fault: Vec<RawFault>,
}

/// The kinds of fault, named as in the plan's `kind` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    DropInterrupt,
    Delay,
    Lose,
    SlowTmf,
    HangTmf,
    FailTmf,
    SpuriousInterrupt,
    Status,
    Event,
    Corrupt,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::DropInterrupt,
        FaultKind::Delay,
        FaultKind::Lose,
        FaultKind::SlowTmf,
        FaultKind::HangTmf,
        FaultKind::FailTmf,
        FaultKind::SpuriousInterrupt,
        FaultKind::Status,
        FaultKind::Event,
        FaultKind::Corrupt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::DropInterrupt => "drop-interrupt",
            FaultKind::Delay => "delay",
            FaultKind::Lose => "lose",
            FaultKind::SlowTmf => "slow-tmf",
            FaultKind::HangTmf => "hang-tmf",
            FaultKind::FailTmf => "fail-tmf",
            FaultKind::SpuriousInterrupt => "spurious-interrupt",
            FaultKind::Status => "status",
            FaultKind::Event => "event",
            FaultKind::Corrupt => "corrupt",
        }
    }

    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Driven by the clock (`on_tick`) rather than by requests.
    pub fn is_time_driven(self) -> bool {
        matches!(self, FaultKind::SpuriousInterrupt | FaultKind::Event)
    }

    /// Keys a fault of this kind may use besides `kind`, `name`, `enabled` and the triggers.
    fn own_keys(self) -> &'static [&'static str] {
        const MATCH: &[&str] = &[
            "queue",
            "request",
            "target",
            "lun",
            "opcode",
            "tmf",
            "lba",
            "direction",
        ];
        match self {
            FaultKind::DropInterrupt => MATCH,
            FaultKind::Delay => &[
                "queue",
                "request",
                "target",
                "lun",
                "opcode",
                "tmf",
                "lba",
                "direction",
                "delay_ms",
                "distribution",
                "min_ms",
                "max_ms",
                "alpha",
            ],
            FaultKind::Lose => &["queue", "target", "lun", "opcode", "lba", "direction"],
            FaultKind::SlowTmf => &[
                "queue",
                "target",
                "lun",
                "tmf",
                "duration_ms",
                "new_commands",
            ],
            FaultKind::HangTmf => &["queue", "target", "lun", "tmf"],
            FaultKind::FailTmf => &["queue", "target", "lun", "tmf", "response"],
            FaultKind::SpuriousInterrupt => &["queue", "interval_ms", "at_ms", "burst"],
            FaultKind::Status => &[
                "queue",
                "target",
                "lun",
                "opcode",
                "lba",
                "direction",
                "status",
                "sense_key",
                "asc",
                "ascq",
                "residual",
            ],
            FaultKind::Event => &[
                "target",
                "lun",
                "event",
                "reason",
                "asc",
                "ascq",
                "interval_ms",
                "at_ms",
            ],
            FaultKind::Corrupt => &[
                "queue",
                "target",
                "lun",
                "opcode",
                "lba",
                "direction",
                "bytes",
            ],
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Task management functions, as virtio-scsi numbers them (VIRTIO_SCSI_T_TMF_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TmfKind {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    ITNexusReset,
    LogicalUnitReset,
    QueryTask,
    QueryTaskSet,
    /// A subtype the spec does not define; it never matches a `tmf` filter.
    Other(u32),
}

impl TmfKind {
    const NAMED: [(TmfKind, &'static str); 8] = [
        (TmfKind::AbortTask, "abort-task"),
        (TmfKind::AbortTaskSet, "abort-task-set"),
        (TmfKind::ClearAca, "clear-aca"),
        (TmfKind::ClearTaskSet, "clear-task-set"),
        (TmfKind::ITNexusReset, "i-t-nexus-reset"),
        (TmfKind::LogicalUnitReset, "lu-reset"),
        (TmfKind::QueryTask, "query-task"),
        (TmfKind::QueryTaskSet, "query-task-set"),
    ];

    /// From the `subtype` field of a virtio-scsi TMF request.
    pub fn from_virtio(subtype: u32) -> TmfKind {
        match subtype {
            VIRTIO_SCSI_T_TMF_ABORT_TASK => TmfKind::AbortTask,
            VIRTIO_SCSI_T_TMF_ABORT_TASK_SET => TmfKind::AbortTaskSet,
            VIRTIO_SCSI_T_TMF_CLEAR_ACA => TmfKind::ClearAca,
            VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => TmfKind::ClearTaskSet,
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => TmfKind::ITNexusReset,
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => TmfKind::LogicalUnitReset,
            VIRTIO_SCSI_T_TMF_QUERY_TASK => TmfKind::QueryTask,
            VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => TmfKind::QueryTaskSet,
            n => TmfKind::Other(n),
        }
    }

    pub fn name(self) -> &'static str {
        TmfKind::NAMED
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("other", |(_, n)| n)
    }

    pub fn from_name(name: &str) -> Option<TmfKind> {
        let name = match name {
            "nexus-reset" => "i-t-nexus-reset",
            "logical-unit-reset" => "lu-reset",
            n => n,
        };
        TmfKind::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(k, _)| *k)
    }
}

/// Which requests a fault looks at (`request` key), implied by the kind where it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    Any,
    Command,
    /// A TMF, optionally of one subtype only.
    Tmf(Option<TmfKind>),
    /// An asynchronous notification query or subscribe on the control queue.
    An,
}

/// Which virtqueues a fault looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMatch {
    Any,
    /// Every request queue (index 2 and up).
    Request,
    Index(u16),
}

impl QueueMatch {
    pub const CONTROL: u16 = 0;
    pub const EVENT: u16 = 1;
    pub const FIRST_REQUEST: u16 = 2;

    #[inline]
    pub fn matches(self, queue: u16) -> bool {
        match self {
            QueueMatch::Any => true,
            QueueMatch::Request => queue >= QueueMatch::FIRST_REQUEST,
            QueueMatch::Index(q) => q == queue,
        }
    }
}

/// Direction of a command's data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataDirection {
    #[default]
    None,
    /// Device to driver (data-in).
    Read,
    /// Driver to device (data-out).
    Write,
}

impl DataDirection {
    pub fn name(self) -> &'static str {
        match self {
            DataDirection::None => "none",
            DataDirection::Read => "read",
            DataDirection::Write => "write",
        }
    }
}

/// The matching part of a fault. Every test is a comparison; nothing allocates (issue item 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matcher {
    pub class: RequestClass,
    pub queue: QueueMatch,
    pub target: Option<u8>,
    pub lun: Option<u16>,
    pub opcode: Option<u8>,
    /// Inclusive block range; a command matches when its blocks overlap it.
    pub lba: Option<(u64, u64)>,
    pub direction: Option<DataDirection>,
}

/// When a matching request (or, for time-driven kinds, a scheduled opportunity) makes the
/// fault fire. Evaluated in this order: state, window, after, every, times, probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trigger {
    /// Fire only while the engine is in this state (blkdebug-style sequences).
    pub state: Option<u32>,
    /// Move the engine to this state when the fault fires.
    pub set_state: Option<u32>,
    /// Only matches inside `[start, end)` (time since backend start) count.
    pub window: Option<(Duration, Duration)>,
    /// Skip the first N matches.
    pub after: u64,
    /// Fire on every Nth match after `after`.
    pub every: Option<u64>,
    /// Fire at most N times.
    pub times: Option<u64>,
    /// Fire with this probability (drawn from the seeded generator).
    pub probability: Option<f64>,
}

/// Latency distributions for `delay`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DelayDist {
    Fixed(Duration),
    Uniform {
        min: Duration,
        max: Duration,
    },
    /// Pareto with scale `min` and shape `alpha`, capped at `max`.
    LongTail {
        min: Duration,
        max: Duration,
        alpha: f64,
    },
}

/// What commands to a LU see while a slow TMF on it is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewCommandPolicy {
    /// Completed at once with SCSI status BUSY.
    Busy,
    /// Held until the TMF completes, then processed.
    Hold,
}

/// How a `fail-tmf` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFailure {
    /// VIRTIO_SCSI_S_FUNCTION_REJECTED.
    FunctionRejected,
    /// VIRTIO_SCSI_S_FAILURE.
    Failure,
}

/// virtio-scsi response codes a fault can force (spec names; the wire module maps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioResponse {
    Overrun,
    Aborted,
    BadTarget,
    Reset,
    Busy,
    TransportFailure,
    TargetFailure,
    NexusFailure,
    Failure,
}

/// The completion a `status` fault forces on a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOverride {
    /// SCSI CHECK CONDITION with fixed-format sense data.
    CheckCondition { sense_key: u8, asc: u8, ascq: u8 },
    /// SCSI BUSY.
    Busy,
    /// SCSI TASK SET FULL.
    TaskSetFull,
    /// SCSI RESERVATION CONFLICT.
    ReservationConflict,
    /// A virtio response other than VIRTIO_SCSI_S_OK.
    Virtio(VirtioResponse),
    /// GOOD status but `residual` bytes of the transfer not done.
    ShortTransfer { residual: u32 },
}

impl StatusOverride {
    const NAMES: [(&'static str, StatusOverride); 13] = [
        (
            "check-condition",
            StatusOverride::CheckCondition {
                sense_key: 0,
                asc: 0,
                ascq: 0,
            },
        ),
        ("busy", StatusOverride::Busy),
        ("task-set-full", StatusOverride::TaskSetFull),
        ("reservation-conflict", StatusOverride::ReservationConflict),
        ("overrun", StatusOverride::Virtio(VirtioResponse::Overrun)),
        ("aborted", StatusOverride::Virtio(VirtioResponse::Aborted)),
        (
            "bad-target",
            StatusOverride::Virtio(VirtioResponse::BadTarget),
        ),
        ("reset", StatusOverride::Virtio(VirtioResponse::Reset)),
        ("virtio-busy", StatusOverride::Virtio(VirtioResponse::Busy)),
        (
            "transport-failure",
            StatusOverride::Virtio(VirtioResponse::TransportFailure),
        ),
        (
            "target-failure",
            StatusOverride::Virtio(VirtioResponse::TargetFailure),
        ),
        (
            "nexus-failure",
            StatusOverride::Virtio(VirtioResponse::NexusFailure),
        ),
        ("failure", StatusOverride::Virtio(VirtioResponse::Failure)),
    ];

    /// The plan's name for this status.
    pub fn name(&self) -> &'static str {
        match self {
            StatusOverride::CheckCondition { .. } => "check-condition",
            StatusOverride::ShortTransfer { .. } => "short-transfer",
            other => StatusOverride::NAMES
                .iter()
                .find(|(_, s)| s == other)
                .map_or("status", |(n, _)| n),
        }
    }

    /// The SAM status byte, for the overrides that are SCSI statuses.
    pub fn scsi_status(&self) -> Option<u8> {
        match self {
            StatusOverride::CheckCondition { .. } => Some(0x02),
            StatusOverride::Busy => Some(0x08),
            StatusOverride::ReservationConflict => Some(0x18),
            StatusOverride::TaskSetFull => Some(0x28),
            StatusOverride::ShortTransfer { .. } => Some(0x00),
            StatusOverride::Virtio(_) => None,
        }
    }
}

/// Reason of a TRANSPORT_RESET event (VIRTIO_SCSI_EVT_RESET_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    Hard,
    Rescan,
    Removed,
}

impl ResetReason {
    pub fn name(self) -> &'static str {
        match self {
            ResetReason::Hard => "hard",
            ResetReason::Rescan => "rescan",
            ResetReason::Removed => "removed",
        }
    }
}

/// An event for the event queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioEvent {
    /// VIRTIO_SCSI_T_TRANSPORT_RESET.
    TransportReset {
        target: u8,
        lun: u16,
        reason: ResetReason,
    },
    /// VIRTIO_SCSI_T_PARAM_CHANGE with the sense code that changed.
    ParamChange {
        target: u8,
        lun: u16,
        asc: u8,
        ascq: u8,
    },
    /// VIRTIO_SCSI_T_NO_EVENT with the VIRTIO_SCSI_T_EVENTS_MISSED flag.
    EventsMissed,
}

impl VirtioEvent {
    pub fn name(&self) -> &'static str {
        match self {
            VirtioEvent::TransportReset { .. } => "transport-reset",
            VirtioEvent::ParamChange { .. } => "param-change",
            VirtioEvent::EventsMissed => "events-missed",
        }
    }

    pub fn address(&self) -> (u8, u16) {
        match *self {
            VirtioEvent::TransportReset { target, lun, .. }
            | VirtioEvent::ParamChange { target, lun, .. } => (target, lun),
            VirtioEvent::EventsMissed => (0, 0),
        }
    }

    /// Build an event from its plan (or control-socket) keys.
    pub fn from_keys(
        event: &str,
        target: Option<u8>,
        lun: Option<u16>,
        reason: Option<&str>,
        asc: Option<u8>,
        ascq: Option<u8>,
    ) -> Result<VirtioEvent, KeyError> {
        let target = target.unwrap_or(0);
        let lun = lun.unwrap_or(0);
        if lun > MAX_LUN {
            return Err(KeyError::at("lun", format!("lun {lun} is above {MAX_LUN}")));
        }
        match event {
            "transport-reset" => {
                if asc.is_some() || ascq.is_some() {
                    return Err(KeyError::at(
                        if asc.is_some() { "asc" } else { "ascq" },
                        "asc/ascq only apply to event `param-change`",
                    ));
                }
                let reason = match reason.unwrap_or("rescan") {
                    "hard" | "reset" => ResetReason::Hard,
                    "rescan" => ResetReason::Rescan,
                    "removed" => ResetReason::Removed,
                    other => {
                        return Err(KeyError::at(
                            "reason",
                            format!("unknown reason `{other}` (expected hard, rescan or removed)"),
                        ))
                    }
                };
                Ok(VirtioEvent::TransportReset {
                    target,
                    lun,
                    reason,
                })
            }
            "param-change" => {
                if reason.is_some() {
                    return Err(KeyError::at(
                        "reason",
                        "reason only applies to event `transport-reset`",
                    ));
                }
                // Default: CAPACITY DATA HAS CHANGED.
                Ok(VirtioEvent::ParamChange {
                    target,
                    lun,
                    asc: asc.unwrap_or(0x2a),
                    ascq: ascq.unwrap_or(0x09),
                })
            }
            "events-missed" => {
                if reason.is_some() || asc.is_some() || ascq.is_some() {
                    return Err(KeyError::at(
                        "event",
                        "event `events-missed` takes no reason, asc or ascq",
                    ));
                }
                Ok(VirtioEvent::EventsMissed)
            }
            other => Err(KeyError::at(
                "event",
                format!(
                    "unknown event `{other}` (expected transport-reset, param-change or events-missed)"
                ),
            )),
        }
    }
}

/// When a time-driven fault gets its chances to fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// First opportunity, since backend start.
    pub first: Duration,
    /// Period of the following ones; `None` means one opportunity only.
    pub interval: Option<Duration>,
}

/// What a fault does when it fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultAction {
    DropInterrupt,
    Delay(DelayDist),
    Lose,
    SlowTmf {
        duration: Duration,
        new_commands: NewCommandPolicy,
    },
    HangTmf,
    FailTmf(TmfFailure),
    SpuriousInterrupt {
        queue: u16,
        burst: u32,
        schedule: Schedule,
    },
    Status(StatusOverride),
    Event {
        event: VirtioEvent,
        schedule: Schedule,
    },
    Corrupt {
        bytes: u32,
    },
}

impl FaultAction {
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultAction::DropInterrupt => FaultKind::DropInterrupt,
            FaultAction::Delay(_) => FaultKind::Delay,
            FaultAction::Lose => FaultKind::Lose,
            FaultAction::SlowTmf { .. } => FaultKind::SlowTmf,
            FaultAction::HangTmf => FaultKind::HangTmf,
            FaultAction::FailTmf(_) => FaultKind::FailTmf,
            FaultAction::SpuriousInterrupt { .. } => FaultKind::SpuriousInterrupt,
            FaultAction::Status(_) => FaultKind::Status,
            FaultAction::Event { .. } => FaultKind::Event,
            FaultAction::Corrupt { .. } => FaultKind::Corrupt,
        }
    }

    pub fn schedule(&self) -> Option<Schedule> {
        match self {
            FaultAction::SpuriousInterrupt { schedule, .. }
            | FaultAction::Event { schedule, .. } => Some(*schedule),
            _ => None,
        }
    }
}

/// One validated fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub name: Option<String>,
    pub enabled: bool,
    pub matcher: Matcher,
    pub trigger: Trigger,
    pub action: FaultAction,
    /// The fault as written, for `list`.
    pub raw: RawFault,
}

/// A validation error tied to one key of a fault (or the whole fault when `key` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyError {
    pub key: Option<&'static str>,
    pub message: String,
}

impl KeyError {
    fn at(key: &'static str, message: impl Into<String>) -> KeyError {
        KeyError {
            key: Some(key),
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Some(k) => write!(f, "key `{k}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// SBC/SPC opcode names accepted by `opcode` (lower case, `-` separated).
const OPCODES: &[(&str, u8)] = &[
    ("test-unit-ready", 0x00),
    ("rezero-unit", 0x01),
    ("request-sense", 0x03),
    ("format-unit", 0x04),
    ("read-6", 0x08),
    ("write-6", 0x0a),
    ("seek-6", 0x0b),
    ("inquiry", 0x12),
    ("mode-select-6", 0x15),
    ("reserve-6", 0x16),
    ("release-6", 0x17),
    ("mode-sense-6", 0x1a),
    ("start-stop-unit", 0x1b),
    ("receive-diagnostic-results", 0x1c),
    ("send-diagnostic", 0x1d),
    ("prevent-allow-medium-removal", 0x1e),
    ("read-capacity-10", 0x25),
    ("read-10", 0x28),
    ("write-10", 0x2a),
    ("seek-10", 0x2b),
    ("write-and-verify-10", 0x2e),
    ("verify-10", 0x2f),
    ("synchronize-cache-10", 0x35),
    ("read-defect-data-10", 0x37),
    ("write-buffer", 0x3b),
    ("read-buffer", 0x3c),
    ("write-same-10", 0x41),
    ("unmap", 0x42),
    ("read-toc", 0x43),
    ("get-configuration", 0x46),
    ("get-event-status-notification", 0x4a),
    ("log-select", 0x4c),
    ("log-sense", 0x4d),
    ("mode-select-10", 0x55),
    ("reserve-10", 0x56),
    ("release-10", 0x57),
    ("mode-sense-10", 0x5a),
    ("persistent-reserve-in", 0x5e),
    ("persistent-reserve-out", 0x5f),
    ("variable-length", 0x7f),
    ("read-16", 0x88),
    ("compare-and-write", 0x89),
    ("write-16", 0x8a),
    ("write-and-verify-16", 0x8e),
    ("verify-16", 0x8f),
    ("synchronize-cache-16", 0x91),
    ("write-same-16", 0x93),
    ("service-action-in-16", 0x9e),
    ("read-capacity-16", 0x9e),
    ("report-luns", 0xa0),
    ("maintenance-in", 0xa3),
    ("report-supported-operation-codes", 0xa3),
    ("maintenance-out", 0xa4),
    ("read-12", 0xa8),
    ("write-12", 0xaa),
    ("verify-12", 0xaf),
];

const fn opcode_name_table() -> [Option<&'static str>; 256] {
    let mut table = [None; 256];
    let mut i = OPCODES.len();
    // Walk backwards so that the first name listed for a shared opcode wins.
    while i > 0 {
        i -= 1;
        table[OPCODES[i].1 as usize] = Some(OPCODES[i].0);
    }
    table
}

static OPCODE_NAMES: [Option<&str>; 256] = opcode_name_table();

/// The plan's name for an opcode, if it has one.
#[inline]
pub fn opcode_name(opcode: u8) -> Option<&'static str> {
    OPCODE_NAMES[opcode as usize]
}

/// An opcode from its name (`read-10`, `READ_10`) or number (`0x28`, `40`).
pub fn parse_opcode(v: &NumOrName) -> Result<u8, String> {
    match v {
        NumOrName::Num(n) => u8::try_from(*n).map_err(|_| format!("opcode {n} is above 255")),
        NumOrName::Name(s) => {
            let s = s.trim();
            if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                return u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("`{s}` is not an opcode between 0x00 and 0xff"));
            }
            if let Ok(n) = s.parse::<u8>() {
                return Ok(n);
            }
            let norm = s.to_ascii_lowercase().replace('_', "-");
            OPCODES
                .iter()
                .find(|(n, _)| *n == norm)
                .map(|(_, op)| *op)
                .ok_or_else(|| {
                    format!(
                        "unknown opcode name `{s}` (use a number like 0x28 or a name like read-10)"
                    )
                })
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn check_probability(key: &'static str, p: f64) -> Result<f64, KeyError> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(KeyError::at(key, format!("{p} is not between 0 and 1")))
    }
}

impl FaultSpec {
    /// Validate one fault. `allow_corruption` is the plan's top-level switch.
    pub fn from_raw(raw: RawFault, allow_corruption: bool) -> Result<FaultSpec, KeyError> {
        let kind = FaultKind::from_name(&raw.kind).ok_or_else(|| {
            let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            KeyError::at(
                "kind",
                format!(
                    "unknown fault kind `{}` (expected one of: {})",
                    raw.kind,
                    known.join(", ")
                ),
            )
        })?;
        const TRIGGER_KEYS: &[&str] = &[
            "name",
            "enabled",
            "every",
            "probability",
            "after",
            "times",
            "once",
            "window_ms",
            "state",
            "set_state",
        ];
        for key in raw.present_keys() {
            if !TRIGGER_KEYS.contains(&key) && !kind.own_keys().contains(&key) {
                return Err(KeyError::at(
                    key,
                    format!("does not apply to kind `{kind}`"),
                ));
            }
        }
        if kind == FaultKind::Corrupt && !allow_corruption {
            return Err(KeyError::at(
                "kind",
                "kind `corrupt` needs `allow_corruption = true` at the top level of the plan",
            ));
        }
        let trigger = Self::trigger(&raw)?;
        let matcher = Self::matcher(&raw, kind)?;
        let action = Self::action(&raw, kind)?;
        Ok(FaultSpec {
            name: raw.name.clone(),
            enabled: raw.enabled.unwrap_or(true),
            matcher,
            trigger,
            action,
            raw,
        })
    }

    fn trigger(raw: &RawFault) -> Result<Trigger, KeyError> {
        if raw.every == Some(0) {
            return Err(KeyError::at("every", "must be at least 1"));
        }
        if raw.times == Some(0) {
            return Err(KeyError::at(
                "times",
                "must be at least 1 (use enabled = false to switch a fault off)",
            ));
        }
        let times = match (raw.once, raw.times) {
            (Some(_), Some(_)) => {
                return Err(KeyError::at(
                    "once",
                    "give either `once` or `times`, not both",
                ))
            }
            (Some(true), None) => Some(1),
            (Some(false), None) => None,
            (None, t) => t,
        };
        let probability = raw
            .probability
            .map(|p| check_probability("probability", p))
            .transpose()?;
        let window = match raw.window_ms {
            Some([s, e]) if s >= e => {
                return Err(KeyError::at(
                    "window_ms",
                    format!("start {s} must be before end {e}"),
                ))
            }
            Some([s, e]) => Some((ms(s), ms(e))),
            None => None,
        };
        Ok(Trigger {
            state: raw.state,
            set_state: raw.set_state,
            window,
            after: raw.after.unwrap_or(0),
            every: raw.every,
            times,
            probability,
        })
    }

    fn matcher(raw: &RawFault, kind: FaultKind) -> Result<Matcher, KeyError> {
        let queue = match &raw.queue {
            None => QueueMatch::Any,
            Some(NumOrName::Num(n)) => QueueMatch::Index(
                u16::try_from(*n).map_err(|_| KeyError::at("queue", format!("queue {n} is above 65535")))?,
            ),
            Some(NumOrName::Name(s)) => match s.as_str() {
                "control" => QueueMatch::Index(QueueMatch::CONTROL),
                "event" => QueueMatch::Index(QueueMatch::EVENT),
                "request" => QueueMatch::Request,
                "any" => QueueMatch::Any,
                other => {
                    return Err(KeyError::at(
                        "queue",
                        format!("unknown queue `{other}` (expected control, event, request, any or a number)"),
                    ))
                }
            },
        };
        if let Some(lun) = raw.lun {
            if lun > MAX_LUN {
                return Err(KeyError::at("lun", format!("lun {lun} is above {MAX_LUN}")));
            }
        }
        let opcode = raw
            .opcode
            .as_ref()
            .map(parse_opcode)
            .transpose()
            .map_err(|m| KeyError::at("opcode", m))?;
        let tmf = raw
            .tmf
            .as_deref()
            .map(|t| {
                TmfKind::from_name(t).ok_or_else(|| {
                    KeyError::at(
                        "tmf",
                        format!(
                            "unknown TMF `{t}` (expected abort-task, abort-task-set, clear-aca, clear-task-set, \
                             i-t-nexus-reset, lu-reset, query-task or query-task-set)"
                        ),
                    )
                })
            })
            .transpose()?;
        let lba = match raw.lba {
            Some([s, e]) if s > e => {
                return Err(KeyError::at("lba", format!("start {s} is after end {e}")))
            }
            Some([s, e]) => Some((s, e)),
            None => None,
        };
        let direction = raw
            .direction
            .as_deref()
            .map(|d| match d {
                "none" => Ok(DataDirection::None),
                "read" => Ok(DataDirection::Read),
                "write" => Ok(DataDirection::Write),
                other => Err(KeyError::at(
                    "direction",
                    format!("unknown direction `{other}` (expected read, write or none)"),
                )),
            })
            .transpose()?;
        let command_keys = [
            ("opcode", raw.opcode.is_some()),
            ("lba", raw.lba.is_some()),
            ("direction", raw.direction.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(k, _)| k);
        let class = match kind {
            FaultKind::Lose | FaultKind::Status | FaultKind::Corrupt => RequestClass::Command,
            FaultKind::SlowTmf | FaultKind::HangTmf | FaultKind::FailTmf => RequestClass::Tmf(tmf),
            FaultKind::SpuriousInterrupt | FaultKind::Event => RequestClass::Any,
            FaultKind::DropInterrupt | FaultKind::Delay => {
                let class = match raw.request.as_deref() {
                    None if tmf.is_some() => RequestClass::Tmf(tmf),
                    None if command_keys.is_some() => RequestClass::Command,
                    None => RequestClass::Any,
                    Some("command") => RequestClass::Command,
                    Some("tmf") => RequestClass::Tmf(tmf),
                    Some("an") => RequestClass::An,
                    Some("any") => RequestClass::Any,
                    Some(other) => {
                        return Err(KeyError::at(
                            "request",
                            format!(
                            "unknown request class `{other}` (expected command, tmf, an or any)"
                        ),
                        ))
                    }
                };
                if tmf.is_some() && !matches!(class, RequestClass::Tmf(_)) {
                    return Err(KeyError::at("tmf", "only TMF requests have a TMF subtype"));
                }
                if let Some(key) = command_keys {
                    if class != RequestClass::Command {
                        return Err(KeyError::at(
                            key,
                            "only SCSI commands have this (not TMFs or AN requests)",
                        ));
                    }
                }
                class
            }
        };
        Ok(Matcher {
            class,
            queue,
            target: if kind == FaultKind::Event {
                None
            } else {
                raw.target
            },
            lun: if kind == FaultKind::Event {
                None
            } else {
                raw.lun
            },
            opcode,
            lba,
            direction,
        })
    }

    fn schedule(raw: &RawFault) -> Result<Schedule, KeyError> {
        if raw.interval_ms == Some(0) {
            return Err(KeyError::at("interval_ms", "must be at least 1"));
        }
        match (raw.at_ms, raw.interval_ms) {
            (None, None) => Err(KeyError {
                key: None,
                message: "a time-driven fault needs `interval_ms` (a period) or `at_ms` (a moment)"
                    .into(),
            }),
            (at, interval) => Ok(Schedule {
                first: ms(at.or(interval).unwrap_or(0)),
                interval: interval.map(ms),
            }),
        }
    }

    fn action(raw: &RawFault, kind: FaultKind) -> Result<FaultAction, KeyError> {
        Ok(match kind {
            FaultKind::DropInterrupt => FaultAction::DropInterrupt,
            FaultKind::Lose => FaultAction::Lose,
            FaultKind::HangTmf => FaultAction::HangTmf,
            FaultKind::Delay => FaultAction::Delay(Self::delay(raw)?),
            FaultKind::SlowTmf => FaultAction::SlowTmf {
                duration: ms(raw
                    .duration_ms
                    .ok_or_else(|| KeyError::at("duration_ms", "slow-tmf needs `duration_ms`"))?),
                new_commands: match raw.new_commands.as_deref().unwrap_or("busy") {
                    "busy" => NewCommandPolicy::Busy,
                    "hold" => NewCommandPolicy::Hold,
                    other => {
                        return Err(KeyError::at(
                            "new_commands",
                            format!("unknown policy `{other}` (expected busy or hold)"),
                        ))
                    }
                },
            },
            FaultKind::FailTmf => FaultAction::FailTmf(match raw.response.as_deref().unwrap_or("rejected") {
                "rejected" => TmfFailure::FunctionRejected,
                "failed" | "failure" => TmfFailure::Failure,
                other => {
                    return Err(KeyError::at(
                        "response",
                        format!("unknown TMF response `{other}` (expected rejected or failed)"),
                    ))
                }
            }),
            FaultKind::SpuriousInterrupt => {
                let queue = match &raw.queue {
                    None => QueueMatch::FIRST_REQUEST,
                    Some(NumOrName::Num(n)) => u16::try_from(*n)
                        .map_err(|_| KeyError::at("queue", format!("queue {n} is above 65535")))?,
                    Some(NumOrName::Name(s)) => match s.as_str() {
                        "control" => QueueMatch::CONTROL,
                        "event" => QueueMatch::EVENT,
                        "request" => QueueMatch::FIRST_REQUEST,
                        other => {
                            return Err(KeyError::at(
                                "queue",
                                format!("unknown queue `{other}` (expected control, event, request or a number)"),
                            ))
                        }
                    },
                };
                let burst = raw.burst.unwrap_or(1);
                if burst == 0 {
                    return Err(KeyError::at("burst", "must be at least 1"));
                }
                FaultAction::SpuriousInterrupt {
                    queue,
                    burst,
                    schedule: Self::schedule(raw)?,
                }
            }
            FaultKind::Event => FaultAction::Event {
                event: VirtioEvent::from_keys(
                    raw.event.as_deref().ok_or_else(|| KeyError {
                        key: None,
                        message: "kind `event` needs `event` (transport-reset, param-change or events-missed)".into(),
                    })?,
                    raw.target,
                    raw.lun,
                    raw.reason.as_deref(),
                    raw.asc,
                    raw.ascq,
                )?,
                schedule: Self::schedule(raw)?,
            },
            FaultKind::Status => FaultAction::Status(Self::status(raw)?),
            FaultKind::Corrupt => {
                let bytes = raw.bytes.unwrap_or(1);
                if bytes == 0 {
                    return Err(KeyError::at("bytes", "must be at least 1"));
                }
                FaultAction::Corrupt { bytes }
            }
        })
    }

    fn delay(raw: &RawFault) -> Result<DelayDist, KeyError> {
        let dist = raw.distribution.as_deref().unwrap_or("fixed");
        let only = |allowed: &[&'static str]| -> Result<(), KeyError> {
            for (key, set) in [
                ("delay_ms", raw.delay_ms.is_some()),
                ("min_ms", raw.min_ms.is_some()),
                ("max_ms", raw.max_ms.is_some()),
                ("alpha", raw.alpha.is_some()),
            ] {
                if set && !allowed.contains(&key) {
                    return Err(KeyError::at(
                        key,
                        format!("does not apply to distribution `{dist}`"),
                    ));
                }
            }
            Ok(())
        };
        let need = |key: &'static str, v: Option<u64>| {
            v.ok_or_else(|| KeyError {
                key: None,
                message: format!("distribution `{dist}` needs `{key}`"),
            })
        };
        match dist {
            "fixed" => {
                only(&["delay_ms"])?;
                Ok(DelayDist::Fixed(ms(need("delay_ms", raw.delay_ms)?)))
            }
            "uniform" => {
                only(&["min_ms", "max_ms"])?;
                let (min, max) = (need("min_ms", raw.min_ms)?, need("max_ms", raw.max_ms)?);
                if min > max {
                    return Err(KeyError::at(
                        "min_ms",
                        format!("min_ms {min} is above max_ms {max}"),
                    ));
                }
                Ok(DelayDist::Uniform {
                    min: ms(min),
                    max: ms(max),
                })
            }
            "long-tail" => {
                only(&["min_ms", "max_ms", "alpha"])?;
                let (min, max) = (need("min_ms", raw.min_ms)?, need("max_ms", raw.max_ms)?);
                if min == 0 {
                    return Err(KeyError::at(
                        "min_ms",
                        "the long tail's scale must be at least 1 ms",
                    ));
                }
                if min > max {
                    return Err(KeyError::at(
                        "min_ms",
                        format!("min_ms {min} is above max_ms {max}"),
                    ));
                }
                let alpha = raw.alpha.unwrap_or(1.5);
                if !(alpha.is_finite() && alpha > 0.0) {
                    return Err(KeyError::at(
                        "alpha",
                        format!("{alpha} is not a positive number"),
                    ));
                }
                Ok(DelayDist::LongTail {
                    min: ms(min),
                    max: ms(max),
                    alpha,
                })
            }
            other => Err(KeyError::at(
                "distribution",
                format!("unknown distribution `{other}` (expected fixed, uniform or long-tail)"),
            )),
        }
    }

    fn status(raw: &RawFault) -> Result<StatusOverride, KeyError> {
        let name = raw.status.as_deref().ok_or_else(|| KeyError {
            key: None,
            message: "kind `status` needs `status`".into(),
        })?;
        let sense_keys = [
            ("sense_key", raw.sense_key.is_some()),
            ("asc", raw.asc.is_some()),
            ("ascq", raw.ascq.is_some()),
        ];
        if name != "check-condition" {
            if let Some((k, _)) = sense_keys.iter().find(|(_, set)| *set) {
                return Err(KeyError::at(k, "only applies to status `check-condition`"));
            }
        }
        if name != "short-transfer" && raw.residual.is_some() {
            return Err(KeyError::at(
                "residual",
                "only applies to status `short-transfer`",
            ));
        }
        match name {
            "check-condition" => {
                let sense_key = raw.sense_key.ok_or_else(|| KeyError {
                    key: None,
                    message: "status `check-condition` needs `sense_key`".into(),
                })?;
                if sense_key > 0x0f {
                    return Err(KeyError::at(
                        "sense_key",
                        format!("{sense_key:#x} is above 0xf"),
                    ));
                }
                Ok(StatusOverride::CheckCondition {
                    sense_key,
                    asc: raw.asc.unwrap_or(0),
                    ascq: raw.ascq.unwrap_or(0),
                })
            }
            "short-transfer" => {
                let residual = raw.residual.ok_or_else(|| KeyError {
                    key: None,
                    message: "status `short-transfer` needs `residual` (bytes)".into(),
                })?;
                if residual == 0 {
                    return Err(KeyError::at("residual", "must be at least 1"));
                }
                Ok(StatusOverride::ShortTransfer { residual })
            }
            other => StatusOverride::NAMES
                .iter()
                .find(|(n, _)| *n == other)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    let names: Vec<&str> = StatusOverride::NAMES.iter().map(|(n, _)| *n).collect();
                    KeyError::at(
                        "status",
                        format!(
                            "unknown status `{other}` (expected {} or short-transfer)",
                            names.join(", ")
                        ),
                    )
                }),
        }
    }

    /// Parse the `--fault` shorthand `KIND:key=value,key=value`.
    ///
    /// Values: `true`/`false`, integers (decimal or `0x` hex), decimals, ranges `A..B` (for `lba` and `window_ms`),
    /// anything else is a string. The result goes through the same validation as a
    /// `[[fault]]` table.
    pub fn from_shorthand(text: &str, allow_corruption: bool) -> Result<FaultSpec, PlanError> {
        let err = |message: String| PlanError::InvalidShorthand {
            text: text.to_owned(),
            message,
        };
        let (kind, rest) = match text.split_once(':') {
            Some((k, r)) => (k.trim(), r),
            None => (text.trim(), ""),
        };
        if kind.is_empty() {
            return Err(err("missing fault kind before `:`".into()));
        }
        let mut table = toml::Table::new();
        table.insert("kind".into(), toml::Value::String(kind.into()));
        for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| err(format!("`{pair}` is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            if key == "kind" {
                return Err(err("the kind goes before the `:`".into()));
            }
            if table.insert(key.into(), shorthand_value(value)).is_some() {
                return Err(err(format!("key `{key}` given twice")));
            }
        }
        let raw: RawFault = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| err(plain_message(e.message())))?;
        FaultSpec::from_raw(raw, allow_corruption).map_err(|e| err(e.to_string()))
    }

    /// Validate a fault given as JSON (the control socket's `add`).
    pub fn from_json(
        value: serde_json::Value,
        allow_corruption: bool,
    ) -> Result<FaultSpec, PlanError> {
        let raw: RawFault = serde_json::from_value(value).map_err(|e| PlanError::InvalidFault {
            message: plain_message(&e.to_string()),
        })?;
        FaultSpec::from_raw(raw, allow_corruption).map_err(|e| PlanError::InvalidFault {
            message: e.to_string(),
        })
    }
}

/// Make serde's messages plain: name the unknown key with a suggestion instead of listing
/// every key, and say what range an integer must be in.
fn plain_message(message: &str) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, rest)) = rest.split_once('`') {
            let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
            let hint = known
                .iter()
                .map(|k| (edit_distance(key, k), *k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map_or(String::new(), |(_, k)| format!(" (did you mean `{k}`?)"));
            return format!("unknown key `{key}`{hint}");
        }
    }
    message
        .replace("expected u8", "expected an integer from 0 to 255")
        .replace("expected u16", "expected an integer from 0 to 65535")
        .replace("expected u32", "expected a non-negative integer below 2^32")
        .replace("expected u64", "expected a non-negative integer")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn shorthand_value(v: &str) -> toml::Value {
    if let Some((a, b)) = v.split_once("..") {
        if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
            return toml::Value::Array(vec![toml::Value::Integer(a), toml::Value::Integer(b)]);
        }
    }
    match v {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return toml::Value::Integer(i);
        }
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() {
            return toml::Value::Float(f);
        }
    }
    toml::Value::String(v.to_owned())
}

/// A validated fault plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub allow_corruption: bool,
    pub faults: Vec<FaultSpec>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            seed: Plan::DEFAULT_SEED,
            allow_corruption: false,
            faults: Vec::new(),
        }
    }
}

impl Plan {
    pub const DEFAULT_SEED: u64 = 0;

    /// Parse and validate a plan. Pure: this is the fuzzing entry point.
    pub fn from_toml_str(text: &str) -> Result<Plan, PlanError> {
        Plan::from_toml_str_named(text, "<plan>")
    }

    /// As [`Plan::from_toml_str`], naming `origin` (usually the file) in errors.
    pub fn from_toml_str_named(text: &str, origin: &str) -> Result<Plan, PlanError> {
        Plan::parse_named(text, origin).map(|(plan, _)| plan)
    }

    /// The plan, and whether the text gave its seed (an absent one is [`Plan::DEFAULT_SEED`]).
    fn parse_named(text: &str, origin: &str) -> Result<(Plan, bool), PlanError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            PlanError::Invalid {
                origin: origin.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawPlan = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            invalid(offset, plain_message(e.message()))
        })?;
        let allow_corruption = raw.allow_corruption.unwrap_or(false);
        let mut faults = Vec::with_capacity(raw.fault.len());
        for (index, f) in raw.fault.into_iter().enumerate() {
            let spec = FaultSpec::from_raw(f, allow_corruption).map_err(|e| {
                let offset = fault_key_offset(text, index, e.key);
                invalid(offset, format!("fault #{}: {e}", index + 1))
            })?;
            faults.push(spec);
        }
        let plan = Plan {
            seed: raw.seed.unwrap_or(Plan::DEFAULT_SEED),
            allow_corruption,
            faults,
        };
        Ok((plan, raw.seed.is_some()))
    }

    /// Read and validate a plan file.
    pub fn from_file(path: &Path) -> Result<Plan, PlanError> {
        Plan::read_file(path).map(|(plan, _)| plan)
    }

    /// A plan file, and whether it gave its seed.
    fn read_file(path: &Path) -> Result<(Plan, bool), PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::CouldNotRead {
            path: path.display().to_string(),
            source,
        })?;
        Plan::parse_named(&text, &path.display().to_string())
    }

    /// A named preset (`--fault-preset NAME`); presets are plan texts.
    pub fn from_preset(name: &str) -> Result<Plan, PlanError> {
        let text = presets::preset_toml(name).ok_or_else(|| PlanError::UnknownPreset {
            name: name.to_owned(),
            known: presets::PRESET_NAMES.join(", "),
        })?;
        Plan::from_toml_str_named(text, &format!("<preset {name}>"))
    }

    /// The plan the command line asks for: `--fault-plan FILE` (optional), then each
    /// `--fault-preset NAME`, then each `--fault KIND:key=value,...`, in that order. The seed
    /// is the file's when it gives one, else the first preset's (`--seed` overrides both).
    pub fn from_cli(
        plan_file: Option<&Path>,
        presets: &[String],
        shorthands: &[String],
    ) -> Result<Plan, PlanError> {
        let (mut plan, mut seed_given) = match plan_file {
            Some(path) => {
                let (plan, given) = Plan::read_file(path)?;
                (Some(plan), given)
            }
            None => (None, false),
        };
        for name in presets {
            let preset = Plan::from_preset(name)?;
            match &mut plan {
                Some(p) => {
                    if !seed_given {
                        p.seed = preset.seed;
                        seed_given = true;
                    }
                    p.extend(preset)?;
                }
                None => {
                    plan = Some(preset);
                    seed_given = true;
                }
            }
        }
        let mut plan = plan.unwrap_or_default();
        for text in shorthands {
            let spec = FaultSpec::from_shorthand(text, plan.allow_corruption)?;
            plan.push(spec)?;
        }
        Ok(plan)
    }

    /// Append a fault (a shorthand, or another plan's), refusing `corrupt` unless allowed.
    pub fn push(&mut self, spec: FaultSpec) -> Result<(), PlanError> {
        if spec.action.kind() == FaultKind::Corrupt && !self.allow_corruption {
            return Err(PlanError::CorruptionNotAllowed);
        }
        self.faults.push(spec);
        Ok(())
    }

    /// Append another plan's faults (e.g. a preset after the plan file). The seed stays.
    pub fn extend(&mut self, other: Plan) -> Result<(), PlanError> {
        other.faults.into_iter().try_for_each(|f| self.push(f))
    }

    /// Whether any fault is present (an empty plan lets the request path skip the engine).
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Byte offset of `key` in the `index`th `[[fault]]` table (or of the table itself).
fn fault_key_offset(text: &str, index: usize, key: Option<&str>) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(doc) = DeTable::parse(text) else {
        return 0;
    };
    let Some((_, faults)) = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == "fault")
    else {
        return 0;
    };
    let DeValue::Array(array) = faults.get_ref() else {
        return faults.span().start;
    };
    let Some(table) = array.get(index) else {
        return faults.span().start;
    };
    let DeValue::Table(entries) = table.get_ref() else {
        return table.span().start;
    };
    let header = header_offset(text, table.span().start);
    key.and_then(|key| entries.iter().find(|(k, _)| k.get_ref().as_ref() == key))
        .map_or(header, |(k, _)| k.span().start)
}

/// For `[[fault]]` the table's span starts at its first key; point at the header line
/// instead when the whole table is at fault.
fn header_offset(text: &str, start: usize) -> usize {
    let start = start.min(text.len());
    if text.get(start..).is_some_and(|t| t.starts_with("[[")) {
        return start;
    }
    text[..start].rfind("[[").unwrap_or(start)
}
