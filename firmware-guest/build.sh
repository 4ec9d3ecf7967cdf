#!/usr/bin/env bash
# Builds the firmware guests' disk image: one image that both firmwares boot.
#   - SeaBIOS boots its MBR: seabios/boot.S (stage 1 at LBA 0, stage 2 after it).
#   - OVMF boots EFI/BOOT/BOOTX64.EFI (efi/, Rust for x86_64-unknown-uefi) from the FAT
#     EFI system partition that the MBR's partition table lists.
# The pattern and write ranges are stamped here; layout.env has the numbers.
#
#   firmware-guest/build.sh [OUT]      (default: target/firmware-guest, relative to the repo)
#
# Results: OUT/disk.img (the pristine image: each run writes to its disk, so give every
# run a copy), OUT/boot.bin, OUT/BOOTX64.EFI. Needs binutils, dosfstools, mtools and
# ovmf (to run), installed with apt-get when missing and running as root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/target/firmware-guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

say() { printf 'firmware-guest: %s\n' "$*" >&2; }
die() {
    printf 'firmware-guest: ERROR: %s\n' "$*" >&2
    exit 1
}
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

# Debian packages by the file that shows they are installed.
declare -A needs=(
    [/usr/bin/as]=binutils
    [/usr/sbin/mkfs.fat]=dosfstools
    [/usr/bin/mcopy]=mtools
    [/usr/share/OVMF/OVMF_CODE.fd]=ovmf
)
missing=()
for file in "${!needs[@]}"; do
    [[ -e "$file" ]] || missing+=("${needs[$file]}")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2
        apt-get install -y -q "${missing[@]}" >&2
    else
        die "missing packages; install them with: sudo apt-get install -y ${missing[*]}"
    fi
fi
command -v perl >/dev/null || die "perl not found (Debian's perl-base is essential)"
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-uefi; then
    say "adding the Rust target x86_64-unknown-uefi"
    rustup target add x86_64-unknown-uefi >&2
fi

# The layout, as shell variables and as `as --defsym` arguments.
defsyms=()
while IFS='=' read -r name value; do
    [[ "$name" =~ ^[A-Z0-9_]+$ ]] || continue
    printf -v "$name" '%s' "$value"
    defsyms+=(--defsym "$name=$value")
done <"$here/layout.env"

# The boot sector: stage 1 (LBA 0, with the partition table) and stage 2.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
as --32 "${defsyms[@]}" -o "$work/boot.o" "$here/seabios/boot.S"
ld -m elf_i386 -Ttext=0x7c00 -e _start --oformat binary -o "$work/boot.bin" "$work/boot.o"
boot_blocks=$(($(stat -c %s "$work/boot.bin") / 512))
((boot_blocks - 1 <= STAGE2_BLOCKS)) || die "stage 2 needs $((boot_blocks - 1)) blocks, layout.env has STAGE2_BLOCKS=$STAGE2_BLOCKS"
((STAGE2_LBA + STAGE2_BLOCKS <= ESP_LBA)) || die "stage 2 overlaps the ESP"

# The EFI program.
cargo build --release --manifest-path "$repo/Cargo.toml" -p flakyhba-efi-guest --target x86_64-unknown-uefi >&2
efi=$repo/target/x86_64-unknown-uefi/release/flakyhba-efi-guest.efi

# The ESP: FAT (mkfs.fat picks FAT12 for this size), then the program.
mkfs.fat -C -n FLAKYHBA "$work/esp.img" $((ESP_BLOCKS / 2)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$efi" ::/EFI/BOOT/BOOTX64.EFI

# Stamps (see efi/src/stamp.rs): per block 32 slots of "FHBA", LBA, generation, slot.
stamps() {
    perl -e 'my ($first, $n, $gen) = @ARGV;
        for my $lba ($first .. $first + $n - 1) {
            print map { pack("a4 V V V", "FHBA", $lba, $gen, $_) } 0 .. 31;
        }' "$1" "$2" "$IMAGE_GEN"
}

img=$work/disk.img
truncate -s $((DISK_BLOCKS * 512)) "$img"
put() { dd of="$img" bs=512 seek="$1" conv=notrunc status=none; }
put 0 <"$work/boot.bin"
put "$ESP_LBA" <"$work/esp.img"
stamps "$PATTERN_LBA" "$PATTERN_BLOCKS" | put "$PATTERN_LBA"
stamps "$WRITE_LBA" "$WRITE_BLOCKS" | put "$WRITE_LBA"
(($(stat -c %s "$img") == DISK_BLOCKS * 512)) || die "the image outgrew DISK_BLOCKS"

cp "$work/boot.bin" "$out/boot.bin"
cp "$efi" "$out/BOOTX64.EFI"
mv "$img" "$out/disk.img"
say "built $out/disk.img ($DISK_BLOCKS blocks; boot sector $boot_blocks blocks, BOOTX64.EFI $(stat -c %s "$efi") bytes)"
