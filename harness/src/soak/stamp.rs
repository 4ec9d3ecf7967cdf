//! What the soak writes: every 512-byte block carries its LBA and the generation of the
//! write that stored it, and the rest of the block is derived from both, so a block that
//! holds parts of two writes (torn), another block's data (misplaced) or anything else is
//! told apart from a whole, intact stamp. Generation 0 is the image as created: zeroes.

use std::fmt;

/// The soak's block size (the LUN's).
pub const BLOCK: usize = 512;
/// "flakysok", little-endian, at the start of every stamped block.
const MAGIC: u64 = 0x6b6f_7379_6b61_6c66;
const HEADER: usize = 24;

/// What a block was found to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// All zeroes: never written (generation 0).
    Zeroes,
    /// A whole stamp.
    Stamp { lba: u64, generation: u64 },
    /// Anything else: a torn or foreign block. The first 8 bytes, for the message.
    Garbage { head: u64 },
}

impl Found {
    /// The generation this block holds, if it is a whole stamp of `lba` (or zeroes).
    pub fn generation_of(self, lba: u64) -> Option<u64> {
        match self {
            Found::Zeroes => Some(0),
            Found::Stamp { lba: l, generation } if l == lba => Some(generation),
            _ => None,
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Zeroes => write!(f, "zeroes (generation 0)"),
            Found::Stamp { lba, generation } => {
                write!(f, "the stamp of LBA {lba} generation {generation}")
            }
            Found::Garbage { head } => {
                write!(
                    f,
                    "no whole stamp (torn or foreign data, first bytes {head:#018x})"
                )
            }
        }
    }
}

/// The filler word `i` of (lba, generation): splitmix64 of the three.
fn filler(lba: u64, generation: u64, i: u64) -> u64 {
    let mut z = lba
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(generation.wrapping_mul(0xd1b5_4a32_d192_ed03))
        .wrapping_add(i.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes the stamp of (lba, generation) into `block` (BLOCK bytes).
pub fn stamp(block: &mut [u8], lba: u64, generation: u64) {
    assert_eq!(block.len(), BLOCK);
    block[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    block[16..24].copy_from_slice(&generation.to_le_bytes());
    for (i, word) in block[HEADER..].chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&filler(lba, generation, i as u64).to_le_bytes());
    }
}

/// Stamps every block of `buf` (a whole number of blocks from `lba` on).
pub fn stamp_blocks(buf: &mut [u8], lba: u64, generation: u64) {
    for (i, block) in buf.chunks_exact_mut(BLOCK).enumerate() {
        stamp(block, lba + i as u64, generation);
    }
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// What `block` (BLOCK bytes) holds.
pub fn decode(block: &[u8]) -> Found {
    assert_eq!(block.len(), BLOCK);
    let head = le64(block);
    if head != MAGIC {
        return if block.iter().all(|&b| b == 0) {
            Found::Zeroes
        } else {
            Found::Garbage { head }
        };
    }
    let (lba, generation) = (le64(&block[8..]), le64(&block[16..]));
    let whole = block[HEADER..]
        .chunks_exact(8)
        .enumerate()
        .all(|(i, w)| le64(w) == filler(lba, generation, i as u64));
    if whole {
        Found::Stamp { lba, generation }
    } else {
        Found::Garbage { head }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_decodes_to_its_lba_and_generation() {
        let mut b = [0u8; BLOCK];
        assert_eq!(decode(&b), Found::Zeroes);
        stamp(&mut b, 77, 5);
        assert_eq!(
            decode(&b),
            Found::Stamp {
                lba: 77,
                generation: 5
            }
        );
        assert_eq!(decode(&b).generation_of(77), Some(5));
        assert_eq!(decode(&b).generation_of(78), None, "misplaced");
        assert_eq!(Found::Zeroes.generation_of(3), Some(0));
    }

    #[test]
    fn torn_and_foreign_blocks_are_garbage() {
        let mut old = [0u8; BLOCK];
        let mut new = [0u8; BLOCK];
        stamp(&mut old, 9, 1);
        stamp(&mut new, 9, 2);
        // The first half of the new write over the old one: the header says generation
        // 2, the tail is generation 1's.
        let mut torn = old;
        torn[..256].copy_from_slice(&new[..256]);
        assert!(matches!(decode(&torn), Found::Garbage { .. }));
        // The other way round: header of 1, tail of 2.
        let mut torn = new;
        torn[..256].copy_from_slice(&old[..256]);
        assert!(matches!(decode(&torn), Found::Garbage { .. }));
        // Half zeroes.
        let mut half = new;
        half[256..].fill(0);
        assert!(matches!(decode(&half), Found::Garbage { .. }));
        // One flipped bit anywhere.
        let mut flipped = new;
        flipped[BLOCK - 1] ^= 1;
        assert!(matches!(decode(&flipped), Found::Garbage { .. }));
        let mut junk = [0u8; BLOCK];
        junk[100] = 1;
        assert_eq!(decode(&junk), Found::Garbage { head: 0 });
    }

    #[test]
    fn blocks_of_a_buffer_are_stamped_in_order() {
        let mut buf = vec![0u8; 3 * BLOCK];
        stamp_blocks(&mut buf, 10, 4);
        for (i, b) in buf.chunks_exact(BLOCK).enumerate() {
            assert_eq!(decode(b).generation_of(10 + i as u64), Some(4));
        }
    }
}
