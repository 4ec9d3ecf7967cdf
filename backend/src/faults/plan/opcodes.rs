//! Opcode names and numbers as the plan's `opcode` key takes them.

use super::raw::NumOrName;

/// SBC/SPC opcode names accepted by `opcode` (lower case, `-` separated).
const OPCODES: &[(&str, u8)] = &[
    ("test-unit-ready", 0x00),
    ("rezero-unit", 0x01),
    ("request-sense", 0x03),
    ("format-unit", 0x04),
    ("read-6", 0x08),
    ("write-6", 0x0a),
    ("seek-6", 0x0b),
    ("inquiry", 0x12),
    ("mode-select-6", 0x15),
    ("reserve-6", 0x16),
    ("release-6", 0x17),
    ("mode-sense-6", 0x1a),
    ("start-stop-unit", 0x1b),
    ("receive-diagnostic-results", 0x1c),
    ("send-diagnostic", 0x1d),
    ("prevent-allow-medium-removal", 0x1e),
    ("read-capacity-10", 0x25),
    ("read-10", 0x28),
    ("write-10", 0x2a),
    ("seek-10", 0x2b),
    ("write-and-verify-10", 0x2e),
    ("verify-10", 0x2f),
    ("synchronize-cache-10", 0x35),
    ("read-defect-data-10", 0x37),
    ("write-buffer", 0x3b),
    ("read-buffer", 0x3c),
    ("write-same-10", 0x41),
    ("unmap", 0x42),
    ("read-toc", 0x43),
    ("get-configuration", 0x46),
    ("get-event-status-notification", 0x4a),
    ("log-select", 0x4c),
    ("log-sense", 0x4d),
    ("mode-select-10", 0x55),
    ("reserve-10", 0x56),
    ("release-10", 0x57),
    ("mode-sense-10", 0x5a),
    ("persistent-reserve-in", 0x5e),
    ("persistent-reserve-out", 0x5f),
    ("variable-length", 0x7f),
    ("read-16", 0x88),
    ("compare-and-write", 0x89),
    ("write-16", 0x8a),
    ("write-and-verify-16", 0x8e),
    ("verify-16", 0x8f),
    ("synchronize-cache-16", 0x91),
    ("write-same-16", 0x93),
    ("service-action-in-16", 0x9e),
    ("read-capacity-16", 0x9e),
    ("report-luns", 0xa0),
    ("maintenance-in", 0xa3),
    ("report-supported-operation-codes", 0xa3),
    ("maintenance-out", 0xa4),
    ("read-12", 0xa8),
    ("write-12", 0xaa),
    ("verify-12", 0xaf),
];

const fn opcode_name_table() -> [Option<&'static str>; 256] {
    let mut table = [None; 256];
    let mut i = OPCODES.len();
    // Walk backwards so that the first name listed for a shared opcode wins.
    while i > 0 {
        i -= 1;
        table[OPCODES[i].1 as usize] = Some(OPCODES[i].0);
    }
    table
}

static OPCODE_NAMES: [Option<&str>; 256] = opcode_name_table();

/// The plan's name for an opcode, if it has one.
#[inline]
pub fn opcode_name(opcode: u8) -> Option<&'static str> {
    OPCODE_NAMES[opcode as usize]
}

/// An opcode from its name (`read-10`, `READ_10`) or number (`0x28`, `40`).
pub fn parse_opcode(v: &NumOrName) -> Result<u8, String> {
    match v {
        NumOrName::Num(n) => u8::try_from(*n).map_err(|_| format!("opcode {n} is above 255")),
        NumOrName::Name(s) => {
            let s = s.trim();
            if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                return u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("`{s}` is not an opcode between 0x00 and 0xff"));
            }
            if let Ok(n) = s.parse::<u8>() {
                return Ok(n);
            }
            let norm = s.to_ascii_lowercase().replace('_', "-");
            OPCODES
                .iter()
                .find(|(n, _)| *n == norm)
                .map(|(_, op)| *op)
                .ok_or_else(|| {
                    format!(
                        "unknown opcode name `{s}` (use a number like 0x28 or a name like read-10)"
                    )
                })
        }
    }
}
