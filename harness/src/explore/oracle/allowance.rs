//! What a plan makes unrecoverable, derived from the plan and the guest's arguments
//! alone (never from a run): the command failures a correct port, miniport and class
//! driver end with under it, whether the port's bus-reset retries or the class driver's
//! unit-attention retries can run out, whether the run may outlast the guest's deadline,
//! and which faults, when they fire, must make the run fail (an error never hidden).

use flakyhba_backend::faults::plan::{
    DataDirection, DelayDist, FaultAction, FaultSpec, Matcher, RequestClass, StatusOverride,
    Trigger, VirtioResponse,
};
use flakyhba_backend::faults::{Plan, VirtioEvent};
use flakyhba_backend::virtio::FIRST_REQUEST_QUEUE;
use guest_miniport::contract::{GuestArgs, Workload};
use guest_miniport::runner::{BUSY_RETRY_DELAY_US, MAX_UNIT_ATTENTION_RETRIES};

/// The commands the guest's runner sends, by the names its result line gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Inquiry,
    ReadCapacity,
    ReportLuns,
    Read,
    Write,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Inquiry,
        Op::ReadCapacity,
        Op::ReportLuns,
        Op::Read,
        Op::Write,
    ];

    /// From the result line's `failed_op`.
    pub fn from_name(name: &str) -> Option<Op> {
        match name {
            "INQUIRY" => Some(Op::Inquiry),
            "READ CAPACITY(10)" | "READ CAPACITY(16)" => Some(Op::ReadCapacity),
            "REPORT LUNS" => Some(Op::ReportLuns),
            "READ" => Some(Op::Read),
            "WRITE" => Some(Op::Write),
            _ => None,
        }
    }

    fn opcodes(self) -> &'static [u8] {
        match self {
            Op::Inquiry => &[0x12],
            Op::ReadCapacity => &[0x25, 0x9e],
            Op::ReportLuns => &[0xa0],
            Op::Read => &[0x28, 0x88],
            Op::Write => &[0x2a, 0x8a],
        }
    }

    fn direction(self) -> DataDirection {
        match self {
            Op::Write => DataDirection::Write,
            _ => DataDirection::Read,
        }
    }

    fn has_lba(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

/// Whether a fault with this matcher can act on `op` (of LUN 0 of target 0, on the
/// first request queue).
pub fn could_match(m: &Matcher, op: Op) -> bool {
    matches!(m.class, RequestClass::Any | RequestClass::Command)
        && m.queue.matches(FIRST_REQUEST_QUEUE)
        && m.target.is_none_or(|t| t == 0)
        && m.lun.is_none_or(|l| l == 0)
        && m.opcode.is_none_or(|o| op.opcodes().contains(&o))
        && (m.lba.is_none() || op.has_lba())
        && m.direction.is_none_or(|d| d == op.direction())
}

/// Whether the matcher can act on TMFs.
fn matches_tmfs(m: &Matcher) -> bool {
    matches!(m.class, RequestClass::Any | RequestClass::Tmf(_))
        && m.opcode.is_none()
        && m.lba.is_none()
        && m.direction.is_none()
}

/// A command failure as the result line reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalStatus {
    pub op: Op,
    /// `SrbStatus::name`.
    pub srb_status: &'static str,
    /// Only for `error`: the SCSI status, and the sense key when there is sense data.
    pub scsi_status: Option<u8>,
    pub sense_key: Option<u8>,
}

/// The final status a correct stack gives a command that `status` ends, or `None` when
/// it is retried or not fatal: UNIT ATTENTION (retried), MEDIUM ERROR on a read
/// (counted), BUSY, TASK SET FULL, VIRTIO_SCSI_S_BUSY (retried after a pause),
/// VIRTIO_SCSI_S_RESET (the port retries it), and a short transfer (its own failure).
pub fn final_status(status: &StatusOverride, op: Op) -> Option<FinalStatus> {
    let (srb_status, scsi_status, sense_key) = match *status {
        StatusOverride::CheckCondition { sense_key: 6, .. } => return None,
        StatusOverride::CheckCondition { sense_key: 3, .. } if op == Op::Read => return None,
        StatusOverride::CheckCondition { sense_key, .. } => ("error", Some(2), Some(sense_key)),
        StatusOverride::ReservationConflict => ("error", Some(0x18), None),
        StatusOverride::Busy
        | StatusOverride::TaskSetFull
        | StatusOverride::ShortTransfer { .. } => return None,
        StatusOverride::Virtio(v) => match v {
            VirtioResponse::Reset | VirtioResponse::Busy => return None,
            VirtioResponse::Overrun => ("data_overrun", None, None),
            VirtioResponse::Aborted => ("aborted", None, None),
            VirtioResponse::BadTarget => ("selection_timeout", None, None),
            VirtioResponse::TransportFailure
            | VirtioResponse::TargetFailure
            | VirtioResponse::NexusFailure
            | VirtioResponse::Failure => ("hba_error", None, None),
        },
    };
    Some(FinalStatus {
        op,
        srb_status,
        scsi_status,
        sense_key,
    })
}

/// What a plan makes unrecoverable for the guest's arguments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowance {
    /// Command failures the plan can cause.
    pub finals: Vec<FinalStatus>,
    /// Ops a `short-transfer` can hit: the guest fails with "only N bytes".
    pub short_transfers: Vec<Op>,
    /// More bus resets can hit one command than the port retries it.
    pub bus_reset_final: bool,
    /// More unit attentions can hit one command than the class driver retries it.
    pub unit_attention_final: bool,
    /// The plan's worst case may outlast the guest's deadline.
    pub timeouts: bool,
    /// `corrupt` faults that can hit reads, writes: wrong data is the plan's doing.
    pub corrupt_reads: bool,
    pub corrupt_writes: bool,
    /// Ids (1-based, plan order) of faults that make the run fail whenever they fire.
    pub must_fail: Vec<u32>,
    /// The plan's worst case, in ms of guest time (see [`Allowance::time_budget_ms`]).
    pub budget_ms: u64,
}

/// Most times a fault can fire: `times`, else unbounded.
fn max_fires(t: &Trigger) -> Option<u64> {
    t.times
}

/// Whether a fault can fire at all more than `n` times.
fn can_fire_more_than(t: &Trigger, n: u64) -> bool {
    max_fires(t).is_none_or(|m| m > n)
}

/// The longest delay a distribution draws.
fn max_delay_ms(d: &DelayDist) -> u64 {
    match *d {
        DelayDist::Fixed(t) => t.as_millis() as u64,
        DelayDist::Uniform { max, .. } | DelayDist::LongTail { max, .. } => max.as_millis() as u64,
    }
}

/// Whether a fault can end a command by a bus reset or a VIRTIO_SCSI_S_RESET: a lost
/// command or one delayed past its timeout (the port resets the bus), a `reset` status,
/// or a TRANSPORT_RESET event (the miniport resets the LUs with requests outstanding).
fn causes_resets(f: &FaultSpec, a: &GuestArgs) -> bool {
    if let FaultAction::Event {
        event: VirtioEvent::TransportReset { .. },
        ..
    } = f.action
    {
        return true;
    }
    let commands = Op::ALL.iter().any(|&op| could_match(&f.matcher, op));
    commands
        && match &f.action {
            FaultAction::Lose => true,
            FaultAction::Delay(d) => max_delay_ms(d) >= u64::from(a.srb_timeout_ms),
            FaultAction::Status(StatusOverride::Virtio(VirtioResponse::Reset)) => true,
            _ => false,
        }
}

/// Most times a fault can cause a reset: `times`, else one for an event at one moment,
/// else unbounded.
fn max_resets(f: &FaultSpec) -> Option<u64> {
    match f.action.schedule() {
        Some(s) if s.interval.is_none() => Some(f.trigger.times.unwrap_or(1).min(1)),
        _ => max_fires(&f.trigger),
    }
}

/// Whether a fault can make the miniport reset the virtio device (a TMF not answered
/// in time, or answered with a failure), which ends whatever the device held.
fn causes_device_resets(f: &FaultSpec, a: &GuestArgs) -> bool {
    match &f.action {
        FaultAction::HangTmf | FaultAction::FailTmf(_) => true,
        FaultAction::SlowTmf { duration, .. } => {
            duration.as_millis() as u64 >= u64::from(a.tmf_timeout_ms)
        }
        FaultAction::Delay(d) => {
            matches_tmfs(&f.matcher) && max_delay_ms(d) >= u64::from(a.tmf_timeout_ms)
        }
        _ => false,
    }
}

impl Allowance {
    pub fn derive(plan: &Plan, a: &GuestArgs) -> Allowance {
        let mut allow = Allowance {
            budget_ms: Allowance::time_budget_ms(plan, a),
            ..Allowance::default()
        };
        allow.timeouts = allow.budget_ms.saturating_mul(2) > u64::from(a.deadline_ms);
        // Bus resets one command can meet: the runner's own, and each one a fault causes.
        let runner_resets = u64::from(a.workload == Workload::ResetUnderLoad);
        let fault_resets = plan
            .faults
            .iter()
            .filter(|f| causes_resets(f, a))
            .map(max_resets)
            .try_fold(0u64, |sum, n| n.map(|n| sum.saturating_add(n)));
        let resets = fault_resets.map(|n| n + runner_resets);
        allow.bus_reset_final = resets.is_none_or(|n| n > u64::from(a.retries));
        // Every reset raises a unit attention too.
        allow.unit_attention_final =
            resets.is_none_or(|n| n >= u64::from(MAX_UNIT_ATTENTION_RETRIES));
        let device_resets = plan.faults.iter().any(|f| causes_device_resets(f, a));
        let interference = device_resets || resets != Some(0);
        for (i, f) in plan.faults.iter().enumerate() {
            let ops: Vec<Op> = Op::ALL
                .into_iter()
                .filter(|&op| could_match(&f.matcher, op))
                .collect();
            match &f.action {
                FaultAction::Status(StatusOverride::ShortTransfer { .. }) => {
                    allow.short_transfers.extend(&ops);
                    // Only reads and writes check the length they got.
                    let checked = !ops.is_empty() && ops.iter().all(|op| op.has_lba());
                    if checked && !interference {
                        allow.must_fail.push(i as u32 + 1);
                    }
                }
                FaultAction::Status(s) => {
                    let finals: Vec<FinalStatus> =
                        ops.iter().filter_map(|&op| final_status(s, op)).collect();
                    let always_final = !ops.is_empty() && finals.len() == ops.len();
                    if let StatusOverride::CheckCondition { sense_key: 6, .. } = s {
                        allow.unit_attention_final |=
                            can_fire_more_than(&f.trigger, u64::from(MAX_UNIT_ATTENTION_RETRIES));
                    }
                    if always_final && !interference {
                        allow.must_fail.push(i as u32 + 1);
                    }
                    allow.finals.extend(finals);
                }
                FaultAction::Corrupt { .. } => {
                    allow.corrupt_reads |=
                        ops.iter().any(|op| op.direction() == DataDirection::Read);
                    allow.corrupt_writes |= ops.contains(&Op::Write);
                }
                _ => {}
            }
        }
        allow
    }

    /// The plan's worst case in ms of guest time: the workload's own time plus, for
    /// each fault, what one firing costs (a lost command: its timeout, the TMF bound
    /// and the reset hold; BUSY: the class driver's pause; ...) times how often it can
    /// fire. Generous on purpose: it decides the deadline a case is given, and whether a
    /// timeout is the plan's doing.
    pub fn time_budget_ms(plan: &Plan, a: &GuestArgs) -> u64 {
        let requests = match a.workload {
            Workload::Bench => u64::from(a.blocks),
            _ => 2 * u64::from(a.blocks),
        } + 4;
        let hold = u64::from(a.hold_ms);
        let reset = u64::from(a.tmf_timeout_ms) + hold + 50;
        let lost = u64::from(a.srb_timeout_ms) + reset;
        let deadline = u64::from(a.deadline_ms);
        let mut budget = 300 + 3 * requests;
        let mut resets = u64::from(a.workload == Workload::ResetUnderLoad);
        if resets > 0 {
            budget += reset;
        }
        for f in &plan.faults {
            if causes_resets(f, a) {
                resets += max_fires(&f.trigger).unwrap_or(requests);
            }
        }
        for f in &plan.faults {
            let t = &f.trigger;
            // How often it can fire: its own cap, else every request it can match (twice
            // over when it fires by chance: retries are matched again).
            let tmfs = if matches_tmfs(&f.matcher) { resets } else { 0 };
            let matched = (command_matches(&f.matcher, a) + tmfs)
                * if t.probability.is_some() { 2 } else { 1 };
            let fires = max_fires(t).unwrap_or(matched).min(matched.max(1));
            let each = match &f.action {
                FaultAction::Lose => lost,
                FaultAction::Delay(d) if max_delay_ms(d) >= u64::from(a.srb_timeout_ms) => lost,
                FaultAction::Delay(d) => max_delay_ms(d) + 1,
                FaultAction::SlowTmf { duration, .. } => (duration.as_millis() as u64).min(reset),
                FaultAction::HangTmf | FaultAction::FailTmf(_) => reset,
                // Fires on every retry too: without a cap, BUSY and its kin never end.
                FaultAction::Status(s) if retried(s) && fires_on_every_match(t) => UNBOUNDED,
                FaultAction::Status(s) => status_cost(s, a),
                FaultAction::DropInterrupt if a.irq => 2 * u64::from(a.watchdog_us) / 1000,
                FaultAction::Event { event, schedule } => {
                    let times = schedule
                        .interval
                        .map_or(1, |i| deadline / (i.as_millis() as u64).max(1) + 1);
                    let each = match event {
                        VirtioEvent::TransportReset { .. } => hold + reset + 20,
                        _ => 20,
                    };
                    budget = budget.saturating_add(each * max_fires(t).unwrap_or(times).min(times));
                    continue;
                }
                _ => 0,
            };
            budget = budget.saturating_add(each.saturating_mul(fires));
        }
        budget
    }
}

/// How many commands of a run a matcher can take: each of the runner's commands it
/// can match, as often as the workload sends it.
fn command_matches(m: &Matcher, a: &GuestArgs) -> u64 {
    Op::ALL
        .into_iter()
        .filter(|&op| could_match(m, op))
        .map(|op| match op {
            Op::Inquiry | Op::ReadCapacity => 1,
            // A rescan after each bus change.
            Op::ReportLuns => 4,
            Op::Read => u64::from(a.blocks),
            Op::Write if a.workload.writes() => u64::from(a.blocks),
            Op::Write => 0,
        })
        .sum()
}

/// A budget no deadline holds.
const UNBOUNDED: u64 = u64::MAX / 4;

/// Statuses the class driver retries after a pause, for as long as they come.
fn retried(s: &StatusOverride) -> bool {
    matches!(
        s,
        StatusOverride::Busy
            | StatusOverride::TaskSetFull
            | StatusOverride::Virtio(VirtioResponse::Busy)
    )
}

/// Whether a fault fires on every match from some point on, for ever.
fn fires_on_every_match(t: &Trigger) -> bool {
    t.times.is_none() && t.every.is_none_or(|n| n == 1) && t.probability.is_none_or(|p| p >= 1.0)
}

/// What one firing of a status fault costs: BUSY and its kin wait the class driver's
/// pause, a unit attention or a reset completion one more round trip.
fn status_cost(s: &StatusOverride, a: &GuestArgs) -> u64 {
    match s {
        StatusOverride::Busy
        | StatusOverride::TaskSetFull
        | StatusOverride::Virtio(VirtioResponse::Busy) => BUSY_RETRY_DELAY_US / 1000 + 1,
        StatusOverride::Virtio(VirtioResponse::Reset) => u64::from(a.tick_us) / 1000 + 2,
        _ => 2,
    }
}
