//! What a request is, as the engine sees it, and which faults match it.

use crate::faults::plan::{DataDirection, Matcher, RequestClass, TmfKind};

/// What a request on a virtqueue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Command,
    Tmf(TmfKind),
    /// Asynchronous notification query or subscribe.
    An,
}

/// What the engine needs to know about a request. Plain values, so building one is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo {
    pub queue: u16,
    /// The virtio-scsi request `id` (tag).
    pub id: u64,
    pub kind: RequestKind,
    pub target: u8,
    pub lun: u16,
    pub opcode: Option<u8>,
    /// First block and number of blocks, for reads and writes.
    pub lba: Option<(u64, u64)>,
    pub direction: DataDirection,
    /// Bytes of data-in or data-out.
    pub transfer_len: u32,
}

impl RequestInfo {
    pub fn command(queue: u16, id: u64, target: u8, lun: u16, opcode: u8) -> RequestInfo {
        RequestInfo {
            queue,
            id,
            kind: RequestKind::Command,
            target,
            lun,
            opcode: Some(opcode),
            lba: None,
            direction: DataDirection::None,
            transfer_len: 0,
        }
    }

    pub fn tmf(queue: u16, id: u64, tmf: TmfKind, target: u8, lun: u16) -> RequestInfo {
        RequestInfo {
            kind: RequestKind::Tmf(tmf),
            opcode: None,
            ..RequestInfo::command(queue, id, target, lun, 0)
        }
    }

    pub fn an(queue: u16, id: u64, target: u8, lun: u16) -> RequestInfo {
        RequestInfo {
            kind: RequestKind::An,
            opcode: None,
            ..RequestInfo::command(queue, id, target, lun, 0)
        }
    }

    pub fn with_lba(self, start: u64, blocks: u64) -> RequestInfo {
        RequestInfo {
            lba: Some((start, blocks)),
            ..self
        }
    }

    pub fn with_data(self, direction: DataDirection, transfer_len: u32) -> RequestInfo {
        RequestInfo {
            direction,
            transfer_len,
            ..self
        }
    }
}

impl Matcher {
    /// A handful of comparisons; no allocation (issue item 9).
    #[inline]
    pub fn matches(&self, r: &RequestInfo) -> bool {
        if !self.queue.matches(r.queue) {
            return false;
        }
        let class_ok = match (self.class, r.kind) {
            (RequestClass::Any, _) => true,
            (RequestClass::Command, RequestKind::Command) => true,
            (RequestClass::Tmf(None), RequestKind::Tmf(_)) => true,
            (RequestClass::Tmf(Some(want)), RequestKind::Tmf(got)) => want == got,
            (RequestClass::An, RequestKind::An) => true,
            _ => false,
        };
        if !class_ok
            || self.target.is_some_and(|t| t != r.target)
            || self.lun.is_some_and(|l| l != r.lun)
            || self.opcode.is_some_and(|o| Some(o) != r.opcode)
            || self.direction.is_some_and(|d| d != r.direction)
        {
            return false;
        }
        match (self.lba, r.lba) {
            (None, _) => true,
            (Some(_), None) => false,
            // A command that transfers no block (a READ(10) of 0 blocks, which OVMF sends
            // to retry after BUSY) overlaps no range.
            (Some(_), Some((_, 0))) => false,
            (Some((lo, hi)), Some((start, blocks))) => {
                let last = start.saturating_add(blocks - 1);
                start <= hi && last >= lo
            }
        }
    }
}
