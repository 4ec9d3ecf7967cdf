//! The validated plan: what each fault matches, when it fires and what it does.

use std::fmt;
use std::time::Duration;

use super::raw::RawFault;
use crate::virtio::{
    VIRTIO_SCSI_T_TMF_ABORT_TASK, VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, VIRTIO_SCSI_T_TMF_CLEAR_ACA,
    VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
    VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, VIRTIO_SCSI_T_TMF_QUERY_TASK,
    VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
};

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
    pub(super) fn own_keys(self) -> &'static [&'static str] {
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
    pub const CONTROL: u16 = crate::virtio::CONTROL_QUEUE;
    pub const EVENT: u16 = crate::virtio::EVENT_QUEUE;
    pub const FIRST_REQUEST: u16 = crate::virtio::FIRST_REQUEST_QUEUE;

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
    pub(super) const NAMES: [(&'static str, StatusOverride); 13] = [
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
