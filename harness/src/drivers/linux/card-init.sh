#!/bin/sh
# /card-init: the driver card's workload for Linux's virtio_scsi (harness/src/drivers/
# linux/). The harness appends it to linux-guest's initramfs and boots with
# rdinit=/card-init; it uses the same busybox, sg3_utils and fio. On the serial console:
#   FLAKYHBA-STEP <name> rc=<N>     one line per step
#   FLAKYHBA-FACT <key>=<value>     what the harness checks besides the steps
#   {"result":"pass"|"fail",...}    the last line, then poweroff
# Kernel command line switches:
#   flakyhba.data=LBA+BLOCKS        the range fio writes and verifies (512-byte blocks)
#   flakyhba.timeout=S              SCSI command timeout of the disk, in seconds
#   flakyhba.lu=add|remove|resize   after fio, wait for LUN 1 to appear or go, or for
#                                   LUN 0's size to change

export PATH=/bin:/sbin:/usr/bin
export LD_LIBRARY_PATH=/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

data=
timeout=
lu=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    flakyhba.data=*) data=${arg#*=} ;;
    flakyhba.timeout=*) timeout=${arg#*=} ;;
    flakyhba.lu=*) lu=${arg#*=} ;;
    esac
done
first=${data%+*}
blocks=${data#*+}

failed=""
mark() {
    echo "FLAKYHBA-STEP $1 rc=$2"
    [ "$2" = 0 ] || failed="$failed $1"
}
fact() {
    echo "FLAKYHBA-FACT $1=$2"
}
# Runs a command as a step, echoing its output.
step() {
    name=$1
    shift
    echo "+ $*"
    "$@" >/tmp/step.out 2>&1
    rc=$?
    cat /tmp/step.out
    mark "$name" "$rc"
    return "$rc"
}
finish() {
    echo "--- SCSI and block messages"
    dmesg | grep -E 'sd [0-9]|scsi|virtio|I/O error|blk_' | tail -n 40
    list=""
    for f in $failed; do
        list="$list${list:+,}\"$f\""
    done
    if [ -z "$failed" ]; then result=pass; else result=fail; fi
    echo "{\"result\":\"$result\",\"kernel\":\"$(uname -r)\",\"failed\":[$list]}"
    poweroff -f
    exit 1
}
# The SCSI disks by address (H:C:T:L), on one line.
disks() {
    ls /sys/class/scsi_disk 2>/dev/null | tr '\n' ' '
}

rc=0
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" || rc=1
done
mark modules "$rc"

# LUN 0 of target 0: the disk under test.
dev=""
i=0
while [ $i -lt 100 ]; do
    for d in /sys/class/scsi_disk/*:0:0:0; do
        [ -e "$d/device/block" ] || continue
        host=${d##*/}
        host=${host%%:*}
        dev=/dev/$(ls "$d/device/block" | head -n1)
    done
    [ -n "$dev" ] && [ -b "$dev" ] && break
    dev=""
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$dev" ]; then
    fact disks "$(disks)"
    mark find-disk 1
    finish
fi
disk=${dev#/dev/}
size0=$(cat /sys/block/$disk/size)
lun1=/sys/class/scsi_disk/$host:0:0:1
fact disk "$host:0:0:0 $dev"
fact size_before "$size0"
fact disks_before "$(disks)"
mark find-disk 0

if [ -n "$timeout" ]; then
    echo "$timeout" >"/sys/block/$disk/device/timeout"
    [ "$(cat "/sys/block/$disk/device/timeout")" = "$timeout" ]
    mark timeout $?
fi

step sg_inq sg_inq "$dev"
step sg_readcap sg_readcap "$dev"

# Every 4 KiB block of the range written once in random order at queue depth 16, then
# read back: fio's pattern %o is the block's byte offset (a little-endian u64, repeated),
# so the harness checks the same bytes in the image.
step fio fio --name=card --filename="$dev" --offset=$((first * 512)) --size=$((blocks * 512)) \
    --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio --direct=1 \
    --verify=pattern --verify_pattern=%o --do_verify=1 --verify_fatal=1

# The LU change the harness made during fio: Linux must follow it within 6 s by the clock
# (less than the harness's 10 s without progress).
if [ -n "$lu" ]; then
    end=$(($(date +%s) + 6))
    seen=1
    while [ "$(date +%s)" -lt "$end" ]; do
        case "$lu" in
        add) [ -e "$lun1/device/block" ] && seen=0 ;;
        remove) [ -e "$lun1" ] || seen=0 ;;
        resize) [ "$(cat /sys/block/$disk/size)" != "$size0" ] && seen=0 ;;
        esac
        [ "$seen" = 0 ] && break
        sleep 0.2
    done
    mark "lu-$lu" "$seen"
fi
fact disks_after "$(disks)"
fact size_after "$(cat /sys/block/$disk/size)"

# Does the disk still work: a TEST UNIT READY and a direct read of the range's first block.
step turs-after sg_turs "$dev"
step reread dd if="$dev" of=/dev/null bs=4096 skip=$((first / 8)) count=1 iflag=direct
finish
