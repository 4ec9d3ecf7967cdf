//! One request-queue chain: its header, the command it carries (executed, or answered as a
//! fault says) and the response.

use std::mem::size_of;
use std::ops::Deref;

use log::{debug, warn};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap, Le32};

use super::corrupt::{corrupt_data_in, CorruptingDataOut};
use super::executing::ExecutingSlot;
use crate::faults::Corruption;
use crate::scsi::sense::Sense;
use crate::scsi::{CmdError, CmdOutcome, DataIn, DataOut, LunAddress, Target};
use crate::virtio::{
    cdb_len, cdb_len_for_opcode, decode_lun, ChainBuffers, ChainError, GuestDataIn, GuestDataOut,
    VirtioScsiCmdReq, VirtioScsiCmdResp, VIRTIO_SCSI_CDB_SIZE, VIRTIO_SCSI_CMD_REQ_FIXED,
    VIRTIO_SCSI_S_BAD_TARGET, VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_OK, VIRTIO_SCSI_S_OVERRUN,
};

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
                corrupt_data_in(mem, chain, resp_len, written, c);
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
            let mut corrupting = CorruptingDataOut::new(data_out, c);
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
    command_response(outcome, resid, in_len)
}

/// The response to an executed command: its SCSI status and sense, or the virtio response
/// for what kept it from the SCSI layer; `Err` for a malformed chain. `resid` is what is
/// left of the data buffer, `in_len` the data-in buffer's size.
#[inline]
fn command_response(
    outcome: Result<CmdOutcome, CmdError>,
    resid: usize,
    in_len: usize,
) -> Result<VirtioScsiCmdResp, ChainError> {
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

/// The SCSI address a virtio LUN field names, if it is in the one format 5.6.6.1 allows.
pub(super) fn lun_address(lun: &[u8; 8]) -> Option<LunAddress> {
    decode_lun(lun).map(|a| LunAddress {
        target: a.target,
        lun: a.lun,
    })
}
