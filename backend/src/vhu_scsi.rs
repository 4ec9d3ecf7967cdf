//! The vhost-user glue: features, queues (0 control, 1 event, 2.. request), one worker per
//! request queue, and the single completion path where interrupts are decided.

use std::io;
use std::mem::size_of;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, Le32};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::scsi::{CmdError, Target};
use crate::virtio::*;

/// Queue 0 is the control queue, 1 the event queue, 2.. the request queues (5.6.2).
pub const CONTROL_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const FIRST_REQUEST_QUEUE: usize = 2;
/// queues_per_thread is a u64 mask per worker.
pub const MAX_REQUEST_QUEUES: u16 = 62;
pub const QUEUE_SIZE: usize = 1024;

type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

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
}

impl From<VhuScsiError> for io::Error {
    fn from(e: VhuScsiError) -> Self {
        io::Error::other(e)
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
}

impl VhostUserScsiBackend {
    pub fn new(target: Arc<Target>, num_request_queues: u16) -> Self {
        let num_request_queues = num_request_queues.clamp(1, MAX_REQUEST_QUEUES);
        // Worker 0 serves the control, event and first request queue; worker k the
        // request queue 2 + k.
        let first = 1 << CONTROL_QUEUE | 1 << EVENT_QUEUE | 1 << FIRST_REQUEST_QUEUE;
        let queue_masks = std::iter::once(first)
            .chain((1..usize::from(num_request_queues)).map(|k| 1u64 << (FIRST_REQUEST_QUEUE + k)))
            .collect();
        VhostUserScsiBackend {
            target,
            num_request_queues,
            queue_masks,
            event_idx: AtomicBool::new(false),
            mem: Mutex::new(None),
        }
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
            // Event buffers stay with the device until there is an event to post.
            return Ok(());
        }
        let atomic = self.memory().ok_or(VhuScsiError::NoMemory)?;
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring
                    .disable_notification()
                    .map_err(VhuScsiError::CouldNotToggleNotification)?;
            }
            loop {
                let mem = atomic.memory();
                // The queue lock is released before completing, since add_used takes it again.
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let used_len = if queue == CONTROL_QUEUE {
                    process_control_chain(&self.target, &mem, chain)
                } else {
                    process_request_chain(&self.target, &mem, chain)
                };
                complete_and_notify(vring, head, used_len)?;
            }
            // With EVENT_IDX, re-enabling reports chains that arrived meanwhile.
            if !event_idx
                || !vring
                    .enable_notification()
                    .map_err(VhuScsiError::CouldNotToggleNotification)?
            {
                break;
            }
        }
        Ok(())
    }
}

/// The one completion path of the device: add the used element, then let EVENT_IDX decide
/// whether the driver wants an interrupt, and only then signal the call eventfd
/// (`signal_used_queue` always signals). The fault engine will drop interrupts here.
pub fn complete_and_notify<V>(vring: &V, head: u16, used_len: u32) -> Result<(), VhuScsiError>
where
    V: VringT<GuestMemory>,
{
    vring
        .add_used(head, used_len)
        .map_err(VhuScsiError::CouldNotAddUsed)?;
    let needed = vring
        .needs_notification()
        .map_err(VhuScsiError::CouldNotCheckNotification)?;
    if needed {
        vring
            .signal_used_queue()
            .map_err(VhuScsiError::CouldNotSignalUsedQueue)?;
    }
    Ok(())
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
        // No CONFIG: QEMU's vhost-user-scsi keeps the config space itself.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        // Requests are served synchronously, so nothing is in flight to cancel.
        debug!("device reset");
        self.event_idx.store(false, Ordering::Relaxed);
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
    let head = chain.head_index();
    let Ok(mut writer) = chain.clone().writer(mem) else {
        warn!("request {head}: writable descriptor outside guest memory, no response possible");
        return 0;
    };
    let resp_len = size_of::<VirtioScsiCmdResp>();
    if writer.available_bytes() < resp_len {
        warn!(
            "request {head}: {} writable bytes, response needs {resp_len}",
            writer.available_bytes()
        );
        return 0;
    }
    let data_in = match writer.split_at(resp_len) {
        Ok(w) => w,
        Err(e) => {
            warn!("request {head}: cannot split response from data-in: {e}");
            return 0;
        }
    };
    let mut data_in = ChainDataIn { writer: data_in };
    let resp = match execute_request(target, mem, chain, &mut data_in) {
        Ok(resp) => resp,
        Err(reason) => {
            warn!("request {head}: {reason}");
            VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_FAILURE)
        }
    };
    if let Err(e) = writer.write_obj(resp) {
        warn!("request {head}: cannot write response: {e}");
        return 0;
    }
    (resp_len + data_in.writer.bytes_written()) as u32
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

/// Parses and executes one command. `Err` is a malformed chain, described for the log.
fn execute_request<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    data_in: &mut ChainDataIn<'_>,
) -> Result<VirtioScsiCmdResp, String>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if readable_after_writable(chain.clone()) {
        return Err("device-readable descriptor after a device-writable one".into());
    }
    let mut reader = chain
        .reader(mem)
        .map_err(|e| format!("readable descriptor outside guest memory: {e}"))?;
    let readable = reader.available_bytes();
    if readable < VIRTIO_SCSI_CMD_REQ_FIXED {
        return Err(format!("short request header: {readable} bytes"));
    }
    if readable < size_of::<VirtioScsiCmdReq>() {
        return Err(format!(
            "CDB extends beyond the readable header ({readable} of {} bytes)",
            size_of::<VirtioScsiCmdReq>()
        ));
    }
    let req: VirtioScsiCmdReq = reader
        .read_obj()
        .map_err(|e| format!("cannot read request header: {e}"))?;
    let cdb = req.cdb;
    if let Some(len) = cdb_len_for_opcode(cdb[0]) {
        if len > VIRTIO_SCSI_CDB_SIZE {
            return Err(format!("CDB of {len} bytes exceeds cdb_size"));
        }
    }
    let data_out = ChainDataOut { reader };
    // Without VIRTIO_SCSI_F_INOUT a request moves data in one direction only.
    if data_out.reader.available_bytes() > 0 && data_in.writer.available_bytes() > 0 {
        return Err("both data-out and data-in buffers without VIRTIO_SCSI_F_INOUT".into());
    }

    let lun = req.lun;
    let Some(addr) = decode_lun(&lun).filter(|a| a.target == 0 && target.lun(a.lun).is_some())
    else {
        debug!("request to absent LU {lun:02x?}");
        return Ok(VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_BAD_TARGET));
    };
    let in_len = data_in.writer.available_bytes();
    let mut data_out = data_out;
    let out_len = data_out.reader.available_bytes();
    let outcome = target.execute(addr.lun, &cdb, data_in, &mut data_out);
    // Residual: bytes of the data buffer that were not transferred (5.6.6.1). What is
    // left in the buffer is exactly that, whatever the target did.
    let resid = if out_len > 0 {
        data_out.reader.available_bytes()
    } else {
        data_in.writer.available_bytes()
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
            if let Some(sense) = outcome.sense {
                let fixed = sense.to_fixed();
                resp.sense[..fixed.len()].copy_from_slice(&fixed);
                resp.sense_len = Le32::from(fixed.len() as u32);
            }
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
        Err(CmdError::DataOutTooSmall { needed, available }) => Err(format!(
            "data-out buffer of {available} bytes for a {needed}-byte transfer"
        )),
        Err(CmdError::BufferAccess(e)) => Err(format!("guest buffer access failed: {e}")),
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
    let head = chain.head_index();
    let Ok(mut writer) = chain.clone().writer(mem) else {
        warn!("control {head}: writable descriptor outside guest memory, no response possible");
        return 0;
    };
    if writer.available_bytes() == 0 {
        warn!("control {head}: no writable response descriptor");
        return 0;
    }
    let written = match control_response(target, mem, chain) {
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

fn control_response<M>(
    target: &Target,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> Result<ControlResponse, String>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if readable_after_writable(chain.clone()) {
        return Err("device-readable descriptor after a device-writable one".into());
    }
    let reader = chain
        .reader(mem)
        .map_err(|e| format!("readable descriptor outside guest memory: {e}"))?;
    let mut peek = reader.clone();
    let type_: Le32 = peek
        .read_obj()
        .map_err(|_| format!("short control header: {} bytes", reader.available_bytes()))?;
    let mut reader = reader;
    match u32::from(type_) {
        VIRTIO_SCSI_T_TMF => {
            let req: VirtioScsiCtrlTmfReq = reader
                .read_obj()
                .map_err(|_| "short TMF request".to_string())?;
            Ok(ControlResponse::Tmf(VirtioScsiCtrlTmfResp {
                response: task_management(target, &req),
            }))
        }
        VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE => {
            let _req: VirtioScsiCtrlAnReq = reader
                .read_obj()
                .map_err(|_| "short AN request".to_string())?;
            // No asynchronous events are supported: report none.
            Ok(ControlResponse::An(VirtioScsiCtrlAnResp {
                event_actual: Le32::from(0),
                response: VIRTIO_SCSI_S_OK,
            }))
        }
        other => Err(format!("unknown control request type {other}")),
    }
}

/// Requests are served synchronously on the worker, so no task is ever in flight when a
/// TMF arrives: aborts and resets complete at once, queries find nothing.
fn task_management(target: &Target, req: &VirtioScsiCtrlTmfReq) -> u8 {
    let lun = req.lun;
    let exists = decode_lun(&lun).is_some_and(|a| a.target == 0 && target.lun(a.lun).is_some());
    if !exists {
        return VIRTIO_SCSI_S_BAD_TARGET;
    }
    match u32::from(req.subtype) {
        VIRTIO_SCSI_T_TMF_ABORT_TASK
        | VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
        | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET
        | VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET
        | VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        // No task to report: FUNCTION COMPLETE (SAM-5 7.9, 7.10).
        VIRTIO_SCSI_T_TMF_QUERY_TASK | VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => {
            VIRTIO_SCSI_S_FUNCTION_COMPLETE
        }
        // NACA is not supported, so there is never an ACA to clear.
        VIRTIO_SCSI_T_TMF_CLEAR_ACA => VIRTIO_SCSI_S_FUNCTION_REJECTED,
        other => {
            warn!("unknown TMF subtype {other}");
            VIRTIO_SCSI_S_FUNCTION_REJECTED
        }
    }
}

#[cfg(test)]
mod tests;
