#!/usr/bin/env bash
# Installs what flakyhba needs on a fresh machine: QEMU and its tools from the
# distribution's packages and the bare-metal Rust target. Safe to run again; does nothing that is already done.
set -euo pipefail

# Programs the build and the tests run, and the Debian package of each.
needs=(
    "qemu-system-x86_64 qemu-system-x86"
    # qemu-io and qemu-nbd: the backend's image-lock tests run them against our locks.
    "qemu-io qemu-utils"
)
missing=()
for need in "${needs[@]}"; do
    read -r program package <<<"$need"
    command -v "$program" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${missing[@]}"
    else
        echo "setup: missing packages. Install them with:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
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
