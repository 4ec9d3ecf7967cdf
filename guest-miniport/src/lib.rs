//! Port driver on the Windows ScsiPort/Storport model, and a virtio-scsi miniport
//! written against it. Unit-tested on the host against a simulated HBA; the guest image
//! (`image/`) runs it on bare metal under QEMU.
#![cfg_attr(not(test), no_std)]

pub mod contract;
pub mod latency;
pub mod pci;
pub mod platform;
pub mod port;
pub mod report;
pub mod runner;
#[cfg(test)]
mod sim;
pub mod virtio;
pub mod virtio_scsi;
pub mod wire;
