//! The virtio wire format this guest speaks, written down once: the numbers of the
//! virtio 1.2 spec (device status, feature bits, split-ring flags, the PCI transport,
//! and the SCSI host device of §5.6) under the spec's names. The driver, the PCI scan
//! and the host tests' simulated device all take them from here.
//!
//! rust-vmm's `virtio-bindings` holds the same numbers but needs `std`, so it cannot
//! build for `x86_64-unknown-none`; the tests below check every constant it also
//! defines against it. The virtio-pci ones (`virtio_pci.h`) have no binding there.

/// Device status bits (§2.1).
pub const VIRTIO_CONFIG_S_ACKNOWLEDGE: u8 = 1;
pub const VIRTIO_CONFIG_S_DRIVER: u8 = 2;
pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
pub const VIRTIO_CONFIG_S_FEATURES_OK: u8 = 8;
pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;
pub const VIRTIO_CONFIG_S_FAILED: u8 = 0x80;

/// Feature bits (§6), as masks.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;

/// Split virtqueue flags (§2.7).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// PCI IDs (§4.1.2): modern virtio-scsi is 0x1040 + device type 8.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
pub const VIRTIO_PCI_DEVICE_ID_SCSI_MODERN: u16 = 0x1048;
pub const VIRTIO_PCI_DEVICE_ID_SCSI_TRANSITIONAL: u16 = 0x1004;
/// `cfg_type` of the virtio PCI capabilities (§4.1.4).
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// "No vector" for config_msix_vector and queue_msix_vector.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// ISR status bit: a queue has new used buffers (INTx only).
pub const VIRTIO_PCI_ISR_QUEUE: u8 = 1;
/// ISR status bit: the device configuration changed (INTx only).
pub const VIRTIO_PCI_ISR_CONFIG: u8 = 2;

/// struct virtio_pci_common_cfg offsets (§4.1.4.3), under its field names.
pub mod common_cfg {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const CONFIG_MSIX_VECTOR: usize = 0x10;
    pub const NUM_QUEUES: usize = 0x12;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
}

/// virtio-scsi feature bits (§5.6.3), as masks.
pub const VIRTIO_SCSI_F_INOUT: u64 = 1 << 0;
pub const VIRTIO_SCSI_F_HOTPLUG: u64 = 1 << 1;
pub const VIRTIO_SCSI_F_CHANGE: u64 = 1 << 2;

/// virtio-scsi response codes (§5.6.6.1).
pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_OVERRUN: u8 = 1;
pub const VIRTIO_SCSI_S_ABORTED: u8 = 2;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_RESET: u8 = 4;
pub const VIRTIO_SCSI_S_BUSY: u8 = 5;
pub const VIRTIO_SCSI_S_TRANSPORT_FAILURE: u8 = 6;
pub const VIRTIO_SCSI_S_TARGET_FAILURE: u8 = 7;
pub const VIRTIO_SCSI_S_NEXUS_FAILURE: u8 = 8;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;

/// Task management answers (§5.6.6.2).
pub const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u8 = 0;
pub const VIRTIO_SCSI_S_FUNCTION_SUCCEEDED: u8 = 10;

/// Control queue request type and TMF subtypes (§5.6.6.2).
pub const VIRTIO_SCSI_T_TMF: u32 = 0;
pub const VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET: u32 = 4;
pub const VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET: u32 = 5;

/// Events (§5.6.6.3).
pub const VIRTIO_SCSI_T_NO_EVENT: u32 = 0;
pub const VIRTIO_SCSI_T_TRANSPORT_RESET: u32 = 1;
pub const VIRTIO_SCSI_T_PARAM_CHANGE: u32 = 3;
pub const VIRTIO_SCSI_T_EVENTS_MISSED: u32 = 0x8000_0000;

/// Task attribute SIMPLE.
pub const VIRTIO_SCSI_S_SIMPLE: u8 = 0;

/// Queue numbers (§5.6.2): control, event, then request queues.
pub const CONTROLQ: u16 = 0;
pub const EVENTQ: u16 = 1;
pub const REQUESTQ: u16 = 2;

/// Size of struct virtio_scsi_cmd_req without the CDB: `lun[8]`, id, task_attr,
/// prio, crn.
pub const CMD_REQ_HEADER: usize = 19;
/// Size of struct virtio_scsi_cmd_resp without the sense: sense_len, resid,
/// status_qualifier, status, response.
pub const CMD_RESP_HEADER: usize = 12;
/// struct virtio_scsi_event: event, `lun[8]`, reason.
pub const EVENT_SIZE: usize = 16;
/// struct virtio_scsi_ctrl_tmf_req: type, subtype, `lun[8]`, id.
pub const TMF_REQ_SIZE: usize = 24;

/// struct virtio_scsi_config offsets (§5.6.4).
pub const CFG_NUM_QUEUES: usize = 0;
pub const CFG_CMD_PER_LUN: usize = 12;
pub const CFG_SENSE_SIZE: usize = 20;
pub const CFG_CDB_SIZE: usize = 24;
pub const CFG_MAX_TARGET: usize = 30;
pub const CFG_MAX_LUN: usize = 32;

/// The spec's default cdb_size and sense_size, and the largest this driver lays out.
pub const VIRTIO_SCSI_CDB_SIZE: u32 = 32;
pub const VIRTIO_SCSI_SENSE_SIZE: u32 = 96;

#[cfg(test)]
mod tests {
    //! Every constant above that `virtio-bindings` also has, checked against it.
    use core::mem::{offset_of, size_of};

    use virtio_bindings::virtio_config as config;
    use virtio_bindings::virtio_ids as ids;
    use virtio_bindings::virtio_ring as ring;
    use virtio_bindings::virtio_scsi as scsi;

    use super::*;
    use crate::virtio::Descriptor;

    /// A feature bit number of the bindings as the mask this module uses.
    fn bit(n: u32) -> u64 {
        1 << n
    }

    #[test]
    fn device_status_and_feature_bits_match_virtio_bindings() {
        let status = [
            (
                VIRTIO_CONFIG_S_ACKNOWLEDGE,
                config::VIRTIO_CONFIG_S_ACKNOWLEDGE,
            ),
            (VIRTIO_CONFIG_S_DRIVER, config::VIRTIO_CONFIG_S_DRIVER),
            (VIRTIO_CONFIG_S_DRIVER_OK, config::VIRTIO_CONFIG_S_DRIVER_OK),
            (
                VIRTIO_CONFIG_S_FEATURES_OK,
                config::VIRTIO_CONFIG_S_FEATURES_OK,
            ),
            (
                VIRTIO_CONFIG_S_NEEDS_RESET,
                config::VIRTIO_CONFIG_S_NEEDS_RESET,
            ),
            (VIRTIO_CONFIG_S_FAILED, config::VIRTIO_CONFIG_S_FAILED),
        ];
        for (ours, theirs) in status {
            assert_eq!(u32::from(ours), theirs);
        }
        assert_eq!(VIRTIO_F_VERSION_1, bit(config::VIRTIO_F_VERSION_1));
        assert_eq!(VIRTIO_F_RING_PACKED, bit(config::VIRTIO_F_RING_PACKED));
        assert_eq!(
            VIRTIO_RING_F_INDIRECT_DESC,
            bit(ring::VIRTIO_RING_F_INDIRECT_DESC)
        );
        assert_eq!(VIRTIO_RING_F_EVENT_IDX, bit(ring::VIRTIO_RING_F_EVENT_IDX));
    }

    #[test]
    fn split_ring_layout_matches_virtio_bindings() {
        assert_eq!(u32::from(VIRTQ_DESC_F_NEXT), ring::VRING_DESC_F_NEXT);
        assert_eq!(u32::from(VIRTQ_DESC_F_WRITE), ring::VRING_DESC_F_WRITE);
        assert_eq!(
            u32::from(VIRTQ_USED_F_NO_NOTIFY),
            ring::VRING_USED_F_NO_NOTIFY
        );
        assert_eq!(
            u32::from(VIRTQ_AVAIL_F_NO_INTERRUPT),
            ring::VRING_AVAIL_F_NO_INTERRUPT
        );
        assert_eq!(size_of::<Descriptor>(), size_of::<ring::vring_desc>());
        assert_eq!(
            offset_of!(Descriptor, addr),
            offset_of!(ring::vring_desc, addr)
        );
        assert_eq!(
            offset_of!(Descriptor, len),
            offset_of!(ring::vring_desc, len)
        );
        assert_eq!(
            offset_of!(Descriptor, flags),
            offset_of!(ring::vring_desc, flags)
        );
        assert_eq!(
            offset_of!(Descriptor, next),
            offset_of!(ring::vring_desc, next)
        );
    }

    #[test]
    fn modern_device_id_is_0x1040_plus_the_scsi_device_type() {
        assert_eq!(
            u32::from(VIRTIO_PCI_DEVICE_ID_SCSI_MODERN),
            0x1040 + ids::VIRTIO_ID_SCSI
        );
    }

    #[test]
    fn virtio_scsi_codes_match_virtio_bindings() {
        assert_eq!(bit(scsi::VIRTIO_SCSI_F_INOUT), VIRTIO_SCSI_F_INOUT);
        assert_eq!(bit(scsi::VIRTIO_SCSI_F_HOTPLUG), VIRTIO_SCSI_F_HOTPLUG);
        assert_eq!(bit(scsi::VIRTIO_SCSI_F_CHANGE), VIRTIO_SCSI_F_CHANGE);
        let bytes = [
            (VIRTIO_SCSI_S_OK, scsi::VIRTIO_SCSI_S_OK),
            (VIRTIO_SCSI_S_OVERRUN, scsi::VIRTIO_SCSI_S_OVERRUN),
            (VIRTIO_SCSI_S_ABORTED, scsi::VIRTIO_SCSI_S_ABORTED),
            (VIRTIO_SCSI_S_BAD_TARGET, scsi::VIRTIO_SCSI_S_BAD_TARGET),
            (VIRTIO_SCSI_S_RESET, scsi::VIRTIO_SCSI_S_RESET),
            (VIRTIO_SCSI_S_BUSY, scsi::VIRTIO_SCSI_S_BUSY),
            (
                VIRTIO_SCSI_S_TRANSPORT_FAILURE,
                scsi::VIRTIO_SCSI_S_TRANSPORT_FAILURE,
            ),
            (
                VIRTIO_SCSI_S_TARGET_FAILURE,
                scsi::VIRTIO_SCSI_S_TARGET_FAILURE,
            ),
            (
                VIRTIO_SCSI_S_NEXUS_FAILURE,
                scsi::VIRTIO_SCSI_S_NEXUS_FAILURE,
            ),
            (VIRTIO_SCSI_S_FAILURE, scsi::VIRTIO_SCSI_S_FAILURE),
            (
                VIRTIO_SCSI_S_FUNCTION_SUCCEEDED,
                scsi::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED,
            ),
            (VIRTIO_SCSI_S_SIMPLE, scsi::VIRTIO_SCSI_S_SIMPLE),
        ];
        for (ours, theirs) in bytes {
            assert_eq!(u32::from(ours), theirs);
        }
        // The bindings have no FUNCTION_COMPLETE; the spec gives it the value of S_OK.
        assert_eq!(
            u32::from(VIRTIO_SCSI_S_FUNCTION_COMPLETE),
            scsi::VIRTIO_SCSI_S_OK
        );
        let words = [
            (VIRTIO_SCSI_T_TMF, scsi::VIRTIO_SCSI_T_TMF),
            (
                VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
                scsi::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
            ),
            (
                VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
                scsi::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
            ),
            (VIRTIO_SCSI_T_NO_EVENT, scsi::VIRTIO_SCSI_T_NO_EVENT),
            (
                VIRTIO_SCSI_T_TRANSPORT_RESET,
                scsi::VIRTIO_SCSI_T_TRANSPORT_RESET,
            ),
            (VIRTIO_SCSI_T_PARAM_CHANGE, scsi::VIRTIO_SCSI_T_PARAM_CHANGE),
            (
                VIRTIO_SCSI_T_EVENTS_MISSED,
                scsi::VIRTIO_SCSI_T_EVENTS_MISSED,
            ),
            (VIRTIO_SCSI_CDB_SIZE, scsi::VIRTIO_SCSI_CDB_DEFAULT_SIZE),
            (VIRTIO_SCSI_SENSE_SIZE, scsi::VIRTIO_SCSI_SENSE_DEFAULT_SIZE),
        ];
        for (ours, theirs) in words {
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn virtio_scsi_struct_layout_matches_virtio_bindings() {
        assert_eq!(CMD_REQ_HEADER, offset_of!(scsi::virtio_scsi_cmd_req, cdb));
        assert_eq!(
            CMD_REQ_HEADER + VIRTIO_SCSI_CDB_SIZE as usize,
            size_of::<scsi::virtio_scsi_cmd_req>()
        );
        assert_eq!(
            CMD_RESP_HEADER,
            offset_of!(scsi::virtio_scsi_cmd_resp, sense)
        );
        assert_eq!(
            CMD_RESP_HEADER + VIRTIO_SCSI_SENSE_SIZE as usize,
            size_of::<scsi::virtio_scsi_cmd_resp>()
        );
        assert_eq!(EVENT_SIZE, size_of::<scsi::virtio_scsi_event>());
        assert_eq!(TMF_REQ_SIZE, size_of::<scsi::virtio_scsi_ctrl_tmf_req>());
        let config = [
            (
                CFG_NUM_QUEUES,
                offset_of!(scsi::virtio_scsi_config, num_queues),
            ),
            (
                CFG_CMD_PER_LUN,
                offset_of!(scsi::virtio_scsi_config, cmd_per_lun),
            ),
            (
                CFG_SENSE_SIZE,
                offset_of!(scsi::virtio_scsi_config, sense_size),
            ),
            (CFG_CDB_SIZE, offset_of!(scsi::virtio_scsi_config, cdb_size)),
            (
                CFG_MAX_TARGET,
                offset_of!(scsi::virtio_scsi_config, max_target),
            ),
            (CFG_MAX_LUN, offset_of!(scsi::virtio_scsi_config, max_lun)),
        ];
        for (ours, theirs) in config {
            assert_eq!(ours, theirs);
        }
    }
}
