//! The stamps that make every block of the test ranges recognisable: 32 slots of 16 bytes
//! per block, each "FHBA", the block's LBA, a generation and the slot's index (u32
//! little-endian each). A misplaced block has the wrong LBA, a stale one the wrong
//! generation, a partly transferred one the wrong tag (zeros) in its tail. build.sh and the
//! SeaBIOS boot sector write the same bytes.

use crate::layout::BLOCK_SIZE;

pub const TAG: [u8; 4] = *b"FHBA";
const SLOT: usize = 16;
const SLOTS: usize = BLOCK_SIZE / SLOT;

/// The first slot that does not hold its expected stamp, and what it holds instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    pub slot: u32,
    pub found_tag: u32,
    pub found_lba: u32,
    pub found_gen: u32,
    pub found_slot: u32,
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn expected(lba: u64, generation: u32, slot: usize) -> [u8; SLOT] {
    let mut stamp = [0u8; SLOT];
    stamp[0..4].copy_from_slice(&TAG);
    // The LBA field is 32 bits wide: the test ranges lie far below 2^32.
    stamp[4..8].copy_from_slice(&(lba as u32).to_le_bytes());
    stamp[8..12].copy_from_slice(&generation.to_le_bytes());
    stamp[12..16].copy_from_slice(&(slot as u32).to_le_bytes());
    stamp
}

/// Stamps `buf` (whole blocks) as the blocks from `first_lba` on, of `generation`.
pub fn fill(buf: &mut [u8], first_lba: u64, generation: u32) {
    for (n, block) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
        for (slot, bytes) in block.chunks_exact_mut(SLOT).enumerate() {
            bytes.copy_from_slice(&expected(first_lba + n as u64, generation, slot));
        }
    }
}

/// Checks that `buf` holds the blocks from `first_lba` on, of `generation`.
pub fn check(buf: &[u8], first_lba: u64, generation: u32) -> Result<(), Mismatch> {
    for (n, block) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
        let lba = first_lba + n as u64;
        for (slot, bytes) in block.chunks_exact(SLOT).enumerate() {
            if bytes != expected(lba, generation, slot) {
                return Err(Mismatch {
                    lba,
                    slot: slot as u32,
                    found_tag: word(bytes, 0),
                    found_lba: word(bytes, 4),
                    found_gen: word(bytes, 8),
                    found_slot: word(bytes, 12),
                });
            }
        }
    }
    Ok(())
}

// The SeaBIOS boot sector and build.sh write 32 slots per block too.
const _: () = assert!(SLOTS == 32 && SLOTS * SLOT == BLOCK_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize) -> Vec<u8> {
        vec![0; n * BLOCK_SIZE]
    }

    #[test]
    fn a_filled_buffer_checks() {
        let mut buf = blocks(3);
        fill(&mut buf, 8192, 7);
        assert_eq!(check(&buf, 8192, 7), Ok(()));
    }

    #[test]
    fn the_bytes_are_the_documented_ones() {
        let mut buf = blocks(1);
        fill(&mut buf, 0x2001, 0x8000_0001);
        assert_eq!(&buf[0..16], b"FHBA\x01\x20\0\0\x01\0\0\x80\0\0\0\0");
        assert_eq!(&buf[496..512], b"FHBA\x01\x20\0\0\x01\0\0\x80\x1f\0\0\0");
    }

    #[test]
    fn a_stale_block_names_its_generation() {
        let mut buf = blocks(2);
        fill(&mut buf, 100, 2);
        fill(&mut buf[BLOCK_SIZE..], 101, 1);
        let m = check(&buf, 100, 2).unwrap_err();
        assert_eq!((m.lba, m.slot, m.found_gen, m.found_lba), (101, 0, 1, 101));
    }

    #[test]
    fn a_misplaced_block_names_its_lba() {
        let mut buf = blocks(2);
        fill(&mut buf, 100, 2);
        fill(&mut buf[BLOCK_SIZE..], 500, 2);
        let m = check(&buf, 100, 2).unwrap_err();
        assert_eq!((m.lba, m.found_lba, m.found_gen), (101, 500, 2));
    }

    #[test]
    fn a_short_transfer_shows_as_a_zero_tag_mid_block() {
        let mut buf = blocks(1);
        fill(&mut buf, 5, 1);
        buf[256..].fill(0);
        let m = check(&buf, 5, 1).unwrap_err();
        assert_eq!((m.lba, m.slot, m.found_tag, m.found_slot), (5, 16, 0, 0));
    }

    #[test]
    fn a_shifted_slot_shows_its_index() {
        let mut buf = blocks(1);
        fill(&mut buf, 5, 1);
        buf.copy_within(0..16, 48);
        let m = check(&buf, 5, 1).unwrap_err();
        assert_eq!(
            (m.slot, m.found_slot, m.found_tag),
            (3, 0, u32::from_le_bytes(TAG))
        );
    }
}
