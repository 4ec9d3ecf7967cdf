//! flakyhba guest image: a bare-metal x86_64 program that QEMU boots with `-kernel`
//! through the PVH note. It brings up serial output, the IDT, the LAPIC tick and MSI-X
//! delivery, then hands the kernel command line to the library's scenario runner and
//! exits QEMU through isa-debug-exit with the runner's code.
//!
//! Everything is compiled only for `x86_64-unknown-none`; on the host the binary is a
//! stub, so workspace-wide `cargo check/clippy --workspace` still work there.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod apic;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod interrupts;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod serial;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod start_info;
#[cfg(target_os = "none")]
mod time;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "flakyhba-guest is a bare-metal image: build it with \
         `cargo build -p flakyhba-guest --target x86_64-unknown-none --release` \
         and boot it with `qemu-system-x86_64 -kernel`"
    );
    std::process::exit(2);
}
