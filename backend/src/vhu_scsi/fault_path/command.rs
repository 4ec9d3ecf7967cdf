//! A request-queue chain on the fault path: described for the engine (unless the queue's
//! screen lets it by) and served, held or dropped as the engine decides.

use std::mem::size_of;
use std::ops::Deref;
use std::time::Duration;

use vhost_user_backend::VringRwLock;
use vm_memory::{GuestMemoryMmap, Le32};

use super::FaultBatch;
use crate::faults::{
    CommandShape, Completion, DataDirection, RequestDecision, RequestInfo, StatusOverride,
    VirtioResponse,
};
use crate::scsi::sense::Sense;
use crate::scsi::DataIn;
use crate::vhu_scsi::executing::ExecutingSlot;
use crate::vhu_scsi::inflight::{InflightEntry, Work};
use crate::vhu_scsi::{
    lock, read_header, serve_scanned, Chain, Disposition, Popped, VhostUserScsiBackend,
    VhuScsiError,
};
use crate::virtio::*;

impl VhostUserScsiBackend {
    /// One request-queue chain. Returns whether it was parked in the in-flight table.
    /// Without a trace, a command completed at once joins `batch`: its interrupt is
    /// decided with the rest of the pass, and its completion counted with the batch's.
    /// With a trace (whose records name the command each completion and signal was for)
    /// and for a command whose interrupt a fault drops, the decision is taken for it
    /// alone, after the batch's. The chain is walked and its header read once, before the
    /// engine is asked: the engine's description of the command and its execution read
    /// the same buffers.
    ///
    /// A command the queue's [`CommandScreen`] passes (no rule can match it, no trace, no
    /// slow TMF) is served without the engine: only counted, with the batch.
    pub(super) fn command_with_faults(
        &self,
        queue: usize,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        chain: Chain,
        popped: Popped,
        batch: &mut FaultBatch,
    ) -> Result<bool, VhuScsiError> {
        // Dropped once the command is on its used ring or parked (see `Executing`).
        let slot = self.executing.slot(queue);
        let head = popped.head();
        let cdb_size = self.cdb_size();
        let mut buffers = ChainBuffers::scan(mem, chain.clone());
        let header = read_command_header(&mut buffers, cdb_size);
        // Served as without faults.
        let serve_plain = |buffers: &mut ChainBuffers<'_, _>,
                           header: Option<&VirtioScsiCmdReq>,
                           slot: Option<&ExecutingSlot<'_>>| {
            let how = Disposition::EXECUTE;
            serve_scanned(
                &self.target,
                mem,
                head,
                buffers,
                header,
                None,
                how,
                cdb_size,
                slot,
            )
        };
        let screen = self.screen(batch);
        // Nothing would read the command's description or the time: only count it.
        if screen.idle() {
            batch.commands += 1;
            let served = serve_plain(&mut buffers, header.as_ref(), Some(&slot));
            return self
                .complete_into_batch(vring, popped, &served, batch)
                .map(|()| false);
        }
        let Some(req) = &header else {
            let tracing = screen.tracing();
            // Malformed: served as without faults, so it fails the usual way.
            let served = serve_plain(&mut buffers, None, Some(&slot));
            if tracing {
                self.flush_batch(vring, batch)?;
                self.complete_alone(queue, vring, popped, &served, 0, false)?;
            } else {
                self.complete_into_batch(vring, popped, &served, batch)?;
            }
            return Ok(false);
        };
        let (target, lun) = address_of(&req.lun);
        // Before the engine decides (a slow TMF's BUSY) and the target looks at the LU: a
        // TMF either waits for this command or this command sees what the TMF did. An
        // address that names no LU is marked as target 0xff, which costs a TMF for that
        // address a wait at most.
        slot.begin(target, lun);
        // Looked at again after the mark: a slow TMF that began meanwhile either made the
        // screen stale (this command then goes to the engine, which answers BUSY or holds
        // it) or sees the mark and waits for the command.
        let shape = ScannedCommand {
            target,
            lun,
            req,
            buffers: &buffers,
            cdb_size,
        };
        if self.screen(batch).passes(&shape) {
            batch.commands += 1;
            let served = serve_plain(&mut buffers, header.as_ref(), None);
            return self
                .complete_into_batch(vring, popped, &served, batch)
                .map(|()| false);
        }
        let info = request_info(queue as u16, &buffers, req, cdb_size);
        let (d, now, tracing) = self.decide(&info);
        if let Some(entry) = held_entry(&info, popped, &chain, &d, now) {
            // Parked before the slot ends: a TMF waiting for the slot then finds it held.
            lock(&self.inflight[queue]).insert(entry);
            drop(slot);
            return Ok(true);
        }
        let how = disposition(d.completion);
        let kept = Some(chain);
        let served = serve_scanned(
            &self.target,
            mem,
            head,
            &mut buffers,
            header.as_ref(),
            kept,
            how,
            cdb_size,
            None,
        );
        if tracing || d.drop_interrupt {
            // The batch's completions keep their interrupt: only this one's is dropped.
            self.flush_batch(vring, batch)?;
            let drop_interrupt = d.drop_interrupt;
            self.complete_alone(queue, vring, popped, &served, info.id, drop_interrupt)?;
        } else {
            self.complete_into_batch(vring, popped, &served, batch)?;
        }
        Ok(false)
    }

    /// The engine's verdict on a command, the time it was given (zero when it needs none:
    /// a plan armed for other commands does not read the clock for this one), and whether
    /// it traces.
    fn decide(&self, info: &RequestInfo) -> (RequestDecision, Duration, bool) {
        let mut engine = self.engine();
        let now = if engine.needs_time(info) {
            self.faults.epoch.now()
        } else {
            Duration::ZERO
        };
        let d = engine.on_request(info, now);
        (d, now, engine.tracing())
    }
}

/// The in-flight entry of a command the engine's verdict `d` holds: lost (until an abort
/// or a reset ends it) or delayed (until `now` plus the delay); `None`: serve it now.
fn held_entry(
    info: &RequestInfo,
    popped: Popped,
    chain: &Chain,
    d: &RequestDecision,
    now: Duration,
) -> Option<InflightEntry<Chain>> {
    let drop_interrupt = d.drop_interrupt;
    let (due, work) = match d.completion {
        Completion::Lose => (None, Work::Lost { drop_interrupt }),
        completion if !d.delay.is_zero() => (
            Some(now.saturating_add(d.delay)),
            Work::Command {
                completion,
                drop_interrupt,
            },
        ),
        _ => return None,
    };
    Some(InflightEntry {
        popped,
        tag: info.id,
        target: info.target,
        lun: info.lun,
        due,
        work,
        chain: chain.clone(),
    })
}

/// (target, LUN) for the engine; an address that names no LU gets target 0xff.
pub(super) fn address_of(lun: &[u8; 8]) -> (u8, u16) {
    decode_lun(lun).map_or((u8::MAX, 0), |a| (a.target, a.lun))
}

/// Reads the request header, whose CDB area has `cdb_size` bytes, off the readable buffer
/// of a scanned command chain; `None` if it has no readable header or a readable
/// descriptor outside guest memory (it will then fail without the engine, its buffers
/// untouched: [`execute_request`] reads the header again and reports why). Allocates
/// nothing and walks no descriptor again.
#[inline]
fn read_command_header<M>(
    buffers: &mut ChainBuffers<'_, M>,
    cdb_size: usize,
) -> Option<VirtioScsiCmdReq>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    buffers.readable_bytes?;
    let data_out = buffers.readable.as_mut().ok()?;
    let header = VIRTIO_SCSI_CMD_REQ_FIXED + cdb_size;
    data_out
        .read_or_keep(header, |b| read_header(b, cdb_size))
        .ok()
}

/// A scanned command as the queue's [`CommandScreen`] looks at it.
struct ScannedCommand<'a, 'm, M>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    target: u8,
    lun: u16,
    req: &'a VirtioScsiCmdReq,
    buffers: &'a ChainBuffers<'m, M>,
    cdb_size: usize,
}

impl<M> CommandShape for ScannedCommand<'_, '_, M>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    fn target(&self) -> u8 {
        self.target
    }
    fn lun(&self) -> u16 {
        self.lun
    }
    fn opcode(&self) -> u8 {
        self.req.cdb[0]
    }
    fn direction(&self) -> DataDirection {
        data_direction(self.buffers, self.cdb_size).0
    }
    fn blocks(&self) -> Option<(u64, u64)> {
        cdb_blocks(&self.req.cdb)
    }
}

/// The direction of a scanned command's data and how many bytes it has (those after the
/// `cdb_size` header, or after the response). Not inlined: the screen asks for it only
/// when a fault looks at the direction, and a copy inlined in its loop would be worked out
/// ahead for every command.
#[inline(never)]
fn data_direction<M>(buffers: &ChainBuffers<'_, M>, cdb_size: usize) -> (DataDirection, usize)
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let readable = buffers.readable_bytes.unwrap_or(0);
    let header = VIRTIO_SCSI_CMD_REQ_FIXED + cdb_size;
    let writable = buffers.writable.as_ref().map_or(0, DataIn::remaining);
    let out_len = readable.saturating_sub(header);
    let in_len = writable.saturating_sub(size_of::<VirtioScsiCmdResp>());
    if out_len > 0 {
        (DataDirection::Write, out_len)
    } else if in_len > 0 {
        (DataDirection::Read, in_len)
    } else {
        (DataDirection::None, 0)
    }
}

/// What the engine needs to know about a command with request header `req` (read off
/// `buffers` by [`read_command_header`]).
fn request_info<M>(
    queue: u16,
    buffers: &ChainBuffers<'_, M>,
    req: &VirtioScsiCmdReq,
    cdb_size: usize,
) -> RequestInfo
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let (target, lun) = address_of(&req.lun);
    let (direction, len) = data_direction(buffers, cdb_size);
    let info = RequestInfo::command(queue, u64::from(req.id), target, lun, req.cdb[0])
        .with_data(direction, u32::try_from(len).unwrap_or(u32::MAX));
    match cdb_blocks(&req.cdb) {
        Some((lba, blocks)) => info.with_lba(lba, blocks),
        None => info,
    }
}

/// First block and block count of the reads and writes (SBC-3), for `lba` matching.
pub fn cdb_blocks(cdb: &[u8; VIRTIO_SCSI_CDB_SIZE]) -> Option<(u64, u64)> {
    let be = |b: &[u8]| b.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x));
    match cdb[0] {
        // READ(6), WRITE(6): 21-bit LBA; a length of 0 means 256 blocks.
        0x08 | 0x0a => {
            let blocks = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
            Some((be(&cdb[1..4]) & 0x1f_ffff, blocks))
        }
        // READ(10), WRITE(10), WRITE AND VERIFY(10), VERIFY(10), WRITE SAME(10).
        0x28 | 0x2a | 0x2e | 0x2f | 0x41 => Some((be(&cdb[2..6]), be(&cdb[7..9]))),
        // READ(12), WRITE(12), VERIFY(12).
        0xa8 | 0xaa | 0xaf => Some((be(&cdb[2..6]), be(&cdb[6..10]))),
        // READ(16), WRITE(16), WRITE AND VERIFY(16), VERIFY(16), WRITE SAME(16).
        0x88 | 0x8a | 0x8e | 0x8f | 0x93 => Some((be(&cdb[2..10]), be(&cdb[10..14]))),
        _ => None,
    }
}

/// How a command with this engine verdict is served.
pub(super) fn disposition(completion: Completion) -> Disposition {
    match completion {
        Completion::Normal => Disposition::EXECUTE,
        // Reads: the guest receives flipped bytes; writes: flipped bytes are stored.
        Completion::Corrupt(c) => Disposition::Execute {
            corrupt: Some(c),
            extra_residual: 0,
        },
        Completion::Status(StatusOverride::ShortTransfer { residual }) => Disposition::Execute {
            corrupt: None,
            extra_residual: residual,
        },
        Completion::Status(s) => Disposition::Respond(status_response(s)),
        // Lost commands are held, never served; one that gets here was cancelled.
        Completion::Lose => {
            Disposition::Respond(VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_ABORTED))
        }
    }
}

/// The response a `status` fault forces; the command is not executed.
pub fn status_response(s: StatusOverride) -> VirtioScsiCmdResp {
    match s {
        StatusOverride::Virtio(v) => VirtioScsiCmdResp::with_response(virtio_response_code(v)),
        StatusOverride::CheckCondition {
            sense_key,
            asc,
            ascq,
        } => {
            let mut resp = VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_OK);
            resp.status = s.scsi_status().unwrap_or(0x02);
            let fixed = Sense::new(sense_key, asc, ascq).to_fixed();
            resp.sense[..fixed.len()].copy_from_slice(&fixed);
            resp.sense_len = Le32::from(fixed.len() as u32);
            resp
        }
        other => {
            let mut resp = VirtioScsiCmdResp::with_response(VIRTIO_SCSI_S_OK);
            resp.status = other.scsi_status().unwrap_or(0);
            resp
        }
    }
}

fn virtio_response_code(v: VirtioResponse) -> u8 {
    match v {
        VirtioResponse::Overrun => VIRTIO_SCSI_S_OVERRUN,
        VirtioResponse::Aborted => VIRTIO_SCSI_S_ABORTED,
        VirtioResponse::BadTarget => VIRTIO_SCSI_S_BAD_TARGET,
        VirtioResponse::Reset => VIRTIO_SCSI_S_RESET,
        VirtioResponse::Busy => VIRTIO_SCSI_S_BUSY,
        VirtioResponse::TransportFailure => VIRTIO_SCSI_S_TRANSPORT_FAILURE,
        VirtioResponse::TargetFailure => VIRTIO_SCSI_S_TARGET_FAILURE,
        VirtioResponse::NexusFailure => VIRTIO_SCSI_S_NEXUS_FAILURE,
        VirtioResponse::Failure => VIRTIO_SCSI_S_FAILURE,
    }
}
