//! flakyhba's vhost-user-scsi backend: an emulated SCSI HBA that will misbehave on purpose.
//!
//! Layers, each using only those below it:
//! - [`args`]: the command line, validated into a config.
//! - [`control`]: the device's control plane, a socket that changes the fault plan and
//!   adds, removes and resizes LUs while the device runs.
//! - [`vhu_scsi`]: the vhost-user glue: queues, workers, completions and interrupts; it
//!   asks the fault engine about each request.
//! - [`faults`]: the fault plan, the engine's decisions and the trace.
//! - [`virtio`]: the virtio-scsi wire format and the guest buffers of a request.
//! - [`scsi`]: the SCSI target, which knows nothing about virtio.
//! - [`listen`]: the Unix sockets the backend listens on (binding, removal, back-off).
//! - [`errors`], [`file_kind`]: printing an error with its causes and naming a refused
//!   path's kind, used by every layer.

pub mod args;
pub mod control;
pub mod errors;
pub mod faults;
pub mod file_kind;
pub mod listen;
pub mod scsi;
pub mod vhu_scsi;
pub mod virtio;
