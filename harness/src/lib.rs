//! flakyhba-harness: starts the backend and QEMU with the guest image, runs scenarios,
//! judges them and reports.

pub mod bench;
pub mod expect;
pub mod judge;
pub mod launch;
pub mod linux;
pub mod matrix;
pub mod matrix_cli;
pub mod metrics;
pub mod report;
pub mod scenario;
pub mod smoke;
pub mod timeline;
