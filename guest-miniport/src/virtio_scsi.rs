//! The virtio-scsi miniport: device bring-up, the request queue with many outstanding
//! requests matched by request id, response decoding, the event queue, MSI-X
//! interrupts (`irq=on`) and HwTimer polling (`irq=off`, and as a watchdog for
//! completions whose interrupt never came with `irq=on`, T7), and bus resets through
//! TMFs on the control queue whose answers the timer polls, escalating to a virtio
//! device reset when they do not come (S1: nothing here stalls for more than 1 ms).

use core::fmt;
use core::ptr::{self, NonNull};

use crate::latency::Histogram;
use crate::platform::Dma;
use crate::port::handoff::TimerArm;
use crate::port::{
    AdapterCapabilities, DataDirection, Miniport, PortContext, SrbHandle, SrbStatus, StartIo,
    MAX_LUS, MAX_SRBS, SENSE_BUFFER_LEN,
};
use crate::virtio::{Buffer, QueueError, SplitQueue, Transport, MAX_QUEUE_SIZE};
use crate::wire::*;

/// Requests the miniport keeps outstanding at most.
pub const MAX_REQUESTS: usize = MAX_SRBS;
/// Event buffers posted on the event queue.
pub const EVENT_BUFFERS: usize = 8;
/// TMFs outstanding at once: one per LU (or target) a bus reset covers.
pub const MAX_TMFS: usize = MAX_LUS;
/// Bytes of DMA memory per request: command header + CDB, then response + sense.
const SLOT_BYTES: usize = 256;
const RESP_OFFSET: usize = 64;
/// Bytes of DMA memory per TMF: the request, then the one-byte response.
const TMF_SLOT_BYTES: usize = 64;
const TMF_RESP_OFFSET: usize = 32;
const NO_SLOT: u8 = u8::MAX;
/// Request ids of completions the HwTimer poll found that the miniport keeps.
pub const MAX_POLLED_IDS: usize = 256;
/// HwTimer polls the miniport keeps for the timeline.
pub const MAX_POLLS: usize = 512;
/// Reset spans the miniport keeps for the timeline.
pub const MAX_RESET_SPANS: usize = 16;
/// How long a device reset may take (status reading 0 again) before the adapter is
/// given up.
const DEVICE_RESET_TIMEOUT_US: u64 = 1_000_000;

/// Why bring-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioScsiError {
    OutOfDmaMemory,
    /// Status did not read 0 after the reset.
    DeviceResetTimeout,
    NoVersion1,
    /// FEATURES_OK did not stick.
    FeaturesRejected,
    /// The device has fewer than 3 queues, or a queue of size 0.
    QueueMissing(u16),
    /// cdb_size / sense_size bigger than this driver lays out, even after writing ours.
    UnsupportedConfig,
    NoMsix,
    /// The platform has no MSI-X message for this table entry.
    NoMsiMessage(u16),
    /// queue_msix_vector (or config_msix_vector for `u16::MAX`) read back NO_VECTOR.
    VectorRejected(u16),
    /// The device set DEVICE_NEEDS_RESET or FAILED.
    DeviceFailed(u8),
}

impl fmt::Display for VirtioScsiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfDmaMemory => write!(f, "out of DMA memory"),
            Self::DeviceResetTimeout => write!(f, "device status not 0 after reset"),
            Self::NoVersion1 => write!(f, "device does not offer VIRTIO_F_VERSION_1"),
            Self::FeaturesRejected => write!(f, "device refused FEATURES_OK"),
            Self::QueueMissing(q) => write!(f, "virtqueue {q} missing"),
            Self::UnsupportedConfig => write!(f, "cdb_size/sense_size not supported"),
            Self::NoMsix => write!(f, "irq=on but the function has no MSI-X"),
            Self::NoMsiMessage(e) => write!(f, "no MSI-X message for entry {e}"),
            Self::VectorRejected(q) if *q == u16::MAX => {
                write!(f, "config_msix_vector rejected")
            }
            Self::VectorRejected(q) => write!(f, "queue_msix_vector of queue {q} rejected"),
            Self::DeviceFailed(s) => write!(f, "device failed (status {s:#x})"),
        }
    }
}

/// How the device's notifications reach the miniport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptMode {
    /// One MSI-X vector per queue, and one for configuration changes.
    Msix,
    /// MSI-X off: one shared line, told apart by the ISR status bits (I1).
    Intx,
    /// No interrupts at all: HwTimer polls everything (`irq=off`).
    None,
}

/// The TMF HwResetBus sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTmf {
    /// VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET to each LU with requests outstanding.
    LogicalUnit,
    /// VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, once per target.
    ItNexus,
}

/// The miniport's settings: how it finds completions and resets the bus. The guest's
/// runner builds them from the kernel command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioScsiSettings {
    pub interrupts: InterruptMode,
    /// Whether HwTimer is armed at all. Off (with interrupts) is the negative control:
    /// a lost interrupt is never found, and a TMF that does not come back is never
    /// given up on.
    pub poll: bool,
    /// RequestTimerCall interval while requests are outstanding and there are no
    /// interrupts (rounded up to the tick, T2).
    pub poll_interval_us: u32,
    /// RequestTimerCall interval while requests are outstanding with interrupts: the
    /// watchdog that finds completions whose interrupt never came (T7). A completion
    /// counts as lost when a whole interval passed without its interrupt.
    pub watchdog_interval_us: u32,
    /// How long the TMFs of a bus reset may take before the device is reset.
    pub tmf_timeout_us: u64,
    /// The TMF a bus reset sends.
    pub reset: ResetTmf,
}

/// What the miniport counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioScsiStats {
    pub completed_by_interrupt: u64,
    pub completed_by_poll: u64,
    /// Used elements that named no outstanding request; ignored (P3).
    pub stale_completions: u64,
    pub events: u64,
    pub events_missed: u64,
    pub transport_resets: u64,
    pub param_changes: u64,
    pub config_changes: u64,
    pub notifications: u64,
    pub tmfs_sent: u64,
    /// Answered FUNCTION COMPLETE or FUNCTION SUCCEEDED.
    pub tmfs_completed: u64,
    /// Answered with anything else (REJECTED, FAILED, ...).
    pub tmfs_failed: u64,
    /// Bus resets whose TMFs were not all answered within `tmf_timeout_us`.
    pub tmf_timeouts: u64,
    pub device_resets: u64,
    /// Bus resets from HwResetBus to their end (TMFs answered, or device back).
    pub resets: u64,
    pub reset_max_us: u64,
    pub reset_total_us: u64,
    /// Guest time of the first request handed to the device.
    pub first_request_us: Option<u64>,
}

/// What the miniport keeps for the report: which requests the poll found, when HwTimer
/// polled, and the reset spans.
#[derive(Clone, Debug)]
pub struct Trail {
    polled_ids: [u64; MAX_POLLED_IDS],
    polled_len: usize,
    polls: [(u64, u16); MAX_POLLS],
    polls_len: usize,
    resets: [(u64, u64); MAX_RESET_SPANS],
    resets_len: usize,
    truncated: bool,
    /// Latency from HwStartIo to the completion found, per completion path.
    pub latency_interrupt: Histogram,
    pub latency_poll: Histogram,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            polled_ids: [0; MAX_POLLED_IDS],
            polled_len: 0,
            polls: [(0, 0); MAX_POLLS],
            polls_len: 0,
            resets: [(0, 0); MAX_RESET_SPANS],
            resets_len: 0,
            truncated: false,
            latency_interrupt: Histogram::default(),
            latency_poll: Histogram::default(),
        }
    }
}

fn push<T: Copy>(list: &mut [T], len: &mut usize, truncated: &mut bool, v: T) {
    match list.get_mut(*len) {
        Some(e) => {
            *e = v;
            *len += 1;
        }
        None => *truncated = true,
    }
}

impl Trail {
    /// Virtio request ids of the first completions the HwTimer poll found.
    pub fn polled_ids(&self) -> &[u64] {
        &self.polled_ids[..self.polled_len]
    }
    /// HwTimer calls that polled the request queue: (guest µs, completions found).
    pub fn polls(&self) -> &[(u64, u16)] {
        &self.polls[..self.polls_len]
    }
    /// Bus resets: (start µs, end µs).
    pub fn resets(&self) -> &[(u64, u64)] {
        &self.resets[..self.resets_len]
    }
    /// Some list was full and dropped entries.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

#[derive(Debug)]
struct Request {
    id: u64,
    head: u16,
    target: u8,
    lun: u8,
    started_us: u64,
    srb: SrbHandle,
}

/// Where a bus reset stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResetPhase {
    Idle,
    /// TMFs sent; waiting for every answer until `deadline_us`. `failed`: one came back
    /// with a failure, so the device is reset once all are in.
    Tmf {
        started_us: u64,
        deadline_us: u64,
        failed: bool,
        nexus: bool,
    },
    /// Status 0 written; waiting for it to read 0 before the device is set up again.
    Device {
        started_us: u64,
        deadline_us: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Interrupt,
    Poll,
}

/// The virtio-scsi miniport over transport `T`.
pub struct VirtioScsi<T: Transport> {
    transport: T,
    settings: VirtioScsiSettings,
    control: SplitQueue,
    event: SplitQueue,
    request: SplitQueue,
    /// Command/response memory, SLOT_BYTES per request slot.
    cmd_addr: u64,
    cmd_ptr: NonNull<u8>,
    event_addr: u64,
    event_ptr: NonNull<u8>,
    tmf_addr: u64,
    tmf_ptr: NonNull<u8>,
    requests: [Option<Request>; MAX_REQUESTS],
    /// Head descriptor → (request slot, request id), for chains on the request queue.
    inflight: [(u8, u64); MAX_QUEUE_SIZE],
    /// Head descriptor → event buffer index.
    event_heads: [u8; MAX_QUEUE_SIZE],
    /// Head descriptor of each TMF the device holds.
    tmfs: [Option<u16>; MAX_TMFS],
    /// What the running bus reset's TMFs were for: (target, LUN).
    reset_lus: [Option<(u8, u8)>; MAX_TMFS],
    reset: ResetPhase,
    next_id: u64,
    features: u64,
    cdb_size: usize,
    sense_size: usize,
    max_outstanding: u16,
    /// MSI-X table entry of each queue and of config changes, or NO_VECTOR.
    queue_vector: [u16; 3],
    config_vector: u16,
    config_generation: u8,
    /// The request queue's used index at the previous watchdog call: what lies before
    /// it went a whole interval without an interrupt.
    watch_mark: Option<u16>,
    /// Whether a RequestTimerCall is pending: a compare-and-exchange hand-off, so
    /// HwStartIo and HwTimer may run at the same time in multi-channel mode (T6).
    timer_arm: TimerArm,
    /// HwStartIo gave an SRB back; send NextRequest once there is room.
    refused: bool,
    /// Re-initialization after a device reset failed: the adapter is gone.
    dead: Option<VirtioScsiError>,
    stats: VirtioScsiStats,
    trail: Trail,
}

impl<T: Transport> VirtioScsi<T> {
    /// Allocates the rings and request memory from `dma`; the device is untouched until
    /// HwFindAdapter.
    pub fn new(
        transport: T,
        dma: &mut dyn Dma,
        settings: VirtioScsiSettings,
    ) -> Result<Self, VirtioScsiError> {
        let q = MAX_QUEUE_SIZE as u16;
        let control = SplitQueue::new(dma, CONTROLQ, q).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let event = SplitQueue::new(dma, EVENTQ, q).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let request = SplitQueue::new(dma, REQUESTQ, q).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let (cmd_addr, cmd_ptr) = dma
            .alloc_pages((MAX_REQUESTS * SLOT_BYTES).div_ceil(4096))
            .ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let (event_addr, event_ptr) = dma.alloc_pages(1).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let (tmf_addr, tmf_ptr) = dma.alloc_pages(1).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        const NONE: Option<Request> = None;
        Ok(VirtioScsi {
            transport,
            settings,
            control,
            event,
            request,
            cmd_addr,
            cmd_ptr,
            event_addr,
            event_ptr,
            tmf_addr,
            tmf_ptr,
            requests: [NONE; MAX_REQUESTS],
            inflight: [(NO_SLOT, 0); MAX_QUEUE_SIZE],
            event_heads: [NO_SLOT; MAX_QUEUE_SIZE],
            tmfs: [None; MAX_TMFS],
            reset_lus: [None; MAX_TMFS],
            reset: ResetPhase::Idle,
            next_id: 1,
            features: 0,
            cdb_size: VIRTIO_SCSI_CDB_SIZE as usize,
            sense_size: VIRTIO_SCSI_SENSE_SIZE as usize,
            max_outstanding: 0,
            queue_vector: [VIRTIO_MSI_NO_VECTOR; 3],
            config_vector: VIRTIO_MSI_NO_VECTOR,
            config_generation: 0,
            watch_mark: None,
            timer_arm: TimerArm::default(),
            refused: false,
            dead: None,
            stats: VirtioScsiStats::default(),
            trail: Trail::default(),
        })
    }

    pub fn stats(&self) -> VirtioScsiStats {
        self.stats
    }
    pub fn trail(&self) -> &Trail {
        &self.trail
    }
    pub fn features(&self) -> u64 {
        self.features
    }
    pub fn transport(&self) -> &T {
        &self.transport
    }
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
    /// Requests the device holds.
    pub fn outstanding(&self) -> usize {
        self.requests.iter().filter(|r| r.is_some()).count()
    }
    /// Why the adapter is gone, if re-initialization after a device reset failed.
    pub fn dead(&self) -> Option<VirtioScsiError> {
        self.dead
    }

    /// Resets the device at initialization: writes 0 and waits for status to read 0
    /// (virtio 1.2 §4.1.4.3.2). S1 allows the wait only here; a bus reset never waits.
    fn reset_device(&mut self, ctx: &mut PortContext<'_>) -> Result<(), VirtioScsiError> {
        self.transport.set_status(0);
        // S1: short stalls only; a device that takes more than ~100 ms is broken.
        for _ in 0..10_000 {
            if self.transport.status() == 0 {
                return Ok(());
            }
            ctx.stall_execution(10);
        }
        Err(VirtioScsiError::DeviceResetTimeout)
    }

    /// ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK check, device config, on a
    /// device whose status reads 0.
    fn negotiate(&mut self) -> Result<(), VirtioScsiError> {
        let t = &mut self.transport;
        t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        let offered = t.device_features64();
        if offered & VIRTIO_F_VERSION_1 == 0 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::NoVersion1);
        }
        // Never INDIRECT_DESC or RING_PACKED: not implemented. EVENT_IDX is.
        let wanted = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_SCSI_F_HOTPLUG
            | VIRTIO_SCSI_F_CHANGE;
        self.features = offered & wanted;
        t.set_driver_features64(self.features);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        t.set_status(s);
        if t.status() & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::FeaturesRejected);
        }

        let mut cdb = t.read_config_u32(CFG_CDB_SIZE);
        let mut sense = t.read_config_u32(CFG_SENSE_SIZE);
        if cdb > VIRTIO_SCSI_CDB_SIZE || sense > VIRTIO_SCSI_SENSE_SIZE {
            // Both are driver-writable; ask for the sizes we lay out.
            t.write_device_config(CFG_CDB_SIZE, &VIRTIO_SCSI_CDB_SIZE.to_le_bytes());
            t.write_device_config(CFG_SENSE_SIZE, &VIRTIO_SCSI_SENSE_SIZE.to_le_bytes());
            cdb = t.read_config_u32(CFG_CDB_SIZE);
            sense = t.read_config_u32(CFG_SENSE_SIZE);
        }
        if cdb > VIRTIO_SCSI_CDB_SIZE || sense > VIRTIO_SCSI_SENSE_SIZE || cdb == 0 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::UnsupportedConfig);
        }
        self.cdb_size = cdb as usize;
        self.sense_size = sense as usize;
        self.config_generation = t.config_generation();
        if t.num_queues() < 3 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::QueueMissing(t.num_queues()));
        }
        Ok(())
    }

    /// Largest power of two that the device (`max`) and this driver both take.
    fn usable_queue_size(max: u16) -> u16 {
        match max.min(MAX_QUEUE_SIZE as u16) {
            0 => 0,
            m => 1 << (15 - m.leading_zeros()),
        }
    }

    /// MSI-X entry for queue `q`: entry 0 is config, queues take 1.. while the table
    /// lasts and share the last entry beyond it.
    fn vector_for_queue(table_size: u16, q: u16) -> u16 {
        (1 + q).min(table_size.saturating_sub(1))
    }

    /// MSI-X (or none), the three queues, DRIVER_OK, event buffers.
    fn bring_up(&mut self, ctx: &mut PortContext<'_>) -> Result<(), VirtioScsiError> {
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        if self.settings.interrupts == InterruptMode::Msix {
            let table = self.transport.msix_table_size();
            if table == 0 {
                return Err(VirtioScsiError::NoMsix);
            }
            self.config_vector = 0;
            for q in 0..3 {
                self.queue_vector[usize::from(q)] = Self::vector_for_queue(table, q);
            }
            let last = self.queue_vector[2];
            for entry in 0..=last {
                let (addr, data) = ctx
                    .msi_message(entry)
                    .ok_or(VirtioScsiError::NoMsiMessage(entry))?;
                self.transport.set_msix_entry(entry, addr, data);
            }
            self.transport.set_msix_enabled(true);
        } else {
            self.transport.set_msix_enabled(false);
            self.config_vector = VIRTIO_MSI_NO_VECTOR;
            self.queue_vector = [VIRTIO_MSI_NO_VECTOR; 3];
            if self.settings.interrupts == InterruptMode::Intx {
                ctx.connect_line_interrupt(0);
            }
        }
        self.transport.set_config_msix_vector(self.config_vector);
        if self.transport.config_msix_vector() != self.config_vector {
            return Err(VirtioScsiError::VectorRejected(u16::MAX));
        }

        for q in [CONTROLQ, EVENTQ, REQUESTQ] {
            let t = &mut self.transport;
            t.queue_select(q);
            let max = t.queue_size();
            if max == 0 {
                return Err(VirtioScsiError::QueueMissing(q));
            }
            let size = Self::usable_queue_size(max);
            let queue = match q {
                CONTROLQ => &mut self.control,
                EVENTQ => &mut self.event,
                _ => &mut self.request,
            };
            queue.shrink(size);
            queue.set_event_idx(event_idx);
            t.set_queue_size(queue.size());
            let vector = self.queue_vector[usize::from(q)];
            t.set_queue_msix_vector(vector);
            // The spec: read back; NO_VECTOR means the device could not allocate it.
            if t.queue_msix_vector() != vector {
                return Err(VirtioScsiError::VectorRejected(q));
            }
            let (desc, driver, device) = queue.addresses();
            t.set_queue_addresses(desc, driver, device);
            t.set_queue_enable();
        }
        self.transport.set_status(
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        let s = self.transport.status();
        if s & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) != 0 {
            return Err(VirtioScsiError::DeviceFailed(s));
        }
        self.max_outstanding = (self.request.size() / 3).clamp(1, MAX_REQUESTS as u16);
        self.event_heads = [NO_SLOT; MAX_QUEUE_SIZE];
        let n = EVENT_BUFFERS.min(usize::from(self.event.size()));
        for i in 0..n {
            self.post_event_buffer(i as u8);
        }
        self.kick(EVENTQ);
        Ok(())
    }

    fn post_event_buffer(&mut self, i: u8) {
        let buf = Buffer {
            addr: self.event_addr + (usize::from(i) * EVENT_SIZE) as u64,
            len: EVENT_SIZE as u32,
        };
        if let Ok(head) = self.event.add(&[], &[buf]) {
            self.event_heads[usize::from(head)] = i;
        }
    }

    fn kick(&mut self, q: u16) {
        let queue = match q {
            CONTROLQ => &mut self.control,
            EVENTQ => &mut self.event,
            _ => &mut self.request,
        };
        if queue.needs_notify() {
            self.stats.notifications += 1;
            self.transport.notify(q);
        }
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < MAX_REQUESTS, so the offset is inside the command pages.
        unsafe { self.cmd_ptr.as_ptr().add(slot * SLOT_BYTES) }
    }

    fn tmf_slot_ptr(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < MAX_TMFS, and MAX_TMFS * TMF_SLOT_BYTES fits in the TMF page.
        unsafe { self.tmf_ptr.as_ptr().add(slot * TMF_SLOT_BYTES) }
    }

    /// Completes up to `max` requests the used ring returned. Returns how many it
    /// completed.
    fn drain_requests(&mut self, ctx: &mut PortContext<'_>, source: Source, max: u16) -> u16 {
        let mut done = 0;
        let mut popped = 0;
        while popped < max {
            let Some(used) = self.request.pop_used() else {
                break;
            };
            popped += 1;
            let head = match used {
                Ok((head, _len)) => head,
                Err(QueueError::UnknownHead(_) | QueueError::Full | QueueError::EmptyChain) => {
                    self.stats.stale_completions += 1;
                    continue;
                }
            };
            let (slot, id) =
                core::mem::replace(&mut self.inflight[usize::from(head)], (NO_SLOT, 0));
            // P3: complete only the request this chain was issued for.
            let matches = self
                .requests
                .get(usize::from(slot))
                .and_then(|r| r.as_ref())
                .is_some_and(|r| r.id == id && r.head == head);
            if !matches {
                self.stats.stale_completions += 1;
                continue;
            }
            let Some(req) = self.requests[usize::from(slot)].take() else {
                continue;
            };
            let latency = ctx.now_us().saturating_sub(req.started_us);
            match source {
                Source::Interrupt => {
                    self.stats.completed_by_interrupt += 1;
                    self.trail.latency_interrupt.record(latency);
                }
                Source::Poll => {
                    self.stats.completed_by_poll += 1;
                    self.trail.latency_poll.record(latency);
                    let t = &mut self.trail;
                    push(
                        &mut t.polled_ids,
                        &mut t.polled_len,
                        &mut t.truncated,
                        req.id,
                    );
                }
            }
            self.complete(ctx, usize::from(slot), req.srb);
            done += 1;
        }
        if done > 0 {
            self.room_again(ctx);
        }
        done
    }

    /// N2: room again for the request HwStartIo gave back.
    fn room_again(&mut self, ctx: &mut PortContext<'_>) {
        if self.refused {
            self.refused = false;
            ctx.next_request();
        }
    }

    /// Decodes the response of `slot` into the SRB and sends RequestComplete.
    fn complete(&mut self, ctx: &mut PortContext<'_>, slot: usize, srb: SrbHandle) {
        let resp = self.slot_ptr(slot).wrapping_add(RESP_OFFSET);
        let mut hdr = [0u8; CMD_RESP_HEADER];
        // SAFETY: the response area is inside the slot, which the device wrote before
        // returning the chain (pop_used's Acquire orders our reads after it).
        unsafe { ptr::copy_nonoverlapping(resp, hdr.as_mut_ptr(), CMD_RESP_HEADER) };
        let sense_len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let resid = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let status = hdr[10];
        let response = hdr[11];
        let sense_size = self.sense_size;
        let s = ctx.srb_mut(&srb);
        s.scsi_status = status;
        s.data_transfer_length = s.data.len.saturating_sub(resid);
        let n = sense_len.min(sense_size).min(SENSE_BUFFER_LEN);
        // SAFETY: `n` is at most sense_size bytes after the header: inside the slot.
        unsafe { ptr::copy_nonoverlapping(resp.add(CMD_RESP_HEADER), s.sense.as_mut_ptr(), n) };
        s.sense_len = n as u8;
        s.srb_status = match response {
            VIRTIO_SCSI_S_OK if status == crate::port::scsi_status::GOOD => SrbStatus::Success,
            VIRTIO_SCSI_S_OK => SrbStatus::Error,
            VIRTIO_SCSI_S_OVERRUN => SrbStatus::DataOverrun,
            VIRTIO_SCSI_S_ABORTED => SrbStatus::Aborted,
            VIRTIO_SCSI_S_BAD_TARGET => SrbStatus::SelectionTimeout,
            VIRTIO_SCSI_S_RESET => SrbStatus::BusReset,
            VIRTIO_SCSI_S_BUSY => SrbStatus::Busy,
            // TRANSPORT_FAILURE, TARGET_FAILURE, NEXUS_FAILURE, FAILURE, and any code
            // the spec does not define.
            _ => SrbStatus::HbaError,
        };
        ctx.request_complete(srb);
    }

    fn drain_events(&mut self, ctx: &mut PortContext<'_>) -> bool {
        let mut any = false;
        while let Some(used) = self.event.pop_used() {
            any = true;
            let Ok((head, _)) = used else {
                self.stats.stale_completions += 1;
                continue;
            };
            let i = core::mem::replace(&mut self.event_heads[usize::from(head)], NO_SLOT);
            if usize::from(i) >= EVENT_BUFFERS {
                self.stats.stale_completions += 1;
                continue;
            }
            let at = usize::from(i) * EVENT_SIZE;
            let mut raw = [0u8; EVENT_SIZE];
            // SAFETY: event buffer `i` is inside the event page; the device wrote it
            // before returning it. Cleared before the buffer goes back to the device.
            unsafe {
                let p = self.event_ptr.as_ptr().add(at);
                ptr::copy_nonoverlapping(p, raw.as_mut_ptr(), EVENT_SIZE);
                ptr::write_bytes(p, 0, EVENT_SIZE);
            }
            self.post_event_buffer(i);
            let event = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if event & VIRTIO_SCSI_T_EVENTS_MISSED != 0 {
                // Something happened that we were not told: look at the bus again.
                self.stats.events_missed += 1;
                ctx.bus_change_detected();
            }
            if event == VIRTIO_SCSI_T_NO_EVENT {
                continue;
            }
            self.stats.events += 1;
            match event & !VIRTIO_SCSI_T_EVENTS_MISSED {
                VIRTIO_SCSI_T_TRANSPORT_RESET => {
                    // The target was reset, added or removed (rescan, hard, removed):
                    // N5 holds new requests while the active ones still complete, and
                    // the port's owner rescans the bus.
                    self.stats.transport_resets += 1;
                    ctx.reset_detected();
                    ctx.bus_change_detected();
                }
                VIRTIO_SCSI_T_PARAM_CHANGE => {
                    self.stats.param_changes += 1;
                    ctx.bus_change_detected();
                }
                _ => {}
            }
        }
        if any {
            self.kick(EVENTQ);
        }
        any
    }

    /// The lost-interrupt watchdog: completes what the device had returned by the
    /// previous call and still raised no interrupt for, then marks the ring again.
    /// Completions that came since are left for their interrupt (or the next call).
    fn watchdog(&mut self, ctx: &mut PortContext<'_>) -> u16 {
        let lost = self
            .watch_mark
            .map_or(0, |mark| self.request.unpopped_at(mark));
        let found = self.drain_requests(ctx, Source::Poll, lost);
        self.watch_mark = Some(self.request.used_mark());
        found
    }

    /// Arms HwTimer while there is something to poll for and it is not armed yet (T1:
    /// a new request would replace, and so postpone, the pending one).
    fn arm_timer(&mut self, ctx: &mut PortContext<'_>) {
        if !self.settings.poll {
            return;
        }
        let busy = self.outstanding() > 0 || self.reset != ResetPhase::Idle;
        if busy && self.timer_arm.try_arm() {
            let interval = if self.reset != ResetPhase::Idle
                || self.settings.interrupts == InterruptMode::None
            {
                // TMF answers (and everything without interrupts) are polled each tick.
                self.settings.poll_interval_us
            } else {
                self.settings.watchdog_interval_us
            };
            ctx.request_timer_call(interval);
        }
    }

    /// Completes every outstanding request with `status` and forgets its chain. A chain
    /// the device returns later is stale and ignored (P3).
    fn abandon(
        &mut self,
        ctx: &mut PortContext<'_>,
        status: SrbStatus,
        which: impl Fn(u8, u8) -> bool,
    ) {
        for slot in 0..MAX_REQUESTS {
            if !self.requests[slot]
                .as_ref()
                .is_some_and(|r| which(r.target, r.lun))
            {
                continue;
            }
            if let Some(req) = self.requests[slot].take() {
                self.inflight[usize::from(req.head)] = (NO_SLOT, 0);
                ctx.srb_mut(&req.srb).srb_status = status;
                ctx.request_complete(req.srb);
            }
        }
        self.room_again(ctx);
    }

    /// Sends one TMF on the control queue. False when the queue or the TMF slots are
    /// full.
    fn send_tmf(&mut self, subtype: u32, target: u8, lun: u8) -> bool {
        let Some(slot) = self.tmfs.iter().position(Option::is_none) else {
            return false;
        };
        let mut req = [0u8; TMF_REQ_SIZE];
        req[0..4].copy_from_slice(&VIRTIO_SCSI_T_TMF.to_le_bytes());
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8] = 1;
        req[9] = target;
        req[10] = 0x40; // flat addressing, as for commands
        req[11] = lun;
        let base = self.tmf_slot_ptr(slot);
        // SAFETY: the slot is inside the TMF page and free (no chain references it).
        // The response byte starts as a value no device sends, to tell it was written.
        unsafe {
            ptr::copy_nonoverlapping(req.as_ptr(), base, TMF_REQ_SIZE);
            base.add(TMF_RESP_OFFSET).write_volatile(u8::MAX);
        }
        let addr = self.tmf_addr + (slot * TMF_SLOT_BYTES) as u64;
        let out = Buffer {
            addr,
            len: TMF_REQ_SIZE as u32,
        };
        let resp = Buffer {
            addr: addr + TMF_RESP_OFFSET as u64,
            len: 1,
        };
        let Ok(head) = self.control.add(&[out], &[resp]) else {
            return false;
        };
        self.tmfs[slot] = Some(head);
        self.stats.tmfs_sent += 1;
        true
    }

    /// Takes the TMF answers off the control queue; when the last one is in, finishes
    /// the bus reset.
    fn drain_control(&mut self, ctx: &mut PortContext<'_>, source: Source) -> bool {
        let mut any = false;
        while let Some(used) = self.control.pop_used() {
            any = true;
            let Ok((head, _)) = used else {
                self.stats.stale_completions += 1;
                continue;
            };
            let Some(slot) = self.tmfs.iter().position(|&t| t == Some(head)) else {
                self.stats.stale_completions += 1;
                continue;
            };
            self.tmfs[slot] = None;
            // SAFETY: the response byte is inside the TMF page; the device wrote it
            // before returning the chain.
            let response = unsafe { self.tmf_slot_ptr(slot).add(TMF_RESP_OFFSET).read_volatile() };
            if matches!(
                response,
                VIRTIO_SCSI_S_FUNCTION_COMPLETE | VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
            ) {
                self.stats.tmfs_completed += 1;
            } else {
                self.stats.tmfs_failed += 1;
                if let ResetPhase::Tmf { failed, .. } = &mut self.reset {
                    *failed = true;
                }
            }
        }
        if let ResetPhase::Tmf {
            started_us,
            failed,
            nexus,
            ..
        } = self.reset
        {
            if self.tmfs.iter().all(Option::is_none) {
                self.finish_tmf_reset(ctx, source, started_us, failed, nexus);
            }
        }
        any
    }

    /// Every TMF is answered. The device put what they aborted on the used ring before
    /// answering; take it, then complete as reset whatever the device kept (N5).
    fn finish_tmf_reset(
        &mut self,
        ctx: &mut PortContext<'_>,
        source: Source,
        started_us: u64,
        failed: bool,
        nexus: bool,
    ) {
        self.drain_requests(ctx, source, u16::MAX);
        if failed {
            self.device_reset(ctx, started_us);
            return;
        }
        let reset = self.reset_lus;
        self.abandon(ctx, SrbStatus::BusReset, |t, l| {
            reset
                .iter()
                .flatten()
                .any(|&(rt, rl)| rt == t && (nexus || rl == l))
        });
        self.end_reset(ctx, started_us);
    }

    fn end_reset(&mut self, ctx: &mut PortContext<'_>, started_us: u64) {
        let now = ctx.now_us();
        let took = now.saturating_sub(started_us);
        self.stats.resets += 1;
        self.stats.reset_max_us = self.stats.reset_max_us.max(took);
        self.stats.reset_total_us += took;
        let t = &mut self.trail;
        push(
            &mut t.resets,
            &mut t.resets_len,
            &mut t.truncated,
            (started_us, now),
        );
        self.reset = ResetPhase::Idle;
    }

    /// Escalation: a virtio device reset drops everything the device held, so every
    /// outstanding request is completed as reset; the device is set up again as soon as
    /// its status reads 0 (now, or at a later HwTimer: never a stall).
    fn device_reset(&mut self, ctx: &mut PortContext<'_>, started_us: u64) {
        self.stats.device_resets += 1;
        self.transport.set_status(0);
        self.tmfs = [None; MAX_TMFS];
        self.reset_lus = [None; MAX_TMFS];
        self.abandon(ctx, SrbStatus::BusReset, |_, _| true);
        self.inflight = [(NO_SLOT, 0); MAX_QUEUE_SIZE];
        self.watch_mark = None;
        let now = ctx.now_us();
        self.reset = ResetPhase::Device {
            started_us,
            deadline_us: now + DEVICE_RESET_TIMEOUT_US,
        };
        // The HBA saw a bus reset: N5's hold, if HwResetBus's is over.
        ctx.reset_detected();
        self.continue_device_reset(ctx);
    }

    fn continue_device_reset(&mut self, ctx: &mut PortContext<'_>) {
        let ResetPhase::Device {
            started_us,
            deadline_us,
        } = self.reset
        else {
            return;
        };
        if self.transport.status() != 0 {
            if ctx.now_us() >= deadline_us {
                self.give_up(ctx, VirtioScsiError::DeviceResetTimeout);
            }
            return;
        }
        self.control.reset();
        self.event.reset();
        self.request.reset();
        match self.negotiate().and_then(|_| self.bring_up(ctx)) {
            Ok(()) => {
                self.end_reset(ctx, started_us);
                self.room_again(ctx);
            }
            Err(e) => self.give_up(ctx, e),
        }
    }

    fn give_up(&mut self, ctx: &mut PortContext<'_>, e: VirtioScsiError) {
        log::error!("virtio-scsi: adapter lost after a device reset: {e}");
        self.dead = Some(e);
        self.reset = ResetPhase::Idle;
        self.room_again(ctx);
    }

    /// The bus reset's TMFs did not all come back in time.
    fn check_tmf_deadline(&mut self, ctx: &mut PortContext<'_>) {
        if let ResetPhase::Tmf {
            started_us,
            deadline_us,
            ..
        } = self.reset
        {
            if ctx.now_us() >= deadline_us {
                self.stats.tmf_timeouts += 1;
                self.device_reset(ctx, started_us);
            }
        }
    }
}

impl<T: Transport> Miniport for VirtioScsi<T> {
    type Error = VirtioScsiError;

    fn find_adapter(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, VirtioScsiError> {
        self.reset_device(ctx)?;
        self.negotiate()?;
        let per_lun = self.transport.read_config_u32(CFG_CMD_PER_LUN);
        self.transport.queue_select(REQUESTQ);
        let size = Self::usable_queue_size(self.transport.queue_size());
        if size == 0 {
            return Err(VirtioScsiError::QueueMissing(REQUESTQ));
        }
        // Each request takes at most 3 descriptors: command, data, response.
        let max = (size / 3).clamp(1, MAX_REQUESTS as u16);
        Ok(AdapterCapabilities {
            max_outstanding: max,
            tagged_queuing: true,
            queue_depth: if per_lun == 0 {
                max
            } else {
                (per_lun.min(u32::from(max))) as u16
            },
            interrupts: self.settings.interrupts != InterruptMode::None,
        })
    }

    fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), VirtioScsiError> {
        self.bring_up(ctx)
    }

    fn resetting(&self) -> bool {
        self.reset != ResetPhase::Idle
    }

    fn completions_waiting(&self) -> u32 {
        u32::from(self.request.used_pending())
    }

    fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
        if self.dead.is_some() {
            ctx.srb_mut(&srb).srb_status = SrbStatus::HbaError;
            ctx.request_complete(srb);
            ctx.next_request();
            return StartIo::Accepted;
        }
        // The device is being set up again after a reset: nothing can go to it yet.
        if matches!(self.reset, ResetPhase::Device { .. }) {
            self.refused = true;
            return StartIo::Busy(srb);
        }
        let Some(slot) = self.requests.iter().position(|r| r.is_none()) else {
            self.refused = true;
            return StartIo::Busy(srb);
        };
        if self.outstanding() >= usize::from(self.max_outstanding) {
            self.refused = true;
            return StartIo::Busy(srb);
        }
        let s = *ctx.srb(&srb);
        if usize::from(s.cdb_len) > self.cdb_size || s.data.len > 0 && s.data.ptr.is_null() {
            ctx.srb_mut(&srb).srb_status = SrbStatus::InvalidRequest;
            ctx.request_complete(srb);
            ctx.next_request();
            return StartIo::Accepted;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);

        // struct virtio_scsi_cmd_req, LUN in the single-level format of §5.6.6.1.
        let mut req = [0u8; CMD_REQ_HEADER + VIRTIO_SCSI_CDB_SIZE as usize];
        req[0] = 1;
        req[1] = s.target;
        req[2] = 0x40; // flat addressing; LUN < 256, so the high bits are 0
        req[3] = s.lun;
        req[8..16].copy_from_slice(&id.to_le_bytes());
        req[16] = VIRTIO_SCSI_S_SIMPLE;
        req[CMD_REQ_HEADER..CMD_REQ_HEADER + usize::from(s.cdb_len)].copy_from_slice(s.cdb());
        let base = self.slot_ptr(slot);
        // SAFETY: the command and response areas are inside this slot, which no chain
        // on the device references (the slot is free).
        unsafe {
            ptr::copy_nonoverlapping(req.as_ptr(), base, CMD_REQ_HEADER + self.cdb_size);
            ptr::write_bytes(base.add(RESP_OFFSET), 0, CMD_RESP_HEADER + self.sense_size);
        }
        let slot_addr = self.cmd_addr + (slot * SLOT_BYTES) as u64;
        let cmd = Buffer {
            addr: slot_addr,
            len: (CMD_REQ_HEADER + self.cdb_size) as u32,
        };
        let resp = Buffer {
            addr: slot_addr + RESP_OFFSET as u64,
            len: (CMD_RESP_HEADER + self.sense_size) as u32,
        };
        let data = Buffer {
            addr: s.data.device_address,
            len: s.data.len,
        };
        let has_data = s.data.len > 0;
        let added = match s.data.direction {
            DataDirection::Out if has_data => self.request.add(&[cmd, data], &[resp]),
            DataDirection::In if has_data => self.request.add(&[cmd], &[resp, data]),
            _ => self.request.add(&[cmd], &[resp]),
        };
        let head = match added {
            Ok(head) => head,
            Err(_) => {
                self.refused = true;
                return StartIo::Busy(srb);
            }
        };
        let now = ctx.now_us();
        self.stats.first_request_us.get_or_insert(now);
        self.inflight[usize::from(head)] = (slot as u8, id);
        self.requests[slot] = Some(Request {
            id,
            head,
            target: s.target,
            lun: s.lun,
            started_us: now,
            srb,
        });
        self.kick(REQUESTQ);
        // N3/N4: tagged queuing, so ask for more to this LU at once.
        ctx.next_lu_request(s.path, s.target, s.lun);
        self.arm_timer(ctx);
        StartIo::Accepted
    }

    fn interrupt(&mut self, ctx: &mut PortContext<'_>, vector: u16) -> bool {
        match self.settings.interrupts {
            InterruptMode::None => false,
            InterruptMode::Intx => {
                // I1: one line for everything; the ISR says whether it was us, and why
                // (reading it clears it). Each bit is looked at on its own.
                let isr = self.transport.read_isr();
                let mut mine = false;
                if isr & VIRTIO_PCI_ISR_QUEUE != 0 {
                    self.drain_control(ctx, Source::Interrupt);
                    self.drain_events(ctx);
                    self.drain_requests(ctx, Source::Interrupt, u16::MAX);
                    mine = true;
                }
                if isr & VIRTIO_PCI_ISR_CONFIG != 0 {
                    self.stats.config_changes += 1;
                    self.config_generation = self.transport.config_generation();
                    mine = true;
                }
                mine
            }
            InterruptMode::Msix => {
                // I1: ours only if a queue on this vector has new used entries, or the
                // config generation moved.
                let mut mine = false;
                if self.queue_vector[usize::from(CONTROLQ)] == vector && self.control.can_pop() {
                    mine |= self.drain_control(ctx, Source::Interrupt);
                }
                if self.queue_vector[usize::from(EVENTQ)] == vector && self.event.can_pop() {
                    mine |= self.drain_events(ctx);
                }
                if self.queue_vector[usize::from(REQUESTQ)] == vector && self.request.can_pop() {
                    self.drain_requests(ctx, Source::Interrupt, u16::MAX);
                    mine = true;
                }
                if self.config_vector == vector {
                    let generation = self.transport.config_generation();
                    if generation != self.config_generation {
                        self.config_generation = generation;
                        self.stats.config_changes += 1;
                        mine = true;
                    }
                }
                mine
            }
        }
    }

    fn timer(&mut self, ctx: &mut PortContext<'_>) {
        // T6: consumed before the poll, so work HwStartIo queues meanwhile is either
        // found by this poll or arms a new call.
        self.timer_arm.consume();
        self.drain_events(ctx);
        self.drain_control(ctx, Source::Poll);
        self.check_tmf_deadline(ctx);
        self.continue_device_reset(ctx);
        let found = match self.settings.interrupts {
            InterruptMode::None => self.drain_requests(ctx, Source::Poll, u16::MAX),
            InterruptMode::Msix | InterruptMode::Intx => self.watchdog(ctx),
        };
        let t = &mut self.trail;
        push(
            &mut t.polls,
            &mut t.polls_len,
            &mut t.truncated,
            (ctx.now_us(), found),
        );
        // T4: HwTimer re-arms itself while there is something to poll for.
        self.arm_timer(ctx);
    }

    fn reset_bus(&mut self, ctx: &mut PortContext<'_>, _path: u8) -> bool {
        if self.dead.is_some() {
            return false;
        }
        if self.reset != ResetPhase::Idle {
            // Already resetting: the running reset covers this one.
            return true;
        }
        let now = ctx.now_us();
        // The LUs (targets, for a nexus reset) with requests outstanding; LUN 0 of
        // target 0 when there are none, so a reset always reaches the device.
        let nexus = self.settings.reset == ResetTmf::ItNexus;
        let mut lus = [None::<(u8, u8)>; MAX_TMFS];
        let mut n = 0;
        for r in self.requests.iter().flatten() {
            let lu = (r.target, if nexus { 0 } else { r.lun });
            if !lus[..n].contains(&Some(lu)) && n < MAX_TMFS {
                lus[n] = Some(lu);
                n += 1;
            }
        }
        if n == 0 {
            lus[0] = Some((0, 0));
        }
        self.reset_lus = lus;
        self.reset = ResetPhase::Tmf {
            started_us: now,
            deadline_us: now + self.settings.tmf_timeout_us,
            failed: false,
            nexus,
        };
        let subtype = if nexus {
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET
        } else {
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET
        };
        for (target, lun) in lus.into_iter().flatten() {
            if !self.send_tmf(subtype, target, lun) {
                // No room on the control queue: go straight to the device reset.
                self.device_reset(ctx, now);
                return true;
            }
        }
        self.kick(CONTROLQ);
        self.arm_timer(ctx);
        true
    }
}
