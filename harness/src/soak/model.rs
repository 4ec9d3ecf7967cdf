//! What every block may hold. A write in flight locks its blocks (no other I/O is issued
//! to them), so the order of the writes to a block is the order of their completions:
//!
//! - an acknowledged write (GOOD) leaves exactly its generation;
//! - a write ended any other way (an error status, ABORTED, RESET, dropped by a device
//!   reset, a disconnect or the backend's death) may have happened or not: its generation
//!   joins what the block may hold;
//! - a read that finds one of the allowed generations narrows the block to it: the
//!   unacknowledged write did or did not happen, and cannot change its mind later.
//!
//! So a write that was ended and then executed late, after a later write to its block was
//! acknowledged, shows as an older generation: that is the bug class the soak hunts.

use std::fmt;

use super::stamp::{decode, Found, BLOCK};

#[derive(Clone, Debug)]
struct Block {
    /// Generations the block may hold: first the newest one known to be there (the last
    /// acknowledged or read back; 0 for the zeroes the image starts with), then those of
    /// the unacknowledged writes issued after it.
    allowed: Vec<u64>,
    writing: bool,
    readers: u32,
}

/// A block that holds what no allowed generation explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    /// What the block may hold: the newest known generation, then unacknowledged ones.
    pub allowed: Vec<u64>,
    pub found: Found,
}

impl Mismatch {
    /// Lost, torn, misplaced or stale, in words.
    pub fn kind(&self) -> &'static str {
        match self.found {
            Found::Garbage { .. } => "torn",
            Found::Stamp { lba, .. } if lba != self.lba => "misplaced",
            _ => "lost",
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (known, rest) = self.allowed.split_first().expect("never empty");
        write!(
            f,
            "{} block at LBA {}: expected the stamp of LBA {} generation {known}",
            self.kind(),
            self.lba,
            self.lba
        )?;
        if !rest.is_empty() {
            write!(f, " (or of the unacknowledged generations {rest:?})")?;
        }
        write!(f, ", found {}", self.found)
    }
}

/// The allowed contents of every block of the LUN.
#[derive(Clone, Debug)]
pub struct Model {
    blocks: Vec<Block>,
}

impl Model {
    /// A LUN of `blocks` blocks of zeroes.
    pub fn new(blocks: u64) -> Model {
        let b = Block {
            allowed: vec![0],
            writing: false,
            readers: 0,
        };
        Model {
            blocks: vec![b; blocks as usize],
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    fn range(&self, lba: u64, n: u32) -> &[Block] {
        &self.blocks[lba as usize..lba as usize + n as usize]
    }

    fn range_mut(&mut self, lba: u64, n: u32) -> &mut [Block] {
        &mut self.blocks[lba as usize..lba as usize + n as usize]
    }

    /// No I/O is in flight on these blocks.
    pub fn can_write(&self, lba: u64, n: u32) -> bool {
        self.range(lba, n)
            .iter()
            .all(|b| !b.writing && b.readers == 0)
    }

    /// No write is in flight on these blocks.
    pub fn can_read(&self, lba: u64, n: u32) -> bool {
        self.range(lba, n).iter().all(|b| !b.writing)
    }

    pub fn begin_write(&mut self, lba: u64, n: u32) {
        assert!(self.can_write(lba, n), "overlapping I/O at LBA {lba}");
        for b in self.range_mut(lba, n) {
            b.writing = true;
        }
    }

    /// The write of `generation` ended: acknowledged (GOOD) or not.
    pub fn end_write(&mut self, lba: u64, n: u32, generation: u64, acknowledged: bool) {
        for b in self.range_mut(lba, n) {
            assert!(b.writing, "no write in flight at LBA {lba}");
            b.writing = false;
            if acknowledged {
                b.allowed.clear();
            }
            b.allowed.push(generation);
        }
    }

    pub fn begin_read(&mut self, lba: u64, n: u32) {
        assert!(self.can_read(lba, n), "read over a write at LBA {lba}");
        for b in self.range_mut(lba, n) {
            b.readers += 1;
        }
    }

    /// The read ended; `data` is what it returned when it completed GOOD. Checks every
    /// block and narrows each to what it holds.
    pub fn end_read(&mut self, lba: u64, n: u32, data: Option<&[u8]>) -> Result<(), Mismatch> {
        for b in self.range_mut(lba, n) {
            assert!(b.readers > 0, "no read in flight at LBA {lba}");
            b.readers -= 1;
        }
        match data {
            Some(data) => self.check(lba, data),
            None => Ok(()),
        }
    }

    /// Checks blocks read from `lba` on (a whole number of blocks, none being written)
    /// and narrows each to what it holds.
    pub fn check(&mut self, lba: u64, data: &[u8]) -> Result<(), Mismatch> {
        for (i, raw) in data.chunks_exact(BLOCK).enumerate() {
            let at = lba + i as u64;
            let b = &mut self.blocks[at as usize];
            assert!(!b.writing, "checking LBA {at} while it is written");
            let found = decode(raw);
            match found.generation_of(at) {
                Some(g) if b.allowed.contains(&g) => {
                    b.allowed.clear();
                    b.allowed.push(g);
                }
                _ => {
                    return Err(Mismatch {
                        lba: at,
                        allowed: b.allowed.clone(),
                        found,
                    })
                }
            }
        }
        Ok(())
    }

    /// The newest generation known to be in block `lba` (0: the initial zeroes).
    pub fn known(&self, lba: u64) -> u64 {
        self.blocks[lba as usize].allowed[0]
    }

    /// Blocks whose content is not settled to one generation.
    pub fn unsettled(&self) -> usize {
        self.blocks.iter().filter(|b| b.allowed.len() > 1).count()
    }

    /// Blocks with I/O in flight.
    pub fn busy(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.writing || b.readers > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::stamp::stamp_blocks;
    use super::*;

    fn blocks(lba: u64, n: u32, generation: u64) -> Vec<u8> {
        let mut v = vec![0u8; n as usize * BLOCK];
        if generation > 0 {
            stamp_blocks(&mut v, lba, generation);
        }
        v
    }

    #[test]
    fn an_acknowledged_write_is_the_only_content_allowed() {
        let mut m = Model::new(16);
        m.check(0, &blocks(0, 16, 0)).unwrap();
        m.begin_write(4, 2);
        assert!(!m.can_write(5, 1) && !m.can_read(4, 1) && m.can_read(6, 1));
        m.end_write(4, 2, 7, true);
        m.check(4, &blocks(4, 2, 7)).unwrap();
        // The old zeroes are a lost write.
        let e = m.check(4, &blocks(4, 1, 0)).unwrap_err();
        assert_eq!((e.lba, e.kind()), (4, "lost"));
        assert_eq!(
            e.to_string(),
            "lost block at LBA 4: expected the stamp of LBA 4 generation 7, found zeroes (generation 0)"
        );
    }

    #[test]
    fn an_unacknowledged_write_leaves_old_or_new_and_a_read_settles_it() {
        let mut m = Model::new(8);
        m.begin_write(0, 2);
        m.end_write(0, 2, 3, false);
        // Either is fine, block by block (no atomicity across blocks).
        let mut mixed = blocks(0, 1, 3);
        mixed.extend(blocks(1, 1, 0));
        m.check(0, &mixed).unwrap();
        assert_eq!((m.known(0), m.known(1)), (3, 0));
        // Settled: block 0 cannot go back to zeroes, block 1 cannot become generation 3.
        let e = m.check(0, &blocks(0, 1, 0)).unwrap_err();
        assert_eq!(e.kind(), "lost");
        let e = m.check(1, &blocks(1, 1, 3)).unwrap_err();
        assert_eq!(e.allowed, vec![0]);
        assert!(e
            .to_string()
            .contains("generation 0, found the stamp of LBA 1 generation 3"));
    }

    #[test]
    fn an_ended_write_that_lands_after_a_later_acknowledged_one_is_caught() {
        let mut m = Model::new(4);
        // Generation 1 was aborted (unknown), then generation 2 was acknowledged.
        m.begin_write(2, 1);
        m.end_write(2, 1, 1, false);
        m.begin_write(2, 1);
        m.end_write(2, 1, 2, true);
        // Generation 1 executed late.
        let e = m.check(2, &blocks(2, 1, 1)).unwrap_err();
        assert_eq!(e.allowed, vec![2]);
        assert_eq!(e.kind(), "lost");
    }

    #[test]
    fn torn_and_misplaced_blocks_are_named() {
        let mut m = Model::new(4);
        m.begin_write(0, 2);
        m.end_write(0, 2, 5, false);
        let mut torn = blocks(0, 1, 5);
        torn[300..].fill(0);
        let e = m.check(0, &torn).unwrap_err();
        assert_eq!(e.kind(), "torn");
        assert!(
            e.to_string().contains(
                "expected the stamp of LBA 0 generation 0 (or of the unacknowledged generations [5])"
            ),
            "{e}"
        );
        let e = m.check(1, &blocks(0, 1, 5)).unwrap_err();
        assert_eq!((e.lba, e.kind()), (1, "misplaced"));
    }

    #[test]
    fn reads_lock_against_writes_and_are_checked_when_good() {
        let mut m = Model::new(4);
        m.begin_read(0, 2);
        m.begin_read(1, 2);
        assert!(!m.can_write(2, 1) && m.can_read(0, 4));
        assert_eq!(m.busy(), 3);
        m.end_read(0, 2, None).unwrap();
        let e = m.end_read(1, 2, Some(&blocks(1, 2, 9))).unwrap_err();
        assert_eq!(e.lba, 1);
        assert!(m.can_write(0, 4));
    }
}
