//! flakyhba-harness: starts the backend and QEMU with the guest image, runs scenarios,
//! judges them and reports.

pub mod bench;
pub mod cli;
pub mod launch;
pub mod linux;
pub mod scenario;
