//! The harness's own look at a disk image: the seeded pattern at every LBA a guest says
//! it wrote.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};

use guest_miniport::contract::check_pattern;

/// Largest block size the judge accepts; SCSI disks use 512..=4096.
pub const MAX_BLOCK_SIZE: u64 = 64 * 1024;

/// What the harness found in the disk image at the LBAs a guest reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageCheck {
    pub image_bytes: u64,
    /// LBAs (each counted once) holding the pattern.
    pub verified: usize,
    /// LBAs (each counted once) lacking it, in the order reported.
    pub bad: Vec<u64>,
    /// LBAs whose block lies beyond the end of the image.
    pub outside: Vec<u64>,
    /// LBAs reported more than once (checked once).
    pub duplicates: Vec<u64>,
}

/// Reads block `lba` of `block_size` bytes at every LBA of `lbas` and checks
/// [`check_pattern`] for `seed`. Only I/O errors are errors; what the blocks hold is
/// the result.
pub fn check_image(
    image: &mut (impl Read + Seek),
    seed: u64,
    block_size: u64,
    lbas: &[u64],
) -> std::io::Result<ImageCheck> {
    let mut check = ImageCheck {
        image_bytes: image.seek(SeekFrom::End(0))?,
        ..ImageCheck::default()
    };
    let mut block = vec![0u8; block_size.min(MAX_BLOCK_SIZE) as usize];
    let mut seen = BTreeSet::new();
    for &lba in lbas {
        if !seen.insert(lba) {
            check.duplicates.push(lba);
            continue;
        }
        let Some(offset) = lba.checked_mul(block_size).filter(|o| {
            o.checked_add(block_size)
                .is_some_and(|end| end <= check.image_bytes)
        }) else {
            check.outside.push(lba);
            continue;
        };
        image.seek(SeekFrom::Start(offset))?;
        image.read_exact(&mut block)?;
        if check_pattern(seed, lba, &block) {
            check.verified += 1;
        } else {
            check.bad.push(lba);
        }
    }
    Ok(check)
}
