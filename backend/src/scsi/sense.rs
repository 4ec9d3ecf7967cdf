//! SCSI status codes and sense data in fixed and descriptor format (SPC-4 4.5).

/// SAM status byte.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
}

/// Sense keys (SPC-4 table 54).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Fixed-format sense data is 18 bytes with an additional length of 10.
pub const FIXED_SENSE_LEN: usize = 18;
/// Descriptor format: 8-byte header plus, when set, a 12-byte information descriptor.
pub const DESCRIPTOR_SENSE_MAX_LEN: usize = 8 + 12;

/// Which sense data format the initiator gets (control mode page D_SENSE, SPC-4 7.5.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SenseFormat {
    #[default]
    Fixed,
    Descriptor,
}

/// One sense condition: key, additional sense code and qualifier, and the optional
/// INFORMATION field (for example the offset of a VERIFY miscompare).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub information: Option<u64>,
}

impl Sense {
    pub const NO_SENSE: Sense = Sense::new(sense_key::NO_SENSE, 0x00, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Sense =
        Sense::new(sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Sense =
        Sense::new(sense_key::ILLEGAL_REQUEST, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense =
        Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense =
        Sense::new(sense_key::ILLEGAL_REQUEST, 0x1a, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense =
        Sense::new(sense_key::ILLEGAL_REQUEST, 0x39, 0x00);
    pub const WRITE_PROTECTED: Sense = Sense::new(sense_key::DATA_PROTECT, 0x27, 0x00);
    /// A thin-provisioned LU out of space (SBC-3 logical block provisioning).
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Sense =
        Sense::new(sense_key::DATA_PROTECT, 0x27, 0x07);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(sense_key::MEDIUM_ERROR, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(sense_key::MEDIUM_ERROR, 0x0c, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(sense_key::MISCOMPARE, 0x1d, 0x00);
    /// LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED: stopped by START STOP UNIT.
    pub const NOT_READY_INITIALIZING_COMMAND_REQUIRED: Sense =
        Sense::new(sense_key::NOT_READY, 0x04, 0x02);
    pub const POWER_ON_RESET_OCCURRED: Sense = Sense::new(sense_key::UNIT_ATTENTION, 0x29, 0x00);
    pub const LOGICAL_UNIT_RESET_OCCURRED: Sense =
        Sense::new(sense_key::UNIT_ATTENTION, 0x29, 0x03);
    pub const I_T_NEXUS_LOSS_OCCURRED: Sense = Sense::new(sense_key::UNIT_ATTENTION, 0x29, 0x07);
    pub const CAPACITY_DATA_HAS_CHANGED: Sense = Sense::new(sense_key::UNIT_ATTENTION, 0x2a, 0x09);

    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            information: None,
        }
    }

    pub const fn with_information(self, information: u64) -> Self {
        Sense {
            information: Some(information),
            ..self
        }
    }

    /// Fixed format, current error (response code 0x70). INFORMATION is 4 bytes here, so a
    /// larger value leaves VALID clear (SPC-4 4.5.3).
    pub fn to_fixed(self) -> [u8; FIXED_SENSE_LEN] {
        let mut buf = [0u8; FIXED_SENSE_LEN];
        buf[0] = 0x70;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            buf[0] |= 0x80;
            buf[3..7].copy_from_slice(&info.to_be_bytes());
        }
        buf[2] = self.key & 0x0f;
        buf[7] = (FIXED_SENSE_LEN - 8) as u8;
        buf[12] = self.asc;
        buf[13] = self.ascq;
        buf
    }

    /// Descriptor format, current error (response code 0x72), with an information
    /// descriptor when INFORMATION is set. Returns the buffer and the length used.
    pub fn to_descriptor(self) -> ([u8; DESCRIPTOR_SENSE_MAX_LEN], usize) {
        let mut buf = [0u8; DESCRIPTOR_SENSE_MAX_LEN];
        buf[0] = 0x72;
        buf[1] = self.key & 0x0f;
        buf[2] = self.asc;
        buf[3] = self.ascq;
        let mut len = 8;
        if let Some(info) = self.information {
            // Information descriptor (SPC-4 4.5.2.2): type 0, additional length 0x0a, VALID.
            buf[8] = 0x00;
            buf[9] = 0x0a;
            buf[10] = 0x80;
            buf[12..20].copy_from_slice(&info.to_be_bytes());
            len += 12;
        }
        buf[7] = (len - 8) as u8;
        (buf, len)
    }

    /// Writes the sense data in `format` into `out` (truncated to fit); returns its length.
    pub fn encode(self, format: SenseFormat, out: &mut [u8]) -> usize {
        let fixed;
        let desc;
        let bytes: &[u8] = match format {
            SenseFormat::Fixed => {
                fixed = self.to_fixed();
                &fixed
            }
            SenseFormat::Descriptor => {
                desc = self.to_descriptor();
                &desc.0[..desc.1]
            }
        };
        let n = bytes.len().min(out.len());
        out[..n].copy_from_slice(&bytes[..n]);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let b = Sense::LBA_OUT_OF_RANGE.to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], sense_key::ILLEGAL_REQUEST);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x21, 0x00));
    }

    #[test]
    fn fixed_format_information_sets_valid() {
        let b = Sense::MISCOMPARE_DURING_VERIFY
            .with_information(0x1234)
            .to_fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        let b = Sense::MISCOMPARE_DURING_VERIFY
            .with_information(1 << 40)
            .to_fixed();
        assert_eq!(b[0], 0x70, "does not fit in 4 bytes: VALID clear");
    }

    #[test]
    fn descriptor_format_layout() {
        let (b, len) = Sense::POWER_ON_RESET_OCCURRED.to_descriptor();
        assert_eq!(len, 8);
        assert_eq!(&b[..8], &[0x72, 0x6, 0x29, 0x00, 0, 0, 0, 0]);
        let (b, len) = Sense::MISCOMPARE_DURING_VERIFY
            .with_information(513)
            .to_descriptor();
        assert_eq!(len, 20);
        assert_eq!(b[7], 12);
        assert_eq!(&b[8..12], &[0x00, 0x0a, 0x80, 0]);
        assert_eq!(&b[12..20], &513u64.to_be_bytes());
        let mut out = [0u8; 4];
        assert_eq!(
            Sense::LBA_OUT_OF_RANGE.encode(SenseFormat::Descriptor, &mut out),
            4
        );
        assert_eq!(out, [0x72, 0x5, 0x21, 0x00]);
    }
}
