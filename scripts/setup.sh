#!/usr/bin/env bash
# Installs what flakyhba needs on a fresh machine: QEMU and its tools, OVMF and the firmware
# guests' build tools from the distribution's packages, and the Rust targets of the guest
# image and the EFI program. Safe to run again; does nothing that is already done.
set -euo pipefail

# Programs (or files) the build and the tests need, and the Debian package of each.
needs=(
    "qemu-system-x86_64 qemu-system-x86"
    # qemu-io and qemu-nbd: the backend's image-lock tests run them against our locks.
    "qemu-io qemu-utils"
    # The driver card: OVMF, and what firmware-guest/build.sh assembles the disk with.
    "/usr/share/OVMF/OVMF_CODE.fd ovmf"
    "as binutils"
    "mkfs.fat dosfstools"
    "mcopy mtools"
)
missing=()
for need in "${needs[@]}"; do
    read -r program package <<<"$need"
    case "$program" in
    /*) [ -e "$program" ] || missing+=("$package") ;;
    *) command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("$package") ;;
    esac
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
    for target in x86_64-unknown-none x86_64-unknown-uefi; do
        if ! rustup target list --installed | grep -qx "$target"; then
            rustup target add "$target"
        fi
    done
else
    echo "setup: rustup not found; make sure the x86_64-unknown-none and x86_64-unknown-uefi targets are installed" >&2
fi
