//! flakyhba's vhost-user-scsi backend: an emulated SCSI HBA that will misbehave on purpose.
//!
//! Layers, kept apart: [`args`] (CLI), [`vhu_scsi`] (vhost-user glue), [`virtio`] (wire
//! format), [`scsi`] (the target, which knows nothing about virtio).

pub mod args;
pub mod control;
pub mod faults;
pub mod scsi;
pub mod vhu_scsi;
pub mod virtio;
