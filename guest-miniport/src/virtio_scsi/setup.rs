//! Bring-up: the device reset at initialization, feature negotiation and the device
//! configuration, the capabilities HwFindAdapter reports, and setting up MSI-X (or the
//! INTx line) and the three queues (HwInitialize, and again after a device reset).

use crate::port::{AdapterCapabilities, PortContext};
use crate::virtio::{Transport, MAX_QUEUE_SIZE};
use crate::wire::*;

use super::{Extension, InterruptMode, VirtioScsiError, EVENT_BUFFERS, MAX_REQUESTS, NO_SLOT};

impl<T: Transport> Extension<T> {
    /// HwFindAdapter: resets the device, negotiates, and reports what the request
    /// queue takes.
    pub(super) fn probe(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, VirtioScsiError> {
        self.reset_device(ctx)?;
        self.negotiate()?;
        let per_lun = self.transport.read_config_u32(CFG_CMD_PER_LUN);
        self.transport.queue_select(REQUESTQ);
        let size = Self::usable_queue_size(self.transport.queue_size());
        if size == 0 {
            return Err(VirtioScsiError::QueueMissing(REQUESTQ));
        }
        // Each request takes at most 3 descriptors: command, data, response.
        let max = (size / 3).clamp(1, MAX_REQUESTS as u16);
        Ok(AdapterCapabilities {
            max_outstanding: max,
            tagged_queuing: true,
            queue_depth: if per_lun == 0 {
                max
            } else {
                (per_lun.min(u32::from(max))) as u16
            },
            interrupts: self.settings.interrupts != InterruptMode::None,
        })
    }

    /// Resets the device at initialization: writes 0 and waits for status to read 0
    /// (virtio 1.2 §4.1.4.3.2). S1 allows the wait only here; a bus reset never waits.
    pub(super) fn reset_device(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<(), VirtioScsiError> {
        self.transport.set_status(0);
        // S1: short stalls only; a device that takes more than ~100 ms is broken.
        for _ in 0..10_000 {
            if self.transport.status() == 0 {
                return Ok(());
            }
            ctx.stall_execution(10);
        }
        Err(VirtioScsiError::DeviceResetTimeout)
    }

    /// ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK check, device config, on a
    /// device whose status reads 0.
    pub(super) fn negotiate(&mut self) -> Result<(), VirtioScsiError> {
        let t = &mut self.transport;
        t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        let offered = t.device_features64();
        if offered & VIRTIO_F_VERSION_1 == 0 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::NoVersion1);
        }
        // Never INDIRECT_DESC or RING_PACKED: not implemented. EVENT_IDX is.
        let wanted = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_SCSI_F_HOTPLUG
            | VIRTIO_SCSI_F_CHANGE;
        self.features = offered & wanted;
        t.set_driver_features64(self.features);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        t.set_status(s);
        if t.status() & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::FeaturesRejected);
        }

        let mut cdb = t.read_config_u32(CFG_CDB_SIZE);
        let mut sense = t.read_config_u32(CFG_SENSE_SIZE);
        if cdb > VIRTIO_SCSI_CDB_SIZE || sense > VIRTIO_SCSI_SENSE_SIZE {
            // Both are driver-writable; ask for the sizes we lay out.
            t.write_device_config(CFG_CDB_SIZE, &VIRTIO_SCSI_CDB_SIZE.to_le_bytes());
            t.write_device_config(CFG_SENSE_SIZE, &VIRTIO_SCSI_SENSE_SIZE.to_le_bytes());
            cdb = t.read_config_u32(CFG_CDB_SIZE);
            sense = t.read_config_u32(CFG_SENSE_SIZE);
        }
        if cdb > VIRTIO_SCSI_CDB_SIZE || sense > VIRTIO_SCSI_SENSE_SIZE || cdb == 0 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::UnsupportedConfig);
        }
        self.cdb_size = cdb as usize;
        self.sense_size = sense as usize;
        self.config_generation = t.config_generation();
        if t.num_queues() < 3 {
            t.set_status(VIRTIO_CONFIG_S_FAILED);
            return Err(VirtioScsiError::QueueMissing(t.num_queues()));
        }
        Ok(())
    }

    /// Largest power of two that the device (`max`) and this driver both take.
    fn usable_queue_size(max: u16) -> u16 {
        match max.min(MAX_QUEUE_SIZE as u16) {
            0 => 0,
            m => 1 << (15 - m.leading_zeros()),
        }
    }

    /// MSI-X entry for queue `q`: entry 0 is config, queues take 1.. while the table
    /// lasts and share the last entry beyond it.
    fn vector_for_queue(table_size: u16, q: u16) -> u16 {
        (1 + q).min(table_size.saturating_sub(1))
    }

    /// MSI-X (or none), the three queues, DRIVER_OK, event buffers.
    pub(super) fn bring_up(&mut self, ctx: &mut PortContext<'_>) -> Result<(), VirtioScsiError> {
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        if self.settings.interrupts == InterruptMode::Msix {
            let table = self.transport.msix_table_size();
            if table == 0 {
                return Err(VirtioScsiError::NoMsix);
            }
            self.config_vector = 0;
            for q in 0..3 {
                self.queue_vector[usize::from(q)] = Self::vector_for_queue(table, q);
            }
            let last = self.queue_vector[2];
            for entry in 0..=last {
                let (addr, data) = ctx
                    .msi_message(entry)
                    .ok_or(VirtioScsiError::NoMsiMessage(entry))?;
                self.transport.set_msix_entry(entry, addr, data);
            }
            self.transport.set_msix_enabled(true);
        } else {
            self.transport.set_msix_enabled(false);
            self.config_vector = VIRTIO_MSI_NO_VECTOR;
            self.queue_vector = [VIRTIO_MSI_NO_VECTOR; 3];
            if self.settings.interrupts == InterruptMode::Intx {
                ctx.connect_line_interrupt(0);
            }
        }
        self.transport.set_config_msix_vector(self.config_vector);
        if self.transport.config_msix_vector() != self.config_vector {
            return Err(VirtioScsiError::VectorRejected(u16::MAX));
        }

        for q in [CONTROLQ, EVENTQ, REQUESTQ] {
            let t = &mut self.transport;
            t.queue_select(q);
            let max = t.queue_size();
            if max == 0 {
                return Err(VirtioScsiError::QueueMissing(q));
            }
            let size = Self::usable_queue_size(max);
            let queue = match q {
                CONTROLQ => &mut self.control,
                EVENTQ => &mut self.event,
                _ => &mut self.request,
            };
            queue.shrink(size);
            queue.set_event_idx(event_idx);
            t.set_queue_size(queue.size());
            let vector = self.queue_vector[usize::from(q)];
            t.set_queue_msix_vector(vector);
            // The spec: read back; NO_VECTOR means the device could not allocate it.
            if t.queue_msix_vector() != vector {
                return Err(VirtioScsiError::VectorRejected(q));
            }
            let (desc, driver, device) = queue.addresses();
            t.set_queue_addresses(desc, driver, device);
            t.set_queue_enable();
        }
        self.transport.set_status(
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        let s = self.transport.status();
        if s & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) != 0 {
            return Err(VirtioScsiError::DeviceFailed(s));
        }
        self.max_outstanding = (self.request.size() / 3).clamp(1, MAX_REQUESTS as u16);
        self.event_heads = [NO_SLOT; MAX_QUEUE_SIZE];
        let n = EVENT_BUFFERS.min(usize::from(self.event.size()));
        for i in 0..n {
            self.post_event_buffer(i as u8);
        }
        self.kick(EVENTQ);
        Ok(())
    }
}
