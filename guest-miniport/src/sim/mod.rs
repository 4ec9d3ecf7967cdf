//! Host-test doubles: a fake PCI config space with BAR sizing semantics, DMA over host
//! memory (device address = host pointer), a platform with deterministic virtual time,
//! and a simulated virtio-scsi HBA behind [`Transport`] that processes the virtqueues in
//! memory as a device would and serves a RAM disk.

extern crate std;

mod device;
mod dma;
mod memory;
mod pci;
mod platform;
mod target;
#[cfg(test)]
mod tests;
mod transport;

pub use device::{SharedWorld, SimFaults, SimTmf, World};
pub use dma::HostDma;
pub use pci::FakePci;
pub use platform::SimPlatform;
pub use transport::SimTransport;
