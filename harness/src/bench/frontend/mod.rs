//! A host-side vhost-user-scsi frontend: it plays QEMU's part (memfd memory, feature and
//! protocol negotiation, vrings with kick and call eventfds) and the guest driver's part
//! (split rings, virtio-scsi requests), so a backend can be driven without a guest. The
//! bench and the integration tests that QEMU cannot script precisely are built on it.

pub mod load;
pub mod memory;
pub mod queue;
pub mod ring;
pub mod scsi;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use self::memory::{Layout, SharedMemory};
use self::queue::{Completion, DataDir, QueuePlan, ScsiQueue};
use self::scsi::ScsiAddress;
use crate::launch::signals;

/// Feature masks (the bindings give bit numbers).
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// VHOST_USER_F_PROTOCOL_FEATURES: rings start disabled until SET_VRING_ENABLE.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

pub use flakyhba_backend::virtio::{CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE};

/// Requests the control queue keeps in flight at most (TMFs).
const CONTROL_SLOTS: u16 = 8;
/// How long one vhost-user message or a setup command may take before the backend
/// counts as hung.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a wait for a completion sleeps before it looks at the signal flag.
pub const SIGNAL_CHECK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("could not connect to {0}: {1}")]
    CouldNotConnect(PathBuf, std::io::Error),
    #[error("vhost-user {0} failed: {1}")]
    Vhost(&'static str, vhost::Error),
    #[error("backend lacks {0}")]
    MissingFeature(&'static str),
    #[error("backend has {have} virtqueues; {want} needed (control, event and {requests} request queues)")]
    TooFewQueues { have: u64, want: u64, requests: u16 },
    #[error("bad configuration: {0}")]
    BadConfig(String),
    #[error("could not create shared memory: {0}")]
    CouldNotCreateMemory(std::io::Error),
    #[error("could not create eventfd: {0}")]
    CouldNotCreateEventFd(std::io::Error),
    #[error("could not kick: {0}")]
    CouldNotKick(std::io::Error),
    #[error("could not wait for a call: {0}")]
    CouldNotWaitForCall(std::io::Error),
    #[error("queue {queue}: used ring names descriptor {id}, not the head of a request in flight")]
    BadUsedId { queue: u16, id: u32 },
    #[error("queue {queue}: no completion within {timeout:?} ({ring})")]
    Timeout {
        queue: u16,
        timeout: Duration,
        ring: queue::RingState,
    },
    #[error("queue {queue}: no free request slot")]
    NoFreeSlot { queue: u16 },
    #[error("{what}: response {response}, status {status:#x}")]
    CommandFailed {
        what: &'static str,
        response: u32,
        status: u8,
    },
    #[error("interrupted by a signal")]
    Interrupted,
}

fn vhost(what: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |e| FrontendError::Vhost(what, e)
}

/// What the frontend sets up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    pub request_queues: u16,
    /// Requests each request queue keeps in flight at most.
    pub queue_depth: u16,
    /// Data buffer of each request slot (the largest transfer).
    pub max_transfer: u32,
    /// Use VIRTIO_RING_F_EVENT_IDX when the backend offers it.
    pub event_idx: bool,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            request_queues: 1,
            queue_depth: 32,
            max_transfer: 64 * 1024,
            event_idx: true,
        }
    }
}

/// A connected, negotiated and running vhost-user-scsi device.
pub struct ScsiFrontend {
    conn: Frontend,
    mem: Arc<SharedMemory>,
    features: u64,
    control: ScsiQueue,
    event: ScsiQueue,
    requests: Vec<ScsiQueue>,
    next_tag: u64,
}

impl std::fmt::Debug for ScsiFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiFrontend")
            .field("features", &format_args!("{:#x}", self.features))
            .field("memory", &self.mem)
            .field("request_queues", &self.requests.len())
            .finish_non_exhaustive()
    }
}

impl ScsiFrontend {
    /// Connects to the backend at `socket`, negotiates and starts every queue.
    pub fn connect(socket: &Path, config: FrontendConfig) -> Result<ScsiFrontend, FrontendError> {
        if config.request_queues == 0 || config.queue_depth == 0 {
            return Err(FrontendError::BadConfig(
                "queues and queue depth must be at least 1".into(),
            ));
        }
        // Three descriptors per request, and rings of at most 1024 entries.
        if u32::from(config.queue_depth) * 3 > 1024 {
            return Err(FrontendError::BadConfig(format!(
                "queue depth {} above 341",
                config.queue_depth
            )));
        }
        let stream = UnixStream::connect(socket)
            .map_err(|e| FrontendError::CouldNotConnect(socket.to_owned(), e))?;
        // A backend that stops answering shows as an error instead of a hang.
        stream
            .set_read_timeout(Some(SOCKET_TIMEOUT))
            .map_err(|e| FrontendError::CouldNotConnect(socket.to_owned(), e))?;
        let mut conn = Frontend::from_stream(stream, 64);

        let offered = conn.get_features().map_err(vhost("GET_FEATURES"))?;
        if offered & VERSION_1 == 0 {
            return Err(FrontendError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if offered & PROTOCOL_FEATURES == 0 {
            return Err(FrontendError::MissingFeature(
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        let mut features = VERSION_1 | PROTOCOL_FEATURES;
        if config.event_idx && offered & EVENT_IDX != 0 {
            features |= EVENT_IDX;
        }
        conn.set_owner().map_err(vhost("SET_OWNER"))?;
        let proto = conn
            .get_protocol_features()
            .map_err(vhost("GET_PROTOCOL_FEATURES"))?;
        let wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE;
        conn.set_protocol_features(proto & wanted)
            .map_err(vhost("SET_PROTOCOL_FEATURES"))?;
        if proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every message without a reply of its own asks for an acknowledgement, which
            // the vhost crate waits for: a refused one fails here, and a backend has acted
            // on a message (a device reset, an enabled ring) before the next one is sent.
            conn.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let want = u64::from(FIRST_REQUEST_QUEUE) + u64::from(config.request_queues);
        // Without MQ a backend has no way to say; one request queue is then assumed.
        let have = if proto.contains(VhostUserProtocolFeatures::MQ) {
            conn.get_queue_num().map_err(vhost("GET_QUEUE_NUM"))?
        } else {
            u64::from(FIRST_REQUEST_QUEUE) + 1
        };
        if have < want {
            return Err(FrontendError::TooFewQueues {
                have,
                want,
                requests: config.request_queues,
            });
        }

        let mut layout = Layout::default();
        let control_plan = QueuePlan::layout(&mut layout, CONTROL_QUEUE, CONTROL_SLOTS, 0);
        // The event queue is set up but given no buffers: events are not this tool's
        // business, and a backend copes with an empty event queue (EVENTS_MISSED).
        let event_plan = QueuePlan::layout(&mut layout, EVENT_QUEUE, 1, 0);
        let request_plans: Vec<QueuePlan> = (0..config.request_queues)
            .map(|i| {
                QueuePlan::layout(
                    &mut layout,
                    FIRST_REQUEST_QUEUE + i,
                    config.queue_depth,
                    config.max_transfer,
                )
            })
            .collect();
        let mem = Arc::new(SharedMemory::new(layout.size())?);
        let event_idx = features & EVENT_IDX != 0;
        let control = ScsiQueue::new(mem.clone(), control_plan, event_idx)?;
        let event = ScsiQueue::new(mem.clone(), event_plan, event_idx)?;
        let requests = request_plans
            .into_iter()
            .map(|p| ScsiQueue::new(mem.clone(), p, event_idx))
            .collect::<Result<Vec<_>, _>>()?;
        let mut fe = ScsiFrontend {
            conn,
            mem,
            features,
            control,
            event,
            requests,
            next_tag: 1,
        };
        fe.start()?;
        Ok(fe)
    }

    /// [`ScsiFrontend::connect`], retried until `deadline` while the connection fails: a
    /// backend still starting, or still tearing down the frontend before (a reconnect).
    /// Configuration errors and a signal end it at once.
    pub fn connect_within(
        socket: &Path,
        config: FrontendConfig,
        deadline: Instant,
    ) -> Result<ScsiFrontend, FrontendError> {
        loop {
            match ScsiFrontend::connect(socket, config) {
                Ok(fe) => return Ok(fe),
                Err(e @ (FrontendError::CouldNotConnect(..) | FrontendError::Vhost(..)))
                    if Instant::now() < deadline =>
                {
                    log::debug!("connect: {e}; retrying");
                    if signals::interrupted() {
                        return Err(FrontendError::Interrupted);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// SET_FEATURES, SET_MEM_TABLE and every vring, in QEMU's order.
    fn start(&mut self) -> Result<(), FrontendError> {
        self.conn
            .set_features(self.features)
            .map_err(vhost("SET_FEATURES"))?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: self.mem.len() as u64,
            userspace_addr: self.mem.user_addr(),
            mmap_offset: 0,
            mmap_handle: self.mem.fd(),
        };
        self.conn
            .set_mem_table(&[region])
            .map_err(vhost("SET_MEM_TABLE"))?;
        let n = self.requests.len();
        Self::start_ring(&mut self.conn, &self.mem, &self.control)?;
        Self::start_ring(&mut self.conn, &self.mem, &self.event)?;
        for i in 0..n {
            Self::start_ring(&mut self.conn, &self.mem, &self.requests[i])?;
        }
        Ok(())
    }

    fn start_ring(
        conn: &mut Frontend,
        mem: &SharedMemory,
        q: &ScsiQueue,
    ) -> Result<(), FrontendError> {
        let i = usize::from(q.index());
        let a = q.ring_addrs();
        let user = mem.user_addr();
        conn.set_vring_num(i, q.size())
            .map_err(vhost("SET_VRING_NUM"))?;
        conn.set_vring_base(i, 0).map_err(vhost("SET_VRING_BASE"))?;
        // vring addresses are in the frontend's own address space (as QEMU's are).
        let cfg = VringConfigData {
            queue_max_size: q.size(),
            queue_size: q.size(),
            flags: 0,
            desc_table_addr: user + a.desc,
            used_ring_addr: user + a.used,
            avail_ring_addr: user + a.avail,
            log_addr: None,
        };
        conn.set_vring_addr(i, &cfg)
            .map_err(vhost("SET_VRING_ADDR"))?;
        conn.set_vring_kick(i, q.kick_fd())
            .map_err(vhost("SET_VRING_KICK"))?;
        conn.set_vring_call(i, q.call_fd())
            .map_err(vhost("SET_VRING_CALL"))?;
        conn.set_vring_enable(i, true)
            .map_err(vhost("SET_VRING_ENABLE"))?;
        // A round trip before the first kick. Without REPLY_ACK (vhost-device-scsi 0.1.0
        // has none) nothing above is acknowledged, and a kick that reaches a backend's worker before its main thread
        // has enabled the ring can be consumed and dropped (vhost-device-scsi 0.1.0 then
        // never serves the first request). The backend answers GET_FEATURES only after
        // the messages before it, so the ring is enabled by the time we kick. QEMU has
        // the same race in principle, but its guest kicks long after.
        conn.get_features().map(drop).map_err(vhost("GET_FEATURES"))
    }

    /// VHOST_USER_RESET_DEVICE, then the device is set up again from scratch (features,
    /// memory, rings), as a driver does after writing 0 to device_status. Whatever was in
    /// flight is forgotten: the backend drops it unanswered.
    pub fn reset_device(&mut self) -> Result<(), FrontendError> {
        self.conn.reset_device().map_err(vhost("RESET_DEVICE"))?;
        // A round trip before the rings are zeroed: without REPLY_ACK, RESET_DEVICE is not
        // acknowledged, and a backend still serving the old rings until it reads it would
        // pop zeroed descriptors and put used entries on the new rings. The backend answers
        // GET_FEATURES only once its reset has returned. (QEMU stops every ring with
        // GET_VRING_BASE, which is answered, before it resets the device.)
        self.conn.get_features().map_err(vhost("GET_FEATURES"))?;
        let event_idx = self.event_idx();
        self.control.reinit(event_idx);
        self.event.reinit(event_idx);
        for q in &mut self.requests {
            q.reinit(event_idx);
        }
        self.start()
    }

    /// Stops request queue `i` (GET_VRING_BASE) and starts it again on an empty ring, as
    /// QEMU does around a vhost stop and start. Returns the avail index the backend had
    /// reached; what the ring held is dropped by the backend.
    pub fn restart_request_queue(&mut self, i: usize) -> Result<u32, FrontendError> {
        let event_idx = self.event_idx();
        let index = usize::from(self.requests[i].index());
        let base = self
            .conn
            .get_vring_base(index)
            .map_err(vhost("GET_VRING_BASE"))?;
        self.requests[i].reinit(event_idx);
        Self::start_ring(&mut self.conn, &self.mem, &self.requests[i])?;
        Ok(base)
    }

    pub fn event_idx(&self) -> bool {
        self.features & EVENT_IDX != 0
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn request_queue_count(&self) -> usize {
        self.requests.len()
    }

    /// The control queue and the request queues, borrowed together (a TMF races I/O).
    pub fn queues_mut(&mut self) -> (&mut ScsiQueue, &mut [ScsiQueue]) {
        (&mut self.control, &mut self.requests)
    }

    /// Moves the request queues out, e.g. one to each load thread; `put_request_queues`
    /// gives them back.
    pub fn take_request_queues(&mut self) -> Vec<ScsiQueue> {
        std::mem::take(&mut self.requests)
    }

    pub fn put_request_queues(&mut self, queues: Vec<ScsiQueue>) {
        self.requests = queues;
    }

    /// A tag no other request of this frontend used.
    pub fn next_tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    /// Sends one command on request queue `queue` and waits for its completion.
    /// `data` is written before (ToDevice) or filled after (FromDevice).
    pub fn execute(
        &mut self,
        queue: usize,
        addr: ScsiAddress,
        cdb: &[u8],
        dir: DataDir,
        data: &mut [u8],
        timeout: Duration,
    ) -> Result<Completion, FrontendError> {
        let tag = self.next_tag();
        let q = &mut self.requests[queue];
        let slot = q
            .alloc_slot()
            .ok_or(FrontendError::NoFreeSlot { queue: q.index() })?;
        if let DataDir::ToDevice(len) = dir {
            q.write_data(slot, &data[..len as usize]);
        }
        let req = scsi::cmd_req(addr, tag, cdb);
        q.submit(slot, &req, scsi::CMD_RESP_LEN, dir);
        q.publish_and_kick()?;
        let c = wait_for_slot(q, slot, timeout)?;
        if let DataDir::FromDevice(len) = dir {
            q.read_data(slot, &mut data[..len as usize]);
        }
        q.free_slot(slot);
        Ok(c)
    }

    /// READ CAPACITY(16) of `addr`: (blocks, block size). A fresh device reports a unit
    /// attention (power on, reset) first: CHECK CONDITION is retried a few times, as
    /// every initiator does.
    pub fn read_capacity(&mut self, addr: ScsiAddress) -> Result<(u64, u32), FrontendError> {
        let mut data = [0u8; 32];
        let mut tries = 0;
        loop {
            let c = self.execute(
                0,
                addr,
                &scsi::read_capacity16(),
                DataDir::FromDevice(32),
                &mut data,
                SOCKET_TIMEOUT,
            )?;
            tries += 1;
            if c.cmd_status() == scsi::SAM_STAT_CHECK_CONDITION && tries < 4 {
                continue;
            }
            check_good("READ CAPACITY(16)", &c)?;
            return Ok(scsi::parse_capacity16(&data));
        }
    }
}

/// Waits for the completion of `slot`; other completions on the way are freed unread
/// (the caller keeps nothing else in flight that it cares about). A handled signal ends
/// the wait within [`SIGNAL_CHECK`].
pub fn wait_for_slot(
    q: &mut ScsiQueue,
    slot: u16,
    timeout: Duration,
) -> Result<Completion, FrontendError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = q.poll()? {
            if c.slot == slot {
                return Ok(c);
            }
            q.free_slot(c.slot);
            continue;
        }
        if signals::interrupted() {
            return Err(FrontendError::Interrupted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FrontendError::Timeout {
                queue: q.index(),
                timeout,
                ring: q.ring_state(),
            });
        }
        q.wait(left.min(SIGNAL_CHECK))?;
    }
}

/// Ok when a command completed with VIRTIO_SCSI_S_OK and GOOD status.
pub fn check_good(what: &'static str, c: &Completion) -> Result<(), FrontendError> {
    if c.cmd_response() == scsi::VIRTIO_SCSI_S_OK && c.cmd_status() == scsi::SAM_STAT_GOOD {
        Ok(())
    } else {
        Err(FrontendError::CommandFailed {
            what,
            response: c.cmd_response(),
            status: c.cmd_status(),
        })
    }
}
