//! The virtio-scsi miniport: device bring-up, the request queue with many outstanding
//! requests matched by request id, response decoding, the event queue, MSI-X
//! interrupts (`irq=on`) and HwTimer polling (`irq=off`, and as a watchdog for
//! completions whose interrupt never came with `irq=on`, T7).

use core::fmt;
use core::ptr::{self, NonNull};

use crate::platform::Dma;
use crate::port::handoff::TimerArm;
use crate::port::{
    AdapterCapabilities, DataDirection, Miniport, PortContext, SrbHandle, SrbStatus, StartIo,
    MAX_SRBS, SENSE_BUFFER_LEN,
};
use crate::virtio::bits::*;
use crate::virtio::{Buffer, QueueError, SplitQueue, Transport, MAX_QUEUE_SIZE};

/// virtio-scsi constants (virtio 1.2 §5.6), under the spec's names.
pub mod bits {
    pub const VIRTIO_SCSI_F_INOUT: u64 = 1 << 0;
    pub const VIRTIO_SCSI_F_HOTPLUG: u64 = 1 << 1;
    pub const VIRTIO_SCSI_F_CHANGE: u64 = 1 << 2;

    pub const VIRTIO_SCSI_S_OK: u8 = 0;
    pub const VIRTIO_SCSI_S_OVERRUN: u8 = 1;
    pub const VIRTIO_SCSI_S_ABORTED: u8 = 2;
    pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
    pub const VIRTIO_SCSI_S_RESET: u8 = 4;
    pub const VIRTIO_SCSI_S_BUSY: u8 = 5;
    pub const VIRTIO_SCSI_S_TRANSPORT_FAILURE: u8 = 6;
    pub const VIRTIO_SCSI_S_TARGET_FAILURE: u8 = 7;
    pub const VIRTIO_SCSI_S_NEXUS_FAILURE: u8 = 8;
    pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;

    pub const VIRTIO_SCSI_T_NO_EVENT: u32 = 0;
    pub const VIRTIO_SCSI_T_EVENTS_MISSED: u32 = 0x8000_0000;

    /// Task attribute SIMPLE.
    pub const VIRTIO_SCSI_S_SIMPLE: u8 = 0;

    /// Queue numbers: control, event, then request queues.
    pub const CONTROLQ: u16 = 0;
    pub const EVENTQ: u16 = 1;
    pub const REQUESTQ: u16 = 2;

    /// Size of struct virtio_scsi_cmd_req without the CDB: `lun[8]`, id, task_attr,
    /// prio, crn.
    pub const CMD_REQ_HEADER: usize = 19;
    /// Size of struct virtio_scsi_cmd_resp without the sense: sense_len, resid,
    /// status_qualifier, status, response.
    pub const CMD_RESP_HEADER: usize = 12;
    /// struct virtio_scsi_event: event, `lun[8]`, reason.
    pub const EVENT_SIZE: usize = 16;

    /// struct virtio_scsi_config offsets.
    pub const CFG_NUM_QUEUES: usize = 0;
    pub const CFG_CMD_PER_LUN: usize = 12;
    pub const CFG_SENSE_SIZE: usize = 20;
    pub const CFG_CDB_SIZE: usize = 24;
    pub const CFG_MAX_TARGET: usize = 30;
    pub const CFG_MAX_LUN: usize = 32;

    /// The spec's defaults, and the largest sizes this driver lays out.
    pub const CDB_SIZE: u32 = 32;
    pub const SENSE_SIZE: u32 = 96;
}
use bits::*;

/// Requests the miniport keeps outstanding at most.
pub const MAX_REQUESTS: usize = MAX_SRBS;
/// Event buffers posted on the event queue.
pub const EVENT_BUFFERS: usize = 8;
/// Bytes of DMA memory per request: command header + CDB, then response + sense.
const SLOT_BYTES: usize = 256;
const RESP_OFFSET: usize = 64;
const NO_SLOT: u8 = u8::MAX;

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

/// How the miniport finds completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioScsiConfig {
    /// MSI-X interrupts; when false, only HwTimer polling.
    pub irq: bool,
    /// RequestTimerCall interval while requests are outstanding and `irq` is off.
    pub poll_interval_us: u32,
    /// RequestTimerCall interval while requests are outstanding and `irq` is on: finds
    /// completions whose interrupt never came (T7).
    pub watchdog_interval_us: u32,
}

impl VirtioScsiConfig {
    pub fn new(irq: bool) -> Self {
        VirtioScsiConfig {
            irq,
            poll_interval_us: 1,
            watchdog_interval_us: 100_000,
        }
    }
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
    pub config_changes: u64,
    pub notifications: u64,
    pub device_resets: u64,
}

#[derive(Debug)]
struct Request {
    id: u64,
    head: u16,
    srb: SrbHandle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Interrupt,
    Poll,
}

/// The virtio-scsi miniport over transport `T`.
pub struct VirtioScsi<T: Transport> {
    transport: T,
    config: VirtioScsiConfig,
    control: SplitQueue,
    event: SplitQueue,
    request: SplitQueue,
    /// Command/response memory, SLOT_BYTES per request slot.
    cmd_addr: u64,
    cmd_ptr: NonNull<u8>,
    event_addr: u64,
    event_ptr: NonNull<u8>,
    requests: [Option<Request>; MAX_REQUESTS],
    /// Head descriptor → (request slot, request id), for chains on the request queue.
    inflight: [(u8, u64); MAX_QUEUE_SIZE],
    /// Head descriptor → event buffer index.
    event_heads: [u8; MAX_QUEUE_SIZE],
    next_id: u64,
    features: u64,
    cdb_size: usize,
    sense_size: usize,
    max_outstanding: u16,
    /// MSI-X table entry of each queue and of config changes, or NO_VECTOR.
    queue_vector: [u16; 3],
    config_vector: u16,
    config_generation: u8,
    /// Whether a RequestTimerCall is pending: a compare-and-exchange hand-off, so
    /// HwStartIo and HwTimer may run at the same time in multi-channel mode (T6).
    timer_arm: TimerArm,
    /// HwStartIo gave an SRB back; send NextRequest once a request completes.
    refused: bool,
    stats: VirtioScsiStats,
}

impl<T: Transport> VirtioScsi<T> {
    /// Allocates the rings and request memory from `dma`; the device is untouched until
    /// HwFindAdapter.
    pub fn new(
        transport: T,
        dma: &mut dyn Dma,
        config: VirtioScsiConfig,
    ) -> Result<Self, VirtioScsiError> {
        let q = MAX_QUEUE_SIZE as u16;
        let control = SplitQueue::new(dma, CONTROLQ, q).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let event = SplitQueue::new(dma, EVENTQ, q).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let request = SplitQueue::new(dma, REQUESTQ, q).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let (cmd_addr, cmd_ptr) = dma
            .alloc_pages((MAX_REQUESTS * SLOT_BYTES).div_ceil(4096))
            .ok_or(VirtioScsiError::OutOfDmaMemory)?;
        let (event_addr, event_ptr) = dma.alloc_pages(1).ok_or(VirtioScsiError::OutOfDmaMemory)?;
        const NONE: Option<Request> = None;
        Ok(VirtioScsi {
            transport,
            config,
            control,
            event,
            request,
            cmd_addr,
            cmd_ptr,
            event_addr,
            event_ptr,
            requests: [NONE; MAX_REQUESTS],
            inflight: [(NO_SLOT, 0); MAX_QUEUE_SIZE],
            event_heads: [NO_SLOT; MAX_QUEUE_SIZE],
            next_id: 1,
            features: 0,
            cdb_size: CDB_SIZE as usize,
            sense_size: SENSE_SIZE as usize,
            max_outstanding: 0,
            queue_vector: [VIRTIO_MSI_NO_VECTOR; 3],
            config_vector: VIRTIO_MSI_NO_VECTOR,
            config_generation: 0,
            timer_arm: TimerArm::default(),
            refused: false,
            stats: VirtioScsiStats::default(),
        })
    }

    pub fn stats(&self) -> VirtioScsiStats {
        self.stats
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

    /// Resets the device: writes 0 and waits for status to read 0 (virtio 1.2 §4.1.4.3.2).
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

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK check, device config.
    fn negotiate(&mut self, ctx: &mut PortContext<'_>) -> Result<(), VirtioScsiError> {
        self.reset_device(ctx)?;
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
        if cdb > CDB_SIZE || sense > SENSE_SIZE {
            // Both are driver-writable; ask for the sizes we lay out.
            t.write_device_config(CFG_CDB_SIZE, &CDB_SIZE.to_le_bytes());
            t.write_device_config(CFG_SENSE_SIZE, &SENSE_SIZE.to_le_bytes());
            cdb = t.read_config_u32(CFG_CDB_SIZE);
            sense = t.read_config_u32(CFG_SENSE_SIZE);
        }
        if cdb > CDB_SIZE || sense > SENSE_SIZE || cdb == 0 {
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

    /// MSI-X (irq=on) or none at all (irq=off), the three queues, DRIVER_OK, event
    /// buffers.
    fn bring_up(&mut self, ctx: &mut PortContext<'_>) -> Result<(), VirtioScsiError> {
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        if self.config.irq {
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

    /// Completes every request the used ring returned. Returns how many it completed.
    fn drain_requests(&mut self, ctx: &mut PortContext<'_>, source: Source) -> u32 {
        let mut done = 0;
        while let Some(used) = self.request.pop_used() {
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
            self.complete(ctx, usize::from(slot), req.srb);
            match source {
                Source::Interrupt => self.stats.completed_by_interrupt += 1,
                Source::Poll => self.stats.completed_by_poll += 1,
            }
            done += 1;
        }
        if done > 0 && self.refused {
            // N2: room again for the request HwStartIo gave back.
            self.refused = false;
            ctx.next_request();
        }
        done
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

    fn drain_events(&mut self) -> bool {
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
            let mut raw = [0u8; 4];
            // SAFETY: event buffer `i` is inside the event page; the device wrote it
            // before returning it.
            unsafe {
                ptr::copy_nonoverlapping(
                    self.event_ptr.as_ptr().add(usize::from(i) * EVENT_SIZE),
                    raw.as_mut_ptr(),
                    4,
                )
            };
            let event = u32::from_le_bytes(raw);
            if event & VIRTIO_SCSI_T_EVENTS_MISSED != 0 {
                self.stats.events_missed += 1;
            }
            if event != VIRTIO_SCSI_T_NO_EVENT {
                self.stats.events += 1;
            }
            // SAFETY: as above; cleared before the buffer goes back to the device.
            unsafe {
                ptr::write_bytes(
                    self.event_ptr.as_ptr().add(usize::from(i) * EVENT_SIZE),
                    0,
                    EVENT_SIZE,
                )
            };
            self.post_event_buffer(i);
        }
        if any {
            self.kick(EVENTQ);
        }
        any
    }

    /// Arms HwTimer if requests are outstanding and it is not armed yet (T1: a new
    /// request would replace, and so postpone, the pending one).
    fn arm_timer(&mut self, ctx: &mut PortContext<'_>) {
        if self.outstanding() > 0 && self.timer_arm.try_arm() {
            let interval = if self.config.irq {
                self.config.watchdog_interval_us
            } else {
                self.config.poll_interval_us
            };
            ctx.request_timer_call(interval);
        }
    }

    /// Completes every outstanding request with `status` and forgets its chain.
    fn abandon_all(&mut self, ctx: &mut PortContext<'_>, status: SrbStatus) {
        for slot in 0..MAX_REQUESTS {
            if let Some(req) = self.requests[slot].take() {
                ctx.srb_mut(&req.srb).srb_status = status;
                ctx.request_complete(req.srb);
            }
        }
        self.inflight = [(NO_SLOT, 0); MAX_QUEUE_SIZE];
    }
}

impl<T: Transport> Miniport for VirtioScsi<T> {
    type Error = VirtioScsiError;

    fn find_adapter(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, VirtioScsiError> {
        self.negotiate(ctx)?;
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
            interrupts: self.config.irq,
        })
    }

    fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), VirtioScsiError> {
        self.bring_up(ctx)
    }

    fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
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
        let mut req = [0u8; CMD_REQ_HEADER + CDB_SIZE as usize];
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
        self.inflight[usize::from(head)] = (slot as u8, id);
        self.requests[slot] = Some(Request { id, head, srb });
        self.kick(REQUESTQ);
        // N3/N4: tagged queuing, so ask for more to this LU at once.
        ctx.next_lu_request(s.path, s.target, s.lun);
        self.arm_timer(ctx);
        StartIo::Accepted
    }

    fn interrupt(&mut self, ctx: &mut PortContext<'_>, vector: u16) -> bool {
        if !self.config.irq {
            // INTx: the ISR says whether it was us (reading clears it).
            let isr = self.transport.read_isr();
            if isr & (VIRTIO_PCI_ISR_QUEUE | VIRTIO_PCI_ISR_CONFIG) == 0 {
                return false;
            }
            self.drain_events();
            self.drain_requests(ctx, Source::Interrupt);
            return true;
        }
        // I1: ours only if a queue on this vector has new used entries, or the config
        // generation moved.
        let mut mine = false;
        if self.queue_vector[usize::from(EVENTQ)] == vector && self.event.can_pop() {
            mine |= self.drain_events();
        }
        if self.queue_vector[usize::from(REQUESTQ)] == vector && self.request.can_pop() {
            self.drain_requests(ctx, Source::Interrupt);
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

    fn timer(&mut self, ctx: &mut PortContext<'_>) {
        // T6: consumed before the poll, so work HwStartIo queues meanwhile is either
        // found by this poll or arms a new call.
        self.timer_arm.consume();
        self.drain_events();
        self.drain_requests(ctx, Source::Poll);
        // T4: HwTimer re-arms itself while requests are outstanding.
        self.arm_timer(ctx);
    }

    fn reset_bus(&mut self, ctx: &mut PortContext<'_>, _path: u8) -> bool {
        // Without TMFs (issue 5), a bus reset is a device reset: every request the
        // device held is completed as reset (N5), then the device is brought up again.
        self.stats.device_resets += 1;
        let reset = self.reset_device(ctx);
        self.abandon_all(ctx, SrbStatus::BusReset);
        ctx.reset_detected();
        if reset.is_err() {
            return false;
        }
        self.control.reset();
        self.event.reset();
        self.request.reset();
        self.timer_arm.consume();
        self.negotiate(ctx).and_then(|_| self.bring_up(ctx)).is_ok()
    }
}
