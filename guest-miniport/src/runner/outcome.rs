//! What a workload ends with: why it failed ([`Failure`], the result line's `reason`)
//! and what it found ([`Outcome`]).

use core::fmt;

use crate::contract::ArgError;
use crate::pci::PciError;
use crate::port::checker::MAX_VIOLATIONS;
use crate::port::{PortError, RoutineTimes, SrbStatus, Violation};
use crate::virtio_scsi::VirtioScsiError;

use super::MAX_MEDIUM_ERROR_LBAS;

/// Why a workload failed; its `Display` is the result line's `reason`.
#[derive(Clone, Copy, Debug)]
pub enum Failure<'a> {
    Args(ArgError<'a>),
    Pci(PciError),
    Adapter(PortError<VirtioScsiError>),
    OutOfDmaMemory,
    Submit(&'static str, PortError<VirtioScsiError>),
    /// A command ended with an error status.
    Command {
        op: &'static str,
        lba: u64,
        status: SrbStatus,
        scsi_status: u8,
        sense_key: Option<u8>,
    },
    /// Requests still outstanding at the deadline; `waiting` of them had completed on
    /// the device without the miniport taking them (their interrupt never came, and no
    /// poll looked).
    Timeout {
        op: &'static str,
        in_flight: usize,
        waiting: u32,
    },
    Mismatch {
        lba: u64,
    },
    BlockSize(u32),
    ShortTransfer {
        op: &'static str,
        got: u32,
    },
    /// REPORT LUNS after a bus change no longer lists LUN 0.
    LunGone,
    /// The workload is done, but the bus reset it caused never ended.
    ResetNotEnded,
}

impl Failure<'_> {
    /// The result line's `failure`: the kind, one word.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Args(_) => "args",
            Failure::Pci(_) => "pci",
            Failure::Adapter(_) => "adapter",
            Failure::OutOfDmaMemory => "dma",
            Failure::Submit(..) => "submit",
            Failure::Command { .. } => "command",
            Failure::Timeout { .. } => "timeout",
            Failure::Mismatch { .. } => "mismatch",
            Failure::BlockSize(_) => "block-size",
            Failure::ShortTransfer { .. } => "short-transfer",
            Failure::LunGone => "lun-gone",
            Failure::ResetNotEnded => "reset-not-ended",
        }
    }

    /// The operation that failed, when one did.
    pub fn op(&self) -> Option<&'static str> {
        match self {
            Failure::Submit(op, _)
            | Failure::Command { op, .. }
            | Failure::Timeout { op, .. }
            | Failure::ShortTransfer { op, .. } => Some(op),
            Failure::Mismatch { .. } => Some("READ"),
            _ => None,
        }
    }
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Args(e) => write!(f, "bad command line: {e}"),
            Failure::Pci(e) => write!(f, "{e}"),
            Failure::Adapter(e) => write!(f, "{e}"),
            Failure::OutOfDmaMemory => write!(f, "out of DMA memory"),
            Failure::Submit(op, e) => write!(f, "{op}: submit failed: {e}"),
            Failure::Command {
                op,
                lba,
                status,
                scsi_status,
                sense_key,
            } => {
                write!(
                    f,
                    "{op} lba {lba}: srb status {}, scsi status {scsi_status:#04x}",
                    status.name()
                )?;
                match sense_key {
                    Some(k) => write!(f, ", sense key {k:#x}"),
                    None => Ok(()),
                }
            }
            Failure::Timeout {
                op,
                in_flight,
                waiting,
            } => {
                write!(f, "{op}: {in_flight} requests outstanding at the deadline")?;
                if *waiting > 0 {
                    write!(
                        f,
                        " ({waiting} completed in the used ring, never taken: no interrupt came)"
                    )?;
                }
                Ok(())
            }
            Failure::Mismatch { lba } => write!(f, "data read back from lba {lba} differs"),
            Failure::BlockSize(b) => write!(f, "unsupported block size {b}"),
            Failure::ShortTransfer { op, got } => write!(f, "{op}: only {got} bytes returned"),
            Failure::LunGone => write!(f, "REPORT LUNS after a bus change lacks LUN 0"),
            Failure::ResetNotEnded => write!(f, "the bus reset had not ended at the deadline"),
        }
    }
}

/// What the workload found, for the result line.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub block_size: u32,
    pub capacity: u64,
    /// All `blocks` LBAs were written and acknowledged (the `lbas` field lists them).
    pub written: bool,
    /// Requests the workload submitted, retries included.
    pub requests: u64,
    pub unit_attention_retries: u64,
    pub busy_retries: u64,
    pub queue_full_retries: u64,
    pub medium_errors: u64,
    pub medium_error_lbas: [u64; MAX_MEDIUM_ERROR_LBAS],
    pub rescans: u64,
    /// `bench`: completions per second of the read phase.
    pub iops: u64,
    /// The rule checker's report: every violation counted, the first ones kept.
    pub violations: u64,
    pub violation_list: [Option<Violation>; MAX_VIOLATIONS],
    pub times: RoutineTimes,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            block_size: 0,
            capacity: 0,
            written: false,
            requests: 0,
            unit_attention_retries: 0,
            busy_retries: 0,
            queue_full_retries: 0,
            medium_errors: 0,
            medium_error_lbas: [0; MAX_MEDIUM_ERROR_LBAS],
            rescans: 0,
            iops: 0,
            violations: 0,
            violation_list: [None; MAX_VIOLATIONS],
            times: RoutineTimes::default(),
        }
    }
}
