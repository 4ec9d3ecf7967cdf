//! The disk layout of ../../layout.env, as `u64` constants written by build.rs.

// The file holds every constant of the layout; this program needs only some of them.
#![allow(dead_code)]

include!(concat!(env!("OUT_DIR"), "/layout.rs"));

/// Bytes in a block: the layout counts 512-byte blocks.
pub const BLOCK_SIZE: usize = 512;
