//! The disk layout of the firmware guests and the stamps of its test ranges: shared by
//! the EFI program and by the harness, which checks the disk image after a run.
#![cfg_attr(not(test), no_std)]

pub mod layout;
pub mod stamp;
