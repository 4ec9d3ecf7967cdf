//! The port driver, on the ScsiPort/Storport model: SCSI request blocks, the
//! [`Miniport`] trait (HwFindAdapter, HwInitialize, HwStartIo, HwInterrupt, HwTimer,
//! HwResetBus), the notifications a miniport sends through [`PortContext`], the timer
//! service, and [`Port`], which queues SRBs, starts them, dispatches platform events and
//! hands completed SRBs back. Rule ids (T1.., N1..) refer to docs/miniport-rules.md.
//!
//! Every miniport routine runs through one wrapper that measures it (P4) and lets the
//! [`checker`] see what the miniport did; the port's own duties (timer service, deferred
//! interrupt callbacks, request timeouts and the reset hold) are checked by the same
//! checker against an independent model, so a broken port is caught as well.

use core::cell::Cell;
use core::fmt;

use crate::platform::{Events, Platform};

pub mod checker;
pub mod handoff;
#[cfg(test)]
mod multichannel_tests;
#[cfg(test)]
mod rule_tests;
#[cfg(test)]
mod tests;
pub mod timer;

pub use checker::{Checker, CheckerConfig, Routine, RoutineTimes, Rule, Violation};
use timer::ShadowTimer;
pub use timer::TimerService;

/// Default SRB timeout (the Windows disk class default, TimeOutValue 10 s).
pub const DEFAULT_SRB_TIMEOUT_US: u32 = 10_000_000;
/// Default reset hold period: ScsiPort holds requests 4 s after a bus reset.
pub const DEFAULT_RESET_HOLD_US: u32 = 4_000_000;
/// Default number of times the port retries an SRB the miniport completed with
/// SRB_STATUS_BUS_RESET.
pub const DEFAULT_BUS_RESET_RETRIES: u32 = 4;

/// SRB slots of a port: the most SRBs submitted and not yet taken back.
pub const MAX_SRBS: usize = 32;
/// Longest CDB an SRB carries.
pub const MAX_CDB: usize = 32;
/// Sense bytes an SRB keeps (fixed-format sense is 18; descriptor sense may be longer).
pub const SENSE_BUFFER_LEN: usize = 64;
/// Logical units a port tracks at once.
pub const MAX_LUS: usize = 8;

/// Identifies an SRB from submission to completion.
pub type Tag = u32;

/// Direction of an SRB's data transfer, seen from the initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Device to memory (READ).
    In,
    /// Memory to device (WRITE).
    Out,
}

/// An SRB's data buffer: memory the device can reach by `device_address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataBuffer {
    pub device_address: u64,
    pub ptr: *mut u8,
    pub len: u32,
    pub direction: DataDirection,
}

impl DataBuffer {
    pub const NONE: DataBuffer = DataBuffer {
        device_address: 0,
        ptr: core::ptr::null_mut(),
        len: 0,
        direction: DataDirection::None,
    };
}

/// SRB_STATUS_*: how the port and miniport ended a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrbStatus {
    /// Not completed yet.
    Pending,
    Success,
    /// The target returned a SCSI status other than GOOD (see `scsi_status`, sense).
    Error,
    BusReset,
    Aborted,
    Timeout,
    /// SRB_STATUS_SELECTION_TIMEOUT / NO_DEVICE: no such target or LU.
    SelectionTimeout,
    InvalidRequest,
    DataOverrun,
    Busy,
    /// The HBA failed the request (transport or target failure).
    HbaError,
}

impl SrbStatus {
    pub const fn name(self) -> &'static str {
        match self {
            SrbStatus::Pending => "pending",
            SrbStatus::Success => "success",
            SrbStatus::Error => "error",
            SrbStatus::BusReset => "bus_reset",
            SrbStatus::Aborted => "aborted",
            SrbStatus::Timeout => "timeout",
            SrbStatus::SelectionTimeout => "selection_timeout",
            SrbStatus::InvalidRequest => "invalid_request",
            SrbStatus::DataOverrun => "data_overrun",
            SrbStatus::Busy => "busy",
            SrbStatus::HbaError => "hba_error",
        }
    }
}

/// SCSI status codes (SAM).
pub mod scsi_status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
}

/// A SCSI request block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Srb {
    pub path: u8,
    pub target: u8,
    pub lun: u8,
    pub cdb: [u8; MAX_CDB],
    pub cdb_len: u8,
    pub data: DataBuffer,
    pub srb_status: SrbStatus,
    pub scsi_status: u8,
    pub sense: [u8; SENSE_BUFFER_LEN],
    /// Valid sense bytes.
    pub sense_len: u8,
    /// Bytes actually transferred, set at completion (the request's length minus the
    /// residual).
    pub data_transfer_length: u32,
    /// Set by the port at submission.
    pub tag: Tag,
    /// TimeOutValue: the port resets the bus when the SRB stays outstanding longer (P1).
    pub timeout_us: u32,
}

impl Srb {
    /// An SRB for `cdb` (truncated to [`MAX_CDB`]) to the given LU.
    pub fn new(path: u8, target: u8, lun: u8, cdb: &[u8], data: DataBuffer) -> Srb {
        let mut c = [0; MAX_CDB];
        let n = cdb.len().min(MAX_CDB);
        c[..n].copy_from_slice(&cdb[..n]);
        Srb {
            path,
            target,
            lun,
            cdb: c,
            cdb_len: n as u8,
            data,
            srb_status: SrbStatus::Pending,
            scsi_status: scsi_status::GOOD,
            sense: [0; SENSE_BUFFER_LEN],
            sense_len: 0,
            data_transfer_length: 0,
            tag: 0,
            timeout_us: DEFAULT_SRB_TIMEOUT_US,
        }
    }

    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..usize::from(self.cdb_len)]
    }

    pub fn sense(&self) -> &[u8] {
        &self.sense[..usize::from(self.sense_len)]
    }

    /// Sense key of fixed or descriptor format sense data, if any.
    pub fn sense_key(&self) -> Option<u8> {
        let s = self.sense();
        match s.first().map(|b| b & 0x7f) {
            Some(0x70 | 0x71) => s.get(2).map(|b| b & 0xf),
            Some(0x72 | 0x73) => s.get(1).map(|b| b & 0xf),
            _ => None,
        }
    }

    fn lu(&self) -> LuAddress {
        LuAddress {
            path: self.path,
            target: self.target,
            lun: self.lun,
        }
    }
}

/// An SRB the miniport holds between HwStartIo and RequestComplete. It can be neither
/// copied nor cloned, and [`PortContext::request_complete`] takes it by value: after
/// completion the miniport has nothing left to touch the SRB with (N1).
///
/// The correct order compiles:
/// ```
/// use guest_miniport::port::{PortContext, SrbHandle, SrbStatus};
/// fn complete(ctx: &mut PortContext<'_>, srb: SrbHandle) {
///     ctx.srb_mut(&srb).srb_status = SrbStatus::Success;
///     ctx.request_complete(srb);
/// }
/// ```
/// N1's mutant, touching the SRB after RequestComplete, does not:
/// ```compile_fail,E0382
/// use guest_miniport::port::{PortContext, SrbHandle, SrbStatus};
/// fn complete(ctx: &mut PortContext<'_>, srb: SrbHandle) {
///     ctx.request_complete(srb);
///     ctx.srb_mut(&srb).srb_status = SrbStatus::Success;
/// }
/// ```
/// nor does keeping a copy to complete it twice:
/// ```compile_fail,E0599
/// use guest_miniport::port::{PortContext, SrbHandle};
/// fn complete(ctx: &mut PortContext<'_>, srb: SrbHandle) {
///     let kept = srb.clone();
///     ctx.request_complete(srb);
///     ctx.request_complete(kept);
/// }
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct SrbHandle {
    slot: u8,
    tag: Tag,
}

impl SrbHandle {
    pub fn tag(&self) -> Tag {
        self.tag
    }
}

/// HwStartIo's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum StartIo {
    /// The miniport owns the SRB until it sends RequestComplete.
    Accepted,
    /// The miniport cannot take it now and gives it back; the port requeues it at the
    /// front and retries after the miniport's next NextRequest/NextLuRequest.
    Busy(SrbHandle),
}

/// What HwFindAdapter reports about the HBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterCapabilities {
    /// Most SRBs the miniport takes at once over all LUs.
    pub max_outstanding: u16,
    /// The HBA queues several requests per LU, so NextLuRequest is allowed (N3).
    pub tagged_queuing: bool,
    /// Most SRBs outstanding on one LU when `tagged_queuing`.
    pub queue_depth: u16,
    /// The miniport takes interrupts. Without them it must poll from HwTimer (T7).
    pub interrupts: bool,
}

/// Path, target, LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LuAddress {
    pub path: u8,
    pub target: u8,
    pub lun: u8,
}

/// A miniport: the HBA-specific routines the port calls. Each routine reaches the port
/// only through the [`PortContext`] it is given.
pub trait Miniport {
    /// Why HwFindAdapter or HwInitialize failed.
    type Error: fmt::Display;

    /// HwFindAdapter: find and configure the HBA; report its capabilities.
    fn find_adapter(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, Self::Error>;
    /// HwInitialize: make the HBA ready for I/O.
    fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), Self::Error>;
    /// HwStartIo: start `srb`. To take another one the miniport must send NextRequest
    /// or NextLuRequest (N2, N3).
    fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo;
    /// HwInterrupt for MSI-X table entry `vector`: returns false at once when the
    /// interrupt is not this HBA's (I1).
    fn interrupt(&mut self, ctx: &mut PortContext<'_>, vector: u16) -> bool;
    /// HwTimer: runs once per RequestTimerCall (T4).
    fn timer(&mut self, ctx: &mut PortContext<'_>);
    /// HwResetBus: reset `path`, completing every active request (N5, P2).
    fn reset_bus(&mut self, ctx: &mut PortContext<'_>, path: u8) -> bool;
    /// HwEnableInterruptsCallback, after HwInterrupt asked for CallEnableInterrupts:
    /// finishes the deferred work with HwInterrupt held off, then asks for
    /// CallDisableInterrupts (I3, I4). The port calls it again on each dispatch until
    /// it does.
    fn enable_interrupts_callback(&mut self, _ctx: &mut PortContext<'_>) {}
    /// HwDisableInterruptsCallback: re-enables the HBA's interrupts (I4).
    fn disable_interrupts_callback(&mut self, _ctx: &mut PortContext<'_>) {}
    /// Whether the miniport has a HwTimer routine to pass to RequestTimerCall (N6, T7).
    fn has_timer(&self) -> bool {
        true
    }
    /// Whether a bus reset the miniport started is still under way (its TMFs not all
    /// answered, or the HBA being set up again), so the adapter is not idle yet.
    fn resetting(&self) -> bool {
        false
    }
    /// Completions the HBA has posted that the miniport has not taken yet: for the report
    /// of a run that gave up (they are there, but no interrupt or poll took them).
    fn completions_waiting(&self) -> u32 {
        0
    }
}

/// Counters the port keeps about the miniport's behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub submitted: u64,
    pub completed: u64,
    pub start_io_calls: u64,
    pub start_io_busy: u64,
    pub interrupts: u64,
    /// HwInterrupt returned false (not ours).
    pub interrupts_not_claimed: u64,
    pub timer_calls: u64,
    pub timer_requests: u64,
    pub stall_calls: u64,
    pub stall_us_total: u64,
    pub stall_us_max: u32,
    pub resets_detected: u64,
    pub bus_resets: u64,
    /// Bus resets the port started because an SRB timed out (P1).
    pub srb_timeouts: u64,
    /// SRBs the port took back from the miniport when a reset hold ended (P2, N5).
    pub reclaimed: u64,
    /// SRBs completed with SRB_STATUS_BUS_RESET that the port queued again.
    pub bus_reset_retries: u64,
    /// BusChangeDetected notifications.
    pub bus_changes: u64,
    pub enable_callbacks: u64,
    pub disable_callbacks: u64,
}

/// Why the port refused or gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortError<E> {
    /// All [`MAX_SRBS`] slots are in use.
    QueueFull,
    /// More distinct LUs than [`MAX_LUS`] have requests.
    TooManyLus,
    NotInitialized,
    /// `run_until_idle` passed its deadline with requests outstanding.
    Deadline,
    FindAdapter(E),
    Initialize(E),
}

impl<E: fmt::Display> fmt::Display for PortError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::QueueFull => write!(f, "port queue full"),
            PortError::TooManyLus => write!(f, "too many logical units"),
            PortError::NotInitialized => write!(f, "adapter not initialized"),
            PortError::Deadline => write!(f, "requests still outstanding at the deadline"),
            PortError::FindAdapter(e) => write!(f, "HwFindAdapter failed: {e}"),
            PortError::Initialize(e) => write!(f, "HwInitialize failed: {e}"),
        }
    }
}

/// Port settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Timer resolution (T2): the platform's tick.
    pub tick_us: u32,
    /// How long new requests are held after a bus reset or ResetDetected (P2, N5).
    pub reset_hold_us: u32,
    /// How often an SRB completed with SRB_STATUS_BUS_RESET is queued again before the
    /// port hands it back with that status.
    pub bus_reset_retries: u32,
    pub checker: CheckerConfig,
}

impl PortConfig {
    pub fn new(tick_us: u32) -> Self {
        PortConfig {
            tick_us,
            reset_hold_us: DEFAULT_RESET_HOLD_US,
            bus_reset_retries: DEFAULT_BUS_RESET_RETRIES,
            checker: CheckerConfig::default(),
        }
    }
}

/// A deliberately broken port, so tests can show the checker catches a port that
/// breaks its side of a rule.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flaw {
    /// T1: a new RequestTimerCall does not replace the pending one.
    KeepFirstTimerRequest,
    /// T2: the interval is truncated to the tick instead of rounded up.
    TruncateTimerInterval,
    /// T3: RequestTimerCall(0) is ignored.
    IgnoreTimerCancel,
    /// T4: an expired request stays pending and fires on every tick.
    TimerNotConsumed,
    /// I4: HwInterrupt is called while HwEnableInterruptsCallback owns the HBA.
    InterruptDuringEnableCallback,
    /// N2: a second request goes to a busy LU without tagged queuing.
    IgnoreLuBusy,
    /// P1: timed-out SRBs do not lead to HwResetBus.
    NoTimeoutReset,
    /// P2: requests are started during the reset hold.
    NoResetHold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Queued,
    /// Given to HwStartIo; the miniport holds the handle.
    Active,
    Completed,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: SlotState,
    srb: Srb,
    started_us: u64,
    /// P1 already reported for this SRB.
    timeout_flagged: bool,
    /// Times the port queued it again after a bus reset.
    retries: u32,
}

#[derive(Clone, Copy, Debug)]
struct LuState {
    address: LuAddress,
    active: u16,
    /// NextLuRequest received since the last HwStartIo to this LU.
    ready: bool,
}

/// Slot indices in arrival order; removal from the middle shifts (at most MAX_SRBS).
#[derive(Clone, Copy, Debug)]
struct SlotList {
    items: [u8; MAX_SRBS],
    len: usize,
}

impl SlotList {
    const fn new() -> Self {
        SlotList {
            items: [0; MAX_SRBS],
            len: 0,
        }
    }
    fn push_back(&mut self, slot: u8) {
        self.items[self.len] = slot;
        self.len += 1;
    }
    fn push_front(&mut self, slot: u8) {
        self.items.copy_within(0..self.len, 1);
        self.items[0] = slot;
        self.len += 1;
    }
    fn remove(&mut self, at: usize) -> u8 {
        let slot = self.items[at];
        self.items.copy_within(at + 1..self.len, at);
        self.len -= 1;
        slot
    }
    fn as_slice(&self) -> &[u8] {
        &self.items[..self.len]
    }
}

/// The deferred interrupt flow of CallEnableInterrupts / CallDisableInterrupts (I3, I4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptPhase {
    /// HwInterrupt is called for each interrupt.
    Normal,
    /// HwInterrupt asked for CallEnableInterrupts; the callback runs after it returns.
    EnableRequested,
    /// HwEnableInterruptsCallback owns the HBA: HwInterrupt is not called (I4).
    EnableCallback,
    /// The enable callback asked for CallDisableInterrupts.
    DisableRequested,
}

/// A reset hold period (P2 after HwResetBus, N5 after ResetDetected).
#[derive(Clone, Copy, Debug)]
struct Hold {
    until_us: u64,
    rule: Rule,
    /// Slots active when the reset happened: each must be completed before the end.
    slots: u32,
}

/// The port's state that notifications act on.
pub struct PortState {
    slots: [Slot; MAX_SRBS],
    queued: SlotList,
    completed: SlotList,
    lus: [Option<LuState>; MAX_LUS],
    /// NextRequest received since the last HwStartIo (N2).
    next_request: bool,
    timer: TimerService,
    shadow: ShadowTimer,
    caps: Option<AdapterCapabilities>,
    has_timer: bool,
    active: u16,
    next_tag: Tag,
    stats: PortStats,
    checker: Checker,
    config: PortConfig,
    /// The routine running now, and what it did so far.
    routine: Routine,
    routine_stall_us: u64,
    routine_deferred: bool,
    phase: InterruptPhase,
    /// Vectors that arrived while HwInterrupt was held off (I4).
    held_vectors: u32,
    /// MSI-X entries the miniport asked messages for: its own interrupts (I1).
    own_vectors: u32,
    /// N4: the SRB last accepted by HwStartIo, until NextRequest/NextLuRequest.
    owed_next: Option<u8>,
    owed_completed: bool,
    hold: Option<Hold>,
    last_reset_us: u64,
    /// BusChangeDetected since the owner last looked.
    bus_change: bool,
    /// T7 reported for the current stretch without a pending HwTimer.
    t7_flagged: bool,
    /// Reads through handles the port had already taken back (N1), counted by `srb()`.
    stale_reads: Cell<u32>,
    /// What a stale handle reads and writes instead of another request's SRB.
    limbo: Srb,
    gate: handoff::RoutineGate,
    #[cfg(test)]
    flaw: Option<Flaw>,
}

impl PortState {
    fn lu_index(&self, address: LuAddress) -> Option<usize> {
        self.lus
            .iter()
            .position(|l| l.is_some_and(|l| l.address == address))
    }

    #[cfg(test)]
    fn flawed(&self, f: Flaw) -> bool {
        self.flaw == Some(f)
    }

    /// Whether `h` still names an SRB the miniport owns.
    fn owns(&self, h: &SrbHandle) -> bool {
        let s = &self.slots[usize::from(h.slot)];
        s.state == SlotState::Active && s.srb.tag == h.tag
    }

    fn active_mask(&self) -> u32 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SlotState::Active)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The miniport (or the end of a reset hold) gave an SRB back: it no longer counts
    /// as active on its LU.
    fn release_slot(&mut self, slot: u8) {
        let lu = self.slots[usize::from(slot)].srb.lu();
        if let Some(l) = self.lu_index(lu).and_then(|i| self.lus[i].as_mut()) {
            l.active = l.active.saturating_sub(1);
        }
        self.active = self.active.saturating_sub(1);
        if let Some(h) = self.hold.as_mut() {
            h.slots &= !(1 << slot);
        }
    }

    /// The port takes an SRB back into its completed list.
    fn finish_slot(&mut self, slot: u8) {
        self.release_slot(slot);
        self.slots[usize::from(slot)].state = SlotState::Completed;
        self.completed.push_back(slot);
        self.stats.completed += 1;
    }

    /// An SRB completed with SRB_STATUS_BUS_RESET goes to the front of the queue again,
    /// as it was submitted, while it has retries left. Returns false when it has none.
    fn retry_slot(&mut self, slot: u8) -> bool {
        let s = &self.slots[usize::from(slot)];
        if s.srb.srb_status != SrbStatus::BusReset || s.retries >= self.config.bus_reset_retries {
            return false;
        }
        self.release_slot(slot);
        let s = &mut self.slots[usize::from(slot)];
        s.state = SlotState::Queued;
        s.retries += 1;
        s.timeout_flagged = false;
        s.srb.srb_status = SrbStatus::Pending;
        s.srb.scsi_status = scsi_status::GOOD;
        s.srb.sense_len = 0;
        s.srb.data_transfer_length = 0;
        self.queued.push_front(slot);
        self.stats.bus_reset_retries += 1;
        true
    }
}

/// What a miniport routine may do to the port: the notifications of
/// ScsiPortNotification, StallExecution, and access to the SRBs it holds.
pub struct PortContext<'a> {
    platform: &'a mut dyn Platform,
    state: &'a mut PortState,
}

impl PortContext<'_> {
    fn violation(&mut self, rule: Rule, message: &'static str, value: u64) {
        let now = self.platform.now_us();
        let routine = self.state.routine;
        self.state
            .checker
            .record(rule, routine, now, message, value);
    }

    /// The SRB behind a handle the miniport holds. A handle the port already took back
    /// reads a blank SRB and is reported (N1).
    pub fn srb(&self, srb: &SrbHandle) -> &Srb {
        if !self.state.owns(srb) {
            self.state.stale_reads.set(self.state.stale_reads.get() + 1);
            return &self.state.limbo;
        }
        &self.state.slots[usize::from(srb.slot)].srb
    }

    pub fn srb_mut(&mut self, srb: &SrbHandle) -> &mut Srb {
        if !self.state.owns(srb) {
            self.violation(
                Rule::N1,
                "miniport wrote an SRB after the port took it back",
                u64::from(srb.tag),
            );
            return &mut self.state.limbo;
        }
        &mut self.state.slots[usize::from(srb.slot)].srb
    }

    /// RequestComplete: the port owns the SRB again (N1: the handle is consumed).
    pub fn request_complete(&mut self, srb: SrbHandle) {
        if !self.state.owns(&srb) {
            // P3: the port completed it already (after a reset hold); once only.
            self.violation(
                Rule::P3,
                "RequestComplete for an SRB the port had already completed",
                u64::from(srb.tag),
            );
            return;
        }
        let slot = usize::from(srb.slot);
        if self.state.slots[slot].srb.srb_status == SrbStatus::Pending {
            self.violation(
                Rule::P3,
                "RequestComplete with SRB_STATUS_PENDING",
                u64::from(srb.tag),
            );
            self.state.slots[slot].srb.srb_status = SrbStatus::HbaError;
        }
        if self.state.owed_next == Some(srb.slot)
            && self.state.slots[slot].srb.srb_status == SrbStatus::Success
        {
            self.state.owed_completed = true;
        }
        if !self.state.retry_slot(srb.slot) {
            self.state.finish_slot(srb.slot);
        }
    }

    /// BusChangeDetected: devices on the bus may have come, gone or changed; the port's
    /// owner should rescan ([`Port::take_bus_change`]).
    pub fn bus_change_detected(&mut self) {
        self.state.stats.bus_changes += 1;
        self.state.bus_change = true;
    }

    fn next_sent(&mut self) {
        self.state.next_request = true;
        self.state.owed_next = None;
        self.state.owed_completed = false;
    }

    /// NextRequest: ready for a request to a target that is not busy (N2).
    pub fn next_request(&mut self) {
        self.next_sent();
    }

    /// NextLuRequest: ready for another request to this LU (N3), and so also for other
    /// LUs. Without tagged queuing it counts as NextRequest only, and is reported.
    pub fn next_lu_request(&mut self, path: u8, target: u8, lun: u8) {
        self.next_sent();
        if !self.state.caps.is_some_and(|c| c.tagged_queuing) {
            self.violation(
                Rule::N3,
                "NextLuRequest without tagged queuing",
                u64::from(lun),
            );
            return;
        }
        let address = LuAddress { path, target, lun };
        if let Some(i) = self.state.lu_index(address) {
            if let Some(l) = self.state.lus[i].as_mut() {
                l.ready = true;
            }
        }
    }

    /// RequestTimerCall(HwTimer, interval_us): T1 to T3.
    pub fn request_timer_call(&mut self, interval_us: u32) {
        self.state.stats.timer_requests += 1;
        if !self.state.has_timer {
            self.violation(
                Rule::N6,
                "RequestTimerCall from a miniport without HwTimer",
                u64::from(interval_us),
            );
            return;
        }
        self.state.timer.request(interval_us);
        self.state.shadow.request(interval_us);
    }

    /// ResetDetected: the HBA saw a bus reset. New requests are held for the reset hold
    /// period; the active ones must still be completed by then (N5).
    pub fn reset_detected(&mut self) {
        self.state.stats.resets_detected += 1;
        if self.state.hold.is_none() {
            let now = self.platform.now_us();
            self.state.hold = Some(Hold {
                until_us: now + u64::from(self.state.config.reset_hold_us),
                rule: Rule::N5,
                slots: self.state.active_mask(),
            });
        }
    }

    /// CallEnableInterrupts, from HwInterrupt: run HwEnableInterruptsCallback deferred,
    /// with HwInterrupt held off (I3, N7).
    pub fn call_enable_interrupts(&mut self) {
        if self.state.routine != Routine::Interrupt || self.state.phase != InterruptPhase::Normal {
            self.violation(Rule::N7, "CallEnableInterrupts outside HwInterrupt", 0);
            return;
        }
        self.state.routine_deferred = true;
        self.state.phase = InterruptPhase::EnableRequested;
    }

    /// CallDisableInterrupts, from HwEnableInterruptsCallback: run
    /// HwDisableInterruptsCallback, after which HwInterrupt is called again (I4, N7).
    pub fn call_disable_interrupts(&mut self) {
        if self.state.routine != Routine::EnableInterruptsCallback {
            self.violation(
                Rule::N7,
                "CallDisableInterrupts outside HwEnableInterruptsCallback",
                0,
            );
            return;
        }
        self.state.phase = InterruptPhase::DisableRequested;
    }

    /// StallExecution: busy-waits, and the port accounts for it (S1, P4).
    pub fn stall_execution(&mut self, us: u32) {
        let st = &mut self.state.stats;
        st.stall_calls += 1;
        st.stall_us_total += u64::from(us);
        st.stall_us_max = st.stall_us_max.max(us);
        self.state.routine_stall_us += u64::from(us);
        if us > self.state.checker.config.max_stall_us {
            let now = self.platform.now_us();
            self.state.checker.stall(self.state.routine, now, us);
        } else {
            self.state.checker.stall(self.state.routine, 0, us);
        }
        self.platform.stall_us(us);
    }

    pub fn now_us(&self) -> u64 {
        self.platform.now_us()
    }

    /// The platform's MSI-X message for `entry` (for the miniport to program the HBA).
    /// The entry counts as the miniport's own interrupt from then on (I1).
    pub fn msi_message(&mut self, entry: u16) -> Option<(u64, u32)> {
        let m = self.platform.msi_message(entry);
        if m.is_some() && entry < 32 {
            self.state.own_vectors |= 1 << entry;
        }
        m
    }

    /// The line-based (INTx) interrupt: platform event `entry` is this HBA's shared
    /// line from now on (I1: HwInterrupt must still tell from the HBA whether it was).
    pub fn connect_line_interrupt(&mut self, entry: u16) {
        if entry < 32 {
            self.state.own_vectors |= 1 << entry;
        }
    }

    /// Whether a RequestTimerCall is pending.
    pub fn timer_pending(&self) -> bool {
        self.state.timer.is_pending()
    }
}

/// A port driving one adapter through miniport `M`.
pub struct Port<M: Miniport> {
    miniport: M,
    state: PortState,
}

impl<M: Miniport> Port<M> {
    /// A port whose timer resolution is `tick_us` (T2; the platform's tick), with the
    /// default reset hold and checker limits.
    pub fn new(miniport: M, tick_us: u32) -> Self {
        Self::with_config(miniport, PortConfig::new(tick_us))
    }

    pub fn with_config(miniport: M, config: PortConfig) -> Self {
        const BLANK: Srb = Srb {
            path: 0,
            target: 0,
            lun: 0,
            cdb: [0; MAX_CDB],
            cdb_len: 0,
            data: DataBuffer::NONE,
            srb_status: SrbStatus::Pending,
            scsi_status: 0,
            sense: [0; SENSE_BUFFER_LEN],
            sense_len: 0,
            data_transfer_length: 0,
            tag: 0,
            timeout_us: DEFAULT_SRB_TIMEOUT_US,
        };
        const EMPTY: Slot = Slot {
            state: SlotState::Free,
            srb: BLANK,
            started_us: 0,
            timeout_flagged: false,
            retries: 0,
        };
        Port {
            miniport,
            state: PortState {
                slots: [EMPTY; MAX_SRBS],
                queued: SlotList::new(),
                completed: SlotList::new(),
                lus: [None; MAX_LUS],
                next_request: false,
                timer: TimerService::new(config.tick_us),
                shadow: ShadowTimer::new(config.tick_us),
                caps: None,
                has_timer: true,
                active: 0,
                next_tag: 1,
                stats: PortStats::default(),
                checker: Checker::new(config.checker),
                config,
                routine: Routine::Port,
                routine_stall_us: 0,
                routine_deferred: false,
                phase: InterruptPhase::Normal,
                held_vectors: 0,
                own_vectors: 0,
                owed_next: None,
                owed_completed: false,
                hold: None,
                last_reset_us: 0,
                bus_change: false,
                t7_flagged: false,
                stale_reads: Cell::new(0),
                limbo: BLANK,
                gate: handoff::RoutineGate::new(),
                #[cfg(test)]
                flaw: None,
            },
        }
    }

    /// Breaks the port on purpose (checker self-tests).
    #[cfg(test)]
    pub(crate) fn set_flaw(&mut self, flaw: Flaw) {
        self.state.flaw = Some(flaw);
        self.state.timer.flaw = Some(flaw);
    }

    /// Runs one miniport routine: measures it (P4, I2), checks what it left behind
    /// (I3, N1, N4). Two clock reads per call, never per loop iteration inside it.
    fn call<R>(
        &mut self,
        platform: &mut dyn Platform,
        routine: Routine,
        f: impl FnOnce(&mut M, &mut PortContext<'_>) -> R,
    ) -> R {
        // Routines Windows runs at DIRQL run with the CPU's interrupts masked.
        let dirql = matches!(
            routine,
            Routine::Interrupt | Routine::Timer | Routine::StartIo | Routine::ResetBus
        );
        let was_enabled = dirql && platform.disable_interrupts();
        let start = platform.now_us();
        let st = &mut self.state;
        if routine == Routine::Interrupt && st.phase == InterruptPhase::EnableCallback {
            st.checker.record(
                Rule::I4,
                Routine::Port,
                start,
                "HwInterrupt called while HwEnableInterruptsCallback owns the HBA",
                0,
            );
        }
        // T5: one routine at a time here; the gate is what a multi-channel port uses.
        let overlap = st.gate.enter(routine);
        if handoff::RoutineGate::breaks_t5(routine, overlap) {
            st.checker.record(
                Rule::T5,
                Routine::Port,
                start,
                "HwTimer and HwInterrupt ran at the same time",
                u64::from(overlap),
            );
        }
        st.routine = routine;
        st.routine_stall_us = 0;
        st.routine_deferred = false;
        let mut ctx = PortContext {
            platform: &mut *platform,
            state: &mut self.state,
        };
        let r = f(&mut self.miniport, &mut ctx);
        let end = platform.now_us();
        if dirql {
            platform.restore_interrupts(was_enabled);
        }
        let st = &mut self.state;
        st.checker.routine_done(
            routine,
            end,
            end.saturating_sub(start),
            st.routine_stall_us,
            st.routine_deferred,
        );
        for _ in 0..st.stale_reads.replace(0) {
            st.checker.record(
                Rule::N1,
                routine,
                end,
                "miniport read an SRB after the port took it back",
                0,
            );
        }
        if st.owed_completed && st.owed_next.is_some() {
            st.checker.record(
                Rule::N4,
                routine,
                end,
                "SRB completed successfully without NextRequest or NextLuRequest",
                0,
            );
            st.owed_next = None;
            st.owed_completed = false;
        }
        st.routine = Routine::Port;
        st.gate.exit(routine);
        r
    }

    /// HwFindAdapter then HwInitialize. The miniport is ready for its first request
    /// afterwards.
    pub fn initialize(
        &mut self,
        platform: &mut dyn Platform,
    ) -> Result<AdapterCapabilities, PortError<M::Error>> {
        self.state.has_timer = self.miniport.has_timer();
        let caps = self
            .call(platform, Routine::FindAdapter, |m, ctx| m.find_adapter(ctx))
            .map_err(PortError::FindAdapter)?;
        self.state.caps = Some(caps);
        if !caps.interrupts && !self.state.has_timer {
            let now = platform.now_us();
            self.state.checker.record(
                Rule::T7,
                Routine::FindAdapter,
                now,
                "miniport without interrupts has no HwTimer to poll with",
                0,
            );
        }
        self.call(platform, Routine::Initialize, |m, ctx| m.initialize(ctx))
            .map_err(PortError::Initialize)?;
        self.state.next_request = true;
        Ok(caps)
    }

    /// Queues `srb`; returns its tag. It is started when the miniport is ready.
    pub fn submit(&mut self, mut srb: Srb) -> Result<Tag, PortError<M::Error>> {
        if self.state.caps.is_none() {
            return Err(PortError::NotInitialized);
        }
        let lu = srb.lu();
        if self.state.lu_index(lu).is_none() {
            let free = self
                .state
                .lus
                .iter()
                .position(|l| l.is_none_or(|l| l.active == 0 && !self.lu_queued(l.address)))
                .ok_or(PortError::TooManyLus)?;
            self.state.lus[free] = Some(LuState {
                address: lu,
                active: 0,
                ready: false,
            });
        }
        let slot = self
            .state
            .slots
            .iter()
            .position(|s| s.state == SlotState::Free)
            .ok_or(PortError::QueueFull)?;
        let tag = self.state.next_tag;
        self.state.next_tag = self.state.next_tag.wrapping_add(1).max(1);
        srb.tag = tag;
        srb.srb_status = SrbStatus::Pending;
        self.state.slots[slot] = Slot {
            state: SlotState::Queued,
            srb,
            started_us: 0,
            timeout_flagged: false,
            retries: 0,
        };
        self.state.queued.push_back(slot as u8);
        self.state.stats.submitted += 1;
        Ok(tag)
    }

    fn lu_queued(&self, lu: LuAddress) -> bool {
        self.state
            .queued
            .as_slice()
            .iter()
            .any(|&s| self.state.slots[usize::from(s)].srb.lu() == lu)
    }

    /// The position in the queue of the first SRB the miniport may take now.
    fn next_startable(&self) -> Option<usize> {
        let st = &self.state;
        let caps = st.caps?;
        if st.active >= caps.max_outstanding {
            return None;
        }
        #[cfg(test)]
        let ignore_busy = st.flawed(Flaw::IgnoreLuBusy);
        #[cfg(not(test))]
        let ignore_busy = false;
        st.queued.as_slice().iter().position(|&s| {
            let lu = st.slots[usize::from(s)].srb.lu();
            let Some(l) = st.lu_index(lu).and_then(|i| st.lus[i]) else {
                return false;
            };
            // N2: NextRequest opens a target that is not busy. N3: NextLuRequest opens
            // that LU up to its queue depth.
            (st.next_request && (l.active == 0 || ignore_busy))
                || (caps.tagged_queuing && l.ready && l.active < caps.queue_depth)
        })
    }

    /// Whether new requests are held now (P2, N5).
    fn holding(&self) -> bool {
        #[cfg(test)]
        if self.state.flawed(Flaw::NoResetHold) {
            return false;
        }
        self.state.hold.is_some()
    }

    /// Passes queued SRBs to HwStartIo while the miniport is ready for them.
    fn start_queued(&mut self, platform: &mut dyn Platform) {
        if self.holding() {
            return;
        }
        while let Some(at) = self.next_startable() {
            let slot = self.state.queued.remove(at);
            let now = platform.now_us();
            let caps = self.state.caps;
            let st = &mut self.state;
            let lu = st.slots[usize::from(slot)].srb.lu();
            let li = st.lu_index(lu);
            // The checker's own view of N2 and P2, independent of next_startable.
            if let Some(l) = li.and_then(|i| st.lus[i]) {
                let may_queue = caps.is_some_and(|c| c.tagged_queuing) && l.ready;
                if l.active > 0 && !may_queue {
                    st.checker.record(
                        Rule::N2,
                        Routine::Port,
                        now,
                        "port sent a second request to a busy LU without tagged queuing",
                        u64::from(lu.lun),
                    );
                }
            }
            if st.hold.is_some() {
                st.checker.record(
                    Rule::P2,
                    Routine::Port,
                    now,
                    "port started a request during the reset hold",
                    0,
                );
            }
            let s = &mut st.slots[usize::from(slot)];
            s.state = SlotState::Active;
            s.started_us = now;
            let handle = SrbHandle {
                slot,
                tag: s.srb.tag,
            };
            st.next_request = false;
            if let Some(l) = li.and_then(|i| st.lus[i].as_mut()) {
                l.ready = false;
                l.active += 1;
            }
            st.active += 1;
            st.stats.start_io_calls += 1;
            st.owed_next = Some(slot);
            st.owed_completed = false;
            match self.call(platform, Routine::StartIo, |m, ctx| m.start_io(ctx, handle)) {
                StartIo::Accepted => {}
                StartIo::Busy(handle) => {
                    let st = &mut self.state;
                    st.stats.start_io_busy += 1;
                    if st.owed_next == Some(handle.slot) {
                        st.owed_next = None;
                    }
                    if !st.owns(&handle) {
                        // Completed and handed back: N1's run-time residue.
                        st.checker.record(
                            Rule::N1,
                            Routine::StartIo,
                            now,
                            "HwStartIo gave back an SRB it had completed",
                            u64::from(handle.tag),
                        );
                        break;
                    }
                    st.slots[usize::from(handle.slot)].state = SlotState::Queued;
                    st.queued.push_front(handle.slot);
                    if let Some(l) = li.and_then(|i| st.lus[i].as_mut()) {
                        l.active -= 1;
                    }
                    st.active -= 1;
                    // Wait for the miniport's next NextRequest before trying again.
                    st.next_request = false;
                    break;
                }
            }
        }
        self.check_polling(platform);
    }

    /// T7: a miniport without interrupts finds completions only from HwTimer.
    fn check_polling(&mut self, platform: &mut dyn Platform) {
        let st = &mut self.state;
        let polling = st.caps.is_some_and(|c| !c.interrupts);
        if polling && st.active > 0 && !st.timer.is_pending() {
            if !st.t7_flagged {
                st.t7_flagged = true;
                let now = platform.now_us();
                st.checker.record(
                    Rule::T7,
                    Routine::Port,
                    now,
                    "miniport without interrupts holds requests and no HwTimer is pending",
                    u64::from(st.active),
                );
            }
        } else {
            st.t7_flagged = false;
        }
    }

    /// HwInterrupt for each vector in `vectors`, unless the enable callback holds them
    /// off (I4).
    fn deliver(&mut self, platform: &mut dyn Platform, vectors: u32) {
        let mut vectors = vectors;
        while vectors != 0 {
            #[cfg(test)]
            let hold_off = self.state.phase != InterruptPhase::Normal
                && !self.state.flawed(Flaw::InterruptDuringEnableCallback);
            #[cfg(not(test))]
            let hold_off = self.state.phase != InterruptPhase::Normal;
            if hold_off {
                // I4: HwInterrupt waits until HwDisableInterruptsCallback ran.
                self.state.held_vectors |= vectors;
                return;
            }
            let v = vectors.trailing_zeros() as u16;
            vectors &= vectors - 1;
            self.state.stats.interrupts += 1;
            let claimed = self.call(platform, Routine::Interrupt, |m, ctx| m.interrupt(ctx, v));
            if !claimed {
                self.state.stats.interrupts_not_claimed += 1;
            } else if self.state.own_vectors & (1 << v) == 0 {
                let now = platform.now_us();
                self.state.checker.record(
                    Rule::I1,
                    Routine::Interrupt,
                    now,
                    "HwInterrupt claimed an interrupt on a vector its HBA does not use",
                    u64::from(v),
                );
            }
        }
    }

    /// Runs the deferred callbacks the interrupt flow asks for (I3, I4).
    fn run_deferred(&mut self, platform: &mut dyn Platform) {
        if matches!(
            self.state.phase,
            InterruptPhase::EnableRequested | InterruptPhase::EnableCallback
        ) {
            self.state.phase = InterruptPhase::EnableCallback;
            self.state.stats.enable_callbacks += 1;
            self.call(platform, Routine::EnableInterruptsCallback, |m, ctx| {
                m.enable_interrupts_callback(ctx)
            });
        }
        if self.state.phase == InterruptPhase::DisableRequested {
            self.state.stats.disable_callbacks += 1;
            self.call(platform, Routine::DisableInterruptsCallback, |m, ctx| {
                m.disable_interrupts_callback(ctx)
            });
            self.state.phase = InterruptPhase::Normal;
            let held = core::mem::take(&mut self.state.held_vectors);
            self.deliver(platform, held);
        }
    }

    /// P1: SRBs past their timeout reset the bus. The checker's own view: an SRB past
    /// its timeout by more than a tick with no reset since is a port violation.
    fn check_timeouts(&mut self, platform: &mut dyn Platform) {
        let now = platform.now_us();
        #[cfg(test)]
        let broken = self.state.flawed(Flaw::NoTimeoutReset);
        #[cfg(not(test))]
        let broken = false;
        if self.state.hold.is_none() && !broken {
            let expired = self.state.slots.iter().find(|s| {
                s.state == SlotState::Active
                    && now.saturating_sub(s.started_us) > u64::from(s.srb.timeout_us)
            });
            if let Some(s) = expired {
                let path = s.srb.path;
                self.state.stats.srb_timeouts += 1;
                self.reset_bus(platform, path);
            }
        }
        let grace = u64::from(self.state.config.tick_us);
        let st = &mut self.state;
        for i in 0..MAX_SRBS {
            let s = &mut st.slots[i];
            let deadline = s.started_us + u64::from(s.srb.timeout_us) + grace;
            if s.state == SlotState::Active
                && !s.timeout_flagged
                && now > deadline
                && st.last_reset_us < deadline
                && st.hold.is_none()
            {
                s.timeout_flagged = true;
                let tag = s.srb.tag;
                st.checker.record(
                    Rule::P1,
                    Routine::Port,
                    now,
                    "SRB outstanding past its timeout without HwResetBus",
                    u64::from(tag),
                );
            }
        }
    }

    /// End of a reset hold: what the miniport still holds is a violation (P2 or N5);
    /// the port takes it back with SRB_STATUS_BUS_RESET.
    fn check_hold(&mut self, platform: &mut dyn Platform) {
        let Some(hold) = self.state.hold else {
            return;
        };
        let now = platform.now_us();
        if now < hold.until_us {
            return;
        }
        self.state.hold = None;
        let st = &mut self.state;
        for i in 0..MAX_SRBS {
            if hold.slots & (1 << i) == 0 || st.slots[i].state != SlotState::Active {
                continue;
            }
            let tag = st.slots[i].srb.tag;
            let message = if hold.rule == Rule::N5 {
                "request active at ResetDetected not completed by the end of the reset hold"
            } else {
                "request still outstanding when the reset hold ended"
            };
            st.checker
                .record(hold.rule, Routine::Port, now, message, u64::from(tag));
            st.slots[i].srb.srb_status = SrbStatus::BusReset;
            st.stats.reclaimed += 1;
            st.finish_slot(i as u8);
        }
        self.state.next_request = true;
    }

    /// Dispatches one batch of platform events: the timer's expiry first (from then on
    /// the call is dispatched and RequestTimerCall(0) no longer stops it, T3), HwInterrupt
    /// for each vector, the deferred interrupt callbacks, then HwTimer. One routine at a
    /// time (T5).
    pub fn dispatch(&mut self, platform: &mut dyn Platform, events: Events) {
        let mut fire = false;
        if events.ticks > 0 {
            self.state.shadow.ticks(events.ticks);
            fire = self.state.timer.advance(events.ticks);
        }
        self.deliver(platform, events.vectors);
        self.run_deferred(platform);
        if fire {
            self.state.stats.timer_calls += 1;
            let now = platform.now_us();
            self.state.shadow.fired(&mut self.state.checker, now);
            self.call(platform, Routine::Timer, |m, ctx| m.timer(ctx));
        }
        if events.ticks > 0 {
            let now = platform.now_us();
            self.state.shadow.end_dispatch(&mut self.state.checker, now);
            self.check_timeouts(platform);
            self.check_hold(platform);
        }
        self.start_queued(platform);
    }

    /// Passes queued SRBs to HwStartIo while the miniport is ready for them, without
    /// waiting for anything.
    pub fn start_pending(&mut self, platform: &mut dyn Platform) {
        self.start_queued(platform);
    }

    /// Starts what can be started, then waits for one batch of events and dispatches
    /// it. Returns false without waiting when nothing is queued or outstanding and no
    /// timer is pending.
    pub fn run_once(&mut self, platform: &mut dyn Platform) -> bool {
        self.start_queued(platform);
        if self.state.active == 0 && self.state.queued.len == 0 && !self.state.timer.is_pending() {
            return false;
        }
        let events = platform.wait_for_events();
        self.dispatch(platform, events);
        true
    }

    /// Runs until no SRB is queued or outstanding, or until `deadline_us` of platform
    /// time.
    pub fn run_until_idle(
        &mut self,
        platform: &mut dyn Platform,
        deadline_us: u64,
    ) -> Result<(), PortError<M::Error>> {
        loop {
            self.start_queued(platform);
            if self.state.active == 0 && self.state.queued.len == 0 {
                return Ok(());
            }
            if platform.now_us() >= deadline_us {
                return Err(PortError::Deadline);
            }
            let events = platform.wait_for_events();
            self.dispatch(platform, events);
        }
    }

    /// Takes back the oldest completed SRB.
    pub fn poll_completed(&mut self) -> Option<Srb> {
        if self.state.completed.len == 0 {
            return None;
        }
        let slot = self.state.completed.remove(0);
        let s = &mut self.state.slots[usize::from(slot)];
        s.state = SlotState::Free;
        Some(s.srb)
    }

    /// HwResetBus on `path` (asked for by the caller, or after an SRB timeout, P1).
    /// Starts the reset hold: what is still active when it ends is a violation (P2).
    pub fn reset_bus(&mut self, platform: &mut dyn Platform, path: u8) -> bool {
        self.state.stats.bus_resets += 1;
        let now = platform.now_us();
        self.state.last_reset_us = now;
        let slots = self.state.active_mask();
        let ok = self.call(platform, Routine::ResetBus, |m, ctx| m.reset_bus(ctx, path));
        // A ResetDetected from inside HwResetBus is part of this reset.
        self.state.hold = Some(Hold {
            until_us: now + u64::from(self.state.config.reset_hold_us),
            rule: Rule::P2,
            slots: slots & self.state.active_mask(),
        });
        self.state.next_request = true;
        ok
    }

    /// Whether the miniport sent BusChangeDetected since the last call.
    pub fn take_bus_change(&mut self) -> bool {
        core::mem::take(&mut self.state.bus_change)
    }

    /// SRBs queued or held by the miniport.
    pub fn in_flight(&self) -> usize {
        self.state.queued.len + usize::from(self.state.active)
    }

    pub fn active(&self) -> u16 {
        self.state.active
    }

    pub fn stats(&self) -> PortStats {
        self.state.stats
    }

    /// The rule checker: violations and routine times.
    pub fn checker(&self) -> &Checker {
        &self.state.checker
    }

    pub fn interrupt_phase(&self) -> InterruptPhase {
        self.state.phase
    }

    /// Whether new requests are held after a reset (P2, N5).
    pub fn in_reset_hold(&self) -> bool {
        self.state.hold.is_some()
    }

    pub fn timer(&self) -> &TimerService {
        &self.state.timer
    }

    pub fn capabilities(&self) -> Option<AdapterCapabilities> {
        self.state.caps
    }

    pub fn miniport(&self) -> &M {
        &self.miniport
    }

    pub fn miniport_mut(&mut self) -> &mut M {
        &mut self.miniport
    }
}
