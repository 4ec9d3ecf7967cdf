//! flakyhba-harness: starts the backend and QEMU with the guest image, runs scenarios,
//! judges them and reports.

pub mod accel;
pub mod bench;
pub mod expect;
pub mod frontend;
pub mod judge;
pub mod linux;
pub mod listen;
pub mod matrix;
pub mod matrix_cli;
pub mod metrics;
pub mod process;
pub mod qemu;
pub mod report;
pub mod rundir;
pub mod scenario;
pub mod serial;
pub mod signals;
pub mod smoke;
pub mod timeline;
