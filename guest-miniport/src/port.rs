//! The port driver, on the ScsiPort/Storport model: SCSI request blocks, the
//! [`Miniport`] trait (HwFindAdapter, HwInitialize, HwStartIo, HwInterrupt, HwTimer,
//! HwResetBus), the notifications a miniport sends through [`PortContext`], the timer
//! service, and [`Port`], which queues SRBs, starts them, dispatches platform events and
//! hands completed SRBs back. Rule ids (T1.., N1..) refer to docs/miniport-rules.md.

use core::fmt;

use crate::platform::Platform;

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
    /// HwResetBus: reset `path`, completing every active request (N5).
    fn reset_bus(&mut self, ctx: &mut PortContext<'_>, path: u8) -> bool;
}

/// The timer service: one RequestTimerCall outstanding per adapter, counted in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerService {
    tick_us: u32,
    now_ticks: u64,
    due_tick: Option<u64>,
}

impl TimerService {
    pub fn new(tick_us: u32) -> Self {
        TimerService {
            tick_us: tick_us.max(1),
            now_ticks: 0,
            due_tick: None,
        }
    }

    /// RequestTimerCall(interval_us).
    pub fn request(&mut self, interval_us: u32) {
        if interval_us == 0 {
            // T3: 0 cancels the pending request.
            self.due_tick = None;
            return;
        }
        // T2: rounded up to the tick; at least one tick from now.
        let ticks = u64::from(interval_us.div_ceil(self.tick_us)).max(1);
        // T1: a new request replaces the pending one.
        self.due_tick = Some(self.now_ticks + ticks);
    }

    /// Advances by `ticks`; true when the pending request expired. It is consumed, so
    /// HwTimer runs once per request however many ticks passed (T4).
    pub fn advance(&mut self, ticks: u32) -> bool {
        self.now_ticks += u64::from(ticks);
        match self.due_tick {
            Some(due) if due <= self.now_ticks => {
                self.due_tick = None;
                true
            }
            _ => false,
        }
    }

    pub fn is_pending(&self) -> bool {
        self.due_tick.is_some()
    }

    /// Ticks until the pending request expires.
    pub fn remaining_ticks(&self) -> Option<u64> {
        self.due_tick.map(|d| d.saturating_sub(self.now_ticks))
    }

    pub fn tick_us(&self) -> u32 {
        self.tick_us
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

/// The port's state that notifications act on.
pub struct PortState {
    slots: [Slot; MAX_SRBS],
    queued: SlotList,
    completed: SlotList,
    lus: [Option<LuState>; MAX_LUS],
    /// NextRequest received since the last HwStartIo (N2).
    next_request: bool,
    timer: TimerService,
    caps: Option<AdapterCapabilities>,
    active: u16,
    next_tag: Tag,
    stats: PortStats,
}

impl PortState {
    fn lu_index(&self, address: LuAddress) -> Option<usize> {
        self.lus
            .iter()
            .position(|l| l.is_some_and(|l| l.address == address))
    }
}

/// What a miniport routine may do to the port: the notifications of
/// ScsiPortNotification, StallExecution, and access to the SRBs it holds.
pub struct PortContext<'a> {
    platform: &'a mut dyn Platform,
    state: &'a mut PortState,
}

impl PortContext<'_> {
    /// The SRB behind a handle the miniport holds.
    pub fn srb(&self, srb: &SrbHandle) -> &Srb {
        &self.state.slots[usize::from(srb.slot)].srb
    }

    pub fn srb_mut(&mut self, srb: &SrbHandle) -> &mut Srb {
        &mut self.state.slots[usize::from(srb.slot)].srb
    }

    /// RequestComplete: the port owns the SRB again (N1: the handle is consumed).
    pub fn request_complete(&mut self, srb: SrbHandle) {
        let st = &mut *self.state;
        let slot = &mut st.slots[usize::from(srb.slot)];
        debug_assert_eq!(slot.state, SlotState::Active);
        slot.state = SlotState::Completed;
        let lu = slot.srb.lu();
        if let Some(i) = st.lu_index(lu) {
            if let Some(l) = st.lus[i].as_mut() {
                l.active = l.active.saturating_sub(1);
            }
        }
        st.active = st.active.saturating_sub(1);
        st.completed.push_back(srb.slot);
        st.stats.completed += 1;
    }

    /// NextRequest: ready for a request to a target that is not busy (N2).
    pub fn next_request(&mut self) {
        self.state.next_request = true;
    }

    /// NextLuRequest: ready for another request to this LU (N3), and so also for other
    /// LUs. Without tagged queuing it counts as NextRequest only; issue 5's rule checker
    /// will report that as an N3 violation.
    pub fn next_lu_request(&mut self, path: u8, target: u8, lun: u8) {
        self.state.next_request = true;
        if self.state.caps.is_some_and(|c| c.tagged_queuing) {
            let address = LuAddress { path, target, lun };
            if let Some(i) = self.state.lu_index(address) {
                if let Some(l) = self.state.lus[i].as_mut() {
                    l.ready = true;
                }
            }
        }
    }

    /// RequestTimerCall(HwTimer, interval_us): T1 to T3.
    pub fn request_timer_call(&mut self, interval_us: u32) {
        self.state.stats.timer_requests += 1;
        self.state.timer.request(interval_us);
    }

    /// ResetDetected (N5).
    pub fn reset_detected(&mut self) {
        self.state.stats.resets_detected += 1;
    }

    /// StallExecution: busy-waits, and the port accounts for it (S1, P4).
    pub fn stall_execution(&mut self, us: u32) {
        let st = &mut self.state.stats;
        st.stall_calls += 1;
        st.stall_us_total += u64::from(us);
        st.stall_us_max = st.stall_us_max.max(us);
        self.platform.stall_us(us);
    }

    pub fn now_us(&self) -> u64 {
        self.platform.now_us()
    }

    /// The platform's MSI-X message for `entry` (for the miniport to program the HBA).
    pub fn msi_message(&self, entry: u16) -> Option<(u64, u32)> {
        self.platform.msi_message(entry)
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
    /// A port whose timer resolution is `tick_us` (T2; the platform's tick).
    pub fn new(miniport: M, tick_us: u32) -> Self {
        const EMPTY: Slot = Slot {
            state: SlotState::Free,
            srb: Srb {
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
            },
        };
        Port {
            miniport,
            state: PortState {
                slots: [EMPTY; MAX_SRBS],
                queued: SlotList::new(),
                completed: SlotList::new(),
                lus: [None; MAX_LUS],
                next_request: false,
                timer: TimerService::new(tick_us),
                caps: None,
                active: 0,
                next_tag: 1,
                stats: PortStats::default(),
            },
        }
    }

    fn ctx<'a>(state: &'a mut PortState, platform: &'a mut dyn Platform) -> PortContext<'a> {
        PortContext { platform, state }
    }

    /// HwFindAdapter then HwInitialize. The miniport is ready for its first request
    /// afterwards.
    pub fn initialize(
        &mut self,
        platform: &mut dyn Platform,
    ) -> Result<AdapterCapabilities, PortError<M::Error>> {
        let mut ctx = Self::ctx(&mut self.state, platform);
        let caps = self
            .miniport
            .find_adapter(&mut ctx)
            .map_err(PortError::FindAdapter)?;
        ctx.state.caps = Some(caps);
        self.miniport
            .initialize(&mut ctx)
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
        st.queued.as_slice().iter().position(|&s| {
            let lu = st.slots[usize::from(s)].srb.lu();
            let Some(l) = st.lu_index(lu).and_then(|i| st.lus[i]) else {
                return false;
            };
            // N2: NextRequest opens a target that is not busy. N3: NextLuRequest opens
            // that LU up to its queue depth.
            (st.next_request && l.active == 0)
                || (caps.tagged_queuing && l.ready && l.active < caps.queue_depth)
        })
    }

    /// Passes queued SRBs to HwStartIo while the miniport is ready for them.
    fn start_queued(&mut self, platform: &mut dyn Platform) {
        while let Some(at) = self.next_startable() {
            let slot = self.state.queued.remove(at);
            let s = &mut self.state.slots[usize::from(slot)];
            s.state = SlotState::Active;
            let lu = s.srb.lu();
            let handle = SrbHandle {
                slot,
                tag: s.srb.tag,
            };
            self.state.next_request = false;
            let li = self.state.lu_index(lu);
            if let Some(l) = li.and_then(|i| self.state.lus[i].as_mut()) {
                l.ready = false;
                l.active += 1;
            }
            self.state.active += 1;
            self.state.stats.start_io_calls += 1;
            let mut ctx = Self::ctx(&mut self.state, platform);
            match self.miniport.start_io(&mut ctx, handle) {
                StartIo::Accepted => {}
                StartIo::Busy(handle) => {
                    let st = &mut self.state;
                    st.stats.start_io_busy += 1;
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
    }

    /// Dispatches one batch of platform events: HwInterrupt for each vector, then the
    /// timer service (HwTimer when its request expired). One routine at a time (T5).
    pub fn dispatch(&mut self, platform: &mut dyn Platform, events: crate::platform::Events) {
        let mut vectors = events.vectors;
        while vectors != 0 {
            let v = vectors.trailing_zeros() as u16;
            vectors &= vectors - 1;
            self.state.stats.interrupts += 1;
            let mut ctx = Self::ctx(&mut self.state, platform);
            if !self.miniport.interrupt(&mut ctx, v) {
                self.state.stats.interrupts_not_claimed += 1;
            }
        }
        if events.ticks > 0 && self.state.timer.advance(events.ticks) {
            self.state.stats.timer_calls += 1;
            let mut ctx = Self::ctx(&mut self.state, platform);
            self.miniport.timer(&mut ctx);
        }
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

    /// HwResetBus on `path`, asked for by the caller.
    pub fn reset_bus(&mut self, platform: &mut dyn Platform, path: u8) -> bool {
        self.state.stats.bus_resets += 1;
        let mut ctx = Self::ctx(&mut self.state, platform);
        let ok = self.miniport.reset_bus(&mut ctx, path);
        self.state.next_request = true;
        ok
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Events;
    use crate::sim::{SimPlatform, World};
    extern crate std;
    use std::vec::Vec;

    /// A miniport that records what the port does to it.
    #[derive(Default)]
    struct Recorder {
        tagged: bool,
        queue_depth: u16,
        /// RequestTimerCalls to make in HwInitialize.
        init_timer_calls: Vec<u32>,
        /// Times HwTimer re-arms itself.
        rearm: u32,
        rearm_interval_us: u32,
        timer_at_us: Vec<u64>,
        started: Vec<Tag>,
        held: Vec<SrbHandle>,
        /// Most SRBs held at once.
        max_held: usize,
    }

    impl Miniport for Recorder {
        type Error = &'static str;

        fn find_adapter(
            &mut self,
            _ctx: &mut PortContext<'_>,
        ) -> Result<AdapterCapabilities, &'static str> {
            Ok(AdapterCapabilities {
                max_outstanding: 16,
                tagged_queuing: self.tagged,
                queue_depth: self.queue_depth,
            })
        }
        fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), &'static str> {
            for &us in &self.init_timer_calls {
                ctx.request_timer_call(us);
            }
            Ok(())
        }
        fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
            self.started.push(srb.tag());
            let s = ctx.srb(&srb);
            let (p, t, l) = (s.path, s.target, s.lun);
            self.held.push(srb);
            self.max_held = self.max_held.max(self.held.len());
            if self.tagged {
                ctx.next_lu_request(p, t, l);
            } else {
                ctx.next_request();
            }
            ctx.request_timer_call(10_000);
            StartIo::Accepted
        }
        fn interrupt(&mut self, _ctx: &mut PortContext<'_>, _vector: u16) -> bool {
            false
        }
        fn timer(&mut self, ctx: &mut PortContext<'_>) {
            self.timer_at_us.push(ctx.now_us());
            for srb in self.held.drain(..) {
                ctx.srb_mut(&srb).srb_status = SrbStatus::Success;
                ctx.request_complete(srb);
            }
            if self.rearm > 0 {
                self.rearm -= 1;
                ctx.request_timer_call(self.rearm_interval_us);
            }
        }
        fn reset_bus(&mut self, _ctx: &mut PortContext<'_>, _path: u8) -> bool {
            true
        }
    }

    fn new_port(m: Recorder) -> (Port<Recorder>, SimPlatform) {
        let mut p = SimPlatform(World::new(8, 10_000));
        let mut port = Port::new(m, 10_000);
        port.initialize(&mut p).unwrap();
        (port, p)
    }

    fn run_all(port: &mut Port<Recorder>, p: &mut SimPlatform) {
        for _ in 0..1000 {
            if !port.run_once(p) {
                return;
            }
        }
        panic!("port never went idle");
    }

    #[test]
    fn t1_new_request_replaces_the_pending_one() {
        let (mut port, mut p) = new_port(Recorder {
            init_timer_calls: std::vec![30_000, 50_000],
            ..Recorder::default()
        });
        run_all(&mut port, &mut p);
        assert_eq!(port.miniport().timer_at_us, [50_000]);
    }

    #[test]
    fn t2_interval_is_rounded_up_to_the_tick() {
        let (mut port, mut p) = new_port(Recorder {
            init_timer_calls: std::vec![15_000],
            rearm: 1,
            rearm_interval_us: 1,
            ..Recorder::default()
        });
        run_all(&mut port, &mut p);
        // 15 ms -> 2 ticks; 1 us -> 1 tick.
        assert_eq!(port.miniport().timer_at_us, [20_000, 30_000]);
    }

    #[test]
    fn t3_zero_interval_cancels() {
        let (mut port, mut p) = new_port(Recorder {
            init_timer_calls: std::vec![30_000, 0],
            ..Recorder::default()
        });
        assert!(!port.timer().is_pending());
        assert!(!port.run_once(&mut p), "nothing to wait for");
        port.dispatch(
            &mut p,
            Events {
                ticks: 10,
                vectors: 0,
            },
        );
        assert!(port.miniport().timer_at_us.is_empty());
    }

    #[test]
    fn t4_hwtimer_runs_once_per_request_and_may_rearm() {
        let (mut port, mut p) = new_port(Recorder {
            init_timer_calls: std::vec![10_000],
            rearm: 3,
            rearm_interval_us: 20_000,
            ..Recorder::default()
        });
        run_all(&mut port, &mut p);
        assert_eq!(
            port.miniport().timer_at_us,
            [10_000, 30_000, 50_000, 70_000]
        );
        assert_eq!(port.stats().timer_calls, 4);

        // Many ticks at once still make one call.
        let (mut port, mut p) = new_port(Recorder {
            init_timer_calls: std::vec![10_000],
            ..Recorder::default()
        });
        port.dispatch(
            &mut p,
            Events {
                ticks: 7,
                vectors: 0,
            },
        );
        port.dispatch(
            &mut p,
            Events {
                ticks: 7,
                vectors: 0,
            },
        );
        assert_eq!(port.miniport().timer_at_us.len(), 1);
    }

    fn srb(lun: u8) -> Srb {
        Srb::new(0, 0, lun, &[0; 6], DataBuffer::NONE)
    }

    #[test]
    fn n2_one_request_per_lu_without_tagged_queuing() {
        let (mut port, mut p) = new_port(Recorder::default());
        let a = port.submit(srb(0)).unwrap();
        let b = port.submit(srb(0)).unwrap();
        let c = port.submit(srb(0)).unwrap();
        let d = port.submit(srb(1)).unwrap();
        run_all(&mut port, &mut p);
        let m = port.miniport();
        // LU 0 is busy after `a`, so NextRequest lets `d` (LU 1) overtake.
        assert_eq!(m.started, [a, d, b, c]);
        assert_eq!(m.max_held, 2);
        let done: Vec<Tag> = core::iter::from_fn(|| port.poll_completed())
            .map(|s| {
                assert_eq!(s.srb_status, SrbStatus::Success);
                s.tag
            })
            .collect();
        assert_eq!(done, [a, d, b, c]);
        assert_eq!(port.in_flight(), 0);
    }

    #[test]
    fn n3_next_lu_request_fills_the_queue_depth() {
        let (mut port, mut p) = new_port(Recorder {
            tagged: true,
            queue_depth: 3,
            ..Recorder::default()
        });
        let tags: Vec<Tag> = (0..7).map(|_| port.submit(srb(0)).unwrap()).collect();
        run_all(&mut port, &mut p);
        assert_eq!(port.miniport().started, tags);
        assert_eq!(port.miniport().max_held, 3);
        assert_eq!(port.stats().completed, 7);
    }

    #[test]
    fn submit_refuses_when_all_slots_are_taken() {
        let (mut port, _p) = new_port(Recorder::default());
        for _ in 0..MAX_SRBS {
            port.submit(srb(0)).unwrap();
        }
        assert_eq!(port.submit(srb(0)), Err(PortError::QueueFull));
    }

    #[test]
    fn stall_execution_is_accounted() {
        struct Staller;
        impl Miniport for Staller {
            type Error = &'static str;
            fn find_adapter(
                &mut self,
                ctx: &mut PortContext<'_>,
            ) -> Result<AdapterCapabilities, &'static str> {
                ctx.stall_execution(300);
                ctx.stall_execution(700);
                Ok(AdapterCapabilities {
                    max_outstanding: 1,
                    tagged_queuing: false,
                    queue_depth: 1,
                })
            }
            fn initialize(&mut self, _: &mut PortContext<'_>) -> Result<(), &'static str> {
                Err("no")
            }
            fn start_io(&mut self, _: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
                StartIo::Busy(srb)
            }
            fn interrupt(&mut self, _: &mut PortContext<'_>, _: u16) -> bool {
                false
            }
            fn timer(&mut self, _: &mut PortContext<'_>) {}
            fn reset_bus(&mut self, _: &mut PortContext<'_>, _: u8) -> bool {
                false
            }
        }
        let mut p = SimPlatform(World::new(8, 10_000));
        let mut port = Port::new(Staller, 10_000);
        assert_eq!(port.initialize(&mut p), Err(PortError::Initialize("no")));
        let s = port.stats();
        assert_eq!(
            (s.stall_calls, s.stall_us_total, s.stall_us_max),
            (2, 1000, 700)
        );
        assert_eq!(p.now_us(), 1000);
    }
}
