#!/usr/bin/env bash
# Builds the stock Linux guest of `flakyhba-harness linux`: a Debian bookworm kernel and
# a busybox initramfs holding sg3_utils, fio and e2fsprogs, all from Debian packages
# fetched with `apt-get download` (nothing is installed on the host).
#
#   linux-guest/build.sh [OUT]      (default: target/linux-guest, relative to the repo)
#
# OUT/vmlinux (the kernel, uncompressed, booted through its PVH entry), OUT/initrd.cpio
# (uncompressed) and OUT/versions.txt are the results; OUT/debs caches the packages.
# Re-running is cheap: the initramfs is rebuilt only when an input changed.
#
# Why uncompressed: under TCG, the bzImage's real-mode setup and its own decompressor, and
# a gzip initramfs, take about 16 s to reach /init on a 2-core machine; the ELF vmlinux,
# which QEMU's -kernel starts at its Xen PVH entry, and a plain cpio about 5 s.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/target/linux-guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)
debs=$out/debs
stage=$out/stage
root=$out/root

say() { printf 'linux-guest: %s\n' "$*" >&2; }
die() {
    printf 'linux-guest: ERROR: %s\n' "$*" >&2
    exit 1
}
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

for tool in apt-get apt-cache dpkg-deb gzip xz sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (this script expects Debian 12)"
done

# The tools the guest runs, by package.
tool_packages=(busybox-static sg3-utils fio e2fsprogs)
sg_tools=(sg_inq sg_vpd sg_readcap sg_luns sg_opcodes sg_modes sg_turs sg_sync sg_unmap sg_reset)
# Modules the scenario needs; their dependencies are found below. Soft dependencies are
# named here: ext4 asks the crypto API for crc32c at mount time. (Not crc32c_intel: the
# default TCG CPU has no SSE4.2.)
modules=(virtio_pci virtio_scsi scsi_mod sd_mod sg crc32c_generic ext4)

candidate() { apt-cache policy "$1" | awk '/Candidate:/ {print $2}'; }

if [[ -z "$(candidate busybox-static 2>/dev/null)" || "$(candidate busybox-static)" == "(none)" ]]; then
    say "apt-cache does not know the packages: apt-get update"
    apt-get update >&2
fi

# The kernel: the package that linux-image-amd64 depends on (linux-image-6.1.0-N-amd64).
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
[[ -n "$kernel_pkg" ]] || die "could not resolve linux-image-amd64 to a kernel package"
say "kernel package: $kernel_pkg"

# Shared libraries of the tools: every lib* package in their dependency closure
# (scripting runtimes left out). What is copied is decided later by the loader itself.
mapfile -t lib_packages < <(
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "${tool_packages[@]}" |
        grep -v '^[ <]' | grep -E '^(lib|zlib)' | grep -Ev -- '-perl$|^libperl|^libpython' | sort -u
)
packages=("$kernel_pkg" "${tool_packages[@]}" "${lib_packages[@]}")

# One apt-cache call for every candidate version: one per package takes a minute.
declare -A candidates=()
while read -r pkg ver; do
    candidates[$pkg]=$ver
done < <(apt-cache policy "${packages[@]}" | awk '/^[^ ].*:$/ {p = substr($0, 1, length($0) - 1)} /^  Candidate:/ {print p, $2}')

mkdir -p "$debs"
versions=$out/versions.txt.new
: >"$versions"
for pkg in "${packages[@]}"; do
    ver=${candidates[$pkg]:-}
    [[ -n "$ver" && "$ver" != "(none)" ]] || die "no candidate version of $pkg"
    printf '%s %s\n' "$pkg" "$ver" >>"$versions"
    # apt-get download writes an epoch's ':' as %3a.
    if ! compgen -G "$debs/${pkg}_${ver//:/%3a}_*.deb" >/dev/null; then
        say "download $pkg $ver"
        (cd "$debs" && apt-get -o APT::Sandbox::User=root download "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
    fi
done
mv "$versions" "$out/versions.txt"

# Skip the rest when nothing changed since the last build.
stamp=$(cat "$out/versions.txt" "$here/build.sh" "$here/init" | sha256sum | cut -d' ' -f1)
if [[ -f "$out/initrd.cpio" && -f "$out/vmlinux" && "$(cat "$out/stamp" 2>/dev/null)" == "$stamp" ]]; then
    say "up to date: $out/vmlinux $out/initrd.cpio"
    exit 0
fi
rm -f "$out/stamp"

# The staging tree depends on the package versions only.
stage_stamp=$(sha256sum <"$out/versions.txt" | cut -d' ' -f1)
if [[ "$(cat "$stage/.stamp" 2>/dev/null)" != "$stage_stamp" ]]; then
    say "extract ${#packages[@]} packages into $stage"
    rm -rf "$stage"
    mkdir -p "$stage"
    for pkg in "${packages[@]}"; do
        ver=$(awk -v p="$pkg" '$1 == p {print $2}' "$out/versions.txt")
        deb=$(compgen -G "$debs/${pkg}_${ver//:/%3a}_*.deb" | head -n1)
        dpkg-deb -x "$deb" "$stage"
    done
    echo "$stage_stamp" >"$stage/.stamp"
fi
rm -rf "$root"

kver=${kernel_pkg#linux-image-}
[[ -f "$stage/boot/vmlinuz-$kver" ]] || die "no /boot/vmlinuz-$kver in $kernel_pkg"
moddir=$stage/lib/modules/$kver
[[ -f "$moddir/modules.builtin" ]] || die "no modules.builtin in $kernel_pkg"

# The ELF vmlinux inside a bzImage: the payload is an xz stream (Debian builds with
# CONFIG_KERNEL_XZ), found by its magic; the first offset where a whole stream decodes to
# an ELF file wins. It must carry the Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY, type 18,
# name "Xen") that QEMU's -kernel boots through.
extract_vmlinux() {
    local bz=$1 dest=$2 off magic
    for off in $(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$bz" | cut -d: -f1 | head -n 8); do
        # Not a pipe: xz stops at the stream's end, and tail's SIGPIPE would fail it.
        xz -dc --single-stream <(tail -c +$((off + 1)) "$bz") >"$dest" 2>/dev/null || continue
        magic=$(head -c 4 "$dest" | od -An -tx1 | tr -d ' \n')
        [[ "$magic" == 7f454c46 ]] && break
    done
    [[ "${magic:-}" == 7f454c46 ]] || die "no xz-compressed ELF kernel in $bz"
    LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$dest" ||
        die "the vmlinux of $bz has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
}

# The initramfs tree.
mkdir -p "$root"/{bin,sbin,usr/bin,lib,lib64,etc,proc,sys,dev,tmp,mnt,run,modules}
cp "$stage/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
done
ln -sf ../bin/busybox "$root/sbin/init.busybox"
install -m 0755 "$here/init" "$root/init"

find_binary() {
    local name=$1 dir
    for dir in usr/bin bin usr/sbin sbin; do
        if [[ -f "$stage/$dir/$name" ]]; then
            echo "$stage/$dir/$name"
            return 0
        fi
    done
    die "$name not found in the extracted packages"
}

binaries=()
for name in "${sg_tools[@]}" fio mkfs.ext4 mke2fs e2fsck; do
    path=$(find_binary "$name")
    # mkfs.ext4 is a symlink to mke2fs; copy the file it points to.
    cp -L "$path" "$root/usr/bin/$name"
    binaries+=("$root/usr/bin/$name")
done
[[ -f "$stage/etc/mke2fs.conf" ]] && cp "$stage/etc/mke2fs.conf" "$root/etc/"

# Libraries: ask the staged dynamic loader what each binary needs, resolving only in
# the staged packages, and copy each into /lib under its soname.
loader=$stage/lib64/ld-linux-x86-64.so.2
[[ -e "$loader" ]] || loader=$stage/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[[ -e "$loader" ]] || die "no dynamic loader in libc6"
libpath=$stage/lib/x86_64-linux-gnu:$stage/usr/lib/x86_64-linux-gnu:$stage/lib:$stage/usr/lib
# Private library directories reached by RUNPATH (librados: .../ceph).
while read -r dir; do
    libpath=$libpath:$dir
done < <(find "$stage/usr/lib/x86_64-linux-gnu" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort)
declare -A copied=()
for bin in "${binaries[@]}"; do
    listing=$("$loader" --library-path "$libpath" --list "$bin") || die "the loader cannot list $bin"
    while read -r soname arrow path _; do
        # The loader lists itself by path; it is copied below.
        [[ "$arrow" == "=>" && "$soname" != */* ]] || continue
        [[ "$path" == "not" ]] && die "$(basename "$bin") needs $soname, which no staged package has"
        case "$path" in
        "$stage"/*) ;;
        *) die "$(basename "$bin") needs $soname, resolved outside the staged packages: $path" ;;
        esac
        if [[ -z "${copied[$soname]:-}" ]]; then
            cp -L "$path" "$root/lib/$soname"
            copied[$soname]=1
        fi
    done <<<"$listing"
done
cp -L "$loader" "$root/lib/ld-linux-x86-64.so.2"
ln -sf ../lib/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
say "copied ${#copied[@]} shared libraries"

# Kernel modules: the closure over each module's `depends=` (its .modinfo; depmod runs
# at install time, so the package has no modules.dep), dependencies first, decompressed
# for busybox insmod. Built-in ones (modules.builtin) need nothing.
declare -A file_of=() emitted=()
while read -r file; do
    name=$(basename "$file")
    name=${name%%.ko*}
    file_of[${name//-/_}]=$file
done < <(cd "$moddir" && find kernel -name '*.ko*')
module_text() {
    case "$1" in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *.ko) cat "$1" ;;
    *) die "unknown module file $1" ;;
    esac
}
is_builtin() {
    grep -Eq "/${1//_/[-_]}\.ko$" "$moddir/modules.builtin"
}
order=()
visit() {
    local name=${1//-/_} dep deps
    [[ -n "${emitted[$name]:-}" ]] && return 0
    emitted[$name]=1
    if [[ -z "${file_of[$name]:-}" ]]; then
        is_builtin "$name" || die "module $name is neither in $kernel_pkg nor built in"
        say "module $name is built in"
        return 0
    fi
    module_text "$moddir/${file_of[$name]}" >"$root/modules/$name.ko"
    deps=$(tr '\0' '\n' <"$root/modules/$name.ko" | sed -n 's/^depends=//p' | head -n1)
    for dep in ${deps//,/ }; do
        visit "$dep"
    done
    order+=("$name")
}
for m in "${modules[@]}"; do
    visit "$m"
done
printf '%s\n' "${order[@]}" >"$root/modules/order"
say "modules, in load order: ${order[*]}"

# The versions the image holds, readable in the guest too.
cp "$out/versions.txt" "$root/etc/flakyhba-versions"

# newc cpio by busybox's own cpio (the host needs no cpio package), left uncompressed.
say "pack the initramfs"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) \
    >"$out/initrd.cpio.new"
mv "$out/initrd.cpio.new" "$out/initrd.cpio"
extract_vmlinux "$stage/boot/vmlinuz-$kver" "$out/vmlinux.new"
mv "$out/vmlinux.new" "$out/vmlinux"
echo "$stamp" >"$out/stamp"
say "kernel $kver: $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1), PVH entry)"
say "initramfs: $out/initrd.cpio ($(du -h "$out/initrd.cpio" | cut -f1))"
say "package versions: $out/versions.txt"
