//! SCSI status codes and fixed-format sense data (SPC-4 4.5.3).

/// SAM status byte.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
}

/// Sense keys (SPC-4 table 54).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const DATA_PROTECT: u8 = 0x7;
}

/// Fixed-format sense data is 18 bytes with an additional length of 10.
pub const FIXED_SENSE_LEN: usize = 18;

/// One sense condition: key plus additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const NO_SENSE: Sense = Sense::new(sense_key::NO_SENSE, 0x00, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Sense =
        Sense::new(sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x24, 0x00);
    pub const WRITE_PROTECTED: Sense = Sense::new(sense_key::DATA_PROTECT, 0x27, 0x00);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(sense_key::MEDIUM_ERROR, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(sense_key::MEDIUM_ERROR, 0x0c, 0x00);

    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense { key, asc, ascq }
    }

    /// Fixed format, current error (response code 0x70).
    pub fn to_fixed(self) -> [u8; FIXED_SENSE_LEN] {
        let mut buf = [0u8; FIXED_SENSE_LEN];
        buf[0] = 0x70;
        buf[2] = self.key & 0x0f;
        buf[7] = (FIXED_SENSE_LEN - 8) as u8;
        buf[12] = self.asc;
        buf[13] = self.ascq;
        buf
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
}
