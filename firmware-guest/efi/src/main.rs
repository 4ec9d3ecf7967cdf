//! flakyhba EFI guest: a UEFI program that OVMF boots as EFI/BOOT/BOOTX64.EFI from the
//! backend's disk. It finds the disk's whole-disk BlockIo, reads a stamped pattern, writes
//! and reads back a range, reports each outcome as a JSON line on COM1 and leaves QEMU
//! through isa-debug-exit (firmware-guest/README.md has the details).
//!
//! The firmware side (`efi`) is compiled only for `x86_64-unknown-uefi`; on the host the
//! binary is a stub, and the sequence, the stamps and the lines are unit-tested there.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod efi;
#[cfg(any(test, target_os = "uefi"))]
mod report;
#[cfg(any(test, target_os = "uefi"))]
mod run;
// The layout and the stamps are the library's, which the harness shares.
#[cfg(any(test, target_os = "uefi"))]
use flakyhba_efi_guest::{layout, stamp};

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!(
        "flakyhba-efi-guest is a UEFI program: build it with `firmware-guest/build.sh`, \
         which boots it from a disk image under OVMF"
    );
    std::process::exit(2);
}
