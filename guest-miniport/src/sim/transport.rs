//! The simulated device's registers, behind the driver's [`Transport`] trait.

use crate::virtio::Transport;
use crate::wire::*;

use super::device::SharedWorld;

/// The simulated device's registers.
pub struct SimTransport(pub SharedWorld);

impl Transport for SimTransport {
    fn device_features(&mut self, select: u32) -> u32 {
        let mut w = self.0.borrow_mut();
        w.device_feature_select = select;
        match select {
            0 => w.offered_features as u32,
            1 => (w.offered_features >> 32) as u32,
            _ => 0,
        }
    }
    fn set_driver_features(&mut self, select: u32, value: u32) {
        let mut w = self.0.borrow_mut();
        w.driver_feature_select = select;
        match select {
            0 => w.driver_features = (w.driver_features & !0xffff_ffff) | u64::from(value),
            1 => w.driver_features = (w.driver_features & 0xffff_ffff) | u64::from(value) << 32,
            _ => {}
        }
    }
    fn status(&self) -> u8 {
        self.0.borrow().status
    }
    fn set_status(&mut self, status: u8) {
        let mut w = self.0.borrow_mut();
        if status == 0 {
            w.reset();
            return;
        }
        let mut s = status;
        if s & VIRTIO_CONFIG_S_FEATURES_OK != 0 && w.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            // Refuse features it did not offer, and a driver without VERSION_1.
            let f = w.driver_features;
            if f & !w.offered_features != 0 || f & VIRTIO_F_VERSION_1 == 0 {
                s &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        w.status = s;
    }
    fn config_generation(&self) -> u8 {
        self.0.borrow().config_generation
    }
    fn num_queues(&self) -> u16 {
        3
    }
    fn config_msix_vector(&self) -> u16 {
        self.0.borrow().config_vector
    }
    fn set_config_msix_vector(&mut self, vector: u16) {
        let mut w = self.0.borrow_mut();
        w.config_vector = if vector < 4 {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        };
    }
    fn queue_select(&mut self, queue: u16) {
        self.0.borrow_mut().queue_select = queue;
    }
    fn queue_size(&self) -> u16 {
        let w = self.0.borrow();
        w.queues
            .get(usize::from(w.queue_select))
            .map_or(0, |q| q.size)
    }
    fn set_queue_size(&mut self, size: u16) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.size = size;
        }
    }
    fn queue_msix_vector(&self) -> u16 {
        let w = self.0.borrow();
        w.queues
            .get(usize::from(w.queue_select))
            .map_or(VIRTIO_MSI_NO_VECTOR, |q| q.vector)
    }
    fn set_queue_msix_vector(&mut self, vector: u16) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.vector = if vector < 4 {
                vector
            } else {
                VIRTIO_MSI_NO_VECTOR
            };
        }
    }
    fn queue_enabled(&self) -> bool {
        let w = self.0.borrow();
        w.queues
            .get(usize::from(w.queue_select))
            .is_some_and(|q| q.enabled)
    }
    fn set_queue_enable(&mut self) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.enabled = true;
        }
    }
    fn queue_notify_off(&self) -> u16 {
        self.0.borrow().queue_select
    }
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        let mut w = self.0.borrow_mut();
        let s = usize::from(w.queue_select);
        if let Some(q) = w.queues.get_mut(s) {
            q.desc = desc;
            q.driver = driver;
            q.device = device;
        }
    }
    fn notify(&mut self, queue: u16) {
        let mut w = self.0.borrow_mut();
        w.notifications += 1;
        match queue {
            REQUESTQ => w.process_requests(),
            EVENTQ => w.count_event_buffers(),
            CONTROLQ => w.process_control(),
            _ => {}
        }
    }
    fn read_isr(&mut self) -> u8 {
        core::mem::take(&mut self.0.borrow_mut().isr)
    }
    fn read_device_config(&self, offset: usize, buf: &mut [u8]) {
        let w = self.0.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = w.config.get(offset + i).copied().unwrap_or(0);
        }
    }
    fn write_device_config(&mut self, offset: usize, data: &[u8]) {
        let mut w = self.0.borrow_mut();
        // Only sense_size and cdb_size are driver-writable.
        if offset == CFG_SENSE_SIZE || offset == CFG_CDB_SIZE {
            w.config[offset..offset + data.len()].copy_from_slice(data);
        }
    }
    fn msix_table_size(&self) -> u16 {
        4
    }
    fn set_msix_entry(&mut self, entry: u16, address: u64, data: u32) {
        if let Some(e) = self.0.borrow_mut().msix.get_mut(usize::from(entry)) {
            *e = (address, data, false);
        }
    }
    fn set_msix_enabled(&mut self, enabled: bool) {
        self.0.borrow_mut().msix_enabled = enabled;
    }
}
