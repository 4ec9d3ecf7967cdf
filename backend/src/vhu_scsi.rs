//! The vhost-user glue: features, queues (0 control, 1 event, 2.. request), one worker per
//! request queue, and the single completion path where interrupts are decided.

use std::io;
use std::mem::size_of;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap, Le32};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::timerfd::TimerFd;

use crate::faults::{
    CommandScreen, Corruption, Epoch, FaultEngine, Plan, ResetReason, SignalOutcome, VirtioEvent,
};
use crate::scsi::sense::Sense;
use crate::scsi::{CmdError, CmdOutcome, DataIn, DataOut, LuChange, LunAddress, Target};
use crate::virtio::*;

pub mod executing;
mod faulty;
pub mod inflight;
mod passes;

use executing::{Executing, ExecutingSlot};
use inflight::InflightTable;
use passes::PlainServer;

/// Queue 0 is the control queue, 1 the event queue, 2.. the request queues (5.6.2).
pub const CONTROL_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const FIRST_REQUEST_QUEUE: usize = 2;
/// queues_per_thread is a u64 mask per worker.
pub const MAX_REQUEST_QUEUES: u16 = 62;
pub const QUEUE_SIZE: usize = 1024;

type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;
/// A popped descriptor chain, as kept in the in-flight tables.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>;

#[derive(Debug, thiserror::Error)]
pub enum VhuScsiError {
    #[error("could not create a worker exit event")]
    CouldNotCreateExitEvent(#[source] io::Error),
    #[error("event {event} on worker {thread} names no queue")]
    UnknownQueueEvent { event: u16, thread: usize },
    #[error("unexpected epoll event set {0:?}")]
    UnexpectedEventSet(EventSet),
    #[error("no guest memory has been set")]
    NoMemory,
    #[error("could not add a used element")]
    CouldNotAddUsed(#[source] virtio_queue::Error),
    #[error("could not toggle queue notifications")]
    CouldNotToggleNotification(#[source] virtio_queue::Error),
    #[error("could not read the driver's used_event")]
    CouldNotCheckNotification(#[source] virtio_queue::Error),
    #[error("could not signal the used queue")]
    CouldNotSignalUsedQueue(#[source] io::Error),
    #[error("could not create a worker timer")]
    CouldNotCreateTimer(#[source] io::Error),
    #[error("could not arm a worker timer")]
    CouldNotArmTimer(#[source] io::Error),
}

impl From<VhuScsiError> for io::Error {
    fn from(e: VhuScsiError) -> Self {
        io::Error::other(e)
    }
}

/// The fault engine as the request path sees it.
#[derive(Clone, Debug)]
pub struct FaultContext {
    pub engine: Arc<Mutex<FaultEngine>>,
    /// Every time given to the engine is measured from here.
    pub epoch: Epoch,
    /// False for an empty plan with no trace and no control socket: the request path then
    /// never touches the engine.
    pub active: bool,
    /// With a control socket, faults and events can appear at any moment: the tick timer
    /// runs at least this often.
    pub poll: Option<Duration>,
}

impl FaultContext {
    /// No faults, no trace: the request path skips the engine.
    pub fn disabled() -> FaultContext {
        FaultContext {
            engine: Arc::new(Mutex::new(FaultEngine::new(Plan::default()))),
            epoch: Epoch::start(),
            active: false,
            poll: None,
        }
    }

    pub fn new(engine: Arc<Mutex<FaultEngine>>, epoch: Epoch) -> FaultContext {
        FaultContext {
            engine,
            epoch,
            active: true,
            poll: None,
        }
    }
}

/// The virtio-scsi device behind one vhost-user connection.
pub struct VhostUserScsiBackend {
    target: Arc<Target>,
    num_request_queues: u16,
    /// queues_per_thread, computed once: handle_event maps local indices through it.
    queue_masks: Vec<u64>,
    event_idx: AtomicBool,
    mem: Mutex<Option<GuestMemory>>,
    faults: FaultContext,
    /// Held requests per queue (index: global queue number).
    inflight: Vec<Mutex<InflightTable<Chain>>>,
    /// A clone of every vring a worker has served, so that a TMF on the control queue can
    /// complete requests of any request queue. Lock order: this, then nothing else.
    vrings: Mutex<Vec<Option<VringRwLock>>>,
    /// Per worker: its vrings are in `vrings` (so a kick does not take that lock again).
    remembered: Vec<AtomicBool>,
    /// One timer per worker, firing at the earliest due held request (worker 0: also the
    /// engine's ticks). None without an active engine.
    timers: Vec<Mutex<TimerFd>>,
    /// The next event posted carries VIRTIO_SCSI_T_EVENTS_MISSED (5.6.6.3).
    events_missed: AtomicBool,
    /// The features the driver acknowledged: hot-plug and capacity events need theirs.
    acked_features: AtomicU64,
    /// The command each request queue's worker is executing: TMFs wait for those of
    /// their LUs before answering.
    executing: Executing,
    /// The CDB area of a request header: the config space's `cdb_size`, which the driver
    /// may write (with VHOST_USER_PROTOCOL_F_CONFIG); 32 after a device reset.
    cdb_size: AtomicUsize,
    /// Per queue (index: global queue number): which commands the plan cannot touch, so
    /// the fault path serves them without the engine's lock. Only the queue's worker
    /// takes its screen, once per kick.
    screens: Vec<Mutex<CommandScreen>>,
}

impl VhostUserScsiBackend {
    pub fn new(target: Arc<Target>, num_request_queues: u16) -> Self {
        Self::build(
            target,
            num_request_queues,
            FaultContext::disabled(),
            Vec::new(),
        )
    }

    /// A device whose request path asks `faults` about every request.
    pub fn with_faults(
        target: Arc<Target>,
        num_request_queues: u16,
        faults: FaultContext,
    ) -> Result<Self, VhuScsiError> {
        let workers = usize::from(num_request_queues.clamp(1, MAX_REQUEST_QUEUES));
        let timers = if faults.active {
            (0..workers)
                .map(|_| faulty::new_timer().map(Mutex::new))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let backend = Self::build(target, num_request_queues, faults, timers);
        backend.rearm_timer(0)?;
        Ok(backend)
    }

    fn build(
        target: Arc<Target>,
        num_request_queues: u16,
        faults: FaultContext,
        timers: Vec<Mutex<TimerFd>>,
    ) -> Self {
        let num_request_queues = num_request_queues.clamp(1, MAX_REQUEST_QUEUES);
        // Worker 0 serves the control, event and first request queue; worker k the
        // request queue 2 + k.
        let first = 1 << CONTROL_QUEUE | 1 << EVENT_QUEUE | 1 << FIRST_REQUEST_QUEUE;
        let queue_masks = std::iter::once(first)
            .chain((1..usize::from(num_request_queues)).map(|k| 1u64 << (FIRST_REQUEST_QUEUE + k)))
            .collect();
        let num_queues = FIRST_REQUEST_QUEUE + usize::from(num_request_queues);
        let screens = {
            let engine = lock(&faults.engine);
            (0..num_queues)
                .map(|q| Mutex::new(CommandScreen::new(&engine, q as u16)))
                .collect()
        };
        VhostUserScsiBackend {
            target,
            num_request_queues,
            queue_masks,
            event_idx: AtomicBool::new(false),
            mem: Mutex::new(None),
            faults,
            inflight: (0..num_queues).map(|_| Mutex::default()).collect(),
            vrings: Mutex::new(vec![None; num_queues]),
            remembered: (0..num_request_queues)
                .map(|_| AtomicBool::new(false))
                .collect(),
            timers,
            events_missed: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            executing: Executing::new(num_queues),
            cdb_size: AtomicUsize::new(VIRTIO_SCSI_CDB_SIZE),
            screens,
        }
    }

    /// The config space as the driver reads it (5.6.4), with the limits QEMU's
    /// virtio-scsi reports.
    fn config(&self) -> VirtioScsiConfig {
        VirtioScsiConfig {
            num_queues: Le32::from(u32::from(self.num_request_queues)),
            seg_max: Le32::from(254),
            max_sectors: Le32::from(0xffff),
            cmd_per_lun: Le32::from(128),
            event_info_size: Le32::from(size_of::<VirtioScsiEvent>() as u32),
            sense_size: Le32::from(VIRTIO_SCSI_SENSE_SIZE as u32),
            cdb_size: Le32::from(self.cdb_size() as u32),
            max_channel: 0,
            max_target: 255,
            max_lun: Le32::from(0x3fff),
        }
    }

    /// The CDB area of request headers now.
    pub fn cdb_size(&self) -> usize {
        self.cdb_size.load(Ordering::Relaxed)
    }

    /// The executing commands TMFs wait for (tests hold slots to play a busy worker).
    pub fn executing(&self) -> &Executing {
        &self.executing
    }

    /// Another bound for how long a TMF waits for executing commands (tests).
    pub fn set_tmf_wait_bound(&mut self, bound: Duration) {
        let queues = self.num_queues();
        self.executing = Executing::new(queues).with_bound(bound);
    }

    /// The epoll id under which `main` registers each worker's timer
    /// (`VringEpollHandler::register_listener` reserves 0..=num_queues).
    pub fn timer_event(&self) -> u16 {
        (self.num_queues() + 1) as u16
    }

    /// The timer fd of worker `thread`, if the fault engine is active.
    pub fn timer_fd(&self, thread: usize) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.timers.get(thread).map(|t| lock(t).as_raw_fd())
    }

    fn engine(&self) -> MutexGuard<'_, FaultEngine> {
        lock(&self.faults.engine)
    }

    fn memory(&self) -> Option<GuestMemory> {
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Posts an event for each LU change of the target since the last call: a hot-add is
    /// TRANSPORT_RESET/RESCAN, a hot-remove TRANSPORT_RESET/REMOVED (with
    /// VIRTIO_SCSI_F_HOTPLUG), a capacity change PARAM_CHANGE 2A/09 (with
    /// VIRTIO_SCSI_F_CHANGE). Without the feature the driver gets no event and finds the
    /// change by the unit attention or its next scan (5.6.6.2, 5.6.6.3).
    pub fn announce_lu_changes(&self) -> Result<(), VhuScsiError> {
        if !self.target.has_changes() {
            return Ok(());
        }
        let acked = self.acked_features.load(Ordering::Relaxed);
        let now = self.faults.epoch.now();
        for change in self.target.take_changes() {
            if let Some(event) = lu_change_event(change, acked) {
                self.post_event(event, now)?;
            }
        }
        Ok(())
    }

    /// Serves every available chain of `queue` on `vring`.
    pub fn process_queue(&self, queue: usize, vring: &VringRwLock) -> Result<(), VhuScsiError> {
        if queue == EVENT_QUEUE {
            // Event buffers stay with the device until there is an event to post; new
            // buffers are a chance to post LU changes that found none.
            return self.announce_lu_changes();
        }
        if self.faults.active {
            return self.process_queue_with_faults(queue, vring);
        }
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut server = PlainServer {
            backend: self,
            queue,
            vring,
            cdb_size: self.cdb_size(),
            batch: SignalBatch::new(event_idx),
        };
        self.serve_passes(queue, vring, event_idx, &mut server)
    }
}

/// Completions in a row before the interrupt decision is taken even though the pass over
/// the available ring goes on: bounds the latency batching adds to the first of them.
pub const MAX_UNSIGNALLED: u16 = 32;

/// Completions that are on the used ring but not yet offered to the interrupt decision.
///
/// Without EVENT_IDX every decision writes the eventfd (unless the driver set
/// NO_INTERRUPT), so the decision is taken once per pass over the available ring (or
/// every [`MAX_UNSIGNALLED`] completions), as Linux's vhost-scsi does.
///
/// With EVENT_IDX the first completions of a pass are decided one by one, until an
/// interrupt is sent: the driver wakes as early as it asked to and refills the ring while
/// the device is still at work. The rest of the pass is decided at its end (or every
/// [`MAX_UNSIGNALLED`]), which bounds the eventfd writes of a pass to about two. Measured
/// in `make bench`, same run, against each extreme: deciding only at the end of a pass ran
/// 4k random reads at QD32 on one queue at 0.51x (the device idled on an empty ring for
/// every batch); deciding every completion ran four queues at a third of the rate (the
/// eventfd writes took the two cores).
#[derive(Debug)]
pub struct SignalBatch {
    pending: u16,
    event_idx: bool,
    /// An interrupt was sent in this pass: the rest waits for the end of the pass.
    sent_in_pass: bool,
}

impl SignalBatch {
    /// A batch for a ring with or without EVENT_IDX.
    pub fn new(event_idx: bool) -> Self {
        SignalBatch {
            pending: 0,
            event_idx,
            sent_in_pass: false,
        }
    }

    /// Puts a completion on the used ring; the interrupt decision is taken now when the
    /// batch is full (with EVENT_IDX, until an interrupt was sent in this pass: at once)
    /// and returned; otherwise it waits for [`SignalBatch::flush`].
    pub fn complete<V>(
        &mut self,
        vring: &V,
        head: u16,
        used_len: u32,
    ) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        vring
            .add_used(head, used_len)
            .map_err(VhuScsiError::CouldNotAddUsed)?;
        self.pending += 1;
        let limit = if self.event_idx && !self.sent_in_pass {
            1
        } else {
            MAX_UNSIGNALLED
        };
        if self.pending < limit {
            return Ok(None);
        }
        let outcome = self.decide(vring)?;
        if outcome == Some(SignalOutcome::Sent) {
            self.sent_in_pass = true;
        }
        Ok(outcome)
    }

    /// The end of a pass: takes the interrupt decision for the completions waiting, if
    /// any (`None` when nothing was waiting), and starts the next pass afresh.
    pub fn flush<V>(&mut self, vring: &V) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        self.sent_in_pass = false;
        self.decide(vring)
    }

    /// The signal is sent when EVENT_IDX says the driver wants it.
    fn decide<V>(&mut self, vring: &V) -> Result<Option<SignalOutcome>, VhuScsiError>
    where
        V: VringT<GuestMemory>,
    {
        if self.pending == 0 {
            return Ok(None);
        }
        self.pending = 0;
        notify_if_needed(vring, false).map(Some)
    }
}

/// The one completion path of the device: add the used element, then let EVENT_IDX decide
/// whether the driver wants an interrupt, and only then signal the call eventfd
/// (`signal_used_queue` always signals). A `drop-interrupt` fault skips the signal here,
/// leaving the used entry for the driver's timer poll to find.
pub fn complete_and_notify<V>(
    vring: &V,
    head: u16,
    used_len: u32,
    drop_interrupt: bool,
) -> Result<SignalOutcome, VhuScsiError>
where
    V: VringT<GuestMemory>,
{
    vring
        .add_used(head, used_len)
        .map_err(VhuScsiError::CouldNotAddUsed)?;
    notify_if_needed(vring, drop_interrupt)
}

/// The interrupt decision for the used entries added since the last one: signal the call
/// eventfd if EVENT_IDX says the driver wants it and no `drop-interrupt` fault drops it.
fn notify_if_needed<V>(vring: &V, drop_interrupt: bool) -> Result<SignalOutcome, VhuScsiError>
where
    V: VringT<GuestMemory>,
{
    let needed = vring
        .needs_notification()
        .map_err(VhuScsiError::CouldNotCheckNotification)?;
    if !needed {
        return Ok(SignalOutcome::SuppressedByEventIdx);
    }
    if drop_interrupt {
        return Ok(SignalOutcome::SuppressedByFault);
    }
    vring
        .signal_used_queue()
        .map_err(VhuScsiError::CouldNotSignalUsedQueue)?;
    Ok(SignalOutcome::Sent)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which global queue a worker's local event index means: the `local`-th set bit of `mask`.
fn queue_of(mask: u64, local: u16) -> Option<usize> {
    (0..64)
        .filter(|bit| mask >> bit & 1 == 1)
        .nth(usize::from(local))
}

impl VhostUserBackend for VhostUserScsiBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        FIRST_REQUEST_QUEUE + usize::from(self.num_request_queues)
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_SCSI_F_HOTPLUG
            // QEMU 7.2 offers CHANGE unless param_change=off; refusing it fails negotiation.
            | 1 << VIRTIO_SCSI_F_CHANGE
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // CONFIG is for frontends that leave the config space to the backend; QEMU's
        // vhost-user-scsi keeps its own (and does not acknowledge CONFIG).
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIG
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.config();
        let bytes = config.as_slice();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    /// The driver may write `sense_size` and `cdb_size` (5.6.4). A `cdb_size` below 256
    /// is taken; `sense_size` must stay 96 (responses have a fixed layout here), as QEMU's
    /// vhost-scsi refuses it too. Writes to the read-only fields are ignored.
    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let mut config = self.config();
        let bytes = config.as_mut_slice();
        let start = offset as usize;
        let Some(end) = start.checked_add(buf.len()).filter(|&e| e <= bytes.len()) else {
            warn!(
                "config write of {} bytes at {offset} is outside the {}-byte config space",
                buf.len(),
                bytes.len()
            );
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let writable = VIRTIO_SCSI_CONFIG_SENSE_SIZE..VIRTIO_SCSI_CONFIG_CDB_SIZE + 4;
        for (at, &b) in (start..end).zip(buf) {
            if writable.contains(&at) {
                bytes[at] = b;
            }
        }
        let sense_size = u32::from(config.sense_size) as usize;
        let cdb_size = u32::from(config.cdb_size) as usize;
        if sense_size != VIRTIO_SCSI_SENSE_SIZE {
            warn!(
                "driver wrote sense_size {sense_size}: only {VIRTIO_SCSI_SENSE_SIZE} is supported"
            );
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        if cdb_size > VIRTIO_SCSI_MAX_CDB_SIZE {
            warn!("driver wrote cdb_size {cdb_size}: at most {VIRTIO_SCSI_MAX_CDB_SIZE}");
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        if cdb_size != self.cdb_size.swap(cdb_size, Ordering::Relaxed) {
            debug!("cdb_size is now {cdb_size}");
        }
        Ok(())
    }

    fn reset_device(&self) {
        debug!("device reset");
        self.event_idx.store(false, Ordering::Relaxed);
        // The driver's config writes are undone by a reset (5.6.4).
        self.cdb_size.store(VIRTIO_SCSI_CDB_SIZE, Ordering::Relaxed);
        self.drop_all_inflight();
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE stops the ring: what it still holds is dropped as a reset drops
        // it, since the driver gets its ring back and will reinitialise it.
        if let Some(table) = self.inflight.get(queue_index as usize) {
            let dropped = lock(table).clear();
            if dropped > 0 {
                debug!("queue {queue_index} stopped: {dropped} held requests dropped");
            }
        }
        Ok(())
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.queue_masks.clone()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without an exit event a worker never leaves its loop and a disconnect would hang
        // while the daemon joins it.
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("{}", VhuScsiError::CouldNotCreateExitEvent(e));
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(VhuScsiError::UnexpectedEventSet(evset).into());
        }
        let mask = self.queue_masks.get(thread_id).copied().unwrap_or(0);
        // Also without faults: hot-plug events are posted on the remembered event queue.
        if let Some(done) = self.remembered.get(thread_id) {
            if !done.load(Ordering::Relaxed) && !done.swap(true, Ordering::Relaxed) {
                self.remember_vrings(mask, vrings);
            }
        }
        if self.faults.active && device_event == self.timer_event() {
            // Worker 0's timer polls for LU changes made on the control socket.
            if thread_id == 0 {
                if let Err(e) = self.announce_lu_changes() {
                    log::error!("LU change events: {e}");
                }
            }
            if let Err(e) = self.on_timer(thread_id) {
                log::error!("worker {thread_id} timer: {e}");
            }
            return Ok(());
        }
        let (Some(queue), Some(vring)) = (
            queue_of(mask, device_event),
            vrings.get(usize::from(device_event)),
        ) else {
            return Err(VhuScsiError::UnknownQueueEvent {
                event: device_event,
                thread: thread_id,
            }
            .into());
        };
        // Returning an error would end this worker for good; a guest that broke its own
        // rings only loses this kick.
        if let Err(e) = self.process_queue(queue, vring) {
            log::error!("queue {queue}: {e}");
        }
        Ok(())
    }
}

/// The event announcing `change`, if the driver acknowledged the feature it needs.
pub fn lu_change_event(change: LuChange, acked_features: u64) -> Option<VirtioEvent> {
    let has = |bit: u64| acked_features & (1 << bit) != 0;
    match change {
        LuChange::Added(a) if has(VIRTIO_SCSI_F_HOTPLUG) => Some(VirtioEvent::TransportReset {
            target: a.target,
            lun: a.lun,
            reason: ResetReason::Rescan,
        }),
        LuChange::Removed(a) if has(VIRTIO_SCSI_F_HOTPLUG) => Some(VirtioEvent::TransportReset {
            target: a.target,
            lun: a.lun,
            reason: ResetReason::Removed,
        }),
        // CAPACITY DATA HAS CHANGED, the unit attention the LU raised too.
        LuChange::CapacityChanged(a) if has(VIRTIO_SCSI_F_CHANGE) => {
            Some(VirtioEvent::ParamChange {
                target: a.target,
                lun: a.lun,
                asc: 0x2a,
                ascq: 0x09,
            })
        }
        _ => None,
    }
}

/// Serves one request-queue chain and returns the number of bytes written to it. Guest
/// mistakes end as a response code and one warning, never as a panic.
pub fn process_request_chain<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> u32
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let how = Disposition::EXECUTE;
    serve_command(target, mem, chain, how, VIRTIO_SCSI_CDB_SIZE, None).used
}

/// How a command is served: executed (with the faults that change its result), or
/// answered without executing it.
#[derive(Debug, Clone, Copy)]
pub enum Disposition {
    Execute {
        /// Flip bytes of what the guest receives (reads) or of what is stored (writes).
        corrupt: Option<Corruption>,
        /// Report this many more bytes as not transferred (a short transfer).
        extra_residual: u32,
    },
    /// Write this response and nothing else (status faults, aborts, resets).
    Respond(VirtioScsiCmdResp),
}

impl Disposition {
    pub const EXECUTE: Disposition = Disposition::Execute {
        corrupt: None,
        extra_residual: 0,
    };
}

/// What serving a command wrote: the used length and, when one was written, the response.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub used: u32,
    pub resp: Option<VirtioScsiCmdResp>,
}

/// Serves one request-queue chain as `how` says; its header has a CDB area of `cdb_size`
/// bytes. With `slot`, the command is marked executing on its LU once that is known (the
/// caller drops the slot after completing it).
pub fn serve_command<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    how: Disposition,
    cdb_size: usize,
    slot: Option<&ExecutingSlot<'_>>,
) -> Served
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let head = chain.head_index();
    // Only a corrupt fault reads the chain again, after the command ran.
    let kept = matches!(
        how,
        Disposition::Execute {
            corrupt: Some(_),
            ..
        }
    )
    .then(|| chain.clone());
    // Guest buffers walked in place: nothing is allocated for the request (issue 3.5), and
    // the descriptors are read once for both directions.
    let mut buffers = ChainBuffers::scan(mem, chain);
    serve_scanned(
        target,
        mem,
        head,
        &mut buffers,
        None,
        kept,
        how,
        cdb_size,
        slot,
    )
}

/// [`serve_command`] of a chain already scanned (its buffers are used up); `header` is its
/// request header if it was already read off the readable buffer ([`read_header`]);
/// `chain` is the chain itself, needed only when `how` corrupts what a read returns.
#[allow(clippy::too_many_arguments)]
pub fn serve_scanned<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    head: u16,
    buffers: &mut ChainBuffers<'_, M>,
    header: Option<&VirtioScsiCmdReq>,
    chain: Option<DescriptorChain<M>>,
    how: Disposition,
    cdb_size: usize,
    slot: Option<&ExecutingSlot<'_>>,
) -> Served
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let none = Served {
        used: 0,
        resp: None,
    };
    let Ok(data_in) = buffers.writable.as_mut() else {
        warn!("request {head}: {}", ChainError::WritableOutsideGuestMemory);
        return none;
    };
    let resp_len = size_of::<VirtioScsiCmdResp>();
    let Ok(mut writer) = data_in.split_at(resp_len) else {
        warn!(
            "request {head}: {} writable bytes, response needs {resp_len}",
            DataIn::remaining(data_in)
        );
        return none;
    };
    // The data-out part of the readable bytes (after a header with a `cdb_size` CDB
    // area), for the residual of a command not executed.
    let data_out_len = buffers
        .readable_bytes
        .unwrap_or(0)
        .saturating_sub(VIRTIO_SCSI_CMD_REQ_FIXED + cdb_size);
    let data_in_len = DataIn::remaining(data_in);
    let resp = match how {
        Disposition::Respond(mut resp) => {
            // Not executed: nothing of the data buffer was transferred.
            if resp.response == VIRTIO_SCSI_S_OK {
                let total = data_in_len.max(data_out_len);
                resp.resid = Le32::from(total as u32);
            }
            resp
        }
        Disposition::Execute {
            corrupt,
            extra_residual,
        } => {
            let data_out = if buffers.readable_after_writable {
                Err(ChainError::ReadableAfterWritable)
            } else {
                buffers
                    .readable
                    .as_mut()
                    .map_err(|e| ChainError::ReadableOutsideGuestMemory(*e))
            };
            let executed =
                execute_request(target, data_out, header, data_in, corrupt, cdb_size, slot);
            let mut resp = match executed {
                Ok(resp) => resp,
                Err(reason) => {
                    warn!("request {head}: {reason}");
                    VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_FAILURE)
                }
            };
            if let (Some(c), Some(chain)) = (corrupt, chain) {
                let written = data_in.bytes_moved();
                faulty::corrupt_data_in(mem, chain, resp_len, written, c);
            }
            if extra_residual > 0 && resp.response == VIRTIO_SCSI_S_OK {
                // Never more than the whole buffer (5.6.6.1: residual counts buffer bytes).
                let total = data_in_len.max(data_out_len);
                let resid = u32::from(resp.resid).saturating_add(extra_residual);
                resp.resid = Le32::from(resid.min(total as u32));
            }
            resp
        }
    };
    if let Err(e) = writer.write_obj(resp) {
        warn!("request {head}: cannot write response: {e:?}");
        return none;
    }
    Served {
        used: (resp_len + data_in.bytes_moved()) as u32,
        resp: Some(resp),
    }
}

/// Whether a readable descriptor follows a writable one (2.7.4.2 forbids it).
fn readable_after_writable<M>(chain: DescriptorChain<M>) -> bool
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let mut seen_writable = false;
    for desc in chain {
        if desc.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return true;
        }
    }
    false
}

/// Reads the request header, whose CDB area has `cdb_size` bytes, off the front of
/// `data_out`. `Err`: the chain is too short for it.
pub fn read_header<M>(
    data_out: &mut GuestDataOut<'_, M>,
    cdb_size: usize,
) -> Result<VirtioScsiCmdReq, ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let readable = DataOut::remaining(data_out);
    if readable < VIRTIO_SCSI_CMD_REQ_FIXED {
        return Err(ChainError::ShortHeader(readable));
    }
    // A chain too short for the header's CDB area is a malformed request, not a CDB the
    // device server could look at: FAILURE.
    let header = VIRTIO_SCSI_CMD_REQ_FIXED + cdb_size;
    if readable < header {
        return Err(ChainError::CdbBeyondHeader { readable, header });
    }
    // The first 32 CDB bytes are kept (no command is longer); the rest of a larger area is
    // skipped, and a smaller one leaves the tail of `cdb` zero.
    let mut req = VirtioScsiCmdReq::default();
    let kept = header.min(size_of::<VirtioScsiCmdReq>());
    data_out
        .read_bytes(&mut req.as_mut_slice()[..kept])
        .and_then(|()| data_out.skip(header - kept))
        .map_err(ChainError::UnreadableHeader)?;
    Ok(req)
}

/// Parses and executes one command, its header and data-out in `data_out` (`Err`: what is
/// wrong with the readable descriptors); the header has a CDB area of `cdb_size` bytes.
/// `header` is the header when it was already read off `data_out` ([`read_header`]).
/// `Err` is a malformed chain. `corrupt_writes` flips bytes of the
/// data a write stores. With `slot`, the command is marked executing once its LU is known.
fn execute_request<M>(
    target: &Target,
    data_out: Result<&mut GuestDataOut<'_, M>, ChainError>,
    header: Option<&VirtioScsiCmdReq>,
    data_in: &mut GuestDataIn<'_, M>,
    corrupt_writes: Option<Corruption>,
    cdb_size: usize,
    slot: Option<&ExecutingSlot<'_>>,
) -> Result<VirtioScsiCmdResp, ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let data_out = data_out?;
    let read;
    let req = match header {
        Some(req) => req,
        None => {
            read = read_header(data_out, cdb_size)?;
            &read
        }
    };
    let cdb = req.cdb;
    // Without VIRTIO_SCSI_F_INOUT a request moves data in one direction only.
    if DataOut::remaining(data_out) > 0 && DataIn::remaining(data_in) > 0 {
        return Err(ChainError::BothDataDirections);
    }

    let lun = req.lun;
    // A LUN field in another format addresses nothing, and an absent LU is BAD_TARGET too,
    // as QEMU's virtio-scsi answers. Only the first is the driver's mistake: drivers
    // probe for absent LUs.
    let Some(addr) = lun_address(&lun) else {
        warn!("request with LUN field {lun:02x?}: not a virtio-scsi single-level LUN");
        return Ok(VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_BAD_TARGET));
    };
    // One lookup: the LU the command runs on is the one found here.
    let Some(lu) = target.lu(addr) else {
        debug!("request to absent LU {lun:02x?}");
        return Ok(VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_BAD_TARGET));
    };
    // A CDB longer than the negotiated CDB area lost its tail: the header is well formed,
    // the CDB is not one the device server can carry out, so it gets what any CDB it
    // cannot parse gets (QEMU answers ILLEGAL REQUEST too): CHECK CONDITION, INVALID
    // FIELD IN CDB. Checked before the LU looks at it, so no unit attention is used up.
    if let Some(len) = cdb_len(&cdb).filter(|&len| len > cdb_size) {
        warn!(
            "CDB {:#04x} of {len} bytes does not fit cdb_size {cdb_size}",
            cdb[0]
        );
        let outcome = CmdOutcome {
            sense_format: lu.sense_format(),
            ..CmdOutcome::check_condition(Sense::INVALID_FIELD_IN_CDB)
        };
        let mut resp = VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_OK);
        resp.status = outcome.status;
        // Nothing of the data buffer was transferred.
        let total = DataIn::remaining(data_in).max(DataOut::remaining(data_out));
        resp.resid = Le32::from(total as u32);
        resp.sense_len = Le32::from(outcome.sense_bytes(&mut resp.sense) as u32);
        return Ok(resp);
    }
    // Before the target looks at the LU (its unit attention): a TMF either waits for this
    // command or this command sees the TMF's effects.
    if let Some(slot) = slot {
        slot.begin(addr.target, addr.lun);
    }
    let in_len = DataIn::remaining(data_in);
    let out_len = DataOut::remaining(data_out);
    let outcome = match corrupt_writes {
        Some(c) if out_len > 0 => {
            let mut corrupting = faulty::CorruptingDataOut::new(data_out, c);
            target.execute_on(&lu, &cdb, data_in, &mut corrupting)
        }
        _ => target.execute_on(&lu, &cdb, data_in, data_out),
    };
    // Residual: bytes of the data buffer that were not transferred (5.6.6.1). What is
    // left in the buffer is exactly that, whatever the target did.
    let resid = if out_len > 0 {
        DataOut::remaining(data_out)
    } else {
        DataIn::remaining(data_in)
    };
    debug!(
        "LUN {} CDB {:02x?}: {outcome:?}",
        addr.lun,
        &cdb[..cdb_len_for_opcode(cdb[0]).unwrap_or(VIRTIO_SCSI_CDB_SIZE)]
    );
    match outcome {
        Ok(outcome) => {
            let mut resp = VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_OK);
            resp.status = outcome.status;
            resp.resid = Le32::from(resid as u32);
            // Fixed or descriptor format, as the LU's control mode page says.
            let sense_len = outcome.sense_bytes(&mut resp.sense);
            resp.sense_len = Le32::from(sense_len as u32);
            Ok(resp)
        }
        Err(CmdError::NoSuchLun(_)) => {
            Ok(VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_BAD_TARGET))
        }
        Err(CmdError::DataInTooSmall { needed, available }) => {
            debug!("data-in buffer of {available} bytes for a {needed}-byte transfer");
            let mut resp = VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_OVERRUN);
            resp.resid = Le32::from(in_len as u32);
            Ok(resp)
        }
        Err(CmdError::DataOutTooSmall { needed, available }) => {
            Err(ChainError::DataOutTooSmall { available, needed })
        }
        Err(CmdError::BufferAccess(e)) => Err(ChainError::BufferAccess(e)),
    }
}

/// Serves one control-queue chain (TMF or AN) and returns the bytes written to it.
pub fn process_control_chain<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> u32
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    serve_control(target, mem, chain, None)
}

/// [`process_control_chain`]; with `executing`, a TMF waits for the commands of its LUs
/// that other workers are executing (the queue path).
fn serve_control<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    executing: Option<&Executing>,
) -> u32
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if let Err(reason) = control_response_room(mem, &chain) {
        warn!("control {}: {reason}", chain.head_index());
        return 0;
    }
    let resp = control_response(target, mem, chain.clone(), executing);
    write_control(mem, chain, resp)
}

/// Whether a control response can be written at all. Checked before the request is acted
/// on: a TMF that cannot be answered is not executed (as a command without room for its
/// response is not), and the guest's mistake costs one warning, not one per layer.
fn control_response_room<M>(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<M>,
) -> Result<(), ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let writer = chain
        .clone()
        .writer(mem)
        .map_err(|_| ChainError::WritableOutsideGuestMemory)?;
    if writer.available_bytes() == 0 {
        return Err(ChainError::NoResponseDescriptor);
    }
    Ok(())
}

/// Writes a control response (or, for a malformed request, VIRTIO_SCSI_S_FAILURE with one
/// warning) and returns the bytes written.
fn write_control<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    resp: Result<ControlResponse, ChainError>,
) -> u32
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let head = chain.head_index();
    let Ok(mut writer) = chain.writer(mem) else {
        warn!("control {head}: {}", ChainError::WritableOutsideGuestMemory);
        return 0;
    };
    if writer.available_bytes() == 0 {
        warn!("control {head}: {}", ChainError::NoResponseDescriptor);
        return 0;
    }
    let written = match resp {
        Ok(ControlResponse::Tmf(resp)) => writer
            .write_obj(resp)
            .map(|_| size_of::<VirtioScsiCtrlTmfResp>()),
        Ok(ControlResponse::An(resp)) => writer
            .write_obj(resp)
            .map(|_| size_of::<VirtioScsiCtrlAnResp>()),
        Err(reason) => {
            warn!("control {head}: {reason}");
            // The response byte comes first in every control response.
            writer.write_obj(VIRTIO_SCSI_S_FAILURE).map(|_| 1)
        }
    };
    match written {
        Ok(n) => n as u32,
        Err(e) => {
            warn!("control {head}: response does not fit: {e}");
            0
        }
    }
}

enum ControlResponse {
    Tmf(VirtioScsiCtrlTmfResp),
    An(VirtioScsiCtrlAnResp),
}

/// A parsed control-queue request.
enum ControlRequest {
    Tmf(VirtioScsiCtrlTmfReq),
    An(VirtioScsiCtrlAnReq),
}

/// The answer to a control request. With `executing`, a TMF that aborts or resets waits
/// for the commands of its LUs that other workers are executing.
fn control_response<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    executing: Option<&Executing>,
) -> Result<ControlResponse, ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    Ok(match parse_control(mem, chain)? {
        ControlRequest::Tmf(req) => ControlResponse::Tmf(VirtioScsiCtrlTmfResp {
            response: task_management(target, &req, executing),
        }),
        ControlRequest::An(_) => an_response(),
    })
}

/// No asynchronous events are supported: report none.
fn an_response() -> ControlResponse {
    ControlResponse::An(VirtioScsiCtrlAnResp {
        event_actual: Le32::from(0),
        response: VIRTIO_SCSI_S_OK,
    })
}

fn parse_control<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> Result<ControlRequest, ChainError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if readable_after_writable(chain.clone()) {
        return Err(ChainError::ReadableAfterWritable);
    }
    let reader = chain
        .reader(mem)
        .map_err(ChainError::ReaderOutsideGuestMemory)?;
    let mut peek = reader.clone();
    let type_: Le32 = peek
        .read_obj()
        .map_err(|_| ChainError::ShortControlHeader(reader.available_bytes()))?;
    let mut reader = reader;
    match u32::from(type_) {
        VIRTIO_SCSI_T_TMF => {
            let req: VirtioScsiCtrlTmfReq =
                reader.read_obj().map_err(|_| ChainError::ShortTmfRequest)?;
            Ok(ControlRequest::Tmf(req))
        }
        VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE => {
            let req: VirtioScsiCtrlAnReq =
                reader.read_obj().map_err(|_| ChainError::ShortAnRequest)?;
            Ok(ControlRequest::An(req))
        }
        other => Err(ChainError::UnknownControlType(other)),
    }
}

/// The SCSI address a virtio LUN field names, if it is in the one format 5.6.6.1 allows.
fn lun_address(lun: &[u8; 8]) -> Option<LunAddress> {
    decode_lun(lun).map(|a| LunAddress {
        target: a.target,
        lun: a.lun,
    })
}

/// The answer a TMF gets without being carried out: BAD_TARGET when its LUN addresses no
/// LU, FUNCTION REJECTED for what is not supported. `None`: carry it out.
fn tmf_refusal(target: &Target, req: &VirtioScsiCtrlTmfReq) -> Option<u8> {
    let lun = req.lun;
    let Some(addr) = lun_address(&lun) else {
        warn!("TMF with LUN field {lun:02x?}: not a virtio-scsi single-level LUN");
        return Some(VIRTIO_SCSI_S_BAD_TARGET);
    };
    if !target.has_lu(addr) {
        return Some(VIRTIO_SCSI_S_BAD_TARGET);
    }
    match u32::from(req.subtype) {
        VIRTIO_SCSI_T_TMF_ABORT_TASK
        | VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
        | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET
        | VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET
        | VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET
        | VIRTIO_SCSI_T_TMF_QUERY_TASK
        | VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => None,
        // NACA is not supported, so there is never an ACA to clear.
        VIRTIO_SCSI_T_TMF_CLEAR_ACA => Some(VIRTIO_SCSI_S_FUNCTION_REJECTED),
        other => {
            warn!("unknown TMF subtype {other}");
            Some(VIRTIO_SCSI_S_FUNCTION_REJECTED)
        }
    }
}

/// Carries out a TMF when no task is held (without faults nothing is): resets raise their
/// unit attention, and aborts and resets wait for the commands of their LUs that other
/// workers are executing, so those are on their used rings before the answer. Queries find
/// nothing held: FUNCTION COMPLETE (SAM-5 7.9, 7.10).
fn task_management(
    target: &Target,
    req: &VirtioScsiCtrlTmfReq,
    executing: Option<&Executing>,
) -> u8 {
    if let Some(refused) = tmf_refusal(target, req) {
        return refused;
    }
    let lun = req.lun;
    let Some(addr) = lun_address(&lun) else {
        return VIRTIO_SCSI_S_BAD_TARGET;
    };
    let subtype = u32::from(req.subtype);
    // The next command to the LU (or to every LU of the target) reports the reset
    // (SAM-5 5.14); raised first, so that a command begun after the wait below sees it.
    let scope = match subtype {
        VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => {
            target.nexus_reset(addr.target);
            Some(None)
        }
        VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => {
            if target.lu_reset(addr).is_err() {
                // Removed since the check above.
                return VIRTIO_SCSI_S_BAD_TARGET;
            }
            Some(Some(addr.lun))
        }
        VIRTIO_SCSI_T_TMF_ABORT_TASK
        | VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
        | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => Some(Some(addr.lun)),
        _ => None,
    };
    match (scope, executing) {
        (Some(lun), Some(executing)) => {
            let name = crate::faults::TmfKind::from_virtio(subtype).name();
            wait_for_executing(executing, name, addr.target, lun)
        }
        _ => VIRTIO_SCSI_S_FUNCTION_COMPLETE,
    }
}

/// Waits for the commands of `target` (LUN `lun`, or all) being executed by other workers.
/// One whose LU is stuck must not stop the control queue: past the bound the TMF fails,
/// since what it was to end is still running (the driver escalates, to a device reset).
fn wait_for_executing(executing: &Executing, tmf: &str, target: u8, lun: Option<u16>) -> u8 {
    match executing.wait_for(target, lun) {
        0 => VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        n => {
            warn!(
                "{tmf} of target {target} LUN {lun:?}: {n} commands still executing \
                 after {:?}; answering FAILURE",
                executing.bound()
            );
            VIRTIO_SCSI_S_FAILURE
        }
    }
}

#[cfg(test)]
mod command_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
