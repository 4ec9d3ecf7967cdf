//! flakyhba-harness: starts the backend and QEMU with the guest image, runs scenarios,
//! judges them and reports.

pub mod accel;
pub mod bench;
pub mod frontend;
pub mod judge;
pub mod linux;
pub mod listen;
pub mod process;
pub mod qemu;
pub mod rundir;
pub mod serial;
pub mod signals;
pub mod smoke;
