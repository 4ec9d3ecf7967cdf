//! One control-queue chain: a TMF (carried out when no task is held) or an asynchronous
//! notification request, and its response.

use std::mem::size_of;
use std::ops::Deref;

use log::warn;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryMmap, Le32};

use super::command::lun_address;
use super::executing::Executing;
use crate::faults::TmfKind;
use crate::scsi::Target;
use crate::virtio::*;

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
pub(super) fn serve_control<M>(
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
pub(super) fn control_response_room<M>(
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
pub(super) fn write_control<M>(
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

pub(super) enum ControlResponse {
    Tmf(VirtioScsiCtrlTmfResp),
    An(VirtioScsiCtrlAnResp),
}

/// A parsed control-queue request.
pub(super) enum ControlRequest {
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
pub(super) fn an_response() -> ControlResponse {
    ControlResponse::An(VirtioScsiCtrlAnResp {
        event_actual: Le32::from(0),
        response: VIRTIO_SCSI_S_OK,
    })
}

pub(super) fn parse_control<M>(
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

/// The answer a TMF gets without being carried out: BAD_TARGET when its LUN addresses no
/// LU, FUNCTION REJECTED for what is not supported. `None`: carry it out.
pub(super) fn tmf_refusal(target: &Target, req: &VirtioScsiCtrlTmfReq) -> Option<u8> {
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
            let name = TmfKind::from_virtio(subtype).name();
            wait_for_executing(executing, name, addr.target, lun)
        }
        _ => VIRTIO_SCSI_S_FUNCTION_COMPLETE,
    }
}

/// Waits for the commands of `target` (LUN `lun`, or all) being executed by other workers.
/// One whose LU is stuck must not stop the control queue: past the bound the TMF fails,
/// since what it was to end is still running (the driver escalates, to a device reset).
pub(super) fn wait_for_executing(
    executing: &Executing,
    tmf: &str,
    target: u8,
    lun: Option<u16>,
) -> u8 {
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
