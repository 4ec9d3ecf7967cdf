//! A virtio-scsi queue as a driver sees it: fixed request slots (header, response, data
//! buffer, three descriptors each), submission, kicks and completion polling.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::{Layout, SharedMemory};
use super::ring::{RingAddrs, SplitRing, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use super::{scsi, FrontendError};

/// Room for a request header (cmd 51 bytes, TMF 24) and its response (cmd 108, TMF 1).
const REQ_AREA: u64 = 128;
const RESP_AREA: u64 = 128;
const DESCS_PER_SLOT: u16 = 3;

/// Direction and length of a command's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    None,
    /// Data-out (the device reads our buffer): WRITE.
    ToDevice(u32),
    /// Data-in (the device fills our buffer): READ.
    FromDevice(u32),
}

/// One used element, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub slot: u16,
    /// Bytes the device says it wrote.
    pub written: u32,
    /// The response up to the sense data: for a command `virtio_scsi_cmd_resp` (sense_len,
    /// resid, status_qualifier, status, response); for a TMF the response byte at 0.
    pub head: [u8; scsi::RESP_SENSE],
}

impl Completion {
    /// virtio-scsi `response` of a command.
    pub fn cmd_response(&self) -> u32 {
        u32::from(self.head[scsi::RESP_RESPONSE])
    }
    /// SCSI status of a command.
    pub fn cmd_status(&self) -> u8 {
        self.head[scsi::RESP_STATUS]
    }
    pub fn cmd_resid(&self) -> u32 {
        self.le32_at(scsi::RESP_RESID)
    }
    pub fn cmd_sense_len(&self) -> u32 {
        self.le32_at(scsi::RESP_SENSE_LEN)
    }
    /// virtio-scsi `response` of a TMF.
    pub fn tmf_response(&self) -> u32 {
        u32::from(self.head[0])
    }

    fn le32_at(&self, at: usize) -> u32 {
        let bytes = self.head[at..at + 4].try_into().expect("4 bytes");
        u32::from_le_bytes(bytes)
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    req: u64,
    resp: u64,
    data: u64,
    in_flight: bool,
    resp_len: u32,
}

/// Where a queue's memory lives, fixed at layout time so a reset can rebuild the queue.
#[derive(Clone, Copy, Debug)]
pub struct QueuePlan {
    pub index: u16,
    pub size: u16,
    pub slots: u16,
    pub data_bytes: u32,
    pub ring: RingAddrs,
    pub slot_base: u64,
    pub data_base: u64,
}

impl QueuePlan {
    /// Lays out a queue with `slots` requests in flight at most, each with `data_bytes`.
    pub fn layout(layout: &mut Layout, index: u16, slots: u16, data_bytes: u32) -> QueuePlan {
        let size = (slots.max(1) * DESCS_PER_SLOT).next_power_of_two();
        let ring = SplitRing::layout(layout, size);
        let slot_base = layout.alloc((u64::from(slots) * (REQ_AREA + RESP_AREA)) as usize);
        let data_base = layout.alloc(slots as usize * data_bytes as usize);
        QueuePlan {
            index,
            size,
            slots,
            data_bytes,
            ring,
            slot_base,
            data_base,
        }
    }
}

/// One virtqueue with its kick and call eventfds.
#[derive(Debug)]
pub struct ScsiQueue {
    plan: QueuePlan,
    mem: Arc<SharedMemory>,
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Submitted and not yet seen on the used ring.
    outstanding: usize,
    /// Kicks sent (eventfd writes), for the bench's statistics.
    pub kicks: u64,
    /// Waits for a call (sleeps in poll).
    pub waits: u64,
    /// Calls (used-buffer notifications) the device sent, as counted by the eventfd.
    pub calls: u64,
}

impl ScsiQueue {
    pub fn new(
        mem: Arc<SharedMemory>,
        plan: QueuePlan,
        event_idx: bool,
    ) -> Result<ScsiQueue, FrontendError> {
        let kick = EventFd::new(EFD_NONBLOCK).map_err(FrontendError::CouldNotCreateEventFd)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(FrontendError::CouldNotCreateEventFd)?;
        let mut q = ScsiQueue {
            ring: SplitRing::new(mem.clone(), plan.size, plan.ring, event_idx),
            plan,
            mem,
            kick,
            call,
            slots: Vec::new(),
            free: Vec::new(),
            outstanding: 0,
            kicks: 0,
            waits: 0,
            calls: 0,
        };
        q.reset_slots();
        Ok(q)
    }

    fn reset_slots(&mut self) {
        let p = self.plan;
        self.slots = (0..p.slots)
            .map(|i| {
                let hdr = p.slot_base + u64::from(i) * (REQ_AREA + RESP_AREA);
                Slot {
                    req: hdr,
                    resp: hdr + REQ_AREA,
                    data: p.data_base + u64::from(i) * u64::from(p.data_bytes),
                    in_flight: false,
                    resp_len: 0,
                }
            })
            .collect();
        // Popped from the end: slot 0 first.
        self.free = (0..p.slots).rev().collect();
        self.outstanding = 0;
    }

    /// Forgets everything in flight and zeroes the ring (after a device reset or a
    /// stopped ring, when the device has dropped what it held).
    pub fn reinit(&mut self, event_idx: bool) {
        self.ring = SplitRing::new(self.mem.clone(), self.plan.size, self.plan.ring, event_idx);
        self.reset_slots();
    }

    pub fn index(&self) -> u16 {
        self.plan.index
    }
    pub fn size(&self) -> u16 {
        self.plan.size
    }
    pub fn ring_addrs(&self) -> RingAddrs {
        self.ring.addrs()
    }
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }
    pub fn slots(&self) -> u16 {
        self.plan.slots
    }
    pub fn data_bytes(&self) -> u32 {
        self.plan.data_bytes
    }
    /// Requests submitted whose completion has not been polled yet.
    pub fn in_flight(&self) -> usize {
        self.outstanding
    }
    pub fn avail_idx(&self) -> u16 {
        self.ring.avail_idx()
    }

    /// The ring as both sides left it, for a timeout's message.
    pub fn ring_state(&self) -> RingState {
        let (used_idx, avail_event) = self.ring.device_view();
        RingState {
            avail_idx: self.ring.avail_idx(),
            avail_event,
            used_idx,
            in_flight: self.outstanding,
        }
    }

    /// A free slot, if any.
    pub fn alloc_slot(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Gives back a slot: allocated and never submitted, or returned by `poll`.
    pub fn free_slot(&mut self, slot: u16) {
        let s = &self.slots[usize::from(slot)];
        assert!(!s.in_flight, "slot {slot} is in flight");
        debug_assert!(!self.free.contains(&slot));
        self.free.push(slot);
    }

    /// Copies `data` into the slot's data buffer (for a WRITE).
    pub fn write_data(&mut self, slot: u16, data: &[u8]) {
        assert!(data.len() <= self.plan.data_bytes as usize);
        self.mem.write(self.slots[usize::from(slot)].data, data);
    }

    /// Fills the slot's whole data buffer with `byte`.
    pub fn fill_data(&mut self, slot: u16, byte: u8) {
        self.mem.fill(
            self.slots[usize::from(slot)].data,
            self.plan.data_bytes as usize,
            byte,
        );
    }

    /// Copies the slot's data buffer out (after a READ completed).
    pub fn read_data(&self, slot: u16, out: &mut [u8]) {
        assert!(out.len() <= self.plan.data_bytes as usize);
        self.mem.read(self.slots[usize::from(slot)].data, out);
    }

    /// Copies the slot's whole response out (sense data included).
    pub fn read_response(&self, slot: u16, out: &mut [u8]) {
        assert!(out.len() <= RESP_AREA as usize);
        self.mem.read(self.slots[usize::from(slot)].resp, out);
    }

    /// Puts request `req` (a header: `virtio_scsi_req_cmd` or a control request) with data
    /// `dir` in slot `slot` and queues it; `publish_and_kick` sends it.
    pub fn submit(&mut self, slot: u16, req: &[u8], resp_len: u32, dir: DataDir) {
        assert!(req.len() as u64 <= REQ_AREA && u64::from(resp_len) <= RESP_AREA);
        let s = self.slots[usize::from(slot)];
        assert!(!s.in_flight, "slot {slot} already in flight");
        self.mem.write(s.req, req);
        // The device fills the response; stale bytes must not pass for an answer.
        self.mem.fill(s.resp, resp_len as usize, 0xff);
        let d0 = slot * DESCS_PER_SLOT;
        let (d1, d2) = (d0 + 1, d0 + 2);
        let req_len = req.len() as u32;
        // Device-readable parts first, then device-writable ones (virtio 2.7.4.2).
        match dir {
            DataDir::None => {
                self.ring
                    .set_desc(d0, s.req, req_len, VIRTQ_DESC_F_NEXT, d1);
                self.ring
                    .set_desc(d1, s.resp, resp_len, VIRTQ_DESC_F_WRITE, 0);
            }
            DataDir::ToDevice(len) => {
                assert!(len <= self.plan.data_bytes);
                self.ring
                    .set_desc(d0, s.req, req_len, VIRTQ_DESC_F_NEXT, d1);
                self.ring.set_desc(d1, s.data, len, VIRTQ_DESC_F_NEXT, d2);
                self.ring
                    .set_desc(d2, s.resp, resp_len, VIRTQ_DESC_F_WRITE, 0);
            }
            DataDir::FromDevice(len) => {
                assert!(len <= self.plan.data_bytes);
                self.ring
                    .set_desc(d0, s.req, req_len, VIRTQ_DESC_F_NEXT, d1);
                self.ring.set_desc(
                    d1,
                    s.resp,
                    resp_len,
                    VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
                    d2,
                );
                self.ring.set_desc(d2, s.data, len, VIRTQ_DESC_F_WRITE, 0);
            }
        }
        let slot_ref = &mut self.slots[usize::from(slot)];
        slot_ref.in_flight = true;
        slot_ref.resp_len = resp_len;
        self.outstanding += 1;
        self.ring.push_avail(d0);
    }

    /// Publishes what `submit` queued and kicks the device when it wants a kick.
    pub fn publish_and_kick(&mut self) -> Result<(), FrontendError> {
        if self.ring.publish() {
            self.kicks += 1;
            self.kick.write(1).map_err(FrontendError::CouldNotKick)?;
        }
        Ok(())
    }

    /// The next completion already on the used ring. The slot stays the caller's: read
    /// its data, then `submit` it again or `free_slot` it.
    pub fn poll(&mut self) -> Result<Option<Completion>, FrontendError> {
        let Some((id, written)) = self.ring.pop_used() else {
            return Ok(None);
        };
        // The backend is not trusted: a used id must name the head of a slot in flight.
        let slot = u16::try_from(id)
            .ok()
            .filter(|id| id % DESCS_PER_SLOT == 0 && id / DESCS_PER_SLOT < self.plan.slots)
            .map(|id| id / DESCS_PER_SLOT)
            .ok_or(FrontendError::BadUsedId {
                queue: self.plan.index,
                id,
            })?;
        let s = &mut self.slots[usize::from(slot)];
        if !s.in_flight {
            return Err(FrontendError::BadUsedId {
                queue: self.plan.index,
                id,
            });
        }
        s.in_flight = false;
        let resp = s.resp;
        let n = (s.resp_len as usize).min(12);
        self.outstanding -= 1;
        let mut head = [0u8; scsi::RESP_SENSE];
        self.mem.read(resp, &mut head[..n]);
        Ok(Some(Completion {
            slot,
            written,
            head,
        }))
    }

    /// Counts the calls that arrived without a wait (a load ends with some pending).
    pub fn drain_calls(&mut self) {
        if let Ok(n) = self.call.read() {
            self.calls += n;
        }
    }

    /// Waits until the used ring has something or `timeout` passes (then Ok(false)).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, FrontendError> {
        wait_any(&mut [self], timeout)
    }
}

/// Waits until one of `queues` has a completion or `timeout` passes (then Ok(false)):
/// several queues at once, for a single thread driving them all ([`ScsiQueue::wait`] is it
/// over one).
pub fn wait_any(queues: &mut [&mut ScsiQueue], timeout: Duration) -> Result<bool, FrontendError> {
    let mut ready = false;
    for q in queues.iter_mut() {
        // Every queue armed, even after one is found ready: each must signal next time.
        ready |= q.ring.arm_interrupt();
    }
    if ready {
        return Ok(true);
    }
    let mut pfds: Vec<libc::pollfd> = queues
        .iter_mut()
        .map(|q| {
            q.waits += 1;
            libc::pollfd {
                fd: q.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: pfds is a valid array of pfds.len() pollfds on our own eventfds.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FrontendError::CouldNotWaitForCall(e));
        }
        for (q, p) in queues.iter_mut().zip(&pfds) {
            if p.revents != 0 {
                // Clears the counter (the number of signals since the last read); EAGAIN
                // only means another read got it first.
                if let Ok(n) = q.call.read() {
                    q.calls += n;
                }
            }
        }
        return Ok(rc > 0);
    }
}

/// A queue's indexes when a wait gave up: enough to tell a request the device never took
/// (avail_event short of avail.idx) from one it took and never returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingState {
    pub avail_idx: u16,
    pub avail_event: Option<u16>,
    pub used_idx: u16,
    pub in_flight: usize,
}

impl std::fmt::Display for RingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in flight; avail.idx {}, used.idx {}",
            self.in_flight, self.avail_idx, self.used_idx
        )?;
        match self.avail_event {
            Some(e) if e != self.avail_idx => write!(
                f,
                ", avail_event {e} ({} behind avail.idx: the device last asked for a kick before taking every request)",
                self.avail_idx.wrapping_sub(e)
            ),
            Some(e) => write!(f, ", avail_event {e} (the device has taken every request)"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_state_says_whether_the_device_took_every_request() {
        let mut r = RingState {
            avail_idx: 10,
            avail_event: Some(10),
            used_idx: 9,
            in_flight: 1,
        };
        assert_eq!(
            r.to_string(),
            "1 requests in flight; avail.idx 10, used.idx 9, avail_event 10 (the device has taken every request)"
        );
        r.avail_event = Some(9);
        assert!(
            r.to_string().ends_with(
                ", avail_event 9 (1 behind avail.idx: the device last asked for a kick before taking every request)"
            ),
            "{r}"
        );
        r.avail_event = None;
        assert_eq!(
            r.to_string(),
            "1 requests in flight; avail.idx 10, used.idx 9"
        );
    }
}
