//! The SCSI target behind the simulated HBA: a RAM disk answering the commands the
//! guest sends, with the faults of [`super::SimFaults`].

use super::device::World;

/// SCSI target: (status, sense, data-in) for a CDB and data-out.
pub(super) fn execute(w: &mut World, cdb: &[u8], data_out: &[u8]) -> (u8, Vec<u8>, Vec<u8>) {
    w.commands.push(cdb[0]);
    if w.faults.unit_attention_once {
        w.faults.unit_attention_once = false;
        // POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
        return (2, sense(0x6, 0x29, 0), Vec::new());
    }
    if let Some((every, status)) = w.faults.status_every {
        if (w.commands.len() as u32).is_multiple_of(every) {
            return (status, Vec::new(), Vec::new());
        }
    }
    let bs = w.block_size as usize;
    let blocks = (w.disk.len() / bs) as u64;
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    let rw = |lba: u64, n: u64| -> Option<core::ops::Range<usize>> {
        (lba + n <= blocks).then(|| (lba as usize * bs)..((lba + n) as usize * bs))
    };
    match cdb[0] {
        0x00 => (0, Vec::new(), Vec::new()),
        0x12 => {
            let mut d = std::vec![0u8; 96];
            d[2] = 6;
            d[3] = 2;
            d[4] = 91;
            d[8..16].copy_from_slice(b"FLAKYSIM");
            d[16..32].copy_from_slice(b"RAM DISK \"q\"    ");
            d[32..36].copy_from_slice(b"0001");
            let n = usize::from(u16::from_be_bytes([cdb[3], cdb[4]])).min(96);
            d.truncate(n);
            (0, Vec::new(), d)
        }
        0x25 => {
            let mut d = Vec::new();
            d.extend_from_slice(&((blocks - 1).min(0xffff_ffff) as u32).to_be_bytes());
            d.extend_from_slice(&w.block_size.to_be_bytes());
            (0, Vec::new(), d)
        }
        0x9e if cdb[1] & 0x1f == 0x10 => {
            let mut d = std::vec![0u8; 32];
            d[..8].copy_from_slice(&(blocks - 1).to_be_bytes());
            d[8..12].copy_from_slice(&w.block_size.to_be_bytes());
            (0, Vec::new(), d)
        }
        0xa0 => {
            // REPORT LUNS: LUN 0 only.
            let mut d = std::vec![0u8; 16];
            d[3] = 8;
            (0, Vec::new(), d)
        }
        0x28 | 0x88 | 0x2a | 0x8a => {
            let (lba, n) = if cdb[0] & 0x80 != 0 {
                (be64(&cdb[2..10]), u64::from(be32(&cdb[10..14])))
            } else {
                (
                    u64::from(be32(&cdb[2..6])),
                    u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
                )
            };
            let Some(r) = rw(lba, n) else {
                return (2, sense(0x5, 0x21, 0), Vec::new());
            };
            let read = cdb[0] == 0x28 || cdb[0] == 0x88;
            if let Some((first, last)) = w.faults.medium_error {
                if read && lba <= last && lba + n > first {
                    // UNRECOVERED READ ERROR.
                    return (2, sense(0x3, 0x11, 0), Vec::new());
                }
            }
            if read {
                (0, Vec::new(), w.disk[r].to_vec())
            } else if data_out.len() < r.len() {
                (2, sense(0x5, 0x24, 0), Vec::new())
            } else {
                let len = r.len();
                w.disk[r].copy_from_slice(&data_out[..len]);
                (0, Vec::new(), Vec::new())
            }
        }
        _ => (2, sense(0x5, 0x20, 0), Vec::new()),
    }
}

fn sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = std::vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}
