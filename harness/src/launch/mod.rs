//! A boot's processes: the programs it needs, the backend and QEMU under kill-on-drop
//! guards ([`boot::Boot`], torn down backend first, one [`boot::RunError`] and
//! [`boot::RunFailure`]), the readiness of the backend's socket, its control socket, the
//! guest's serial port, the QEMU command line and accelerator, the run directory, and the
//! signals that end a run early. Nothing here knows scenarios, benches or the Linux guest.

pub mod accel;
pub mod binaries;
pub mod boot;
pub mod control;
pub mod listen;
pub mod process;
pub mod qemu;
pub mod rundir;
pub mod serial;
pub mod signals;
