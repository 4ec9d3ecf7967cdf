#!/usr/bin/env bash
# Installs what flakyhba needs on a fresh machine: QEMU from the distribution's packages
# and the bare-metal Rust target. Safe to run again; does nothing that is already done.
set -euo pipefail

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing qemu-system-x86 with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q qemu-system-x86
    else
        echo "setup: qemu-system-x86_64 is missing. Install it with:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y qemu-system-x86" >&2
        exit 1
    fi
fi

# RUSTUP_AUTO_INSTALL=0 machines do not install rust-toolchain.toml's target on first use.
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx x86_64-unknown-none; then
        rustup target add x86_64-unknown-none
    fi
else
    echo "setup: rustup not found; make sure the x86_64-unknown-none target is installed" >&2
fi
