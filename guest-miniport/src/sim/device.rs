//! The simulated virtio-scsi HBA: the machine's virtual clock and pending interrupts,
//! the device's registers and queues, the faults it can inject, and how it processes
//! the request and control queues and posts events.

use core::sync::atomic::Ordering;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::wire::*;

use super::memory::{atomic_u16, gather, mem_u16, mem_write, scatter, walk_chain, Chain};
use super::target::execute;

/// MSI-X data value the simulated platform hands out for entry `e`.
pub(super) const MSI_BASE_VECTOR: u32 = 0x40;

/// How the simulated device answers a TMF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimTmf {
    /// At once, with this response, after aborting what it covers.
    Answer(u8),
    /// Aborts at once, answers FUNCTION COMPLETE after this many µs.
    Slow(u64),
    /// Does nothing and never answers (until a device reset).
    Hang,
}

impl Default for SimTmf {
    fn default() -> Self {
        SimTmf::Answer(VIRTIO_SCSI_S_FUNCTION_COMPLETE)
    }
}

/// Faults the simulated device can inject.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFaults {
    /// Complete requests but never raise their interrupt.
    pub drop_interrupts: bool,
    /// Withhold the interrupt of every n-th request completion that wanted one.
    pub drop_every: Option<u32>,
    /// After the n-th request completion (1-based), push its used element a second
    /// time: a stale completion.
    pub duplicate_completion: Option<u32>,
    /// The first command gets CHECK CONDITION, UNIT ATTENTION.
    pub unit_attention_once: bool,
    /// Leave request chains unprocessed (a hung device) until a TMF or reset ends them.
    pub hold_requests: bool,
    /// The n-th command (1-based) is never completed, until a TMF or reset ends it.
    pub lose: Option<u32>,
    /// Every command completes this many µs after it arrived.
    pub delay_us: u64,
    pub tmf: SimTmf,
    /// Every n-th command gets this SCSI status (BUSY, TASK SET FULL) instead.
    pub status_every: Option<(u32, u8)>,
    /// Reads overlapping these LBAs fail with MEDIUM ERROR.
    pub medium_error: Option<(u64, u64)>,
    /// After the n-th request completion, post a TRANSPORT_RESET event.
    pub transport_reset_after: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SimQueue {
    pub(super) size: u16,
    pub(super) vector: u16,
    pub(super) enabled: bool,
    pub(super) desc: u64,
    pub(super) driver: u64,
    pub(super) device: u64,
    last_avail: u16,
    used_idx: u16,
    /// The used index at the last notification decision (virtio-queue's
    /// `signalled_used`): EVENT_IDX compares against it.
    signalled_used: Option<u16>,
}

/// A request the device holds: completed when due, or by a TMF or reset.
struct Held {
    head: u16,
    target: u8,
    lun: u8,
    writable: Chain,
    /// Response header + sense, then data-in.
    bytes: Vec<u8>,
    due_us: Option<u64>,
}

/// A TMF the device has not answered yet.
struct HeldTmf {
    head: u16,
    resp: u64,
    due_us: Option<u64>,
}

/// The simulated machine: virtual clock, pending interrupts, and the device.
pub struct World {
    pub now_us: u64,
    pub tick_us: u32,
    pub(super) next_tick_us: u64,
    pub(super) pending_vectors: u32,
    pub stalled_us: u64,
    // device
    pub faults: SimFaults,
    pub(super) status: u8,
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub offered_features: u64,
    pub driver_features: u64,
    pub(super) queue_select: u16,
    pub(super) queues: [SimQueue; 3],
    pub(super) config_vector: u16,
    pub(super) config: [u8; 36],
    pub config_generation: u8,
    pub(super) msix: [(u64, u32, bool); 4],
    pub msix_enabled: bool,
    /// With MSI-X off, an interrupt also raises platform vector 0 (the INTx line).
    pub intx_routed: bool,
    pub isr: u8,
    pub disk: Vec<u8>,
    pub block_size: u32,
    pub completions: u32,
    pub interrupts_raised: u32,
    /// Request completions whose interrupt EVENT_IDX did not ask for / a fault withheld.
    pub suppressed_event_idx: u32,
    pub suppressed_fault: u32,
    /// Virtio request ids whose interrupt a fault withheld.
    pub suppressed_ids: Vec<u64>,
    pub notifications: u32,
    pub commands: Vec<u8>,
    pub tmfs: Vec<(u32, u8, u8)>,
    pub device_resets: u32,
    pub event_buffers_seen: u16,
    held: Vec<Held>,
    held_tmfs: Vec<HeldTmf>,
    /// Request id of each head the device holds, for `suppressed_ids`.
    ids: HashMap<u16, u64>,
}

/// A handle on the shared world.
pub type SharedWorld = Rc<RefCell<World>>;

const QUEUE: SimQueue = SimQueue {
    size: 128,
    vector: VIRTIO_MSI_NO_VECTOR,
    enabled: false,
    desc: 0,
    driver: 0,
    device: 0,
    last_avail: 0,
    used_idx: 0,
    signalled_used: None,
};

impl World {
    pub fn new(blocks: u64, tick_us: u32) -> SharedWorld {
        let mut config = [0u8; 36];
        config[CFG_NUM_QUEUES..CFG_NUM_QUEUES + 4].copy_from_slice(&1u32.to_le_bytes());
        config[CFG_CMD_PER_LUN..CFG_CMD_PER_LUN + 4].copy_from_slice(&128u32.to_le_bytes());
        config[CFG_SENSE_SIZE..CFG_SENSE_SIZE + 4].copy_from_slice(&96u32.to_le_bytes());
        config[CFG_CDB_SIZE..CFG_CDB_SIZE + 4].copy_from_slice(&32u32.to_le_bytes());
        config[CFG_MAX_TARGET..CFG_MAX_TARGET + 2].copy_from_slice(&0u16.to_le_bytes());
        config[CFG_MAX_LUN..CFG_MAX_LUN + 4].copy_from_slice(&0u32.to_le_bytes());
        Rc::new(RefCell::new(World {
            now_us: 0,
            tick_us,
            next_tick_us: u64::from(tick_us),
            pending_vectors: 0,
            stalled_us: 0,
            faults: SimFaults::default(),
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            offered_features: VIRTIO_F_VERSION_1
                | VIRTIO_RING_F_EVENT_IDX
                | VIRTIO_RING_F_INDIRECT_DESC
                | VIRTIO_SCSI_F_HOTPLUG,
            driver_features: 0,
            queue_select: 0,
            queues: [QUEUE; 3],
            config_vector: VIRTIO_MSI_NO_VECTOR,
            config,
            config_generation: 0,
            msix: [(0, 0, true); 4],
            msix_enabled: false,
            intx_routed: false,
            isr: 0,
            disk: std::vec![0; (blocks * 512) as usize],
            block_size: 512,
            completions: 0,
            interrupts_raised: 0,
            suppressed_event_idx: 0,
            suppressed_fault: 0,
            suppressed_ids: Vec::new(),
            notifications: 0,
            commands: Vec::new(),
            tmfs: Vec::new(),
            device_resets: 0,
            event_buffers_seen: 0,
            held: Vec::new(),
            held_tmfs: Vec::new(),
            ids: HashMap::new(),
        }))
    }

    /// Status 0: everything the device held is dropped unanswered.
    pub(super) fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queues = [QUEUE; 3];
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
        self.held.clear();
        self.held_tmfs.clear();
        self.ids.clear();
        self.device_resets += 1;
    }

    fn event_idx(&self) -> bool {
        self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    fn live(&self, qi: usize) -> bool {
        self.queues[qi].enabled && self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    /// Raises the interrupt of queue `q` (MSI-X entry, or the ISR bit for INTx).
    fn interrupt(&mut self, q: usize) {
        let v = self.queues[q].vector;
        if self.msix_enabled && v != VIRTIO_MSI_NO_VECTOR {
            let (addr, data, masked) = self.msix[usize::from(v)];
            if !masked && addr == 0xfee0_0000 && data >= MSI_BASE_VECTOR {
                self.pending_vectors |= 1 << (data - MSI_BASE_VECTOR);
                self.interrupts_raised += 1;
            }
        } else {
            self.isr |= VIRTIO_PCI_ISR_QUEUE;
            if self.intx_routed {
                self.pending_vectors |= 1;
                self.interrupts_raised += 1;
            }
        }
    }

    /// An interrupt on queue `q` with nothing new in it.
    pub fn spurious(&mut self, q: usize) {
        self.interrupt(q);
    }

    /// A configuration change: the generation moves and the config interrupt fires.
    pub fn config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.msix_enabled && self.config_vector != VIRTIO_MSI_NO_VECTOR {
            let (_, data, _) = self.msix[usize::from(self.config_vector)];
            self.pending_vectors |= 1 << (data - MSI_BASE_VECTOR);
        } else {
            self.isr |= VIRTIO_PCI_ISR_CONFIG;
            if self.intx_routed {
                self.pending_vectors |= 1;
            }
        }
    }

    /// Puts a used element on queue `qi` and decides about its interrupt as
    /// virtio-queue's `needs_notification` does (EVENT_IDX against the last decision).
    /// `droppable`: a drop fault may withhold it.
    fn push_used(&mut self, qi: usize, head: u16, len: u32, droppable: bool) {
        let q = &mut self.queues[qi];
        let slot = u64::from(q.used_idx % q.size);
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        mem_write(q.device + 4 + 8 * slot, &e);
        q.used_idx = q.used_idx.wrapping_add(1);
        // Release: the element and the buffers written are visible before the index.
        atomic_u16(q.device + 2).store(q.used_idx, Ordering::Release);
        let new = q.used_idx;
        let old = q.signalled_used.replace(new);
        let wanted = if self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0 {
            let used_event = mem_u16(q.driver + 4 + 2 * u64::from(q.size));
            old.is_none_or(|old| {
                new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
            })
        } else {
            mem_u16(q.driver) & 1 == 0
        };
        if !droppable {
            if wanted {
                self.interrupt(qi);
            }
            return;
        }
        self.completions += 1;
        let n = self.completions;
        let id = self.ids.remove(&head).unwrap_or(0);
        if !wanted {
            self.suppressed_event_idx += 1;
        } else if self.faults.drop_interrupts
            || self.faults.drop_every.is_some_and(|e| n.is_multiple_of(e))
        {
            self.suppressed_fault += 1;
            self.suppressed_ids.push(id);
        } else {
            self.interrupt(qi);
        }
        if self.faults.duplicate_completion == Some(n) {
            let q = &mut self.queues[qi];
            let slot = u64::from(q.used_idx % q.size);
            mem_write(q.device + 4 + 8 * slot, &e);
            q.used_idx = q.used_idx.wrapping_add(1);
            atomic_u16(q.device + 2).store(q.used_idx, Ordering::Release);
        }
        if self.faults.transport_reset_after == Some(n) {
            self.post_event(VIRTIO_SCSI_T_TRANSPORT_RESET, 0);
        }
    }

    fn finish(&mut self, h: Held) {
        let written = scatter(&h.writable, &h.bytes);
        self.push_used(usize::from(REQUESTQ), h.head, written, true);
    }

    /// Completes the held requests and TMFs that are due.
    pub(super) fn complete_due(&mut self) {
        let now = self.now_us;
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].due_us.is_some_and(|d| d <= now) {
                let h = self.held.remove(i);
                self.finish(h);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.held_tmfs.len() {
            if self.held_tmfs[i].due_us.is_some_and(|d| d <= now) {
                let t = self.held_tmfs.remove(i);
                mem_write(t.resp, &[VIRTIO_SCSI_S_FUNCTION_COMPLETE]);
                self.push_used(usize::from(CONTROLQ), t.head, 1, false);
            } else {
                i += 1;
            }
        }
    }

    /// The earliest moment something held is due.
    pub(super) fn next_due(&self) -> Option<u64> {
        let a = self.held.iter().filter_map(|h| h.due_us);
        let b = self.held_tmfs.iter().filter_map(|t| t.due_us);
        a.chain(b).min()
    }

    /// Takes the next chain the driver made available on queue `qi`: its head and buffers.
    fn next_avail(&mut self, qi: usize) -> Option<(u16, Chain)> {
        let q = self.queues[qi];
        // Acquire: the chain is visible once we see the driver's avail.idx.
        let avail_idx = atomic_u16(q.driver + 2).load(Ordering::Acquire);
        if q.last_avail == avail_idx {
            return None;
        }
        let head = mem_u16(q.driver + 4 + 2 * u64::from(q.last_avail % q.size));
        self.queues[qi].last_avail = q.last_avail.wrapping_add(1);
        Some((head, walk_chain(&q, head)))
    }

    /// Posts an event in the next buffer of the event queue (lost if there is none).
    pub fn post_event(&mut self, event: u32, reason: u32) {
        let qi = usize::from(EVENTQ);
        if !self.live(qi) {
            return;
        }
        let Some((head, chain)) = self.next_avail(qi) else {
            return;
        };
        let mut e = [0u8; EVENT_SIZE];
        e[0..4].copy_from_slice(&event.to_le_bytes());
        e[4] = 1;
        e[6] = 0x40;
        e[12..16].copy_from_slice(&reason.to_le_bytes());
        let written = scatter(&chain, &e);
        self.push_used(qi, head, written, false);
    }
}

impl World {
    /// Processes every available chain of the request queue.
    pub(super) fn process_requests(&mut self) {
        let qi = usize::from(REQUESTQ);
        if !self.live(qi) {
            return;
        }
        while let Some((head, chain)) = self.next_avail(qi) {
            let split = chain.iter().position(|c| c.2).unwrap_or(chain.len());
            let (readable, writable) = chain.split_at(split);
            let out = gather(readable);
            let hdr = CMD_REQ_HEADER + VIRTIO_SCSI_CDB_SIZE as usize;
            let mut resp = std::vec![0u8; CMD_RESP_HEADER + VIRTIO_SCSI_SENSE_SIZE as usize];
            let (target, lun) = (
                out.get(1).copied().unwrap_or(0),
                out.get(3).copied().unwrap_or(0),
            );
            if out.len() >= 16 {
                self.ids
                    .insert(head, u64::from_le_bytes(out[8..16].try_into().unwrap()));
            }
            let bytes = if out.len() < hdr {
                resp[11] = VIRTIO_SCSI_S_FAILURE;
                resp
            } else if out[0] != 1 || out[1] != 0 || out[3] != 0 {
                resp[11] = VIRTIO_SCSI_S_BAD_TARGET;
                resp
            } else {
                let cdb = out[CMD_REQ_HEADER..hdr].to_vec();
                let (status, sense, data_in) = execute(self, &cdb, &out[hdr..]);
                let want_in: u32 = writable
                    .iter()
                    .map(|c| c.1)
                    .sum::<u32>()
                    .saturating_sub(resp.len() as u32);
                let want_out = (out.len() - hdr) as u32;
                resp[0..4].copy_from_slice(&(sense.len() as u32).to_le_bytes());
                resp[10] = status;
                resp[12..12 + sense.len()].copy_from_slice(&sense);
                let moved = if data_in.is_empty() {
                    if status == 0 {
                        want_out
                    } else {
                        0
                    }
                } else {
                    data_in.len() as u32
                };
                let expected = if data_in.is_empty() {
                    want_out
                } else {
                    want_in
                };
                resp[4..8].copy_from_slice(&expected.saturating_sub(moved).to_le_bytes());
                let mut full = resp;
                full.extend_from_slice(&data_in);
                full
            };
            let n = self.commands.len() as u32;
            let held = Held {
                head,
                target,
                lun,
                writable: writable.to_vec(),
                bytes,
                due_us: None,
            };
            if self.faults.hold_requests || self.faults.lose == Some(n) {
                self.held.push(held);
            } else if self.faults.delay_us > 0 {
                let due = self.now_us + self.faults.delay_us;
                self.held.push(Held {
                    due_us: Some(due),
                    ..held
                });
            } else {
                self.finish(held);
            }
        }
        if self.event_idx() {
            // Ask for a notification at every new chain.
            let q = self.queues[qi];
            let avail_event = q.device + 4 + 8 * u64::from(q.size);
            mem_write(avail_event, &q.last_avail.to_le_bytes());
        }
    }

    /// Processes the TMFs on the control queue (LU and I_T nexus resets).
    pub(super) fn process_control(&mut self) {
        let qi = usize::from(CONTROLQ);
        if !self.live(qi) {
            return;
        }
        while let Some((head, chain)) = self.next_avail(qi) {
            let split = chain.iter().position(|c| c.2).unwrap_or(chain.len());
            let (readable, writable) = chain.split_at(split);
            let req = gather(readable);
            assert_eq!(req.len(), TMF_REQ_SIZE, "TMF request size");
            assert_eq!(writable.len(), 1, "one response buffer");
            let subtype = u32::from_le_bytes(req[4..8].try_into().unwrap());
            let (target, lun) = (req[9], req[11]);
            self.tmfs.push((subtype, target, lun));
            let resp = writable[0].0;
            if self.faults.tmf == SimTmf::Hang {
                self.held_tmfs.push(HeldTmf {
                    head,
                    resp,
                    due_us: None,
                });
                continue;
            }
            if matches!(self.faults.tmf, SimTmf::Answer(r) if r != VIRTIO_SCSI_S_FUNCTION_COMPLETE)
            {
                // A failed TMF does nothing.
            } else {
                // Abort what the TMF covers first: the aborted commands are on the used
                // ring before the TMF's answer.
                let nexus = subtype == VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET;
                let mut i = 0;
                while i < self.held.len() {
                    let h = &self.held[i];
                    if h.target == target && (nexus || h.lun == lun) {
                        let mut h = self.held.remove(i);
                        h.bytes.truncate(CMD_RESP_HEADER);
                        h.bytes.fill(0);
                        h.bytes[11] = VIRTIO_SCSI_S_RESET;
                        self.finish(h);
                    } else {
                        i += 1;
                    }
                }
            }
            match self.faults.tmf {
                SimTmf::Answer(r) => {
                    mem_write(resp, &[r]);
                    self.push_used(qi, head, 1, false);
                }
                SimTmf::Slow(us) => {
                    let due = self.now_us + us;
                    self.held_tmfs.push(HeldTmf {
                        head,
                        resp,
                        due_us: Some(due),
                    });
                }
                SimTmf::Hang => {}
            }
        }
    }

    pub(super) fn count_event_buffers(&mut self) {
        let q = self.queues[usize::from(EVENTQ)];
        if q.enabled {
            self.event_buffers_seen = atomic_u16(q.driver + 2).load(Ordering::Acquire);
        }
    }
}
