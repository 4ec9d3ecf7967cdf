//! The vhost-user glue: features, queues (0 control, 1 event, 2.. request), one worker per
//! request queue. `passes` serves a queue's chains pass after pass, `command` and
//! `control_queue` serve one chain, `completion` is the single completion path where
//! interrupts are decided, `ring_epoch` keeps completions of chains popped before a reset
//! or a stop off the rings set up since, `events` fills the event queue, and
//! `fault_path` is the request path with the fault engine.

use std::io;
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap, Le32};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::timerfd::TimerFd;

use crate::faults::{CommandScreen, Epoch, FaultEngine, Plan};
use crate::scsi::Target;
use crate::virtio::{
    self, VirtioScsiConfig, VirtioScsiEvent, VIRTIO_SCSI_CDB_SIZE, VIRTIO_SCSI_CONFIG_CDB_SIZE,
    VIRTIO_SCSI_CONFIG_SENSE_SIZE, VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG,
    VIRTIO_SCSI_MAX_CDB_SIZE, VIRTIO_SCSI_SENSE_SIZE,
};

pub use command::{
    process_request_chain, read_header, serve_command, serve_scanned, Disposition, Served,
};
pub use completion::{complete_and_notify, SignalBatch, MAX_UNSIGNALLED};
pub use control_queue::process_control_chain;
pub use events::lu_change_event;
use executing::Executing;
use inflight::InflightTable;
use passes::PlainServer;
use ring_epoch::{Pop, Popped, RingEpoch};

pub mod executing;
pub mod inflight;

mod command;
mod completion;
mod control_queue;
mod corrupt;
mod events;
mod fault_path;
mod passes;
mod ring_epoch;

#[cfg(test)]
mod command_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

/// The wire's queue indexes ([`crate::virtio::CONTROL_QUEUE`] and on) as vring indexes.
pub const CONTROL_QUEUE: usize = virtio::CONTROL_QUEUE as usize;
pub const EVENT_QUEUE: usize = virtio::EVENT_QUEUE as usize;
pub const FIRST_REQUEST_QUEUE: usize = virtio::FIRST_REQUEST_QUEUE as usize;
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
    /// Per queue: the ring epoch its chains are popped in, and the pass lock a reset or a
    /// stop waits for. Lock order: a pass lock, then the vring's.
    rings: Vec<RingEpoch>,
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
                .map(|_| fault_path::new_timer().map(Mutex::new))
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
            rings: (0..num_queues).map(RingEpoch::new).collect(),
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
            batch: SignalBatch::new(&self.rings[queue], event_idx),
        };
        self.serve_passes(queue, vring, event_idx, &mut server)
    }

    /// Keeps a clone of each vring a worker serves (see the `vrings` field).
    pub(super) fn remember_vrings(&self, mask: u64, vrings: &[VringRwLock]) {
        let mut cache = lock(&self.vrings);
        for (queue, vring) in queues_of(mask).zip(vrings) {
            if let Some(slot @ None) = cache.get_mut(queue) {
                *slot = Some(vring.clone());
            }
        }
    }

    fn vring(&self, queue: usize) -> Option<VringRwLock> {
        lock(&self.vrings).get(queue).cloned().flatten()
    }

    /// Device reset (or the frontend went away): every held request and TMF is dropped
    /// unanswered, as a reset discards them (virtio 2.4), and slow TMFs end.
    pub fn drop_all_inflight(&self) {
        let dropped: usize = self.inflight.iter().map(|t| lock(t).clear()).sum();
        self.events_missed.store(false, Ordering::Relaxed);
        if dropped > 0 {
            debug!("device reset: {dropped} held requests dropped");
        }
        if self.faults.active {
            let now = self.faults.epoch.now();
            self.engine().on_device_reset(now);
        }
    }

    /// The frontend went away. A connection that never set up guest memory had no driver,
    /// so it is no device reset (the harness probes the socket by connecting).
    pub fn on_disconnect(&self) {
        let held = self.inflight.iter().any(|t| !lock(t).is_empty());
        if held || self.memory().is_some() {
            self.drop_all_inflight();
        }
    }

    /// Number of requests held on `queue` (tests and diagnostics).
    pub fn inflight_len(&self, queue: usize) -> usize {
        self.inflight.get(queue).map_or(0, |t| lock(t).len())
    }

    /// Completions of `queue` dropped because their chain was popped before a reset or a
    /// stop of its ring.
    #[cfg(test)]
    pub fn stale_completions(&self, queue: usize) -> u64 {
        self.rings
            .get(queue)
            .map_or(0, RingEpoch::stale_completions)
    }

    /// A new ring epoch for each of `queues` (a device reset: all of them), then waits
    /// for the passes in progress: from then on no completion of a chain popped before
    /// reaches their rings.
    fn retire_popped(&self, queues: std::ops::Range<usize>) {
        for q in queues.clone() {
            self.rings[q].begin_epoch(self.vring(q).as_ref());
        }
        for q in queues {
            self.rings[q].wait_for_pass();
        }
    }
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

fn queues_of(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |bit| mask >> bit & 1 == 1)
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
        // The handler disabled every ring first, so nothing more is popped. What was is
        // dropped, and the rings the driver sets up next get none of it.
        self.retire_popped(0..self.num_queues());
        self.event_idx.store(false, Ordering::Relaxed);
        // The driver's config writes are undone by a reset (5.6.4).
        self.cdb_size.store(VIRTIO_SCSI_CDB_SIZE, Ordering::Relaxed);
        self.drop_all_inflight();
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let queue = queue_index as usize;
        // GET_VRING_BASE: the handler made the ring not ready, so the pass in progress pops
        // no more, and what it popped goes on this ring before we return, as vhost-scsi
        // flushes on a stop: a VM stopped and resumed at the returned next_avail loses no
        // request. Only then a new epoch begins.
        let _pass = self.rings.get(queue).map(|ring| {
            let pass = ring.pass();
            ring.begin_epoch(self.vring(queue).as_ref());
            pass
        });
        // What the ring still holds is dropped as a reset drops it, since the driver gets
        // its ring back and will reinitialise it.
        if let Some(table) = self.inflight.get(queue) {
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
